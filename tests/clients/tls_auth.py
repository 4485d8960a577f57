"""TLS and AUTH seen by real clients; part of the clients stage.

run_clients.py calls run_checks(). It starts a third `pigeon serve` from the
shipped config with users added:

  alice            argon2id, from `pigeon hash-password`; addresses
                   alice@example.org and @alice.test
  bob@example.org  argon2id; addresses bob@example.org and @bob.test
  sha              sha512-crypt ($6$), a user migrated from another server
  bc               bcrypt ($2y$, from htpasswd), likewise

and `auth.failure_delay_ms = 50` so failed attempts cost little time. Then
it sends mail on the "submission" port (STARTTLS, AUTH required) and the
"submissions" port (implicit TLS, AUTH required) with swaks, Python's
smtplib, msmtp and curl; checks the refusals (535, 553, 530, 538, and the
421 after too many failures); and checks the TLS versions each port accepts
with openssl s_client. Each accepted message must be in the queue with the
expected envelope, stored as ESMTPSA over TLS 1.2 or 1.3.
"""

import base64
import json
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import warnings

from run_clients import check, Failure, IO_TIMEOUT, one_message, Server, substitute

# Every user's password, and a wrong one.
PASSWORDS = {
    "alice": "secret",
    "bob@example.org": "bob-secret",
    "sha": "sha-secret",
    "bc": "bc-secret",
}
WRONG = "not-the-password"
RCPT = "friend@remote.test"


def no_verify():
    """The test server's certificate is self-signed."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tool(argv, timeout=30, input=b""):
    """Runs a client program; returns (exit status, stdout + stderr)."""
    if not shutil.which(argv[0]):
        raise Failure(f"{argv[0]} is not installed (tests/run.sh installs it)")
    try:
        r = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"{' '.join(argv)} did not finish in {timeout}s")
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def tool_ok(argv, timeout=30, input=b""):
    rc, out = tool(argv, timeout, input)
    if rc != 0:
        raise Failure(f"{' '.join(argv)} exited {rc}:\n{out[-3000:]}")
    return out


# ------------------------------------------------------------------- hashes

def sha512_crypt(password):
    """A $6$ hash, and what made it: Python's crypt module (deprecated but
    present up to 3.12), else `openssl passwd -6`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
        if h and h.startswith("$6$"):
            return h, "Python crypt"
    except ImportError:
        pass
    h = tool_ok(["openssl", "passwd", "-6", "-stdin"], input=password.encode() + b"\n").strip()
    check(h.startswith("$6$"), f"openssl passwd -6 gave {h!r}")
    return h, "openssl passwd -6"


def bcrypt_2y(password):
    """A $2y$ hash (cost 10) from htpasswd, as Apache and Dovecot files hold."""
    out = tool_ok(["htpasswd", "-bnBC", "10", "", password])
    h = out.strip().lstrip(":")
    check(h.startswith("$2y$10$"), f"htpasswd gave {out!r}")
    return h, "htpasswd -B"


def argon2id(binary, password):
    r = subprocess.run([binary, "hash-password"], input=password.encode() + b"\n",
                       capture_output=True, timeout=30)
    h = r.stdout.decode().strip()
    if r.returncode != 0 or not h.startswith("$argon2id$"):
        raise RuntimeError(f"pigeon hash-password exited {r.returncode}: {h!r} {r.stderr!r}")
    return h


def users_edit(binary):
    """The config edit that adds the users; also returns how the migrated
    hashes were made."""
    sha, sha_how = sha512_crypt(PASSWORDS["sha"])
    bc, bc_how = bcrypt_2y(PASSWORDS["bc"])
    users = [
        ("alice", argon2id(binary, PASSWORDS["alice"]), ["alice@example.org", "@alice.test"]),
        ("bob@example.org", argon2id(binary, PASSWORDS["bob@example.org"]), ["bob@example.org", "@bob.test"]),
        ("sha", sha, ["sha@example.org"]),
        ("bc", bc, ["bc@example.org"]),
    ]
    # JSON strings and arrays of plain ASCII are valid TOML.
    tables = "".join(
        f"[[auth.user]]\nlogin = {json.dumps(login)}\npassword = {json.dumps(h)}\naddresses = {json.dumps(addrs)}\n\n"
        for login, h, addrs in users
    )

    def edit(text):
        subs = [
            (r"(?m)^failure_delay_ms = \d+$", "failure_delay_ms = 50"),
            # The per-address block must not be what the brute-force check
            # meets: it tests the per-connection limit.
            (r"(?m)^ip_max_failures = \d+$", "ip_max_failures = 100"),
            # The users go at the end of the [auth] section.
            (r"(?m)^\[log\]$", tables + "[log]"),
        ]
        return substitute(text, subs)

    return edit, {"sha": sha_how, "bc": bc_how}


# ------------------------------------------------------------------ helpers

def check_auth_stored(srv, sender, rcpts, contains):
    """The message from `sender` is queued for `rcpts`, holds `contains`, and
    was received over TLS 1.2/1.3 from an authenticated client (ESMTPSA in
    the queue record and in the Received: header). Returns a note for PASS."""
    summary = one_message(srv, sender)
    qid = summary["id"]
    info = srv.show(qid)
    check(info["sender"] == sender, f"{qid}: sender {info['sender']!r}, expected {sender!r}")
    got = [r["address"] for r in info["recipients"]]
    check(got == rcpts, f"{qid}: recipients {got!r}, expected {rcpts!r}")
    check(info["protocol"] == "ESMTPSA", f"{qid}: protocol {info['protocol']!r}, expected ESMTPSA")
    stored = srv.body(qid)
    check(info["size"] == len(stored), f"{qid}: size {info['size']} but body has {len(stored)} bytes")
    m = re.match(rb"Received: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n", stored)
    check(m is not None, f"{qid}: stored message does not start with a Received: header: {stored[:200]!r}")
    received = m.group(0).decode("utf-8", "replace")
    check(re.search(r"\swith ESMTPSA\s", received), f"{qid}: Received: header without 'with ESMTPSA': {received!r}")
    tls = re.search(r"\(using (TLSv1\.[23]) with cipher ", received)
    check(tls, f"{qid}: Received: header does not show TLS 1.2/1.3: {received!r}")
    check(contains in stored[m.end():], f"{qid}: {contains!r} not in the stored message {stored[m.end():]!r}")
    return f"queued from <{sender}> as ESMTPSA over {tls.group(1)}"


def message(sender, subject, text):
    return (f"From: <{sender}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n\r\n{text}\r\n").encode()


def nothing_queued(srv, sender):
    found = srv.by_sender(sender)
    check(found == [], f"refused sender {sender} was queued anyway: {[m['id'] for m in found]}")


# ------------------------------------------------------------------- swaks

def swaks_auth(srv, mode, tls_flag, mech, login, sender):
    text = f"swaks {mech} via {mode}"
    out = tool_ok(
        ["swaks", "--server", f"127.0.0.1:{srv.ports[mode]}", "--helo", "swaks.src.test",
         tls_flag, "--auth", mech, "--auth-user", login, "--auth-password", PASSWORDS[login],
         "--from", sender, "--to", RCPT, "--body", text, "--timeout", "20"],
        timeout=40,
    )
    check(re.search(r"^<~  235 ", out, re.M), f"swaks saw no 235 over TLS:\n{out[-2000:]}")
    return check_auth_stored(srv, sender, [RCPT], text.encode())


# ----------------------------------------------------------------- smtplib

def t_smtplib_starttls_login(srv):
    sender = "alice@example.org"
    sent = message(sender, "smtplib starttls", "smtplib STARTTLS then login()")
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], local_hostname="py.src.test", timeout=IO_TIMEOUT) as s:
        s.ehlo()
        check(s.has_extn("starttls"), "STARTTLS not advertised on submission")
        check(not s.has_extn("auth"), f"AUTH advertised before TLS: {s.esmtp_features.get('auth')!r}")
        code, msg = s.starttls(context=no_verify())
        check(code == 220, f"STARTTLS: {code} {msg!r}")
        s.ehlo()
        mechs = s.esmtp_features.get("auth", "").upper().split()
        check({"PLAIN", "LOGIN"} <= set(mechs), f"AUTH mechanisms after STARTTLS: {mechs}")
        code, msg = s.login("alice", PASSWORDS["alice"])
        check(code == 235, f"login: {code} {msg!r}")
        refused = s.sendmail(sender, [RCPT], sent)
        check(refused == {}, f"recipients refused: {refused}")
    return check_auth_stored(srv, sender, [RCPT], b"smtplib STARTTLS then login()")


def t_smtplib_ssl_login(srv):
    sender = "smtps@alice.test"
    sent = message(sender, "smtplib smtps", "smtplib SMTP_SSL then login()")
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], local_hostname="py.src.test",
                          timeout=IO_TIMEOUT, context=no_verify()) as s:
        code, msg = s.login("alice", PASSWORDS["alice"])
        check(code == 235, f"login: {code} {msg!r}")
        refused = s.sendmail(sender, [RCPT], sent)
        check(refused == {}, f"recipients refused: {refused}")
    return check_auth_stored(srv, sender, [RCPT], b"smtplib SMTP_SSL then login()")


def starttls_session(srv):
    s = smtplib.SMTP("127.0.0.1", srv.ports["submission"], local_hostname="py.src.test", timeout=IO_TIMEOUT)
    s.starttls(context=no_verify())
    s.ehlo()
    return s


def t_smtplib_wrong_password(srv):
    with starttls_session(srv) as s:
        try:
            s.login("alice", WRONG)
        except smtplib.SMTPAuthenticationError as e:
            check(e.smtp_code == 535, f"wrong password: {e.smtp_code} {e.smtp_error!r}, expected 535")
            check(e.smtp_error.startswith(b"5.7.8"), f"wrong password: {e.smtp_code} {e.smtp_error!r}, expected 5.7.8")
        else:
            raise Failure("login with a wrong password succeeded")
        # smtplib tried PLAIN, then LOGIN: two failures, under the limit of
        # three, so the session goes on.
        code, msg = s.noop()
        check(code == 250, f"NOOP after the failed login: {code} {msg!r}")
        code, msg = s.mail("alice@example.org")
        check(code == 530, f"MAIL after the failed login: {code} {msg!r}, expected 530")


def t_smtplib_foreign_sender(srv):
    with starttls_session(srv) as s:
        s.login("alice", PASSWORDS["alice"])
        code, msg = s.mail("bob@example.org")
        check(code == 553 and msg.startswith(b"5.7.1"),
              f"alice sending as bob@example.org: {code} {msg!r}, expected 553 5.7.1")
        code, msg = s.mail("someone@bob.test")
        check(code == 553, f"alice sending as someone@bob.test: {code} {msg!r}, expected 553")
    nothing_queued(srv, "bob@example.org")


def t_smtplib_mail_without_auth(srv):
    with starttls_session(srv) as s:
        code, msg = s.mail("alice@example.org")
        check(code == 530 and msg.startswith(b"5.7.0"), f"MAIL without AUTH on submission: {code} {msg!r}, expected 530 5.7.0")
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], local_hostname="py.src.test",
                          timeout=IO_TIMEOUT, context=no_verify()) as s:
        s.ehlo()
        code, msg = s.mail("alice@example.org")
        check(code == 530, f"MAIL without AUTH on submissions: {code} {msg!r}, expected 530")


def t_smtplib_auth_before_starttls(srv):
    creds = base64.b64encode(b"\0alice\0" + PASSWORDS["alice"].encode()).decode()
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], local_hostname="py.src.test", timeout=IO_TIMEOUT) as s:
        s.ehlo()
        check(not s.has_extn("auth"), "AUTH advertised before STARTTLS")
        # smtplib's login() will not even try without the extension, so the
        # command is sent as is.
        code, msg = s.docmd("AUTH", "PLAIN " + creds)
        check(code == 538 and msg.startswith(b"5.7.11"), f"AUTH before STARTTLS: {code} {msg!r}, expected 538 5.7.11")
        code, msg = s.mail("alice@example.org")
        check(code == 530, f"MAIL after the refused AUTH: {code} {msg!r}, expected 530 (not authenticated)")


def t_migrated(srv, login, how):
    """A migrated user logs in (with PLAIN, then on a new connection LOGIN)
    and sends; a wrong password for the same user fails."""
    sender = f"{login}@example.org"
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], local_hostname="py.src.test",
                          timeout=IO_TIMEOUT, context=no_verify()) as s:
        s.ehlo()
        s.user, s.password = login, WRONG
        try:
            s.auth("PLAIN", s.auth_plain)
        except smtplib.SMTPAuthenticationError as e:
            check(e.smtp_code == 535, f"wrong password: {e.smtp_code} {e.smtp_error!r}, expected 535")
        else:
            raise Failure("a wrong password was accepted")
        s.user, s.password = login, PASSWORDS[login]
        code, msg = s.auth("PLAIN", s.auth_plain)
        check(code == 235, f"AUTH PLAIN: {code} {msg!r}")
        refused = s.sendmail(sender, [RCPT], message(sender, "migrated", f"sent by {login}"))
        check(refused == {}, f"recipients refused: {refused}")
    with starttls_session(srv) as s:
        s.user, s.password = login, PASSWORDS[login]
        code, msg = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        check(code == 235, f"AUTH LOGIN: {code} {msg!r}")
    stored = check_auth_stored(srv, sender, [RCPT], f"sent by {login}".encode())
    return f"hash made with {how}; AUTH PLAIN and LOGIN accepted, a wrong password 535; {stored}"


def t_brute_force(srv):
    # Three wrong passwords on one connection (max_failures_per_connection =
    # 3): the third 535 is followed by 421, and the server closes.
    with starttls_session(srv) as s:
        s.user, s.password = "alice", WRONG
        for i in (1, 2, 3):
            try:
                code, msg = s.auth("PLAIN", s.auth_plain)
                raise Failure(f"wrong password {i} accepted: {code} {msg!r}")
            except smtplib.SMTPAuthenticationError as e:
                check(e.smtp_code == 535, f"wrong password {i}: {e.smtp_code} {e.smtp_error!r}, expected 535")
        code, msg = s.getreply()
        check(code == 421 and b"too many failed authentications" in msg,
              f"after the third 535: {code} {msg!r}, expected 421 4.7.0 too many failed authentications")
        try:
            rest = s.file.readline()
        except OSError as e:
            rest = f"({e})".encode()
        check(rest == b"", f"connection still open after 421: read {rest!r}")
    # The address is not blocked: a new connection authenticates.
    with starttls_session(srv) as s:
        code, msg = s.login("alice", PASSWORDS["alice"])
        check(code == 235, f"login on a new connection: {code} {msg!r}")


# ------------------------------------------------------------ msmtp / curl

def t_msmtp(srv, workdir, mode, mech, sender):
    starttls = mode == "submission"
    rc = os.path.join(workdir, f"msmtprc-{mode}")
    # msmtp refuses a configuration file with a password readable by others.
    fd = os.open(rc, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "defaults\n"
            "tls on\n"
            f"tls_starttls {'on' if starttls else 'off'}\n"
            "tls_certcheck off\n"
            "timeout 20\n"
            f"account {mode}\n"
            "host 127.0.0.1\n"
            f"port {srv.ports[mode]}\n"
            "domain msmtp.src.test\n"
            f"auth {mech}\n"
            "user alice\n"
            f"password {PASSWORDS['alice']}\n"
            f"from {sender}\n"
        )
    text = f"msmtp auth {mech} via {mode}"
    msg = f"From: <{sender}>\nTo: <{RCPT}>\nSubject: msmtp\n\n{text}\n".encode()
    out = tool_ok(["msmtp", "-C", rc, "-a", mode, "-v", RCPT], timeout=40, input=msg)
    check(re.search(r"^<-- 235 ", out, re.M), f"msmtp saw no 235:\n{out[-2000:]}")
    return check_auth_stored(srv, sender, [RCPT], text.encode())


def t_curl(srv, workdir, scheme, mode, sender, login_options):
    text = f"curl {scheme}:// via {mode}"
    path = os.path.join(workdir, f"curl-{mode}.eml")
    with open(path, "wb") as f:
        f.write(message(sender, "curl", text))
    argv = ["curl", "-sS", "--max-time", "20", f"{scheme}://127.0.0.1:{srv.ports[mode]}/curl.src.test",
            "--ssl-reqd", "-k", "--user", f"alice:{PASSWORDS['alice']}",
            "--mail-from", sender, "--mail-rcpt", RCPT, "--upload-file", path]
    if login_options:
        argv[1:1] = ["--login-options", login_options]
    tool_ok(argv, timeout=40)
    return check_auth_stored(srv, sender, [RCPT], text.encode())


# ------------------------------------------------------------- TLS versions

VERSIONS = {
    # s_client flag: (name, ClientHello legacy_version, Python TLSVersion name)
    "tls1": ("TLSv1", "0301", "TLSv1"),
    "tls1_1": ("TLSv1.1", "0302", "TLSv1_1"),
    "tls1_2": ("TLSv1.2", "0303", "TLSv1_2"),
    "tls1_3": ("TLSv1.3", "0303", "TLSv1_3"),
}


def client_hello_version(out):
    """legacy_version of the ClientHello s_client -msg shows it sent, as hex."""
    m = re.search(r"^>>> [^\n]*ClientHello\n((?:[ \t]+[0-9a-f]{2}(?: [0-9a-f]{2})*\n)+)", out, re.M)
    if not m:
        return None
    body = m.group(1).split()
    return "".join(body[4:6]) if len(body) >= 6 else None


def python_old_tls(port, starttls, version):
    """Second opinion when s_client could not offer `version`: Python's ssl
    with min = max = that version. Returns "refused" (with why), "accepted",
    or "untestable"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        v = getattr(ssl.TLSVersion, VERSIONS[version][2])
        ctx = no_verify()
        ctx.minimum_version = v
        ctx.maximum_version = v
        ctx.set_ciphers("DEFAULT@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        if starttls:
            f = sock.makefile("rb")

            def reply():
                while True:
                    line = f.readline()
                    if line[3:4] != b"-":
                        return line

            check(reply().startswith(b"220"), "no greeting")
            sock.sendall(b"EHLO py.src.test\r\n")
            reply()
            sock.sendall(b"STARTTLS\r\n")
            line = reply()
            check(line.startswith(b"220"), f"STARTTLS: {line!r}")
        try:
            with ctx.wrap_socket(sock) as t:
                return "accepted", t.version()
        except ssl.SSLError as e:
            reason = e.reason or str(e)
            if "ALERT" in reason:
                return "refused", f"Python ssl ({ssl.OPENSSL_VERSION}) offered only {VERSIONS[version][0]}; server alert {reason}"
            if reason in ("UNEXPECTED_EOF_WHILE_READING", "EOF") or isinstance(e, ssl.SSLEOFError):
                return "refused", f"Python ssl offered only {VERSIONS[version][0]}; the server closed the connection"
            return "untestable", f"Python ssl could not offer {VERSIONS[version][0]}: {reason}"
        except (ConnectionResetError, BrokenPipeError) as e:
            return "refused", f"Python ssl offered only {VERSIONS[version][0]}; the server closed the connection ({e})"


def t_tls_version(srv, mode, version, want_accept):
    port = srv.ports[mode]
    starttls = mode == "submission"
    name, legacy, _ = VERSIONS[version]
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}", "-msg", "-crlf", "-ign_eof"]
    if starttls:
        argv += ["-starttls", "smtp"]
    if not want_accept:
        # Debian's OpenSSL may not offer old versions at its default security
        # level; level 0 makes it really offer them, so a refusal is the server's.
        argv += ["-cipher", "DEFAULT@SECLEVEL=0"]
    # A server that hangs on after the handshake must not hang the check: on
    # a timeout, judge what s_client printed so far.
    timed_out = False
    try:
        r = subprocess.run(argv, input=b"QUIT\n", capture_output=True, timeout=10)
        out = (r.stdout + r.stderr).decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        timed_out = True
        out = ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")
        out += "\n(openssl s_client was still connected after 10s and was stopped)\n"
    except FileNotFoundError:
        raise Failure("openssl is not installed (tests/run.sh installs it)")
    negotiated = re.search(r"^New, (TLSv[\d.]+), Cipher is (\S+)", out, re.M)
    server_hello = re.search(r"^<<< [^\n]*ServerHello", out, re.M)
    hello = client_hello_version(out)
    alert = re.search(r"^<<< [^\n]*Alert[^\n]*fatal ([\w ]+)", out, re.M)
    if want_accept:
        check(negotiated and negotiated.group(1) == name,
              f"expected a {name} handshake, got {negotiated.group(1) if negotiated else 'none'}:\n{out[-1500:]}")
        check(re.search(r"^221 ", out, re.M), f"no 221 to QUIT over {name}:\n{out[-1500:]}")
        return f"openssl s_client negotiated {name} ({negotiated.group(2)}), QUIT answered 221"
    check(not negotiated and not server_hello,
          f"the server accepted {name}: {negotiated.group(0) if negotiated else 'ServerHello received'}")
    if hello == legacy:
        check(alert or not timed_out,
              f"openssl s_client sent a {name} ClientHello; the server neither answered nor closed within 10s")
        why = f"server alert {alert.group(1).strip()}" if alert else "the server closed the connection"
        return f"refused by the server: openssl s_client sent a {name} ClientHello (version 0x{legacy}), {why}"
    # s_client sent no ClientHello for this version: the client could not try.
    verdict, detail = python_old_tls(port, starttls, version)
    if verdict == "refused":
        return (f"refused by the server, proved with Python ssl (openssl s_client could not offer {name}): "
                f"{detail}")
    if verdict == "accepted":
        raise Failure(f"the server accepted {name} from Python ssl ({detail})")
    raise Failure(f"not tested: neither openssl s_client nor Python ssl could offer {name} here ({detail}); "
                  f"s_client output:\n{out[-800:]}")


# -------------------------------------------------------------------- main

def run_checks(run, binary, workdir):
    """Starts the server with users and runs every check through `run`
    (run_clients.main's runner, which prints PASS/FAIL)."""
    try:
        edit, how = users_edit(binary)
        srv = Server(binary, workdir, "auth", edit=edit)
    except Exception as e:
        err = str(e)

        def t_start():
            raise Failure(err)
        run("start the server with users", t_start)
        return
    print(f"pigeon with users: submission 127.0.0.1:{srv.ports['submission']}, "
          f"submissions 127.0.0.1:{srv.ports['submissions']}, spool {srv.spool}", flush=True)
    ok = True
    try:
        checks = [
            ("swaks --tls AUTH PLAIN (submission)", swaks_auth,
             srv, "submission", "--tls", "PLAIN", "alice", "swaks-plain@alice.test"),
            ("swaks --tls AUTH LOGIN (submission, @domain address)", swaks_auth,
             srv, "submission", "--tls", "LOGIN", "bob@example.org", "swaks-login@bob.test"),
            ("swaks --tlsc AUTH PLAIN (submissions)", swaks_auth,
             srv, "submissions", "--tlsc", "PLAIN", "alice", "swaks-tlsc@alice.test"),
            ("smtplib: STARTTLS + login() (submission)", t_smtplib_starttls_login, srv),
            ("smtplib: SMTP_SSL + login() (submissions)", t_smtplib_ssl_login, srv),
            ("smtplib: wrong password -> 535", t_smtplib_wrong_password, srv),
            ("smtplib: MAIL as another user's address -> 553", t_smtplib_foreign_sender, srv),
            ("smtplib: MAIL without AUTH -> 530", t_smtplib_mail_without_auth, srv),
            ("smtplib: AUTH before STARTTLS -> 538", t_smtplib_auth_before_starttls, srv),
            ("msmtp: STARTTLS, auth login (submission)", t_msmtp,
             srv, workdir, "submission", "login", "msmtp-login@alice.test"),
            ("msmtp: implicit TLS, auth plain (submissions)", t_msmtp,
             srv, workdir, "submissions", "plain", "msmtp-plain@alice.test"),
            ("curl smtp:// --ssl-reqd (submission)", t_curl,
             srv, workdir, "smtp", "submission", "curl-starttls@alice.test", None),
            ("curl smtps:// AUTH=LOGIN (submissions)", t_curl,
             srv, workdir, "smtps", "submissions", "curl-smtps@alice.test", "AUTH=LOGIN"),
        ]
        for mode in ("submissions", "submission"):
            how_tls = "implicit TLS" if mode == "submissions" else "-starttls smtp"
            for version in VERSIONS:
                accept = version in ("tls1_2", "tls1_3")
                verdict = "accepted" if accept else "refused"
                checks.append((f"openssl s_client -{version} on {mode} ({how_tls}): {verdict}",
                               t_tls_version, srv, mode, version, accept))
        checks += [
            ("migrated user, sha512-crypt $6$", t_migrated, srv, "sha", how["sha"]),
            ("migrated user, bcrypt $2y$", t_migrated, srv, "bc", how["bc"]),
            # Last: it makes failures.
            ("smtplib: 3 wrong passwords -> 535, 535, 535 + 421, closed", t_brute_force, srv),
        ]
        for name, fn, *args in checks:
            ok &= run(name, fn, *args)

        def t_stop():
            code = srv.stop(within=10)
            check(code is not None, f"server still running 10s after SIGTERM\n{srv.tail()}")
            check(code == 0, f"server exit status {code} after SIGTERM\n{srv.tail()}")
        ok &= run("SIGTERM stops the server with users, status 0", t_stop)
    finally:
        if not ok:
            print(f"--- last lines of the log of the server with users ({srv.logpath}) ---\n{srv.tail()}", flush=True)
        srv.kill()
