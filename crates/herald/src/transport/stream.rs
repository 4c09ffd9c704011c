//! The byte streams a WebSocket session runs on: plain TCP shared with the engine for direct
//! writes, TLS, hyper's upgraded connections, and a stream whose first bytes were already read.

use crate::sinks::metrics::{ConnCounters, Metrics};
use crate::transport::lean_tls::LeanTls;
use herald_core::{Conn, Sink};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room reserved for a read once input is waiting.
const READ_CHUNK: usize = 4096;

/// A byte stream a WebSocket session runs on.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Appends input to `buf` once there is some. `buf` gets room only then, so a connection
    /// waiting for its client holds no read buffer (and, being a poll, no future either).
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>>;

    /// `poll_read_into` as a future.
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        std::future::poll_fn(move |cx| self.poll_read_into(cx, buf))
    }

    /// The socket for the engine's direct writes, where the stream allows them.
    fn sink(&self) -> Option<Arc<dyn Sink>> {
        None
    }
}

fn make_room(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Reads from a TCP socket, with no buffer while waiting.
fn tcp_poll_read_into(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(tcp.poll_read_ready(cx))?;
        make_room(buf);
        match tcp.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Readiness outlives the read that drained the socket, so this is the
                // usual way back to waiting: give the room back first.
                if buf.is_empty() {
                    *buf = Vec::new();
                }
            }
            r => return Poll::Ready(r),
        }
    }
}

impl Transport for TcpStream {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        tcp_poll_read_into(self, cx, buf)
    }
}

/// A plain TCP connection shared by its session task (reads, queued writes) and the engine
/// (direct writes while nothing is queued: see `herald_core::Sink`).
pub struct SharedTcp(Arc<TcpSink>);

pub struct TcpSink {
    tcp: TcpStream,
    counters: Arc<ConnCounters>,
}

impl SharedTcp {
    pub fn new(tcp: TcpStream, counters: Arc<ConnCounters>) -> Self {
        Self(Arc::new(TcpSink { tcp, counters }))
    }
}

impl Sink for TcpSink {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        // A plain `send` on the non-blocking socket, without tokio's readiness check: that check
        // reads each subscriber's I/O registration, a cache miss per delivery (3% of the server's
        // CPU in fanout-throughput). If the socket is full, the session task's own write finds
        // out and clears the stale readiness. SIGPIPE is ignored by the Rust runtime: a closed
        // peer is an EPIPE error here.
        let r = socket2::SockRef::from(&self.tcp).send(buf);
        if matches!(r, Ok(n) if n == buf.len()) {
            self.counters.messages_out.inc();
            self.counters.bytes_out.inc_by(buf.len() as u64);
            self.counters.sent_frame(buf);
        }
        r
    }
}

impl Transport for SharedTcp {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        tcp_poll_read_into(&self.0.tcp, cx, buf)
    }

    fn sink(&self) -> Option<Arc<dyn Sink>> {
        Some(self.0.clone())
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.0.tcp.poll_read_ready(cx))?;
            match self.0.tcp.try_read(out.initialize_unfilled()) {
                Ok(n) => {
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.0.tcp.poll_write_ready(cx))?;
            match self.0.tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when the session and the engine have both let go of it.
        Poll::Ready(Ok(()))
    }
}

/// What an accepted stream becomes once its WebSocket session starts.
pub trait IntoSession: Transport {
    type Session: Transport;
    fn into_session(self, metrics: &Metrics, conn: &Conn) -> Self::Session;
}

impl IntoSession for TcpStream {
    type Session = SharedTcp;
    fn into_session(self, metrics: &Metrics, conn: &Conn) -> SharedTcp {
        SharedTcp::new(self, metrics.conn_counters(&conn.app().id))
    }
}

impl IntoSession for LeanTls {
    type Session = Self;
    fn into_session(self, _: &Metrics, _: &Conn) -> Self {
        self
    }
}

impl Transport for LeanTls {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        self.poll_read_plain(cx, buf)
    }
}

/// Streams whose reads need a buffer while waiting.
macro_rules! buffered_transport {
    ($t:ty) => {
        impl Transport for $t {
            fn poll_read_into(
                &mut self,
                cx: &mut Context<'_>,
                buf: &mut Vec<u8>,
            ) -> Poll<io::Result<usize>> {
                make_room(buf);
                tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
            }
        }
    };
}
buffered_transport!(TokioIo<hyper::upgrade::Upgraded>);

/// A stream whose first bytes were already read: replays them, then reads the stream.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = out.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            out.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
