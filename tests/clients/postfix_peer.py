"""Mail both ways between pigeon and a real Postfix; part of the clients stage.

run_clients.py calls run_checks(). It starts a separate Postfix instance
(its own config directory, queue, data directory and log under a temporary
directory; nothing in /etc/postfix, /var/spool/postfix or /var/lib/postfix
is read or changed, so a default instance may run alongside) that

  - listens only on 127.0.0.1:<free port>, IPv4 only, every service with
    chroot = n;
  - offers STARTTLS with a self-signed certificate
    (smtpd_tls_security_level = may) and logs TLS sessions;
  - delivers every address of peer.test into one Maildir with its virtual(8)
    agent (virtual_mailbox_maps = static:inbox/), as uid/gid 65534;
  - relays everything else from 127.0.0.0/8 to relayhost = pigeon, with
    smtp_tls_security_level = may;
  - does not rewrite headers of mail from the network
    (local_header_rewrite_clients empty), so the bytes can be compared.

and two `pigeon serve` processes from the shipped config with delivery on
(first_retry_secs = 1, [delivery.routes] "peer.test" = the Postfix port,
[dns] nameservers = an unused loopback port, so no query leaves the
machine): one with delivery.starttls = "none", one with "opportunistic".

Checks:
  pigeon -> Postfix, without TLS, and with STARTTLS: a message with dot
    lines, a line that is only ".", an 8-bit UTF-8 body (BODY=8BITMIME), a
    folded header of 2.5 KB and a 980-byte header line arrives in the Maildir
    with exactly the bytes sent (Postfix stores LF line ends) below
    Return-Path, X-Original-To, Delivered-To and the two Received: headers;
    the Postfix queue id in pigeon's "delivered" log line is the one in
    Postfix's Received: header and log, where smtpd saw (or did not see)
    "Anonymous TLS connection established from"; pigeon's queue is empty.
  Postfix -> pigeon: the same kind of message for user@example.org (the
    shipped config's catch-all sends it to dev@example.org) is relayed by
    Postfix over STARTTLS and pigeon delivers it into dev's Maildir:
    Return-Path with the envelope sender, Delivered-To, pigeon's ESMTPS
    Received:, Postfix's Received: and then exactly what was sent (with
    Unix line ends, as Maildirs hold it).

Starting a Postfix instance needs root: as another user these checks are
skipped (a SKIP line, counted as skipped, never as passed).
"""

import email.utils
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time

from run_clients import check, Failure, free_port, IO_TIMEOUT, Server, substitute

POSTFIX = "/usr/sbin/postfix"
DAEMON_DIR = "/usr/lib/postfix/sbin"
PEER_HOST = "peer-postfix.test"
PIGEON_HOST = "pigeon.localhost"  # server.hostname of config/pigeon.toml
MAIL_UID = 65534  # owner of the delivered Maildir (nobody/nogroup)
WAIT = 20  # seconds to wait for a message to get somewhere


# -------------------------------------------------------------- the peer

class Postfix:
    """A Postfix instance of its own under `base`, driven with `postfix -c`."""

    def __init__(self, base, port, relay_port):
        self.base = base
        self.port = port
        self.relay_port = relay_port
        self.conf = os.path.join(base, "conf")
        self.queue = os.path.join(base, "spool")
        self.data = os.path.join(base, "data")
        self.mail = os.path.join(base, "mail")
        self.maildir = os.path.join(self.mail, "inbox")
        self.maillog = os.path.join(base, "maillog")
        self.started = False

    def _write(self):
        # `postfix check` wants the config tree owned by root; every daemon
        # re-reads main.cf as the postfix user, so it must be readable.
        os.chmod(self.base, 0o755)
        for d in (self.conf, self.queue):
            os.makedirs(d, mode=0o755)
        os.makedirs(self.data, mode=0o700)
        shutil.chown(self.data, "postfix", "postfix")
        os.makedirs(self.mail, mode=0o755)
        os.chown(self.mail, MAIL_UID, MAIL_UID)
        cert = os.path.join(self.conf, "cert.pem")
        key = os.path.join(self.conf, "key.pem")
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "30", "-subj", f"/CN={PEER_HOST}",
             "-addext", f"subjectAltName=DNS:{PEER_HOST}", "-keyout", key, "-out", cert],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
        )
        if r.returncode != 0:
            raise Failure(f"openssl req failed: {r.stderr.decode(errors='replace')}")
        os.chmod(key, 0o600)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(f"""\
# Written by tests/clients/postfix_peer.py: a test peer for pigeon.
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
command_directory = /usr/sbin
daemon_directory = {DAEMON_DIR}
mail_owner = postfix
setgid_group = postdrop
myhostname = {PEER_HOST}
mydomain = localdomain
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery on this test peer
alias_maps =
alias_database =
# Every address of peer.test goes into one Maildir (the trailing slash).
virtual_mailbox_domains = peer.test
virtual_mailbox_base = {self.mail}
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{MAIL_UID}
virtual_gid_maps = static:{MAIL_UID}
# Everything else goes to pigeon.
relayhost = [127.0.0.1]:{self.relay_port}
smtp_dns_support_level = disabled
# Leave the headers of mail from the network as they came.
local_header_rewrite_clients =
smtpd_banner = $myhostname ESMTP $mail_name
biff = no
maillog_file = {self.maillog}
maillog_file_prefixes = {self.base}
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtp_tls_security_level = may
smtp_tls_loglevel = 1
""")
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(f"""\
# Written by tests/clients/postfix_peer.py: one inet listener, chroot n everywhere.
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{self.port} inet n    -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
""")

    def _postfix(self, *args, timeout=60):
        r = subprocess.run([POSTFIX, "-c", self.conf, *args], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout)
        return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")

    def start(self):
        if not os.access(POSTFIX, os.X_OK):
            raise Failure(f"{POSTFIX} is not installed (tests/run.sh installs postfix)")
        self._write()
        # `postfix check` runs post-install, which creates the queue
        # directories of this instance.
        rc, out = self._postfix("check")
        check(rc == 0, f"postfix -c {self.conf} check exited {rc}:\n{out}")
        rc, out = self._postfix("start")
        self.started = True
        check(rc == 0, f"postfix -c {self.conf} start exited {rc}:\n{out}\n{self.log_tail()}")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise Failure(f"Postfix did not answer on 127.0.0.1:{self.port}\n{self.log_tail()}")

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def stop(self):
        """Stops this instance (only its own master and what it started)."""
        if not self.started:
            return
        pid = self.master_pid()
        if pid is None:
            return
        try:
            self._postfix("stop", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.master_pid() == pid:
            time.sleep(0.1)
        if self.master_pid() == pid:
            # Its children notice a dead master and exit by themselves.
            os.kill(pid, signal.SIGKILL)

    def log(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=25):
        return "--- last lines of the Postfix log ---\n" + "\n".join(self.log().splitlines()[-n:])

    def wait_log(self, pattern, what):
        """Waits for a line of the Postfix log matching `pattern`; returns its match."""
        deadline = time.monotonic() + WAIT
        while True:
            for line in self.log().splitlines():
                m = re.search(pattern, line)
                if m:
                    return m
            if time.monotonic() > deadline:
                raise Failure(f"no line in the Postfix log for {what} (/{pattern}/) after {WAIT}s\n{self.log_tail()}")
            time.sleep(0.1)

    def delivered(self, message_id):
        """Waits for the message with this Message-ID in the Maildir; returns its bytes."""
        needle = b"\nMessage-ID: " + message_id.encode() + b"\n"
        newdir = os.path.join(self.maildir, "new")
        deadline = time.monotonic() + WAIT
        while True:
            try:
                names = sorted(os.listdir(newdir))
            except FileNotFoundError:
                names = []
            for n in names:
                with open(os.path.join(newdir, n), "rb") as f:
                    data = f.read()
                if needle in data.split(b"\n\n", 1)[0] + b"\n":
                    return data
            if time.monotonic() > deadline:
                raise Failure(f"{message_id} not in {newdir} after {WAIT}s\n{self.log_tail()}")
            time.sleep(0.1)

    def session_of(self, qid, service):
        """The log lines of the Postfix process (smtpd or smtp) that handled
        queue id `qid`, from its "connect" (smtpd) or from after its previous
        message (smtp) up to the line naming `qid` with client=/status=."""
        lines = self.log().splitlines()
        end = None
        for i, l in enumerate(lines):
            if re.search(rf"postfix/{service}\[\d+\]: {qid}: ", l):
                end = i
                break
        check(end is not None, f"no postfix/{service} line for {qid}\n{self.log_tail()}")
        pid = re.search(rf"postfix/{service}\[(\d+)\]", lines[end]).group(1)
        mine = re.compile(rf"postfix/{service}\[{pid}\]: ")
        start = end
        for i in range(end - 1, -1, -1):
            if not mine.search(lines[i]):
                continue
            if re.search(r": [0-9A-Za-z]+: (to|client)=", lines[i]):
                break  # this process's previous message
            start = i
            if service == "smtpd" and re.search(r": connect from ", lines[i]):
                break
        return lines[start:end + 1]


# -------------------------------------------------------------- messages

def test_message(tag, sender, rcpt):
    """(Message-ID, message bytes with CRLF line ends)."""
    mid = f"<{tag}.{os.getpid()}.{time.time_ns()}@src.test>"
    refs = [f"<ref-{i:03d}.{tag}@src.test>" for i in range(80)]
    folded = "References: " + refs[0]
    for r in refs[1:]:
        folded += "\r\n " + r  # one message id per continuation line
    long_line = "X-Long-Line: " + "-".join(f"w{i:03d}" for i in range(193))
    long_line = long_line[:980]
    lines = [
        f"From: Peer Test <{sender}>",
        f"To: {rcpt}",
        f"Subject: {tag}: dots, 8-bit and long headers",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Message-ID: {mid}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        folded,
        long_line,
        "",
        "first line",
        ".",
        "..",
        ".leading dot",
        "...three",
        ". a dot and a space",
        "",
        "Grüße aus Köln — δοκιμή — 日本語",
        "non-breaking\u00a0space",
        "x" * 900,
        ".",
        "last line",
    ]
    return mid, ("\r\n".join(lines) + "\r\n").encode("utf-8")


def submit(port, sender, rcpt, data):
    """Sends one message over SMTP with BODY=8BITMIME; returns the queue id
    from the reply to the data."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.src.test", timeout=IO_TIMEOUT) as s:
        s.ehlo()
        check(s.has_extn("8bitmime"), f"8BITMIME not advertised on port {port}")
        code, msg = s.mail(sender, ["BODY=8BITMIME"])
        check(code == 250, f"MAIL: {code} {msg!r}")
        code, msg = s.rcpt(rcpt)
        check(code == 250, f"RCPT: {code} {msg!r}")
        code, msg = s.data(data)  # smtplib dot-stuffs
        check(code == 250, f"DATA: {code} {msg!r}")
    m = re.search(rb"queued as ([0-9A-Za-z]+)", msg)
    check(m is not None, f"no queue id in {msg!r}")
    return m.group(1).decode()


def split_trace(data, nl, names):
    """Takes the header fields named in `names` (lower case) off the top of
    the message: ([(name, whole field text)], rest)."""
    lines = data.split(nl)
    fields = []
    i = 0
    while i < len(lines):
        name = lines[i].split(b":", 1)[0].lower()
        if b":" not in lines[i] or name.decode("ascii", "replace") not in names:
            break
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
            j += 1
        fields.append((name.decode(), b"\n".join(lines[i:j]).decode("utf-8", "replace")))
        i = j
    return fields, nl.join(lines[i:])


def diff_at(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return f"first difference at byte {n}: sent {a[n:n + 60]!r}, got {b[n:n + 60]!r} ({len(a)} vs {len(b)} bytes)"


# ---------------------------------------------------------------- checks

def pigeon_to_postfix(srv, pf, tls):
    tag = "peer-tls" if tls else "peer-plain"
    sender = f"{tag}@src.test"
    rcpt = "someone@peer.test"
    mid, sent = test_message(tag, sender, rcpt)
    pigeon_id = submit(srv.port, sender, rcpt, sent)

    got = pf.delivered(mid)
    fields, content = split_trace(got, b"\n", ("return-path", "x-original-to", "delivered-to", "received"))
    expected = sent.replace(b"\r\n", b"\n")
    if content != expected:
        raise Failure(f"delivered content differs from what was sent: {diff_at(expected, content)}")
    names = [n for n, _ in fields]
    check(names == ["return-path", "x-original-to", "delivered-to", "received", "received"],
          f"trace headers {names}")
    values = dict(fields[:3])
    check(values["return-path"] == f"Return-Path: <{sender}>", f"sender not kept: {values['return-path']!r}")
    check(values["delivered-to"] == f"Delivered-To: {rcpt}", f"{values['delivered-to']!r}")
    by_postfix, by_pigeon = fields[3][1], fields[4][1]
    check(f"from {PIGEON_HOST} " in by_postfix and f"by {PEER_HOST} (Postfix)" in by_postfix,
          f"first Received: is not Postfix's, from pigeon: {by_postfix!r}")
    check(f"by {PIGEON_HOST}" in by_pigeon and "client.src.test" in by_pigeon,
          f"second Received: is not pigeon's: {by_pigeon!r}")
    m = re.search(r"\bwith (ESMTPS?A?) id ([0-9A-Za-z]+)", by_postfix)
    check(m is not None, f"no protocol and id in Postfix's Received: {by_postfix!r}")
    proto, pf_id = m.group(1), m.group(2)
    if tls:
        check(proto == "ESMTPS" and re.search(r"\(using TLSv1\.[23] with cipher", by_postfix),
              f"Postfix's Received: shows no TLS: {by_postfix!r}")
    else:
        check(proto == "ESMTP" and "using TLS" not in by_postfix,
              f"Postfix's Received: shows TLS with starttls = \"none\": {by_postfix!r}")

    # pigeon: the message is gone from the queue, and the log has the reply
    # naming Postfix's queue id.
    deadline = time.monotonic() + WAIT
    while srv.listing() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = srv.listing()
    check(left == [], f"pigeon's queue is not empty after delivery: {left}\n{srv.tail()}")
    log = srv.tail(400)
    delivered = [l for l in log.splitlines() if "delivered" in l and rcpt in l]
    check(delivered, f"no \"delivered\" line for {rcpt} in pigeon's log\n{srv.tail()}")
    check(any(re.search(rf"queued as {pf_id}\b", l) for l in delivered),
          f"pigeon's log does not show Postfix's queue id {pf_id}: {delivered}")

    # Postfix: smtpd took it from pigeon (with or without TLS) and virtual
    # put it in the Maildir.
    pf.wait_log(rf"postfix/virtual\[\d+\]: {pf_id}: to=<{re.escape(rcpt)}>, .*status=sent \(delivered to maildir\)",
                f"the delivery of {pf_id}")
    session = pf.session_of(pf_id, "smtpd")
    check(any(re.search(r": connect from \S*\[127\.0\.0\.1\]", l) for l in session),
          f"no connect from 127.0.0.1 before {pf_id}: {session}")
    check(any(re.search(rf"{pf_id}: client=\S*\[127\.0\.0\.1\]", l) for l in session), f"{session}")
    tls_lines = [l for l in session if "TLS connection established from" in l]
    if tls:
        check(any("Anonymous TLS connection established from" in l for l in tls_lines),
              f"Postfix did not log a TLS connection from pigeon: {session}")
        tls_note = re.search(r"established from \S+: (\S+ with cipher \S+)", tls_lines[0])
        how = tls_note.group(1) if tls_note else "TLS"
    else:
        check(not tls_lines, f"TLS used with starttls = \"none\": {tls_lines}")
        how = "no TLS"
    return f"pigeon {pigeon_id} -> Postfix {pf_id}, {how}, {len(sent)} bytes identical"


def postfix_to_pigeon(srv, pf):
    sender = "from-postfix@src.test"
    rcpt = "user@example.org"
    mid, sent = test_message("via-postfix", sender, rcpt)
    pf_id = submit(pf.port, sender, rcpt, sent)

    m = pf.wait_log(rf"postfix/(smtp|error)\[\d+\]: {pf_id}: to=<{re.escape(rcpt)}>, relay=(\S+), "
                    r".*status=(\w+) \((.*)\)$", f"the relay of {pf_id} to pigeon")
    check(m.group(3) == "sent" and m.group(2) == f"127.0.0.1[127.0.0.1]:{srv.port}",
          f"Postfix did not relay to pigeon: {m.group(0)}\n{srv.tail()}")
    pm = re.search(r"queued as ([0-9A-Za-z]+)", m.group(4))
    check(pm is not None, f"no pigeon queue id in Postfix's log: {m.group(0)}")
    qid = pm.group(1)
    session = pf.session_of(pf_id, "smtp")
    tls = [l for l in session if re.search(r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]", l)]
    check(tls, f"Postfix did not use STARTTLS to pigeon: {session}")

    # user@example.org is caught by the shipped config's catch-all and
    # delivered into dev@example.org's Maildir (under the spool here), with
    # Unix line ends.
    maildir = os.path.join(srv.spool, "mail", "example.org", "dev", "Maildir", "new")
    deadline = time.monotonic() + WAIT
    stored = None
    while stored is None:
        for name in (os.listdir(maildir) if os.path.isdir(maildir) else []):
            with open(os.path.join(maildir, name), "rb") as f:
                data = f.read()
            if mid.encode() in data:
                stored = data
        if stored is None:
            check(time.monotonic() < deadline, f"{qid} not in {maildir} after {WAIT}s\n{srv.tail()}")
            time.sleep(0.1)
    fields, content = split_trace(stored, b"\n", ("return-path", "delivered-to", "received"))
    names = [f[0] for f in fields]
    check(names == ["return-path", "delivered-to", "received", "received"],
          f"{qid}: trace fields {names}, expected Return-Path, Delivered-To, pigeon's and Postfix's Received")
    check(fields[0][1] == f"Return-Path: <{sender}>", f"{qid}: {fields[0][1]!r}")
    check(fields[1][1] == "Delivered-To: dev@example.org", f"{qid}: {fields[1][1]!r}")
    by_pigeon, by_postfix = fields[2][1], fields[3][1]
    check(f"by {PIGEON_HOST}" in by_pigeon and PEER_HOST in by_pigeon and "with ESMTPS" in by_pigeon,
          f"first Received: is not pigeon's ESMTPS one, from Postfix: {by_pigeon!r}")
    check(f"by {PEER_HOST} (Postfix) with ESMTP id {pf_id}" in by_postfix and "client.src.test" in by_postfix,
          f"second Received: is not Postfix's for {pf_id}: {by_postfix!r}")
    want = sent.replace(b"\r\n", b"\n")
    if content != want:
        raise Failure(f"{qid}: delivered content differs from what was sent: {diff_at(want, content)}")
    how = re.search(r"established to \S+: (\S+ with cipher \S+)", tls[0])
    return (f"Postfix {pf_id} -> pigeon {qid} over {how.group(1) if how else 'TLS'} -> Maildir, "
            f"{len(sent)} bytes identical")


def delivery_edit(postfix_port, starttls, dns_port):
    """Turns delivery back on in run_clients' config and points peer.test at Postfix."""
    def edit(text):
        subs = [
            (r"(?m)^enabled = false$", "enabled = true"),
            (r"(?m)^first_retry_secs = \d+$", "first_retry_secs = 1"),
            (r'(?m)^starttls = ".*"$', f'starttls = "{starttls}"'),
            (r"(?m)^\[delivery\.routes\]$", f'[delivery.routes]\n"peer.test" = "[127.0.0.1]:{postfix_port}"'),
            (r"(?m)^nameservers = \[.*\]$", f'nameservers = ["127.0.0.1:{dns_port}"]'),
        ]
        return substitute(text, subs)
    return edit


def run_checks(run, binary, workdir, keep=False):
    """Starts Postfix and two pigeons and runs the checks through `run`
    (run_clients.main's runner, which prints PASS/FAIL)."""
    if os.geteuid() != 0:
        run.skip("Postfix peer (mail both ways with Postfix)", "starting a Postfix instance needs root")
        return
    base = tempfile.mkdtemp(prefix="pigeon-peer-")
    pf_port, dns_port = free_port(), free_port()
    servers = []
    pf = None
    ok = True
    try:
        try:
            plain = Server(binary, workdir, "peer-plain", edit=delivery_edit(pf_port, "none", dns_port))
            servers.append(plain)
            tls = Server(binary, workdir, "peer-tls", edit=delivery_edit(pf_port, "opportunistic", dns_port))
            servers.append(tls)
            pf = Postfix(base, pf_port, tls.port)
            pf.start()
        except Exception as e:
            err = str(e)

            def t_start():
                raise Failure(err)
            run("start Postfix and pigeon with delivery on", t_start)
            ok = False
            return
        print(f"Postfix peer on 127.0.0.1:{pf.port} ({base}); pigeon starttls=none on {plain.port}, "
              f"starttls=opportunistic on {tls.port}", flush=True)
        ok &= run("Postfix peer: pigeon -> Postfix, starttls = none", pigeon_to_postfix, plain, pf, False)
        ok &= run("Postfix peer: pigeon -> Postfix, STARTTLS", pigeon_to_postfix, tls, pf, True)
        ok &= run("Postfix peer: Postfix -> pigeon (relayhost), STARTTLS", postfix_to_pigeon, tls, pf)

        def t_stop():
            for s in servers:
                code = s.stop(within=10)
                check(code == 0, f"{s.config}: exit status {code} after SIGTERM\n{s.tail()}")
        ok &= run("Postfix peer: both pigeons stop on SIGTERM with status 0", t_stop)
    finally:
        if not ok:
            for s in servers:
                print(f"--- last lines of {s.logpath} ---\n{s.tail()}", flush=True)
            if pf is not None:
                print(pf.log_tail(), flush=True)
        for s in servers:
            s.kill()
        if pf is not None:
            pf.stop()
        if keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
