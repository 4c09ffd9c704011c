//! TLS on the server port through rustls's unbuffered API: the connection owns its buffers and
//! gives them back as soon as they are empty, so an idle `wss://` connection holds its TLS state
//! (keys, sequence numbers) and no buffer at all.
//!
//! rustls's buffered connection keeps a 4 KiB record buffer for its whole life, and a stream
//! adapter around it needs a read buffer of its own while waiting: about 13 KB per idle
//! connection here (BENCHMARKS.md, "Lean TLS"). Here input gets room only once the socket is
//! readable (as on plain TCP, see `stream::tcp_poll_read_into`), records are decrypted as they
//! arrive, and ciphertext waits in a buffer only while the socket cannot take it.

use std::future::poll_fn;
use std::io;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::server::UnbufferedServerConnection;
use tokio_rustls::rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio_rustls::rustls::ServerConfig;

/// Room reserved for a read once the socket is readable.
const READ_CHUNK: usize = 4096;
/// Most plaintext one write encrypts: ciphertext waiting for a slow client stays this small.
const MAX_WRITE: usize = 64 * 1024;
/// TLS record overhead for `MAX_WRITE` bytes (header, tag, content type, per 16 KiB record),
/// so that encryption rarely needs a second try to size its buffer.
const RECORD_SLACK: usize = 256;

/// A TLS server connection over TCP.
pub struct LeanTls {
    tcp: TcpStream,
    /// Boxed: the state is large, and moves of the stream stay cheap.
    tls: Box<UnbufferedServerConnection>,
    /// Received ciphertext not yet processed: a partial record at most, between reads.
    incoming: Vec<u8>,
    /// Ciphertext for the peer, written from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext decrypted but not yet read through `AsyncRead` (from `plain_at` on).
    plain: Vec<u8>,
    plain_at: usize,
    /// The peer sent `close_notify`: no more input.
    peer_closed: bool,
    /// This side sent `close_notify`.
    closed: bool,
}

/// Where processing the received records stopped.
#[derive(Debug, PartialEq, Eq)]
enum Reached {
    /// Application data may be sent (and more input is needed for anything else).
    Writable,
    /// The handshake needs more input.
    NeedInput,
    /// Both sides closed.
    Closed,
}

/// What to do when application data may be sent.
enum OnWrite<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends what `fill` writes to `out`, growing `out` to the size `fill` asks for if the first
/// guess was short.
fn append<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let at = out.len();
    out.resize(at + guess, 0);
    let n = match fill(&mut out[at..]) {
        Ok(n) => n,
        Err(e) => match needs(&e) {
            Some(required) => {
                out.resize(at + required, 0);
                match fill(&mut out[at..]) {
                    Ok(n) => n,
                    Err(e) => {
                        out.truncate(at);
                        return Err(e);
                    }
                }
            }
            None => {
                out.truncate(at);
                return Err(e);
            }
        },
    };
    out.truncate(at + n);
    Ok(())
}

fn encode_needs(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// Gives a buffer's memory back once it holds nothing.
fn release_if_empty(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = Vec::new();
    }
}

impl LeanTls {
    /// Runs the server side of the handshake on `tcp`. The caller bounds how long it may take.
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let tls = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = Self {
            tcp,
            tls: Box::new(tls),
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            plain: Vec::new(),
            plain_at: 0,
            peer_closed: false,
            closed: false,
        };
        // Data that came with the client's last handshake flight (the first request, usually).
        let mut early = Vec::new();
        loop {
            let reached = s.process(&mut early, OnWrite::Nothing)?;
            poll_fn(|cx| s.poll_send(cx)).await?;
            match reached {
                // TLS 1.3 lets the server send before the client's Finished arrived: wait for
                // it, so that an accepted connection is a whole handshake.
                Reached::Writable if !s.tls.is_handshaking() => break,
                Reached::Writable | Reached::NeedInput => {
                    if s.peer_closed || poll_fn(|cx| s.poll_fill(cx)).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Reached::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
        s.plain = early;
        release_if_empty(&mut s.plain);
        s.incoming.shrink_to_fit();
        Ok(s)
    }

    /// Processes the records in `incoming`: plaintext is appended to `plain`, handshake and
    /// alert records to `outgoing`, and once application data may be sent, `on_write` is done.
    fn process(&mut self, plain: &mut Vec<u8>, on_write: OnWrite<'_>) -> io::Result<Reached> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.tls.process_tls_records(&mut self.incoming);
            let reached = match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        plain.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.outgoing, 0, |b| encode.encode(b), encode_needs)
                        .map_err(tls_error)?;
                    None
                }
                // Encoded records are sent in order from `outgoing` before anything later.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Reached::NeedInput),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    Some(Reached::Closed)
                }
                ConnectionState::WriteTraffic(mut w) => {
                    match on_write {
                        OnWrite::Nothing => {}
                        OnWrite::Encrypt(data) => append(
                            &mut self.outgoing,
                            data.len() + RECORD_SLACK,
                            |b| w.encrypt(data, b),
                            encrypt_needs,
                        )
                        .map_err(tls_error)?,
                        OnWrite::CloseNotify => append(
                            &mut self.outgoing,
                            RECORD_SLACK,
                            |b| w.queue_close_notify(b),
                            encrypt_needs,
                        )
                        .map_err(tls_error)?,
                    }
                    Some(Reached::Writable)
                }
                // Early data is off (the default `max_early_data_size` of 0).
                _ => return Err(tls_error(io::Error::other("unexpected TLS state"))),
            };
            if discard > 0 {
                self.incoming.drain(..discard);
            }
            if let Some(reached) = reached {
                return Ok(reached);
            }
        }
    }

    /// Reads what the socket holds into `incoming`; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            if self.incoming.capacity() - self.incoming.len() < READ_CHUNK / 4 {
                self.incoming.reserve(READ_CHUNK);
            }
            match self.tcp.try_read_buf(&mut self.incoming) {
                // Readiness outlives the read that drained the socket: give the room back
                // before waiting again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    release_if_empty(&mut self.incoming);
                }
                r => return Poll::Ready(r),
            }
        }
    }

    /// Writes `outgoing` to the socket; ready once all of it left (and the buffer is freed).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(&self.outgoing[self.sent..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what the socket takes of `outgoing` now. Waiting for the rest registers this
    /// task's waker (never a dummy one: the socket keeps one waker per direction, and a
    /// reader's dummy would replace a writer's real one, as under hyper, which polls both).
    fn send_some(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.poll_send(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    /// Appends decrypted input to `buf` once there is some; 0 at the end of the stream.
    pub fn poll_read_plain(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        if self.plain_at < self.plain.len() {
            buf.extend_from_slice(&self.plain[self.plain_at..]);
            let n = self.plain.len() - self.plain_at;
            self.plain = Vec::new();
            self.plain_at = 0;
            return Poll::Ready(Ok(n));
        }
        loop {
            if !self.incoming.is_empty() {
                let before = buf.len();
                let reached = self.process(buf, OnWrite::Nothing)?;
                // Post-handshake records (session tickets, a key update) leave when they can;
                // what the socket does not take goes ahead of the next write.
                self.send_some(cx)?;
                release_if_empty(&mut self.incoming);
                if buf.len() > before {
                    return Poll::Ready(Ok(buf.len() - before));
                }
                if reached == Reached::Closed {
                    return Poll::Ready(Ok(0));
                }
            }
            if self.peer_closed {
                return Poll::Ready(Ok(0));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                // The peer closed without close_notify: the end of the stream all the same.
                self.incoming = Vec::new();
                return Poll::Ready(Ok(0));
            }
        }
    }

    /// Bytes of buffer the connection holds (none while idle).
    pub fn buffered(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.plain.capacity()
    }
}

impl AsyncRead for LeanTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.plain_at == this.plain.len() {
            let mut plain = mem::take(&mut this.plain);
            this.plain_at = 0;
            let r = this.poll_read_plain(cx, &mut plain);
            this.plain = plain;
            if ready!(r)? == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.plain.len() - this.plain_at);
        out.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
        this.plain_at += n;
        if this.plain_at == this.plain.len() {
            this.plain = Vec::new();
            this.plain_at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for LeanTls {
    /// Takes up to `MAX_WRITE` bytes once what was encrypted before has left, so at most one
    /// write's ciphertext waits for a client that does not read.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        let mut plain = mem::take(&mut this.plain);
        let reached = this.process(&mut plain, OnWrite::Encrypt(data));
        this.plain = plain;
        match reached? {
            Reached::Writable => {}
            Reached::NeedInput | Reached::Closed => {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
        }
        this.send_some(cx)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    /// Sends `close_notify` (once), then ends the TCP stream's sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        if !this.closed {
            this.closed = true;
            let mut plain = mem::take(&mut this.plain);
            let reached = this.process(&mut plain, OnWrite::CloseNotify);
            this.plain = plain;
            // A connection already closed both ways has nothing more to say.
            if reached? == Reached::Writable {
                ready!(this.poll_send(cx))?;
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
