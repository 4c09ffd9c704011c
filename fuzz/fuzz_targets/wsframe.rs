//! WebSocket framing (`herald_protocol::wsframe`): client bytes walked as the server's read loop
//! walks them, server frames parsed back, close replies and upgrade headers.
//!
//! Input layout: one byte chooses the payload maximum (0-239 as is, so that fragments of a few
//! bytes reach it; then powers of two from 128 to 2^21; 255: no maximum, as while the server
//! waits for a close reply), one byte the size of the pieces the bytes arrive in, and the rest
//! is what the client sent. Every part below runs on every input.
#![no_main]
use herald_protocol::wsframe::{self, FrameError, Header, Upgrade};
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;

/// What the read loop did with one frame, or how it stopped.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Message(u8, Vec<u8>),
    Pong(Vec<u8>),
    PongIgnored,
    /// A close frame: the status the server answers with (the loop ends).
    Close(u16),
    /// A refused frame (the loop ends: the server closes with its code).
    Refused(FrameError),
}

/// The read loop of `transport::socket` over `rbuf` as it stands: handles every complete frame,
/// removes it, and leaves a partial one. Returns false once the connection is over.
fn read_frames(
    rbuf: &mut Vec<u8>,
    partial: &mut Option<Box<(u8, Vec<u8>)>>,
    max: usize,
    steps: &mut Vec<Step>,
) -> bool {
    let mut pos = 0;
    let open = loop {
        let h = match wsframe::parse_header(&rbuf[pos..], max) {
            Ok(Some(h)) => h,
            Ok(None) => break true,
            Err(e) => {
                assert!(!e.reason().is_empty());
                steps.push(Step::Refused(e));
                break false;
            }
        };
        check_header(&rbuf[pos..], &h, max);
        if rbuf.len() - pos < h.frame_len() {
            break true; // the payload has not all arrived
        }
        let (start, end) = (pos + h.header_len, pos + h.frame_len());
        pos = end;
        let masked = rbuf[start..end].to_vec();
        wsframe::unmask(&mut rbuf[start..end], h.mask);
        let payload = &rbuf[start..end];
        for (i, (m, p)) in masked.iter().zip(payload).enumerate() {
            assert_eq!(m ^ h.mask[i % 4], *p, "unmask at {i}");
        }
        match h.opcode {
            wsframe::OP_PING => {
                let mut out = Vec::new();
                wsframe::put_frame(&mut out, wsframe::OP_PONG, payload);
                let (opcode, back) = parse_server_frame(&out, [7, 0, 0, 9]);
                assert_eq!((opcode, back.as_slice()), (wsframe::OP_PONG, payload));
                steps.push(Step::Pong(payload.to_vec()));
            }
            wsframe::OP_PONG => steps.push(Step::PongIgnored),
            wsframe::OP_CLOSE => {
                steps.push(Step::Close(check_close(payload)));
                break false;
            }
            op => match wsframe::assemble(partial, h.fin, op, payload, max) {
                Ok(Some((opcode, message))) => {
                    assert!(opcode == wsframe::OP_TEXT || opcode == wsframe::OP_BINARY);
                    assert!(message.len() <= max);
                    assert!(partial.is_none());
                    // Unfragmented messages are not copied.
                    if op != wsframe::OP_CONTINUATION {
                        assert!(matches!(message, Cow::Borrowed(_)));
                    }
                    steps.push(Step::Message(opcode, message.into_owned()));
                }
                Ok(None) => assert!(partial.as_ref().is_some_and(|m| m.1.len() <= max)),
                Err(e) => {
                    steps.push(Step::Refused(e));
                    break false;
                }
            },
        }
    };
    rbuf.drain(..pos);
    open
}

/// What a parsed header must say about the bytes it was parsed from.
fn check_header(buf: &[u8], h: &Header, max: usize) {
    let expected_header = match buf[1] & 0x7F {
        126 => 8,
        127 => 14,
        _ => 6,
    };
    assert_eq!(h.header_len, expected_header);
    assert!(h.header_len <= buf.len(), "a header is only returned whole");
    assert_eq!(h.frame_len(), h.header_len + h.payload_len);
    assert!(h.payload_len <= max);
    assert_eq!(h.mask, buf[h.header_len - 4..h.header_len]);
    assert_eq!(h.fin, buf[0] & 0x80 != 0);
    assert_eq!(h.opcode, buf[0] & 0x0F);
    let control = h.opcode >= 0x8;
    assert!(matches!(h.opcode, 0x0..=0x2 | 0x8..=0xA));
    assert!(!control || (h.fin && h.payload_len <= 125));
    // Fewer bytes of the same header never give another answer than "not yet".
    for cut in 0..h.header_len {
        assert_eq!(
            wsframe::parse_header(&buf[..cut], max),
            Ok(None),
            "prefix {cut}"
        );
    }
}

/// The status a close frame with `payload` is answered with, checked against RFC 6455 §7.4.
fn check_close(payload: &[u8]) -> u16 {
    let reply = wsframe::close_reply(payload);
    // Codes a server may put on the wire (1012-1014 are registered since RFC 6455).
    assert!(
        matches!(reply, 1000..=1003 | 1007..=1014 | 3000..=4999),
        "{reply} for {payload:?}"
    );
    let expected = match wsframe::close_code(payload) {
        None if payload.is_empty() => 1000,
        None => wsframe::CLOSE_PROTOCOL_ERROR,
        Some(code) if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) => {
            wsframe::CLOSE_PROTOCOL_ERROR
        }
        Some(_) if std::str::from_utf8(&payload[2..]).is_err() => wsframe::CLOSE_INVALID_DATA,
        Some(code) => code,
    };
    assert_eq!(reply, expected, "close reply for {payload:?}");
    assert_eq!(
        wsframe::close_code(payload),
        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
    );
    reply
}

/// A server frame (final, unmasked, shortest length form) turned into the client frame a
/// client would send with `mask`, parsed and unmasked again: its opcode and payload.
fn parse_server_frame(frame: &[u8], mask: [u8; 4]) -> (u8, Vec<u8>) {
    assert_eq!(frame[0] & 0xF0, 0x80, "final, no reserved bits");
    assert_eq!(frame[1] & 0x80, 0, "server frames are not masked");
    let header = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = &frame[header..];
    let shortest = match payload.len() {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    assert_eq!(header, shortest, "the shortest length form");
    let mut client = frame[..header].to_vec();
    client[1] |= 0x80;
    client.extend_from_slice(&mask);
    client.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let h = wsframe::parse_header(&client, payload.len())
        .expect("a server frame parses")
        .expect("whole");
    assert_eq!(h.frame_len(), client.len());
    assert_eq!(h.payload_len, payload.len());
    assert!(h.fin);
    if !payload.is_empty() {
        // One byte less allowed: refused on the length alone.
        assert_eq!(
            wsframe::parse_header(&client, payload.len() - 1),
            Err(FrameError::TooBig)
        );
    }
    let mut body = client[h.header_len..].to_vec();
    wsframe::unmask(&mut body, h.mask);
    (h.opcode, body)
}

/// The read loop fed `bytes` in pieces of `piece` bytes (0: all at once).
fn walk(bytes: &[u8], max: usize, piece: usize) -> (Vec<Step>, usize) {
    let mut rbuf = Vec::new();
    let mut partial = None;
    let mut steps = Vec::new();
    let piece = if piece == 0 {
        bytes.len().max(1)
    } else {
        piece
    };
    for chunk in bytes.chunks(piece) {
        rbuf.extend_from_slice(chunk);
        if !read_frames(&mut rbuf, &mut partial, max, &mut steps) {
            return (steps, usize::MAX);
        }
    }
    (steps, rbuf.len())
}

fuzz_target!(|data: &[u8]| {
    let [sel, piece, ref rest @ ..] = *data else {
        return;
    };
    let max = match sel {
        0xFF => usize::MAX,
        0xF0..=0xFE => 1 << (sel - 0xF0 + 7),
        n => usize::from(n),
    };

    // (a) The read loop: the same frames, refusals and leftover whether the bytes come at once
    // or in pieces.
    let whole = walk(rest, max, 0);
    let pieces = walk(rest, max, usize::from(piece % 32) + 1);
    assert_eq!(whole, pieces);

    // (b) Server frames of every opcode parse back to the same opcode, length and payload.
    const OPCODES: [u8; 6] = [
        wsframe::OP_CONTINUATION,
        wsframe::OP_TEXT,
        wsframe::OP_BINARY,
        wsframe::OP_CLOSE,
        wsframe::OP_PING,
        wsframe::OP_PONG,
    ];
    let opcode = OPCODES[usize::from(piece) % OPCODES.len()];
    let payload = if opcode >= 0x8 {
        &rest[..rest.len().min(125)]
    } else {
        rest
    };
    let mut out = Vec::new();
    wsframe::put_frame(&mut out, opcode, payload);
    let (op, back) = parse_server_frame(&out, [sel, piece, 0xA5, 0x5A]);
    assert_eq!((op, back.as_slice()), (opcode, payload));

    // (c) Close frames: any payload gets an allowed reply, and the close frame the server
    // sends with it and any reason fits a control frame and reads back.
    let reply = check_close(rest);
    let reason = String::from_utf8_lossy(rest);
    let mut close = Vec::new();
    wsframe::put_close(&mut close, reply, &reason);
    assert!(close.len() <= 2 + 125);
    let (op, body) = parse_server_frame(&close, [1, 2, 3, 4]);
    assert_eq!(op, wsframe::OP_CLOSE);
    assert_eq!(wsframe::close_code(&body), Some(reply));
    assert_eq!(
        wsframe::close_reply(&body),
        reply,
        "the server's own close is well-formed"
    );
    assert!(reason.as_bytes().starts_with(&body[2..]));

    // Upgrade headers: `name: value` lines; never a panic, and a yes only with a 24-byte key.
    let headers: Vec<(&str, &[u8])> = rest
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = std::str::from_utf8(&line[..colon]).ok()?;
            Some((name, &line[colon + 1..]))
        })
        .collect();
    let method = if piece & 1 == 0 { "GET" } else { "POST" };
    if let Upgrade::Yes { accept } = wsframe::check_upgrade(method, headers.iter().copied()) {
        assert_eq!(method, "GET");
        assert_eq!(accept.len(), 28, "base64 of a SHA-1 digest");
        let key = headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-key"))
            .map(|(_, v)| v.trim_ascii())
            .expect("a key");
        assert_eq!(key.len(), 24);
        assert_eq!(accept, wsframe::accept_key(key));
    }
});
