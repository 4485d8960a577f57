//! Emitting events and subscribing to them. Subscribers are called in the
//! emitting task, in order, and must be quick (a log line, a counter, a
//! channel send that never blocks). The log subscriber is always there;
//! the daemon adds the metrics counters
//! ([`crate::ops::metrics::install`]).

use std::sync::{Arc, OnceLock, RwLock};

use super::event::Event;

/// Something that wants to know.
pub trait Subscriber: Send + Sync {
    fn on(&self, e: &Event);
}

fn subscribers() -> &'static RwLock<Vec<Arc<dyn Subscriber>>> {
    static SUBSCRIBERS: OnceLock<RwLock<Vec<Arc<dyn Subscriber>>>> = OnceLock::new();
    SUBSCRIBERS
        .get_or_init(|| RwLock::new(vec![Arc::new(super::log::LogLines) as Arc<dyn Subscriber>]))
}

/// Adds a subscriber for every event from now on.
pub fn subscribe(s: Arc<dyn Subscriber>) {
    subscribers()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(s);
}

/// Tells every subscriber.
pub fn emit(e: Event) {
    let subs = subscribers().read().unwrap_or_else(|p| p.into_inner());
    for s in subs.iter() {
        s.on(&e);
    }
}
