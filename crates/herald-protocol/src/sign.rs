//! Signatures: channel authorization, user sign-in, HTTP API requests, webhooks.
//!
//! All comparisons are constant-time over the lowercase hex digests.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of `message` under `secret`.
pub fn hmac_hex(secret: &str, message: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Lowercase hex MD5 of `body` (the HTTP API's `body_md5`).
pub fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Constant-time equality of two signatures (length differences return false at once: the
/// length of a hex digest is public).
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The string a channel subscription signs.
pub fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(cd) => format!("{socket_id}:{channel}:{cd}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string a user sign-in signs.
pub fn signin_string(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Why an `auth` value was refused; `Display` gives the message sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing { channel: String },
    Malformed { channel: String },
    UnknownKey { key: String },
    BadSignature { signed: String, got: String },
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { channel } => write!(f, "Auth info required to subscribe to {channel}"),
            Self::Malformed { channel } => write!(
                f,
                "Auth value for subscription to {channel} is invalid: should be of format 'key:signature'"
            ),
            Self::UnknownKey { key } => {
                write!(f, "Invalid key in subscription auth data: '{key}'")
            }
            Self::BadSignature { signed, got } => write!(
                f,
                "Invalid signature: Expected HMAC SHA256 hex digest of {signed}, but got {got}"
            ),
        }
    }
}

/// Verifies `auth` (`key:hexsig`) over `signed`. `is_app_key` says whether a key belongs to the app;
/// `label` names the channel in messages.
pub fn verify_auth(
    auth: Option<&str>,
    signed: &str,
    label: &str,
    is_app_key: impl Fn(&str) -> bool,
    secret: &str,
) -> Result<(), AuthError> {
    let auth = match auth {
        Some(a) if !a.is_empty() => a,
        _ => {
            return Err(AuthError::Missing {
                channel: label.to_owned(),
            })
        }
    };
    let Some((key, sig)) = auth.split_once(':') else {
        return Err(AuthError::Malformed {
            channel: label.to_owned(),
        });
    };
    if !is_app_key(key) {
        return Err(AuthError::UnknownKey {
            key: key.to_owned(),
        });
    }
    let expected = hmac_hex(secret, signed.as_bytes());
    if ct_eq(&expected, &sig.to_ascii_lowercase()) {
        Ok(())
    } else {
        Err(AuthError::BadSignature {
            signed: signed.to_owned(),
            got: sig.to_owned(),
        })
    }
}

/// One decoded query parameter, in wire order.
pub type QueryPairs = Vec<(String, String)>;

/// Percent-decodes a query string (`+` is a space), keeping every pair in order.
/// Invalid escapes are kept literally; invalid UTF-8 is replaced, which then fails the signature.
pub fn decode_query(raw: &str) -> QueryPairs {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// The first value of `key` among decoded query pairs: the one lookup every caller shares.
pub fn query_param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Percent-decodes `s`; with `plus_is_space`, `+` becomes a space (form encoding).
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Builds `METHOD\nPATH\nk=v&…` from decoded pairs: `auth_signature` left out, keys lowercased,
/// stable-sorted by key, nothing escaped.
pub fn request_string_to_sign(method: &str, path: &str, pairs: &[(String, String)]) -> String {
    let mut params: Vec<(String, &str)> = pairs
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        query.join("&")
    )
}

/// Signs an HTTP API request the way the SDKs do (used by Herald's own clients and tests).
pub fn sign_request(secret: &str, method: &str, path: &str, pairs: &[(String, String)]) -> String {
    hmac_hex(
        secret,
        request_string_to_sign(method, path, pairs).as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    fn q(pairs: &[(&str, &str)]) -> QueryPairs {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base(extra: &[(&str, &str)]) -> QueryPairs {
        let mut p = q(&[
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
        ]);
        p.extend(q(extra));
        p
    }

    #[test]
    fn ws_auth_vectors() {
        assert_eq!(
            hmac_hex(SECRET, b"1234.1234:private-foobar"),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let cd = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            hmac_hex(
                SECRET,
                channel_string("1234.1234", "presence-foobar", Some(cd)).as_bytes()
            ),
            "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
        assert_eq!(
            hmac_hex(
                SECRET,
                signin_string("1234.1234", r#"{"id":"12345"}"#).as_bytes()
            ),
            "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
        );
    }

    #[test]
    fn verify_auth_errors() {
        let is_key = |k: &str| k == KEY;
        let s = "1234.1234:private-foobar";
        let good =
            format!("{KEY}:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        assert_eq!(
            verify_auth(Some(&good), s, "private-foobar", is_key, SECRET),
            Ok(())
        );
        assert_eq!(
            verify_auth(Some(""), s, "private-foobar", is_key, SECRET)
                .unwrap_err()
                .to_string(),
            "Auth info required to subscribe to private-foobar"
        );
        assert!(matches!(
            verify_auth(Some("nocolon"), s, "c", is_key, SECRET),
            Err(AuthError::Malformed { .. })
        ));
        assert_eq!(
            verify_auth(Some("other:00"), s, "c", is_key, SECRET)
                .unwrap_err()
                .to_string(),
            "Invalid key in subscription auth data: 'other'"
        );
        assert_eq!(
            verify_auth(Some(&format!("{KEY}:0000")), s, "c", is_key, SECRET)
                .unwrap_err()
                .to_string(),
            "Invalid signature: Expected HMAC SHA256 hex digest of 1234.1234:private-foobar, but got 0000"
        );
    }

    #[test]
    fn http_docs_example() {
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body.as_bytes()), "ec365a775a4cd0599faeb73354201b6f");
        let p = base(&[("body_md5", "ec365a775a4cd0599faeb73354201b6f")]);
        assert_eq!(
            request_string_to_sign("POST", "/apps/3/events", &p),
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            sign_request(SECRET, "POST", "/apps/3/events", &p),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn http_extra_vectors() {
        let cases: &[(&str, &str, QueryPairs, &str)] = &[
            (
                "GET",
                "/apps/3/channels",
                base(&[("filter_by_prefix", "presence-"), ("info", "user_count")]),
                "16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291",
            ),
            (
                "GET",
                "/apps/3/channels/presence-foobar/users",
                base(&[("body_md5", "d41d8cd98f00b204e9800998ecf8427e")]),
                "3d68b512095fd42cb6741cc80616761b1c77d00fcc4d6d9740f09504a4b761b0",
            ),
            (
                "POST",
                "/apps/3/users/12345/terminate_connections",
                base(&[("body_md5", "99914b932bd37a50b983c5e7c90ae93b")]),
                "01fa634edeb0cae84115307cad5c23f65a46cd286461b1c89637a3b5871a8f0e",
            ),
            (
                "POST",
                "/apps/3/channels/project-3/events",
                base(&[
                    ("name", "foo"),
                    ("socket_id", "1234.1234"),
                    ("body_md5", "fbc24bcc7a1794758fc1327fcfebdaf6"),
                ]),
                "c1effe2387d10b4c2e5cfed5b6c3fdb14ba0afbec482de36671f95f3eb2a1a42",
            ),
        ];
        for (m, path, pairs, sig) in cases {
            assert_eq!(&sign_request(SECRET, m, path, pairs), sig, "{m} {path}");
        }
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"{}"), "99914b932bd37a50b983c5e7c90ae93b");
        assert_eq!(
            md5_hex(br#"{"hello":"world"}"#),
            "fbc24bcc7a1794758fc1327fcfebdaf6"
        );
    }

    #[test]
    fn percent_decoded_query_is_signed_unescaped() {
        let raw = format!(
            "auth_key={KEY}&auth_timestamp=1353088179&auth_version=1.0&filter_by_prefix=a%20b"
        );
        let pairs = decode_query(&raw);
        assert_eq!(
            sign_request(SECRET, "GET", "/apps/3/channels", &pairs),
            "de6617877141606bba51dd555625a6407145bc2c38fe1715334e4b774248db1c"
        );
        assert_eq!(decode_query("a=b+c")[0].1, "b c");
        assert_eq!(decode_query("a=%zz%4")[0].1, "%zz%4");
        assert_eq!(decode_query("A%5B%5D=1")[0].0, "A[]");
    }

    #[test]
    fn sort_is_stable_for_repeated_keys() {
        let p = q(&[
            ("b", "1"),
            ("a[]", "x"),
            ("A[]", "y"),
            ("auth_signature", "z"),
        ]);
        assert_eq!(
            request_string_to_sign("get", "/p", &p),
            "GET\n/p\na[]=x&a[]=y&b=1"
        );
    }
}
