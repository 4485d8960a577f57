#!/bin/bash
# benches/relay_compare.sh - end-to-end relay (accept + deliver to a sink)
# for Postfix and pigeon, one at a time, with the shared kit's relay.sh.
#
# Usage: benches/relay_compare.sh [-R repeats] [-o outdir]
# Cells: 10 and 50 injecting sessions x 1 KB, 10 x 100 KB; N messages each.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
KIT=${KIT:-$(cd "$here/../shared/bench" && pwd)}
R=3
OUT=/tmp/bench/relay
while getopts "R:o:" o; do
    case $o in R) R=$OPTARG ;; o) OUT=$OPTARG ;; *) exit 2 ;; esac
done
mkdir -p "$OUT"
command -v smtp-source >/dev/null || PATH=$PATH:/usr/sbin
pkill -f "smtp-sink .*127.0.0.1:2626" 2>/dev/null || true
trap '"$here/benches/peers/pigeon.sh" stop >/dev/null 2>&1 || true; "$KIT/peers/postfix.sh" stop >/dev/null 2>&1 || true; "$here/benches/peers/pigeon.sh" clean >/dev/null 2>&1 || true' EXIT
for t in postfix pigeon; do
    RAW=$OUT/$t.raw.txt
    : > "$RAW"
    case $t in
    postfix) "$here/benches/peers/pigeon.sh" stop >/dev/null 2>&1 || true
             "$KIT/peers/postfix.sh" start >/dev/null; addr=127.0.0.1:2525
             pids() { "$KIT/peers/postfix.sh" pids; }; qs="$KIT/peers/postfix.sh qsize" ;;
    pigeon)  "$KIT/peers/postfix.sh" stop >/dev/null 2>&1 || true
             PG_KEEP=0 "$here/benches/peers/pigeon.sh" restart >/dev/null; addr=127.0.0.1:2545
             pids() { "$here/benches/peers/pigeon.sh" pids; }; qs="$here/benches/peers/pigeon.sh qsize" ;;
    esac
    for cell in "10 1024 4000" "50 1024 4000" "10 102400 600"; do
        set -- $cell
        for _ in $(seq "$R"); do
            "$KIT/relay.sh" -s "$1" -m "$3" -l "$2" -P "$(pids)" -q "$qs" -x 300 -L "s$1-l$2" "$addr" | tail -1 | tee -a "$RAW"
        done
    done
    python3 "$KIT/lib/table.py" --title "$t relay" "$RAW" > "$OUT/$t.md"
done
cat "$OUT"/postfix.md "$OUT"/pigeon.md
