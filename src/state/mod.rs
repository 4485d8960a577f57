//! Small persistent tables beside the queue: the greylist, the MTA-STS
//! policy cache, report counters, rate counters. Each is a map from a
//! string key to a small value with an expiry time, bounded in entries and
//! sizes, behind one interface ([`Table`]) so that no feature writes files
//! of its own and a shared (PostgreSQL) store can stand behind the same
//! interface later. The file store ([`file::FileTable`]) keeps the table
//! in memory and appends every change to a versioned, checksummed log
//! under `<spool>/state/`, compacted when it grows; a torn tail after a
//! crash is skipped, never fatal.
//!
//! Owns `<spool>/state/` and nothing else. Reads files it wrote itself,
//! but verifies them as untrusted.

pub mod file;

use std::io;

pub use file::FileTable;

/// One value and when it stops counting (Unix seconds; 0 = never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub expires: i64,
}

/// Bounds of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most live entries; a new key beyond it pushes out the entry that
    /// expires first.
    pub max_entries: usize,
    pub max_key: usize,
    pub max_value: usize,
    /// Each change is fsynced before `put`/`remove` return (for tables
    /// whose loss would matter, such as a cached MTA-STS policy); otherwise
    /// changes reach the disk with the next compaction or fsync and a
    /// crash may lose the last few.
    pub sync_every_write: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_entries: 100_000,
            max_key: 1024,
            max_value: 64 * 1024,
            sync_every_write: false,
        }
    }
}

/// A small persistent map with expiry.
pub trait Table: Send + Sync {
    /// The value of `key`, unless it has expired by `now`.
    fn get(&self, key: &str, now: i64) -> Option<Entry>;
    /// Sets `key`. Keys and values over the table's limits are refused.
    fn put(&self, key: &str, entry: Entry) -> io::Result<()>;
    fn remove(&self, key: &str) -> io::Result<()>;
    /// Drops every entry expired by `now`; returns how many.
    fn purge(&self, now: i64) -> io::Result<usize>;
    /// Live entries (expired ones not yet purged included).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
