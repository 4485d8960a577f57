#!/usr/bin/env bash
# tests/run.sh: the whole pigeon test suite, in four stages.
#
#   build    cargo build --release --bins, the benchmarks compiled, clippy
#   test     cargo test --release --no-fail-fast    (unit, dialog and integration tests)
#   clients  tests/clients/run_clients.py           (smtplib, raw sockets, swaks, smtp-source,
#                                                    Postfix and Dovecot peers)
#   fuzz     a bounded run of every target in fuzz/ (cargo fuzz, stable toolchain)
#
# Usage: tests/run.sh [STAGE...]       with no argument, every stage in order.
# Environment:
#   FUZZ_SECONDS   seconds of fuzzing per target (default 25)
#   NO_INSTALL=1   never install missing tools (stages needing them fail instead)
#
# Missing tools are installed on first use, Debian packages first (one
# apt-get update): a C compiler, python3 and strace before the build;
# swaks, postfix (its smtp-source tool and a test instance of its own),
# dovecot-core/-imapd/-lmtpd, dnsmasq-base and python3-prometheus-client
# for the clients stage (their system services are disabled and never left
# running); a C++ compiler for libFuzzer, and cargo-fuzz with cargo install.
# Installing needs root; everything else runs as any user. docs/testing.md
# has the details.
#
# Tests that need root (needs_root_*) or a tmpfs mount (needs_mount_*) are
# skipped where that is not available, and listed as skipped, never
# counted as passed. Ends with the skipped checks and a line
# "N passed, M failed" counting stages; exits non-zero if any stage failed.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

FUZZ_SECONDS=${FUZZ_SECONDS:-25}
ALL_STAGES=(build test clients fuzz)
if [ $# -gt 0 ]; then STAGES=("$@"); else STAGES=("${ALL_STAGES[@]}"); fi
for s in "${STAGES[@]}"; do
    case " ${ALL_STAGES[*]} " in
        *" $s "*) ;;
        *) echo "unknown stage '$s' (stages: ${ALL_STAGES[*]})" >&2; exit 2 ;;
    esac
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pigeon-run.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

header() { printf '\n==================== %s ====================\n' "$*"; }
note() { printf '>> %s\n' "$*"; }

# --------------------------------------------------------------- installing

apt_install() {
    # apt_install PKG...: installs Debian packages, running apt-get update once.
    if [ "${NO_INSTALL:-0}" = 1 ]; then
        note "NO_INSTALL=1: not installing $*"
        return 1
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        note "cannot install $* (needs root and apt-get)"
        return 1
    fi
    # Once per run: stages run in subshells, so the mark is a file.
    if [ ! -e "$TMP/apt-updated" ]; then
        timeout 300 apt-get update -q || return 1
        touch "$TMP/apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends "$@"
}

ensure_base_tools() {
    # What the build and the tests need on a machine with only the Rust
    # toolchain: a C compiler (crates that build C, and the linker),
    # python3, strace (the durability test) and mount(8) (tmpfs tests).
    local want=()
    command -v cc >/dev/null || command -v gcc >/dev/null || want+=(gcc libc6-dev)
    command -v python3 >/dev/null || want+=(python3)
    command -v strace >/dev/null || want+=(strace)
    command -v mount >/dev/null || want+=(mount)
    [ ${#want[@]} -eq 0 ] && return 0
    note "installing ${want[*]}"
    apt_install "${want[@]}"
}

# The client tests run on Debian's python3, which sees the Debian packages
# installed for them (python3-prometheus-client, ...); another python3
# earlier in PATH (pyenv, a venv) would not.
client_python() {
    if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3; fi
}

ensure_test_tools() {
    # tests/mail_auth.rs: dkimpy (and PyNaCl for its Ed25519) verifies
    # pigeon's DKIM signatures and signs mail pigeon verifies; openssl makes
    # the RSA keys.
    local want=()
    [ -x /usr/bin/python3 ] || want+=(python3)
    command -v openssl >/dev/null || want+=(openssl)
    "$(client_python)" -c 'import dkim, nacl.signing' 2>/dev/null || want+=(python3-dkim python3-nacl)
    [ ${#want[@]} -eq 0 ] && return 0
    note "installing ${want[*]}"
    apt_install "${want[@]}"
}

ensure_client_tools() {
    local want=()
    [ -x /usr/bin/python3 ] || want+=(python3)
    command -v swaks >/dev/null || want+=(swaks)
    [ -x /usr/sbin/smtp-source ] || want+=(postfix)
    # swaks --tls/--tlsc needs Net::SSLeay (its AUTH PLAIN and LOGIN need only
    # MIME::Base64, part of perl-base).
    perl -MNet::SSLeay -e1 2>/dev/null || want+=(libnet-ssleay-perl)
    command -v msmtp >/dev/null || want+=(msmtp)
    command -v curl >/dev/null || want+=(curl)
    command -v openssl >/dev/null || want+=(openssl)
    # htpasswd makes the bcrypt ($2y$) hash of the migrated test user.
    command -v htpasswd >/dev/null || want+=(apache2-utils)
    # tests/clients/dovecot.py: a Dovecot of its own (IMAP and LMTP), and
    # dnsmasq for the MX records pigeon looks up.
    command -v dovecot >/dev/null || want+=(dovecot-core)
    [ -x /usr/lib/dovecot/imap ] || want+=(dovecot-imapd)
    [ -x /usr/lib/dovecot/lmtp ] || want+=(dovecot-lmtpd)
    command -v dnsmasq >/dev/null || want+=(dnsmasq-base)
    # tests/clients/service.py: mail(1), and systemd-analyze for the units.
    command -v s-nail >/dev/null || want+=(s-nail)
    command -v systemd-analyze >/dev/null || want+=(systemd)
    # ... and the reference parser of the metrics format, from Debian (pip
    # is refused by PEP 668 on Debian 12's python3).
    "$(client_python)" -c 'import prometheus_client' 2>/dev/null || want+=(python3-prometheus-client)
    [ ${#want[@]} -eq 0 ] && return 0
    note "installing ${want[*]}"
    local policy_added=0 rc=0
    case " ${want[*]} " in *" postfix "*)
        # Postfix is wanted for /usr/sbin/smtp-source and for the separate
        # instance tests/clients/postfix_peer.py runs with its own config:
        # no configuration here.
        printf '%s\n' \
            'postfix postfix/main_mailer_type select No configuration' \
            'postfix postfix/mailname string pigeon.test' | debconf-set-selections 2>/dev/null || true
        ;;
    esac
    # The packages' own daemons (Postfix, Dovecot) must not start: the
    # tests run instances of their own.
    if [ "$(id -u)" = 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    apt_install "${want[@]}" || rc=1
    [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
    case " ${want[*]} " in *" postfix "*) stop_postfix ;; esac
    disable_services postfix dovecot
    return $rc
}

disable_services() {
    # disable_services NAME...: the packages enable their services at boot;
    # this host is not a mail server, so they are disabled (and stopped, if
    # a service manager started them), for systemd and for sysv-rc alike.
    local svc
    [ "$(id -u)" = 0 ] || return 0
    for svc in "$@"; do
        if [ -e "/lib/systemd/system/$svc.service" ] || [ -e "/etc/init.d/$svc" ]; then
            if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
                systemctl disable --now "$svc" >/dev/null 2>&1 || true
            elif command -v deb-systemd-helper >/dev/null; then
                deb-systemd-helper disable "$svc.service" >/dev/null 2>&1 || true
            fi
            if command -v update-rc.d >/dev/null && [ -e "/etc/init.d/$svc" ]; then
                update-rc.d "$svc" disable >/dev/null 2>&1 || true
            fi
            note "$svc: system service disabled (the tests run instances of their own)"
        fi
    done
}

stop_postfix() {
    # If installing postfix started its master daemon anyway, stop it.
    local pidfile=/var/spool/postfix/pid/master.pid pid
    [ -f "$pidfile" ] || return 0
    pid=$(tr -dc 0-9 < "$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    note "stopping the Postfix daemon the package started (pid $pid)"
    postfix stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
}

ensure_cargo_fuzz() {
    cargo fuzz --version >/dev/null 2>&1 && return 0
    if [ "${NO_INSTALL:-0}" = 1 ]; then
        note "NO_INSTALL=1: not installing cargo-fuzz"
        return 1
    fi
    note "installing cargo-fuzz"
    timeout 900 cargo install cargo-fuzz --locked
}

ensure_cxx() {
    # libfuzzer-sys compiles libFuzzer itself, which is C++.
    command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null && return 0
    note "installing a C++ compiler for libFuzzer"
    apt_install g++
}

# ------------------------------------------------------------------- stages

stage_build() {
    ensure_base_tools || note "some base tools could not be installed"
    timeout 1200 cargo build --release --bins
    # The benchmark targets are compiled too, so they cannot rot.
    timeout 1200 cargo bench --no-run
    # No unwrap/expect (and no other warning) on the server path.
    timeout 1200 cargo clippy --release --lib --bins -- -D warnings \
        -D clippy::unwrap_used -D clippy::expect_used
}

# Tests that need what this machine may not give: root (needs_root_*) and
# mounting a tmpfs (needs_mount_*). Where it is missing they are skipped by
# name and listed as skipped in the summary.
can_mount_tmpfs() {
    [ "$(id -u)" = 0 ] || return 1
    local d="$TMP/mount-probe"
    mkdir -p "$d"
    mount -t tmpfs -o size=64k tmpfs "$d" 2>/dev/null || return 1
    umount "$d"
}

stage_test() {
    local skip=()
    if [ "$(id -u)" != 0 ]; then
        skip+=(needs_root_)
        SKIP_REASON[needs_root_]="not root"
    fi
    if ! can_mount_tmpfs; then
        skip+=(needs_mount_)
        SKIP_REASON[needs_mount_]="cannot mount a tmpfs"
    fi
    local args=() p
    for p in "${skip[@]}"; do
        args+=(--skip "$p")
        # The names of the tests skipped, for the summary.
        cargo test --release -q -- --list 2>/dev/null | sed -n "s/^\(.*${p}[^:]*\): test\$/\1/p" |
            while read -r t; do echo "cargo test: $t (${SKIP_REASON[$p]})"; done >>"$SKIPPED"
    done
    command -v strace >/dev/null || note "strace is missing: the durability test will fail"
    ensure_test_tools || note "dkimpy or openssl could not be installed: tests/mail_auth.rs will fail"
    timeout 1200 cargo test --release --no-fail-fast -- "${args[@]}"
}

stage_clients() {
    if [ "${STAGE_RESULT[build]:-}" = FAIL ]; then
        note "not run: the build stage failed, so target/release/pigeon is not this tree's"
        return 1
    fi
    if [ ! -x target/release/pigeon ]; then
        note "no target/release/pigeon: run the build stage first (tests/run.sh build clients)"
        return 1
    fi
    ensure_client_tools || note "some client tools could not be installed; their checks will fail"
    local py
    py=$(client_python) || { note "python3 is needed"; return 1; }
    local log="$TMP/clients.log" rc=0
    timeout 600 "$py" tests/clients/run_clients.py --bin target/release/pigeon 2>&1 | tee "$log" || rc=$?
    sed -n 's/^SKIP /clients: /p' "$log" >>"$SKIPPED"
    return $rc
}

# The fuzz stage. On the stable toolchain `cargo fuzz` works as long as no
# sanitizer is asked for (AddressSanitizer needs nightly's -Zsanitizer):
#     cargo fuzz run --sanitizer none TARGET CORPUS -- -max_total_time=N
# Rust code is memory-safe here, so the fuzzer still catches what matters:
# panics, failed assertions, overflows (debug assertions are on), hangs and
# runaway memory.
FUZZ_FLAGS=(--sanitizer none)
stage_fuzz() {
    ensure_cxx || { note "no C++ compiler: cannot build libFuzzer"; return 1; }
    ensure_cargo_fuzz || { note "cargo-fuzz is not available"; return 1; }
    local targets=() t rc=0 failed=()
    for t in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$t" .rs)"); done
    note "cargo fuzz build ${FUZZ_FLAGS[*]} (${targets[*]})"
    (cd fuzz && timeout 1200 cargo fuzz build "${FUZZ_FLAGS[@]}") || return 1
    for t in "${targets[@]}"; do
        local corpus="$TMP/corpus/$t" log="$TMP/fuzz-$t.log"
        mkdir -p "$corpus"
        if [ -d "fuzz/seeds/$t" ]; then cp fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true; fi
        note "fuzzing $t for ${FUZZ_SECONDS}s ($(ls "$corpus" | wc -l) seed inputs)"
        if (cd fuzz && timeout $((FUZZ_SECONDS + 120)) cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "$corpus" -- \
                -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
            grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done )' "$log" | sed "s/^/   $t: /" || true
        else
            rc=1
            failed+=("$t")
            echo "---- fuzz target $t FAILED; last lines of its output:"
            tail -n 60 "$log"
            echo "---- the input that failed is kept under fuzz/artifacts/$t/; replay it with:"
            echo "     (cd fuzz && cargo fuzz run ${FUZZ_FLAGS[*]} $t artifacts/$t/<file>)"
        fi
    done
    [ $rc = 0 ] || note "failing fuzz targets: ${failed[*]}"
    return $rc
}

# --------------------------------------------------------------------- main

declare -A STAGE_RESULT STAGE_SECS SKIP_REASON
SKIPPED="$TMP/skipped"
: >"$SKIPPED"
passed=0
failed=0
n=0
for s in "${STAGES[@]}"; do
    n=$((n + 1))
    header "[$n/${#STAGES[@]}] $s"
    start=$SECONDS
    # Each stage runs with errexit in force (a subshell outside any `if`,
    # where bash would turn it off), so a failing command fails its stage.
    set +e
    (set -e; "stage_$s")
    rc=$?
    set -e
    if [ "$rc" = 0 ]; then
        STAGE_RESULT[$s]=PASS
        passed=$((passed + 1))
    else
        STAGE_RESULT[$s]=FAIL
        failed=$((failed + 1))
    fi
    STAGE_SECS[$s]=$((SECONDS - start))
    note "stage $s: ${STAGE_RESULT[$s]} in ${STAGE_SECS[$s]}s"
done

header summary
for s in "${STAGES[@]}"; do
    printf '  %-8s %s  %5ss\n' "$s" "${STAGE_RESULT[$s]}" "${STAGE_SECS[$s]}"
done
if [ -s "$SKIPPED" ]; then
    echo
    echo "skipped (not run here, not counted as passed):"
    sed 's/^/  /' "$SKIPPED"
fi
echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
