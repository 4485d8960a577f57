//! Per-client-network limit on failed authentications: too many failures
//! within a window block the network for a while. IPv6 clients are counted
//! per network prefix (see [`crate::config::client_network`]), so rotating
//! through one /64 buys no extra guesses. In memory, bounded; a flood of
//! new entries never evicts a blocked one.
//!
//! An attempt is counted when it starts ([`FailureLimiter::begin`]), before
//! the password is checked, and refunded if it succeeds: parallel
//! connections from one network get no more guesses than the limit.
//! Time is passed in, so the rules are tested without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::client_network;

/// Most networks tracked at once; beyond it, stale entries are dropped
/// and, if still full, the oldest entry that is not blocked is forgotten.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    /// Failed attempts in the window, plus attempts still being checked.
    failures: u32,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|u| now < u)
    }
}

#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    block: Duration,
    exempt_loopback: bool,
    v6_prefix: u8,
    max_tracked: usize,
    map: Mutex<HashMap<IpAddr, Entry>>,
}

/// The outcome of [`FailureLimiter::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The attempt may go ahead; it already counts as a failure until
    /// [`FailureLimiter::finish`] says otherwise.
    Counted,
    /// The limiter does not apply to this client.
    Exempt,
    /// The client's network is blocked.
    Blocked,
}

impl FailureLimiter {
    /// `max_failures == 0` disables the limiter.
    pub fn new(
        max_failures: u32,
        window: Duration,
        block: Duration,
        exempt_loopback: bool,
        v6_prefix: u8,
    ) -> FailureLimiter {
        FailureLimiter {
            max_failures,
            window,
            block,
            exempt_loopback,
            v6_prefix,
            max_tracked: MAX_TRACKED,
            map: Mutex::new(HashMap::new()),
        }
    }

    #[cfg(test)]
    fn with_capacity(mut self, n: usize) -> FailureLimiter {
        self.max_tracked = n;
        self
    }

    fn applies(&self, ip: IpAddr) -> bool {
        self.max_failures > 0 && !(self.exempt_loopback && ip.is_loopback())
    }

    /// Is this client's network blocked now?
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        if !self.applies(ip) {
            return false;
        }
        let key = client_network(ip, self.v6_prefix);
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key).is_some_and(|e| e.blocked(now))
    }

    /// An authentication attempt is about to be checked: counts it as a
    /// failure now (refunded by `finish(.., true)`), or refuses it when the
    /// network is blocked or already has `max_failures` attempts counted.
    pub fn begin(&self, ip: IpAddr, now: Instant) -> Admission {
        if !self.applies(ip) {
            return Admission::Exempt;
        }
        let key = client_network(ip, self.v6_prefix);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key)
            && map.len() >= self.max_tracked
            && !self.make_room(&mut map, now)
        {
            // Every tracked entry is blocked: the new network goes
            // uncounted rather than unblocking someone (the per-connection
            // limit and the verification pool still bound it).
            return Admission::Exempt;
        }
        let e = map.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if e.blocked(now) {
            return Admission::Blocked;
        }
        if now.duration_since(e.window_start) >= self.window {
            e.window_start = now;
            e.failures = 0;
        }
        if e.failures >= self.max_failures {
            e.blocked_until = Some(now + self.block);
            return Admission::Blocked;
        }
        e.failures += 1;
        Admission::Counted
    }

    /// The attempt `begin` counted is over. Returns true if the network
    /// is now blocked.
    pub fn finish(&self, ip: IpAddr, admission: Admission, success: bool, now: Instant) -> bool {
        if admission != Admission::Counted {
            return admission == Admission::Blocked;
        }
        let key = client_network(ip, self.v6_prefix);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = map.get_mut(&key) else {
            return false;
        };
        if success {
            e.failures = e.failures.saturating_sub(1);
            return false;
        }
        if e.failures >= self.max_failures {
            e.blocked_until = Some(now + self.block);
            e.failures = 0;
            e.window_start = now;
            return true;
        }
        false
    }

    /// Drops stale entries, then the oldest unblocked one; false if every
    /// entry is blocked.
    fn make_room(&self, map: &mut HashMap<IpAddr, Entry>, now: Instant) -> bool {
        let window = self.window;
        map.retain(|_, e| e.blocked(now) || now.duration_since(e.window_start) < window);
        if map.len() < self.max_tracked {
            return true;
        }
        let oldest = map
            .iter()
            .filter(|(_, e)| !e.blocked(now))
            .min_by_key(|(_, e)| e.window_start)
            .map(|(k, _)| *k);
        match oldest {
            Some(k) => {
                map.remove(&k);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(l: &FailureLimiter, ip: IpAddr, t: Instant) -> bool {
        let a = l.begin(ip, t);
        l.finish(ip, a, false, t)
    }

    #[test]
    fn blocks_after_limit_within_window_then_expires() {
        let l = FailureLimiter::new(
            3,
            Duration::from_secs(60),
            Duration::from_secs(300),
            false,
            64,
        );
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t = Instant::now();
        assert!(!fail(&l, ip, t));
        assert!(!fail(&l, ip, t + Duration::from_secs(1)));
        assert!(!l.is_blocked(ip, t + Duration::from_secs(2)));
        assert!(fail(&l, ip, t + Duration::from_secs(2)));
        assert!(l.is_blocked(ip, t + Duration::from_secs(3)));
        assert_eq!(l.begin(ip, t + Duration::from_secs(3)), Admission::Blocked);
        assert!(!l.is_blocked("192.0.2.10".parse().unwrap(), t));
        assert!(!l.is_blocked(ip, t + Duration::from_secs(303)));
        // Failures spread wider than the window never block.
        let ip2: IpAddr = "192.0.2.11".parse().unwrap();
        for i in 0..10 {
            assert!(!fail(&l, ip2, t + Duration::from_secs(i * 31)));
        }
    }

    #[test]
    fn successes_are_refunded() {
        let l = FailureLimiter::new(
            2,
            Duration::from_secs(60),
            Duration::from_secs(60),
            false,
            64,
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        for _ in 0..10 {
            let a = l.begin(ip, t);
            assert_eq!(a, Admission::Counted);
            assert!(!l.finish(ip, a, true, t));
        }
        assert!(!fail(&l, ip, t));
        assert!(fail(&l, ip, t));
    }

    #[test]
    fn parallel_attempts_get_no_more_guesses_than_the_limit() {
        let l = FailureLimiter::new(
            10,
            Duration::from_secs(60),
            Duration::from_secs(60),
            false,
            64,
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t = Instant::now();
        // Fifty connections start their check before any has finished.
        let admitted = (0..50)
            .map(|_| l.begin(ip, t))
            .filter(|a| *a == Admission::Counted)
            .count();
        assert_eq!(admitted, 10);
        assert!(l.is_blocked(ip, t));
    }

    #[test]
    fn ipv6_counted_per_prefix() {
        let l = FailureLimiter::new(
            3,
            Duration::from_secs(60),
            Duration::from_secs(60),
            false,
            64,
        );
        let t = Instant::now();
        for i in 1..=3u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            fail(&l, ip, t);
        }
        // Another address of the same /64 is blocked; another /64 is not.
        assert!(l.is_blocked("2001:db8:1:2:ffff::1".parse().unwrap(), t));
        assert!(!l.is_blocked("2001:db8:1:3::1".parse().unwrap(), t));
        // An IPv4-mapped address is the IPv4 client.
        for _ in 0..3 {
            fail(&l, "192.0.2.5".parse().unwrap(), t);
        }
        assert!(l.is_blocked("::ffff:192.0.2.5".parse().unwrap(), t));
    }

    #[test]
    fn a_flood_of_new_entries_never_unblocks() {
        let l = FailureLimiter::new(
            2,
            Duration::from_secs(60),
            Duration::from_secs(600),
            false,
            64,
        )
        .with_capacity(100);
        let t = Instant::now();
        let attacker: IpAddr = "198.51.100.1".parse().unwrap();
        fail(&l, attacker, t);
        assert!(fail(&l, attacker, t));
        // Later, thousands of fresh addresses (fresh /64s) fail once each.
        for i in 0..5000u32 {
            let ip: IpAddr = format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)
                .parse()
                .unwrap();
            fail(&l, ip, t + Duration::from_secs(1));
        }
        assert!(l.is_blocked(attacker, t + Duration::from_secs(2)));
        assert!(l.map.lock().unwrap().len() <= 100);
    }

    #[test]
    fn loopback_exemption_and_disabled() {
        let l = FailureLimiter::new(
            1,
            Duration::from_secs(60),
            Duration::from_secs(60),
            true,
            64,
        );
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!fail(&l, lo, Instant::now()));
        assert!(!l.is_blocked(lo, Instant::now()));
        let off = FailureLimiter::new(
            0,
            Duration::from_secs(60),
            Duration::from_secs(60),
            false,
            64,
        );
        assert!(!fail(&off, "192.0.2.1".parse().unwrap(), Instant::now()));
    }
}
