//! Header sections (RFC 5322 §2.2, §3.6): scanning one as a message
//! streams in, finding and unfolding fields, folding new ones.

/// Longest header section kept for decisions about a message (as
/// Postfix's `header_size_limit`). Local delivery reads the history of a
/// stored message through [`header_section`], with the same bound, so
/// what is checked at the end of DATA is exactly what delivery will see.
pub const MAX_HEADER_SECTION: usize = 100 * 1024;

/// Reads the header section of canonical (CRLF) content, fed in pieces:
/// counts its Received: fields and keeps a copy of it, up to
/// [`MAX_HEADER_SECTION`] bytes (RFC 5322 §2.1: the header section ends
/// at the first empty line).
#[derive(Debug, Default, Clone)]
pub struct HeaderScan {
    done: bool,
    line_len: usize,
    prefix: [u8; 9],
    received: u32,
    /// The header section, without the empty line that ends it.
    section: Vec<u8>,
    /// The header section was longer than `MAX_HEADER_SECTION`.
    overflow: bool,
    /// A CR at the start of a line, not yet kept: the empty line's, if
    /// an LF follows.
    line_cr: bool,
}

impl HeaderScan {
    /// Our own trace fields, put in front of the client's content: kept
    /// in the copy, not counted as hops.
    pub fn scan_own(&mut self, bytes: &[u8]) {
        let received = self.received;
        self.scan(bytes);
        self.received = received;
    }

    pub fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            if self.line_len == 0 {
                // The empty line that ends the section is not kept.
                match b {
                    b'\n' => {
                        self.done = true;
                        return;
                    }
                    b'\r' if !self.line_cr => {
                        self.line_cr = true;
                        continue;
                    }
                    _ => {}
                }
                if std::mem::take(&mut self.line_cr) {
                    self.keep(b'\r');
                }
            }
            match b {
                b'\n' => self.line_len = 0,
                b'\r' => {}
                _ => {
                    if self.line_len < 9 {
                        self.prefix[self.line_len] = b.to_ascii_lowercase();
                    }
                    self.line_len += 1;
                    if self.line_len == 9 && &self.prefix == b"received:" {
                        self.received += 1;
                    }
                }
            }
            self.keep(b);
        }
    }

    fn keep(&mut self, b: u8) {
        if self.section.len() < MAX_HEADER_SECTION {
            self.section.push(b);
        } else {
            self.overflow = true;
        }
    }

    /// Received: fields of the client's content (not our own).
    pub fn received(&self) -> u32 {
        self.received
    }

    /// The header section seen so far, without the empty line after it.
    pub fn section(&self) -> &[u8] {
        &self.section
    }

    /// False when the section was longer than [`MAX_HEADER_SECTION`]
    /// and [`HeaderScan::section`] holds only its start.
    pub fn complete(&self) -> bool {
        !self.overflow
    }
}

/// The header section of a stored message, read exactly as the session
/// read it when the message was received: at most [`MAX_HEADER_SECTION`]
/// bytes, and whether that was all of it.
pub fn header_section(message: &[u8]) -> (Vec<u8>, bool) {
    let mut h = HeaderScan::default();
    h.scan(message);
    (h.section, !h.overflow)
}

/// The fields of a header section, in order, as (name, unfolded value):
/// each CRLF (or LF) before a continuation line is removed (RFC 5322
/// §2.2.3), the value keeps its leading white space. Lines that are not
/// fields (no colon) are skipped.
pub fn fields(section: &[u8]) -> impl Iterator<Item = (&[u8], Vec<u8>)> {
    let mut lines = section.split(|&b| b == b'\n').peekable();
    std::iter::from_fn(move || loop {
        let line = lines.next()?;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            continue;
        }
        let colon = memchr::memchr(b':', line);
        let mut value = colon.map(|c| line[c + 1..].to_vec());
        while lines
            .peek()
            .is_some_and(|l| l.first().is_some_and(|&b| b == b' ' || b == b'\t'))
        {
            if let (Some(v), Some(cont)) = (value.as_mut(), lines.next()) {
                v.extend_from_slice(cont.strip_suffix(b"\r").unwrap_or(cont));
            }
        }
        if let (Some(c), Some(value)) = (colon, value) {
            return Some((&line[..c], value));
        }
    })
}

/// The unfolded values of the fields named `name` (case-insensitive).
pub fn field_values<'a>(section: &'a [u8], name: &'a str) -> impl Iterator<Item = Vec<u8>> + 'a {
    fields(section)
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

/// The first Message-ID of a header section (RFC 5322 §3.6.4), with its
/// angle brackets, if it is a single printable ASCII token of at most 998
/// bytes; a malformed one is not returned.
pub fn message_id(section: &[u8]) -> Option<String> {
    let v = field_values(section, "message-id").next()?;
    let v = String::from_utf8(v).ok()?;
    let v = v.trim();
    let ok = v.len() <= 998
        && v.starts_with('<')
        && v.ends_with('>')
        && v.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| v.to_string())
}

/// The domain of the author (RFC 5322 §3.6.2 `From:`) of a header
/// section, lowercase without a trailing dot: the first address of the
/// first `From:` field, as DMARC (RFC 7489 §6.6.1) and DKIM signing see
/// it. None when there is no parseable address.
pub fn from_domain(section: &[u8]) -> Option<String> {
    let value = field_values(section, "from").next()?;
    let mut field = b"From:".to_vec();
    field.extend_from_slice(&value);
    field.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::default().parse_headers(&field)?;
    let addr = parsed.from()?.first()?.address()?;
    let (_, domain) = addr.trim().rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then_some(domain)
}

/// True if a field line of `header` is named `name` (case-insensitive).
pub fn has_field(header: &[u8], name: &str) -> bool {
    header.split(|&b| b == b'\n').any(|l| {
        l.len() > name.len()
            && l[name.len()] == b':'
            && l[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    })
}

/// The header section (its field lines, and the empty line after them if
/// there is one) and the body of a message with LF line ends, as a program
/// gives it. The header ends at the first empty line, or at the first line
/// that is not a header field.
pub fn split_header(msg: &[u8]) -> (&[u8], &[u8]) {
    let mut pos = 0;
    for line in msg.split_inclusive(|&b| b == b'\n') {
        let l = line.strip_suffix(b"\n").unwrap_or(line);
        if l.is_empty() {
            return (&msg[..pos + line.len()], &msg[pos + line.len()..]);
        }
        let continuation = pos > 0 && (l[0] == b' ' || l[0] == b'\t');
        let field = l
            .iter()
            .position(|&b| b == b':')
            .is_some_and(|i| i > 0 && l[..i].iter().all(|&b| b > 32 && b < 127));
        if !field && !continuation {
            return (&msg[..pos], &msg[pos..]);
        }
        pos += line.len();
    }
    (msg, &msg[msg.len()..])
}

/// The header without the fields named `name` (and their continuation
/// lines).
pub fn without_field(header: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let mut skipping = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if !continuation {
            skipping = line.len() > name.len()
                && line[name.len()] == b':'
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes());
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Lines are folded before this many octets where the words allow.
pub const FOLD_AT: usize = 78;
/// RFC 5322 §2.1.1: no line longer than 998 octets (plus CRLF).
const HARD_LIMIT: usize = 990;

/// Appends `name: value` CRLF, folded (RFC 5322 §2.2.3) by putting a CRLF
/// before a space so that lines stay within 78 octets where the words allow;
/// unfolding (removing each CRLF) gives back `name: value` exactly. A word
/// that alone would pass 990 octets is split with CRLF SP, which adds a space
/// on unfolding; callers cap what they put in values so that this does not
/// happen in practice.
pub fn push_field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    let mut line_len = name.len() + 2;
    // A fold needs something before it on the line, and something other than
    // spaces after it (RFC 5322 §3.2.2: no line of white space only).
    let mut line_has_value = false;
    for piece in fold_pieces(value) {
        let has_word = piece.bytes().any(|b| b != b' ');
        if line_has_value && line_len + piece.len() > FOLD_AT && piece.starts_with(' ') && has_word
        {
            out.push_str("\r\n");
            line_len = 0;
        }
        line_has_value = true;
        for ch in piece.chars() {
            if line_len + ch.len_utf8() > HARD_LIMIT {
                out.push_str("\r\n ");
                line_len = 1;
            }
            out.push(ch);
            line_len += ch.len_utf8();
        }
    }
    out.push_str("\r\n");
}

/// Splits `value` into pieces that each start at a run of spaces (except
/// possibly the first): the places where a fold may go.
fn fold_pieces(value: &str) -> Vec<&str> {
    let b = value.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    for i in 1..b.len() {
        if b[i] == b' ' && b[i - 1] != b' ' {
            pieces.push(&value[start..i]);
            start = i;
        }
    }
    if start < b.len() {
        pieces.push(&value[start..]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn author_domain() {
        let d = |s: &[u8]| from_domain(s);
        assert_eq!(
            d(b"From: Alice <alice@Example.ORG.>"),
            Some("example.org".into())
        );
        assert_eq!(
            d(b"To: x@y\r\nFrom: \"a, b\" <a@one.test>, c@two.test\r\nFrom: z@three.test"),
            Some("one.test".into())
        );
        assert_eq!(
            d(b"From: =?utf-8?q?J=C3=B6rg?= <j@x.test>"),
            Some("x.test".into())
        );
        assert_eq!(d(b"From: nobody"), None);
        assert_eq!(d(b"Subject: no from"), None);
        assert_eq!(d(b"From: a@b c.test"), None);
    }

    #[test]
    fn header_scan() {
        let mut h = HeaderScan::default();
        h.scan_own(b"Received: by us\r\n");
        h.scan(b"Received: a\r\n\tb\r\nRECEIVED: c\r\nX: y\r\n");
        h.scan(b"\r\nReceived: in body\r\n");
        assert_eq!(h.received(), 2);
        assert!(h.complete());
        assert_eq!(
            h.section(),
            b"Received: by us\r\nReceived: a\r\n\tb\r\nRECEIVED: c\r\nX: y\r\n"
        );
        let whole = b"Received: by us\r\nReceived: a\r\n\tb\r\nRECEIVED: c\r\nX: y\r\n\r\nbody\r\n";
        assert_eq!(header_section(whole), (h.section().to_vec(), true));
    }

    #[test]
    fn header_scan_is_bounded() {
        let mut h = HeaderScan::default();
        let big = format!("X-Pad: {}\r\n", "a".repeat(MAX_HEADER_SECTION));
        h.scan(big.as_bytes());
        h.scan(b"From: hidden@x.test\r\n\r\n");
        assert!(!h.complete());
        assert_eq!(h.section().len(), MAX_HEADER_SECTION);
        let (section, complete) = header_section(format!("{big}\r\nbody").as_bytes());
        assert!(!complete);
        assert_eq!(section, h.section());
        // A header section that fills the limit exactly is complete.
        let exact = format!("X: {}", "b".repeat(MAX_HEADER_SECTION - 5));
        let (section, complete) = header_section(format!("{exact}\r\n\r\nbody").as_bytes());
        assert!(complete);
        assert_eq!(section.len(), MAX_HEADER_SECTION);
    }

    #[test]
    fn fields_are_unfolded() {
        let h = b"Subject: one\r\n two\r\nX-Y:z\r\nnot a field\r\nMessage-ID:\r\n <a@b>\r\n";
        let f: Vec<(String, String)> = fields(h)
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            f,
            [
                ("Subject".into(), " one two".into()),
                ("X-Y".into(), "z".into()),
                ("Message-ID".into(), " <a@b>".into()),
            ]
        );
        assert_eq!(message_id(h).as_deref(), Some("<a@b>"));
        assert_eq!(message_id(b"Message-ID: no brackets\r\n"), None);
        assert_eq!(message_id(b"Message-Id: <a b@c>\r\n"), None);
    }

    #[test]
    fn split_and_filter() {
        let m = b"From: a\nBcc: x,\n y\nTo: b\n\nbody\n";
        let (h, b) = split_header(m);
        assert_eq!(b, b"body\n");
        assert_eq!(without_field(h, "bcc"), b"From: a\nTo: b\n\n");
        assert!(has_field(h, "to"));
        assert!(!has_field(h, "cc"));
        let (h, b) = split_header(b"not a header\nrest\n");
        assert!(h.is_empty());
        assert_eq!(b, b"not a header\nrest\n");
    }

    #[test]
    fn folding_round_trips() {
        let value = "word ".repeat(40);
        let mut out = String::new();
        push_field(&mut out, "X-Long", value.trim());
        assert!(out.lines().all(|l| l.len() <= FOLD_AT));
        let unfolded = out.trim_end().replace("\r\n", "");
        assert_eq!(unfolded, format!("X-Long: {}", value.trim()));
        assert_eq!(fold_pieces(" a  b c"), [" a", "  b", " c"]);
    }
}
