//! `permessage-deflate` (RFC 7692) without IO: the negotiation of the extension from the
//! client's `Sec-WebSocket-Extensions` offers, compressing a server message, and inflating a
//! client message under a size limit.
//!
//! By default the server answers with `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed on its own, so a published event
//! is compressed once and the same bytes go to every subscriber that negotiated the extension,
//! and inflating a client message needs no window kept per connection. With context takeover
//! allowed, each connection keeps its own compressor and inflater (about 300 KB of memory per
//! connection with this DEFLATE implementation): that is a setting, off by default.
//!
//! The compressor here always uses a 32 KB window, so an offer that asks the server for a
//! smaller one (`server_max_window_bits` below 15) is declined; the client's window is never
//! limited, since the inflater takes any window up to 32 KB.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";
/// Bit of a frame's first byte that marks a compressed message (RSV1), on its first frame only.
pub const RSV1: u8 = 0x40;
/// What every compressed message ends with before the sender removes it (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// The parameters both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The server compresses every message on its own.
    pub server_no_context_takeover: bool,
    /// The client compresses every message on its own (the server inflates each afresh).
    pub client_no_context_takeover: bool,
    /// The client asked for `server_max_window_bits=15`: said back in the answer.
    server_max_window_bits: bool,
}

impl Agreement {
    /// The value of the answer's `Sec-WebSocket-Extensions` header.
    pub fn header_value(&self) -> String {
        let mut v = String::from(NAME);
        if self.server_no_context_takeover {
            v.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            v.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits {
            v.push_str("; server_max_window_bits=15");
        }
        v
    }
}

/// Splits `s` at `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts.into_iter()
}

/// A window-bits value: 8 to 15, digits only, no leading zero (RFC 7692 7.1.2), quoted or not.
fn window_bits(value: &str) -> Option<u8> {
    let v = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) || v.starts_with('0') {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Reads one `permessage-deflate` offer's parameters; `None` when the offer is invalid (unknown
/// or repeated parameter, a value where none belongs or a bad one) or asks for what the server
/// cannot do (a compression window under 32 KB).
fn accept_offer<'a>(
    params: impl Iterator<Item = &'a str>,
    context_takeover: bool,
) -> Option<Agreement> {
    let mut seen = [false; 4];
    let mut a = Agreement {
        server_no_context_takeover: !context_takeover,
        client_no_context_takeover: !context_takeover,
        server_max_window_bits: false,
    };
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (param.trim(), None),
        };
        let i = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => {
                a.server_no_context_takeover = true;
                0
            }
            "client_no_context_takeover" if value.is_none() => {
                a.client_no_context_takeover = true;
                1
            }
            "server_max_window_bits" => {
                if window_bits(value?)? != 15 {
                    return None;
                }
                a.server_max_window_bits = true;
                2
            }
            // The client may limit its own window; any window is fine for the inflater.
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
    }
    Some(a)
}

/// The agreement for the client's offers (the values of every `Sec-WebSocket-Extensions`
/// header, in order): the first valid `permessage-deflate` offer the server can honour, or
/// `None` (the connection goes on uncompressed). `context_takeover` says whether the server
/// allows it; without, it asks both sides to compress every message on its own.
pub fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    context_takeover: bool,
) -> Option<Agreement> {
    values
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| split_unquoted(v, ','))
        .find_map(|offer| {
            let mut parts = split_unquoted(offer, ';');
            let name = parts.next()?.trim();
            if !name.eq_ignore_ascii_case(NAME) {
                return None;
            }
            accept_offer(parts, context_takeover)
        })
}

/// A DEFLATE compressor for server messages.
pub struct Deflater(Compress);

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deflater")
    }
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    pub fn new() -> Self {
        // Level 6: JSON events of a few hundred bytes shrink about as much as at level 9, at
        // a fraction of the time.
        Self(Compress::new(Compression::new(6), false))
    }

    /// Appends the compressed form of one message to `out` (the trailing `00 00 FF FF`
    /// removed). With `alone`, the message ends with a full flush, which forgets the context:
    /// on a compressor that only ever compresses alone, every message stands on its own (no
    /// context takeover). A full flush costs less than resetting the compressor (measured:
    /// 11.7 against 16.4 us for a 568-byte event), and a new compressor per message far more
    /// (96 us: its tables are allocated and zeroed).
    pub fn compress(&mut self, message: &[u8], alone: bool, out: &mut Vec<u8>) {
        let flush = if alone {
            FlushCompress::Full
        } else {
            FlushCompress::Sync
        };
        let start = out.len();
        // Room for incompressible data and the block headers; grown below if ever short.
        out.reserve(message.len() + message.len() / 64 + 32);
        let before = self.0.total_in();
        loop {
            let fed = (self.0.total_in() - before) as usize;
            let status = self.0.compress_vec(&message[fed..], out, flush);
            let fed = (self.0.total_in() - before) as usize;
            // Done once all is in and the flush fit (it left room unused).
            if fed == message.len() && out.len() < out.capacity() {
                break;
            }
            if status.is_err() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    }

    /// `compress` of one message on its own, with this thread's compressor (used for nothing
    /// else).
    pub fn compress_alone(message: &[u8], out: &mut Vec<u8>) {
        thread_local! {
            static SHARED: std::cell::RefCell<Deflater> = std::cell::RefCell::new(Deflater::new());
        }
        SHARED.with_borrow_mut(|d| d.compress(message, true, out));
    }
}

/// Why a compressed client message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (closed with 1009).
    TooBig,
    /// Not valid DEFLATE data (closed with 1007).
    Invalid,
}

/// An inflater for client messages.
pub struct Inflater(Decompress);

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    pub fn new() -> Self {
        Self(Decompress::new(false))
    }

    /// Inflates one compressed message (its frames' payloads joined) of at most `max` bytes
    /// once inflated. Output is never allocated past `max + 1` bytes, so a message that would
    /// inflate to gigabytes costs no more memory than one just over the limit. With `reset`,
    /// the message stands on its own (the client takes no context over).
    pub fn inflate(
        &mut self,
        payload: &[u8],
        max: usize,
        reset: bool,
    ) -> Result<Vec<u8>, InflateError> {
        if reset {
            self.0.reset(false);
        }
        let limit = max.saturating_add(1);
        let mut out = Vec::with_capacity(payload.len().saturating_mul(4).max(64).min(limit));
        for (k, input) in [payload, &TAIL[..]].into_iter().enumerate() {
            let before = self.0.total_in();
            loop {
                let fed = (self.0.total_in() - before) as usize;
                let status = self
                    .0
                    .decompress_vec(&input[fed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                let fed = (self.0.total_in() - before) as usize;
                if status == Status::StreamEnd {
                    // A final block ends the stream; anything after it is not DEFLATE data.
                    if fed < input.len() && k == 0 {
                        return Err(InflateError::Invalid);
                    }
                    // The next message starts a new stream.
                    self.0.reset(false);
                    break;
                }
                if fed == input.len() && out.len() < out.capacity() {
                    break;
                }
                if out.len() == out.capacity() {
                    let grow = out.capacity().max(64).min(limit - out.len());
                    out.reserve_exact(grow);
                } else if status == Status::BufError {
                    // No progress with room left and input left: truncated or broken data.
                    return Err(InflateError::Invalid);
                }
            }
        }
        Ok(out)
    }

    /// `inflate` of one message that stands on its own, with this thread's inflater.
    pub fn inflate_alone(payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        thread_local! {
            static SHARED: std::cell::RefCell<Inflater> = std::cell::RefCell::new(Inflater::new());
        }
        SHARED.with_borrow_mut(|i| i.inflate(payload, max, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str, takeover: bool) -> Option<String> {
        negotiate([v.as_bytes()], takeover).map(|a| a.header_value())
    }

    #[test]
    fn a_plain_offer_is_accepted_without_context_takeover() {
        let both = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert_eq!(offer("permessage-deflate", false).as_deref(), Some(both));
        // What browsers send.
        assert_eq!(
            offer("permessage-deflate; client_max_window_bits", false).as_deref(),
            Some(both)
        );
        assert_eq!(
            offer("Permessage-Deflate ; Client_Max_Window_Bits=\"10\"", false).as_deref(),
            Some(both)
        );
    }

    #[test]
    fn context_takeover_is_kept_only_when_allowed_and_not_refused_by_the_client() {
        assert_eq!(
            offer("permessage-deflate", true).as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            offer("permessage-deflate; client_no_context_takeover", true).as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
        assert_eq!(
            offer("permessage-deflate; server_no_context_takeover", true).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
    }

    #[test]
    fn invalid_or_unsupported_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; bogus",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=10",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(offer(bad, false), None, "{bad:?}");
        }
        assert_eq!(
            negotiate(
                [
                    &b"foo, permessage-deflate; server_max_window_bits=9"[..],
                    b"permessage-deflate; server_max_window_bits=15"
                ],
                false
            )
            .map(|a| a.header_value())
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15")
        );
        assert!(negotiate([&[0xFFu8, 0xFE][..]], false).is_none());
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("{\"event\":\"order.shipped\",\"data\":\"[");
        for i in 0..n {
            s.push_str(&format!(
                "{{\\\"id\\\":{i},\\\"status\\\":\\\"shipped\\\"}},"
            ));
        }
        s.push_str("]\"}");
        s.into_bytes()
    }

    #[test]
    fn a_message_compressed_alone_inflates_back_without_its_tail() {
        for n in [0, 1, 10, 5000] {
            let msg = json(n);
            let mut z = Vec::new();
            Deflater::compress_alone(&msg, &mut z);
            assert!(!z.ends_with(&TAIL));
            if n >= 10 {
                assert!(z.len() < msg.len() / 2, "{} -> {}", msg.len(), z.len());
            }
            assert_eq!(Inflater::inflate_alone(&z, msg.len()).unwrap(), msg);
        }
        // Incompressible bytes too.
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut z = Vec::new();
        Deflater::compress_alone(&noise, &mut z);
        assert_eq!(Inflater::inflate_alone(&z, noise.len()).unwrap(), noise);
    }

    #[test]
    fn a_message_compressed_alone_refers_to_nothing_before_it() {
        let msg = json(30);
        let (mut first, mut again) = (Vec::new(), Vec::new());
        Deflater::compress_alone(&msg, &mut first);
        Deflater::compress_alone(&msg, &mut again);
        assert_eq!(
            first, again,
            "the second would otherwise point back at the first"
        );
        let mut d = Deflater::new();
        let mut with_context = Vec::new();
        d.compress(&msg, false, &mut Vec::new());
        d.compress(&msg, false, &mut with_context);
        assert!(with_context.len() < first.len() / 4);
    }

    #[test]
    fn context_takeover_needs_the_same_inflater_in_order() {
        let (mut d, mut i) = (Deflater::new(), Inflater::new());
        let msgs = [json(20), json(20), json(3)];
        let mut sizes = Vec::new();
        for m in &msgs {
            let mut z = Vec::new();
            d.compress(m, false, &mut z);
            sizes.push(z.len());
            assert_eq!(&i.inflate(&z, 1 << 20, false).unwrap(), m);
        }
        assert!(
            sizes[1] < sizes[0],
            "the second refers to the first: {sizes:?}"
        );
    }

    #[test]
    fn a_bomb_is_refused_without_inflating_it_whole() {
        let zeros = vec![0u8; 10 << 20];
        let mut z = Vec::new();
        Deflater::compress_alone(&zeros, &mut z);
        assert!(z.len() < 20_000, "{}", z.len());
        assert_eq!(
            Inflater::inflate_alone(&z, 65_536),
            Err(InflateError::TooBig)
        );
        // Exactly at the limit is fine.
        let mut z = Vec::new();
        Deflater::compress_alone(&zeros[..65_536], &mut z);
        assert_eq!(Inflater::inflate_alone(&z, 65_536).unwrap().len(), 65_536);
        assert_eq!(
            Inflater::inflate_alone(&z, 65_535),
            Err(InflateError::TooBig)
        );
    }

    #[test]
    fn broken_data_is_invalid_and_the_inflater_recovers() {
        assert_eq!(
            Inflater::inflate_alone(&[0xFF, 0xFF, 0xFF], 100),
            Err(InflateError::Invalid)
        );
        let mut z = Vec::new();
        Deflater::compress_alone(b"hello", &mut z);
        assert_eq!(Inflater::inflate_alone(&z, 100).unwrap(), b"hello");
        // A final block followed by more bytes.
        let mut fin = Vec::with_capacity(64);
        let mut c = Compress::new(Compression::new(6), false);
        c.compress_vec(b"hi", &mut fin, FlushCompress::Finish)
            .unwrap();
        assert_eq!(Inflater::inflate_alone(&fin, 100).unwrap(), b"hi");
        fin.extend_from_slice(&z);
        assert_eq!(
            Inflater::inflate_alone(&fin, 100),
            Err(InflateError::Invalid)
        );
    }
}
