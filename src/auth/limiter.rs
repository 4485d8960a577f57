//! Per-client-address limit on failed authentications: too many failures
//! within a window block the address for a while. In memory, bounded.
//! Time is passed in, so the rules are tested without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses tracked at once; beyond it, stale entries are dropped
/// and, if still full, the oldest window is forgotten.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    block: Duration,
    exempt_loopback: bool,
    map: Mutex<HashMap<IpAddr, Entry>>,
}

impl FailureLimiter {
    /// `max_failures == 0` disables the limiter.
    pub fn new(
        max_failures: u32,
        window: Duration,
        block: Duration,
        exempt_loopback: bool,
    ) -> FailureLimiter {
        FailureLimiter {
            max_failures,
            window,
            block,
            exempt_loopback,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn applies(&self, ip: IpAddr) -> bool {
        self.max_failures > 0 && !(self.exempt_loopback && ip.is_loopback())
    }

    /// Is this address blocked now?
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        if !self.applies(ip) {
            return false;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .and_then(|e| e.blocked_until)
            .is_some_and(|until| now < until)
    }

    /// Records a failure; returns true if the address is now blocked.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> bool {
        if !self.applies(ip) {
            return false;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            let (window, block) = (self.window, self.block);
            map.retain(|_, e| {
                now.duration_since(e.window_start) < window
                    || e.blocked_until.is_some_and(|u| now < u + block)
            });
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, e)| e.window_start)
                    .map(|(k, _)| *k)
                {
                    map.remove(&oldest);
                }
            }
        }
        let e = map.entry(ip).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if now.duration_since(e.window_start) >= self.window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        if e.failures >= self.max_failures {
            e.blocked_until = Some(now + self.block);
            e.failures = 0;
            e.window_start = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_within_window_then_expires() {
        let l = FailureLimiter::new(3, Duration::from_secs(60), Duration::from_secs(300), false);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t = Instant::now();
        assert!(!l.record_failure(ip, t));
        assert!(!l.record_failure(ip, t + Duration::from_secs(1)));
        assert!(!l.is_blocked(ip, t + Duration::from_secs(2)));
        assert!(l.record_failure(ip, t + Duration::from_secs(2)));
        assert!(l.is_blocked(ip, t + Duration::from_secs(3)));
        assert!(!l.is_blocked("192.0.2.10".parse().unwrap(), t));
        assert!(!l.is_blocked(ip, t + Duration::from_secs(303)));
        // Failures spread wider than the window never block.
        let ip2: IpAddr = "192.0.2.11".parse().unwrap();
        for i in 0..10 {
            assert!(!l.record_failure(ip2, t + Duration::from_secs(i * 31)));
        }
    }

    #[test]
    fn loopback_exemption_and_disabled() {
        let l = FailureLimiter::new(1, Duration::from_secs(60), Duration::from_secs(60), true);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!l.record_failure(lo, Instant::now()));
        assert!(!l.is_blocked(lo, Instant::now()));
        let off = FailureLimiter::new(0, Duration::from_secs(60), Duration::from_secs(60), false);
        assert!(!off.record_failure("192.0.2.1".parse().unwrap(), Instant::now()));
    }
}
