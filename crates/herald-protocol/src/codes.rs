//! Pusher error and close codes, with the reason text each one is sent with.

/// A code that closes the connection (always preceded by a `pusher:error` with the same text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode {
    pub code: u16,
    pub reason: &'static str,
}

macro_rules! codes {
    ($($(#[$m:meta])* $name:ident = $code:literal, $reason:literal;)*) => {
        $($(#[$m])* pub const $name: CloseCode = CloseCode { code: $code, reason: $reason };)*
    };
}

codes! {
    SSL_ONLY = 4000, "Application only accepts SSL connections, reconnect using wss://";
    APP_NOT_FOUND = 4001, "Application does not exist";
    APP_DISABLED = 4003, "Application disabled";
    OVER_QUOTA = 4004, "Application is over connection quota";
    PATH_NOT_FOUND = 4005, "Path not found";
    INVALID_VERSION = 4006, "Invalid version string format";
    UNSUPPORTED_PROTOCOL = 4007, "Unsupported protocol version";
    NO_PROTOCOL = 4008, "No protocol version supplied";
    UNAUTHORIZED = 4009, "Connection is unauthorized";
    OVER_CAPACITY = 4100, "Over capacity";
    /// A consumer whose outbox overflowed: pusher-js backs off for a second, then reconnects.
    SLOW_CONSUMER = 4100, "Over capacity: client is not reading its messages fast enough";
    RECONNECT = 4200, "Please reconnect immediately";
    PONG_TIMEOUT = 4201, "Pong reply not received";
}

/// WebSocket status for a message over the size limit (not a Pusher code; pusher-js reconnects).
pub const MESSAGE_TOO_BIG: CloseCode = CloseCode {
    code: 1009,
    reason: "Message too big",
};

/// Non-closing error codes (error events only; never used to close).
pub const CLIENT_EVENT_RATE_LIMIT: u16 = 4301;
pub const CLIENT_EVENT_RATE_LIMIT_MSG: &str = "Client event rejected due to rate limit";
pub const WATCHLIST_LIMIT: u16 = 4302;
/// A subscribe refused because the server holds `server.max_subscriptions`. The base of
/// Pusher's "any other error" range: the connection stays open (a 40xx-42xx code means closed),
/// and it is told apart from 4301, a rate that refills by itself.
pub const SUBSCRIPTION_CAPACITY: u16 = 4300;

/// Protocol versions this server speaks (all with version-7 semantics).
pub const SUPPORTED_PROTOCOLS: &[u32] = &[5, 6, 7];

/// Checks the `protocol` query parameter; `None` means it is acceptable.
pub fn check_protocol(param: Option<&str>) -> Option<CloseCode> {
    let Some(p) = param else {
        return Some(NO_PROTOCOL);
    };
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Some(INVALID_VERSION);
    }
    match p.parse::<u32>() {
        Ok(v) if SUPPORTED_PROTOCOLS.contains(&v) => None,
        _ => Some(UNSUPPORTED_PROTOCOL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_param() {
        assert_eq!(check_protocol(None), Some(NO_PROTOCOL));
        assert_eq!(check_protocol(Some("abc")), Some(INVALID_VERSION));
        assert_eq!(check_protocol(Some("7.0")), Some(INVALID_VERSION));
        assert_eq!(check_protocol(Some("")), Some(INVALID_VERSION));
        assert_eq!(check_protocol(Some("4")), Some(UNSUPPORTED_PROTOCOL));
        assert_eq!(check_protocol(Some("8")), Some(UNSUPPORTED_PROTOCOL));
        assert_eq!(
            check_protocol(Some("99999999999")),
            Some(UNSUPPORTED_PROTOCOL)
        );
        for ok in ["5", "6", "7"] {
            assert_eq!(check_protocol(Some(ok)), None);
        }
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        for c in [SSL_ONLY, SLOW_CONSUMER, APP_NOT_FOUND, RECONNECT] {
            assert!(c.reason.len() <= 123);
        }
    }
}
