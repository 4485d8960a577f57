//! The byte format of queue files (`queue/<ID>`) and status files
//! (`queue/<ID>.st`). Pure functions: no I/O, no clock.
//!
//! Untrusted bytes reach every decoder here: a file on disk may be truncated,
//! damaged or planted. Decoders check the magic, the version, the CRC32 over
//! the whole file and the record grammar, bound every length by the bytes
//! actually present, and return an error string instead of panicking.
//! The format is documented byte by byte in `docs/queue.md`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::id::QueueId;
use super::{DsnOwed, MessageStatus, RcptState, RcptStatus};
use crate::proto::reply::EnhancedCode;
use crate::proto::{BodyType, Envelope, Notify, Recipient, Ret};

pub(crate) const MSG_MAGIC: &[u8; 4] = b"PGNQ";
pub(crate) const STATUS_MAGIC: &[u8; 4] = b"PGNS";
/// Message files: version 2 adds the EDITS and MSGID records; version 1
/// files (without them) still read.
pub(crate) const MSG_VERSION: u8 = 2;
/// Status files: version 2 adds each recipient's status code; version 1
/// files still read.
pub(crate) const STATUS_VERSION: u8 = 2;
/// Magic plus version.
pub(crate) const PREAMBLE_LEN: usize = 5;
/// Type byte plus little-endian u32 length.
pub(crate) const REC_HEADER_LEN: usize = 5;
/// The body is cut into records of exactly this many bytes, the last one
/// shorter (never empty). An empty body has no body record at all.
pub(crate) const CHUNK: usize = 64 * 1024;
/// END record of a message file: header + body length (u64) + CRC32.
pub(crate) const MSG_END_LEN: usize = REC_HEADER_LEN + 8 + 4;
/// END record of a status file: header + CRC32.
pub(crate) const STATUS_END_LEN: usize = REC_HEADER_LEN + 4;

/// Record types. ASCII letters, so a hex dump of a queue file is readable.
pub(crate) mod rec {
    pub const META: u8 = b'M';
    pub const SENDER: u8 = b'S';
    pub const PARAMS: u8 = b'P';
    pub const ENVID: u8 = b'V';
    pub const HELO: u8 = b'H';
    pub const PROTOCOL: u8 = b'W';
    pub const AUTH: u8 = b'A';
    pub const RCPT: u8 = b'R';
    pub const BODY: u8 = b'B';
    /// Version 2, optional, after the body: header fields decisions added
    /// at commit, to prepend to the message when it is read.
    pub const EDITS: u8 = b'X';
    /// Version 2, optional, after EDITS: the Message-ID found in the
    /// header section at receipt.
    pub const MSGID: u8 = b'I';
    pub const END: u8 = b'E';
    /// Status file only: message-level next attempt time.
    pub const NEXT: u8 = b'N';
    /// Status file only, optional, right after NEXT: message flags.
    pub const FLAGS: u8 = b'F';
}

/// Bits of the status file's FLAGS record.
pub(crate) mod flag {
    pub const HOLD: u32 = 1;
    pub const DELAY_WARNED: u32 = 2;
}

// ---------------------------------------------------------------- encoding

/// Appends one record. A payload can never reach 4 GiB in practice (the
/// writer refuses such envelopes and cuts the body into `CHUNK`s); should one
/// ever do so it is truncated, which the decoder then reports as corrupt,
/// rather than panicking here.
pub(crate) fn put_record(out: &mut Vec<u8>, ty: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.push(ty);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload[..len as usize]);
}

fn body_type_code(b: BodyType) -> u8 {
    match b {
        BodyType::SevenBit => 0,
        BodyType::EightBitMime => 1,
        BodyType::BinaryMime => 2,
    }
}

fn ret_code(r: Option<Ret>) -> u8 {
    match r {
        None => 0,
        Some(Ret::Full) => 1,
        Some(Ret::Hdrs) => 2,
    }
}

/// The preamble and every envelope record: everything before the body.
pub(crate) fn encode_head(id: QueueId, arrival: i64, env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + env.recipients.len() * 64);
    out.extend_from_slice(MSG_MAGIC);
    out.push(MSG_VERSION);

    let mut meta = [0u8; 16];
    meta[..8].copy_from_slice(&id.0.to_le_bytes());
    meta[8..].copy_from_slice(&arrival.to_le_bytes());
    put_record(&mut out, rec::META, &meta);

    put_record(&mut out, rec::SENDER, env.sender.as_bytes());

    let mut params = Vec::with_capacity(20);
    params.push(body_type_code(env.body_type));
    params.push(u8::from(env.smtputf8));
    params.push(ret_code(env.ret));
    match env.client_ip {
        IpAddr::V4(a) => {
            params.push(4);
            params.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            params.push(6);
            params.extend_from_slice(&a.octets());
        }
    }
    put_record(&mut out, rec::PARAMS, &params);

    if let Some(envid) = &env.envid {
        put_record(&mut out, rec::ENVID, envid.as_bytes());
    }
    put_record(&mut out, rec::HELO, env.helo.as_bytes());
    put_record(&mut out, rec::PROTOCOL, env.protocol.as_bytes());
    if let Some(user) = &env.auth_user {
        put_record(&mut out, rec::AUTH, user.as_bytes());
    }
    let mut r = Vec::new();
    for rcpt in &env.recipients {
        r.clear();
        r.push(rcpt.notify.0);
        r.push(u8::from(rcpt.orcpt.is_some()));
        let alen = u32::try_from(rcpt.address.len()).unwrap_or(u32::MAX);
        r.extend_from_slice(&alen.to_le_bytes());
        r.extend_from_slice(&rcpt.address.as_bytes()[..alen as usize]);
        if let Some(o) = &rcpt.orcpt {
            r.extend_from_slice(o.as_bytes());
        }
        put_record(&mut out, rec::RCPT, &r);
    }
    out
}

/// Appends body records for `body`, cutting it into `CHUNK`-sized pieces.
/// Callers that stream must cut at the same places (see the writer).
pub(crate) fn put_body_chunks(out: &mut Vec<u8>, body: &[u8]) {
    for c in body.chunks(CHUNK) {
        put_record(out, rec::BODY, c);
    }
}

/// The END record up to (not including) its CRC field.
pub(crate) fn msg_end_prefix(body_len: u64) -> [u8; MSG_END_LEN - 4] {
    let mut e = [0u8; MSG_END_LEN - 4];
    e[0] = rec::END;
    e[1..5].copy_from_slice(&12u32.to_le_bytes());
    e[5..13].copy_from_slice(&body_len.to_le_bytes());
    e
}

/// What is recorded about a message besides its envelope and body:
/// version 2's EDITS and MSGID records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    /// Header fields to prepend (whole field lines, CRLF), or empty.
    pub edits: Vec<u8>,
    /// The Message-ID found at receipt, with its angle brackets.
    pub message_id: Option<String>,
}

impl Extras {
    /// The records that follow the body, and the END record up to its CRC.
    pub(crate) fn tail(&self, body_len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.edits.is_empty() {
            put_record(&mut out, rec::EDITS, &self.edits);
        }
        if let Some(id) = &self.message_id {
            put_record(&mut out, rec::MSGID, id.as_bytes());
        }
        out.extend_from_slice(&msg_end_prefix(body_len));
        out
    }
}

/// Encodes a whole message file. The streaming writer produces exactly these
/// bytes for the same input.
pub fn encode_message(
    id: QueueId,
    arrival: i64,
    env: &Envelope,
    body: &[u8],
    extras: &Extras,
) -> Vec<u8> {
    let mut out = encode_head(id, arrival, env);
    out.reserve(body.len() + body.len() / CHUNK * REC_HEADER_LEN + extras.edits.len() + 64);
    put_body_chunks(&mut out, body);
    out.extend_from_slice(&extras.tail(body.len() as u64));
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The state byte of a status RCPT record: the state in the low four
/// bits, the DSN still owed in the high four (0 = none).
fn state_code(rs: &RcptStatus) -> u8 {
    let state = match rs.state {
        RcptState::Pending => 0,
        RcptState::Delivered => 1,
        RcptState::Failed => 2,
    };
    let owed = match rs.dsn_owed {
        None => 0,
        Some(DsnOwed::Failed) => 1,
        Some(DsnOwed::Delivered) => 2,
        Some(DsnOwed::Relayed) => 3,
        Some(DsnOwed::Expanded) => 4,
    };
    state | owed << 4
}

/// Encodes a status file.
pub fn encode_status(st: &MessageStatus) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + st.rcpts.len() * 64);
    out.extend_from_slice(STATUS_MAGIC);
    out.push(STATUS_VERSION);
    put_record(&mut out, rec::NEXT, &st.next_attempt.to_le_bytes());
    let flags = if st.hold { flag::HOLD } else { 0 }
        | if st.delay_warned {
            flag::DELAY_WARNED
        } else {
            0
        };
    if flags != 0 {
        put_record(&mut out, rec::FLAGS, &flags.to_le_bytes());
    }
    let mut r = Vec::new();
    for rs in &st.rcpts {
        r.clear();
        r.push(state_code(rs));
        r.extend_from_slice(&rs.attempts.to_le_bytes());
        r.extend_from_slice(&rs.next_attempt.to_le_bytes());
        let code = rs.status.unwrap_or(EnhancedCode::new(0, 0, 0));
        r.push(code.class);
        r.extend_from_slice(&code.subject.to_le_bytes());
        r.extend_from_slice(&code.detail.to_le_bytes());
        r.extend_from_slice(rs.last_reply.as_bytes());
        put_record(&mut out, rec::RCPT, &r);
    }
    out.push(rec::END);
    out.extend_from_slice(&4u32.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

// ---------------------------------------------------------------- decoding

/// Reads `[type][len][payload]` records from a byte slice.
struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Records<'a> {
    fn next(&mut self) -> Result<Option<(u8, &'a [u8])>, String> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let (ty, len) = parse_rec_header(rest)
            .ok_or_else(|| format!("truncated record header at offset {}", self.pos))?;
        let start = self.pos + REC_HEADER_LEN;
        let payload = start
            .checked_add(len)
            .and_then(|end| self.buf.get(start..end))
            .ok_or_else(|| {
                format!(
                    "record at offset {} runs past the end of the file",
                    self.pos
                )
            })?;
        self.pos = start + len;
        Ok(Some((ty, payload)))
    }
}

/// Type and payload length from the first 5 bytes of `b`.
pub(crate) fn parse_rec_header(b: &[u8]) -> Option<(u8, usize)> {
    let h = b.get(..REC_HEADER_LEN)?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    Some((h[0], len as usize))
}

fn le_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

fn utf8(what: &str, b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// Checks the preamble and the trailing CRC32 of a whole file; returns
/// its format version (one of `versions`).
fn check_frame(
    bytes: &[u8],
    magic: &[u8; 4],
    versions: &[u8],
    min_len: usize,
) -> Result<u8, String> {
    match bytes.get(..4) {
        Some(m) if m == magic => {}
        _ => return Err("bad magic".into()),
    }
    let version = match bytes.get(4) {
        Some(v) if versions.contains(v) => *v,
        Some(v) => return Err(format!("unknown format version {v}")),
        None => return Err("truncated preamble".into()),
    };
    if bytes.len() < min_len {
        return Err("file too short".into());
    }
    let split = bytes.len() - 4;
    let (data, tail) = bytes.split_at(split);
    let stored = le_u32(tail).ok_or("truncated checksum")?;
    let actual = crc32fast::hash(data);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        ));
    }
    Ok(version)
}

/// Builds an envelope from its records, enforcing their order:
/// META SENDER PARAMS [ENVID] HELO PROTOCOL [AUTH] RCPT*.
/// Shared by the full decoder and by `list`, which reads only the head.
#[derive(Default)]
pub(crate) struct HeadBuilder {
    last_stage: u8,
    meta: Option<(u64, i64)>,
    sender: Option<String>,
    params: Option<(BodyType, bool, Option<Ret>, IpAddr)>,
    envid: Option<String>,
    helo: Option<String>,
    protocol: Option<String>,
    auth: Option<String>,
    rcpts: Vec<Recipient>,
}

/// Position of each envelope record in the required order; RCPT may repeat.
fn stage(ty: u8) -> Option<u8> {
    Some(match ty {
        rec::META => 1,
        rec::SENDER => 2,
        rec::PARAMS => 3,
        rec::ENVID => 4,
        rec::HELO => 5,
        rec::PROTOCOL => 6,
        rec::AUTH => 7,
        rec::RCPT => 8,
        _ => return None,
    })
}

impl HeadBuilder {
    /// True if `ty` is an envelope record type (as opposed to BODY or END).
    pub(crate) fn is_head_record(ty: u8) -> bool {
        stage(ty).is_some()
    }

    pub(crate) fn feed(&mut self, ty: u8, p: &[u8]) -> Result<(), String> {
        let st =
            stage(ty).ok_or_else(|| format!("unexpected record type 0x{ty:02x} in envelope"))?;
        if st < self.last_stage || (st == self.last_stage && ty != rec::RCPT) {
            return Err(format!("envelope record '{}' out of order", char::from(ty)));
        }
        self.last_stage = st;
        match ty {
            rec::META => {
                if p.len() != 16 {
                    return Err("bad META record length".into());
                }
                let id = le_u64(p).ok_or("bad META record")?;
                let arrival = le_u64(p.get(8..).unwrap_or_default()).ok_or("bad META record")?;
                self.meta = Some((id, arrival as i64));
            }
            rec::SENDER => self.sender = Some(utf8("sender", p)?),
            rec::PARAMS => self.params = Some(decode_params(p)?),
            rec::ENVID => self.envid = Some(utf8("ENVID", p)?),
            rec::HELO => self.helo = Some(utf8("HELO name", p)?),
            rec::PROTOCOL => self.protocol = Some(utf8("protocol", p)?),
            rec::AUTH => self.auth = Some(utf8("AUTH user", p)?),
            _ => self.rcpts.push(decode_rcpt(p)?),
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<(QueueId, i64, Envelope), String> {
        let (id, arrival) = self.meta.ok_or("missing META record")?;
        let (body_type, smtputf8, ret, client_ip) = self.params.ok_or("missing PARAMS record")?;
        let env = Envelope {
            sender: self.sender.ok_or("missing SENDER record")?,
            recipients: self.rcpts,
            ret,
            envid: self.envid,
            body_type,
            smtputf8,
            client_ip,
            helo: self.helo.ok_or("missing HELO record")?,
            protocol: self.protocol.ok_or("missing PROTOCOL record")?,
            auth_user: self.auth,
        };
        Ok((QueueId(id), arrival, env))
    }
}

fn decode_params(p: &[u8]) -> Result<(BodyType, bool, Option<Ret>, IpAddr), String> {
    let (fixed, ip) = match p.get(..4) {
        Some(f) => (f, p.get(4..).unwrap_or_default()),
        None => return Err("bad PARAMS record length".into()),
    };
    let body_type = match fixed[0] {
        0 => BodyType::SevenBit,
        1 => BodyType::EightBitMime,
        2 => BodyType::BinaryMime,
        v => return Err(format!("unknown body type {v}")),
    };
    let smtputf8 = match fixed[1] {
        0 => false,
        1 => true,
        v => return Err(format!("bad SMTPUTF8 flag {v}")),
    };
    let ret = match fixed[2] {
        0 => None,
        1 => Some(Ret::Full),
        2 => Some(Ret::Hdrs),
        v => return Err(format!("unknown RET value {v}")),
    };
    let addr = match (fixed[3], ip.len()) {
        (4, 4) => {
            let o: [u8; 4] = ip.try_into().map_err(|_| "bad IPv4 address")?;
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (6, 16) => {
            let o: [u8; 16] = ip.try_into().map_err(|_| "bad IPv6 address")?;
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err("bad client address in PARAMS record".into()),
    };
    Ok((body_type, smtputf8, ret, addr))
}

fn decode_rcpt(p: &[u8]) -> Result<Recipient, String> {
    let notify = *p.first().ok_or("empty RCPT record")?;
    let flags = *p.get(1).ok_or("truncated RCPT record")?;
    let alen = le_u32(p.get(2..).unwrap_or_default()).ok_or("truncated RCPT record")? as usize;
    let rest = p.get(6..).unwrap_or_default();
    let addr = rest
        .get(..alen)
        .ok_or("RCPT address runs past its record")?;
    let tail = rest.get(alen..).unwrap_or_default();
    let orcpt = match flags {
        0 if tail.is_empty() => None,
        0 => return Err("trailing bytes in RCPT record".into()),
        1 => Some(utf8("ORCPT", tail)?),
        v => return Err(format!("bad RCPT flags {v}")),
    };
    Ok(Recipient {
        address: utf8("recipient address", addr)?,
        orcpt,
        notify: Notify(notify),
    })
}

/// Outcome of [`parse_head`] on the first bytes of a message file.
pub(crate) enum HeadParse {
    Done {
        id: QueueId,
        arrival: i64,
        envelope: Envelope,
    },
    /// The envelope continues past the bytes given: at least this many
    /// bytes from the start of the file are needed.
    NeedMore(usize),
}

/// Decodes the envelope from a prefix of a message file, stopping at the
/// first body or END record. Checks the preamble and the envelope grammar
/// but not the CRC (that needs the whole file).
pub(crate) fn parse_head(bytes: &[u8]) -> Result<HeadParse, String> {
    if bytes.len() < PREAMBLE_LEN {
        return Ok(HeadParse::NeedMore(PREAMBLE_LEN));
    }
    if &bytes[..4] != MSG_MAGIC {
        return Err("bad magic".into());
    }
    if bytes[4] != MSG_VERSION && bytes[4] != 1 {
        return Err(format!("unknown format version {}", bytes[4]));
    }
    let mut pos = PREAMBLE_LEN;
    let mut head = HeadBuilder::default();
    loop {
        let Some((ty, len)) = parse_rec_header(bytes.get(pos..).unwrap_or_default()) else {
            return Ok(HeadParse::NeedMore(pos + REC_HEADER_LEN));
        };
        if !HeadBuilder::is_head_record(ty) {
            let (id, arrival, envelope) = head.finish()?;
            return Ok(HeadParse::Done {
                id,
                arrival,
                envelope,
            });
        }
        let start = pos + REC_HEADER_LEN;
        let end = start.checked_add(len).ok_or("record length overflows")?;
        let Some(payload) = bytes.get(start..end) else {
            return Ok(HeadParse::NeedMore(end));
        };
        head.feed(ty, payload)?;
        pos = end;
    }
}

/// A decoded message file.
pub(crate) struct Decoded {
    pub id: QueueId,
    pub arrival: i64,
    pub envelope: Envelope,
    /// Present only when the caller asked for it.
    pub body: Option<Vec<u8>>,
    pub extras: Extras,
}

/// Verifies and decodes a complete message file. With `want_body` false the
/// body is still checked (CRC, record grammar, length) but not copied.
pub(crate) fn decode_message_bytes(bytes: &[u8], want_body: bool) -> Result<Decoded, String> {
    let version = check_frame(
        bytes,
        MSG_MAGIC,
        &[1, MSG_VERSION],
        PREAMBLE_LEN + MSG_END_LEN,
    )?;
    let mut recs = Records {
        buf: bytes,
        pos: PREAMBLE_LEN,
    };
    let mut head = HeadBuilder::default();
    let mut body = want_body.then(Vec::new);
    let mut body_len: u64 = 0;
    let mut in_body = false;
    let mut extras = Extras::default();
    // After the body: EDITS, then MSGID, each at most once (version 2).
    let mut tail_stage = 0u8;
    loop {
        let at = recs.pos;
        let (ty, p) = recs.next()?.ok_or("missing END record")?;
        match ty {
            rec::EDITS | rec::MSGID => {
                let stage = if ty == rec::EDITS { 1 } else { 2 };
                if version < 2 || stage <= tail_stage {
                    return Err(format!(
                        "record '{}' out of place at offset {at}",
                        char::from(ty)
                    ));
                }
                tail_stage = stage;
                in_body = true;
                if ty == rec::EDITS {
                    if p.is_empty() {
                        return Err(format!("empty EDITS record at offset {at}"));
                    }
                    extras.edits = p.to_vec();
                } else {
                    extras.message_id = Some(utf8("Message-ID", p)?);
                }
            }
            rec::BODY if tail_stage > 0 => {
                return Err(format!("body record after EDITS/MSGID at offset {at}"));
            }
            rec::BODY => {
                if p.is_empty() || p.len() > CHUNK {
                    return Err(format!("bad body record length {} at offset {at}", p.len()));
                }
                in_body = true;
                body_len += p.len() as u64;
                if let Some(b) = body.as_mut() {
                    b.extend_from_slice(p);
                }
            }
            rec::END => {
                if p.len() != 12 || recs.pos != bytes.len() {
                    return Err(format!("malformed END record at offset {at}"));
                }
                let stated = le_u64(p).ok_or("malformed END record")?;
                if stated != body_len {
                    return Err(format!("END says {stated} body bytes, found {body_len}"));
                }
                let (id, arrival, envelope) = head.finish()?;
                return Ok(Decoded {
                    id,
                    arrival,
                    envelope,
                    body,
                    extras,
                });
            }
            _ if in_body => {
                return Err(format!(
                    "record type 0x{ty:02x} after the body at offset {at}"
                ));
            }
            _ => head.feed(ty, p)?,
        }
    }
}

fn decode_state(v: u8) -> Result<(RcptState, Option<DsnOwed>), String> {
    let state = match v & 0x0f {
        0 => RcptState::Pending,
        1 => RcptState::Delivered,
        2 => RcptState::Failed,
        _ => return Err(format!("unknown recipient state {v}")),
    };
    let owed = match v >> 4 {
        0 => None,
        1 => Some(DsnOwed::Failed),
        2 => Some(DsnOwed::Delivered),
        3 => Some(DsnOwed::Relayed),
        4 => Some(DsnOwed::Expanded),
        _ => return Err(format!("unknown recipient state {v}")),
    };
    Ok((state, owed))
}

/// Verifies and decodes a complete status file.
pub(crate) fn decode_status_bytes(bytes: &[u8]) -> Result<MessageStatus, String> {
    let version = check_frame(
        bytes,
        STATUS_MAGIC,
        &[1, STATUS_VERSION],
        PREAMBLE_LEN + REC_HEADER_LEN + 8 + STATUS_END_LEN,
    )?;
    let mut recs = Records {
        buf: bytes,
        pos: PREAMBLE_LEN,
    };
    let next_attempt = match recs.next()? {
        Some((rec::NEXT, p)) if p.len() == 8 => le_u64(p).ok_or("bad NEXT record")? as i64,
        _ => return Err("status file does not start with a NEXT record".into()),
    };
    let mut rcpts = Vec::new();
    let mut flags = 0u32;
    loop {
        let at = recs.pos;
        match recs.next()?.ok_or("missing END record")? {
            (rec::FLAGS, p) if rcpts.is_empty() && flags == 0 => {
                flags = le_u32(p)
                    .filter(|_| p.len() == 4)
                    .ok_or("bad FLAGS record")?;
                if flags & !(flag::HOLD | flag::DELAY_WARNED) != 0 || flags == 0 {
                    return Err(format!("unknown flags 0x{flags:x} at offset {at}"));
                }
            }
            (rec::RCPT, p) => {
                let fixed = p
                    .get(..13)
                    .ok_or_else(|| format!("short RCPT record at offset {at}"))?;
                let (state, dsn_owed) = decode_state(fixed[0])?;
                let attempts = le_u32(&fixed[1..]).ok_or("bad RCPT record")?;
                let next = le_u64(&fixed[5..]).ok_or("bad RCPT record")? as i64;
                let (status, text_at) = if version >= 2 {
                    let c = p
                        .get(13..18)
                        .ok_or_else(|| format!("short RCPT record at offset {at}"))?;
                    let code = EnhancedCode::new(
                        c[0],
                        u16::from_le_bytes([c[1], c[2]]),
                        u16::from_le_bytes([c[3], c[4]]),
                    );
                    let status = match code.class {
                        0 if code == EnhancedCode::new(0, 0, 0) => None,
                        2 | 4 | 5 => Some(code),
                        _ => return Err(format!("bad status code at offset {at}")),
                    };
                    (status, 18)
                } else {
                    (None, 13)
                };
                let last_reply = utf8("last reply", p.get(text_at..).unwrap_or_default())?;
                // A version 1 file kept the code only at the start of the
                // reply text.
                let status = status.or_else(|| {
                    (version == 1)
                        .then(|| last_reply.split(' ').next().and_then(EnhancedCode::parse))
                        .flatten()
                });
                rcpts.push(RcptStatus {
                    state,
                    attempts,
                    next_attempt: next,
                    last_reply,
                    status,
                    dsn_owed,
                });
            }
            (rec::END, p) => {
                // The END payload is the CRC itself, already checked.
                if p.len() != 4 || recs.pos != bytes.len() {
                    return Err(format!("malformed END record at offset {at}"));
                }
                return Ok(MessageStatus {
                    rcpts,
                    next_attempt,
                    hold: flags & flag::HOLD != 0,
                    delay_warned: flags & flag::DELAY_WARNED != 0,
                });
            }
            (ty, _) => return Err(format!("unexpected record type 0x{ty:02x} at offset {at}")),
        }
    }
}
