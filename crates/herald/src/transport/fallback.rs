//! The HTTP fallback transports pusher-js uses where WebSocket is unavailable: `xhr_streaming`
//! and `xhr_polling` (the wire format is described in docs/fallback-transports.md).
//!
//! A fallback session is an ordinary engine connection driven by the same [`Session`] as a
//! WebSocket: only the bytes differ. Its frames queue in the connection's outbox (no direct
//! writes: nothing is attached) and leave through whichever receiving request the client has
//! open; `xhr_send` requests carry the client's messages in. The listener serves these
//! requests itself, outside hyper, so that a held streaming request costs the session and its
//! socket, not an HTTP stack's connection state.
//!
//! A session with no receiving request open for `fallback_session_timeout` is ended like a
//! client that went away (presence `member_removed`, webhooks, counts).

use crate::session::{self, ConnectParams, Session};
use crate::sinks::metrics::ConnCounters;
use crate::transport::stream::Transport;
use herald_core::{clock_ms, Conn};
use herald_protocol::{codes, encode, CloseCode};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// What a request under the fallback paths asks for (the last segment of its path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `xhr_streaming`: a response held open, one line per chunk.
    Streaming,
    /// `xhr`: a response per batch; the client asks again when it ends.
    Polling,
    /// `xhr_send`: the client's messages, as a JSON array of strings.
    Send,
}

impl Kind {
    /// The transport's name as pusher-js and the metrics say it.
    pub fn transport(self) -> &'static str {
        match self {
            Kind::Streaming => "xhr_streaming",
            Kind::Polling | Kind::Send => "xhr_polling",
        }
    }
}

/// A request path under the fallback transports, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: String,
    /// `{server}/{session}` as the client chose them: the session's name.
    pub session: String,
    pub kind: Kind,
}

/// Parses `{prefix}{httpPath}/app/{key}/{server}/{session}/{kind}` (pusher-js, HTTPSocket's
/// `getSendURL` and the `getReceiveURL` hooks; the base comes from `URLSchemes.http`). Any
/// `httpPath` is accepted (pusher-js defaults to `/pusher`): the three segments after the key
/// are what sets these paths apart. `None` for any other path.
pub fn parse_target(path: &str, prefix: &str) -> Option<Target> {
    let rest = path.strip_prefix(prefix)?;
    let mut parts = rest.rsplitn(5, '/');
    let kind = match parts.next()? {
        "xhr_streaming" => Kind::Streaming,
        "xhr" => Kind::Polling,
        "xhr_send" => Kind::Send,
        _ => return None,
    };
    let id = parts.next()?;
    let server = parts.next()?;
    let key = parts.next()?;
    let base = parts.next()?;
    // pusher-js: a number below 1000, then 8 characters of base 32; a little slack either way.
    let ok_server = (1..=8).contains(&server.len()) && server.bytes().all(|b| b.is_ascii_digit());
    let ok_id = (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !(base == "/app" || base.ends_with("/app")) || key.is_empty() || !ok_server || !ok_id {
        return None;
    }
    let key = percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .into_owned();
    Some(Target {
        session: format!("{server}/{id}"),
        key,
        kind,
    })
}

/// The chunk that opens a session (HTTPSocket `onChunk`, `o`).
pub const OPEN: &[u8] = b"o\n";
/// A heartbeat: a streaming client answers with an empty `xhr_send`, a polling one polls again.
pub const HEARTBEAT: &[u8] = b"h\n";

/// Appends an `a` chunk: the messages' JSON texts, each as a JSON string, in one array.
pub fn put_array<'a>(out: &mut Vec<u8>, messages: impl IntoIterator<Item = &'a [u8]>) {
    out.extend_from_slice(b"a[");
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Our own frames are UTF-8 JSON; lossy only to never fail.
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(m));
    }
    out.extend_from_slice(b"]\n");
}

/// Appends a `c` chunk: the close code and its reason, as a WebSocket close would carry them.
pub fn put_close(out: &mut Vec<u8>, code: CloseCode) {
    out.extend_from_slice(format!("c[{},", code.code).as_bytes());
    let _ = serde_json::to_writer(&mut *out, code.reason);
    out.extend_from_slice(b"]\n");
}

/// Parses an `xhr_send` body: a JSON array of message texts (HTTPSocket `send` wraps each
/// message in an array; a heartbeat sends `[]`).
pub fn parse_send(body: &[u8]) -> Result<Vec<String>, String> {
    serde_json::from_slice::<Vec<String>>(body)
        .map_err(|e| format!("xhr_send body must be a JSON array of strings: {e}"))
}

/// One fallback request as the listener read it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub target: Target,
    /// The query string (with its `?`), for the protocol version.
    pub query: String,
    pub origin: Option<String>,
    /// `Access-Control-Request-Headers` of a preflight.
    pub request_headers: Option<String>,
    pub content_length: usize,
    /// The request body is chunked (browsers never send one; refused).
    pub chunked: bool,
    pub keep_alive: bool,
    pub tls: bool,
}

/// Which receiving request holds the session, and since when none does.
#[derive(Default)]
struct Recv {
    /// Bumped by each receiving request; the holder lets go when it changes.
    gen: u64,
    busy: bool,
    /// `o` was sent: later receiving requests must not send it again (pusher-js closes a
    /// session that opens twice: "Server lost session").
    opened: bool,
    idle_since_ms: u64,
}

/// One session on a fallback transport.
struct Fs {
    name: Box<str>,
    transport: &'static str,
    conn: Arc<Conn>,
    session: tokio::sync::Mutex<Session>,
    counters: Arc<ConnCounters>,
    recv: Mutex<Recv>,
    released: tokio::sync::Notify,
    ended: AtomicBool,
    /// Shutdown waits for the session's cleanup.
    token: Mutex<Option<TaskTrackerToken>>,
}

/// Sessions ended this recently answer a receiving request with 404 rather than opening anew.
const TOMBSTONE_MS: u64 = 60_000;
/// A session whose close was requested while no request held it gets this long for the
/// client's next request to carry the `c` chunk before it ends anyway.
const CLOSE_GRACE_MS: u64 = 1000;

/// The fallback sessions of the server port.
pub struct Sessions {
    ctx: Arc<session::Ctx>,
    map: Mutex<HashMap<Box<str>, Arc<Fs>>>,
    ended: Mutex<HashMap<Box<str>, u64>>,
    timeout_ms: u64,
    poll: Duration,
    /// Most sessions at once (the server port's WebSocket limit): a session between two
    /// requests holds no socket, so the socket count alone would not bound them.
    max_sessions: usize,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.map.lock().len())
            .finish_non_exhaustive()
    }
}

/// How a fallback request left the connection.
pub enum After {
    /// The connection may carry another request.
    KeepAlive,
    Close,
}

impl Sessions {
    pub fn new(
        ctx: Arc<session::Ctx>,
        timeout_s: u64,
        poll_s: u64,
        max_sessions: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            map: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
            timeout_ms: timeout_s.max(1).saturating_mul(1000),
            poll: Duration::from_secs(poll_s.max(1)),
            max_sessions,
        })
    }

    pub fn ctx(&self) -> &Arc<session::Ctx> {
        &self.ctx
    }

    /// Open sessions (tests and the bench read it through the metrics too).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends sessions nobody asked for within the timeout, and closing ones nobody will carry
    /// the close to, until the process ends.
    pub async fn reap(self: Arc<Self>) {
        let tick = Duration::from_millis((self.timeout_ms / 4).clamp(100, 1000));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let now = clock_ms();
            let due: Vec<Arc<Fs>> = self
                .map
                .lock()
                .values()
                .filter(|fs| {
                    let r = fs.recv.lock();
                    let idle = now.saturating_sub(r.idle_since_ms);
                    !r.busy
                        && (idle >= self.timeout_ms
                            || (fs.conn.is_closing() && idle >= CLOSE_GRACE_MS))
                })
                .cloned()
                .collect();
            for fs in due {
                self.end(&fs).await;
            }
            self.ended
                .lock()
                .retain(|_, at| now.saturating_sub(*at) < TOMBSTONE_MS);
        }
    }

    /// Ends a session once: the engine forgets the connection (ordinary cleanup).
    async fn end(&self, fs: &Arc<Fs>) {
        if fs.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        self.map.lock().remove(&fs.name);
        self.ended.lock().insert(fs.name.clone(), clock_ms());
        fs.session.lock().await.cleanup();
        let app = fs.conn.app();
        self.ctx.metrics.fallback_session(&app.id, fs.transport, -1);
        drop(fs.token.lock().take());
    }

    fn name(target: &Target) -> Box<str> {
        format!("{}/{}", target.key, target.session).into()
    }

    /// Serves one request; `buf` holds the bytes after its head and keeps what follows its
    /// body. `over_capacity` refuses a new session (4100) as an upgrade would be.
    pub async fn serve<S: Transport>(
        self: &Arc<Self>,
        io: &mut S,
        buf: &mut Vec<u8>,
        req: Request,
        over_capacity: bool,
    ) -> After {
        let cors = cors_headers(&req);
        if req.method.eq_ignore_ascii_case("OPTIONS") {
            let allow = req.request_headers.as_deref().unwrap_or("Content-Type");
            let head = format!(
                "HTTP/1.1 204 No Content\r\n{cors}Access-Control-Allow-Methods: POST, GET, OPTIONS\r\nAccess-Control-Allow-Headers: {}\r\nAccess-Control-Max-Age: 86400\r\n{}\r\n",
                header_safe(allow),
                connection_header(req.keep_alive),
            );
            return respond_raw(io, head.as_bytes(), &[], req.keep_alive).await;
        }
        if req.chunked {
            return respond(io, 411, &cors, b"Length Required\n", false).await;
        }
        let limit = self.body_limit();
        if req.content_length > limit {
            if req.target.kind == Kind::Send {
                self.too_big(&req.target);
            }
            return respond(io, 413, &cors, b"Request body too large\n", false).await;
        }
        let Some(body) = read_body(io, buf, req.content_length).await else {
            return After::Close;
        };
        if buf.is_empty() {
            // A held request keeps no read buffer (most of an idle session's memory otherwise).
            *buf = Vec::new();
        }
        match req.target.kind {
            Kind::Send => self.send(io, &req, &cors, &body).await,
            Kind::Streaming | Kind::Polling => self.receive(io, &req, &cors, over_capacity).await,
        }
    }

    /// The largest `xhr_send` body: a message at the size limit, escaped at worst 6 bytes a
    /// byte (`\u00XX`), plus the array around it.
    fn body_limit(&self) -> usize {
        self.ctx
            .max_ws_message_bytes
            .saturating_mul(6)
            .saturating_add(1024)
    }

    /// A message over the size limit: the client hears why and the session closes with 1009,
    /// as a WebSocket would.
    fn too_big(&self, target: &Target) {
        if let Some(fs) = self.map.lock().get(&Self::name(target)).cloned() {
            let code = codes::MESSAGE_TOO_BIG;
            fs.conn.send(&herald_core::Frame::from(encode::error(
                Some(code.code),
                code.reason,
            )));
            fs.conn.request_close(code);
        }
    }

    async fn send<S: Transport>(
        &self,
        io: &mut S,
        req: &Request,
        cors: &str,
        body: &[u8],
    ) -> After {
        let Some(fs) = self.map.lock().get(&Self::name(&req.target)).cloned() else {
            return respond(io, 404, cors, b"Unknown session\n", req.keep_alive).await;
        };
        let messages = match parse_send(body) {
            Ok(m) => m,
            Err(e) => {
                let text = format!("{e}\n");
                return respond(io, 400, cors, text.as_bytes(), req.keep_alive).await;
            }
        };
        fs.conn.seen(clock_ms());
        let max = self.ctx.max_ws_message_bytes;
        let mut session = fs.session.lock().await;
        for text in &messages {
            if fs.ended.load(Ordering::Acquire) || fs.conn.is_closing() {
                break;
            }
            if text.len() > max {
                drop(session);
                self.too_big(&req.target);
                return respond(io, 413, cors, b"Message too big\n", req.keep_alive).await;
            }
            fs.counters.messages_in.inc();
            fs.counters.bytes_in.inc_by(text.len() as u64);
            // Boxed: handling may wait on the cluster.
            Box::pin(session.handle(text)).await;
        }
        drop(session);
        respond(io, 204, cors, b"", req.keep_alive).await
    }

    /// A session for a receiving request: the open one, or a new one. `Err` is the response
    /// that refuses it.
    fn session_for(
        self: &Arc<Self>,
        req: &Request,
        over_capacity: bool,
    ) -> Result<Arc<Fs>, Refusal> {
        let name = Self::name(&req.target);
        if let Some(fs) = self.map.lock().get(&name).cloned() {
            return Ok(fs);
        }
        if self.ended.lock().contains_key(&name) {
            return Err(Refusal::Gone);
        }
        let query = herald_protocol::sign::decode_query(req.query.trim_start_matches('?'));
        let protocol = herald_protocol::sign::query_param(&query, "protocol").map(str::to_owned);
        let params = ConnectParams {
            path_ok: true,
            key: Some(req.target.key.clone()),
            protocol,
            tls: req.tls,
        };
        if over_capacity || self.len() >= self.max_sessions {
            self.ctx.metrics.refused("server", "capacity");
            return Err(Refusal::Close(codes::OVER_CAPACITY));
        }
        let conn = session::admit(&self.ctx, &params).map_err(Refusal::Close)?;
        let app = conn.app();
        let transport = req.target.kind.transport();
        let session = Session::new(self.ctx.clone(), conn.clone());
        // `pusher:connection_established`, the first message of every session.
        session.established();
        let fs = Arc::new(Fs {
            name: name.clone(),
            transport,
            counters: self.ctx.metrics.conn_counters(&app.id),
            session: tokio::sync::Mutex::new(session),
            conn,
            recv: Mutex::new(Recv {
                idle_since_ms: clock_ms(),
                ..Recv::default()
            }),
            released: tokio::sync::Notify::new(),
            ended: AtomicBool::new(false),
            token: Mutex::new(Some(self.ctx.drain.session())),
        });
        self.ctx.metrics.fallback_session(&app.id, transport, 1);
        self.map.lock().insert(name, fs.clone());
        Ok(fs)
    }

    async fn receive<S: Transport>(
        self: &Arc<Self>,
        io: &mut S,
        req: &Request,
        cors: &str,
        over_capacity: bool,
    ) -> After {
        let streaming = req.target.kind == Kind::Streaming;
        let fs = match self.session_for(req, over_capacity) {
            Ok(fs) => fs,
            // pusher-js closes on a non-200 end of a receiving request (1006) and reconnects.
            Err(Refusal::Gone) => {
                return respond(io, 404, cors, b"Unknown session\n", req.keep_alive).await
            }
            Err(Refusal::Close(code)) => {
                let mut body = Vec::new();
                put_close(&mut body, code);
                return respond(io, 200, cors, &body, req.keep_alive).await;
            }
        };
        let Some(my) = fs.claim().await else {
            // A newer request took the session while this one waited.
            return respond(io, 200, cors, b"", req.keep_alive).await;
        };
        let held = Held(&fs);
        fs.conn.seen(clock_ms());
        let first = !std::mem::replace(&mut fs.recv.lock().opened, true);
        let mut out = Vec::new();
        if first {
            out.extend_from_slice(OPEN);
        }
        if streaming {
            // Held until the session ends or the client lets go: no length, closed at the end.
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n{cors}Connection: close\r\n\r\n"
            );
            let mut start = head.into_bytes();
            start.append(&mut out);
            if !self.write(io, &fs, &start).await {
                return After::Close;
            }
        }
        let end = Box::pin(self.pump(io, &fs, my, streaming, &mut out)).await;
        match end {
            Pumped::Gone => {
                drop(held);
                After::Close
            }
            Pumped::Closed(code) => {
                put_close(&mut out, code);
                if streaming {
                    let _ = self.write(io, &fs, &out).await;
                } else {
                    let _ = respond(io, 200, cors, &out, false).await;
                }
                drop(held);
                self.end(&fs).await;
                After::Close
            }
            Pumped::Deliver => {
                drop(held);
                if streaming {
                    After::Close
                } else {
                    respond(io, 200, cors, &out, req.keep_alive).await
                }
            }
        }
    }

    /// Writes with the write timeout: a client that takes nothing for that long is a slow
    /// consumer, as on a WebSocket.
    async fn write<S: Transport>(&self, io: &mut S, fs: &Fs, bytes: &[u8]) -> bool {
        let wrote = tokio::time::timeout(self.ctx.write_timeout, async {
            io.write_all(bytes).await.is_ok() && io.flush().await.is_ok()
        })
        .await;
        match wrote {
            Ok(ok) => ok,
            Err(_) => {
                fs.conn.request_close(codes::SLOW_CONSUMER);
                false
            }
        }
    }

    /// Carries the session's frames to the client until the request ends. Streaming writes
    /// each batch as it comes; polling collects into `out` and returns at the first batch
    /// (or a heartbeat after the poll timeout).
    async fn pump<S: Transport>(
        &self,
        io: &mut S,
        fs: &Fs,
        my: u64,
        streaming: bool,
        out: &mut Vec<u8>,
    ) -> Pumped {
        let conn = &fs.conn;
        let poll_end = tokio::time::Instant::now() + self.poll;
        loop {
            if conn.has_pending() {
                let pending = conn.take();
                if !pending.frames.is_empty() {
                    put_array(out, pending.frames.iter().map(|f| f.json()));
                    fs.counters.messages_out.inc_by(pending.frames.len() as u64);
                }
                if pending.ping {
                    out.extend_from_slice(HEARTBEAT);
                }
                conn.written();
                if let Some(code) = pending.close {
                    return Pumped::Closed(code);
                }
                if !out.is_empty() {
                    if !streaming {
                        return Pumped::Deliver;
                    }
                    fs.counters.bytes_out.inc_by(out.len() as u64);
                    if !self.write(io, fs, out).await {
                        return Pumped::Gone;
                    }
                    out.clear();
                    *out = Vec::new();
                }
            }
            if !streaming && !out.is_empty() {
                return Pumped::Deliver;
            }
            let mut scratch = Vec::new();
            let waited = std::future::poll_fn(|cx| {
                if fs.recv.lock().gen != my {
                    return std::task::Poll::Ready(Wait::Superseded);
                }
                if conn.poll_woken(cx).is_ready() {
                    return std::task::Poll::Ready(Wait::Woken);
                }
                match io.poll_read_into(cx, &mut scratch) {
                    std::task::Poll::Ready(Ok(0) | Err(_)) => std::task::Poll::Ready(Wait::Gone),
                    // Nothing more is expected on this request: read only to see it end.
                    std::task::Poll::Ready(Ok(_)) => {
                        scratch = Vec::new();
                        cx.waker().wake_by_ref();
                        std::task::Poll::Pending
                    }
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            });
            let waited = if streaming {
                waited.await
            } else {
                tokio::time::timeout_at(poll_end, waited)
                    .await
                    .unwrap_or(Wait::PollEnd)
            };
            match waited {
                Wait::Woken => {}
                Wait::Gone => return Pumped::Gone,
                Wait::Superseded => {
                    return if streaming {
                        Pumped::Gone
                    } else {
                        Pumped::Deliver
                    }
                }
                Wait::PollEnd => {
                    out.extend_from_slice(HEARTBEAT);
                    return Pumped::Deliver;
                }
            }
        }
    }
}

enum Refusal {
    /// The session ended a moment ago.
    Gone,
    Close(CloseCode),
}

enum Wait {
    Woken,
    Gone,
    Superseded,
    PollEnd,
}

enum Pumped {
    /// The client went away (or a newer request took the session).
    Gone,
    /// The session closes with this code.
    Closed(CloseCode),
    /// A polling response is ready in `out` (or a streaming request ended).
    Deliver,
}

/// A receiving request's hold on its session, let go however the request ends.
struct Held<'a>(&'a Fs);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut r = self.0.recv.lock();
        r.busy = false;
        r.idle_since_ms = clock_ms();
        drop(r);
        self.0.released.notify_waiters();
    }
}

impl Fs {
    /// Takes the session for a receiving request: the request holding it is told to let go,
    /// and this one waits until it has. `None` if a newer request came meanwhile.
    async fn claim(&self) -> Option<u64> {
        let my = {
            let mut r = self.recv.lock();
            r.gen += 1;
            r.gen
        };
        self.conn.wake();
        loop {
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            {
                let mut r = self.recv.lock();
                if r.gen != my || self.ended.load(Ordering::Acquire) {
                    return None;
                }
                if !r.busy {
                    r.busy = true;
                    return Some(my);
                }
            }
            released.await;
        }
    }
}

/// CORS for a page on another origin (pusher-js sends `Content-Type: application/json`, so
/// browsers ask first with a preflight). No credentials are involved: any origin may.
fn cors_headers(req: &Request) -> String {
    match &req.origin {
        Some(o) => format!(
            "Access-Control-Allow-Origin: {}\r\nVary: Origin\r\n",
            header_safe(o)
        ),
        None => "Access-Control-Allow-Origin: *\r\n".to_owned(),
    }
}

/// A header value as received, without anything that could end the header.
fn header_safe(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).collect()
}

fn connection_header(keep_alive: bool) -> &'static str {
    if keep_alive {
        "Connection: keep-alive\r\n"
    } else {
        "Connection: close\r\n"
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        _ => "Error",
    }
}

/// A whole response with a length.
async fn respond<S: Transport>(
    io: &mut S,
    status: u16,
    cors: &str,
    body: &[u8],
    keep_alive: bool,
) -> After {
    let kind = if status == 200 {
        "application/json"
    } else {
        "text/plain"
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {kind}\r\nCache-Control: no-store\r\n{cors}Content-Length: {}\r\n{}\r\n",
        reason(status),
        body.len(),
        connection_header(keep_alive),
    );
    respond_raw(io, head.as_bytes(), body, keep_alive).await
}

async fn respond_raw<S: Transport>(io: &mut S, head: &[u8], body: &[u8], keep: bool) -> After {
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head);
    out.extend_from_slice(body);
    let write = async { io.write_all(&out).await.is_ok() && io.flush().await.is_ok() };
    match tokio::time::timeout(Duration::from_secs(10), write).await {
        Ok(true) if keep => After::KeepAlive,
        _ => {
            let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
            After::Close
        }
    }
}

/// Reads a body of `len` bytes: what `buf` already holds first; `buf` keeps what follows.
async fn read_body<S: Transport>(io: &mut S, buf: &mut Vec<u8>, len: usize) -> Option<Vec<u8>> {
    let read = async {
        while buf.len() < len {
            match io.read_into(buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(10), read).await,
        Ok(true)
    ) {
        return None;
    }
    let body = buf[..len].to_vec();
    buf.drain(..len);
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Engine;
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn sessions(timeout_s: u64, max: usize) -> (Engine, Arc<Sessions>) {
        let ctx = Arc::new(session::Ctx::for_tests(1000, Duration::from_secs(5)));
        (ctx.engine.clone(), Sessions::new(ctx, timeout_s, 1, max))
    }

    fn poll(session: &str) -> Request {
        Request {
            method: "POST".into(),
            target: parse_target(&format!("/pusher/app/app-key/{session}/xhr"), "").unwrap(),
            query: "?protocol=7".into(),
            origin: None,
            request_headers: None,
            content_length: 0,
            chunked: false,
            keep_alive: true,
            tls: false,
        }
    }

    /// Serves one request and returns the response's status and body.
    async fn exchange(s: &Arc<Sessions>, req: Request) -> (u16, String) {
        let (mut server, mut client) = tokio::io::duplex(1 << 16);
        let mut buf = Vec::new();
        s.serve(&mut server, &mut buf, req, false).await;
        drop(server);
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head[9..12].parse().unwrap(), body.to_owned())
    }

    #[tokio::test]
    async fn a_session_opens_once_and_is_reaped_when_no_request_holds_it() {
        let (engine, s) = sessions(1, 100);
        let reaper = tokio::spawn(s.clone().reap());
        let (status, body) = exchange(&s, poll("1/abc")).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("o\na["), "{body}");
        assert!(body.contains("pusher:connection_established"), "{body}");
        assert_eq!((s.len(), engine.connection_count("app-id")), (1, 1));
        // The next poll has nothing to deliver: a heartbeat after the poll timeout, no second `o`.
        let (status, body) = exchange(&s, poll("1/abc")).await;
        assert_eq!((status, body.as_str()), (200, "h\n"));
        // Nobody polls again: the session ends as a client that went away.
        for _ in 0..100 {
            if s.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!((s.len(), engine.connection_count("app-id")), (0, 0));
        // Its name does not open a new session.
        assert_eq!(exchange(&s, poll("1/abc")).await.0, 404);
        reaper.abort();
    }

    #[tokio::test]
    async fn sessions_past_the_limit_are_refused_with_4100() {
        let (_, s) = sessions(30, 1);
        assert_eq!(exchange(&s, poll("1/a")).await.0, 200);
        let (status, body) = exchange(&s, poll("1/b")).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("c[4100,"), "{body}");
        assert_eq!(s.len(), 1);
    }

    #[tokio::test]
    async fn an_oversized_message_closes_the_session_with_1009() {
        let (_, s) = sessions(30, 10);
        exchange(&s, poll("1/big")).await;
        let body = serde_json::to_string(&[format!(
            "{{\"event\":\"client-x\",\"data\":\"{}\"}}",
            "x".repeat(2000)
        )])
        .unwrap();
        let (mut server, _client): (DuplexStream, DuplexStream) = tokio::io::duplex(1 << 16);
        let mut buf = body.clone().into_bytes();
        let mut req = poll("1/big");
        req.target.kind = Kind::Send;
        req.content_length = body.len();
        s.serve(&mut server, &mut buf, req, false).await;
        let (status, body) = exchange(&s, poll("1/big")).await;
        assert_eq!(status, 200);
        assert!(body.contains("1009"), "pusher:error first: {body}");
        assert!(body.ends_with("c[1009,\"Message too big\"]\n"), "{body}");
        assert!(s.is_empty(), "the session ended");
    }

    #[test]
    fn parses_the_paths_pusher_js_uses() {
        let t = parse_target("/pusher/app/app-key/123/abcdefgh/xhr_streaming", "").unwrap();
        assert_eq!(
            t,
            Target {
                key: "app-key".into(),
                session: "123/abcdefgh".into(),
                kind: Kind::Streaming
            }
        );
        assert_eq!(
            parse_target("/pusher/app/k/0/a1/xhr", "").unwrap().kind,
            Kind::Polling
        );
        assert_eq!(
            parse_target("/app/k/9/zz/xhr_send", "").unwrap().kind,
            Kind::Send
        );
        let t = parse_target("/ws/custom/app/a%20b/1/x/xhr", "/ws").unwrap();
        assert_eq!(t.key, "a b");
        for bad in [
            "/pusher/app/k/1/abc/other",
            "/pusher/app/k/x1/abc/xhr",
            "/pusher/app/k/1/a-b/xhr",
            "/pusher/app//1/abc/xhr",
            "/pusher/apps/k/1/abc/xhr",
            "/app/k",
            "/app/k/1/xhr",
            "xhr",
            "",
            "/pusher/app/k/123456789/abc/xhr",
        ] {
            assert_eq!(parse_target(bad, ""), None, "{bad}");
        }
        assert_eq!(parse_target("/pusher/app/k/1/abc/xhr", "/ws"), None);
    }

    #[test]
    fn encodes_chunks_as_pusher_js_reads_them() {
        let mut out = Vec::new();
        put_array(
            &mut out,
            [
                &br#"{"event":"e","data":"{\"a\":1}"}"#[..],
                &b"{\"event\":\"x\"}"[..],
            ],
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "a[\"{\\\"event\\\":\\\"e\\\",\\\"data\\\":\\\"{\\\\\\\"a\\\\\\\":1}\\\"}\",\"{\\\"event\\\":\\\"x\\\"}\"]\n"
        );
        // One line, whose payload is an array of the original texts.
        let line = std::str::from_utf8(&out).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        let parsed: Vec<String> = serde_json::from_str(&line[1..]).unwrap();
        assert_eq!(parsed[0], r#"{"event":"e","data":"{\"a\":1}"}"#);
        let mut c = Vec::new();
        put_close(&mut c, codes::RECONNECT);
        let text = String::from_utf8(c).unwrap();
        assert!(
            text.starts_with("c[4200,\"") && text.ends_with("\"]\n"),
            "{text}"
        );
        let parsed: (u16, String) = serde_json::from_str(&text[1..]).unwrap();
        assert_eq!(parsed.0, 4200);
        let mut empty = Vec::new();
        put_array(&mut empty, std::iter::empty());
        assert_eq!(empty, b"a[]\n");
    }

    #[test]
    fn send_bodies_are_arrays_of_strings() {
        assert_eq!(
            parse_send(br#"["{\"event\":\"pusher:ping\",\"data\":{}}"]"#).unwrap(),
            vec![r#"{"event":"pusher:ping","data":{}}"#.to_owned()]
        );
        assert!(parse_send(b"[]").unwrap().is_empty());
        for bad in [&b"{}"[..], b"[1]", b"not json", b""] {
            assert!(parse_send(bad).is_err());
        }
    }
}
