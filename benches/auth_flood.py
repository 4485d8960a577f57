#!/usr/bin/env python3
"""Password guessing against submission while mail comes in on port 25.

Starts target/release/pigeon on loopback ports with a temporary spool
(delivery off: what is accepted stays queued), then measures, twice:

  quiet   SENDERS sessions on the port-25 listener send 1 KB messages one
          after another for SECONDS; each message's final dot -> 250 time
          is recorded.
  flood   the same, while ATTACKERS connections on the submission
          listener do STARTTLS and AUTH PLAIN with wrong passwords
          (unknown logins, which cost a full argon2id check like known
          ones), reconnecting whenever the server closes, for SECONDS.

The failed-AUTH limiter is turned off for loopback (auth.exempt_loopback),
which is what an attacker rotating through many addresses gets anyway.
The server's resident memory (VmRSS) is sampled every 0.2 s during both
phases and once more 5 s after the flood.

Prints one summary line:

  AUTHFLOOD senders=10 attackers=500 quiet_p50_ms=.. quiet_p99_ms=..
            flood_p50_ms=.. flood_p99_ms=.. p99_ratio=.. auth_attempts=..
            auth_busy=.. rss_quiet_mb=.. rss_flood_max_mb=.. rss_after_mb=..

(auth_busy: attempts answered 454 4.7.0 because every password-check
thread was taken.)  Bounded: every phase ends after SECONDS, every wait
has a deadline.

usage: benches/auth_flood.py [--bin target/release/pigeon] [--senders 10]
                             [--attackers 500] [--seconds 20]
"""

import argparse
import asyncio
import multiprocessing
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

BODY = "Subject: flood test\r\n\r\n" + ("x" * 76 + "\r\n") * 12


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def write_config(d, smtp, sub):
    cfg = f"""
[server]
hostname = "mx.test"
allow_root = true

[sendmail]
socket = ""

[[listener]]
bind = "127.0.0.1:{smtp}"
mode = "smtp"

[[listener]]
bind = "127.0.0.1:{sub}"
mode = "submission"

[domains]
local = ["example.org"]

[spool]
dir = "{d}/spool"

[tls]
self_signed = true

[log]
level = "error"

[delivery]
enabled = false

[auth]
exempt_loopback = true

[[auth.user]]
login = "box"
password = "$6$x$y"
addresses = ["box@example.org"]

[local.aliases]
postmaster = "box@example.org"
abuse = "box@example.org"
"@example.org" = "box@example.org"
"""
    path = os.path.join(d, "pigeon.toml")
    with open(path, "w") as f:
        f.write(cfg)
    return path


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def reply(r, deadline=30):
    lines = []
    while True:
        line = await asyncio.wait_for(r.readline(), deadline)
        if not line:
            raise ConnectionError("closed")
        lines.append(line)
        if line[3:4] == b" ":
            return lines[0][:3].decode(), b"".join(lines)


async def sender(port, stop_at, lat):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await reply(r)
    w.write(b"EHLO sender.test\r\n")
    await reply(r)
    i = 0
    while time.monotonic() < stop_at:
        i += 1
        w.write(b"MAIL FROM:<s@src.test>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n")
        for _ in range(3):
            code, text = await reply(r)
            if code[0] not in "23":
                raise RuntimeError(text)
        w.write(BODY.encode())
        await w.drain()
        t0 = time.perf_counter()
        w.write(b".\r\n")
        code, text = await reply(r)
        lat.append(time.perf_counter() - t0)
        if code != "250":
            raise RuntimeError(text)
    w.write(b"QUIT\r\n")
    w.close()


async def senders(port, n, seconds, pid, rss):
    lat = []
    stop_at = time.monotonic() + seconds

    async def sample():
        while time.monotonic() < stop_at:
            rss.append(rss_mb(pid))
            await asyncio.sleep(0.2)

    await asyncio.gather(sample(), *(sender(port, stop_at, lat) for _ in range(n)))
    return lat


async def attacker(port, stop_at, counts, ctx, k):
    import base64

    while time.monotonic() < stop_at:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            await reply(r)
            w.write(b"EHLO attacker.test\r\n")
            await reply(r)
            w.write(b"STARTTLS\r\n")
            await reply(r)
            await asyncio.wait_for(w.start_tls(ctx), 30)
            w.write(b"EHLO attacker.test\r\n")
            await reply(r)
            while time.monotonic() < stop_at:
                cred = base64.b64encode(f"\0guess{k}@example.org\0wrong{counts[0]}".encode())
                w.write(b"AUTH PLAIN " + cred + b"\r\n")
                code, _ = await reply(r, 60)
                counts[0] += 1
                if code == "454":
                    counts[1] += 1
                if code == "421":
                    break
            w.close()
        except (OSError, ConnectionError, asyncio.TimeoutError, ssl.SSLError):
            await asyncio.sleep(0.05)


def attack_process(port, n, seconds, out):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    counts = [0, 0]

    async def main():
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(attacker(port, stop_at, counts, ctx, k) for k in range(n)))

    asyncio.run(main())
    out.put(tuple(counts))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/pigeon")
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--attackers", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=20)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="pigeon-authflood-")
    smtp, sub = free_port(), free_port()
    cfg = write_config(d, smtp, sub)
    srv = subprocess.Popen([a.bin, "serve", "--config", cfg], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", sub), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("server did not start")
                time.sleep(0.05)
        rss_quiet = []
        quiet = asyncio.run(senders(smtp, a.senders, a.seconds, srv.pid, rss_quiet))
        q = multiprocessing.Queue()
        # A little longer than the senders: the flood is on for all of it.
        p = multiprocessing.Process(target=attack_process, args=(sub, a.attackers, a.seconds + 4, q))
        p.start()
        time.sleep(3)
        rss_flood = []
        flood = asyncio.run(senders(smtp, a.senders, a.seconds, srv.pid, rss_flood))
        attempts, busy = q.get(timeout=a.seconds + 120)
        p.join(30)
        time.sleep(5)
        after = rss_mb(srv.pid)
        print(
            f"AUTHFLOOD senders={a.senders} attackers={a.attackers} "
            f"quiet_msgs={len(quiet)} flood_msgs={len(flood)} "
            f"quiet_p50_ms={pct(quiet, .5):.2f} quiet_p99_ms={pct(quiet, .99):.2f} "
            f"flood_p50_ms={pct(flood, .5):.2f} flood_p99_ms={pct(flood, .99):.2f} "
            f"p99_ratio={pct(flood, .99) / pct(quiet, .99):.2f} "
            f"auth_attempts={attempts} auth_busy={busy} "
            f"rss_quiet_mb={statistics.median(rss_quiet):.1f} "
            f"rss_flood_max_mb={max(rss_flood):.1f} rss_after_mb={after:.1f}"
        )
    finally:
        srv.terminate()
        try:
            srv.wait(15)
        except subprocess.TimeoutExpired:
            srv.kill()
        subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
