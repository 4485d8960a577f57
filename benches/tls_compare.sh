#!/bin/bash
# benches/tls_compare.sh - TLS handshakes + authenticated submissions per
# second on an implicit-TLS port (465 role), pigeon and Postfix+Dovecot, same
# machine, same run.
#
# Usage: benches/tls_compare.sh [-R repeats] [-m messages] [-c clients]
#                               [-x max_seconds] [-o outdir] [-q 0|1]
#
# Each message: new TCP connection, full TLS 1.3 handshake, EHLO, AUTH
# PLAIN, MAIL, RCPT, DATA (1 KB), QUIT (benches/tls_submit.py). Defaults:
# 10 clients, 1000 messages, R=3 runs per server, plus one pigeon run with
# an argon2id password hash instead of sha512-crypt. Both servers check the
# same $6$ sha512-crypt hash (5000 rounds) in the main runs. With -q 1 (the
# default) each server also gets R runs with tls_submit.py --quickack
# (labels *-quickack): the client ACKs the end of the handshake at once, so
# a server without TCP_NODELAY is not held ~40 ms per connection by Nagle +
# delayed ACK before its 220 (see tls_submit.py).
#
#   postfix        benches/peers/postfix-submissions.sh: 127.0.0.1:2466,
#                  SASL via Dovecot; relays to an smtp-sink on 127.0.0.1:2626
#   pigeon         benches/peers/pigeon-submissions.sh: 127.0.0.1:2465;
#                  mail stays queued (spool emptied, server restarted,
#                  before every run)
#   pigeon-argon2  the same with PG_HASH=argon2
#
# Only one server runs at a time. Server CPU (srv_cpu_*) covers the Postfix
# master's tree plus Dovecot's, or pigeon's process. Every summary line is
# printed and appended to OUTDIR/tls.raw.txt (truncated at start); a
# markdown table of medians follows.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
R=3
M=1000
C=10
MAXS=120
OUT=/tmp/bench/tls-compare
QA=1
while getopts "R:m:c:x:o:q:" o; do
    case $o in
    R) R=$OPTARG ;; m) M=$OPTARG ;; c) C=$OPTARG ;; x) MAXS=$OPTARG ;; o) OUT=$OPTARG ;; q) QA=$OPTARG ;;
    *) echo "usage: $0 [-R n] [-m msgs] [-c clients] [-x max_s] [-o dir] [-q 0|1]" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
RAW=$OUT/tls.raw.txt
: > "$RAW"
PF=$here/benches/peers/postfix-submissions.sh
PG=$here/benches/peers/pigeon-submissions.sh
SINK_ADDR=127.0.0.1:2626

command -v smtp-sink >/dev/null || PATH=$PATH:/usr/sbin
command -v smtp-sink >/dev/null || { echo "smtp-sink missing: apt-get install postfix" >&2; exit 1; }
command -v dovecot >/dev/null || { echo "dovecot missing: apt-get install dovecot-core" >&2; exit 1; }

# A sink for Postfix's deliveries (pigeon keeps its mail queued), bounded in
# time like the kit's. As root, smtp-sink needs -u (it exits otherwise).
timeout -k 5 3600 smtp-sink -u nobody "$SINK_ADDR" 1000 >"$OUT/sink.log" 2>&1 &
SINK=$!
ok=
for _ in $(seq 30); do
    sleep 0.2
    kill -0 "$SINK" 2>/dev/null || break
    (exec 3<>"/dev/tcp/${SINK_ADDR%:*}/${SINK_ADDR##*:}") 2>/dev/null && { ok=1; break; }
done
[ -n "$ok" ] || { echo "smtp-sink is not listening on $SINK_ADDR: $(cat "$OUT/sink.log")" >&2; exit 1; }
cleanup() {
    kill "$SINK" 2>/dev/null || true
    "$PG" stop >/dev/null 2>&1 || true
    PG_HASH=argon2 "$PG" stop >/dev/null 2>&1 || true
    "$PF" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

run() { # label target pids [tls_submit.py options]
    local label=$1 target=$2 pids=$3
    shift 3
    python3 "$here/benches/tls_submit.py" -c "$C" -m "$M" --size 1024 \
        --user bench --password benchpass -f bench@src.test -t rcpt@bench.test \
        --max-seconds "$MAXS" --pids "$pids" -L "$label" "$@" "$target" | tee -a "$RAW" || true
}
VARIANTS=plain
[ "$QA" = 1 ] && VARIANTS="plain quickack"
qa_opt() { [ "$1" = quickack ] && echo --quickack || true; }
qa_sfx() { [ "$1" = quickack ] && echo -quickack || true; }

drain() { # wait (at most 120 s) until Postfix's queue is empty
    for _ in $(seq 600); do [ "$("$PF" qsize)" = 0 ] && return 0; sleep 0.2; done
    echo "warning: postfix queue not empty ($("$PF" qsize) messages): is the sink up?" >&2
}

# --- Postfix + Dovecot -------------------------------------------------------
"$PG" stop >/dev/null
"$PF" stop >/dev/null 2>&1 || true
"$PF" flush >/dev/null 2>&1 || true   # mail left by an earlier, broken run
"$PF" start >&2
for v in $VARIANTS; do
    for _ in $(seq "$R"); do
        drain
        run "postfix$(qa_sfx $v)" 127.0.0.1:2466 "$("$PF" pids)" $(qa_opt $v)
    done
done
drain
"$PF" stop >&2

# --- pigeon, sha512-crypt, then argon2id -----------------------------------
for v in $VARIANTS; do
    for _ in $(seq "$R"); do
        "$PG" restart >/dev/null
        run "pigeon$(qa_sfx $v)" 127.0.0.1:2465 "$("$PG" pids)" $(qa_opt $v)
    done
done
PG_HASH=argon2 "$PG" restart >/dev/null
run pigeon-argon2 127.0.0.1:2465 "$("$PG" pids)"
"$PG" stop >/dev/null

# --- medians -----------------------------------------------------------------
python3 - "$RAW" <<'EOF'
import sys
rows = {}
order = []
for line in open(sys.argv[1]):
    if not line.startswith("TLSSUBMIT"):
        continue
    kv = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t and not t.startswith("err_sample"))
    lab = kv.get("label", "-")
    if lab not in rows:
        rows[lab] = []
        order.append(lab)
    rows[lab].append(kv)

def med(vals):
    v = sorted(vals)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2

def col(rs, k):
    return [float(r[k]) for r in rs if k in r]

def cell(rs, k, fmt):
    v = col(rs, k)
    if not v:
        return "-"
    s = fmt % med(v)
    return s + (" (" + fmt % min(v) + "–" + fmt % max(v) + ")" if len(v) > 1 else "")

print()
print("| server | runs | msgs/s | session p50 ms | p99 ms | handshake p50 ms | AUTH p50 ms | srv CPU ms/msg | client CPU s | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for lab in order:
    rs = rows[lab]
    print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %d |" % (
        lab, len(rs), cell(rs, "msgs_per_s", "%.1f"), cell(rs, "p50_ms", "%.2f"),
        cell(rs, "p99_ms", "%.2f"), cell(rs, "hs_p50_ms", "%.2f"), cell(rs, "auth_p50_ms", "%.2f"),
        cell(rs, "srv_cpu_ms_per_msg", "%.3f"), cell(rs, "cli_cpu_s", "%.2f"),
        sum(int(r.get("errors", 0)) for r in rs)))
print()
print("Medians over the runs (min–max in brackets); c=%s, m=%s, 1 KB, TLS %s, one message per connection." % (
    rows[order[0]][0].get("c"), rows[order[0]][0].get("m"), rows[order[0]][0].get("tls")) if order else "no runs")
EOF
