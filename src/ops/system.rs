//! The daemon's place in the operating system: the service manager
//! (systemd's `sd_notify` protocol: READY, RELOADING, STOPPING, watchdog
//! pings), listening sockets handed over by socket activation
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`), and giving up root after the ports are
//! bound.
//!
//! Touches only the process (its credentials, its environment, inherited
//! descriptors) and the notify socket. Nothing from the network reaches it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::config::{Config, ListenerConfig};

/// Tells the service manager (if any: `NOTIFY_SOCKET`) that start-up is done.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins; [`notify_ready`] ends it.
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn notify_stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn notify_status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The watchdog interval the service manager asks for (`WatchdogSec=`),
/// halved as sd_watchdog_enabled(3) advises; None when not asked.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
        .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(10)))
}

/// Pings the watchdog every `every` for as long as the runtime runs tasks.
pub async fn watchdog(every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

/// Listening TCP sockets passed by the service manager, matched to the
/// configured listeners: by address (the socket's local address equals
/// `bind`, or both are wildcard addresses with the same port), or else by
/// name (`FileDescriptorName=` equal to the listener's mode, for the first
/// listener of that mode still without a socket).
/// Returns one entry per configured listener; `None` where it must bind
/// itself. Sockets that match nothing are closed, with a warning.
pub fn inherited_listeners(
    listeners: &[ListenerConfig],
) -> io::Result<Vec<Option<std::net::TcpListener>>> {
    let mut out: Vec<Option<std::net::TcpListener>> = listeners.iter().map(|_| None).collect();
    let fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names(true)?.collect();
    let mut unmatched = Vec::new();
    for (fd, name) in fds {
        // SAFETY: the service manager hands these descriptors to this
        // process, which owns them from here on; each is wrapped once.
        let sock = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        let Ok(addr) = sock.local_addr() else {
            tracing::warn!(fd, name = %name, "inherited descriptor is not a TCP socket; closed");
            continue;
        };
        let by_addr = listeners
            .iter()
            .enumerate()
            .position(|(i, l)| out[i].is_none() && l.bind == addr)
            .or_else(|| {
                // `ListenStream=25` is [::]:25, serving both families.
                listeners.iter().enumerate().position(|(i, l)| {
                    out[i].is_none()
                        && l.bind.port() == addr.port()
                        && l.bind.ip().is_unspecified()
                        && addr.ip().is_unspecified()
                })
            });
        let by_name = || {
            listeners
                .iter()
                .enumerate()
                .position(|(i, l)| out[i].is_none() && l.mode.as_str() == name)
        };
        match by_addr.or_else(by_name) {
            Some(i) => {
                sock.set_nonblocking(true)?;
                tracing::info!(fd, name = %name, addr = %addr, listener = i, "using the socket from the service manager");
                out[i] = Some(sock);
            }
            None => unmatched.push((fd, name, addr)),
        }
    }
    for (fd, name, addr) in unmatched {
        tracing::warn!(fd, name = %name, addr = %addr, "inherited socket matches no [[listener]]; closed");
    }
    Ok(out)
}

/// The user and group the daemon runs as after start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks a user (and optionally a group) up in the system's databases.
pub fn lookup_account(user: &str, group: &str) -> Result<Account, String> {
    let cuser = CString::new(user).map_err(|_| format!("bad user name {user:?}"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwnam_r writes into `pw` and `buf`, both ours and sized as
    // given; `result` points into them only while they live.
    let (uid, mut gid) = unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cuser.as_ptr(),
            &mut pw,
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return Err(format!("no such user: {user}"));
        }
        (pw.pw_uid, pw.pw_gid)
    };
    if !group.is_empty() {
        let cgroup = CString::new(group).map_err(|_| format!("bad group name {group:?}"))?;
        // SAFETY: as above, for getgrnam_r.
        gid = unsafe {
            let mut gr: libc::group = std::mem::zeroed();
            let mut result: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrnam_r(
                cgroup.as_ptr(),
                &mut gr,
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
                &mut result,
            );
            if rc != 0 || result.is_null() {
                return Err(format!("no such group: {group}"));
            }
            gr.gr_gid
        };
    }
    Ok(Account {
        name: user.to_string(),
        uid,
        gid,
    })
}

/// The name of the user this process runs as, if it has one.
pub fn current_user() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    user_name(unsafe { libc::geteuid() })
}

/// The login name of a user id, if the system knows it.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwuid_r writes into `pw` and `buf`; pw_name points into
    // `buf` and is copied before `buf` goes.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pw.pw_name.is_null() {
            return None;
        }
        Some(CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned())
    }
}

/// Binds a Unix socket at `path` that is 0600 from the moment it exists:
/// the umask is 0177 around bind(2). The umask is per process; it is only
/// ever narrowed here, so a file another thread creates meanwhile gets no
/// more access than it would have had.
pub fn bind_unix_private(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    // SAFETY: umask(2) cannot fail and touches no memory.
    let old = unsafe { libc::umask(0o177) };
    let r = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    r
}

/// chmod(2) that never follows a symbolic link at `path`.
pub fn chmod_nofollow(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the whole call.
    let r = unsafe {
        libc::fchmodat(
            libc::AT_FDCWD,
            c.as_ptr(),
            mode as libc::mode_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What start-up must do about its identity, decided from the
/// configuration and whether it runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Keep running as we are.
    Keep,
    /// Switch to this account once the ports are bound.
    Switch(Account),
}

/// Root must switch to `server.user`, or be allowed to stay by
/// `server.allow_root`; anyone else keeps its identity.
pub fn plan_identity(cfg: &Config) -> Result<Identity, String> {
    let s = &cfg.server;
    if !running_as_root() {
        if !s.user.is_empty() && current_user().as_deref() != Some(s.user.as_str()) {
            tracing::warn!(
                user = %s.user,
                current = %current_user().unwrap_or_default(),
                "not started as root: cannot switch to server.user; running as the current user"
            );
        }
        return Ok(Identity::Keep);
    }
    if s.user.is_empty() {
        return if s.allow_root {
            tracing::warn!("running as root (server.allow_root = true)");
            Ok(Identity::Keep)
        } else {
            Err(
                "refusing to run as root: set server.user (for example \"pigeon\") to drop to \
                 that user once the ports are bound, or server.allow_root = true"
                    .into(),
            )
        };
    }
    let account = lookup_account(&s.user, &s.group)?;
    if account.uid == 0 && !s.allow_root {
        return Err(format!(
            "server.user = \"{}\" is root; use an unprivileged user",
            s.user
        ));
    }
    Ok(Identity::Switch(account))
}

/// Makes `dir` (created if missing) belong to `account`, so that the daemon
/// can still use it after switching.
pub fn prepare_dir(dir: &Path, account: &Account) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    // Private to the daemon: created 0700 (whatever the umask), as are
    // any missing parents.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)?;
    std::os::unix::fs::chown(dir, Some(account.uid), Some(account.gid))
}

/// Switches the process (every thread) to `account`: supplementary groups,
/// group, then user, and checks that root cannot be regained.
pub fn switch_to(account: &Account) -> Result<(), String> {
    let name = CString::new(account.name.as_str()).map_err(|_| "bad user name".to_string())?;
    // SAFETY: plain credential system calls on this process; glibc's
    // setgid/setuid apply to every thread of the process.
    unsafe {
        if libc::initgroups(name.as_ptr(), account.gid) != 0 {
            return Err(format!("initgroups: {}", io::Error::last_os_error()));
        }
        if libc::setgid(account.gid) != 0 {
            return Err(format!(
                "setgid({}): {}",
                account.gid,
                io::Error::last_os_error()
            ));
        }
        if libc::setuid(account.uid) != 0 {
            return Err(format!(
                "setuid({}): {}",
                account.uid,
                io::Error::last_os_error()
            ));
        }
        if account.uid != 0 && (libc::setuid(0) == 0 || libc::geteuid() == 0) {
            return Err("root privileges could be regained after setuid".into());
        }
        if libc::getuid() != account.uid || libc::getgid() != account.gid {
            return Err("credentials did not change".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod prepare_dir_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_spool_directory_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let me = Account {
            name: "me".into(),
            uid,
            gid,
        };
        prepare_dir(&dir, &me).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_socket_mode_and_nofollow_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _l = bind_unix_private(&sock).unwrap();
        let mode = std::fs::symlink_metadata(&sock)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        chmod_nofollow(&sock, 0o666).unwrap();
        let mode = std::fs::symlink_metadata(&sock)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666);
        // A symbolic link is not followed: its target keeps its mode.
        let target = dir.path().join("t");
        std::fs::write(&target, b"x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(chmod_nofollow(&link, 0o666).is_err());
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
