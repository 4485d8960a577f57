#!/bin/bash
# benches/auth_cost.sh - what email authentication costs pigeon: the same
# cells with it off and on, in one run, with the shared kit's accept.sh and
# relay.sh and its loopback DNS (lib/authdns.sh: SPF, DKIM and DMARC
# records for src.test), sending one DKIM-signed 1 KB message
# (lib/make_signed.py).
#
#   relay (trusted client, mail relayed to a sink): off, DKIM signing with
#     RSA-2048, with Ed25519, with both
#   accept (untrusted client, bench.test local, mail kept queued): off, and
#     SPF (MAIL FROM + HELO) + DKIM verification + ARC + DMARC
#
# Usage: benches/auth_cost.sh [-R repeats] [-m messages] [-o outdir]
# Prints one kit line per run and a table per mode; compare msgs/s
# (delivered/s) and srv_cpu_ms_per_msg of "on" with "off".
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
KIT=${KIT:-$(cd "$here/../shared/bench" && pwd)}
R=3
M=3000
OUT=/tmp/bench/auth-cost
while getopts "R:m:o:" o; do
    case $o in R) R=$OPTARG ;; m) M=$OPTARG ;; o) OUT=$OPTARG ;; *) exit 2 ;; esac
done
mkdir -p "$OUT"
command -v smtp-source >/dev/null || PATH=$PATH:/usr/sbin
MSG=$OUT/signed-1k.eml
PG="$here/benches/peers/pigeon.sh"
"$KIT/lib/authdns.sh" keys >/dev/null
[ -f "$MSG" ] || python3 "$KIT/lib/make_signed.py" -l 1024 "$MSG" >/dev/null
"$KIT/lib/authdns.sh" start >/dev/null
pkill -f "smtp-sink .*127.0.0.1:2626" 2>/dev/null || true
trap '"$PG" stop >/dev/null 2>&1 || true; "$PG" clean >/dev/null 2>&1 || true; "$KIT/lib/authdns.sh" stop >/dev/null 2>&1 || true' EXIT
RAW=$OUT/auth-cost.raw.txt
: > "$RAW"
pids() { "$PG" pids; }
for mode in off sign sign-ed sign-both; do
    a=$mode; [ "$a" = off ] && a=
    PG_AUTH=$a PG_KEEP=0 "$PG" restart >/dev/null
    for s in 10 50; do
        for _ in $(seq "$R"); do
            "$KIT/relay.sh" -s "$s" -m "$M" -F "$MSG" -P "$(pids)" -q "$PG qsize" -x 300 \
                -L "relay-$mode-s$s" 127.0.0.1:2545 | tail -1 | tee -a "$RAW"
        done
    done
    "$PG" stop >/dev/null
done
for mode in off check; do
    a=$mode; [ "$a" = off ] && a=
    for s in 10 50; do
        for _ in $(seq "$R"); do
            PG_AUTH=$a PG_KEEP=1 "$PG" restart >/dev/null
            "$KIT/accept.sh" -s "$s" -m "$M" -F "$MSG" -P "$(pids)" -q "$PG qsize" \
                -L "accept-$mode-s$s" 127.0.0.1:2545 | tail -1 | tee -a "$RAW"
        done
    done
    "$PG" stop >/dev/null
done
python3 "$KIT/lib/table.py" --title "pigeon, email authentication off and on" "$RAW" | tee "$OUT/auth-cost.md"
