//! The file store of a state table: the table in memory, every change
//! appended to `<dir>/<name>.tbl`.
//!
//! File format (little-endian): the magic `PGNT` and a version byte (1),
//! then records, each
//!
//! ```text
//! type     u8    'P' put, 'D' delete
//! key len  u16
//! val len  u32   (0 for delete)
//! expires  i64   Unix seconds, 0 = never (0 for delete)
//! key, value
//! crc32    u32   of every byte of the record before it
//! ```
//!
//! Reading stops at the first record that is truncated or fails its CRC:
//! that is a write cut short by a crash, and the file is truncated there
//! (the records before it stand). A file with another magic or version is
//! moved aside as `<name>.tbl.corrupt` and the table starts empty. When the
//! file holds more than twice the live data (and over 64 KiB), it is
//! rewritten with only the live entries: to a temporary file, fsynced,
//! renamed over the old one, the directory fsynced.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Entry, Limits, Table};

const MAGIC: &[u8; 4] = b"PGNT";
const VERSION: u8 = 1;
const HEADER: usize = 1 + 2 + 4 + 8;
/// Below this the file is never compacted.
const COMPACT_MIN: u64 = 64 * 1024;

struct Inner {
    map: HashMap<String, Entry>,
    file: File,
    /// Bytes in the file.
    size: u64,
    /// Bytes the live entries would take.
    live: u64,
}

/// A state table kept in memory and in an append-only file.
pub struct FileTable {
    path: PathBuf,
    limits: Limits,
    inner: Mutex<Inner>,
}

fn record(ty: u8, key: &str, e: Option<&Entry>) -> Vec<u8> {
    let (value, expires) = match e {
        Some(e) => (e.value.as_slice(), e.expires),
        None => (&[][..], 0),
    };
    let mut r = Vec::with_capacity(HEADER + key.len() + value.len() + 4);
    r.push(ty);
    r.extend_from_slice(&(key.len() as u16).to_le_bytes());
    r.extend_from_slice(&(value.len() as u32).to_le_bytes());
    r.extend_from_slice(&expires.to_le_bytes());
    r.extend_from_slice(key.as_bytes());
    r.extend_from_slice(value);
    let crc = crc32fast::hash(&r);
    r.extend_from_slice(&crc.to_le_bytes());
    r
}

fn record_len(key: &str, e: &Entry) -> u64 {
    (HEADER + key.len() + e.value.len() + 4) as u64
}

/// Replays `bytes` (after the preamble): the map, and how many bytes were
/// whole records.
fn replay(bytes: &[u8]) -> (HashMap<String, Entry>, usize) {
    let mut map = HashMap::new();
    let mut pos = 0;
    while let Some(h) = bytes.get(pos..pos + HEADER) {
        let ty = h[0];
        let klen = u16::from_le_bytes([h[1], h[2]]) as usize;
        let vlen = u32::from_le_bytes([h[3], h[4], h[5], h[6]]) as usize;
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&h[7..15]);
        let expires = i64::from_le_bytes(exp);
        let end = pos + HEADER + klen + vlen;
        let Some(crc) = bytes.get(end..end + 4) else {
            break;
        };
        let body = &bytes[pos..end];
        if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            break;
        }
        let Ok(key) = std::str::from_utf8(&body[HEADER..HEADER + klen]) else {
            break;
        };
        match ty {
            b'P' => {
                map.insert(
                    key.to_string(),
                    Entry {
                        value: body[HEADER + klen..].to_vec(),
                        expires,
                    },
                );
            }
            b'D' => {
                map.remove(key);
            }
            _ => break,
        }
        pos = end + 4;
    }
    (map, pos)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileTable {
    /// Opens (or creates) the table `name` under `dir`.
    pub fn open(dir: &Path, name: &str, limits: Limits) -> io::Result<FileTable> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let path = dir.join(format!("{name}.tbl"));
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (map, good) = if bytes.is_empty() {
            (HashMap::new(), None)
        } else if bytes.len() >= 5 && &bytes[..4] == MAGIC && bytes[4] == VERSION {
            let (map, n) = replay(&bytes[5..]);
            if 5 + n < bytes.len() {
                tracing::warn!(table = %path.display(), kept = n, dropped = bytes.len() - 5 - n, "state table: torn tail after a crash skipped");
            }
            (map, Some(5 + n))
        } else {
            let aside = dir.join(format!("{name}.tbl.corrupt"));
            tracing::error!(table = %path.display(), aside = %aside.display(), "state table unreadable (magic or version); moved aside, starting empty");
            fs::rename(&path, &aside)?;
            (HashMap::new(), None)
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        let size = match good {
            Some(n) => {
                file.set_len(n as u64)?;
                n as u64
            }
            None => {
                file.set_len(0)?;
                file.write_all(MAGIC)?;
                file.write_all(&[VERSION])?;
                file.sync_all()?;
                sync_dir(dir)?;
                5
            }
        };
        use std::io::Seek;
        file.seek(io::SeekFrom::End(0))?;
        let live = 5 + map.iter().map(|(k, e)| record_len(k, e)).sum::<u64>();
        Ok(FileTable {
            path,
            limits,
            inner: Mutex::new(Inner {
                map,
                file,
                size,
                live,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, inner: &mut Inner, rec: &[u8]) -> io::Result<()> {
        inner.file.write_all(rec)?;
        if self.limits.sync_every_write {
            inner.file.sync_data()?;
        }
        inner.size += rec.len() as u64;
        if inner.size > COMPACT_MIN && inner.size > 2 * inner.live {
            self.compact(inner)?;
        }
        Ok(())
    }

    /// Rewrites the file with only the live entries.
    fn compact(&self, inner: &mut Inner) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("tbl.tmp");
        let mut out = Vec::with_capacity(inner.live as usize);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for (k, e) in &inner.map {
            out.extend_from_slice(&record(b'P', k, Some(e)));
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        sync_dir(dir)?;
        let mut f = OpenOptions::new().append(true).open(&self.path)?;
        f.flush()?;
        inner.file = f;
        inner.size = out.len() as u64;
        inner.live = out.len() as u64;
        Ok(())
    }

    /// Makes every change so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.lock().file.sync_data()
    }
}

impl Table for FileTable {
    fn get(&self, key: &str, now: i64) -> Option<Entry> {
        let inner = self.lock();
        let e = inner.map.get(key)?;
        (e.expires == 0 || e.expires > now).then(|| e.clone())
    }

    fn put(&self, key: &str, entry: Entry) -> io::Result<()> {
        if key.len() > self.limits.max_key || entry.value.len() > self.limits.max_value {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "state table: key or value too large",
            ));
        }
        let mut inner = self.lock();
        if !inner.map.contains_key(key) && inner.map.len() >= self.limits.max_entries {
            // Full: the entry that expires first (never-expiring ones last)
            // makes room.
            let victim = inner
                .map
                .iter()
                .min_by_key(|(_, e)| if e.expires == 0 { i64::MAX } else { e.expires })
                .map(|(k, _)| k.clone());
            if let Some(v) = victim {
                let rec = record(b'D', &v, None);
                if let Some(old) = inner.map.remove(&v) {
                    inner.live = inner.live.saturating_sub(record_len(&v, &old));
                }
                self.append(&mut inner, &rec)?;
            }
        }
        let rec = record(b'P', key, Some(&entry));
        let len = record_len(key, &entry);
        if let Some(old) = inner.map.insert(key.to_string(), entry) {
            inner.live = inner.live.saturating_sub(record_len(key, &old));
        }
        inner.live += len;
        self.append(&mut inner, &rec)
    }

    fn remove(&self, key: &str) -> io::Result<()> {
        let mut inner = self.lock();
        let Some(old) = inner.map.remove(key) else {
            return Ok(());
        };
        inner.live = inner.live.saturating_sub(record_len(key, &old));
        let rec = record(b'D', key, None);
        self.append(&mut inner, &rec)
    }

    fn purge(&self, now: i64) -> io::Result<usize> {
        let mut inner = self.lock();
        let gone: Vec<String> = inner
            .map
            .iter()
            .filter(|(_, e)| e.expires != 0 && e.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            if let Some(old) = inner.map.remove(k) {
                inner.live = inner.live.saturating_sub(record_len(k, &old));
            }
            let rec = record(b'D', k, None);
            self.append(&mut inner, &rec)?;
        }
        Ok(gone.len())
    }

    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(v: &str, expires: i64) -> Entry {
        Entry {
            value: v.as_bytes().to_vec(),
            expires,
        }
    }

    #[test]
    fn put_get_expire_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let t = FileTable::open(d.path(), "grey", Limits::default()).unwrap();
        t.put("a", e("1", 0)).unwrap();
        t.put("b", e("2", 100)).unwrap();
        t.put("a", e("3", 0)).unwrap();
        t.put("c", e("4", 0)).unwrap();
        t.remove("c").unwrap();
        assert_eq!(t.get("a", 50), Some(e("3", 0)));
        assert_eq!(t.get("b", 99), Some(e("2", 100)));
        assert_eq!(t.get("b", 100), None);
        assert_eq!(t.get("c", 0), None);
        drop(t);
        let t = FileTable::open(d.path(), "grey", Limits::default()).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("a", 50), Some(e("3", 0)));
        assert_eq!(t.purge(100).unwrap(), 1);
        drop(t);
        let t = FileTable::open(d.path(), "grey", Limits::default()).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_torn_tail_is_skipped_and_cut() {
        let d = tempfile::tempdir().unwrap();
        let t = FileTable::open(d.path(), "t", Limits::default()).unwrap();
        t.put("kept", e("yes", 0)).unwrap();
        t.put("torn", e("no", 0)).unwrap();
        drop(t);
        let path = d.path().join("t.tbl");
        let len = fs::metadata(&path).unwrap().len();
        // The last record cut short, as by a crash mid-write.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let t = FileTable::open(d.path(), "t", Limits::default()).unwrap();
        assert_eq!(t.get("kept", 0), Some(e("yes", 0)));
        assert_eq!(t.get("torn", 0), None);
        t.put("after", e("ok", 0)).unwrap();
        drop(t);
        let t = FileTable::open(d.path(), "t", Limits::default()).unwrap();
        assert_eq!(t.len(), 2);
        // A damaged byte in the middle ends the log there.
        drop(t);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() - 10;
        bytes[mid] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let t = FileTable::open(d.path(), "t", Limits::default()).unwrap();
        assert_eq!(t.get("kept", 0), Some(e("yes", 0)));
        assert_eq!(t.get("after", 0), None);
    }

    #[test]
    fn another_format_is_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("t.tbl"), b"PGNT\x09garbage").unwrap();
        let t = FileTable::open(d.path(), "t", Limits::default()).unwrap();
        assert!(t.is_empty());
        assert!(d.path().join("t.tbl.corrupt").exists());
    }

    #[test]
    fn bounded_and_compacted() {
        let d = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_entries: 3,
            max_key: 8,
            max_value: 16,
            sync_every_write: true,
        };
        let t = FileTable::open(d.path(), "t", limits).unwrap();
        assert!(t.put("a-very-long-key", e("x", 0)).is_err());
        assert!(t.put("k", e(&"v".repeat(17), 0)).is_err());
        t.put("a", e("1", 30)).unwrap();
        t.put("b", e("2", 10)).unwrap();
        t.put("c", e("3", 0)).unwrap();
        // Full: "b", expiring first, makes room.
        t.put("d", e("4", 20)).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get("b", 0), None);
        // Many rewrites of one key: the file is compacted, stays small.
        for i in 0..6_000 {
            t.put("a", e(&format!("{i}"), 0)).unwrap();
        }
        let size = fs::metadata(d.path().join("t.tbl")).unwrap().len();
        assert!(size < 3 * COMPACT_MIN, "{size}");
        drop(t);
        let t = FileTable::open(d.path(), "t", limits).unwrap();
        assert_eq!(t.get("a", 0), Some(e("5999", 0)));
        assert_eq!(t.len(), 3);
    }
}
