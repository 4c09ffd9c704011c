//! The header of a server WebSocket frame (RFC 6455 §5.2): final, unmasked, with the payload
//! length in its shortest form. The engine frames every published event with it once, and the
//! shell frames its control frames with it; it is the one place that knows the layout.

/// Appends the header of a final, unmasked frame of `opcode` carrying `len` payload bytes.
pub fn put(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | (opcode & 0x0F));
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The longest header `put` writes.
pub const MAX_LEN: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_length_forms() {
        let h = |len| {
            let mut v = Vec::new();
            put(&mut v, 0x1, len);
            v
        };
        assert_eq!(h(0), [0x81, 0]);
        assert_eq!(h(125), [0x81, 125]);
        assert_eq!(h(126), [0x81, 126, 0, 126]);
        assert_eq!(h(65_535), [0x81, 126, 0xFF, 0xFF]);
        assert_eq!(h(65_536), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let mut ping = Vec::new();
        put(&mut ping, 0x9, 0);
        assert_eq!(ping, [0x89, 0]);
    }
}
