//! Channel names and their kinds. This is the only module that knows the prefixes.

use std::fmt;
use std::sync::Arc;

/// Prefix of the per-user delivery channel (`#server-to-user-<id>`).
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// What a channel is, decided by its name's prefix (first match wins, most specific first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Public,
    Private,
    Encrypted,
    Presence,
    /// `#server-to-user-<id>`: subscribable only by connections signed in as `<id>`.
    ServerToUser,
}

/// A validated channel name with its kind and cache flag, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChannelName {
    name: Arc<str>,
    kind: ChannelKind,
    cache: bool,
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelNameError {
    Empty,
    TooLong { max: usize },
    InvalidCharacters,
}

impl fmt::Display for ChannelNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("channel name is empty"),
            Self::TooLong { max } => write!(f, "channel name is longer than {max} characters"),
            Self::InvalidCharacters => {
                f.write_str("channel name may only contain A-Z a-z 0-9 _ - = @ , . ;")
            }
        }
    }
}

/// The character class every Pusher SDK validates names and user ids with.
pub fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

fn all_name_chars(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_name_char)
}

impl ChannelName {
    /// Validates `name` (at most `max_len` characters) and classifies it.
    pub fn parse(name: &str, max_len: usize) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        // Valid names are ASCII, so bytes == characters once the class check passed; check the
        // class first so a long non-ASCII name reports its characters, not its length.
        if let Some(user) = name.strip_prefix(SERVER_TO_USER_PREFIX) {
            if !all_name_chars(user) {
                return Err(ChannelNameError::InvalidCharacters);
            }
        } else if !all_name_chars(name) {
            return Err(ChannelNameError::InvalidCharacters);
        }
        if name.len() > max_len {
            return Err(ChannelNameError::TooLong { max: max_len });
        }
        let (kind, cache) = classify(name);
        Ok(Self {
            name: Arc::from(name),
            kind,
            cache,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn arc(&self) -> &Arc<str> {
        &self.name
    }

    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Cache channels keep the last event published through the HTTP API.
    pub fn is_cache(&self) -> bool {
        self.cache
    }

    pub fn is_presence(&self) -> bool {
        self.kind == ChannelKind::Presence
    }

    pub fn is_encrypted(&self) -> bool {
        self.kind == ChannelKind::Encrypted
    }

    /// Private, presence and encrypted channels need a signature to subscribe.
    pub fn needs_auth(&self) -> bool {
        matches!(
            self.kind,
            ChannelKind::Private | ChannelKind::Encrypted | ChannelKind::Presence
        )
    }

    /// Client events are accepted on private and presence channels only. Not on encrypted ones:
    /// the official clients refuse to send them there (pusher-js throws `UnsupportedFeature`),
    /// and the server cannot tell a sealed payload from plain text, so relaying would let one
    /// member put clear text on a channel whose readers expect only ciphertext.
    pub fn allows_client_events(&self) -> bool {
        matches!(self.kind, ChannelKind::Private | ChannelKind::Presence)
    }

    /// Internal channels are not listed, counted or reported through webhooks.
    pub fn is_internal(&self) -> bool {
        self.kind == ChannelKind::ServerToUser
    }

    /// The user id of a `#server-to-user-<id>` channel.
    pub fn server_to_user_id(&self) -> Option<&str> {
        self.name.strip_prefix(SERVER_TO_USER_PREFIX)
    }
}

/// The kind of a name that may not have been validated (a listing's filter, a stored key).
pub fn kind_of(name: &str) -> ChannelKind {
    classify(name).0
}

/// True when every channel whose name starts with `prefix` is a presence channel (the
/// `filter_by_prefix` that `info=user_count` requires).
pub fn prefix_is_presence(prefix: &str) -> bool {
    kind_of(prefix) == ChannelKind::Presence
}

fn classify(name: &str) -> (ChannelKind, bool) {
    const TABLE: &[(&str, ChannelKind, bool)] = &[
        ("private-encrypted-cache-", ChannelKind::Encrypted, true),
        ("private-encrypted-", ChannelKind::Encrypted, false),
        ("private-cache-", ChannelKind::Private, true),
        ("private-", ChannelKind::Private, false),
        ("presence-cache-", ChannelKind::Presence, true),
        ("presence-", ChannelKind::Presence, false),
        ("cache-", ChannelKind::Public, true),
        (SERVER_TO_USER_PREFIX, ChannelKind::ServerToUser, false),
    ];
    TABLE
        .iter()
        .find(|(prefix, _, _)| name.starts_with(prefix))
        .map_or((ChannelKind::Public, false), |&(_, kind, cache)| {
            (kind, cache)
        })
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.name)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(n: &str) -> (ChannelKind, bool) {
        let c = ChannelName::parse(n, 200).unwrap();
        (c.kind(), c.is_cache())
    }

    #[test]
    fn prefixes_are_classified_most_specific_first() {
        assert_eq!(
            kind("private-encrypted-cache-x"),
            (ChannelKind::Encrypted, true)
        );
        assert_eq!(kind("private-encrypted-x"), (ChannelKind::Encrypted, false));
        assert_eq!(kind("private-cache-x"), (ChannelKind::Private, true));
        assert_eq!(kind("private-x"), (ChannelKind::Private, false));
        assert_eq!(kind("presence-cache-x"), (ChannelKind::Presence, true));
        assert_eq!(kind("presence-x"), (ChannelKind::Presence, false));
        assert!(prefix_is_presence("presence-"));
        assert!(prefix_is_presence("presence-cache-r"));
        assert!(!prefix_is_presence("presence"));
        assert!(!prefix_is_presence(""));
        assert_eq!(kind("cache-x"), (ChannelKind::Public, true));
        assert_eq!(kind("news"), (ChannelKind::Public, false));
        assert_eq!(kind("my-private-x"), (ChannelKind::Public, false));
        assert_eq!(
            kind("#server-to-user-42"),
            (ChannelKind::ServerToUser, false)
        );
    }

    #[test]
    fn names_are_validated() {
        assert!(ChannelName::parse("a-Z_0=@,.;", 200).is_ok());
        assert_eq!(ChannelName::parse("", 200), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("bad name", 200),
            Err(ChannelNameError::InvalidCharacters)
        );
        assert_eq!(
            ChannelName::parse("#other", 200),
            Err(ChannelNameError::InvalidCharacters)
        );
        assert_eq!(
            ChannelName::parse("#server-to-user-", 200),
            Err(ChannelNameError::InvalidCharacters)
        );
        assert_eq!(
            ChannelName::parse("é", 200),
            Err(ChannelNameError::InvalidCharacters)
        );
        let long = "a".repeat(201);
        assert_eq!(
            ChannelName::parse(&long, 200),
            Err(ChannelNameError::TooLong { max: 200 })
        );
        assert!(ChannelName::parse(&long[..200], 200).is_ok());
    }

    #[test]
    fn server_to_user_id() {
        let c = ChannelName::parse("#server-to-user-abc", 200).unwrap();
        assert_eq!(c.server_to_user_id(), Some("abc"));
        assert!(c.is_internal());
    }
}
