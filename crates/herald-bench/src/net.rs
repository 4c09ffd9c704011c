//! The server as seen from outside: a Pusher WebSocket client and the errors a run can meet.

use crate::arrival::Stamped;
use crate::sign;
use crate::tls::{Tls, Wire};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Something that went wrong, by kind (for counting) with a detail (for the first few samples).
#[derive(Debug, Clone)]
pub struct BenchError {
    pub kind: &'static str,
    pub detail: String,
}

impl BenchError {
    pub fn new(kind: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            kind,
            detail: detail.to_string(),
        }
    }
}

/// Errors of a run counted by kind, with a few samples of each.
#[derive(Debug, Default)]
pub struct ErrorLog(Mutex<BTreeMap<&'static str, (u64, Vec<String>)>>);

impl ErrorLog {
    pub fn add(&self, e: &BenchError) {
        let mut m = self.0.lock().expect("not poisoned");
        let entry = m.entry(e.kind).or_default();
        entry.0 += 1;
        if entry.1.len() < 3 {
            entry.1.push(e.detail.chars().take(300).collect());
        }
    }
    pub fn total(&self) -> u64 {
        self.0
            .lock()
            .expect("not poisoned")
            .values()
            .map(|(n, _)| n)
            .sum()
    }
    pub fn to_json(&self) -> serde_json::Value {
        let m = self.0.lock().expect("not poisoned");
        m.iter()
            .map(|(k, (n, samples))| {
                (
                    k.to_string(),
                    serde_json::json!({ "count": n, "samples": samples }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Where and as whom to connect.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub app_id: String,
    pub key: String,
    pub secret: String,
    /// Client sockets bind to 127.0.0.1 ..= 127.0.0.N in turn (0: let the kernel choose).
    source_ips: u32,
    next_source: AtomicU32,
    ws_url: String,
    /// WebSocket connections go to these addresses in turn (empty: `addr`).
    ws_addrs: Vec<SocketAddr>,
    next_ws: AtomicU32,
    /// HTTP API publishers spread over these addresses (empty: `addr`).
    api_addrs: Vec<SocketAddr>,
    /// `--tls`: every connection inside TLS.
    tls: Tls,
    /// `--transport`: WebSocket or one of the HTTP fallback transports.
    pub transport: crate::xhr::Transport,
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        host: &str,
        app_id: &str,
        key: &str,
        secret: &str,
        source_ips: u32,
    ) -> Self {
        // Spreading source addresses only works when the server is on the loopback network.
        let source_ips = if addr.ip().is_loopback() && addr.is_ipv4() {
            source_ips.min(254)
        } else {
            0
        };
        let port = addr.port();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Self {
            addr,
            host: format!("{host}:{port}"),
            app_id: app_id.into(),
            key: key.into(),
            secret: secret.into(),
            source_ips,
            next_source: AtomicU32::new(0),
            ws_addrs: Vec::new(),
            next_ws: AtomicU32::new(0),
            api_addrs: Vec::new(),
            tls: Tls::default(),
            transport: crate::xhr::Transport::Ws,
            ws_url: format!("ws://{host}:{port}/app/{key}?protocol=7&client=herald-bench&version=0.1&flash=false"),
        }
    }

    /// Opens every connection (WebSocket and HTTP API) inside TLS.
    pub fn with_tls(mut self, tls: Tls) -> Self {
        if tls.on() {
            self.ws_url = self.ws_url.replacen("ws://", "wss://", 1);
        }
        self.tls = tls;
        self
    }

    /// Sessions over this transport instead of WebSocket.
    pub fn with_transport(mut self, transport: crate::xhr::Transport) -> Self {
        self.transport = transport;
        self
    }

    /// How connections are opened (plain or TLS).
    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// Spreads WebSocket connections over several servers (nodes of one cluster).
    pub fn with_ws_addrs(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.ws_addrs = addrs;
        self
    }

    /// Spreads HTTP API publishers over several servers (nodes of one cluster).
    pub fn with_api_addrs(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.api_addrs = addrs;
        self
    }

    /// How many WebSocket endpoints (nodes) connections are spread over (at least 1).
    pub fn ws_nodes(&self) -> usize {
        self.ws_addrs.len().max(1)
    }

    /// The WebSocket endpoint of node `i` (taken modulo their number).
    pub fn ws_addr(&self, i: usize) -> SocketAddr {
        if self.ws_addrs.is_empty() {
            self.addr
        } else {
            self.ws_addrs[i % self.ws_addrs.len()]
        }
    }

    /// How many HTTP API endpoints publishers are spread over (at least 1).
    pub fn api_nodes(&self) -> usize {
        self.api_addrs.len().max(1)
    }

    /// The HTTP API endpoint `i` (taken modulo their number).
    pub fn api_addr(&self, i: usize) -> SocketAddr {
        if self.api_addrs.is_empty() {
            self.addr
        } else {
            self.api_addrs[i % self.api_addrs.len()]
        }
    }

    /// A TCP connection for a WebSocket: to the next of `ws_addrs`, or to `addr`; with
    /// `recv_buffer`, that receive buffer (a client that reads slowly fills it sooner).
    pub async fn ws_tcp(&self, recv_buffer: Option<u32>) -> Result<TcpStream, BenchError> {
        let i = self.next_ws.fetch_add(1, Ordering::Relaxed) as usize;
        self.ws_tcp_at(i, recv_buffer).await
    }

    /// A TCP connection for a WebSocket to node `node` of `ws_addrs` (modulo their number).
    pub async fn ws_tcp_at(
        &self,
        node: usize,
        recv_buffer: Option<u32>,
    ) -> Result<TcpStream, BenchError> {
        self.tcp_to(self.ws_addr(node), recv_buffer).await
    }

    /// A TCP connection to `addr` from the next source address; with `recv_buffer`, that
    /// receive buffer.
    pub async fn tcp_to(
        &self,
        addr: SocketAddr,
        recv_buffer: Option<u32>,
    ) -> Result<TcpStream, BenchError> {
        let err = |e: std::io::Error| BenchError::new("tcp_connect", e);
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).map_err(err)?;
        }
        if self.source_ips > 0 {
            let n = self.next_source.fetch_add(1, Ordering::Relaxed) % self.source_ips;
            let ip = Ipv4Addr::new(127, 0, 0, 1 + n as u8);
            socket
                .bind(SocketAddr::new(IpAddr::V4(ip), 0))
                .map_err(|e| BenchError::new("tcp_bind", e))?;
        }
        let stream = socket.connect(addr).await.map_err(err)?;
        stream.set_nodelay(true).map_err(err)?;
        Ok(stream)
    }

    pub fn source_ips(&self) -> u32 {
        self.source_ips
    }
}

/// One frame from the server, borrowed from the message text.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    #[serde(borrow, default)]
    pub channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

impl<'a> Frame<'a> {
    /// `data` as text: the decoded string when it is a JSON string, else the raw JSON.
    pub fn data_str(&self) -> Option<Cow<'a, str>> {
        let raw = self.data?.get();
        if raw.starts_with('"') {
            match serde_json::from_str::<&str>(raw) {
                Ok(s) => Some(Cow::Borrowed(s)),
                Err(_) => serde_json::from_str::<String>(raw).ok().map(Cow::Owned),
            }
        } else {
            Some(Cow::Borrowed(raw))
        }
    }
}

/// A Pusher protocol 7 client connection.
pub struct Client {
    ws: Io,
    pub socket_id: String,
    /// How long the TCP connect took (a dropped SYN shows as 1 s, 3 s, 7 s: the retries).
    pub tcp_connect: Duration,
}

/// What a client's session runs on. The WebSocket stays inline: it is the common case, and the
/// enum is no larger than the stream it holds.
#[allow(clippy::large_enum_variant)]
enum Io {
    Ws(WebSocketStream<Wire<Stamped>>),
    Http(Box<crate::xhr::Session>),
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: a run holds tens of thousands of these.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

impl Client {
    /// Connects and waits for `pusher:connection_established`.
    pub async fn connect(target: &Target) -> Result<Client, BenchError> {
        Self::connect_with(target, None).await
    }

    /// [`Client::connect`] to node `node` of the WebSocket endpoints (None: the next in turn).
    pub async fn connect_at(target: &Target, node: Option<usize>) -> Result<Client, BenchError> {
        Self::connect_on(target, node, None).await
    }

    /// [`Client::connect`] with a receive buffer of `recv_buffer` bytes.
    pub async fn connect_with(
        target: &Target,
        recv_buffer: Option<u32>,
    ) -> Result<Client, BenchError> {
        Self::connect_on(target, None, recv_buffer).await
    }

    async fn connect_on(
        target: &Target,
        node: Option<usize>,
        recv_buffer: Option<u32>,
    ) -> Result<Client, BenchError> {
        let t0 = std::time::Instant::now();
        if target.transport != crate::xhr::Transport::Ws {
            let session = crate::xhr::Session::open(target, target.transport).await?;
            let client = Client {
                ws: Io::Http(Box::new(session)),
                socket_id: String::new(),
                tcp_connect: t0.elapsed(),
            };
            return Self::established(client).await;
        }
        let tcp = match node {
            Some(n) => target.ws_tcp_at(n, recv_buffer).await?,
            None => target.ws_tcp(recv_buffer).await?,
        };
        let tcp_connect = t0.elapsed();
        let stream = target.tls.wrap(Stamped::new(tcp)).await?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            target.ws_url.as_str(),
            stream,
            Some(ws_config()),
        )
        .await
        .map_err(|e| BenchError::new("ws_handshake", e))?;
        let client = Client {
            ws: Io::Ws(ws),
            socket_id: String::new(),
            tcp_connect,
        };
        Self::established(client).await
    }

    /// Waits for `pusher:connection_established`.
    async fn established(mut client: Client) -> Result<Client, BenchError> {
        let established = client
            .next(|f| match f.event.as_ref() {
                "pusher:connection_established" => {
                    let data = f.data_str().unwrap_or_default();
                    #[derive(Deserialize)]
                    struct Est {
                        socket_id: String,
                    }
                    serde_json::from_str::<Est>(&data)
                        .map(|e| e.socket_id)
                        .map_err(|e| {
                            BenchError::new("protocol", format!("connection_established: {e}"))
                        })
                }
                other => Err(BenchError::new(
                    "connect_refused",
                    format!("{other}: {}", f.data_str().unwrap_or_default()),
                )),
            })
            .await??;
        client.socket_id = established;
        Ok(client)
    }

    /// From now on, note when each read's bytes reached the socket ([`Client::last_arrival_us`]).
    pub fn stamp_arrivals(&mut self) -> Result<(), BenchError> {
        // Over HTTP there is no arrival stamp: the latency is taken when the frame is read.
        let Io::Ws(ws) = &mut self.ws else {
            return Ok(());
        };
        ws.get_mut()
            .inner_mut()
            .stamp_arrivals()
            .map_err(|e| BenchError::new("so_timestamp", e))
    }

    /// When the bytes of the frame just returned by [`Client::next`] reached the socket (µs
    /// since the epoch), once [`Client::stamp_arrivals`] was called.
    pub fn last_arrival_us(&self) -> Option<u64> {
        match &self.ws {
            Io::Ws(ws) => ws.get_ref().inner().last_arrival_us(),
            Io::Http(_) => None,
        }
    }

    pub async fn send_text(&mut self, text: String) -> Result<(), BenchError> {
        let ws = match &mut self.ws {
            Io::Ws(ws) => ws,
            Io::Http(s) => return s.send_text(&text).await,
        };
        ws.send(Message::text(text))
            .await
            .map_err(|e| BenchError::new("ws_send", e))
    }

    /// The next Pusher frame, given to `f` as soon as it is parsed. Answers `pusher:ping` itself.
    pub async fn next<R>(&mut self, mut f: impl FnMut(&Frame<'_>) -> R) -> Result<R, BenchError> {
        let ws = match &mut self.ws {
            Io::Ws(ws) => ws,
            Io::Http(s) => return next_http(s, f).await,
        };
        loop {
            let msg = match ws.next().await {
                None => return Err(BenchError::new("closed", "connection ended")),
                Some(Err(e)) => return Err(BenchError::new("ws_read", e)),
                Some(Ok(m)) => m,
            };
            match msg {
                Message::Text(text) => {
                    let frame: Frame<'_> = serde_json::from_str(text.as_str())
                        .map_err(|e| BenchError::new("protocol", format!("{e}: {text}")))?;
                    if frame.event == "pusher:ping" {
                        ws.send(Message::text(r#"{"event":"pusher:pong","data":{}}"#))
                            .await
                            .map_err(|e| BenchError::new("ws_send", e))?;
                        continue;
                    }
                    return Ok(f(&frame));
                }
                Message::Close(frame) => {
                    let detail = frame
                        .map(|c| format!("{} {}", u16::from(c.code), c.reason))
                        .unwrap_or_default();
                    return Err(BenchError::new(
                        "closed",
                        format!("server closed: {detail}"),
                    ));
                }
                _ => continue,
            }
        }
    }

    /// Subscribes (signing for private and presence channels) and waits for success.
    /// Returns the `data` of `pusher_internal:subscription_succeeded`.
    pub async fn subscribe(
        &mut self,
        target: &Target,
        channel: &str,
        channel_data: Option<&str>,
    ) -> Result<String, BenchError> {
        let needs_auth = channel.starts_with("private-") || channel.starts_with("presence-");
        let auth = if needs_auth {
            sign::channel_auth(
                &target.key,
                &target.secret,
                &self.socket_id,
                channel,
                channel_data,
            )
        } else {
            String::new()
        };
        let mut data = serde_json::json!({ "channel": channel, "auth": auth });
        if let Some(cd) = channel_data {
            data["channel_data"] = cd.into();
        }
        self.send_text(
            serde_json::json!({ "event": "pusher:subscribe", "data": data }).to_string(),
        )
        .await?;
        loop {
            let outcome = self
                .next(|f| match f.event.as_ref() {
                    "pusher_internal:subscription_succeeded"
                        if f.channel.as_deref() == Some(channel) =>
                    {
                        Some(Ok(f.data_str().unwrap_or_default().into_owned()))
                    }
                    "pusher:subscription_error" | "pusher:error" => Some(Err(BenchError::new(
                        "subscribe_error",
                        format!("{}: {}", f.event, f.data_str().unwrap_or_default()),
                    ))),
                    _ => None,
                })
                .await?;
            if let Some(r) = outcome {
                return r;
            }
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), BenchError> {
        let msg =
            serde_json::json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } });
        self.send_text(msg.to_string()).await
    }

    /// Closes with the WebSocket close handshake, waiting at most two seconds for the server.
    /// Ok once the server has answered the close and ended the stream; `close_timeout` when it
    /// did not within the two seconds, `frame_after_close` when it sent anything after its close
    /// frame, `close_failed` when sending the close or reading up to the end failed otherwise.
    pub async fn close(self) -> Result<(), BenchError> {
        let mut ws = match self.ws {
            Io::Ws(ws) => ws,
            // The fallback transports have no close: the session is abandoned, as pusher-js
            // does, and the server reaps it after its timeout.
            Io::Http(_) => return Ok(()),
        };
        tokio::time::timeout(CLOSE_WAIT, async {
            ws.close(None)
                .await
                .map_err(|e| BenchError::new("close_failed", e))?;
            // What came in meanwhile, for the error's detail (the server's close frame and
            // what it sent around it say more than the protocol error alone).
            let mut seen: Vec<String> = Vec::new();
            loop {
                match ws.next().await {
                    // The stream ends once the close handshake is complete.
                    None => return Ok(()),
                    Some(Ok(m)) => {
                        if seen.len() == 3 {
                            seen.remove(0);
                        }
                        seen.push(format!("{m:?}").chars().take(120).collect());
                    }
                    Some(Err(e)) => {
                        // A frame after the server's own close frame, which RFC 6455 (5.5.1)
                        // forbids, is told apart from a close that broke off.
                        let kind = match e {
                            WsError::Protocol(ProtocolError::ReceivedAfterClosing) => {
                                "frame_after_close"
                            }
                            _ => "close_failed",
                        };
                        return Err(BenchError::new(
                            kind,
                            format!("{e} (after: {})", seen.join(", ")),
                        ));
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(BenchError::new(
                "close_timeout",
                format!("no close handshake within {CLOSE_WAIT:?}"),
            ))
        })
    }
}

/// [`Client::next`] over an HTTP fallback session.
async fn next_http<R>(
    s: &mut crate::xhr::Session,
    mut f: impl FnMut(&Frame<'_>) -> R,
) -> Result<R, BenchError> {
    loop {
        let text = s.next_text().await?;
        let frame: Frame<'_> = serde_json::from_str(&text)
            .map_err(|e| BenchError::new("protocol", format!("{e}: {text}")))?;
        if frame.event == "pusher:ping" {
            s.send_text(r#"{"event":"pusher:pong","data":{}}"#).await?;
            continue;
        }
        return Ok(f(&frame));
    }
}

/// How long [`Client::close`] waits for the server's side of the close handshake.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Connects and subscribes to one channel within `limit`.
pub async fn join(
    target: &Target,
    channel: &str,
    channel_data: Option<&str>,
    limit: Duration,
) -> Result<(Client, String), BenchError> {
    join_at(target, None, channel, channel_data, limit).await
}

/// [`join`] on node `node` of the WebSocket endpoints (None: the next in turn).
pub async fn join_at(
    target: &Target,
    node: Option<usize>,
    channel: &str,
    channel_data: Option<&str>,
    limit: Duration,
) -> Result<(Client, String), BenchError> {
    tokio::time::timeout(limit, async {
        let mut c = Client::connect_at(target, node).await?;
        let data = c.subscribe(target, channel, channel_data).await?;
        Ok((c, data))
    })
    .await
    .unwrap_or_else(|_| {
        Err(BenchError::new(
            "timeout",
            format!("connect+subscribe over {limit:?}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_data_is_decoded_when_a_string() {
        let f: Frame =
            serde_json::from_str(r#"{"event":"e","channel":"c","data":"1:2:xx"}"#).unwrap();
        assert_eq!(f.data_str().as_deref(), Some("1:2:xx"));
        assert!(matches!(f.data_str(), Some(Cow::Borrowed(_))));
        let f: Frame = serde_json::from_str(r#"{"event":"e","data":"{\"a\":1}"}"#).unwrap();
        assert_eq!(f.data_str().as_deref(), Some(r#"{"a":1}"#));
        let f: Frame = serde_json::from_str(r#"{"event":"e","data":{"a":1}}"#).unwrap();
        assert_eq!(f.data_str().as_deref(), Some(r#"{"a":1}"#));
        let f: Frame = serde_json::from_str(r#"{"event":"e"}"#).unwrap();
        assert_eq!(f.data_str(), None);
    }

    /// A client and the server's end of one WebSocket over loopback (no Pusher handshake).
    async fn ws_pair() -> (Client, WebSocketStream<TcpStream>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, server) = tokio::join!(
            async {
                let s = Wire::Plain(Stamped::new(TcpStream::connect(addr).await.unwrap()));
                let url = format!("ws://{addr}/");
                tokio_tungstenite::client_async_with_config(url, s, Some(ws_config()))
                    .await
                    .unwrap()
                    .0
            },
            async {
                tokio_tungstenite::accept_async(l.accept().await.unwrap().0)
                    .await
                    .unwrap()
            }
        );
        let client = Client {
            ws: Io::Ws(client),
            socket_id: String::new(),
            tcp_connect: Duration::ZERO,
        };
        (client, server)
    }

    #[tokio::test]
    async fn close_tells_a_completed_handshake_from_a_timeout_and_a_reset() {
        // The server answers the close (tungstenite replies while reading) and ends the stream.
        let (client, mut server) = ws_pair().await;
        let answering = tokio::spawn(async move { while let Some(Ok(_)) = server.next().await {} });
        assert!(client.close().await.is_ok());
        answering.await.unwrap();

        // The server never reads, so never answers: the client gives up after CLOSE_WAIT.
        let (client, server) = ws_pair().await;
        let t0 = std::time::Instant::now();
        let e = client.close().await.unwrap_err();
        assert_eq!(e.kind, "close_timeout", "{e:?}");
        assert!(t0.elapsed() >= CLOSE_WAIT);
        drop(server);

        // The server answers the close, then sends a text frame after its close frame.
        let (client, server) = ws_pair().await;
        let mut raw = server.into_inner();
        let sending = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 64];
            let _ = raw.read(&mut buf).await;
            // Unmasked server frames: close (1000), then text "x".
            raw.write_all(&[0x88, 0x02, 0x03, 0xe8, 0x81, 0x01, b'x'])
                .await
                .unwrap();
            raw
        });
        let e = client.close().await.unwrap_err();
        assert_eq!(e.kind, "frame_after_close", "{e:?}");
        drop(sending.await.unwrap());

        // The server drops the connection without a close handshake.
        let (client, server) = ws_pair().await;
        drop(server);
        let e = client.close().await.unwrap_err();
        assert_eq!(e.kind, "close_failed", "{e:?}");
    }

    #[test]
    fn source_addresses_spread_only_on_loopback() {
        let t = Target::new(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1",
            "a",
            "k",
            "s",
            254,
        );
        assert_eq!(t.source_ips(), 254);
        let t = Target::new(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1",
            "a",
            "k",
            "s",
            1000,
        );
        assert_eq!(t.source_ips(), 254);
        let t = Target::new("[::1]:1".parse().unwrap(), "::1", "a", "k", "s", 254);
        assert_eq!(t.source_ips(), 0);
    }
}
