//! A Pusher session over the HTTP fallback transports (`--transport xhr_streaming|xhr_polling`),
//! speaking what pusher-js speaks (docs/fallback-transports.md): a receiving request held open
//! (streaming) or asked again after each answer (polling), and `xhr_send` requests on a kept
//! connection of their own.

use crate::net::{BenchError, Target};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which transport `--transport` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Transport {
    #[default]
    Ws,
    #[value(name = "xhr_streaming")]
    XhrStreaming,
    #[value(name = "xhr_polling")]
    XhrPolling,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::XhrStreaming => "xhr_streaming",
            Transport::XhrPolling => "xhr_polling",
        }
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(0);

/// One fallback session.
pub struct Session {
    streaming: bool,
    host: String,
    /// `/pusher/app/{key}/{server}/{session}`.
    base: String,
    recv: TcpStream,
    rbuf: Vec<u8>,
    /// Polling: bytes of the current answer still to read (`None`: no poll asked).
    body_left: Option<usize>,
    queue: VecDeque<String>,
    addr: std::net::SocketAddr,
}

fn err(kind: &'static str) -> impl Fn(std::io::Error) -> BenchError {
    move |e| BenchError::new(kind, e)
}

/// Reads a response head from `io` into `buf`; returns (status, content length, head length).
async fn read_head(
    io: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(u16, Option<usize>, usize), BenchError> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| BenchError::new("http_head", format!("bad status line: {head}")))?;
            let len = head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            });
            return Ok((status, len, end + 4));
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.map_err(err("http_read"))?;
        if n == 0 {
            return Err(BenchError::new(
                "closed",
                "connection ended in a response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Session {
    /// Opens a session and waits for its first message (`pusher:connection_established`
    /// follows in the queue).
    pub async fn open(target: &Target, transport: Transport) -> Result<Session, BenchError> {
        let n = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let base = format!(
            "/pusher/app/{}/{}/b{:x}x{n:x}",
            target.key,
            n % 1000,
            std::process::id()
        );
        let recv = target.ws_tcp(None).await?;
        let addr = recv.peer_addr().map_err(err("tcp_connect"))?;
        let mut s = Session {
            streaming: transport == Transport::XhrStreaming,
            host: target.host.clone(),
            base,
            recv,
            rbuf: Vec::new(),
            body_left: None,
            queue: VecDeque::new(),
            addr,
        };
        if s.streaming {
            let req = format!(
                "POST {}/xhr_streaming?protocol=7&client=herald-bench&version=0.1 HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                s.base, s.host
            );
            s.recv
                .write_all(req.as_bytes())
                .await
                .map_err(err("http_write"))?;
            let (status, _, used) = read_head(&mut s.recv, &mut s.rbuf).await?;
            if status != 200 {
                return Err(BenchError::new(
                    "connect_refused",
                    format!("xhr_streaming answered {status}"),
                ));
            }
            s.rbuf.drain(..used);
        }
        Ok(s)
    }

    /// The next message text from the server.
    pub async fn next_text(&mut self) -> Result<String, BenchError> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(m);
            }
            if self.streaming {
                self.read_stream().await?;
            } else {
                self.poll().await?;
            }
        }
    }

    async fn read_stream(&mut self) -> Result<(), BenchError> {
        // Whole lines may already be here (read with the response head).
        if !self.rbuf.contains(&b'\n') {
            let mut chunk = vec![0u8; 16 * 1024];
            let n = self.recv.read(&mut chunk).await.map_err(err("http_read"))?;
            if n == 0 {
                return Err(BenchError::new("closed", "the streaming response ended"));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
        let mut start = 0;
        while let Some(i) = self.rbuf[start..].iter().position(|b| *b == b'\n') {
            let line = self.rbuf[start..start + i].to_vec();
            start += i + 1;
            self.line(&line).await?;
        }
        self.rbuf.drain(..start);
        Ok(())
    }

    async fn poll(&mut self) -> Result<(), BenchError> {
        if self.body_left.is_none() {
            let req = format!(
                "POST {}/xhr?protocol=7&client=herald-bench&version=0.1 HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                self.base, self.host
            );
            self.recv
                .write_all(req.as_bytes())
                .await
                .map_err(err("http_write"))?;
            let (status, len, used) = read_head(&mut self.recv, &mut self.rbuf).await?;
            if status != 200 {
                return Err(BenchError::new(
                    "closed",
                    format!("xhr poll answered {status}"),
                ));
            }
            self.rbuf.drain(..used);
            self.body_left = Some(len.unwrap_or(0));
        }
        let len = self.body_left.unwrap_or(0);
        while self.rbuf.len() < len {
            let mut chunk = vec![0u8; 16 * 1024];
            let n = self.recv.read(&mut chunk).await.map_err(err("http_read"))?;
            if n == 0 {
                return Err(BenchError::new("closed", "a poll's answer ended early"));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = self.rbuf.drain(..len).collect();
        self.body_left = None;
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            self.line(line).await?;
        }
        Ok(())
    }

    /// One chunk line: `o` open, `a` messages, `h` heartbeat, `c` close.
    async fn line(&mut self, line: &[u8]) -> Result<(), BenchError> {
        match line.first() {
            Some(b'a') => {
                let msgs: Vec<String> = serde_json::from_slice(&line[1..])
                    .map_err(|e| BenchError::new("protocol", format!("a chunk: {e}")))?;
                self.queue.extend(msgs);
            }
            Some(b'h') if self.streaming => self.send_raw("[]").await?,
            Some(b'c') => {
                return Err(BenchError::new(
                    "closed",
                    format!("server closed: {}", String::from_utf8_lossy(&line[1..])),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends one message text.
    pub async fn send_text(&mut self, text: &str) -> Result<(), BenchError> {
        let body = serde_json::to_string(&[text]).map_err(|e| BenchError::new("protocol", e))?;
        self.send_raw(&body).await
    }

    /// One `xhr_send` on a connection of its own, closed after the answer (as pusher-js in
    /// Node sends: its XMLHttpRequest keeps no connections), so that an idle session holds
    /// only its receiving request.
    async fn send_raw(&mut self, body: &str) -> Result<(), BenchError> {
        let mut io = TcpStream::connect(self.addr)
            .await
            .map_err(err("tcp_connect"))?;
        let _ = io.set_nodelay(true);
        let req = format!(
            "POST {}/xhr_send HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            self.base,
            self.host,
            body.len()
        );
        io.write_all(req.as_bytes())
            .await
            .map_err(err("http_write"))?;
        let mut buf = Vec::new();
        let (status, _, _) = read_head(&mut io, &mut buf).await?;
        if status >= 300 {
            return Err(BenchError::new("xhr_send", format!("answered {status}")));
        }
        Ok(())
    }
}
