"""Local delivery into a real Dovecot, and the whole path of a person's
mail; part of the clients stage.

run_clients.py calls run_checks(). Everything runs on 127.0.0.1, under one
temporary directory:

  - dnsmasq (Debian's dnsmasq-base) on a free port: remote.test has
    MX 10 mx.remote.test, which is 127.0.0.1; every query is logged;
  - a recording SMTP sink on a free port, standing for the MX of remote.test
    (pigeon's delivery.remote_port points there);
  - Dovecot 2.3 (dovecot-core, dovecot-imapd, dovecot-lmtpd) from a config
    of its own (nothing in /etc/dovecot is read): IMAP on a free port, LMTP
    on a Unix socket, users alice@example.org and bob@example.org in a
    passwd-file, all mail as uid/gid 65534 under <tmp>/mail/%d/%n/Maildir;
  - pigeon from the shipped config (listeners moved to free ports), run as
    uid/gid 65534 (setpriv) as it would run as its own user: alice is
    delivered over LMTP to Dovecot, bob into his Maildir by pigeon (the one
    Dovecot reads), both may log in on the submission ports.

Checks:
  - port 25 role -> alice (LMTP) and -> bob (Maildir): each read back over
    IMAP with Python's imaplib, headers and body intact below the trace
    fields added on the way;
  - the mission: alice submits on the 587 role with STARTTLS and AUTH (as
    Thunderbird does) to bob (local, read over IMAP) and to
    carol@remote.test (remote: dnsmasq saw the MX query, the sink got it);
    an internet server (swaks) delivers to pigeon's port-25 role for alice,
    read over IMAP.

Needs root (Dovecot's master runs as root; pigeon is started as 65534):
as another user these checks are skipped (a SKIP line, counted as skipped,
never as passed).
"""

import email
import email.policy
import imaplib
import os
import re
import shutil
import smtplib
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time

from run_clients import check, Failure, free_port, Server, substitute

NOBODY = 65534
WAIT = 20
PASSWORDS = {"alice@example.org": "alice-imap-pw", "bob@example.org": "bob-imap-pw"}


# ------------------------------------------------------------------ peers

class Sink:
    """A recording SMTP server (the MX of remote.test)."""

    def __init__(self, port):
        self.messages = []
        lock = threading.Lock()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                def say(line):
                    self.wfile.write(line.encode() + b"\r\n")
                say("220 mx.remote.test ESMTP sink")
                mail, rcpts = None, []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd = line.decode("utf-8", "replace").strip()
                    up = cmd.upper()
                    if up.startswith("EHLO"):
                        say("250-mx.remote.test\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES")
                    elif up.startswith("HELO"):
                        say("250 mx.remote.test")
                    elif up.startswith("MAIL FROM:"):
                        mail, rcpts = re.search(r"<(.*?)>", cmd).group(1), []
                        say("250 2.1.0 Ok")
                    elif up.startswith("RCPT TO:"):
                        rcpts.append(re.search(r"<(.*?)>", cmd).group(1))
                        say("250 2.1.5 Ok")
                    elif up == "DATA":
                        say("354 go ahead")
                        data = b""
                        while True:
                            l = self.rfile.readline()
                            if not l or l == b".\r\n":
                                break
                            data += l[1:] if l.startswith(b"..") else l
                        with lock:
                            outer.messages.append((mail, rcpts, data))
                        say("250 2.0.0 Ok: queued")
                    elif up == "QUIT":
                        say("221 2.0.0 Bye")
                        return
                    else:
                        say("250 2.0.0 Ok")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Dns:
    """dnsmasq answering for remote.test only, logging every query."""

    def __init__(self, base, port):
        self.port = port
        self.logpath = os.path.join(base, "dnsmasq.log")
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll",
             f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
             "--mx-host=remote.test,mx.remote.test,10", "--host-record=mx.remote.test,127.0.0.1",
             "--log-queries", "--log-facility=-", "--pid-file=", "--user=root"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while "started" not in self.text() and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"dnsmasq exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)

    def text(self):
        self.log.flush()
        with open(self.logpath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


class Dovecot:
    """A Dovecot instance of its own under `base`."""

    def __init__(self, base, imap_port):
        self.base = base
        self.imap_port = imap_port
        self.run = os.path.join(base, "dovecot-run")
        self.mail = os.path.join(base, "mail")
        self.lmtp = os.path.join(self.run, "lmtp")
        self.logpath = os.path.join(base, "dovecot.log")
        self.conf = os.path.join(base, "dovecot.conf")
        passwd = os.path.join(base, "dovecot.passwd")
        with open(passwd, "w") as f:
            for user, pw in PASSWORDS.items():
                local, domain = user.split("@")
                f.write(f"{user}:{{PLAIN}}{pw}:{NOBODY}:{NOBODY}::{self.mail}/{domain}/{local}::\n")
        os.chmod(passwd, 0o644)
        state = os.path.join(base, "dovecot-state")
        os.makedirs(state, exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(f"""\
# Written by tests/clients/dovecot.py: a Dovecot for pigeon's tests.
instance_name = pigeon-test
protocols = imap lmtp
listen = 127.0.0.1
base_dir = {self.run}
state_dir = {state}
log_path = {self.logpath}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = dovecot
default_login_user = dovenull
recipient_delimiter = +
mail_location = maildir:~/Maildir
first_valid_uid = {NOBODY}
last_valid_uid = {NOBODY}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {passwd}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
""")
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"dovecot exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", imap_port), timeout=2) as s:
                    if s.recv(200).startswith(b"* OK") and os.path.exists(self.lmtp):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise Failure(f"dovecot did not start:\n{self.log_tail()}")

    def log_tail(self, n=40):
        try:
            with open(self.logpath, encoding="utf-8", errors="replace") as f:
                return "\n".join(f.read().splitlines()[-n:])
        except OSError:
            return "(no dovecot log)"

    def fetch(self, user, message_id):
        """The message with this Message-ID in the user's INBOX, as IMAP
        gives it (CRLF), waiting up to WAIT seconds for it to arrive."""
        deadline = time.monotonic() + WAIT
        while True:
            imap = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10)
            try:
                imap.login(user, PASSWORDS[user])
                typ, _ = imap.select("INBOX", readonly=True)
                check(typ == "OK", f"IMAP SELECT INBOX for {user}: {typ}")
                typ, data = imap.search(None, "HEADER", "Message-ID", message_id)
                check(typ == "OK", f"IMAP SEARCH: {typ} {data}")
                ids = data[0].split()
                if ids:
                    check(len(ids) == 1, f"{len(ids)} copies of {message_id} in {user}'s INBOX")
                    typ, parts = imap.fetch(ids[0], "(BODY.PEEK[])")
                    check(typ == "OK", f"IMAP FETCH: {typ}")
                    return parts[0][1]
            finally:
                try:
                    imap.logout()
                except Exception:
                    pass
            if time.monotonic() > deadline:
                raise Failure(f"{message_id} not in {user}'s INBOX after {WAIT}s\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------- helpers

def test_message(tag, sender, rcpts):
    mid = f"<{tag}.{time.time_ns()}@src.test>"
    lines = [
        f"From: Sender <{sender}>",
        f"To: {', '.join(rcpts)}",
        f"Subject: pigeon to Dovecot: {tag}",
        f"Message-ID: {mid}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "X-Folded: first part",
        "\tsecond part",
        "",
        "Hello from pigeon.",
        ".a line with a leading dot",
        ".",
        "Gr\u00fc\u00dfe, \u00e9t\u00e9 \u2603",
        "",
        "last line",
    ]
    return mid, ("\r\n".join(lines) + "\r\n").encode("utf-8")


TRACE = (b"return-path:", b"delivered-to:", b"received:")


def without_trace(raw):
    """The message without the trace fields added on the way (Return-Path,
    Delivered-To, Received, with their continuation lines)."""
    out, skipping, in_header = [], False, True
    for line in raw.split(b"\r\n"):
        if in_header:
            if line == b"":
                in_header = False
            elif line[:1] in (b" ", b"\t"):
                if skipping:
                    continue
            else:
                skipping = line.lower().startswith(TRACE)
                if skipping:
                    continue
        out.append(line)
    return b"\r\n".join(out)


def check_intact(got, sent, who, extra_line_ok=False):
    """`extra_line_ok`: the client (swaks) adds one empty line at the end."""
    mine = without_trace(got)
    if extra_line_ok and mine == sent + b"\r\n":
        mine = sent
    if mine != sent:
        i = next((k for k in range(min(len(mine), len(sent))) if mine[k] != sent[k]), min(len(mine), len(sent)))
        raise Failure(f"{who}: message differs at byte {i}: sent {sent[i:i+60]!r}, IMAP gave {mine[i:i+60]!r}")
    headers = email.message_from_bytes(got, policy=email.policy.default)
    return headers


def pigeon_edit(base, dns_port, sink_port, dovecot):
    def edit(text):
        users = "".join(
            f'[[auth.user]]\nlogin = "{u}"\npassword = "{h}"\naddresses = ["{u}"]\ndelivery = "{d}"\n\n'
            for u, h, d in USERS)
        subs = [
            (r"(?m)^enabled = false$", "enabled = true"),
            (r"(?m)^first_retry_secs = \d+$", "first_retry_secs = 1"),
            (r"(?m)^remote_port = \d+$", f"remote_port = {sink_port}"),
            (r"(?m)^nameservers = \[.*\]$", f'nameservers = ["127.0.0.1:{dns_port}"]'),
            (r'(?m)^maildir = ".*"$', f'maildir = "{base}/mail/{{domain}}/{{user}}/Maildir"'),
            (r'(?m)^lmtp = ".*"$', f'lmtp = "{dovecot.lmtp}"'),
            (r"(?m)^\[local\]$", users + "[local]"),
        ]
        return substitute(text, subs)
    return edit


USERS = []  # (login, argon2id hash, delivery), filled in by run_checks


def hash_password(binary, pw):
    r = subprocess.run([binary, "hash-password"], input=pw.encode() + b"\n", capture_output=True, timeout=30)
    h = r.stdout.decode().strip()
    check(r.returncode == 0 and h.startswith("$argon2id$"), f"hash-password: {r.returncode} {h!r}")
    return h


# ----------------------------------------------------------------- checks

def t_smtp_to_lmtp_and_maildir(srv, dovecot):
    notes = []
    for user, how in (("alice@example.org", "LMTP"), ("bob@example.org", "Maildir")):
        mid, sent = test_message(f"port25-{how}", "someone@internet.test", [user])
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as s:
            s.ehlo("mail.internet.test")
            code, _ = s.mail("someone@internet.test", ["BODY=8BITMIME"])
            check(code == 250, f"MAIL: {code}")
            code, msg = s.rcpt(user)
            check(code == 250, f"RCPT {user}: {code} {msg!r}")
            code, msg = s.data(sent)
            check(code == 250, f"DATA: {code} {msg!r}")
        got = dovecot.fetch(user, mid)
        h = check_intact(got, sent, f"{user} via {how}")
        check(h["Return-Path"] == "<someone@internet.test>", f"Return-Path {h['Return-Path']!r}")
        check(h["Delivered-To"] == user, f"Delivered-To {h['Delivered-To']!r}")
        notes.append(f"{user} via {how}: {len(sent)} bytes intact over IMAP")
    return "; ".join(notes)


def t_mission(srv, dovecot, dns, sink):
    # Alice's mail client: STARTTLS on the submission port, then AUTH.
    rcpts = ["bob@example.org", "carol@remote.test"]
    mid, sent = test_message("submission", "alice@example.org", rcpts)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
        s.ehlo("alices-laptop")
        check(s.has_extn("starttls"), "no STARTTLS on the submission port")
        s.starttls(context=ctx)
        s.ehlo("alices-laptop")
        s.login("alice@example.org", "alice-submit-pw")
        refused = s.sendmail("alice@example.org", rcpts, sent)
        check(not refused, f"refused: {refused}")
    got = dovecot.fetch("bob@example.org", mid)
    check_intact(got, sent, "bob via submission")
    deadline = time.monotonic() + WAIT
    while not any(m[1] == ["carol@remote.test"] for m in sink.messages):
        check(time.monotonic() < deadline, f"carol@remote.test never reached the MX sink\n{srv.tail()}")
        time.sleep(0.1)
    mail_from, _, data = next(m for m in sink.messages if m[1] == ["carol@remote.test"])
    check(mail_from == "alice@example.org", f"MAIL FROM at the MX: {mail_from!r}")
    check(without_trace(data) == sent, "the copy for carol differs from what alice sent")
    check(re.search(r"query\[MX\] remote\.test from 127\.0\.0\.1", dns.text()),
          f"dnsmasq saw no MX query for remote.test:\n{dns.text()}")

    # An internet server delivers to the port-25 role for alice.
    mid2, sent2 = test_message("from-the-internet", "friend@internet.test", ["alice@example.org"])
    msgfile = os.path.join(dovecot.base, "swaks-message.eml")
    with open(msgfile, "wb") as f:
        f.write(sent2)
    r = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{srv.port}", "--helo", "mail.internet.test",
         "--from", "friend@internet.test", "--to", "alice@example.org", "--data", f"@{msgfile}"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    check(r.returncode == 0 and "<-  250 2.0.0" in out, f"swaks exited {r.returncode}:\n{out[-1500:]}")
    got = dovecot.fetch("alice@example.org", mid2)
    check_intact(got, sent2, "alice from swaks", extra_line_ok=True)
    return ("submission+STARTTLS+AUTH -> bob (IMAP) and carol (MX lookup, sink); "
            "swaks on the port-25 role -> alice (IMAP)")


def run_checks(run, binary, workdir):
    if os.geteuid() != 0:
        run.skip("Dovecot (local delivery, IMAP, the whole path)",
                 "starting Dovecot, and pigeon as another user, needs root")
        return
    for tool in ("dovecot", "dnsmasq", "swaks", "setpriv"):
        if shutil.which(tool) is None:
            def t_missing(tool=tool):
                raise Failure(f"{tool} is not installed")
            run(f"Dovecot: {tool} present", t_missing)
            return
    base = tempfile.mkdtemp(prefix="pigeon-dovecot-")
    os.chmod(base, 0o755)
    for d in ("mail", "spool"):
        os.makedirs(os.path.join(base, d))
        os.chown(os.path.join(base, d), NOBODY, NOBODY)
    USERS[:] = [
        ("alice@example.org", hash_password(binary, "alice-submit-pw"), "lmtp"),
        ("bob@example.org", hash_password(binary, "bob-submit-pw"), "maildir"),
    ]
    dns = sink = dovecot = srv = None
    ok = True
    try:
        try:
            dns = Dns(base, free_port())
            sink = Sink(free_port())
            dovecot = Dovecot(base, free_port())
            srv = Server(binary, base, "pigeon", edit=pigeon_edit(base, dns.port, sink.server.server_address[1], dovecot),
                         prefix=["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"],
                         spool=os.path.join(base, "spool"))
        except Exception as e:
            err = f"{e}\n{dovecot.log_tail() if dovecot else ''}"

            def t_start():
                raise Failure(err)
            run("Dovecot: start dnsmasq, Dovecot and pigeon (as uid 65534)", t_start)
            ok = False
            return
        print(f"Dovecot IMAP on 127.0.0.1:{dovecot.imap_port}, LMTP {dovecot.lmtp}; pigeon on "
              f"{srv.ports} as uid {NOBODY}; dnsmasq on {dns.port}; MX sink on {sink.server.server_address[1]}",
              flush=True)
        ok &= run("Dovecot: port 25 -> LMTP and Maildir, read back over IMAP", t_smtp_to_lmtp_and_maildir, srv, dovecot)
        ok &= run("Dovecot: submission (STARTTLS, AUTH) to a local and a remote user; swaks to port 25",
                  t_mission, srv, dovecot, dns, sink)
    finally:
        if not ok:
            if srv is not None:
                print(f"--- last lines of {srv.logpath} ---\n{srv.tail()}", flush=True)
            if dovecot is not None:
                print(f"--- last lines of the Dovecot log ---\n{dovecot.log_tail()}", flush=True)
        for p in (srv,):
            if p is not None:
                p.kill()
        for p in (dovecot, dns, sink):
            if p is not None:
                p.stop()
        shutil.rmtree(base, ignore_errors=True)
