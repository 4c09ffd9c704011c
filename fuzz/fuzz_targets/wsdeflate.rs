//! `permessage-deflate` (`herald_protocol::wsdeflate`): arbitrary offers negotiated, and arbitrary
//! bytes inflated as a client's compressed message under a limit.
//!
//! Input layout: one byte chooses the inflated-size limit (0-254 as is; 255: 64 KiB), the rest is
//! both the offer header (as text, when it is UTF-8) and the compressed payload. Every inflation
//! either fails cleanly or returns at most the limit, and what the server compresses inflates
//! back to itself.
#![no_main]
use herald_protocol::wsdeflate::{negotiate, Deflater, Inflater, NAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let max = if m == 255 { 65_536 } else { usize::from(m) };
    for takeover in [false, true] {
        if let Some(a) = negotiate([rest], takeover) {
            let v = a.header_value();
            assert!(v.starts_with(NAME));
            // What the server answers is itself an offer it would take.
            assert!(negotiate([v.as_bytes()], takeover).is_some(), "{v}");
        }
    }
    if let Ok(out) = Inflater::inflate_alone(rest, max) {
        assert!(out.len() <= max);
    }
    // A context kept across two messages: the second may refer to the first.
    let mut inflater = Inflater::new();
    let half = rest.len() / 2;
    for part in [&rest[..half], &rest[half..]] {
        if let Ok(out) = inflater.inflate(part, max, false) {
            assert!(out.len() <= max);
        }
    }
    let mut z = Vec::new();
    Deflater::compress_alone(rest, &mut z);
    assert_eq!(Inflater::inflate_alone(&z, rest.len()).as_deref(), Ok(rest));
});
