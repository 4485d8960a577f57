#!/bin/bash
# benches/startup.sh - how long pigeon takes to start with N messages queued.
#
# Usage: benches/startup.sh [N] [--cold]
#
# Plants N one-recipient 1 KiB messages (default 100000) in a fresh spool
# with the queue's own encoder (the ignored test queue::tests::recovery_time,
# which also times Queue::open and queue listing in-process), then starts
# `pigeon serve` on that spool and measures the time until it accepts
# connections (recovery: every file read and CRC-checked, temporary files
# removed). --cold drops the page cache first (needs root; affects the
# whole machine). Prints `STARTUP n=.. ready_s=.. recovery_ms=.. cache=..`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-100000}
CACHE=warm
[ "${2:-}" = --cold ] && CACHE=cold
dir=$(mktemp -d /tmp/pigeon-startup.XXXXXX)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
pid=
cd "$here"
cargo build --release --bins -q
PIGEON_RECOVERY_N=$N PIGEON_RECOVERY_DIR=$dir/spool \
    timeout 900 cargo test --release -q --lib queue::tests::recovery_time -- --ignored --nocapture 2>&1 |
    grep -E "planted|open\(\)|list\(\)" || true
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/pigeon.toml" <<EOT
[server]
hostname = "startup.test"
[[listener]]
bind = "127.0.0.1:$port"
[domains]
local = ["example.com"]
[spool]
dir = "$dir/spool"
[dns]
nameservers = ["127.0.0.1:9"]
[log]
level = "info"
EOT
if [ "$CACHE" = cold ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
t0=$(date +%s.%N)
target/release/pigeon serve --config "$dir/pigeon.toml" > "$dir/log" 2>&1 &
pid=$!
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$dir/log"; exit 1; }
    sleep 0.01
done
t1=$(date +%s.%N)
rec=$(grep -o 'queue recovered.*' "$dir/log" | grep -o 'ms=[0-9]*' | head -1 | cut -d= -f2)
loaded=$(grep -o 'queue recovered.*' "$dir/log" | grep -o 'loaded=[0-9]*' | head -1 | cut -d= -f2)
kill -TERM "$pid"; wait "$pid" || true; pid=
echo "STARTUP n=$N loaded=$loaded ready_s=$(python3 -c "print(f'{$t1 - $t0:.3f}')") recovery_ms=$rec cache=$CACHE"
