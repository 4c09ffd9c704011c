//! Socket ids: `<digits>.<digits>`, the only format every server SDK accepts.

use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub node: u32,
    pub seq: u64,
}

impl SocketId {
    pub fn new(node: u32, seq: u64) -> Self {
        Self { node, seq }
    }

    /// Parses `^\d+\.\d+$` (values must fit the integer types).
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('.')?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return None;
        }
        Some(Self {
            node: a.parse().ok()?,
            seq: b.parse().ok()?,
        })
    }

    /// Does `s` look like a socket id, whether or not it fits our integer types?
    pub fn is_well_formed(s: &str) -> bool {
        match s.split_once('.') {
            Some((a, b)) => {
                let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
                digits(a) && digits(b)
            }
            None => false,
        }
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.seq)
    }
}

impl fmt::Debug for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let id = SocketId::parse("123.456").unwrap();
        assert_eq!(id.to_string(), "123.456");
        for bad in ["", "1", "1.", ".1", "1.2.3", "a.1", "1.-1", " 1.2", "1.2 "] {
            assert!(SocketId::parse(bad).is_none(), "{bad}");
            assert!(!SocketId::is_well_formed(bad), "{bad}");
        }
        assert!(SocketId::is_well_formed("99999999999999999999999.1"));
        assert!(SocketId::parse("99999999999999999999999.1").is_none());
    }
}
