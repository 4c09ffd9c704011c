//! Who may use the console, and from where.
//!
//! - Sign-in: the login page POSTs the admin token once, in the body, to `/console/login`. A right
//!   token gets a session: a random id (not the token) in a cookie that is `HttpOnly`,
//!   `SameSite=Strict`, scoped to the console's path, and `Secure` over TLS. Sessions live
//!   [`SESSION_LIFETIME`]; at most [`MAX_SESSIONS`] are kept (the oldest goes first).
//! - Scripts may send `Authorization: Bearer <token>` instead. The token is never read from a URL.
//! - Wrong tokens are rate limited for the whole server ([`ATTEMPTS_PER_SEC`]); the comparison
//!   is constant-time over HMAC digests, so not even the token's length leaks.
//! - State-changing requests (sign-in, sign-out, the event creator) must come from the console's
//!   own origin: `Origin` (else `Sec-Fetch-Site`, else `Referer`) is checked against `Host`.

use super::ConsoleState;
use crate::transport::listener::forwarded_https;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_protocol::sign;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "herald_console";
/// How long a session lasts from sign-in (a working day, then sign in again).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions kept in memory; signing in beyond this ends the oldest session.
pub const MAX_SESSIONS: usize = 64;
/// Wrong tokens allowed per second, over the whole server (also the burst).
pub const ATTEMPTS_PER_SEC: f64 = 5.0;

/// Sessions by id, with the instant each expires.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: HashMap<String, Instant>,
}

impl Sessions {
    /// Adds session `id` expiring `lifetime` after `now`, keeping at most `max` sessions:
    /// expired ones go first, then those that expire soonest (the oldest).
    pub fn insert(&mut self, id: String, now: Instant, lifetime: Duration, max: usize) {
        self.by_id.retain(|_, expires| *expires > now);
        while self.by_id.len() >= max.max(1) {
            let Some(oldest) = self
                .by_id
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            self.by_id.remove(&oldest);
        }
        self.by_id.insert(id, now + lifetime);
    }

    /// Whether `id` is a live session; an expired one is forgotten. (The map lookup is not
    /// constant-time, but ids are 256 random bits: timing cannot guide a guess.)
    pub fn valid(&mut self, id: &str, now: Instant) -> bool {
        match self.by_id.get(id) {
            Some(expires) if *expires > now => true,
            Some(_) => {
                self.by_id.remove(id);
                false
            }
            None => false,
        }
    }

    pub fn remove(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A token bucket for token attempts: a slot is taken before comparing and given back when the
/// token was right, so only wrong tokens use up the rate.
#[derive(Debug)]
pub struct Attempts {
    slots: f64,
    last: Option<Instant>,
}

impl Default for Attempts {
    fn default() -> Self {
        Self {
            slots: ATTEMPTS_PER_SEC,
            last: None,
        }
    }
}

impl Attempts {
    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.slots = (self.slots + dt * ATTEMPTS_PER_SEC).min(ATTEMPTS_PER_SEC);
        }
        self.last = Some(now);
    }

    /// Takes a slot; false when none is left (the caller must not compare the token).
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.slots >= 1.0 {
            self.slots -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back the slot of a right token.
    pub fn give_back(&mut self) {
        self.slots = (self.slots + 1.0).min(ATTEMPTS_PER_SEC);
    }
}

/// The console's sign-in state: sessions, the attempt limit, and the key that turns tokens into
/// fixed-length digests for the comparison.
#[derive(Debug)]
pub struct Auth {
    sessions: Mutex<Sessions>,
    attempts: Mutex<Attempts>,
    digest_key: String,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            attempts: Mutex::default(),
            digest_key: hex::encode(rand::random::<[u8; 32]>()),
        }
    }
}

/// What a token check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Right,
    Wrong,
    /// Too many wrong tokens lately: not compared.
    Limited,
}

impl Auth {
    /// Compares `given` with `configured` (constant-time, length included), rate limited.
    pub fn check_token(&self, configured: &str, given: &str, now: Instant) -> TokenCheck {
        if !self.attempts.lock().take(now) {
            return TokenCheck::Limited;
        }
        let a = sign::hmac_hex(&self.digest_key, configured.as_bytes());
        let b = sign::hmac_hex(&self.digest_key, given.as_bytes());
        if !configured.is_empty() && sign::ct_eq(&a, &b) {
            self.attempts.lock().give_back();
            TokenCheck::Right
        } else {
            TokenCheck::Wrong
        }
    }

    /// Starts a session; returns its id.
    pub fn start_session(&self) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        self.sessions
            .lock()
            .insert(id.clone(), Instant::now(), SESSION_LIFETIME, MAX_SESSIONS);
        id
    }

    pub fn session_valid(&self, id: &str) -> bool {
        self.sessions.lock().valid(id, Instant::now())
    }

    pub fn end_session(&self, id: &str) {
        self.sessions.lock().remove(id);
    }
}

/// The value of cookie `name` among `Cookie` header values.
pub fn cookie_value<'a>(
    cookie_headers: impl IntoIterator<Item = &'a str>,
    name: &str,
) -> Option<&'a str> {
    cookie_headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// The cookie path: the console's URL path, or `/` if that path would not fit in the attribute.
fn cookie_path(path: &str) -> &str {
    if path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
    {
        path
    } else {
        "/"
    }
}

/// `Set-Cookie` value of a new session.
pub fn session_cookie(id: &str, path: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path={}; Max-Age={}; HttpOnly; SameSite=Strict{}",
        cookie_path(path),
        SESSION_LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` value that removes the session cookie.
pub fn cleared_cookie(path: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Strict{}",
        cookie_path(path),
        if secure { "; Secure" } else { "" }
    )
}

/// `(host, port)` of an authority, the port defaulting to that of `scheme`.
fn host_port(authority: &str, scheme: &str) -> Option<(String, u16)> {
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    // `[v6]:port`, `host:port`, or either without a port.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let port = match port {
        None | Some("") => default,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// Whether the URL `url` (an `Origin` or `Referer`) is on `host` (a `Host` header value).
fn url_on_host(url: &str, host: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match (
        host_port(authority, &scheme),
        host_port(host.trim(), &scheme),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The request headers the origin check reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct OriginHeaders<'a> {
    pub host: Option<&'a str>,
    /// `X-Forwarded-Host` from a proxy that rewrites `Host` (a page cannot set it cross-origin).
    pub forwarded_host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
    pub referer: Option<&'a str>,
}

impl<'a> OriginHeaders<'a> {
    pub fn from_headers(h: &'a HeaderMap) -> Self {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        Self {
            host: get(header::HOST.as_str()),
            forwarded_host: get("x-forwarded-host")
                .map(|v| v.split(',').next().unwrap_or("").trim()),
            origin: get(header::ORIGIN.as_str()),
            sec_fetch_site: get("sec-fetch-site"),
            referer: get(header::REFERER.as_str()),
        }
    }
}

/// Whether a state-changing request comes from the console's own origin; `Err` says why not.
/// A request with none of `Origin`, `Sec-Fetch-Site`, `Referer` is not from a browser (browsers
/// send `Origin` on every cross-origin POST), so there is no page to forge it: allowed.
pub fn check_origin(h: &OriginHeaders) -> Result<(), String> {
    let hosts = || h.host.into_iter().chain(h.forwarded_host);
    let on_this_server = |url: &str| hosts().any(|host| url_on_host(url, host));
    let this = h.host.unwrap_or("(no Host header)");
    let same_origin_fetch = h
        .sec_fetch_site
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("same-origin"));
    if let Some(origin) = h.origin {
        // A page with `Referrer-Policy: no-referrer` (the console's own) posts forms with
        // `Origin: null`; the browser's fetch metadata then tells whether it was this origin.
        return if on_this_server(origin) || (origin.trim() == "null" && same_origin_fetch) {
            Ok(())
        } else {
            Err(format!("Origin {origin} is not this server ({this})"))
        };
    }
    if let Some(site) = h.sec_fetch_site {
        return match site.trim().to_ascii_lowercase().as_str() {
            "same-origin" | "none" => Ok(()),
            other => Err(format!("Sec-Fetch-Site is {other}")),
        };
    }
    if let Some(referer) = h.referer {
        return if on_this_server(referer) {
            Ok(())
        } else {
            Err(format!("Referer {referer} is not this server ({this})"))
        };
    }
    Ok(())
}

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "404 NOT FOUND\n")
}

fn with_challenge(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"herald-console\""),
    );
    r
}

/// 401 for a request with no session and no token.
pub(super) fn sign_in_first(s: &ConsoleState, query: Option<&str>) -> Response {
    let url_token = sign::query_param(&sign::decode_query(query.unwrap_or("")), "token").is_some();
    let note = if url_token {
        " A token in the URL is not accepted (URLs end up in histories and logs)."
    } else {
        ""
    };
    with_challenge(text(
        StatusCode::UNAUTHORIZED,
        format!(
            "401 Unauthorized: the console needs you signed in. Sign in at {}/console/login, \
             or send `Authorization: Bearer <token>`.{note}\n",
            s.path_prefix
        ),
    ))
}

/// 401 for a wrong token.
pub(super) fn wrong_token() -> Response {
    with_challenge(text(
        StatusCode::UNAUTHORIZED,
        "401 Unauthorized: that is not the console's admin token (`[console] token`, \
         HERALD_CONSOLE_TOKEN).\n",
    ))
}

/// 429 while wrong tokens are over the rate.
pub(super) fn too_many_attempts() -> Response {
    let mut r = text(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "429 Too Many Requests: too many wrong console tokens (at most {ATTEMPTS_PER_SEC} a second \
             for this server). Wait a moment and try again.\n"
        ),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Whether the request arrived over TLS (here, or at a proxy that says so).
pub(super) fn secure(s: &ConsoleState, headers: &HeaderMap) -> bool {
    s.tls || forwarded_https(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

/// The session id of the request's cookie, whether or not it is live.
pub(super) fn session_id(headers: &HeaderMap) -> Option<&str> {
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    cookie_value(cookies, SESSION_COOKIE).filter(|v| !v.is_empty())
}

/// How a request is signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Signed {
    /// A live session cookie (its id: a feed ends with its session).
    Session(String),
    /// A right bearer token.
    Bearer,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    WrongToken,
    Limited,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::WrongToken => wrong_token(),
            Refused::Limited => too_many_attempts(),
        }
    }
}

/// The request's credentials: a live session cookie, else a bearer token. `Ok(None)`: neither.
pub(super) fn signed(s: &ConsoleState, headers: &HeaderMap) -> Result<Option<Signed>, Refused> {
    if let Some(id) = session_id(headers) {
        if s.auth.session_valid(id) {
            return Ok(Some(Signed::Session(id.to_owned())));
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match bearer {
        None => Ok(None),
        Some(given) => match s.auth.check_token(&s.token, given, Instant::now()) {
            TokenCheck::Right => Ok(Some(Signed::Bearer)),
            TokenCheck::Wrong => Err(Refused::WrongToken),
            TokenCheck::Limited => Err(Refused::Limited),
        },
    }
}

/// Extractor: the console is on (a token is configured). Rejects with 404 otherwise.
#[derive(Debug)]
pub(super) struct Enabled;

impl FromRequestParts<Arc<ConsoleState>> for Enabled {
    type Rejection = Response;

    async fn from_request_parts(_: &mut Parts, s: &Arc<ConsoleState>) -> Result<Self, Response> {
        if s.token.is_empty() {
            Err(not_found())
        } else {
            Ok(Enabled)
        }
    }
}

/// Extractor: the request is signed in (session cookie or bearer token). 404 when the console
/// is off, 401 or 429 otherwise.
#[derive(Debug)]
pub(super) struct Admin(pub Signed);

impl FromRequestParts<Arc<ConsoleState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &Arc<ConsoleState>,
    ) -> Result<Self, Response> {
        if s.token.is_empty() {
            return Err(not_found());
        }
        match signed(s, &parts.headers).map_err(IntoResponse::into_response)? {
            Some(how) => Ok(Admin(how)),
            None => Err(sign_in_first(s, parts.uri.query())),
        }
    }
}

/// Extractor for state-changing requests: they come from the console's own origin. 403 otherwise.
#[derive(Debug)]
pub(super) struct SameOrigin;

impl FromRequestParts<Arc<ConsoleState>> for SameOrigin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &Arc<ConsoleState>,
    ) -> Result<Self, Response> {
        if s.token.is_empty() {
            return Err(not_found());
        }
        check_origin(&OriginHeaders::from_headers(&parts.headers))
            .map(|()| SameOrigin)
            .map_err(|why| {
                text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "403 Forbidden: cross-origin request refused: {why}. The console only \
                         accepts changes from its own pages.\n"
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from<'a>(
        origin: Option<&'a str>,
        site: Option<&'a str>,
        referer: Option<&'a str>,
    ) -> OriginHeaders<'a> {
        OriginHeaders {
            host: Some("127.0.0.1:6001"),
            forwarded_host: None,
            origin,
            sec_fetch_site: site,
            referer,
        }
    }

    #[test]
    fn origin_must_be_this_host() {
        assert!(check_origin(&from(Some("http://127.0.0.1:6001"), None, None)).is_ok());
        // Origin wins over the other headers.
        assert!(check_origin(&from(
            Some("http://127.0.0.1:6001"),
            Some("cross-site"),
            None
        ))
        .is_ok());
        // `Origin: null` (a no-referrer page's form) counts only with same-origin fetch metadata.
        assert!(check_origin(&from(Some("null"), Some("same-origin"), None)).is_ok());
        assert!(check_origin(&from(Some("null"), Some("cross-site"), None)).is_err());
        assert!(check_origin(&from(Some("null"), None, Some("http://127.0.0.1:6001/"))).is_err());
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:6002",
            "http://127.0.0.1",
            "https://127.0.0.1:6001.evil.example",
            "",
            "ftp://127.0.0.1:6001",
            "http://localhost:6001",
        ] {
            let e = check_origin(&from(Some(bad), Some("same-origin"), None)).unwrap_err();
            assert!(e.contains("is not this server"), "{bad}: {e}");
            let e = check_origin(&from(Some(bad), None, None)).unwrap_err();
            assert!(e.contains("is not this server"), "{bad}: {e}");
        }
        // Default ports and case.
        let h = |host, origin| OriginHeaders {
            host: Some(host),
            origin: Some(origin),
            ..Default::default()
        };
        assert!(check_origin(&h("Example.COM", "http://example.com")).is_ok());
        assert!(check_origin(&h("example.com:80", "http://example.com")).is_ok());
        assert!(check_origin(&h("example.com", "https://example.com:443")).is_ok());
        assert!(check_origin(&h("example.com:443", "http://example.com")).is_err());
        assert!(check_origin(&h("[::1]:6001", "http://[::1]:6001")).is_ok());
        assert!(check_origin(&h("[::1]:6001", "http://[::1]:6002")).is_err());
        // No Host: nothing to compare with.
        let no_host = OriginHeaders {
            origin: Some("http://a"),
            ..Default::default()
        };
        assert!(check_origin(&no_host).is_err());
        // A proxy that rewrites Host names the public one in X-Forwarded-Host.
        let proxied = OriginHeaders {
            host: Some("127.0.0.1:6001"),
            forwarded_host: Some("console.example.com"),
            origin: Some("https://console.example.com"),
            ..Default::default()
        };
        assert!(check_origin(&proxied).is_ok());
    }

    #[test]
    fn without_origin_fetch_metadata_then_referer_decide() {
        assert!(check_origin(&from(None, Some("same-origin"), None)).is_ok());
        assert!(check_origin(&from(None, Some("none"), None)).is_ok());
        for site in ["cross-site", "same-site"] {
            let e = check_origin(&from(
                None,
                Some(site),
                Some("http://127.0.0.1:6001/console"),
            ))
            .unwrap_err();
            assert!(e.contains(site), "{e}");
        }
        assert!(check_origin(&from(None, None, Some("http://127.0.0.1:6001/console?x=1"))).is_ok());
        assert!(check_origin(&from(None, None, Some("http://evil.example/console"))).is_err());
        // No browser header at all: a script, not a page.
        assert!(check_origin(&from(None, None, None)).is_ok());
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let t0 = Instant::now();
        let life = Duration::from_secs(100);
        let mut s = Sessions::default();
        s.insert("a".into(), t0, life, 3);
        assert!(s.valid("a", t0 + Duration::from_secs(99)));
        assert!(!s.valid("a", t0 + Duration::from_secs(100)));
        assert!(s.is_empty(), "an expired session is forgotten");
        assert!(!s.valid("nope", t0));

        // Full: the oldest goes.
        for (i, id) in ["1", "2", "3"].iter().enumerate() {
            s.insert((*id).into(), t0 + Duration::from_secs(i as u64), life, 3);
        }
        s.insert("4".into(), t0 + Duration::from_secs(3), life, 3);
        assert_eq!(s.len(), 3);
        let now = t0 + Duration::from_secs(4);
        assert!(!s.valid("1", now));
        assert!(s.valid("2", now) && s.valid("3", now) && s.valid("4", now));
        // Expired ones are swept before anything live is evicted.
        let later = t0 + Duration::from_secs(101); // "2" (from t0+1) has expired
        s.insert("5".into(), later, life, 3);
        assert!(s.valid("3", later) && s.valid("4", later) && s.valid("5", later));
        assert_eq!(s.len(), 3);
        s.remove("3");
        assert!(!s.valid("3", later));

        // The real store's bound.
        let auth = Auth::default();
        let ids: Vec<String> = (0..MAX_SESSIONS + 5)
            .map(|_| auth.start_session())
            .collect();
        assert_eq!(auth.sessions.lock().len(), MAX_SESSIONS);
        assert!(auth.session_valid(ids.last().unwrap()));
        assert_eq!(ids.last().unwrap().len(), 64, "256 random bits, hex");
        assert_ne!(ids[0], ids[1]);
        auth.end_session(ids.last().unwrap());
        assert!(!auth.session_valid(ids.last().unwrap()));
    }

    #[test]
    fn cookie_attributes() {
        let c = session_cookie("abc", "/console", false);
        assert_eq!(
            c,
            "herald_console=abc; Path=/console; Max-Age=43200; HttpOnly; SameSite=Strict"
        );
        let c = session_cookie("abc", "/prefix/console", true);
        assert!(c.contains("; Path=/prefix/console;"), "{c}");
        assert!(c.ends_with("; Secure"), "{c}");
        assert!(session_cookie("abc", "/a;b/console", false).contains("; Path=/;"));
        let gone = cleared_cookie("/console", true);
        assert!(gone.starts_with("herald_console=;"), "{gone}");
        assert!(
            gone.contains("Max-Age=0")
                && gone.contains("HttpOnly")
                && gone.contains("SameSite=Strict")
        );

        assert_eq!(
            cookie_value(["a=1; herald_console=xyz; b=2"], SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(
            cookie_value(["a=1", "herald_console=q"], SESSION_COOKIE),
            Some("q")
        );
        assert_eq!(cookie_value(["xherald_console=1"], SESSION_COOKIE), None);
        assert_eq!(cookie_value(std::iter::empty(), SESSION_COOKIE), None);
    }

    #[test]
    fn token_attempts_are_rate_limited() {
        let auth = Auth::default();
        let t0 = Instant::now();
        let check = |given, at| auth.check_token("s3cret", given, at);
        assert_eq!(check("s3cret", t0), TokenCheck::Right);
        assert_eq!(check("s3cre", t0), TokenCheck::Wrong);
        assert_eq!(check("", t0), TokenCheck::Wrong);
        assert_eq!(auth.check_token("", "", t0), TokenCheck::Wrong);
        // Right tokens give their slot back: they never run out.
        for _ in 0..50 {
            assert_eq!(check("s3cret", t0), TokenCheck::Right);
        }
        // Wrong ones do: ATTEMPTS_PER_SEC in all (three spent above), then refused without a
        // comparison, the right token included.
        let results: Vec<TokenCheck> = (0..5).map(|_| check("guess", t0)).collect();
        assert_eq!(
            results,
            [
                TokenCheck::Wrong,
                TokenCheck::Wrong,
                TokenCheck::Limited,
                TokenCheck::Limited,
                TokenCheck::Limited
            ]
        );
        assert_eq!(check("s3cret", t0), TokenCheck::Limited);
        // One slot back every 1/ATTEMPTS_PER_SEC seconds.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(check("s3cret", t1), TokenCheck::Right);
        assert_eq!(check("guess", t1), TokenCheck::Wrong);
        assert_eq!(check("s3cret", t1), TokenCheck::Limited);

        let mut a = Attempts::default();
        for _ in 0..5 {
            assert!(a.take(t0));
        }
        assert!(!a.take(t0));
        a.give_back();
        assert!(a.take(t0));
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| a.take(later)).count(), 5);
    }
}
