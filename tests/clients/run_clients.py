#!/usr/bin/env python3
"""Real SMTP clients against the real pigeon binary.

Starts `pigeon serve` on a free loopback port with a throw-away spool, sends
mail with Python's smtplib, a raw pipelining socket, swaks and Postfix's
smtp-source, checks every message in the queue with `pigeon queue`, checks
that an untrusted client cannot relay, and checks that SIGTERM stops the
server cleanly. Then tls_auth.py starts a server with users and checks TLS
and AUTH on the submission ports with smtplib, swaks, msmtp, curl and
openssl s_client.

Usage: tests/clients/run_clients.py [--bin PATH] [--keep]
  --bin   the pigeon binary (default: target/release/pigeon, or $PIGEON_BIN)
  --keep  keep the temporary directory (config, spool, server logs)

Prints one PASS/FAIL/SKIP line per check and ends with
"N passed, M failed, K skipped" (K: the groups of checks that could not run
here, such as the Postfix and Dovecot ones without root; a SKIP is never
counted as passed); exits non-zero if any check failed. Needs only loopback networking; swaks
(with Net::SSLeay), /usr/sbin/smtp-source, msmtp, curl, openssl and htpasswd
must be installed (tests/run.sh installs them).
"""

import argparse
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import ssl
import tempfile
import time
import tomllib
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMTP_SOURCE = "/usr/sbin/smtp-source"
IO_TIMEOUT = 30


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substitute(text, subs):
    """Replaces the first match of each (pattern, replacement) in the
    config text; a pattern that matches nothing is an error (the shipped
    config changed)."""
    for pat, rep in subs:
        text, n = re.subn(pat, lambda _m, rep=rep: rep, text, count=1)
        if n != 1:
            raise RuntimeError(f"config/pigeon.toml: no line matches {pat!r}")
    return text


def write_config(path, spool, trusted=None, edit=None):
    """Writes the shipped config with every listener moved to a free loopback
    port, our spool and (optionally) other trusted networks; `edit`, if given,
    rewrites the resulting text once more. Returns {mode: port} for the
    listeners (the "smtp" one is required)."""
    with open(os.path.join(ROOT, "config", "pigeon.toml"), encoding="utf-8") as f:
        text = f.read()
    text, n = re.subn(r'(?m)^bind = ".*"$', lambda _m: f'bind = "127.0.0.1:{free_port()}"', text)
    if n == 0:
        raise RuntimeError("config/pigeon.toml: no listener bind line")
    subs = [
        (r'(?m)^dir = ".*"$', f'dir = "{spool}"'),
        # Each server its own sendmail socket and Maildirs, under its spool.
        (r'(?m)^socket = ".*"$', f'socket = "{spool}/sendmail.sock"'),
        (r'(?m)^maildir = "spool/', f'maildir = "{spool}/'),
        # Short grace so a stuck connection cannot hold the stop test long.
        (r"(?m)^shutdown_grace_secs = \d+$", "shutdown_grace_secs = 5"),
        # These tests look at what was accepted: keep it queued, and never
        # ask the system's DNS servers about test domains.
        (r"(?m)^enabled = true$", "enabled = false"),
    ]
    if trusted is not None:
        subs.append((r"(?m)^trusted_networks = \[.*\]$", "trusted_networks = " + json.dumps(trusted)))
    text = substitute(text, subs)
    if edit is not None:
        text = edit(text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    ports = {}
    for l in cfg.get("listener", []):
        ports.setdefault(l.get("mode", "smtp"), int(l["bind"].rsplit(":", 1)[1]))
    if "smtp" not in ports:
        raise RuntimeError("config/pigeon.toml has no listener with mode = \"smtp\"")
    return ports


class Server:
    """One `pigeon serve` process with its own config, spool and log."""

    def __init__(self, binary, workdir, name, trusted=None, edit=None, prefix=(), spool=None):
        """`prefix`: a command that runs pigeon (setpriv ...); `spool`: the
        spool directory (default: <workdir>/<name>-spool)."""
        self.binary = binary
        self.spool = spool or os.path.join(workdir, name + "-spool")
        self.config = os.path.join(workdir, name + ".toml")
        self.logpath = os.path.join(workdir, name + ".log")
        self.ports = write_config(self.config, self.spool, trusted, edit)
        self.port = self.ports["smtp"]
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [*prefix, binary, "serve", "--config", self.config],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir,
        )
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pigeon exited with {self.proc.returncode} at start:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"pigeon did not answer on port {self.port}:\n{self.tail()}")

    def tail(self, n=30):
        self.log.flush()
        try:
            with open(self.logpath, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def queue(self, *args):
        r = subprocess.run(
            [self.binary, "queue", "--config", self.config, "--spool", self.spool, *args],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )
        if r.returncode != 0:
            raise Failure(f"pigeon queue {' '.join(args)} exited {r.returncode}: {r.stderr.decode(errors='replace')}")
        return r.stdout

    def listing(self):
        return json.loads(self.queue("list", "--json"))

    def by_sender(self, sender):
        return [m for m in self.listing() if m["sender"] == sender]

    def show(self, qid):
        return json.loads(self.queue("show", qid, "--json"))

    def body(self, qid):
        return self.queue("show", qid, "--body")

    def stop(self, within=10):
        """SIGTERM; returns the exit code, or None if it did not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=within)
            except subprocess.TimeoutExpired:
                return None
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def strip_received(stored):
    """The stored message without the Received: header pigeon prepends."""
    check(stored.startswith(b"Received: "), f"stored message does not start with Received: {stored[:80]!r}")
    lines = stored.split(b"\r\n")
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


def one_message(server, sender):
    found = server.by_sender(sender)
    check(len(found) == 1, f"expected 1 queued message from {sender}, found {len(found)}")
    return found[0]


def check_stored(server, sender, rcpts, sent, body_type=None, smtputf8=None):
    """The message from `sender` is queued with these recipients and exactly these bytes."""
    summary = one_message(server, sender)
    qid = summary["id"]
    info = server.show(qid)
    check(info["sender"] == sender, f"{qid}: sender {info['sender']!r}, expected {sender!r}")
    got = [r["address"] for r in info["recipients"]]
    check(got == rcpts, f"{qid}: recipients {got!r}, expected {rcpts!r}")
    check(all(r["state"] == "pending" for r in info["recipients"]), f"{qid}: recipients not pending: {info['recipients']}")
    if body_type is not None:
        check(info["body_type"] == body_type, f"{qid}: body_type {info['body_type']!r}, expected {body_type!r}")
    if smtputf8 is not None:
        check(info["smtputf8"] == smtputf8, f"{qid}: smtputf8 {info['smtputf8']!r}, expected {smtputf8!r}")
    stored = server.body(qid)
    check(info["size"] == len(stored), f"{qid}: size {info['size']} but body has {len(stored)} bytes")
    content = strip_received(stored)
    if content != sent:
        raise Failure(f"{qid}: content differs\n  sent:   {sent!r}\n  stored: {content!r}")
    return qid


# ------------------------------------------------------------------ raw SMTP

class Raw:
    """A raw SMTP connection that reads replies one at a time."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.buf = b""

    def reply(self):
        """One whole (possibly multi-line) reply: (code, [lines])."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise Failure(f"connection closed; partial reply {self.buf!r}, lines so far {lines}")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            check(re.match(rb"^[2-5]\d\d[ -]", line) is not None, f"malformed reply line {line!r}")
            lines.append(line.decode("utf-8", "replace"))
            if line[3:4] == b" ":
                codes = {l[:3] for l in lines}
                check(len(codes) == 1, f"multi-line reply changes code: {lines}")
                return int(line[:3]), lines

    def expect(self, code, what):
        got, lines = self.reply()
        check(got == code, f"{what}: expected {code}, got {lines}")
        return lines

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------- checks

BODY_LINES = [
    b"From: Plain Sender <plain@src.test>",
    b"To: alice@example.org, bob@localhost.test",
    b"Subject: dots and lines",
    b"Message-ID: <plain.1@src.test>",
    b"",
    b"first line",
    b".",
    b"..",
    b".leading dot",
    b"...three",
    b"",
    b"  indented line",
    b"x" * 900,
    b"last line",
]


def t_smtplib_plain(srv):
    sent = b"\r\n".join(BODY_LINES) + b"\r\n"
    rcpts = ["alice@example.org", "bob@localhost.test"]
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.src.test", timeout=IO_TIMEOUT) as s:
        refused = s.sendmail("plain@src.test", rcpts, sent)
        check(refused == {}, f"recipients refused: {refused}")
    check_stored(srv, "plain@src.test", rcpts, sent, body_type="SevenBit", smtputf8=False)


def t_smtplib_8bitmime(srv):
    sent = (
        "From: eight@src.test\r\nTo: carol@example.org\r\nSubject: 8bit\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        "Grüße aus Köln — δοκιμή — 日本語\r\n.\r\nnon-breaking\u00a0space\r\n"
    ).encode("utf-8")
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.src.test", timeout=IO_TIMEOUT) as s:
        s.ehlo()
        check(s.has_extn("8bitmime"), "8BITMIME not advertised")
        refused = s.sendmail("eight@src.test", ["carol@example.org"], sent, mail_options=["BODY=8BITMIME"])
        check(refused == {}, f"recipients refused: {refused}")
    check_stored(srv, "eight@src.test", ["carol@example.org"], sent, body_type="EightBitMime")


def t_smtplib_smtputf8(srv):
    sender = "δοκιμή@src.test"
    rcpt = "ünïcode@example.org"
    sent = (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: Grüße\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Unicode addresses, Unicode body: ✉\r\n"
    ).encode("utf-8")
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.src.test", timeout=IO_TIMEOUT) as s:
        s.ehlo()
        check(s.has_extn("smtputf8"), "SMTPUTF8 not advertised")
        refused = s.sendmail(sender, [rcpt], sent, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        check(refused == {}, f"recipients refused: {refused}")
    check_stored(srv, sender, [rcpt], sent, smtputf8=True)


def t_starttls(srv):
    # The shipped config makes a self-signed certificate, so no verification.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sent = b"Subject: over TLS\r\n\r\nsecret\r\n.\r\n"
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.src.test", timeout=IO_TIMEOUT) as s:
        s.ehlo()
        check(s.has_extn("starttls"), "STARTTLS not advertised on the smtp listener")
        code, msg = s.starttls(context=ctx)
        check(code == 220, f"STARTTLS: {code} {msg!r}")
        check(s.sock.version() in ("TLSv1.2", "TLSv1.3"), f"TLS version {s.sock.version()}")
        s.ehlo()
        check(not s.has_extn("starttls"), "STARTTLS still advertised inside TLS")
        refused = s.sendmail("tls@src.test", ["tls@example.org"], sent)
        check(refused == {}, f"recipients refused: {refused}")
    qid = check_stored(srv, "tls@src.test", ["tls@example.org"], sent)
    proto = srv.show(qid)["protocol"]
    check(proto == "ESMTPS", f"protocol {proto!r}, expected ESMTPS")


def t_utf8_without_smtputf8_refused(srv):
    # A UTF-8 address without SMTPUTF8 on MAIL must be refused (RFC 6531 §3.4).
    r = Raw(srv.port)
    try:
        r.expect(220, "greeting")
        r.send(b"EHLO client.src.test\r\nMAIL FROM:<nosmtputf8@src.test>\r\n")
        r.expect(250, "EHLO")
        r.expect(250, "MAIL")
        r.send("RCPT TO:<ünïcode@example.org>\r\n".encode("utf-8"))
        code, lines = r.reply()
        check(code == 553 and lines and lines[0].startswith("553 5.6.7 "),
              f"UTF-8 recipient without SMTPUTF8: expected 553 5.6.7, got {lines}")
        r.send(b"QUIT\r\n")
        r.expect(221, "QUIT")
    finally:
        r.close()
    check(srv.by_sender("nosmtputf8@src.test") == [], "message queued anyway")


def t_pipelining(srv):
    sent = b"Subject: pipelined\r\n\r\nbody line 1\r\n..stuffed\r\nbody line 3\r\n"
    wire = b"Subject: pipelined\r\n\r\nbody line 1\r\n...stuffed\r\nbody line 3\r\n"
    r = Raw(srv.port)
    try:
        r.expect(220, "greeting")
        # The whole command group in one write (RFC 2920).
        r.send(
            b"EHLO pipe.src.test\r\n"
            b"MAIL FROM:<pipe@src.test>\r\n"
            b"RCPT TO:<p1@example.org>\r\n"
            b"RCPT TO:<p2@localhost.test>\r\n"
            b"DATA\r\n"
        )
        ehlo = r.expect(250, "EHLO")
        check(any(l[4:].upper() == "PIPELINING" for l in ehlo), f"PIPELINING not advertised: {ehlo}")
        r.expect(250, "MAIL")
        r.expect(250, "first RCPT")
        r.expect(250, "second RCPT")
        r.expect(354, "DATA")
        # Content, terminator and QUIT in one write as well.
        r.send(wire + b".\r\nQUIT\r\n")
        lines = r.expect(250, "end of data")
        check("queued as" in lines[-1], f"no queue id in {lines}")
        r.expect(221, "QUIT")
    finally:
        r.close()
    check_stored(srv, "pipe@src.test", ["p1@example.org", "p2@localhost.test"], sent)


def t_bdat(srv):
    # swaks cannot send BDAT, so CHUNKING (RFC 3030) is checked by hand:
    # binary-clean chunks, a CRLF split across chunks, pipelined.
    part1 = b"Subject: chunked\r\n\r\nfirst chunk ends in CR\r"
    part2 = b"\n.\r\nsecond chunk\r\n"
    r = Raw(srv.port)
    try:
        r.expect(220, "greeting")
        r.send(b"EHLO bdat.src.test\r\n")
        ehlo = r.expect(250, "EHLO")
        check(any(l[4:].upper() == "CHUNKING" for l in ehlo), f"CHUNKING not advertised: {ehlo}")
        r.send(
            b"MAIL FROM:<bdat@src.test>\r\nRCPT TO:<chunk@example.org>\r\n"
            + b"BDAT %d\r\n" % len(part1) + part1
            + b"BDAT %d LAST\r\n" % len(part2) + part2
            + b"QUIT\r\n"
        )
        r.expect(250, "MAIL")
        r.expect(250, "RCPT")
        r.expect(250, "first BDAT")
        lines = r.expect(250, "BDAT LAST")
        check("queued as" in lines[-1], f"no queue id in {lines}")
        r.expect(221, "QUIT")
    finally:
        r.close()
    check_stored(srv, "bdat@src.test", ["chunk@example.org"], part1 + part2)


def run_tool(argv, timeout):
    if not shutil.which(argv[0]) and not os.access(argv[0], os.X_OK):
        raise Failure(f"{argv[0]} is not installed (tests/run.sh installs it)")
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"{' '.join(argv)} did not finish in {timeout}s")
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    if r.returncode != 0:
        raise Failure(f"{' '.join(argv)} exited {r.returncode}:\n{out[-3000:]}")
    return out


def swaks_check(srv, sender, extra):
    text = f"swaks body for {sender}\nsecond line"
    out = run_tool(
        ["swaks", "--server", f"127.0.0.1:{srv.port}", "--helo", "swaks.src.test",
         "--from", sender, "--to", "u@example.org", "--body", text, "--timeout", "30", *extra],
        timeout=60,
    )
    summary = one_message(srv, sender)
    check([r["address"] for r in summary["recipients"]] == ["u@example.org"], f"recipients {summary['recipients']}")
    content = strip_received(srv.body(summary["id"]))
    check(b"swaks body for " + sender.encode() + b"\r\nsecond line\r\n" in content,
          f"body not found in stored message {content!r}")
    return out


def t_swaks(srv):
    swaks_check(srv, "swaks@src.test", [])


def t_swaks_pipeline(srv):
    out = swaks_check(srv, "swakspipe@src.test", ["--pipeline"])
    check("PIPELINING" in out, "swaks did not see PIPELINING")


def smtp_source_check(srv, sender, count, extra):
    before = len(srv.listing())
    run_tool([SMTP_SOURCE, *extra, "-m", str(count), "-l", "2048", "-f", sender, "-t", "rcpt@example.org",
              f"127.0.0.1:{srv.port}"], timeout=180)
    got = srv.by_sender(sender)
    check(len(got) == count, f"{count} messages sent, {len(got)} queued from {sender}")
    check(len(srv.listing()) == before + count, "queue did not grow by exactly the messages sent")
    small = [m["id"] for m in got if m["size"] < 2048]
    check(not small, f"messages shorter than the 2048 bytes sent: {small[:5]}")
    bad = [m["id"] for m in got if [r["address"] for r in m["recipients"]] != ["rcpt@example.org"]]
    check(not bad, f"messages with wrong recipients: {bad[:5]}")


def t_smtp_source(srv):
    # 5 parallel sessions, 200 messages of 2 KiB, one message per connection.
    smtp_source_check(srv, "bench@src.test", 200, ["-s", "5"])


def t_smtp_source_reuse(srv):
    # -d: many messages over the same connection.
    smtp_source_check(srv, "benchd@src.test", 100, ["-s", "2", "-d"])


def t_relay_denied(binary, workdir):
    srv = Server(binary, workdir, "norelay", trusted=[])
    try:
        with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.src.test", timeout=IO_TIMEOUT) as s:
            s.ehlo()
            code, msg = s.mail("outsider@src.test")
            check(code == 250, f"MAIL: {code} {msg!r}")
            code, msg = s.rcpt("victim@remote.test")
            check(code == 554 and msg.startswith(b"5.7.1"), f"relay attempt got {code} {msg!r}, expected 554 5.7.1")
            code, msg = s.rcpt("local@example.org")
            check(code == 250, f"local recipient after refused relay: {code} {msg!r}")
            code, msg = s.data(b"Subject: local only\r\n\r\nhi\r\n")
            check(code == 250, f"DATA: {code} {msg!r}")
        summary = one_message(srv, "outsider@src.test")
        got = [r["address"] for r in summary["recipients"]]
        check(got == ["local@example.org"], f"queued recipients {got}, expected only the local one")
        code = srv.stop()
        check(code == 0, f"second server exit status {code} after SIGTERM\n{srv.tail()}")
    finally:
        srv.kill()


def main():
    # tls_auth.py imports its helpers from this file: make that import find
    # this module even when it runs as __main__, so both share one Failure.
    sys.modules.setdefault("run_clients", sys.modules[__name__])
    import dovecot
    import postfix_peer
    import service
    import tls_auth

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("PIGEON_BIN", os.path.join(ROOT, "target", "release", "pigeon")))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        print(f"no pigeon binary at {binary}: run cargo build --release first", file=sys.stderr)
        print("0 passed, 1 failed, 0 skipped")
        return 1

    workdir = tempfile.mkdtemp(prefix="pigeon-clients-")
    passed, failed, skipped = 0, 0, 0

    def run(name, fn, *a):
        nonlocal passed, failed
        # A check may return a string: how it reached its verdict, printed
        # after PASS.
        t0 = time.monotonic()
        try:
            note = fn(*a)
        except Failure as e:
            failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            return False
        except Exception:
            failed += 1
            print(f"FAIL {name}: unexpected error\n{traceback.format_exc()}", flush=True)
            return False
        passed += 1
        note = f": {note}" if isinstance(note, str) and note else ""
        print(f"PASS {name} ({time.monotonic() - t0:.1f}s){note}", flush=True)
        return True

    def skip(name, reason):
        # Checks that cannot run here (for instance without root): counted
        # and reported as skipped, never as passed.
        nonlocal skipped
        skipped += 1
        print(f"SKIP {name}: {reason}", flush=True)

    run.skip = skip

    srv = None
    try:
        try:
            srv = Server(binary, workdir, "main")
        except Exception as e:
            print(f"FAIL start server: {e}", flush=True)
            failed += 1
        if srv is not None:
            print(f"pigeon listening on 127.0.0.1:{srv.port}, spool {srv.spool}", flush=True)
            run("smtplib: plain message, dot lines", t_smtplib_plain, srv)
            run("smtplib: BODY=8BITMIME, UTF-8 body", t_smtplib_8bitmime, srv)
            run("smtplib: SMTPUTF8 addresses", t_smtplib_smtputf8, srv)
            run("smtplib: STARTTLS, then a message", t_starttls, srv)
            run("raw: UTF-8 address without SMTPUTF8 refused", t_utf8_without_smtputf8_refused, srv)
            run("raw: PIPELINING, whole group in one write", t_pipelining, srv)
            run("raw: BDAT chunks", t_bdat, srv)
            run("swaks: plain", t_swaks, srv)
            run("swaks: --pipeline", t_swaks_pipeline, srv)
            run("smtp-source: 200 messages, 5 sessions", t_smtp_source, srv)
            run("smtp-source -d: 100 messages, connections reused", t_smtp_source_reuse, srv)
        run("relay refused when trusted_networks = []", t_relay_denied, binary, workdir)
        # TLS and AUTH with more clients, against a third server that has
        # users (tests/clients/tls_auth.py).
        tls_auth.run_checks(run, binary, workdir)
        # Mail both ways with a real Postfix (tests/clients/postfix_peer.py).
        postfix_peer.run_checks(run, binary, workdir, keep=args.keep)
        # Local delivery into a real Dovecot (tests/clients/dovecot.py).
        dovecot.run_checks(run, binary, workdir)
        # The service: unit files, sendmail for local programs, metrics
        # (tests/clients/service.py).
        service.run_checks(run, binary, workdir)
        if srv is not None:
            def t_stop():
                code = srv.stop(within=10)
                check(code is not None, f"server still running 10s after SIGTERM\n{srv.tail()}")
                check(code == 0, f"server exit status {code} after SIGTERM\n{srv.tail()}")
            run("SIGTERM stops the server with status 0", t_stop)
    finally:
        if srv is not None:
            if failed:
                print(f"--- last lines of the server log ({srv.logpath}) ---\n{srv.tail()}", flush=True)
            srv.kill()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"{passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
