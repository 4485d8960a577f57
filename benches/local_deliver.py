#!/usr/bin/env python3
"""benches/local_deliver.py - inbound mail delivered into a local Maildir:
how fast an MTA accepts N messages from smtp-source AND has every one of
them in the Maildir's new/ directory.

Usage: local_deliver.py --maildir DIR [-s 10] [-m 5000] [-l 1024]
                        [--pids PID[,PID]] [--kit DIR] [--max-seconds 300]
                        [-L label] HOST:PORT

t0 is just before smtp-source starts; accept_wall_s ends when it exits,
deliver_wall_s when new/ holds as many files as messages were accepted
(polled every 50 ms). Server CPU is the process tree of --pids (the shared
kit's lib/proctree.py). Prints one line:

  LOCAL label=.. target=.. s=.. m=.. l=.. accept_wall_s=.. accepted_per_s=..
        deliver_wall_s=.. delivered_per_s=.. delivered=.. errors=..
        [srv_cpu_s=.. srv_cpu_ms_per_msg=..] [TIMEOUT]

Talks only to the target it is given; bounded by --max-seconds.
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def count(new):
    try:
        return len(os.listdir(new))
    except FileNotFoundError:
        return 0


def cpu(kit, pids):
    if not pids:
        return None
    r = subprocess.run([sys.executable, os.path.join(kit, "lib", "proctree.py"), "cpu", pids],
                       capture_output=True, text=True, timeout=30)
    return float(r.stdout.strip().split("=", 1)[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--maildir", required=True)
    ap.add_argument("-s", type=int, default=10)
    ap.add_argument("-m", type=int, default=5000)
    ap.add_argument("-l", type=int, default=1024)
    ap.add_argument("--pids", default="")
    ap.add_argument("--kit", default=os.path.join(HERE, "..", "..", "shared", "bench"))
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("-L", "--label", default="local")
    ap.add_argument("target")
    a = ap.parse_args()
    new = os.path.join(a.maildir, "new")
    before = count(new)
    smtp_source = "/usr/sbin/smtp-source"
    c0 = cpu(a.kit, a.pids)
    t0 = time.monotonic()
    src = subprocess.Popen(
        [smtp_source, "-A", "-s", str(a.s), "-m", str(a.m), "-l", str(a.l),
         "-f", "bench@src.test", "-t", "rcpt@bench.test", a.target],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    accept_wall = None
    errors = 0
    delivered = 0
    timed_out = False
    while True:
        now = time.monotonic()
        if accept_wall is None and src.poll() is not None:
            accept_wall = now - t0
            err = src.stderr.read().decode(errors="replace")
            errors = err.count("warning:")
        delivered = count(new) - before
        want = a.m - errors
        if accept_wall is not None and delivered >= want:
            deliver_wall = time.monotonic() - t0
            break
        if now - t0 > a.max_seconds:
            timed_out = True
            deliver_wall = now - t0
            if src.poll() is None:
                src.kill()
            if accept_wall is None:
                accept_wall = deliver_wall
            break
        time.sleep(0.05)
    c1 = cpu(a.kit, a.pids)
    ok = a.m - errors
    line = (f"LOCAL label={a.label} target={a.target} s={a.s} m={a.m} l={a.l} "
            f"accept_wall_s={accept_wall:.2f} accepted_per_s={ok / accept_wall:.1f} "
            f"deliver_wall_s={deliver_wall:.2f} delivered_per_s={delivered / deliver_wall:.1f} "
            f"delivered={delivered} errors={errors}")
    if c0 is not None and c1 is not None:
        line += f" srv_cpu_s={c1 - c0:.2f} srv_cpu_ms_per_msg={(c1 - c0) * 1000 / max(delivered, 1):.3f}"
    if timed_out:
        line += " TIMEOUT"
    print(line, flush=True)
    return 1 if timed_out else 0


if __name__ == "__main__":
    sys.exit(main())
