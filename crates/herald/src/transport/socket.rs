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

use crate::session::{self, ConnectParams, Session};
use crate::sinks::metrics::ConnCounters;
use crate::transport::stream::Transport;
use crate::transport::wsframe::{self, FrameError};
use herald_core::{clock_ms, Conn, Engine, Frame};
use herald_protocol::{codes, encode, CloseCode};
use std::collections::VecDeque;
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

/// Entry point once the upgrade was answered; `rbuf` holds bytes that came after the head.
pub async fn serve<S: Transport>(
    mut io: S,
    rbuf: Vec<u8>,
    ctx: Arc<session::Ctx>,
    params: ConnectParams,
) {
    match session::admit(&ctx, &params) {
        Ok(conn) => run(io, rbuf, ctx, conn, ()).await,
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
/// captured values would stay in every connection's task beside this future.
pub async fn run<S: Transport, G: Send>(
    mut io: S,
    rbuf: Vec<u8>,
    ctx: Arc<session::Ctx>,
    conn: Arc<Conn>,
    guard: G,
) {
    // Shutdown waits for every session's cleanup.
    let _token = ctx.drain.session();
    if let Some(sink) = io.sink() {
        conn.attach(sink);
    }
    let mut socket = Socket {
        counters: ctx.metrics.conn_counters(&conn.app().id),
        session: Session::new(ctx, conn),
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

/// The queued frames' wire bytes, one after the other; returns (frames, bytes).
fn encode_frames(frames: &VecDeque<Frame>, out: &mut Vec<u8>) -> (u64, u64) {
    let bytes: usize = frames.iter().map(|f| f.wire().len()).sum();
    out.reserve(bytes);
    for f in frames {
        out.extend_from_slice(f.wire());
    }
    (frames.len() as u64, bytes as u64)
}

/// Resolves once the connection is closed as a slow consumer.
async fn slow_consumer_closed(conn: &Conn) -> CloseCode {
    loop {
        let woken = conn.woken();
        if conn.close_code() == Some(codes::SLOW_CONSUMER) {
            return codes::SLOW_CONSUMER;
        }
        woken.await;
    }
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
        let first_len = pending.frames.front().map_or(0, |f| f.wire().len());
        if let Some(code) = pending.close {
            // Frames the engine accepted before the close still go out first (a drain
            // must not lose accepted events); a slow consumer is closed as it stands.
            if code != codes::SLOW_CONSUMER && !pending.frames.is_empty() {
                let mut out = Vec::new();
                let (n, bytes) = encode_frames(&pending.frames, &mut out);
                let mut done = 0;
                let flush = tokio::time::timeout(CLOSE_FLUSH, write_counted(io, &out, &mut done));
                match flush.await {
                    Ok(true) => {
                        self.counters.messages_out.inc_by(n);
                        self.counters.bytes_out.inc_by(bytes);
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
        if pending.frames.is_empty() && !pending.ping {
            return None;
        }
        let mut out = Vec::new();
        let (mut n, bytes) = encode_frames(&pending.frames, &mut out);
        if pending.ping {
            // Probe both ways: a WebSocket ping and Pusher's own.
            wsframe::put_frame(&mut out, wsframe::OP_PING, b"");
            wsframe::put_frame(&mut out, wsframe::OP_TEXT, encode::PING.as_bytes());
            n += 1;
        }
        drop(pending);
        // A write blocked by a client that stopped reading must not outlive the
        // slow-consumer close its overflowing outbox requests; the frame it stopped in is
        // finished before the 4100 frames.
        let mut done = 0;
        let written = tokio::select! {
            biased;
            ok = write_counted(io, &out, &mut done) => ok,
            code = slow_consumer_closed(conn) => {
                let rest = unfinished(&out, first_is_rest, first_len, done).to_vec();
                return Some(Some(Closing { code, unfinished: rest }));
            }
        };
        if !written {
            return Some(None);
        }
        conn.written();
        self.counters.messages_out.inc_by(n);
        self.counters.bytes_out.inc_by(bytes);
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
        let flow = loop {
            let h = match wsframe::parse_header(&rbuf[pos..], max) {
                Ok(Some(h)) if rbuf.len() - pos >= h.frame_len() => h,
                Ok(_) => break Flow::Continue,
                Err(e) => break Flow::Close(protocol_close(e)),
            };
            let start = pos + h.header_len;
            let end = start + h.payload_len;
            pos = end;
            wsframe::unmask(&mut rbuf[start..end], h.mask);
            let payload = &rbuf[start..end];
            let message: Option<Box<(u8, Vec<u8>)>>;
            let body: &[u8] = match h.opcode {
                wsframe::OP_PING => {
                    let mut out = Vec::with_capacity(payload.len() + 2);
                    wsframe::put_frame(&mut out, wsframe::OP_PONG, payload);
                    if !write_out(io, &out).await {
                        break Flow::Closed;
                    }
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
                op @ (wsframe::OP_TEXT | wsframe::OP_BINARY) => {
                    if partial.is_some() {
                        break Flow::Close(protocol_close(FrameError::Fragmentation));
                    }
                    if !h.fin {
                        *partial = Some(Box::new((op, payload.to_vec())));
                        continue;
                    }
                    message = None;
                    payload
                }
                _ => {
                    // Continuation of a fragmented message.
                    let Some((_, so_far)) = partial.as_deref_mut() else {
                        break Flow::Close(protocol_close(FrameError::Fragmentation));
                    };
                    if so_far.len() + payload.len() > max {
                        break Flow::Close(codes::MESSAGE_TOO_BIG);
                    }
                    so_far.extend_from_slice(payload);
                    if !h.fin {
                        continue;
                    }
                    message = partial.take();
                    message.as_deref().map_or(&[][..], |(_, m)| m.as_slice())
                }
            };
            let opcode = message.as_deref().map_or(h.opcode, |(op, _)| *op);
            let Ok(text) = std::str::from_utf8(body) else {
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
