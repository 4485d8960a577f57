//! Removal of `Authentication-Results:` fields that claim to come from
//! this server (RFC 8601 §5), applied to every message while it streams
//! into the queue, so that no client can forge a result this server
//! would be trusted for. Also drops `X-Pigeon-Quarantine:`, the field the
//! server itself adds for DMARC quarantine.
//!
//! Pure: a state machine over the message bytes. Each field is looked at
//! line by line; only the fields that may be removed are held, and one
//! held field is bounded ([`MAX_HELD_FIELD`]): a longer one is dropped,
//! since its authserv-id cannot be trusted to be read.

/// The longest `Authentication-Results:` field held to read its
/// authserv-id; longer ones are removed.
pub const MAX_HELD_FIELD: usize = 16 * 1024;

/// The field name the server uses to mark mail for the Junk folder.
pub const QUARANTINE_FIELD: &str = "X-Pigeon-Quarantine";

/// Whether an `Authentication-Results:` value names `authserv_id`
/// (RFC 8601 §2.2: `authserv-id` is the first token after optional
/// comments and whitespace; compared as a domain name, case-insensitively,
/// with or without the trailing dot).
pub fn names_authserv_id(value: &[u8], authserv_id: &str) -> bool {
    match authserv_id_of(value) {
        Some(id) => same_domain(&id, authserv_id),
        None => false,
    }
}

fn same_domain(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// The authserv-id of a field value, if it has one.
pub fn authserv_id_of(value: &[u8]) -> Option<String> {
    let mut i = 0;
    let b = value;
    // CFWS: whitespace, line folds and (nested) comments.
    loop {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
            i += 1;
        }
        if i < b.len() && b[i] == b'(' {
            let mut depth = 0usize;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 1,
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        break;
    }
    if i >= b.len() {
        return None;
    }
    let mut id = Vec::new();
    if b[i] == b'"' {
        i += 1;
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' {
                i += 1;
            }
            if let Some(&c) = b.get(i) {
                id.push(c);
            }
            i += 1;
        }
    } else {
        while i < b.len() && !matches!(b[i], b';' | b' ' | b'\t' | b'\r' | b'\n' | b'(') {
            id.push(b[i]);
            i += 1;
        }
    }
    let id = String::from_utf8(id).ok()?;
    (!id.is_empty()).then_some(id)
}

/// How many bytes of a line are enough to know which field it starts.
const DECIDE_AFTER: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The current field is passed on.
    Keep,
    /// The current field is held: a candidate for removal.
    Held,
    /// The current field is removed.
    Drop,
}

/// The streaming remover for one message.
#[derive(Debug)]
pub struct AuthResultsFilter {
    authserv_id: String,
    /// Past the header section: everything passes.
    body: bool,
    mode: Mode,
    /// The start of the current line, until its field is known.
    line: Vec<u8>,
    /// The rest of the current line goes to `mode` as it comes.
    mid_line: bool,
    held: Vec<u8>,
    removed: usize,
}

impl AuthResultsFilter {
    pub fn new(authserv_id: &str) -> AuthResultsFilter {
        AuthResultsFilter {
            authserv_id: authserv_id.to_string(),
            body: false,
            mode: Mode::Keep,
            line: Vec::new(),
            mid_line: false,
            held: Vec::new(),
            removed: 0,
        }
    }

    /// Past the header section: input may be written as it is, without
    /// [`Self::push`].
    pub fn passthrough(&self) -> bool {
        self.body
    }

    /// How many fields were removed.
    pub fn removed(&self) -> usize {
        self.removed
    }

    /// Feeds message bytes; what is kept is appended to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            if self.body {
                out.extend_from_slice(&input[i..]);
                return;
            }
            let rest = &input[i..];
            let (part, complete) = match rest.iter().position(|&c| c == b'\n') {
                Some(p) => (&rest[..=p], true),
                None => (rest, false),
            };
            i += part.len();
            if self.mid_line {
                self.route(part, out);
                self.mid_line = !complete;
                continue;
            }
            self.line.extend_from_slice(part);
            // A line is judged once complete, or once its field name is
            // known (a colon seen) and it is long; a line with no colon
            // yet is held up to MAX_HELD_FIELD (a name padded with spaces
            // must not slip through undecided).
            let named = self.line.contains(&b':');
            if complete
                || (named && self.line.len() >= DECIDE_AFTER)
                || self.line.len() >= MAX_HELD_FIELD
            {
                let line = std::mem::take(&mut self.line);
                self.line_start(&line, out);
                self.mid_line = !complete;
            }
        }
    }

    /// End of the message: what is still held or pending is decided.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_start(&line, out);
        }
        self.settle(out);
        self.body = true;
    }

    fn line_start(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if line == b"\r\n" || line == b"\n" {
            // RFC 5322 §2.1: the empty line ends the header section.
            self.settle(out);
            out.extend_from_slice(line);
            self.body = true;
            return;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // RFC 5322 §2.2.3: a folded line continues the field.
            self.route(line, out);
            return;
        }
        self.settle(out);
        // Without a colon (a line held to the limit), the whole start of
        // the line stands for the name.
        let name = line
            .iter()
            .position(|&c| c == b':')
            .map(|p| line[..p].trim_ascii_end())
            .unwrap_or_else(|| line.trim_ascii());
        let removable = |n: &[u8], field: &str| {
            n.len() >= field.len() && n[..field.len()].eq_ignore_ascii_case(field.as_bytes())
        };
        let no_colon = !line.contains(&b':');
        self.mode = if name.eq_ignore_ascii_case(b"Authentication-Results") {
            Mode::Held
        } else if name.eq_ignore_ascii_case(QUARANTINE_FIELD.as_bytes())
            || (no_colon
                && (removable(name, "Authentication-Results") || removable(name, QUARANTINE_FIELD)))
        {
            self.removed += 1;
            Mode::Drop
        } else {
            Mode::Keep
        };
        self.route(line, out);
    }

    fn route(&mut self, part: &[u8], out: &mut Vec<u8>) {
        match self.mode {
            Mode::Keep => out.extend_from_slice(part),
            Mode::Held => {
                if self.held.len() + part.len() > MAX_HELD_FIELD {
                    self.held = Vec::new();
                    self.mode = Mode::Drop;
                    self.removed += 1;
                } else {
                    self.held.extend_from_slice(part);
                }
            }
            Mode::Drop => {}
        }
    }

    /// The held field is complete: removed if it names this server.
    fn settle(&mut self, out: &mut Vec<u8>) {
        if self.mode == Mode::Held {
            let held = std::mem::take(&mut self.held);
            let value = held
                .iter()
                .position(|&c| c == b':')
                .map(|p| &held[p + 1..])
                .unwrap_or(b"");
            if names_authserv_id(value, &self.authserv_id) {
                self.removed += 1;
            } else {
                out.extend_from_slice(&held);
            }
        }
        self.mode = Mode::Keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(msg: &[u8], chunk: usize) -> (Vec<u8>, usize) {
        let mut f = AuthResultsFilter::new("mx.example.org");
        let mut out = Vec::new();
        for c in msg.chunks(chunk) {
            if f.passthrough() {
                out.extend_from_slice(c);
            } else {
                f.push(c, &mut out);
            }
        }
        f.finish(&mut out);
        (out, f.removed())
    }

    #[test]
    fn removes_own_results_in_any_chunking() {
        let msg = b"Received: x\r\nAuthentication-Results: MX.Example.Org.;\r\n\tdkim=pass header.d=bank.test\r\nauthentication-results: (comment) \"mx.example.org\"; spf=pass\r\nAuthentication-Results: other.test; spf=fail\r\nX-Pigeon-Quarantine: dmarc\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.org; body line stays\r\n";
        let want = b"Received: x\r\nAuthentication-Results: other.test; spf=fail\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.example.org; body line stays\r\n";
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let (out, removed) = run(msg, chunk);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "chunk {chunk}"
            );
            assert_eq!(removed, 3);
        }
    }

    #[test]
    fn authserv_id_parsing() {
        assert_eq!(
            authserv_id_of(b" mx.example.org; none").as_deref(),
            Some("mx.example.org")
        );
        assert_eq!(
            authserv_id_of(b" (a (nested) c) x.test 1; none").as_deref(),
            Some("x.test")
        );
        assert_eq!(
            authserv_id_of(b"\"q.test\"; none").as_deref(),
            Some("q.test")
        );
        assert_eq!(authserv_id_of(b"   ").as_deref(), None);
        assert!(names_authserv_id(
            b" MX.EXAMPLE.ORG.; none",
            "mx.example.org"
        ));
        assert!(!names_authserv_id(
            b" mx.example.org.evil; none",
            "mx.example.org"
        ));
    }

    #[test]
    fn oversized_results_field_is_dropped_and_other_fields_stream() {
        let mut msg = b"Authentication-Results: x.test;".to_vec();
        for _ in 0..3000 {
            msg.extend_from_slice(b"\r\n\tdkim=pass");
        }
        msg.extend_from_slice(b"\r\nSubject: ");
        msg.extend(std::iter::repeat_n(b'a', 100_000));
        msg.extend_from_slice(b"\r\n\r\nbody");
        let (out, removed) = run(&msg, 1000);
        assert_eq!(removed, 1);
        assert!(out.starts_with(b"Subject: aaa"));
        assert!(out.ends_with(b"\r\n\r\nbody"));
        assert_eq!(out.len(), 9 + 100_000 + 2 + 2 + 4);
    }

    #[test]
    fn a_name_padded_past_the_decision_point_is_still_removed() {
        let mut msg = b"Authentication-Results".to_vec();
        msg.extend(std::iter::repeat_n(b' ', 1100));
        msg.extend_from_slice(b": mx.example.org; dkim=pass\r\nSubject: x\r\n\r\nbody");
        for chunk in [1, 7, 1024, 1100, 64 * 1024] {
            let (out, removed) = run(&msg, chunk);
            assert_eq!(out, b"Subject: x\r\n\r\nbody", "chunk {chunk}");
            assert_eq!(removed, 1);
        }
    }

    #[test]
    fn message_without_body_keeps_its_last_field() {
        let (out, _) = run(b"Subject: a\r\nAuthentication-Results: other; x", 5);
        assert_eq!(out, b"Subject: a\r\nAuthentication-Results: other; x");
    }
}
