//! The message-content readers: DATA (dot-terminated, dot-stuffed) and BDAT
//! chunks. Both emit canonical content: every line ends in CRLF.
//!
//! SMTP smuggling defence: DATA ends only on `<CR><LF>.<CR><LF>` where both
//! CRLFs are real. A bare CR or bare LF never ends a line for the purpose of
//! finding the terminator or of dot-unstuffing; it is turned into CRLF in the
//! stored content (so nothing downstream can read it differently) and
//! reported through `saw_bare_newline()` for servers configured to reject.
//! Untrusted bytes reach every function here.

/// Streaming decoder of message content.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    dot_mode: bool,
    st: St,
    bare: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// At the start of a line that began after a real CRLF (or at the start).
    Start,
    /// Inside a line (or after a bare CR/LF, which is not a line start).
    Text,
    /// Just after a CR.
    Cr,
    /// A "." at a real line start (DATA only).
    Dot,
    /// ".\r" at a real line start (DATA only).
    DotCr,
}

/// What `feed` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; the content goes on.
    More,
    /// The DATA terminator was found after consuming this many bytes.
    End(usize),
}

impl BodyDecoder {
    /// A decoder for DATA: dot-unstuffing and terminator detection.
    pub fn data() -> BodyDecoder {
        BodyDecoder {
            dot_mode: true,
            st: St::Start,
            bare: false,
        }
    }

    /// A decoder for BDAT chunk contents: line-ending normalisation only.
    pub fn chunks() -> BodyDecoder {
        BodyDecoder {
            dot_mode: false,
            st: St::Start,
            bare: false,
        }
    }

    /// True once any bare CR or bare LF has been seen.
    pub fn saw_bare_newline(&self) -> bool {
        self.bare
    }

    /// Decodes `input`, appending content to `out` unless `out` is None
    /// (content being discarded). Stops right after the DATA terminator.
    pub fn feed(&mut self, input: &[u8], mut out: Option<&mut Vec<u8>>) -> Progress {
        let mut i = 0;
        macro_rules! emit {
            ($bytes:expr) => {
                if let Some(o) = out.as_deref_mut() {
                    o.extend_from_slice($bytes);
                }
            };
        }
        while i < input.len() {
            match self.st {
                St::Text | St::Start
                    if !(self.st == St::Start && self.dot_mode && input[i] == b'.') =>
                {
                    // Copy the run up to the next CR or LF in one go.
                    let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    if run > 0 {
                        emit!(&input[i..i + run]);
                        i += run;
                        self.st = St::Text;
                        continue;
                    }
                    let c = input[i];
                    i += 1;
                    if c == b'\r' {
                        self.st = St::Cr;
                    } else {
                        // Bare LF.
                        self.bare = true;
                        emit!(b"\r\n");
                        self.st = St::Text;
                    }
                }
                St::Start | St::Text => {
                    // A "." at a real line start in DATA mode.
                    i += 1;
                    self.st = St::Dot;
                }
                St::Cr => {
                    let c = input[i];
                    if c == b'\n' {
                        i += 1;
                        emit!(b"\r\n");
                        self.st = St::Start;
                    } else {
                        // The CR before this byte was bare; this byte is
                        // handled as ordinary text (not a line start).
                        self.bare = true;
                        emit!(b"\r\n");
                        self.st = St::Text;
                        if c == b'\r' {
                            i += 1;
                            self.st = St::Cr;
                        }
                    }
                }
                St::Dot => {
                    let c = input[i];
                    match c {
                        b'\r' => {
                            i += 1;
                            self.st = St::DotCr;
                        }
                        _ => {
                            // RFC 5321 §4.5.2: a leading dot followed by other
                            // characters is removed; ".." becomes ".".
                            self.st = St::Text;
                            if c == b'.' {
                                i += 1;
                                emit!(b".");
                            }
                        }
                    }
                }
                St::DotCr => {
                    if input[i] == b'\n' {
                        self.st = St::Start;
                        return Progress::End(i + 1);
                    }
                    // ".\r" + something else: the dot is removed as stuffing and
                    // the CR is bare.
                    self.bare = true;
                    emit!(b"\r\n");
                    self.st = St::Text;
                    if input[i] == b'\r' {
                        i += 1;
                        self.st = St::Cr;
                    }
                }
            }
        }
        Progress::More
    }

    /// Call when the last BDAT chunk has been fed: a CR left pending at the
    /// very end is bare, and content that does not end in CRLF gets one.
    pub fn finish_chunks(&mut self, out: Option<&mut Vec<u8>>) {
        let need_crlf = match self.st {
            St::Cr => {
                self.bare = true;
                true
            }
            St::Text => true,
            _ => false,
        };
        if need_crlf {
            if let Some(o) = out {
                o.extend_from_slice(b"\r\n");
            }
        }
        self.st = St::Start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(input: &[u8]) -> (Vec<u8>, Option<usize>, bool) {
        let mut d = BodyDecoder::data();
        let mut out = Vec::new();
        match d.feed(input, Some(&mut out)) {
            Progress::End(n) => (out, Some(n), d.saw_bare_newline()),
            Progress::More => (out, None, d.saw_bare_newline()),
        }
    }

    #[test]
    fn simple_and_unstuffing() {
        let (out, end, bare) = data(b"Subject: x\r\n\r\n..dot\r\n.x\r\nok\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\n.dot\r\nx\r\nok\r\n");
        assert_eq!(
            end,
            Some(b"Subject: x\r\n\r\n..dot\r\n.x\r\nok\r\n.\r\n".len())
        );
        assert!(!bare);
        // Empty message.
        assert_eq!(data(b".\r\n"), (Vec::new(), Some(3), false));
    }

    #[test]
    fn smuggling_variants_never_end() {
        for v in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\r",
            b"\r\n.\r\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
        ] {
            let mut input = b"a".to_vec();
            input.extend_from_slice(v);
            input.extend_from_slice(b"MAIL FROM:<x@y.z>\r\n");
            let (out, end, bare) = data(&input);
            assert_eq!(end, None, "{v:?} ended DATA");
            assert!(bare, "{v:?} not flagged");
            // No bare CR or LF survives.
            for (i, &b) in out.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(out[i - 1], b'\r');
                }
                if b == b'\r' {
                    assert_eq!(out.get(i + 1), Some(&b'\n'));
                }
            }
        }
    }

    #[test]
    fn split_at_every_byte() {
        let input = b"l1\r\n..l2\r\n\r\n.\r\nREST";
        let (whole, end, _) = data(input);
        for split in 0..input.len() {
            let mut d = BodyDecoder::data();
            let mut out = Vec::new();
            let r1 = d.feed(&input[..split], Some(&mut out));
            let got_end = match r1 {
                Progress::End(n) => Some(n),
                Progress::More => match d.feed(&input[split..], Some(&mut out)) {
                    Progress::End(n) => Some(split + n),
                    Progress::More => None,
                },
            };
            assert_eq!(out, whole, "split {split}");
            assert_eq!(got_end, end);
        }
    }

    #[test]
    fn chunks_normalise() {
        let mut d = BodyDecoder::chunks();
        let mut out = Vec::new();
        assert_eq!(d.feed(b"a\nb\r", Some(&mut out)), Progress::More);
        assert_eq!(d.feed(b"\n.\r\nc\r", Some(&mut out)), Progress::More);
        d.finish_chunks(Some(&mut out));
        assert_eq!(out, b"a\r\nb\r\n.\r\nc\r\n");
        assert!(d.saw_bare_newline());
    }
}
