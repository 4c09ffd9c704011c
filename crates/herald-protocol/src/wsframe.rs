//! RFC 6455 on the server side, without IO: the handshake's checks and accept key, client frame
//! headers, the reassembly of fragmented messages, and server frames (their header layout is
//! `wsheader`). The shell's socket loop applies these rules; the `wsframe` fuzz target walks
//! arbitrary client bytes through them the way that loop does.
//!
//! Herald speaks WebSocket itself rather than through a general-purpose crate because an idle
//! connection must cost almost nothing: the connection task keeps no read or write buffer while
//! it waits, and every server frame is written straight from the shared, encoded event.

use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::borrow::Cow;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close status: the peer broke the framing rules.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close status: a text message that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// What a request's headers say about a WebSocket upgrade.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Not an upgrade request at all: plain HTTP.
    No,
    /// A valid upgrade; the accept key to answer with.
    Yes { accept: String },
}

/// True when a comma-separated header value lists `token` (case-insensitively).
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Checks a GET request's headers for a version-13 WebSocket upgrade. Anything short of a
/// complete, valid upgrade is left to the HTTP router, which explains what is missing.
pub fn check_upgrade<'a>(
    method: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Upgrade {
    if method != "GET" {
        return Upgrade::No;
    }
    let (mut upgrade, mut connection, mut version, mut key) = (false, false, false, None);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= lists(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= lists(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version |= value.trim_ascii() == b"13";
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.trim_ascii());
        }
    }
    match key {
        // The key is 16 random bytes in base64: 24 characters.
        Some(k) if upgrade && connection && version && k.len() == 24 => Upgrade::Yes {
            accept: accept_key(k),
        },
        _ => Upgrade::No,
    }
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    switching_protocols_with(accept, None)
}

/// The `101 Switching Protocols` answer, with the extensions the server accepted.
pub fn switching_protocols_with(accept: &str, extensions: Option<&str>) -> Vec<u8> {
    let ext = extensions.map_or(String::new(), |e| {
        format!("Sec-WebSocket-Extensions: {e}\r\n")
    });
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{ext}\r\n"
    )
    .into_bytes()
}

/// A client frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1: the first frame of a compressed message (only where `permessage-deflate` was
    /// negotiated; see `parse_header_with`).
    pub rsv1: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    /// Bytes of the header itself, mask included (6 to 14).
    pub header_len: usize,
    /// At most `usize::MAX - MAX_CLIENT_HEADER`: `frame_len` cannot overflow.
    pub payload_len: usize,
}

/// The longest client frame header: 2 bytes, a 64-bit length and the mask.
pub const MAX_CLIENT_HEADER: usize = 14;

impl Header {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Why a client frame is refused; each maps to a close status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Reserved bits set that no negotiated extension allows.
    Reserved,
    UnknownOpcode(u8),
    /// Clients must mask every frame.
    Unmasked,
    /// A control frame fragmented or over 125 bytes.
    BadControl,
    /// A continuation without a message to continue, or a new message inside a fragmented one.
    Fragmentation,
    /// A payload over the configured maximum.
    TooBig,
}

impl FrameError {
    /// True when the WebSocket close status is 1009 (message too big) rather than 1002.
    pub fn is_too_big(self) -> bool {
        self == Self::TooBig
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Reserved => "Reserved bits set without an extension",
            Self::UnknownOpcode(_) => "Unknown opcode",
            Self::Unmasked => "Client frames must be masked",
            Self::BadControl => "Control frames must be final and at most 125 bytes",
            Self::Fragmentation => "Unexpected continuation frame or interleaved message",
            Self::TooBig => "Message too big",
        }
    }
}

/// Parses the header at the start of `buf`; `Ok(None)` until the whole header is there.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    parse_header_with(buf, max_payload, false)
}

/// `parse_header` on a connection that negotiated `permessage-deflate` when `deflate`: RSV1 is
/// then allowed on the first frame of a text or binary message (RFC 7692 6.1), never on a
/// continuation or control frame.
pub fn parse_header_with(
    buf: &[u8],
    max_payload: usize,
    deflate: bool,
) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let rsv1 = b0 & crate::wsdeflate::RSV1 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let control = match opcode {
        OP_TEXT | OP_BINARY => false,
        OP_CONTINUATION if !rsv1 => false,
        OP_CLOSE | OP_PING | OP_PONG if !rsv1 => true,
        OP_CONTINUATION | OP_CLOSE | OP_PING | OP_PONG => return Err(FrameError::Reserved),
        other => return Err(FrameError::UnknownOpcode(other)),
    };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or_default()), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if control && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    // A length that cannot be added to its header's (possible only with no real maximum, as
    // while waiting for a close reply) is as much too big as one over the maximum.
    let payload_len = match usize::try_from(len) {
        Ok(n) if n <= max_payload && n <= usize::MAX - MAX_CLIENT_HEADER => n,
        _ => return Err(FrameError::TooBig),
    };
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        rsv1,
        opcode,
        mask: [m[0], m[1], m[2], m[3]],
        header_len: at + 4,
        payload_len,
    }))
}

/// Removes the client's mask from a payload in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// A complete data message: its opcode (text or binary, with `wsdeflate::RSV1` added when it
/// is compressed) and payload. A message that came in one frame borrows that frame's payload;
/// one reassembled from fragments owns its bytes.
pub type Message<'a> = (u8, Cow<'a, [u8]>);

/// The most compressed bytes a message that inflates to at most `max` bytes may take: DEFLATE
/// stores incompressible data with 5 bytes per block of at most 64 KB, plus a few more.
pub fn compressed_max(max: usize) -> usize {
    max.saturating_add(max / 1024).saturating_add(64)
}

/// Adds one data frame (text, binary or continuation; control frames are the caller's) to the
/// message being read (RFC 6455 §5.4). `partial` holds a fragmented message until its final
/// frame: boxed, so that a connection between messages keeps one pointer for it. Returns the
/// message this frame completes, `None` while fragments are being collected, or why the frame
/// is refused: a continuation with nothing to continue or a new message inside a fragmented
/// one, and a message whose fragments add up to more than `max` bytes. `opcode` carries
/// `wsdeflate::RSV1` for the first frame of a compressed message: such a message may take
/// `compressed_max(max)` bytes (its inflated size is the caller's to check).
pub fn assemble<'a>(
    partial: &mut Option<Box<(u8, Vec<u8>)>>,
    fin: bool,
    opcode: u8,
    payload: &'a [u8],
    max: usize,
) -> Result<Option<Message<'a>>, FrameError> {
    let compressed = |op: u8| op & crate::wsdeflate::RSV1 != 0;
    match opcode & !crate::wsdeflate::RSV1 {
        OP_TEXT | OP_BINARY => {
            if partial.is_some() {
                return Err(FrameError::Fragmentation);
            }
            let max = if compressed(opcode) {
                compressed_max(max)
            } else {
                max
            };
            if payload.len() > max {
                return Err(FrameError::TooBig);
            }
            if fin {
                return Ok(Some((opcode, Cow::Borrowed(payload))));
            }
            *partial = Some(Box::new((opcode, payload.to_vec())));
            Ok(None)
        }
        OP_CONTINUATION => {
            let Some((op, so_far)) = partial.as_deref_mut() else {
                return Err(FrameError::Fragmentation);
            };
            let max = if compressed(*op) {
                compressed_max(max)
            } else {
                max
            };
            if so_far.len().saturating_add(payload.len()) > max {
                return Err(FrameError::TooBig);
            }
            so_far.extend_from_slice(payload);
            if !fin {
                return Ok(None);
            }
            Ok(partial.take().map(|m| {
                let (op, bytes) = *m;
                (op, Cow::Owned(bytes))
            }))
        }
        // A control frame is never part of a message.
        other => Err(FrameError::UnknownOpcode(other)),
    }
}

/// Appends a server frame (final, unmasked) holding `payload`.
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    crate::wsheader::put(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame with a status code and reason (the reason cut to fit 125 bytes).
pub fn put_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    put_frame(out, OP_CLOSE, &payload);
}

/// The status code of a client's close frame payload, if it has one.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// The status to answer a client's close frame with (RFC 6455 §5.5.1, §7.4): its own status
/// when that is one a peer may send, 1000 when it gave none, 1002 for a one-byte payload or a
/// status no endpoint may put on the wire (below 1000, 1004-1006, 1015, unassigned 1016-2999,
/// 5000 and up), and 1007 when the reason is not UTF-8.
pub fn close_reply(payload: &[u8]) -> u16 {
    let Some(code) = close_code(payload) else {
        return if payload.is_empty() {
            1000
        } else {
            CLOSE_PROTOCOL_ERROR
        };
    };
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !sendable {
        CLOSE_PROTOCOL_ERROR
    } else if std::str::from_utf8(&payload[2..]).is_err() {
        CLOSE_INVALID_DATA
    } else {
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_needs_every_header() {
        let full: Vec<(&str, &[u8])> = vec![
            ("Host", b"x"),
            ("Upgrade", b"WebSocket"),
            ("Connection", b"keep-alive, Upgrade"),
            ("Sec-WebSocket-Version", b"13"),
            ("Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(
            check_upgrade("GET", full.clone()),
            Upgrade::Yes {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
        assert_eq!(check_upgrade("POST", full.clone()), Upgrade::No);
        for skip in 1..full.len() {
            let partial: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, h)| *h)
                .collect();
            assert_eq!(check_upgrade("GET", partial), Upgrade::No, "without {skip}");
        }
        let mut v8 = full.clone();
        v8[3].1 = b"8";
        assert_eq!(check_upgrade("GET", v8), Upgrade::No);
    }

    #[test]
    fn parses_masked_frames_of_every_length_form() {
        let mask = [1, 2, 3, 4];
        for len in [0usize, 5, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = masked(OP_TEXT, true, &payload, mask);
            let h = parse_header(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(h.payload_len, len);
            assert_eq!(h.frame_len(), frame.len());
            assert!(h.fin);
            assert_eq!(h.opcode, OP_TEXT);
            let mut body = frame[h.header_len..].to_vec();
            unmask(&mut body, h.mask);
            assert_eq!(body, payload);
            // Every strict prefix of the header asks for more bytes.
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&frame[..cut], 1 << 20), Ok(None));
            }
        }
    }

    #[test]
    fn refuses_bad_frames() {
        let m = [9, 9, 9, 9];
        let mut rsv = masked(OP_TEXT, true, b"x", m);
        rsv[0] |= 0x40;
        assert_eq!(parse_header(&rsv, 100), Err(FrameError::Reserved));
        assert_eq!(
            parse_header(&masked(0x3, true, b"x", m), 100),
            Err(FrameError::UnknownOpcode(3))
        );
        let mut unmasked = masked(OP_TEXT, true, b"x", m);
        unmasked[1] &= 0x7F;
        assert_eq!(parse_header(&unmasked, 100), Err(FrameError::Unmasked));
        assert_eq!(
            parse_header(&masked(OP_PING, false, b"x", m), 100),
            Err(FrameError::BadControl)
        );
        assert_eq!(
            parse_header(&masked(OP_PING, true, &[0; 126], m), 1000),
            Err(FrameError::BadControl)
        );
        let big = masked(OP_TEXT, true, &[0; 101], m);
        assert_eq!(parse_header(&big, 100), Err(FrameError::TooBig));
        // The length alone decides: the payload need not have arrived.
        assert_eq!(parse_header(&big[..4], 100), Err(FrameError::TooBig));
        assert!(FrameError::TooBig.is_too_big());
    }

    #[test]
    fn server_frames_are_unmasked_with_minimal_length() {
        for (len, header) in [
            (0usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let mut out = Vec::new();
            put_frame(&mut out, OP_TEXT, &vec![b'a'; len]);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x81);
            assert_eq!(out[1] & 0x80, 0, "server frames are not masked");
        }
        let mut out = Vec::new();
        put_close(&mut out, 4201, &"é".repeat(100));
        assert_eq!(out[0], 0x88);
        let len = usize::from(out[1]);
        assert!(len <= 125);
        assert_eq!(close_code(&out[2..]), Some(4201));
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        assert_eq!(close_code(&[3]), None);
    }

    #[test]
    fn close_replies_follow_rfc_6455() {
        let with = |code: u16, reason: &[u8]| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason);
            close_reply(&p)
        };
        assert_eq!(close_reply(&[]), 1000, "no status: a normal close");
        assert_eq!(close_reply(&[3]), 1002, "a one-byte payload is malformed");
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1014, 3000, 4000, 4999,
        ] {
            assert_eq!(with(ok, b"bye"), ok, "{ok} is echoed");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(with(bad, b""), 1002, "{bad} may not be sent by a peer");
        }
        assert_eq!(
            with(1000, &[0xff, 0xfe]),
            1007,
            "a reason that is not UTF-8"
        );
        assert_eq!(with(1000, "é".as_bytes()), 1000);
    }

    #[test]
    fn a_length_that_cannot_fit_beside_its_header_is_too_big() {
        // No payload maximum (as while waiting for a close reply): the 64-bit length form's
        // largest values are refused, so that frame_len() cannot overflow.
        let mut frame = vec![0x82, 0xFF];
        frame.extend_from_slice(&u64::MAX.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(parse_header(&frame, usize::MAX), Err(FrameError::TooBig));
        let mut frame = vec![0x82, 0xFF];
        frame.extend_from_slice(&((usize::MAX - MAX_CLIENT_HEADER) as u64).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        let h = parse_header(&frame, usize::MAX).unwrap().unwrap();
        assert_eq!(h.frame_len(), usize::MAX);
    }

    #[test]
    fn messages_are_reassembled_from_fragments() {
        let mut partial = None;
        // One frame: the payload itself, not a copy.
        let whole = assemble(&mut partial, true, OP_TEXT, b"abc", 10).unwrap();
        assert!(matches!(whole, Some((OP_TEXT, Cow::Borrowed(b"abc")))));
        // Fragments: kept until the final one, under the first frame's opcode.
        assert_eq!(
            assemble(&mut partial, false, OP_BINARY, b"ab", 10),
            Ok(None)
        );
        assert_eq!(
            assemble(&mut partial, false, OP_CONTINUATION, b"", 10),
            Ok(None)
        );
        assert_eq!(
            assemble(&mut partial, false, OP_CONTINUATION, b"cd", 10),
            Ok(None)
        );
        let joined = assemble(&mut partial, true, OP_CONTINUATION, b"ef", 10).unwrap();
        assert_eq!(joined, Some((OP_BINARY, Cow::Owned(b"abcdef".to_vec()))));
        assert!(partial.is_none());
    }

    #[test]
    fn rsv1_marks_the_first_frame_of_a_compressed_message_only_with_deflate() {
        let rsv1 = |b0: u8| [b0 | 0x40, 0x81, 1, 2, 3, 4, b'x'];
        assert_eq!(parse_header(&rsv1(0x81), 100), Err(FrameError::Reserved));
        let h = parse_header_with(&rsv1(0x81), 100, true).unwrap().unwrap();
        assert!(h.rsv1 && h.fin && h.opcode == OP_TEXT);
        assert!(
            parse_header_with(&rsv1(0x02), 100, true)
                .unwrap()
                .unwrap()
                .rsv1
        );
        assert!(
            !parse_header_with(&[0x81, 0x80, 0, 0, 0, 0], 100, true)
                .unwrap()
                .unwrap()
                .rsv1
        );
        for op in [OP_CONTINUATION, OP_PING, OP_PONG, OP_CLOSE] {
            assert_eq!(
                parse_header_with(&rsv1(0x80 | op), 100, true),
                Err(FrameError::Reserved),
                "opcode {op}"
            );
        }
        // RSV2 and RSV3 belong to no extension Herald speaks.
        for bit in [0x20, 0x10] {
            assert_eq!(
                parse_header_with(&[0x81 | bit, 0x80, 0, 0, 0, 0], 100, true),
                Err(FrameError::Reserved)
            );
        }
    }

    #[test]
    fn a_compressed_message_keeps_its_mark_through_fragments_and_some_slack() {
        let z = OP_TEXT | crate::wsdeflate::RSV1;
        let mut partial = None;
        assert_eq!(assemble(&mut partial, false, z, b"ab", 10), Ok(None));
        let joined = assemble(&mut partial, true, OP_CONTINUATION, b"cd", 10).unwrap();
        assert_eq!(joined, Some((z, Cow::Owned(b"abcd".to_vec()))));
        // Incompressible data takes a few bytes more than its inflated size.
        let slack = vec![0u8; compressed_max(10)];
        assert!(assemble(&mut None, true, z, &slack, 10).is_ok());
        assert_eq!(
            assemble(&mut None, true, z, &[slack.clone(), vec![0]].concat(), 10),
            Err(FrameError::TooBig)
        );
        assert_eq!(
            assemble(&mut None, true, OP_TEXT, &slack, 10),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn fragments_out_of_place_or_too_many_bytes_are_refused() {
        let mut partial = None;
        assert_eq!(
            assemble(&mut partial, true, OP_CONTINUATION, b"x", 10),
            Err(FrameError::Fragmentation),
            "nothing to continue"
        );
        assert_eq!(
            assemble(&mut partial, false, OP_TEXT, b"12345", 10),
            Ok(None)
        );
        assert_eq!(
            assemble(&mut partial, true, OP_TEXT, b"x", 10),
            Err(FrameError::Fragmentation),
            "a new message inside a fragmented one"
        );
        assert_eq!(
            assemble(&mut partial, false, OP_CONTINUATION, b"12345", 10),
            Ok(None)
        );
        assert_eq!(
            assemble(&mut partial, true, OP_CONTINUATION, b"1", 10),
            Err(FrameError::TooBig),
            "the fragments add up to more than the maximum"
        );
        assert_eq!(
            assemble(&mut None, true, OP_TEXT, b"12345678901", 10),
            Err(FrameError::TooBig)
        );
        assert_eq!(
            assemble(&mut None, true, OP_PING, b"", 10),
            Err(FrameError::UnknownOpcode(OP_PING)),
            "control frames are not part of a message"
        );
    }
}
