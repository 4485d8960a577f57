//! Header edits: fields a decision adds to a message, prepended to it when
//! it is committed (Authentication-Results, DKIM-Signature,
//! X-Authentication-Warning, ...). The queue stores them as their own
//! record, and readers of a queued message see them in front of the
//! message as received.

use super::header::push_field;

/// Most bytes of edits one message may carry.
pub const MAX_EDITS: usize = 64 * 1024;

/// Header fields to prepend, in the order they will appear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Complete field lines, folded, each ending in CRLF.
    bytes: Vec<u8>,
}

impl HeaderEdits {
    pub fn new() -> HeaderEdits {
        HeaderEdits::default()
    }

    /// Adds `name: value` below the fields already added, folded
    /// (RFC 5322 §2.2.3). Control characters in the value become spaces,
    /// so a value can never end the field or add another; a name that is
    /// not a valid field name (RFC 5322 §3.6.8), or a field that would take
    /// the edits past [`MAX_EDITS`], is left out and false is returned.
    pub fn add(&mut self, name: &str, value: &str) -> bool {
        let name_ok =
            !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if !name_ok {
            return false;
        }
        let value: String = value
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut field = String::with_capacity(name.len() + value.len() + 8);
        push_field(&mut field, name, value.trim());
        if self.bytes.len() + field.len() > MAX_EDITS {
            return false;
        }
        self.bytes.extend_from_slice(field.as_bytes());
        true
    }

    /// Adds a field already formatted by its producer (a `DKIM-Signature:`
    /// or ARC set, whose bytes must stay exactly as signed): `field` must be
    /// one field, a valid name and a colon, CRLF line ends, every further
    /// line folded (starting with a space or tab). Anything else, or a
    /// field that would take the edits past [`MAX_EDITS`], is left out and
    /// false is returned.
    pub fn add_raw(&mut self, field: &[u8]) -> bool {
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            return false;
        };
        let name_ok = colon > 0
            && field[..colon]
                .iter()
                .all(|&b| (33..=126).contains(&b) && b != b':');
        let mut lines = field.split_inclusive(|&b| b == b'\n');
        let first_ok = lines.next().is_some_and(|l| l.ends_with(b"\r\n"));
        let rest_ok = lines.all(|l| {
            l.ends_with(b"\r\n") && (l.starts_with(b" ") || l.starts_with(b"\t")) && l.len() > 3
        });
        let bytes_ok = field.ends_with(b"\r\n")
            && field.iter().enumerate().all(|(i, &b)| match b {
                0 => false,
                b'\r' => field.get(i + 1) == Some(&b'\n'),
                b'\n' => i > 0 && field[i - 1] == b'\r',
                _ => true,
            });
        if !(name_ok && first_ok && rest_ok && bytes_ok)
            || self.bytes.len() + field.len() > MAX_EDITS
        {
            return false;
        }
        self.bytes.extend_from_slice(field);
        true
    }

    /// Adds every field of `other` below these.
    pub fn extend(&mut self, other: HeaderEdits) {
        if self.bytes.len() + other.bytes.len() <= MAX_EDITS {
            self.bytes.extend_from_slice(&other.bytes);
        }
    }

    /// Whether a field of this name is among the edits.
    pub fn contains(&self, name: &str) -> bool {
        self.as_bytes().split(|&c| c == b'\n').any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && line[name.len()] == b':'
        })
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The field lines, CRLF line ends.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Edits as stored: whole field lines, checked to be nothing else (a
    /// damaged or planted record gives None).
    pub fn from_stored(bytes: &[u8]) -> Option<HeaderEdits> {
        let ok = bytes.len() <= MAX_EDITS
            && (bytes.is_empty() || bytes.ends_with(b"\r\n"))
            && !bytes.starts_with(b" ")
            && !bytes.starts_with(b"\t")
            && !bytes.windows(4).any(|w| w == b"\r\n\r\n")
            && !bytes.starts_with(b"\r\n")
            && bytes.iter().all(|&b| b != 0);
        ok.then(|| HeaderEdits {
            bytes: bytes.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_folded_and_cannot_escape() {
        let mut e = HeaderEdits::new();
        assert!(e.add("X-Test", "a\r\nInjected: yes"));
        assert!(!e.add("Bad Name", "x"));
        assert!(!e.add("", "x"));
        assert!(e.add("Authentication-Results", &"word ".repeat(30)));
        let text = String::from_utf8(e.as_bytes().to_vec()).unwrap();
        assert!(text.starts_with("X-Test: a  Injected: yes\r\n"), "{text}");
        assert!(!text.contains("\r\nInjected"));
        assert!(text.lines().all(|l| l.len() <= 78));
        assert_eq!(HeaderEdits::from_stored(e.as_bytes()), Some(e.clone()));
        assert_eq!(HeaderEdits::from_stored(b"X: y\r\n\r\nbody"), None);
        assert_eq!(HeaderEdits::from_stored(b" cont\r\n"), None);
        let mut raw = HeaderEdits::new();
        assert!(raw.add_raw(b"DKIM-Signature: v=1;\r\n\tb=abc\r\n"));
        assert!(!raw.add_raw(b"X: a\r\nInjected: b\r\n"));
        assert!(!raw.add_raw(b"X: a\nb\r\n"));
        assert!(!raw.add_raw(b"X: a"));
        assert!(!raw.add_raw(b"X: a\r\n\r\n"));
        assert!(!raw.add_raw(b": a\r\n"));
        assert_eq!(raw.as_bytes(), b"DKIM-Signature: v=1;\r\n\tb=abc\r\n");
        let mut big = HeaderEdits::new();
        while big.add("X-Pad", &"p".repeat(900)) {}
        assert!(big.as_bytes().len() <= MAX_EDITS);
    }
}
