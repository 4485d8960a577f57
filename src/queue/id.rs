//! Queue identifiers: a `u64` (microseconds since the Unix epoch when the id
//! was issued, made strictly increasing) written as 13 characters of
//! Crockford base32. The text form is fixed-width and zero-padded, so sorting
//! file names sorts messages by id. Untrusted text reaches `FromStr`.

use std::fmt;
use std::str::FromStr;

/// Crockford's base32 alphabet: no I, L, O or U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Number of characters in the text form: 13 * 5 = 65 bits >= 64.
pub const ID_LEN: usize = 13;

/// The identifier of one queued message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ID_LEN];
        let mut v = self.0;
        for slot in buf.iter_mut().rev() {
            *slot = ALPHABET[(v & 31) as usize];
            v >>= 5;
        }
        // Every byte comes from ALPHABET, so this is ASCII.
        let text: String = buf.iter().map(|&b| char::from(b)).collect();
        f.pad(&text)
    }
}

/// The text was not a queue id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseQueueIdError;

impl fmt::Display for ParseQueueIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a queue id (expected 13 characters of Crockford base32)")
    }
}

impl std::error::Error for ParseQueueIdError {}

fn digit(b: u8) -> Option<u64> {
    let up = b.to_ascii_uppercase();
    ALPHABET.iter().position(|&a| a == up).map(|p| p as u64)
}

impl FromStr for QueueId {
    type Err = ParseQueueIdError;

    /// Accepts exactly 13 characters of the alphabet, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != ID_LEN {
            return Err(ParseQueueIdError);
        }
        let mut v: u64 = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let d = digit(b).ok_or(ParseQueueIdError)?;
            // The first character carries only the top 4 bits.
            if i == 0 && d > 15 {
                return Err(ParseQueueIdError);
            }
            v = (v << 5) | d;
        }
        Ok(QueueId(v))
    }
}

impl QueueId {
    /// Parses a file name, accepting only the canonical (upper-case) form,
    /// so that exactly one name maps to each id.
    pub(crate) fn from_file_name(name: &str) -> Option<QueueId> {
        let id: QueueId = name.parse().ok()?;
        if name.bytes().all(|b| !b.is_ascii_lowercase()) {
            Some(id)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_sorts() {
        let samples = [
            0u64,
            1,
            31,
            32,
            1_700_000_000_000_000,
            u64::MAX - 1,
            u64::MAX,
        ];
        let mut prev: Option<String> = None;
        for v in samples {
            let s = QueueId(v).to_string();
            assert_eq!(s.len(), ID_LEN);
            assert_eq!(s.parse::<QueueId>(), Ok(QueueId(v)));
            assert_eq!(s.to_ascii_lowercase().parse::<QueueId>(), Ok(QueueId(v)));
            if let Some(p) = prev {
                assert!(p < s);
            }
            prev = Some(s);
        }
        assert_eq!(QueueId(0).to_string(), "0000000000000");
        assert_eq!(QueueId(u64::MAX).to_string(), "FZZZZZZZZZZZZ");
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "000000000000",
            "00000000000000",
            "G000000000000",
            "000000000000U",
            "00000000000-0",
        ] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad}");
        }
        assert_eq!(QueueId::from_file_name("000000000000a"), None);
        assert_eq!(QueueId::from_file_name("000000000000A"), Some(QueueId(10)));
    }
}
