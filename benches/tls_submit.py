#!/usr/bin/env python3
"""tls_submit.py - TLS handshakes + authenticated submissions per second.

Implicit TLS (port 465, "submissions"): every message uses a NEW TCP
connection, a full TLS handshake (no session resumption; certificate not
verified), then, each command waiting for its reply (no pipelining):

    220 greeting, EHLO, AUTH PLAIN <initial response> (235), MAIL FROM,
    RCPT TO, DATA, body + "." (250), QUIT (221), close.

C client threads share one counter of M messages. The run is bounded in
count (-m) and in time (--max-seconds: no new connection is started after
it, and the script stops at most --timeout seconds later).

Timings per connection (client side, so they include waiting for the CPU
on a shared box):
  session = TCP connect .. 221 reply to QUIT   -> p50_ms, p99_ms
  hs      = TCP connect .. TLS handshake done  -> hs_p50_ms
  auth    = AUTH sent .. 235 received          -> auth_p50_ms

--quickack: ACK the server's last handshake flight at once (Linux
TCP_QUICKACK). Without it, a server that does not set TCP_NODELAY and
writes the 220 greeting as a separate segment after the handshake waits
for the client's delayed ACK (~40 ms on Linux) before the 220 leaves
(Nagle's algorithm). That is idle time, not CPU; the option shows the
server's throughput without it. The default is what an ordinary client
gets.

With --pids, the CPU time (utime+stime, plus that of reaped children) of
the server's process trees (the roots and all their descendants, read from
/proc, as lib/proctree.py of the shared kit does) is read before and after
the run.

Final line:
  TLSSUBMIT label=.. target=.. tls=.. quickack=.. c=.. m=.. size=.. ok=.. errors=..
            wall_s=.. msgs_per_s=.. p50_ms=.. p99_ms=.. hs_p50_ms=..
            auth_p50_ms=.. srv_cpu_s=.. srv_cpu_ms_per_msg=.. cli_cpu_s=..
            cpu_busy_pct=.. load1=.. [TIMEOUT] [err_sample=".."]

msgs_per_s = ok / wall_s, wall_s from the start of the first connection to
the end of the last one. srv_cpu_ms_per_msg = srv_cpu_s / ok. cli_cpu_s is
this script's own CPU time, cpu_busy_pct the machine-wide busy share (100 =
all cores) over the run.
"""
import argparse
import base64
import os
import socket
import ssl
import sys
import threading
import time

_CLK = os.sysconf("SC_CLK_TCK")


# --- server CPU accounting (same method as the kit's lib/proctree.py) -------

def _stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    r = s.rfind(")")
    return s[r + 2:].split()


def _tree(roots):
    ppids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppids[int(d)] = int(_stat(int(d))[1])
            except (OSError, IndexError, ValueError):
                pass
    children = {}
    for p, pp in ppids.items():
        children.setdefault(pp, []).append(p)
    seen, stack = set(), [r for r in roots if r in ppids]
    while stack:
        p = stack.pop()
        if p not in seen:
            seen.add(p)
            stack.extend(children.get(p, []))
    return seen


def tree_cpu_seconds(roots):
    """utime+stime+cutime+cstime over the live tree (cutime/cstime hold the
    CPU of children that exited and were reaped, e.g. Postfix smtpd after
    max_use). Take the difference of two readings."""
    tot = 0
    for p in _tree(roots):
        try:
            tot += sum(int(x) for x in _stat(p)[11:15])
        except (OSError, IndexError, ValueError):
            pass
    return tot / _CLK


def cpu_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v), idle


# --- SMTP over TLS -----------------------------------------------------------

class SMTPError(Exception):
    pass


class Session:
    def __init__(self, sock):
        self.s = sock
        self.buf = b""

    def line(self):
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise SMTPError("connection closed by server")
            self.buf += d
        ln, self.buf = self.buf.split(b"\n", 1)
        return ln

    def reply(self):
        while True:
            ln = self.line()
            if len(ln) < 4 or ln[3:4] != b"-":
                try:
                    return int(ln[:3]), ln.decode(errors="replace").strip()
                except ValueError:
                    raise SMTPError("bad reply: %r" % ln[:60])

    def expect(self, code, what):
        c, txt = self.reply()
        if c != code:
            raise SMTPError("%s: %s" % (what, txt))

    def cmd(self, data, code, what):
        self.s.sendall(data)
        self.expect(code, what)


def one_message(a, host, port, ctx, body, auth_line, lat):
    """One connection, one message. Appends (session, handshake, auth) s."""
    t0 = time.perf_counter()
    raw = socket.create_connection((host, port), timeout=a.timeout)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = ctx.wrap_socket(raw, server_hostname=a.sni or None)
        if a.quickack:
            tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    except BaseException:
        raw.close()
        raise
    try:
        t_hs = time.perf_counter()
        c = Session(tls)
        c.expect(220, "greeting")
        c.cmd(b"EHLO %s\r\n" % a.ehlo.encode(), 250, "EHLO")
        t_a = time.perf_counter()
        c.cmd(auth_line, 235, "AUTH")
        t_a2 = time.perf_counter()
        c.cmd(b"MAIL FROM:<%s>\r\n" % a.sender.encode(), 250, "MAIL")
        c.cmd(b"RCPT TO:<%s>\r\n" % a.to.encode(), 250, "RCPT")
        c.cmd(b"DATA\r\n", 354, "DATA")
        c.cmd(body, 250, "end of data")
        c.cmd(b"QUIT\r\n", 221, "QUIT")
        t1 = time.perf_counter()
    finally:
        tls.close()
    lat.append((t1 - t0, t_hs - t0, t_a2 - t_a))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="HOST:PORT (implicit TLS)")
    ap.add_argument("-c", type=int, default=10, help="parallel clients (default 10)")
    ap.add_argument("-m", type=int, default=1000, help="messages = connections (default 1000)")
    ap.add_argument("--size", type=int, default=1024, help="body bytes (default 1024)")
    ap.add_argument("--user", default="bench")
    ap.add_argument("--password", default="benchpass")
    ap.add_argument("-f", "--from", dest="sender", default="bench@src.test")
    ap.add_argument("-t", "--to", default="rcpt@bench.test")
    ap.add_argument("--ehlo", default="tls-submit.bench.test")
    ap.add_argument("--sni", default="", help="server name sent in the ClientHello (default: none)")
    ap.add_argument("--tls12", action="store_true", help="force TLS 1.2 (default: TLS 1.3)")
    ap.add_argument("--quickack", action="store_true",
                    help="set TCP_QUICKACK after the handshake (see above)")
    ap.add_argument("--timeout", type=float, default=15.0, help="per-operation timeout, s")
    ap.add_argument("--max-seconds", type=float, default=120.0,
                    help="start no connection after this long (default 120)")
    ap.add_argument("--pids", default="", help="server root PIDs for CPU accounting, PID[,PID]")
    ap.add_argument("-L", "--label", default="")
    a = ap.parse_args()

    host, port = a.target.rsplit(":", 1)
    port = int(port)
    if host not in ("localhost",) and not host.startswith("127."):
        print("TLSSUBMIT target=%s FAILED loopback targets only" % a.target)
        sys.exit(2)
    roots = [int(x) for x in a.pids.replace(" ", ",").split(",") if x.strip()]

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if a.tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        tls_name = "1.2"
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        tls_name = "1.3"

    line = b"X" * 76 + b"\r\n"
    nlines = max(1, a.size // len(line))
    body = (b"From: <%s>\r\nTo: <%s>\r\nSubject: tls submission probe\r\n\r\n" % (
        a.sender.encode(), a.to.encode())) + line * nlines + b".\r\n"
    auth_line = b"AUTH PLAIN %s\r\n" % base64.b64encode(
        b"\0" + a.user.encode() + b"\0" + a.password.encode())

    lock = threading.Lock()
    state = {"issued": 0, "errors": 0, "first_err": "", "t_end": None}
    lat = []  # list.append is atomic
    deadline = None  # set just before the threads start

    def worker():
        while True:
            with lock:
                if state["issued"] >= a.m or time.perf_counter() > deadline:
                    return
                state["issued"] += 1
            try:
                one_message(a, host, port, ctx, body, auth_line, lat)
            except (SMTPError, OSError, ssl.SSLError) as e:
                with lock:
                    state["errors"] += 1
                    if not state["first_err"]:
                        state["first_err"] = "%s: %s" % (type(e).__name__, e)
            finally:
                with lock:
                    state["t_end"] = time.perf_counter()

    load1 = os.getloadavg()[0]
    cpu0 = tree_cpu_seconds(roots) if roots else 0.0
    j0 = cpu_jiffies()
    c0 = os.times()
    t_start = time.perf_counter()
    deadline = t_start + a.max_seconds
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.c)]
    for th in threads:
        th.start()
    hard_stop = deadline + a.timeout * 8 + 5  # a session has 8 replies to wait for
    for th in threads:
        th.join(max(0.0, hard_stop - time.perf_counter()))
    timed_out = any(th.is_alive() for th in threads) or state["issued"] < a.m
    with lock:
        t_end = state["t_end"] or time.perf_counter()
        errors, first_err = state["errors"], state["first_err"]
        samples = list(lat)
    c1 = os.times()
    j1 = cpu_jiffies()
    cpu1 = tree_cpu_seconds(roots) if roots else 0.0

    wall = t_end - t_start
    ok = len(samples)
    dj = j1[0] - j0[0]
    busy = 100.0 * (dj - (j1[1] - j0[1])) / dj if dj > 0 else 0.0
    cli_cpu = (c1[0] - c0[0]) + (c1[1] - c0[1])

    def pct(vals, p):
        if not vals:
            return 0.0
        vals = sorted(vals)
        return vals[min(len(vals) - 1, int(round(p / 100.0 * (len(vals) - 1))))] * 1000

    sess = [s[0] for s in samples]
    out = ("TLSSUBMIT label=%s target=%s tls=%s quickack=%d c=%d m=%d size=%d ok=%d errors=%d "
           "wall_s=%.2f msgs_per_s=%.1f p50_ms=%.2f p99_ms=%.2f hs_p50_ms=%.2f auth_p50_ms=%.2f" % (
               a.label or "-", a.target, tls_name, int(a.quickack), a.c, a.m, a.size, ok, errors, wall,
               ok / wall if wall > 0 else 0.0, pct(sess, 50), pct(sess, 99),
               pct([s[1] for s in samples], 50), pct([s[2] for s in samples], 50)))
    if roots:
        srv = cpu1 - cpu0
        out += " srv_cpu_s=%.2f srv_cpu_ms_per_msg=%.3f" % (srv, srv * 1000 / ok if ok else 0.0)
    out += " cli_cpu_s=%.2f cpu_busy_pct=%.0f load1=%.2f" % (cli_cpu, busy, load1)
    if timed_out:
        out += " TIMEOUT"
    if first_err:
        out += ' err_sample="%s"' % first_err.replace('"', "'")[:100]
    print(out, flush=True)
    # daemon threads still blocked (TIMEOUT) must not keep the process alive
    os._exit(0 if ok and not timed_out else 1)


if __name__ == "__main__":
    main()
