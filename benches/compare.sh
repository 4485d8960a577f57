#!/bin/bash
# benches/compare.sh - pigeon and Postfix side by side, same machine, same run,
# with the shared benchmark kit (../shared/bench). Prints every summary line
# and writes markdown tables of medians.
#
# Usage: benches/compare.sh [-R repeats] [-o outdir] [-k "idle counts"] [-p "postfix pigeon"]
#
# Cells: acceptance (smtp-source) at 1, 10 and 50 sessions x 1 KB and 100 KB,
# one new connection per message; dot-to-250 latency on one session (1 KB);
# idle connections after EHLO with server memory. Each target is stopped
# while the other runs. pigeon's spool is emptied before every run (messages
# stay queued: delivery is not part of this comparison); Postfix relays to an
# smtp-sink on 127.0.0.1:2626 as the kit sets it up.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
KIT=${KIT:-$(cd "$here/../shared/bench" && pwd)}
R=3
OUT=/tmp/bench/compare
IDLE_K="1000 10000"
TARGETS="postfix pigeon"
while getopts "R:o:k:p:" o; do
    case $o in
    R) R=$OPTARG ;; o) OUT=$OPTARG ;; k) IDLE_K=$OPTARG ;; p) TARGETS=$OPTARG ;;
    *) echo "usage: $0 [-R n] [-o dir] [-k 'K...'] [-p 'postfix pigeon']" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
RAW_TMP=$OUT/raw.tmp

command -v smtp-source >/dev/null || PATH=$PATH:/usr/sbin
command -v smtp-source >/dev/null || { echo "smtp-source missing: apt-get install postfix" >&2; exit 1; }

# A sink for Postfix's deliveries during its runs; restarted if it goes away.
SINK=
ensure_sink() {
    if [ -z "$SINK" ] || ! kill -0 "$SINK" 2>/dev/null; then
        smtp-sink -u nobody -c 127.0.0.1:2626 1000 >/dev/null 2>&1 &
        SINK=$!
        sleep 0.2
    fi
}
ensure_sink
trap 'kill $SINK 2>/dev/null || true; "$here/benches/peers/pigeon.sh" stop >/dev/null 2>&1 || true; "$KIT/peers/postfix.sh" stop >/dev/null 2>&1 || true' EXIT

peer() { # target command
    case $1 in
    postfix) PF_SMTPD_MAXPROC=${PF_MAXPROC:--} "$KIT/peers/postfix.sh" "$2" ;;
    pigeon) "$here/benches/peers/pigeon.sh" "$2" ;;
    esac
}
addr() { case $1 in postfix) echo 127.0.0.1:2525 ;; pigeon) echo 127.0.0.1:2545 ;; esac; }
fresh() { # make the target's queue empty and the server running
    ensure_sink
    case $1 in
    postfix) peer postfix start >/dev/null; for _ in $(seq 600); do [ "$(peer postfix qsize)" = 0 ] && break; sleep 0.2; done ;;
    pigeon) peer pigeon restart >/dev/null ;;
    esac
}

for t in $TARGETS; do
    for other in postfix pigeon; do [ "$other" = "$t" ] || peer "$other" stop >/dev/null 2>&1 || true; done
    RAW=$OUT/$t.raw.txt
    : > "$RAW"
    for cell in "1 1024 1500" "10 1024 4000" "50 1024 4000" "1 102400 300" "10 102400 600" "50 102400 600"; do
        set -- $cell
        for _ in $(seq "$R"); do
            fresh "$t"
            "$KIT/accept.sh" -s "$1" -m "$3" -l "$2" -T rcpt@bench.test -f bench@src.test \
                -P "$(peer "$t" pids)" -x 300 -L "s$1-l$2" "$(addr "$t")" | tee -a "$RAW"
        done
    done
    for _ in $(seq "$R"); do
        fresh "$t"
        python3 "$KIT/latency.py" -m 2000 --size 1024 -f bench@src.test -t rcpt@bench.test "$(addr "$t")" | tee -a "$RAW"
    done
    for k in $IDLE_K; do
        # Postfix needs one process per connection: 1000 is as far as it goes here.
        if [ "$t" = postfix ] && [ "$k" -gt 1000 ]; then continue; fi
        if [ "$t" = postfix ]; then export PF_MAXPROC=$((k + 100)); peer postfix stop >/dev/null; fi
        fresh "$t"
        ulimit -n 65536 2>/dev/null || true
        python3 "$KIT/idle_conns.py" -k "$k" --rate 2000 --hold 3 --pids "$(peer "$t" pids)" "$(addr "$t")" | tee -a "$RAW"
        if [ "$t" = postfix ]; then unset PF_MAXPROC; peer postfix stop >/dev/null; fi
    done
    peer "$t" stop >/dev/null || true
    [ "$t" = pigeon ] && peer pigeon clean >/dev/null
    python3 "$KIT/lib/table.py" --title "$t" "$RAW" > "$OUT/$t.md"
done
cat "$OUT"/*.md
