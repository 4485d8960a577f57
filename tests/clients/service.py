"""pigeon as a service on this machine; part of the clients stage.

run_clients.py calls run_checks(). One `pigeon serve` from the shipped
config (listeners moved to free ports, delivery on, the metrics endpoint on
a free loopback port), then:

  - `systemd-analyze verify` on config/pigeon.service and
    config/pigeon.socket (ExecStart pointed at the binary under test);
  - programs that send mail through sendmail: s-nail (mail(1), with
    `mta` set to a link named `sendmail`), cron's own command line
    (`sendmail -FCronDaemon -i -B8BITMIME -oem root`) at the end of a shell
    pipeline, and PHP mail()'s `sendmail -t -i`: each message lands in
    dev@example.org's Maildir (root and the catch-all are aliases of dev in
    the shipped config) with the headers sendmail adds;
  - /metrics read with Python's prometheus_client parser (the reference
    parser of the format): every family parses, and the counters show the
    messages just sent.
"""

import os
import re
import shutil
import subprocess
import time
import urllib.request

from run_clients import check, Failure, free_port, ROOT, Server, substitute

WAIT = 20


def maildir_messages(srv):
    new = os.path.join(srv.spool, "mail", "example.org", "dev", "Maildir", "new")
    out = []
    for name in sorted(os.listdir(new)) if os.path.isdir(new) else []:
        with open(os.path.join(new, name), "rb") as f:
            out.append(f.read().decode("utf-8", "replace"))
    return out


def wait_for_message(srv, marker):
    deadline = time.monotonic() + WAIT
    while True:
        for m in maildir_messages(srv):
            if marker in m:
                return m
        if time.monotonic() > deadline:
            raise Failure(f"no message with {marker!r} in dev's Maildir\n{srv.tail()}")
        time.sleep(0.1)


def t_systemd_verify(binary, workdir):
    exe = shutil.which("systemd-analyze")
    check(exe is not None, "systemd-analyze is not installed (Debian package systemd)")
    units = os.path.join(workdir, "units")
    os.makedirs(units, exist_ok=True)
    for name in ("pigeon.service", "pigeon.socket"):
        with open(os.path.join(ROOT, "config", name)) as f:
            text = f.read().replace("/usr/local/bin/pigeon", binary)
        with open(os.path.join(units, name), "w") as f:
            f.write(text)
    r = subprocess.run([exe, "verify", os.path.join(units, "pigeon.service"), os.path.join(units, "pigeon.socket")],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 0 and not r.stderr.strip(),
          f"systemd-analyze verify: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return "pigeon.service and pigeon.socket verified"


def sendmail_link(srv):
    link = os.path.join(os.path.dirname(srv.config), "bin", "sendmail")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.exists(link):
        os.symlink(srv.binary, link)
    return link


def program_env(srv):
    env = dict(os.environ)
    env["PIGEON_CONFIG"] = srv.config
    return env


def t_mailx(srv):
    exe = shutil.which("s-nail")
    check(exe is not None, "s-nail is not installed")
    link = sendmail_link(srv)
    marker = f"mailx-{time.time_ns()}"
    r = subprocess.run([exe, "-n", "-S", f"mta={link}", "-S", "sendwait", "-s", f"hello {marker}",
                        "dev@example.org"],
                       input=f"written with mail(1)\n{marker}\n", capture_output=True, text=True,
                       timeout=60, cwd=os.path.dirname(srv.config), env=program_env(srv))
    check(r.returncode == 0, f"s-nail exited {r.returncode}: {r.stderr}")
    m = wait_for_message(srv, marker)
    check(re.search(rf"(?m)^Subject: hello {marker}$", m), f"no Subject in {m!r}")
    check("(pigeon, from userid " in m, f"not received as a local submission: {m!r}")
    return "s-nail -> sendmail link -> Maildir"


def t_cron_pipeline(srv):
    link = sendmail_link(srv)
    marker = f"cron-{time.time_ns()}"
    # What cron runs when a job writes output, fed by a pipeline.
    script = (f"printf 'From: root (Cron Daemon)\\nTo: root\\nSubject: Cron <root@host> backup {marker}\\n"
              f"Content-Type: text/plain; charset=UTF-8\\n\\nbackup done: 42 files\\n' "
              f"| {link} -FCronDaemon -i -B8BITMIME -oem root")
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(srv.config), env=program_env(srv))
    check(r.returncode == 0, f"cron's sendmail exited {r.returncode}: {r.stderr}")
    m = wait_for_message(srv, marker)
    check("\nDelivered-To: dev@example.org\n" in m, f"{m!r}")
    check("\nbackup done: 42 files\n" in m and "\nMessage-ID: <" in m and "\nDate: " in m, f"{m!r}")
    # PHP's mail(): sendmail -t -i with the recipients in the header.
    marker2 = f"php-{time.time_ns()}"
    r = subprocess.run([link, "-t", "-i", "-f", "www@example.org"],
                       input=f"To: someone@example.org\nSubject: php {marker2}\n\nhello\n.\nstill here\n",
                       capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(srv.config), env=program_env(srv))
    check(r.returncode == 0, f"sendmail -t -i exited {r.returncode}: {r.stderr}")
    m = wait_for_message(srv, marker2)
    check(m.startswith("Return-Path: <www@example.org>\n"), f"{m!r}")
    check(m.endswith("\nhello\n.\nstill here\n"), f"-i: dot lines are content: {m!r}")
    # The daemon not reachable: sendmail says so and exits 75 (EX_TEMPFAIL).
    env = program_env(srv)
    bad = os.path.join(os.path.dirname(srv.config), "no-daemon.toml")
    with open(srv.config) as f:
        text = re.sub(r'(?m)^socket = ".*"$', 'socket = "/nonexistent/pigeon.sock"', f.read())
    with open(bad, "w") as f:
        f.write(text)
    env["PIGEON_CONFIG"] = bad
    r = subprocess.run([link, "-i", "root"], input="x\n", capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(srv.config), env=env)
    check(r.returncode == 75 and "is pigeon running?" in r.stderr, f"exit {r.returncode}: {r.stderr}")
    return "cron's command line and sendmail -t -i delivered; 75 when the daemon is away"


def t_metrics(srv, port):
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        raise Failure("python module prometheus_client is not installed (Debian package python3-prometheus-client, for /usr/bin/python3)")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        check(r.status == 200, f"status {r.status}")
        ctype = r.headers.get("Content-Type", "")
        check(ctype.startswith("text/plain; version=0.0.4"), f"Content-Type {ctype!r}")
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for want in ("pigeon_connections", "pigeon_messages_accepted", "pigeon_deliveries",
                 "pigeon_delivery_latency_seconds", "pigeon_queue_messages", "pigeon_tls_handshakes"):
        check(want in families, f"no family {want} in {sorted(families)}")
    local = [s for s in families["pigeon_messages_accepted"].samples if s.labels.get("listener") == "local"]
    check(local and local[0].value >= 3, f"local submissions not counted: {local}")
    check(families["pigeon_delivery_latency_seconds"].type == "histogram", "latency is not a histogram")
    return f"{len(families)} metric families parsed by prometheus_client"


def service_edit(metrics_port):
    def edit(text):
        subs = [
            (r"(?m)^enabled = false$", "enabled = true"),
            (r'(?m)^listen = ""$', f'listen = "127.0.0.1:{metrics_port}"'),
        ]
        return substitute(text, subs)
    return edit


def run_checks(run, binary, workdir):
    run("systemd-analyze verify pigeon.service pigeon.socket", t_systemd_verify, binary, workdir)
    base = os.path.join(workdir, "service")
    os.makedirs(base)
    metrics_port = free_port()
    srv = None
    try:
        try:
            srv = Server(binary, base, "pigeon", edit=service_edit(metrics_port),
                         spool=os.path.join(base, "spool"))
        except Exception as e:
            err = str(e)

            def t_start():
                raise Failure(err)
            run("service: start pigeon with delivery and metrics", t_start)
            return
        ok = run("mail(1) (s-nail) through the sendmail link", t_mailx, srv)
        ok &= run("cron's sendmail command in a pipeline, PHP's sendmail -t -i", t_cron_pipeline, srv)
        ok &= run("metrics: /metrics parsed by prometheus_client", t_metrics, srv, metrics_port)
        if not ok:
            print(f"--- last lines of {srv.logpath} ---\n{srv.tail()}", flush=True)
    finally:
        if srv is not None:
            srv.kill()
