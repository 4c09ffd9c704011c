//! The server port: accepts TCP (or TLS) connections, reads the first request head, answers
//! WebSocket upgrades itself and hands every other connection to the HTTP router (hyper).
//!
//! Upgrades skip the HTTP stack on purpose: a WebSocket connection then costs its session and
//! nothing else (no router clone, no hyper connection state kept alive underneath it).

use crate::session::{self, ConnectParams};
use crate::sinks::metrics::Metrics;
use crate::transport::capacity::{Capacity, Held};
use crate::transport::fallback;
use crate::transport::lean_tls::LeanTls;
use crate::transport::socket;
use crate::transport::stream::{IntoSession, Prefixed, Transport};
use crate::transport::tls::Acceptor;
use axum::Router;
use herald_protocol::wsdeflate::{self, Agreement};
use herald_protocol::wsframe::{self, Upgrade};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A request head larger than this is left to hyper, which refuses it.
const MAX_HEAD: usize = 16 * 1024;
/// A client has this long to send its first request head (and, with TLS, to finish the handshake).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The answer to an upgrade during the drain: a refused handshake sends clients to their
/// reconnect back-off (as a closed port would), where a 4200 close would bring them straight back.
const DRAINING_UPGRADE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 47\r\nConnection: close\r\n\r\nServer is shutting down: retry on another node\n";
/// What the first request head asks for.
enum Head {
    /// A WebSocket upgrade; `used` bytes of the buffer were the head.
    Upgrade {
        accept: String,
        /// `permessage-deflate`, when the client offered it and the server accepts it.
        deflate: Option<Agreement>,
        target: String,
        forwarded_https: bool,
        used: usize,
    },
    /// A request under the HTTP fallback transports; `used` bytes of the buffer were the head.
    Fallback {
        req: Box<fallback::Request>,
        used: usize,
    },
    /// Anything else, for the HTTP router.
    Http,
}

/// Reads the first request head. `compression`: whether the server accepts `permessage-deflate`
/// (and with context takeover when `Some(true)`); `prefix`: `server.path_prefix`.
fn inspect(buf: &[u8], compression: Option<bool>, prefix: &str) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return None,
        // Too large or malformed: hyper answers it with the right status.
        _ => return Some(Head::Http),
    };
    let upgrade = wsframe::check_upgrade(
        req.method.unwrap_or(""),
        req.headers.iter().map(|h| (h.name, h.value)),
    );
    Some(match upgrade {
        Upgrade::No => match fallback_request(&req, prefix) {
            Some(req) => Head::Fallback {
                req: Box::new(req),
                used,
            },
            None => Head::Http,
        },
        Upgrade::Yes { accept } => Head::Upgrade {
            accept,
            deflate: compression.and_then(|takeover| {
                let offers = req.headers.iter().filter_map(|h| {
                    h.name
                        .eq_ignore_ascii_case("sec-websocket-extensions")
                        .then_some(h.value)
                });
                wsdeflate::negotiate(offers, takeover)
            }),
            target: req.path.unwrap_or("/").to_owned(),
            forwarded_https: forwarded_https(req.headers.iter().map(|h| (h.name, h.value))),
            used,
        },
    })
}

/// The parts of a request under the fallback transports' paths that serving it needs.
fn fallback_request(req: &httparse::Request, prefix: &str) -> Option<fallback::Request> {
    let target = req.path?;
    let (path, query) = match target.find('?') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    };
    let parsed = fallback::parse_target(path, prefix)?;
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let connection = header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    // HTTP/1.1 keeps the connection unless told otherwise; 1.0 only when asked.
    let keep_alive = if req.version == Some(1) {
        !connection.contains("close")
    } else {
        connection.contains("keep-alive")
    };
    let content_length = match header("content-length") {
        None => 0,
        // Unparseable: more than any limit, so it is refused.
        Some(v) => v.parse().unwrap_or(usize::MAX),
    };
    Some(fallback::Request {
        method: req.method.unwrap_or("").to_owned(),
        target: parsed,
        query: query.to_owned(),
        origin: header("origin"),
        request_headers: header("access-control-request-headers"),
        content_length,
        chunked: header("transfer-encoding").is_some(),
        keep_alive,
        tls: forwarded_https(req.headers.iter().map(|h| (h.name, h.value))),
    })
}

/// `X-Forwarded-Proto: https` from a TLS-terminating proxy.
pub fn forwarded_https<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> bool {
    headers.into_iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("x-forwarded-proto") && v.trim_ascii().eq_ignore_ascii_case(b"https")
    })
}

/// Splits a request target into what a WebSocket session needs: the app key of
/// `{prefix}/app/{key}` (`None` for any other path) and the `protocol` query parameter.
pub fn route(target: &str, prefix: &str) -> (Option<String>, Option<String>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let key = path
        .strip_prefix(prefix)
        .and_then(|p| p.strip_prefix("/app/"))
        .filter(|k| !k.is_empty() && !k.contains('/'))
        .map(|k| {
            percent_encoding::percent_decode_str(k)
                .decode_utf8_lossy()
                .into_owned()
        });
    let query = herald_protocol::sign::decode_query(query);
    let protocol = herald_protocol::sign::query_param(&query, "protocol").map(str::to_owned);
    (key, protocol)
}

/// What the server port needs: the session handle for WebSocket upgrades, and the router for
/// everything else.
#[derive(Clone)]
pub struct Port {
    pub session: Arc<session::Ctx>,
    /// Mounted under this path (`server.path_prefix`).
    pub path_prefix: Arc<str>,
    pub tls: Option<Acceptor>,
    pub router: Router,
    /// Open sockets on this port and the limit past which upgrades are refused.
    pub capacity: Arc<Capacity>,
    /// Sessions on the HTTP fallback transports.
    pub fallback: Arc<fallback::Sessions>,
}

/// Everything an accepted connection needs, shared by all of them.
#[derive(Clone)]
struct Ctx {
    session: Arc<session::Ctx>,
    path_prefix: Arc<str>,
    tls: bool,
    router: Router,
    stop: CancellationToken,
    http: TaskTracker,
    capacity: Arc<Capacity>,
    fallback: Arc<fallback::Sessions>,
}

/// Accepts until `stop`, then lets open HTTP connections finish their request in flight.
/// WebSocket sessions are tracked by the `Drain` and closed by the drain. While the drain runs
/// (before `stop`), new requests are still answered: the API and `/readyz` with 503, upgrades
/// with a refusal (`DRAINING_UPGRADE`).
///
/// Each wake-up takes every connection the kernel has queued: the loop runs outside tokio's
/// cooperative budget, which would otherwise send it to the back of the run queue after 128
/// accepts, behind every task the burst just spawned. A thread of its own for the loop was
/// measured and not adopted (BENCHMARKS.md, "Accepting under load"): no overflow and no
/// difference in how long connections waited in the queue under the mixed load of issue 19
/// (row 16) or a flat-out fan-out, and about 600 more bytes per held connection.
pub async fn serve(listener: TcpListener, port: Port, stop: CancellationToken) {
    let Port {
        session,
        path_prefix,
        tls,
        router,
        capacity,
        fallback,
    } = port;
    let ctx = Ctx {
        session,
        path_prefix,
        tls: tls.is_some(),
        router,
        stop: stop.clone(),
        http: TaskTracker::new(),
        capacity,
        fallback,
    };
    tokio::task::unconstrained(accept_loop(listener, ctx.clone(), tls)).await;
    ctx.http.close();
    ctx.http.wait().await;
}

/// Accepts until `stop`, spawning a task for each connection.
async fn accept_loop(listener: TcpListener, ctx: Ctx, tls: Option<Acceptor>) {
    let metrics = ctx.session.metrics.clone();
    let stop = ctx.stop.clone();
    let mut errors = AcceptErrors::default();
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    errors.failed(&e, &metrics, "server").await;
                    continue;
                }
            },
        };
        let Some(held) = ctx.capacity.hold() else {
            // Past even the HTTP spare: close before reading, keeping descriptors for the rest.
            metrics.refused("server", "capacity");
            continue;
        };
        // Small frames must leave at once: latency matters more than packet count here.
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        match &tls {
            None => {
                tokio::spawn(connection(tcp, ctx, held));
            }
            Some(acceptor) => {
                let config = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HEAD_TIMEOUT, LeanTls::accept(tcp, config)).await {
                        Ok(Ok(stream)) => connection(stream, ctx, held).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
    // Closes the port.
    drop(listener);
}

async fn read_head<S: Transport>(
    io: &mut S,
    buf: &mut Vec<u8>,
    compression: Option<bool>,
    prefix: &str,
) -> Option<Head> {
    loop {
        // A request head may already be waiting (a second request on a kept connection).
        if !buf.is_empty() {
            if let Some(head) = inspect(buf, compression, prefix) {
                return Some(head);
            }
        }
        match io.read_into(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn connection<S: IntoSession>(mut io: S, ctx: Ctx, held: Held) {
    let mut buf = Vec::new();
    let compression = {
        let s = &ctx.session;
        s.compression.map(|_| s.compression_context_takeover)
    };
    let head = loop {
        let head = match Box::pin(tokio::time::timeout(
            HEAD_TIMEOUT,
            read_head(&mut io, &mut buf, compression, &ctx.path_prefix),
        ))
        .await
        {
            Ok(Some(h)) => h,
            // Closed or silent before a whole request head: nothing to answer.
            _ => return,
        };
        let Head::Fallback { req, used } = head else {
            break head;
        };
        // Served here, outside hyper, like upgrades: a held streaming request then costs its
        // session and socket only. The connection may carry further requests.
        buf.drain(..used);
        let req = *req;
        let tls = req.tls || ctx.tls;
        let over = ctx.capacity.over_ws_limit();
        let after =
            Box::pin(
                ctx.fallback
                    .serve(&mut io, &mut buf, fallback::Request { tls, ..req }, over),
            )
            .await;
        if matches!(after, fallback::After::Close) {
            return;
        }
        if buf.is_empty() {
            buf = Vec::new();
        }
    };
    match head {
        Head::Upgrade {
            accept,
            deflate,
            target,
            forwarded_https,
            used,
        } => {
            let Ctx {
                session,
                path_prefix,
                tls,
                capacity,
                ..
            } = ctx;
            if session.drain.draining() {
                let _ = io.write_all(DRAINING_UPGRADE).await;
                let _ = io.shutdown().await;
                return;
            }
            if io
                .write_all(&wsframe::switching_protocols_with(
                    &accept,
                    deflate.map(|a| a.header_value()).as_deref(),
                ))
                .await
                .is_err()
                || io.flush().await.is_err()
            {
                return;
            }
            // Bytes after the head already belong to the WebSocket.
            buf.drain(..used);
            if buf.is_empty() {
                buf = Vec::new();
            }
            let (key, protocol) = route(&target, &path_prefix);
            let params = ConnectParams {
                path_ok: key.is_some(),
                key,
                protocol,
                tls: forwarded_https || tls,
            };
            if capacity.over_ws_limit() {
                session.metrics.refused("server", "capacity");
                return socket::serve_refusal(io, herald_protocol::codes::OVER_CAPACITY).await;
            }
            match session::admit(&session, &params) {
                // A task of its own: this one's state (head parsing, the HTTP branch) is not
                // carried for the connection's whole life.
                Ok(conn) => {
                    let io = io.into_session(&session.metrics, &conn);
                    drop(tokio::spawn(socket::run(
                        io, buf, session, conn, held, deflate,
                    )));
                }
                Err(code) => socket::serve_refusal(io, code).await,
            }
        }
        // Boxed: hyper's connection state would otherwise be part of every WebSocket's task.
        // (Fallback requests are served in the loop above and never get here.)
        Head::Http | Head::Fallback { .. } => {
            Box::pin(http(io, buf, ctx)).await;
            drop(held);
        }
    }
}

/// Failed accepts (usually EMFILE: out of descriptors): counted, logged at most once per
/// interval with how many there were, and backed off so the loop does not spin.
#[derive(Default)]
struct AcceptErrors {
    since_log: u64,
    last_log: Option<std::time::Instant>,
}

impl AcceptErrors {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    async fn failed(&mut self, e: &std::io::Error, metrics: &Metrics, port: &str) {
        metrics.accept_failed(port);
        self.since_log += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(error = %e, port, failures = self.since_log, "accept failed; backing off");
            self.since_log = 0;
            self.last_log = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connections the metrics port serves at once; more are closed on accept. A scraper and a
/// health checker need a handful.
const METRICS_CONNECTIONS: usize = 64;

/// Serves the metrics port's router: plain HTTP with the same request-head deadline as the
/// server port (silent or slow connections are closed), a bound on open connections, and
/// accept errors backed off and counted. It runs until the process ends, so that health
/// checks answer through the drain.
pub async fn serve_http(listener: TcpListener, router: Router, metrics: Arc<Metrics>) {
    let open = Capacity::new(METRICS_CONNECTIONS, 0);
    let mut errors = AcceptErrors::default();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                errors.failed(&e, &metrics, "metrics").await;
                continue;
            }
        };
        let Some(held) = open.hold() else {
            metrics.refused("metrics", "capacity");
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _held = held;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router));
            let _ = conn.await;
        });
    }
}

/// Serves plain HTTP on a connection whose first bytes (`head`) were already read.
async fn http<S: Transport>(io: S, head: Vec<u8>, ctx: Ctx) {
    let Ctx {
        router, stop, http, ..
    } = ctx;
    let _token = http.token();
    let io = TokioIo::new(Prefixed::new(head, io));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(io, TowerToHyperService::new(router))
        .with_upgrades();
    let mut conn = pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            // Finish the request in flight (answered 503 while draining), then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_app_paths() {
        assert_eq!(
            route("/app/app-key?protocol=7&client=js", ""),
            (Some("app-key".into()), Some("7".into()))
        );
        assert_eq!(route("/app/a%20b", ""), (Some("a b".into()), None));
        assert_eq!(route("/app/", ""), (None, None));
        assert_eq!(
            route("/app/k/extra?protocol=7", ""),
            (None, Some("7".into()))
        );
        assert_eq!(route("/other", ""), (None, None));
        assert_eq!(route("/ws/app/k", "/ws"), (Some("k".into()), None));
        assert_eq!(route("/app/k", "/ws"), (None, None));
    }

    #[test]
    fn the_draining_refusal_is_a_whole_response() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut res = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = res.parse(DRAINING_UPGRADE) else {
            panic!("not a complete response head");
        };
        assert_eq!(res.code, Some(503));
        let len = res
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        assert_eq!(len, Some(DRAINING_UPGRADE.len() - head));
    }

    #[test]
    fn inspects_heads() {
        let ws = b"GET /app/k?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-Proto: https\r\n\r\nEXTRA";
        match inspect(ws, Some(false), "") {
            Some(Head::Upgrade {
                accept,
                deflate: None,
                target,
                forwarded_https,
                used,
            }) => {
                assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                assert_eq!(target, "/app/k?protocol=7");
                assert!(forwarded_https);
                assert_eq!(&ws[used..], b"EXTRA");
            }
            _ => panic!("not seen as an upgrade"),
        }
        assert!(inspect(&ws[..20], None, "").is_none(), "partial head waits");
        assert!(matches!(
            inspect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", None, ""),
            Some(Head::Http)
        ));
        assert!(matches!(
            inspect(b"\x16\x03\x01garbage", None, ""),
            Some(Head::Http)
        ));
        let xhr = b"POST /pusher/app/k/12/abcdefgh/xhr_send?t=1&n=2 HTTP/1.1\r\nHost: x\r\nOrigin: http://page\r\nContent-Length: 4\r\n\r\n[\"\"]";
        match inspect(xhr, None, "") {
            Some(Head::Fallback { req, used }) => {
                assert_eq!(req.target.kind, fallback::Kind::Send);
                assert_eq!(req.target.session, "12/abcdefgh");
                assert_eq!(req.content_length, 4);
                assert_eq!(req.origin.as_deref(), Some("http://page"));
                assert!(req.keep_alive);
                assert_eq!(&xhr[used..], b"[\"\"]");
            }
            _ => panic!("not seen as a fallback request"),
        }
    }

    #[test]
    fn permessage_deflate_is_accepted_when_offered_and_allowed() {
        let ws = |ext: &str| {
            format!("GET /app/k HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n")
        };
        let deflate = |head: &str, compression| match inspect(head.as_bytes(), compression, "") {
            Some(Head::Upgrade { deflate, .. }) => deflate.map(|a| a.header_value()),
            _ => panic!("not seen as an upgrade"),
        };
        let offer = ws("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
        let answer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert_eq!(deflate(&offer, Some(false)).as_deref(), Some(answer));
        assert_eq!(
            deflate(&offer, Some(true)).as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(deflate(&offer, None), None, "compression off");
        assert_eq!(deflate(&ws(""), Some(false)), None, "not offered");
        // Offers may come in several headers; a bad one is declined, the next one taken.
        let two = ws("Sec-WebSocket-Extensions: permessage-deflate; foo\r\nsec-websocket-extensions: permessage-deflate\r\n");
        assert_eq!(deflate(&two, Some(false)).as_deref(), Some(answer));
    }
}
