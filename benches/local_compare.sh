#!/bin/bash
# benches/local_compare.sh - inbound mail to a local Maildir, Postfix
# (virtual(8) with virtual_mailbox_maps, benches/peers/postfix-maildir.sh)
# and pigeon (local.delivery = "maildir", benches/peers/pigeon.sh with
# PG_LOCAL=1), one at a time, same machine, same run.
#
# Usage: benches/local_compare.sh [-R repeats] [-m messages] [-o outdir] [-w wait_s]
# Cells: 10 and 50 injecting smtp-source sessions x 1 KB, one connection per
# message; the figure is messages accepted AND in the Maildir per second
# (benches/local_deliver.py). Prints every LOCAL line, then the medians and
# the pigeon/Postfix ratio per cell.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
KIT=${KIT:-$(cd "$here/../shared/bench" && pwd)}
R=3
M=5000
OUT=/tmp/bench/local
WAIT=65
while getopts "R:m:o:w:" o; do
    case $o in R) R=$OPTARG ;; m) M=$OPTARG ;; o) OUT=$OPTARG ;; w) WAIT=$OPTARG ;; *) exit 2 ;; esac
done
mkdir -p "$OUT"
PF="$here/benches/peers/postfix-maildir.sh"
PG="$here/benches/peers/pigeon.sh"
export PG_LOCAL=1
cleanup() { "$PF" stop >/dev/null 2>&1 || true; "$PG" stop >/dev/null 2>&1 || true; "$PF" clean >/dev/null 2>&1 || true; "$PG" clean >/dev/null 2>&1 || true; }
trap cleanup EXIT
RAW=$OUT/local.raw.txt
: > "$RAW"
# Old spools and Maildirs of earlier runs are removed now, then the freed
# inodes are left to age out (ext4 without a journal skips inodes freed in
# the last 60 s, at a CPU cost that would fall on the first runs).
"$PF" clean >/dev/null 2>&1 || true; "$PG" clean >/dev/null 2>&1 || true
sleep "$WAIT"
# The two servers take turns, cell by cell, so that both meet the same
# state of this shared machine.
for s in 10 50; do
    for _ in $(seq "$R"); do
        for t in postfix pigeon; do
            case $t in
            postfix) peer=$PF; other=$PG; addr=127.0.0.1:2527 ;;
            pigeon)  peer=$PG; other=$PF; addr=127.0.0.1:2545 ;;
            esac
            "$other" stop >/dev/null 2>&1 || true
            # A fresh queue and Maildir for every run; old ones are moved aside.
            "$peer" stop >/dev/null; "$peer" flush >/dev/null; "$peer" start >/dev/null
            sleep 1
            python3 "$here/benches/local_deliver.py" --kit "$KIT" --maildir "$("$peer" maildir)" \
                --pids "$("$peer" pids)" -s "$s" -m "$M" -l 1024 --max-seconds 300 \
                -L "$t-s$s" "$addr" | tee -a "$RAW"
            "$peer" stop >/dev/null
        done
    done
done
python3 - "$RAW" <<'PY' | tee "$OUT/local.md"
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = dict(re.findall(r"(\w+)=(\S+)", line))
    t, s = f["label"].split("-s")
    rows.setdefault((t, int(s)), []).append(f)
def med(k, t, s):
    return statistics.median(float(r[k]) for r in rows[(t, s)])
print("| sessions | Postfix delivered/s | pigeon delivered/s | ratio | Postfix CPU ms/msg | pigeon CPU ms/msg |")
print("|---|---|---|---|---|---|")
for s in sorted({s for _, s in rows}):
    pf, pg = med("delivered_per_s", "postfix", s), med("delivered_per_s", "pigeon", s)
    print(f"| {s} | {pf:.0f} | {pg:.0f} | {pg / pf:.1f}x | {med('srv_cpu_ms_per_msg', 'postfix', s):.2f} | {med('srv_cpu_ms_per_msg', 'pigeon', s):.2f} |")
PY
