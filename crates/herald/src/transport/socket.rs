//! The socket loop of one WebSocket connection: reads and parses frames (RFC 6455), hands text
//! messages to the connection's [`Session`], writes what its outbox holds, answers pings and
//! the closing handshake, and closes with a code when the session or the engine asks.
//!
//! Every frame to the client goes through the connection's bounded outbox, so replies and
//! published events keep the order in which the engine accepted them. While it waits, a
//! connection holds no buffer: input gets one only once it has arrived, and queued frames are
//! written straight from the engine's shared bytes in one write per wake-up. Keep-alive probes
//! and the sign-in deadline come from a sweep over all connections (`keepalive_sweep`), not
//! from a timer per connection.
//!
//! Every write has a deadline: a write the client takes no byte of for the write timeout (the
//! pong timeout) closes the connection as a slow consumer (4100), and any close the engine, a
//! drain or the sweep requests ends a blocked write (see `write_batch`). Answers to WebSocket
//! pings wait in the outbox too (one per connection), so a client that pings and never reads
//! holds a bounded amount of memory and cannot starve its own events.

use crate::session::{self, ConnectParams, Session};
use crate::sinks::metrics::ConnCounters;
use crate::transport::stream::Transport;
use herald_core::{clock_ms, Conn, Engine, Frame};
use herald_protocol::wsdeflate::{Agreement, Deflater, InflateError, Inflater, RSV1};
use herald_protocol::wsframe::{self, FrameError};
use herald_protocol::{codes, encode, CloseCode};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long a closing connection may spend writing the frames queued before the close.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// WebSocket-level failures: closed with a close frame only (no `pusher:error`).
fn protocol_close(e: FrameError) -> CloseCode {
    if e.is_too_big() {
        codes::MESSAGE_TOO_BIG
    } else {
        CloseCode {
            code: wsframe::CLOSE_PROTOCOL_ERROR,
            reason: e.reason(),
        }
    }
}

const INVALID_UTF8: CloseCode = CloseCode {
    code: wsframe::CLOSE_INVALID_DATA,
    reason: "Text message is not valid UTF-8",
};

const INVALID_DEFLATE: CloseCode = CloseCode {
    code: wsframe::CLOSE_INVALID_DATA,
    reason: "Invalid compressed data",
};

/// `permessage-deflate` on a connection that negotiated it.
struct Deflate {
    agreement: Agreement,
    /// Server messages of at least this many bytes are compressed.
    threshold: usize,
    /// With context takeover (server side): the connection's own compressor, made on first use.
    deflater: Option<Deflater>,
    /// With context takeover (client side): the connection's own inflater, made on first use.
    inflater: Option<Inflater>,
}

impl Deflate {
    /// Appends the bytes of `f` this connection gets.
    fn put(&mut self, conn: &Conn, f: &Frame, out: &mut Vec<u8>) {
        let json = f.json();
        if self.agreement.server_no_context_takeover || f.is_rest() || json.len() < self.threshold {
            // The shared compressed form (or the plain frame under the threshold).
            out.extend_from_slice(conn.wire_of(f));
            return;
        }
        // Compressed with the context of this connection's earlier messages: the client's
        // inflater follows the same stream, so every compressed byte must go out.
        let mut z = Vec::new();
        self.deflater
            .get_or_insert_with(Deflater::new)
            .compress(json, false, &mut z);
        let at = out.len();
        herald_protocol::wsheader::put(out, wsframe::OP_TEXT, z.len());
        out[at] |= RSV1;
        out.extend_from_slice(&z);
    }

    /// Inflates a compressed client message of at most `max` bytes.
    fn inflate(&mut self, payload: &[u8], max: usize) -> Result<Vec<u8>, CloseCode> {
        let inflated = if self.agreement.client_no_context_takeover {
            Inflater::inflate_alone(payload, max)
        } else {
            self.inflater
                .get_or_insert_with(Inflater::new)
                .inflate(payload, max, false)
        };
        inflated.map_err(|e| match e {
            InflateError::TooBig => codes::MESSAGE_TOO_BIG,
            InflateError::Invalid => INVALID_DEFLATE,
        })
    }
}

async fn write_out<S: Transport>(io: &mut S, buf: &[u8]) -> bool {
    io.write_all(buf).await.is_ok() && io.flush().await.is_ok()
}

/// `write_out` that counts in `done` what the socket took, so that a caller that stops waiting
/// knows where the byte stream stands.
async fn write_counted<S: Transport>(io: &mut S, buf: &[u8], done: &mut usize) -> bool {
    while *done < buf.len() {
        match io.write(&buf[*done..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => *done += n,
        }
    }
    io.flush().await.is_ok()
}

/// The length of the server frame (unmasked) that `buf` starts with, header included.
fn server_frame_len(buf: &[u8]) -> Option<usize> {
    let len = match buf.get(1)? & 0x7F {
        126 => 4 + usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        127 => 10 + usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
        n => 2 + usize::from(n),
    };
    Some(len)
}

/// The part of `out` that finishes the frame a write stopped in after `done` bytes. `out` holds
/// whole server frames, except that the first one (`first_len` bytes) is the tail of a frame a
/// direct write began when `first_is_rest`. Empty when the write stopped between frames.
fn unfinished(out: &[u8], first_is_rest: bool, first_len: usize, done: usize) -> &[u8] {
    if done == 0 && !first_is_rest {
        return &[];
    }
    let mut end = first_len;
    while end < done {
        end += server_frame_len(&out[end..]).unwrap_or(out.len() - end);
    }
    &out[done..end.min(out.len())]
}

/// How the server ends a connection: the close code, and the rest of a frame a write was cut
/// short in (sent first: the client would otherwise read the close frames as that frame's data).
struct Closing {
    code: CloseCode,
    unfinished: Vec<u8>,
}

impl From<CloseCode> for Closing {
    fn from(code: CloseCode) -> Self {
        Self {
            code,
            unfinished: Vec::new(),
        }
    }
}

/// Sends `pusher:error` with the close code's text (for Pusher codes and 1009), then the close
/// frame, then waits briefly for the client's close frame. `unfinished` (the rest of a frame
/// already begun) goes out first.
async fn close_with<S: Transport>(io: &mut S, code: CloseCode, unfinished: &[u8]) {
    let mut out = unfinished.to_vec();
    if code.code >= 4000 || code == codes::MESSAGE_TOO_BIG {
        wsframe::put_frame(
            &mut out,
            wsframe::OP_TEXT,
            encode::error(Some(code.code), code.reason).as_bytes(),
        );
    }
    wsframe::put_close(&mut out, code.code, code.reason);
    // A peer that stopped reading gets as long as a closing flush may take to read what the
    // socket holds and these frames after it (a slow consumer that reads on gets its 4100);
    // one that does not is just dropped.
    if !matches!(
        tokio::time::timeout(CLOSE_FLUSH, write_out(io, &out)).await,
        Ok(true)
    ) {
        return;
    }
    // Give the peer a moment to answer the close handshake without holding the task forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = Vec::new();
        loop {
            match io.read_into(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let mut pos = 0;
            while let Ok(Some(h)) = wsframe::parse_header(&buf[pos..], usize::MAX) {
                if buf.len() - pos < h.frame_len() {
                    break;
                }
                if h.opcode == wsframe::OP_CLOSE {
                    return;
                }
                pos += h.frame_len();
            }
            buf.drain(..pos);
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// Entry point once the upgrade was answered (with `deflate`'s extension, if any); `rbuf` holds
/// bytes that came after the head.
pub async fn serve<S: Transport>(
    mut io: S,
    rbuf: Vec<u8>,
    ctx: Arc<session::Ctx>,
    params: ConnectParams,
    deflate: Option<Agreement>,
) {
    match session::admit(&ctx, &params) {
        Ok(conn) => run(io, rbuf, ctx, conn, (), deflate).await,
        Err(code) => boxed_close(&mut io, code, &[]).await,
    }
}

/// Closes a connection that `admit` refused.
pub async fn serve_refusal<S: Transport>(mut io: S, code: CloseCode) {
    boxed_close(&mut io, code, &[]).await;
}

/// Runs an admitted connection to its end. Meant to be its own task, so that the task holds
/// only what a live connection needs; `guard` (the connection's place under the server's
/// limit) is held to the end. Taken here rather than by a wrapping `async` block, whose
/// captured values would stay in every connection's task beside this future. `deflate`: the
/// `permessage-deflate` agreement of the handshake, if any.
pub async fn run<S: Transport, G: Send>(
    mut io: S,
    rbuf: Vec<u8>,
    ctx: Arc<session::Ctx>,
    conn: Arc<Conn>,
    guard: G,
    deflate: Option<Agreement>,
) {
    // Shutdown waits for every session's cleanup.
    let _token = ctx.drain.session();
    let deflate = deflate.map(|agreement| {
        Box::new(Deflate {
            agreement,
            threshold: ctx.compression.unwrap_or(0),
            deflater: None,
            inflater: None,
        })
    });
    let own_context = deflate
        .as_ref()
        .is_some_and(|d| !d.agreement.server_no_context_takeover);
    if deflate.is_some() && !own_context {
        conn.set_deflate();
    }
    // A connection that compresses with its own context writes every frame itself, in order:
    // the engine's direct writes would bypass its compressor.
    if let Some(sink) = io.sink().filter(|_| !own_context) {
        conn.attach(sink);
    }
    let mut socket = Socket {
        counters: ctx.metrics.conn_counters(&conn.app().id),
        session: Session::new(ctx, conn),
        deflate,
    };
    let closing = socket.run(&mut io, rbuf).await;
    // Boxed: the ending is brief, and its state (the close frames, their timers) would
    // otherwise enlarge every connection's task for its whole life.
    Box::pin(finish(io, socket, closing)).await;
    drop(guard);
}

/// Ends a session: direct writes stop, the engine forgets the connection, and the server's
/// close (if it closes) goes out after the rest of any frame a write was cut short in.
async fn finish<S: Transport>(mut io: S, mut socket: Socket, closing: Option<Closing>) {
    let conn = socket.session.conn().clone();
    conn.detach();
    socket.session.cleanup();
    if let Some(Closing { code, unfinished }) = closing {
        if code == codes::SLOW_CONSUMER {
            let app = conn.app();
            let app_id = &app.id;
            socket.session.ctx().metrics.slow_consumer(app_id);
            tracing::info!(app = %app_id, socket_id = %conn.socket_id, "closing a slow consumer");
        }
        close_with(&mut io, code, &unfinished).await;
    } else {
        // The client closed (or went away): a TLS stream still owes it `close_notify`, without
        // which its TLS library reports a truncated connection. A no-op on plain TCP.
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    }
}

/// `close_with` on the heap: closing is rare, and its timers would otherwise enlarge every
/// connection's task.
async fn boxed_close<S: Transport>(io: &mut S, code: CloseCode, unfinished: &[u8]) {
    Box::pin(close_with(io, code, unfinished)).await;
}

/// Probes silent connections and closes unanswered or unauthorized ones, and sends the
/// engine's due throttled counts, until the process ends.
pub async fn keepalive_sweep(engine: Engine, activity_s: u64, pong_s: u64) {
    let activity_ms = activity_s.max(1).saturating_mul(1000);
    let pong_ms = pong_s.max(1).saturating_mul(1000);
    // A quarter of the shortest timeout, within 100-250 ms: probes and closes come at most that
    // late, and a sweep of 19,000 idle connections costs well under a millisecond.
    let tick = Duration::from_millis((activity_ms.min(pong_ms) / 4).clamp(100, 250));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watermark = crate::memory::Watermark::default();
    loop {
        interval.tick().await;
        // Throttled subscription counts whose window ended go out now (at most a tick late).
        engine.tick(tokio::time::Instant::now());
        let now = clock_ms();
        let mut count = 0u64;
        engine.each_connection(|c| {
            count += 1;
            let auth_ms = c.with_app(|a| {
                a.enable_user_authentication
                    .then(|| a.user_authentication_timeout.saturating_mul(1000))
            });
            c.keepalive(now, activity_ms, pong_ms, auth_ms);
        });
        watermark.observe(count);
    }
}

/// How a write of queued frames ended.
#[derive(Debug, PartialEq, Eq)]
enum Wrote {
    /// The socket took every byte.
    All,
    /// The socket failed: the peer is gone.
    Failed,
    /// Stopped short to close with this code (where the byte stream stands is in `done`).
    Close(CloseCode),
}

/// Writes `buf` from `*done` on, counting in `done` what the socket took. Most writes finish at
/// once; one that has to wait for the client ends early:
/// - at once when the connection is closed as a slow consumer (its outbox overflowed);
/// - on any other close requested meanwhile (drain 4200, pong timeout 4201, app disabled 4003,
///   ...) once the write is done or `CLOSE_FLUSH` after the request, whichever comes first: a
///   client that reads still gets the frames accepted before the close;
/// - when the socket takes no byte for `stall` (the write timeout): closed as a slow consumer.
///
/// The first try needs no timer and no lock: those are set up only once the socket is full.
async fn write_batch<S: Transport>(
    io: &mut S,
    conn: &Conn,
    buf: &[u8],
    done: &mut usize,
    stall: Duration,
) -> Wrote {
    use tokio::time::{sleep_until, Instant, Sleep};
    let mut timer = std::pin::pin!(None::<Sleep>);
    let mut closing: Option<CloseCode> = None;
    let mut grace_end: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        let before = *done;
        loop {
            if *done == buf.len() {
                match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Wrote::All),
                    Poll::Ready(Err(_)) => return Poll::Ready(Wrote::Failed),
                    Poll::Pending => break,
                }
            }
            match Pin::new(&mut *io).poll_write(cx, &buf[*done..]) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Wrote::Failed),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Pending => break,
            }
        }
        // The client is not taking bytes now: wait for it, a close, or the deadline.
        let mut rearm = *done > before || timer.is_none();
        if closing.is_none() {
            if let Poll::Ready(code) = conn.poll_close(cx) {
                if code == codes::SLOW_CONSUMER {
                    return Poll::Ready(Wrote::Close(code));
                }
                closing = Some(code);
                grace_end = Some(Instant::now() + CLOSE_FLUSH);
                rearm = true;
            }
        }
        if rearm {
            let stalled_at = Instant::now() + stall;
            let at = grace_end.map_or(stalled_at, |g| g.min(stalled_at));
            match timer.as_mut().as_pin_mut() {
                Some(t) => t.reset(at),
                None => timer.set(Some(sleep_until(at))),
            }
        }
        if let Some(t) = timer.as_mut().as_pin_mut() {
            if t.poll(cx).is_ready() {
                return Poll::Ready(Wrote::Close(closing.unwrap_or_else(|| {
                    // Stalled: the engine stops queueing for it at once.
                    conn.request_close(codes::SLOW_CONSUMER);
                    codes::SLOW_CONSUMER
                })));
            }
        }
        Poll::Pending
    })
    .await
}

/// The queued frames' bytes as `put` writes them, one after the other, with a pong in its
/// place among them; returns (frames, bytes) without the pong.
fn encode_frames(
    frames: &VecDeque<Frame>,
    pong: Option<&(usize, Box<[u8]>)>,
    out: &mut Vec<u8>,
    mut put: impl FnMut(&Frame, &mut Vec<u8>),
) -> (u64, u64) {
    let start = out.len();
    let bytes: usize = frames.iter().map(|f| f.wire().len()).sum();
    out.reserve(bytes + pong.map_or(0, |(_, p)| p.len() + 2));
    // Never ahead of a direct write's tail (none is queued after a pong, but stay safe).
    let first_is_rest = frames.front().is_some_and(Frame::is_rest);
    let at = pong.map_or(frames.len(), |(at, _)| {
        (*at).clamp(usize::from(first_is_rest), frames.len())
    });
    for f in frames.range(..at) {
        put(f, out);
    }
    let mut pong_len = 0;
    if let Some((_, payload)) = pong {
        let before = out.len();
        wsframe::put_frame(out, wsframe::OP_PONG, payload);
        pong_len = out.len() - before;
    }
    for f in frames.range(at..) {
        put(f, out);
    }
    (frames.len() as u64, (out.len() - start - pong_len) as u64)
}

/// `encode_frames` for a connection without `permessage-deflate`: the shared bytes as they are.
fn plain(f: &Frame, out: &mut Vec<u8>) {
    out.extend_from_slice(f.wire());
}

/// What reading the client's frames decided.
enum Flow {
    Continue,
    /// The client closed (answered already): end without a close of our own.
    Closed,
    /// Close with this code.
    Close(CloseCode),
}

/// A session on its socket, with the app's traffic counters.
struct Socket {
    session: Session,
    counters: Arc<ConnCounters>,
    /// Boxed: most connections have none, and this lives as long as the connection.
    deflate: Option<Box<Deflate>>,
}

impl Socket {
    /// Runs until the socket ends; returns how to close, if the server closes.
    async fn run<S: Transport>(&mut self, io: &mut S, mut rbuf: Vec<u8>) -> Option<Closing> {
        self.session.established();
        let conn = self.session.conn().clone();
        let max = self.session.ctx().max_ws_message_bytes;
        // A message arriving in fragments: its opcode and the payload so far.
        let mut partial: Option<Box<(u8, Vec<u8>)>> = None;
        let mut first = !rbuf.is_empty();
        loop {
            // Boxed, like reading below: most frames leave by direct writes, so this state is
            // needed only now and then, and must not enlarge every idle connection's task.
            if conn.has_pending() {
                if let Some(end) = Box::pin(self.write_pending(io, &conn)).await {
                    return end;
                }
            }
            if first {
                // Bytes that arrived with the upgrade request.
                first = false;
            } else {
                // A poll rather than a select over two futures: nothing is stored per wait.
                let read = std::future::poll_fn(|cx| {
                    if conn.poll_woken(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    io.poll_read_into(cx, &mut rbuf).map(Some)
                })
                .await;
                match read {
                    None => continue,
                    Some(Ok(0) | Err(_)) => return None,
                    Some(Ok(_)) => {}
                }
            }
            conn.seen(clock_ms());
            match Box::pin(self.read_frames(io, &mut rbuf, &mut partial, max)).await {
                Flow::Continue => {}
                Flow::Closed => return None,
                Flow::Close(code) => return Some(code.into()),
            }
            if rbuf.is_empty() {
                // Idle connections keep no read buffer.
                rbuf = Vec::new();
            }
        }
    }

    /// Counts the compressed frames among those written (`out`, which starts with the tail of
    /// a frame `rest` bytes long when a direct write began one).
    fn count_compressed(&self, out: &[u8], rest: Option<usize>) {
        if self.deflate.is_none() {
            return;
        }
        let mut at = rest.unwrap_or(0);
        while let Some(len) = out.get(at..).and_then(server_frame_len) {
            let end = (at + len).min(out.len());
            self.counters.sent_frame(&out[at..end]);
            at = end;
        }
    }

    /// `encode_frames` with this connection's compression.
    fn encode(
        &mut self,
        conn: &Conn,
        frames: &VecDeque<Frame>,
        pong: Option<&(usize, Box<[u8]>)>,
        out: &mut Vec<u8>,
    ) -> (u64, u64) {
        match self.deflate.as_deref_mut() {
            None => encode_frames(frames, pong, out, plain),
            Some(d) => encode_frames(frames, pong, out, |f, out| d.put(conn, f, out)),
        }
    }

    /// Writes what the outbox holds; `Some` ends the session (with how to close, if the server
    /// closes).
    async fn write_pending<S: Transport>(
        &mut self,
        io: &mut S,
        conn: &Conn,
    ) -> Option<Option<Closing>> {
        let pending = conn.take();
        // The first frame may be the tail of one a direct write began: it must be finished
        // before anything else goes on the wire, whatever happens next.
        let first_is_rest = pending.frames.front().is_some_and(Frame::is_rest);
        if let Some(code) = pending.close {
            let first_len = pending.frames.front().map_or(0, |f| f.wire().len());
            // Frames the engine accepted before the close still go out first (a drain
            // must not lose accepted events); a slow consumer is closed as it stands.
            if code != codes::SLOW_CONSUMER && !pending.frames.is_empty() {
                let mut out = Vec::new();
                let (n, bytes) = self.encode(conn, &pending.frames, None, &mut out);
                let mut done = 0;
                let flush = tokio::time::timeout(CLOSE_FLUSH, write_counted(io, &out, &mut done));
                match flush.await {
                    Ok(true) => {
                        self.counters.messages_out.inc_by(n);
                        self.counters.bytes_out.inc_by(bytes);
                        self.count_compressed(&out, first_is_rest.then_some(first_len));
                    }
                    Ok(false) => return Some(None),
                    Err(_) => {
                        let rest = unfinished(&out, first_is_rest, first_len, done).to_vec();
                        return Some(Some(Closing {
                            code,
                            unfinished: rest,
                        }));
                    }
                }
            } else if first_is_rest {
                return Some(Some(Closing {
                    code,
                    unfinished: pending.frames[0].wire().to_vec(),
                }));
            }
            return Some(Some(code.into()));
        }
        if pending.frames.is_empty() && !pending.ping && pending.pong.is_none() {
            return None;
        }
        let mut out = Vec::new();
        let (mut n, bytes) = self.encode(conn, &pending.frames, pending.pong.as_ref(), &mut out);
        // The first unit in `out`: a direct write's tail (always ahead of a pong), or a whole
        // frame (the pong maybe), whose length its header gives when needed.
        let rest_len = pending.frames.front().map_or(0, |f| f.wire().len());
        if pending.ping {
            // Probe both ways: a WebSocket ping and Pusher's own.
            wsframe::put_frame(&mut out, wsframe::OP_PING, b"");
            wsframe::put_frame(&mut out, wsframe::OP_TEXT, encode::PING.as_bytes());
            n += 1;
        }
        drop(pending);
        // A write blocked by a client that stopped reading ends with a close (requested or its
        // own deadline); the frame it stopped in is finished before the closing frames.
        let mut done = 0;
        let stall = self.session.ctx().write_timeout;
        match write_batch(io, conn, &out, &mut done, stall).await {
            Wrote::All => {}
            Wrote::Failed => return Some(None),
            Wrote::Close(code) => {
                let first_len = if first_is_rest {
                    rest_len
                } else {
                    server_frame_len(&out).unwrap_or(0)
                };
                let rest = unfinished(&out, first_is_rest, first_len, done).to_vec();
                return Some(Some(Closing {
                    code,
                    unfinished: rest,
                }));
            }
        }
        conn.written();
        self.counters.messages_out.inc_by(n);
        self.counters.bytes_out.inc_by(bytes);
        self.count_compressed(&out, first_is_rest.then_some(rest_len));
        None
    }

    /// Handles every complete frame in `rbuf` and removes it; a partial frame stays.
    async fn read_frames<S: Transport>(
        &mut self,
        io: &mut S,
        rbuf: &mut Vec<u8>,
        partial: &mut Option<Box<(u8, Vec<u8>)>>,
        max: usize,
    ) -> Flow {
        let mut pos = 0;
        let deflate = self.deflate.is_some();
        // A compressed frame may take a little more than its inflated size.
        let frame_max = if deflate {
            wsframe::compressed_max(max)
        } else {
            max
        };
        let flow = loop {
            let h = match wsframe::parse_header_with(&rbuf[pos..], frame_max, deflate) {
                Ok(Some(h)) if rbuf.len() - pos >= h.frame_len() => h,
                Ok(_) => break Flow::Continue,
                Err(e) => break Flow::Close(protocol_close(e)),
            };
            let start = pos + h.header_len;
            let end = start + h.payload_len;
            pos = end;
            wsframe::unmask(&mut rbuf[start..end], h.mask);
            let payload = &rbuf[start..end];
            let (opcode, body) = match h.opcode {
                wsframe::OP_PING => {
                    // Answered by the next write, in order with the events and under its
                    // deadline; a newer ping replaces an answer not yet written.
                    self.session.conn().pong(payload);
                    continue;
                }
                wsframe::OP_PONG => continue,
                wsframe::OP_CLOSE => {
                    // Answer the closing handshake with the client's own status, or with
                    // 1002/1007 when its close frame breaks the rules.
                    let code = wsframe::close_reply(payload);
                    let conn = self.session.conn().clone();
                    // Nothing may follow the close reply (RFC 6455 5.5.1): end the engine's
                    // direct writes before it. A frame a direct write cut short is finished
                    // first, or the close frame would land inside it.
                    conn.detach();
                    let pending = conn.take();
                    let mut out = Vec::new();
                    if let Some(rest) = pending.frames.front().filter(|f| f.is_rest()) {
                        out.extend_from_slice(rest.wire());
                    }
                    wsframe::put_close(&mut out, code, "");
                    let _ = tokio::time::timeout(CLOSE_FLUSH, write_out(io, &out)).await;
                    break Flow::Closed;
                }
                // Text, binary or a continuation: a whole message once its last frame is in.
                op => {
                    let op = if h.rsv1 { op | RSV1 } else { op };
                    match wsframe::assemble(partial, h.fin, op, payload, max) {
                        Ok(Some(message)) => message,
                        Ok(None) => continue,
                        Err(e) => break Flow::Close(protocol_close(e)),
                    }
                }
            };
            // A compressed message is inflated whole, to at most the maximum.
            let (opcode, body) = match (opcode & RSV1 != 0, self.deflate.as_deref_mut()) {
                (true, Some(d)) => match d.inflate(&body, max) {
                    Ok(inflated) => (opcode & !RSV1, inflated.into()),
                    Err(code) => break Flow::Close(code),
                },
                _ => (opcode, body),
            };
            let Ok(text) = std::str::from_utf8(&body) else {
                if opcode == wsframe::OP_TEXT {
                    break Flow::Close(INVALID_UTF8);
                }
                // Binary frames are read as text when they are UTF-8, and ignored otherwise.
                continue;
            };
            self.counters.messages_in.inc();
            self.counters.bytes_in.inc_by(text.len() as u64);
            // Boxed: handling may wait on the cluster, and that state must not sit in every
            // idle connection's task.
            Box::pin(self.session.handle(text)).await;
        };
        rbuf.drain(..pos);
        flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{App, Cluster, EngineConfig, StaticAppStore};
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::time::Instant;

    impl Transport for DuplexStream {
        fn poll_read_into(
            &mut self,
            cx: &mut std::task::Context<'_>,
            buf: &mut Vec<u8>,
        ) -> Poll<std::io::Result<usize>> {
            buf.reserve(4096);
            tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
        }
    }

    fn conn() -> Arc<Conn> {
        let engine = Engine::new(
            Arc::new(StaticAppStore::new(vec![App::default_app()]).unwrap()),
            Cluster::local(),
            vec![],
            EngineConfig::default(),
        );
        engine.connect(Arc::new(App::default_app())).unwrap()
    }

    const STALL: Duration = Duration::from_secs(5);

    /// A socket with room for 64 bytes whose client reads nothing (unless the test reads
    /// `client`), and a 1,000-byte write to it.
    fn blocked() -> (DuplexStream, DuplexStream, Vec<u8>) {
        let (server, client) = tokio::io::duplex(64);
        (server, client, vec![7u8; 1000])
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_takes_nothing_of_for_the_write_timeout_is_a_slow_consumer() {
        let (mut io, _client, buf) = blocked();
        let c = conn();
        let (t0, mut done) = (Instant::now(), 0);
        let end = write_batch(&mut io, &c, &buf, &mut done, STALL).await;
        assert_eq!(end, Wrote::Close(codes::SLOW_CONSUMER));
        assert_eq!(t0.elapsed(), STALL);
        assert_eq!(done, 64, "what the socket took is counted");
        assert_eq!(
            c.close_code(),
            Some(codes::SLOW_CONSUMER),
            "no more queueing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_slowly_but_steadily_is_not_cut_off() {
        let (mut io, mut client, buf) = blocked();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 16];
            while got.len() < 1000 {
                // Always within the write timeout: each read is progress.
                tokio::time::sleep(STALL - Duration::from_millis(10)).await;
                let n = client.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let c = conn();
        let mut done = 0;
        let end = write_batch(&mut io, &c, &buf, &mut done, STALL).await;
        assert_eq!((end, done), (Wrote::All, 1000));
        assert_eq!(reader.await.unwrap(), buf);
        assert_eq!(c.close_code(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn any_requested_close_ends_a_blocked_write_after_the_closing_flush() {
        for code in [codes::RECONNECT, codes::PONG_TIMEOUT, codes::APP_DISABLED] {
            let (mut io, _client, buf) = blocked();
            let c = conn();
            let asker = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                asker.request_close(code);
            });
            let (t0, mut done) = (Instant::now(), 0);
            let end = write_batch(&mut io, &c, &buf, &mut done, Duration::from_secs(30)).await;
            assert_eq!(end, Wrote::Close(code));
            assert_eq!(
                t0.elapsed(),
                Duration::from_secs(1) + CLOSE_FLUSH,
                "{code:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_consumer_close_ends_a_blocked_write_at_once() {
        let (mut io, _client, buf) = blocked();
        let c = conn();
        let asker = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            asker.request_close(codes::SLOW_CONSUMER);
        });
        let (t0, mut done) = (Instant::now(), 0);
        let end = write_batch(&mut io, &c, &buf, &mut done, Duration::from_secs(30)).await;
        assert_eq!(end, Wrote::Close(codes::SLOW_CONSUMER));
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_on_after_a_drain_request_gets_the_whole_write() {
        let (mut io, mut client, buf) = blocked();
        let c = conn();
        let asker = c.clone();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            asker.request_close(codes::RECONNECT);
            let mut got = vec![0u8; 1000];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        let mut done = 0;
        let end = write_batch(&mut io, &c, &buf, &mut done, Duration::from_secs(30)).await;
        assert_eq!(
            (end, done),
            (Wrote::All, 1000),
            "the close is sent after the write"
        );
        assert_eq!(reader.await.unwrap(), buf);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_flood_is_answered_with_bounded_pongs_and_events_still_flow() {
        // The client sends 2,000 pings at once; the server answers the latest ping of each read
        // (not each ping), and the event queued meanwhile goes out too.
        let ctx = Arc::new(session::Ctx::for_tests(10_000, STALL));
        let engine = ctx.engine.clone();
        let c = engine.connect(Arc::new(App::default_app())).unwrap();
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(run(server, Vec::new(), ctx, c.clone(), (), None));
        let mut pings = Vec::new();
        for i in 0..2000u32 {
            let payload = format!("ping {i}");
            pings.extend_from_slice(&[0x89, 0x80 | payload.len() as u8, 0, 0, 0, 0]);
            pings.extend_from_slice(payload.as_bytes());
        }
        assert!(c.send(&Frame::from("event")));
        client.write_all(&pings).await.unwrap();
        // Frames until the answer to the last ping.
        let (mut pongs, mut texts, mut out, mut pos) = (0, 0, Vec::new(), 0);
        'read: loop {
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the last ping was answered");
            out.extend_from_slice(&chunk[..n]);
            while let Some(len) = server_frame_len(&out[pos..]).filter(|l| pos + l <= out.len()) {
                let frame = &out[pos..pos + len];
                pos += len;
                match frame[0] {
                    0x8A => {
                        pongs += 1;
                        if &frame[2..] == b"ping 1999" {
                            break 'read;
                        }
                    }
                    0x81 => texts += 1,
                    _ => {}
                }
            }
        }
        assert!(pongs < 2000, "{pongs} pongs for 2,000 pings");
        assert_eq!(texts, 2, "the handshake and the event");
        let close = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8];
        client.write_all(&close).await.unwrap();
        task.await.unwrap();
    }

    /// A client's end of a socket, and what it read past the last frame it looked at.
    type Client = (DuplexStream, Vec<u8>);

    /// A session that negotiated `permessage-deflate` (with context takeover when `takeover`), its
    /// client's end, its task and its connection.
    fn deflating(takeover: bool) -> (Client, tokio::task::JoinHandle<()>, Arc<Conn>) {
        let ctx = Arc::new(session::Ctx {
            compression: Some(100),
            compression_context_takeover: takeover,
            ..session::Ctx::for_tests(10_000, STALL)
        });
        let engine = ctx.engine.clone();
        // Process-wide, and the same in every test that sets it.
        herald_core::set_deflate_threshold(Some(100));
        let offer = b"permessage-deflate; client_max_window_bits";
        let agreement = herald_protocol::wsdeflate::negotiate([&offer[..]], takeover);
        let c = engine.connect(Arc::new(App::default_app())).unwrap();
        let (server, client) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(run(server, Vec::new(), ctx, c.clone(), (), agreement));
        ((client, Vec::new()), task, c)
    }

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn compress(json: &[u8]) -> Vec<u8> {
        let mut z = Vec::new();
        herald_protocol::wsdeflate::Deflater::compress_alone(json, &mut z);
        z
    }

    /// Reads server frames until one satisfies `stop`; returns every (first byte, payload).
    /// Bytes read past that frame wait in `client`'s buffer for the next call.
    async fn read_until(
        (client, out): &mut Client,
        mut stop: impl FnMut(u8, &[u8]) -> bool,
    ) -> Vec<(u8, Vec<u8>)> {
        let (mut pos, mut got) = (0, Vec::new());
        loop {
            while let Some(len) = server_frame_len(&out[pos..]).filter(|l| pos + l <= out.len()) {
                let frame = &out[pos..pos + len];
                let at = len - (frame[1] & 0x7F) as usize;
                let at = match frame[1] & 0x7F {
                    126 => 4,
                    127 => 10,
                    _ => at.min(2),
                };
                got.push((frame[0], frame[at..].to_vec()));
                pos += len;
                let (b0, p) = got.last().unwrap();
                if stop(*b0, p) {
                    out.drain(..pos);
                    return got;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early; got {got:?}");
            out.extend_from_slice(&chunk[..n]);
        }
    }

    fn inflate(
        b0: u8,
        payload: &[u8],
        inflater: &mut herald_protocol::wsdeflate::Inflater,
    ) -> String {
        let json = if b0 & RSV1 != 0 {
            inflater.inflate(payload, 1 << 20, false).unwrap()
        } else {
            payload.to_vec()
        };
        String::from_utf8(json).unwrap()
    }

    #[tokio::test]
    async fn compressed_client_messages_are_inflated_and_big_server_messages_compressed() {
        for takeover in [false, true] {
            let (mut client, task, c) = deflating(takeover);
            let mut inflater = herald_protocol::wsdeflate::Inflater::new();
            let hello = read_until(&mut client, |_, _| true).await;
            let (b0, p) = &hello[0];
            assert!(inflate(*b0, p, &mut inflater).contains("connection_established"));
            // A compressed subscribe, in one frame, then in three fragments.
            let sub = compress(br#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#);
            client.0.write_all(&client_frame(0xC1, &sub)).await.unwrap();
            let sub2 = compress(br#"{"event":"pusher:subscribe","data":{"channel":"sport"}}"#);
            let (a, rest) = sub2.split_at(5);
            let (b, d) = rest.split_at(5);
            let mut frags = client_frame(0x41, a);
            frags.extend(client_frame(0x00, b));
            frags.extend(client_frame(0x80, d));
            client.0.write_all(&frags).await.unwrap();
            // Up to the subscription count of the second channel (its compressed forms are
            // inflated in order: with context takeover, each depends on those before).
            let mut texts = Vec::new();
            read_until(&mut client, |b0, p| {
                texts.push(inflate(b0, p, &mut inflater));
                texts.last().unwrap().contains("sport") && texts.last().unwrap().contains("count")
            })
            .await;
            assert!(
                texts[0].contains("subscription_succeeded") && texts[0].contains("news"),
                "{texts:?}"
            );
            // A big event goes compressed, a small one plain, in order.
            let big = format!(
                r#"{{"event":"e","channel":"news","data":"{}"}}"#,
                "lorem ipsum ".repeat(50)
            );
            for json in [
                &big[..],
                r#"{"event":"e","channel":"news","data":"{}"}"#,
                &big[..],
            ] {
                assert!(c.send(&Frame::from(json)));
            }
            let got = read_until(&mut client, {
                let mut n = 0;
                move |_, _| {
                    n += 1;
                    n == 3
                }
            })
            .await;
            let firsts: Vec<u8> = got.iter().map(|(b0, _)| *b0).collect();
            assert_eq!(firsts, [0xC1, 0x81, 0xC1], "takeover: {takeover}");
            assert!(got[0].1.len() < big.len() / 4);
            let texts: Vec<_> = got
                .iter()
                .map(|(b0, p)| inflate(*b0, p, &mut inflater))
                .collect();
            assert_eq!(texts[0], big, "takeover: {takeover}");
            assert_eq!(texts[2], big);
            if takeover {
                assert!(
                    got[2].1.len() < got[0].1.len(),
                    "the second refers to the first"
                );
            }
            let close = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8];
            client.0.write_all(&close).await.unwrap();
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_deflate_bomb_is_closed_with_1009() {
        let (mut client, task, _c) = deflating(false);
        read_until(&mut client, |_, _| true).await;
        // 5 MB of zeros in a JSON string, for a limit of 10,000 bytes.
        let mut json = br#"{"event":"client-x","channel":"private-a","data":""#.to_vec();
        json.extend(std::iter::repeat_n(b'0', 5 << 20));
        json.extend_from_slice(br#""}"#);
        let z = compress(&json);
        assert!(z.len() < 10_000, "{} bytes on the wire", z.len());
        client.0.write_all(&client_frame(0xC1, &z)).await.unwrap();
        let got = read_until(&mut client, |b0, _| b0 == 0x88).await;
        let close = &got.last().unwrap().1;
        assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn rsv1_without_deflate_or_on_a_continuation_is_a_protocol_error() {
        let (mut client, task, _c) = deflating(false);
        read_until(&mut client, |_, _| true).await;
        let mut frames = client_frame(0x01, b"{");
        frames.extend(client_frame(0xC0, b"}"));
        client.0.write_all(&frames).await.unwrap();
        let got = read_until(&mut client, |b0, _| b0 == 0x88).await;
        let close = &got.last().unwrap().1;
        assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1002);
        task.await.unwrap();
        // Broken compressed data: 1007.
        let (mut client, task, _c) = deflating(false);
        read_until(&mut client, |_, _| true).await;
        client
            .0
            .write_all(&client_frame(0xC1, &[0xFF, 0xFF, 0xFF]))
            .await
            .unwrap();
        let got = read_until(&mut client, |b0, _| b0 == 0x88).await;
        let close = &got.last().unwrap().1;
        assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1007);
        task.await.unwrap();
    }

    /// Server frames of these payload lengths, one after the other, and where each ends.
    fn frames(lens: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        for &len in lens {
            out.extend_from_slice(Frame::text(&vec![b'x'; len]).wire());
            ends.push(out.len());
        }
        (out, ends)
    }

    #[test]
    fn a_pong_goes_in_its_place_and_a_cut_write_finishes_it() {
        let queue: VecDeque<Frame> = ["a", "bb", "ccc"].into_iter().map(Frame::from).collect();
        let pong = (1, Box::from(&b"p"[..]));
        let mut out = Vec::new();
        assert_eq!(encode_frames(&queue, Some(&pong), &mut out, plain), (3, 12));
        let wire = |f: &Frame| f.wire().to_vec();
        let expected = [
            wire(&queue[0]),
            vec![0x8A, 1, b'p'],
            wire(&queue[1]),
            wire(&queue[2]),
        ];
        assert_eq!(out, expected.concat());
        // First in the stream, then cut inside it: finished to its end only.
        let mut out = Vec::new();
        encode_frames(&queue, Some(&(0, Box::from(&b"pq"[..]))), &mut out, plain);
        assert_eq!(&out[..4], &[0x8A, 2, b'p', b'q']);
        let first = server_frame_len(&out).unwrap();
        assert_eq!(unfinished(&out, false, first, 1), &out[1..4]);
    }

    #[test]
    fn frame_lengths_of_every_header_size() {
        for len in [0, 125, 126, 65535, 65536] {
            let (out, _) = frames(&[len]);
            assert_eq!(server_frame_len(&out), Some(out.len()), "payload {len}");
        }
        assert_eq!(server_frame_len(&[0x81]), None);
    }

    #[test]
    fn a_cut_write_is_finished_to_the_end_of_its_frame() {
        let (out, ends) = frames(&[10, 200, 70000, 3]);
        // Between frames (or before any byte): nothing to finish.
        assert!(unfinished(&out, false, ends[0], 0).is_empty());
        for &e in &ends {
            assert!(unfinished(&out, false, ends[0], e).is_empty());
        }
        // Inside a frame: up to its end, whichever header size it has.
        assert_eq!(unfinished(&out, false, ends[0], 5), &out[5..ends[0]]);
        assert_eq!(
            unfinished(&out, false, ends[0], ends[0] + 1),
            &out[ends[0] + 1..ends[1]]
        );
        assert_eq!(
            unfinished(&out, false, ends[0], ends[2] - 1),
            &out[ends[2] - 1..ends[2]]
        );
        assert_eq!(
            unfinished(&out, false, ends[0], ends[2] + 2),
            &out[ends[2] + 2..]
        );
    }

    #[test]
    fn a_begun_frame_is_finished_even_when_nothing_else_was_written() {
        // The first 7 bytes stand for the tail of a frame a direct write began.
        let (tail, _) = frames(&[20]);
        let tail = &tail[tail.len() - 7..];
        let (rest, ends) = frames(&[30, 5]);
        let out = [tail, &rest[..]].concat();
        assert_eq!(unfinished(&out, true, 7, 0), tail);
        assert_eq!(unfinished(&out, true, 7, 3), &tail[3..]);
        assert!(unfinished(&out, true, 7, 7).is_empty());
        assert_eq!(unfinished(&out, true, 7, 9), &out[9..7 + ends[0]]);
    }
}
