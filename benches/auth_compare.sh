#!/bin/bash
# benches/auth_compare.sh - email authentication, pigeon against Postfix with
# the classic Debian 12 stack (the shared kit's peers/postfix-auth.sh:
# policyd-spf, OpenDKIM verifying and signing, OpenDMARC), in one run, like
# with like, all sending the kit's DKIM-signed 1 KB message:
#
#   checks (accept.sh): Postfix PF_AUTH_SIGN=0 (SPF, DKIM verification,
#     DMARC) against pigeon PG_AUTH=check (SPF, DKIM, ARC, DMARC), the
#     client untrusted for both
#   signing (relay.sh): Postfix PF_AUTH_VERIFY=0 (OpenDKIM signs, RSA-2048)
#     against pigeon PG_AUTH=sign (RSA-2048, the same key) and
#     PG_AUTH=sign-ed (Ed25519)
#
# at 10 and 50 sessions. Needs opendkim, opendmarc, postfix-policyd-spf-python,
# opendkim-tools, postfix and python3-dkim.
#
# Usage: benches/auth_compare.sh [-R repeats] [-m messages] [-o outdir]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
KIT=${KIT:-$(cd "$here/../shared/bench" && pwd)}
R=3
M=1000
OUT=/tmp/bench/auth-compare
while getopts "R:m:o:" o; do
    case $o in R) R=$OPTARG ;; m) M=$OPTARG ;; o) OUT=$OPTARG ;; *) exit 2 ;; esac
done
mkdir -p "$OUT"
command -v smtp-source >/dev/null || PATH=$PATH:/usr/sbin
MSG=$OUT/signed-1k.eml
PG="$here/benches/peers/pigeon.sh"
PFA="$KIT/peers/postfix-auth.sh"
"$KIT/lib/authdns.sh" keys >/dev/null
[ -f "$MSG" ] || python3 "$KIT/lib/make_signed.py" -l 1024 "$MSG" >/dev/null
pkill -f "smtp-sink .*127.0.0.1:2626" 2>/dev/null || true
cleanup() {
    "$PG" stop >/dev/null 2>&1 || true
    "$PG" clean >/dev/null 2>&1 || true
    "$PFA" stop >/dev/null 2>&1 || true
    "$KIT/peers/postfix.sh" stop >/dev/null 2>&1 || true
    "$KIT/lib/authdns.sh" stop >/dev/null 2>&1 || true
    pkill -f "smtp-sink .*127.0.0.1:2626" 2>/dev/null || true
}
trap cleanup EXIT
RAW=$OUT/auth-compare.raw.txt
: > "$RAW"

# Postfix, checks only: accept cells (a sink takes what it relays).
PF_AUTH_SIGN=0 "$PFA" start >/dev/null
timeout 900 smtp-sink -u nobody -c 127.0.0.1:2626 1024 >/dev/null 2>&1 &
SINK=$!
# Warm-up: policyd-spf processes start with the first sessions.
"$KIT/accept.sh" -s 10 -m 100 -F "$MSG" -P "$("$PFA" pids)" -q "$PFA qsize" -L warmup 127.0.0.1:2525 >/dev/null 2>&1 || true
for s in 10 50; do
    for _ in $(seq "$R"); do
        "$KIT/accept.sh" -s "$s" -m "$M" -F "$MSG" -P "$("$PFA" pids)" -q "$PFA qsize" \
            -L "checks-postfix-s$s" 127.0.0.1:2525 | tail -1 | tee -a "$RAW"
    done
done
kill $SINK 2>/dev/null || true; sleep 2
"$PFA" stop >/dev/null

# Postfix, signing only: relay cells.
PF_AUTH_VERIFY=0 "$PFA" start >/dev/null
for s in 10 50; do
    for _ in $(seq "$R"); do
        "$KIT/relay.sh" -s "$s" -m "$M" -F "$MSG" -P "$("$PFA" pids)" -q "$PFA qsize" -x 300 \
            -L "sign-postfix-rsa-s$s" 127.0.0.1:2525 | tail -1 | tee -a "$RAW"
        sleep 2
    done
done
"$PFA" stop >/dev/null

# pigeon: the same cells.
"$KIT/lib/authdns.sh" start >/dev/null
for s in 10 50; do
    for _ in $(seq "$R"); do
        PG_AUTH=check PG_KEEP=1 "$PG" restart >/dev/null
        "$KIT/accept.sh" -s "$s" -m "$M" -F "$MSG" -P "$("$PG" pids)" -q "$PG qsize" \
            -L "checks-pigeon-s$s" 127.0.0.1:2545 | tail -1 | tee -a "$RAW"
    done
done
for mode in sign sign-ed; do
    PG_AUTH=$mode PG_KEEP=0 "$PG" restart >/dev/null
    for s in 10 50; do
        for _ in $(seq "$R"); do
            "$KIT/relay.sh" -s "$s" -m "$M" -F "$MSG" -P "$("$PG" pids)" -q "$PG qsize" -x 300 \
                -L "sign-pigeon-${mode}-s$s" 127.0.0.1:2545 | tail -1 | tee -a "$RAW"
        done
    done
    "$PG" stop >/dev/null
done
python3 "$KIT/lib/table.py" --title "email authentication: Postfix + milters and pigeon" "$RAW" | tee "$OUT/auth-compare.md"
