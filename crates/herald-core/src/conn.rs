//! A connection as the engine sees it: identity plus a bounded outbox.
//!
//! The outbox is a queue under a small lock that the connection task empties in one swap, so a
//! connection with nothing queued holds no queue memory at all, and a burst of events costs one
//! wake-up of the connection task, not one per event.

use crate::app::App;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use herald_protocol::{wsdeflate, wsheader, CloseCode, SocketId};
use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// A message as it goes on the wire: a WebSocket text frame (header and JSON), encoded once and
/// shared by every recipient. (Server frames are not masked, so the bytes are the same for all.)
///
/// Where `permessage-deflate` is on, a frame of at least the threshold's size also carries a
/// place for its compressed form, made by the first recipient that negotiated the extension
/// (without context takeover) and shared by the others: one compression per event, not one per
/// subscriber. With compression off (the default) that place is not even allocated.
#[derive(Clone)]
pub struct Frame {
    wire: Bytes,
    /// Where the JSON starts in `wire` (the header's length).
    json_at: u8,
    deflated: Option<Arc<OnceLock<Bytes>>>,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.wire == other.wire && self.json_at == other.json_at
    }
}

impl Eq for Frame {}

/// Frames whose JSON has at least this many bytes get a compressed form; `usize::MAX`: none.
static DEFLATE_MIN: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Turns on compressed forms of frames of at least `min` bytes (`None`: off). Process-wide,
/// set once at startup from `server.websocket_compression`.
pub fn set_deflate_threshold(min: Option<usize>) {
    DEFLATE_MIN.store(min.unwrap_or(usize::MAX), Ordering::Relaxed);
}

/// The compressed server frame (RSV1 set) of a JSON text, or `None` when compressing would not
/// make it smaller.
pub fn deflate_frame(json: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut z = Vec::new();
    wsdeflate::Deflater::compress_alone(json, &mut z);
    if z.len() >= json.len() {
        return None;
    }
    let at = out.len();
    wsheader::put(out, 0x1, z.len());
    out[at] |= wsdeflate::RSV1;
    out.extend_from_slice(&z);
    Some(())
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Frame")
            .field(&String::from_utf8_lossy(self.json()))
            .finish()
    }
}

impl Frame {
    /// Frames a JSON text.
    pub fn text(json: &[u8]) -> Self {
        Self::build(json, json.len() >= DEFLATE_MIN.load(Ordering::Relaxed))
    }

    /// Frames a JSON text, with a place for its compressed form when `deflatable`.
    fn build(json: &[u8], deflatable: bool) -> Self {
        let len = json.len();
        let mut wire = Vec::with_capacity(len + wsheader::MAX_LEN);
        wsheader::put(&mut wire, 0x1, len); // text
        let json_at = wire.len() as u8;
        wire.extend_from_slice(json);
        Self {
            wire: wire.into(),
            json_at,
            deflated: deflatable.then(Default::default),
        }
    }

    /// The bytes to write to a socket that negotiated `permessage-deflate` without context
    /// takeover: the compressed frame, made once, or the plain one when the frame is under the
    /// threshold (or does not shrink).
    pub fn deflated(&self) -> &Bytes {
        match &self.deflated {
            None => &self.wire,
            Some(cell) => cell.get_or_init(|| {
                let mut out = Vec::new();
                match deflate_frame(self.json(), &mut out) {
                    Some(()) => out.into(),
                    None => self.wire.clone(),
                }
            }),
        }
    }

    /// The JSON text the frame carries.
    pub fn json(&self) -> &[u8] {
        &self.wire[usize::from(self.json_at)..]
    }

    /// The bytes to write to the socket.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// Whether this is the tail of a frame whose start a direct write already sent: the
    /// connection task must finish it before any other bytes, a close included.
    pub fn is_rest(&self) -> bool {
        // A whole frame's JSON starts after its header; only `rest` sets 0.
        self.json_at == 0
    }

    /// The unwritten tail of a frame a direct write cut short.
    fn rest(wire: &Bytes, written: usize) -> Self {
        Self {
            wire: wire.slice(written..),
            json_at: 0,
            deflated: None,
        }
    }
}

impl From<String> for Frame {
    fn from(json: String) -> Self {
        Self::text(json.as_bytes())
    }
}

impl From<&str> for Frame {
    fn from(json: &str) -> Self {
        Self::text(json.as_bytes())
    }
}

/// A socket the engine may write to directly, from the thread that publishes, when nothing is
/// queued for it: the frame then leaves without waking the connection's task.
pub trait Sink: Send + Sync {
    /// Writes what the socket takes now, without waiting.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
}

/// Most frames a connection may have queued before it counts as a slow consumer.
pub const OUTBOX_MAX_FRAMES: usize = 4096;
/// Most bytes a connection may have queued before it counts as a slow consumer.
pub const OUTBOX_MAX_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Outbox {
    frames: VecDeque<Frame>,
    bytes: usize,
    close: Option<CloseCode>,
    ping: bool,
    /// The answer to the client's unanswered WebSocket pings (see `Pending::pong`): one pong
    /// with the latest ping's payload (RFC 6455 5.5.3 lets a pong answer only the most recent
    /// ping, so a ping flood holds one payload, not one per ping).
    pong: Option<(usize, Box<[u8]>)>,
    /// The connection task holds frames it took and has not finished writing.
    writing: bool,
    sink: Option<Arc<dyn Sink>>,
}

/// What the connection task takes from its outbox in one go.
#[derive(Debug, Default)]
pub struct Pending {
    /// Frames in the order the engine accepted them.
    pub frames: VecDeque<Frame>,
    /// A close was requested, with this code.
    pub close: Option<CloseCode>,
    /// The keep-alive sweep asks for a probe.
    pub ping: bool,
    /// A pong to send: after this many of `frames` (those queued before the first ping it
    /// answers), with this payload (the latest ping's).
    pub pong: Option<(usize, Box<[u8]>)>,
}

/// The engine's side of a connection. The connection task owns the socket and drains the outbox.
pub struct Conn {
    pub socket_id: SocketId,
    /// The app's current settings: replaced when the store changes them (`Engine::follow_apps`).
    app: RwLock<Arc<App>>,
    outbox: Mutex<Outbox>,
    /// Wakes the connection task; `woken` says a wake-up is pending (a waker and a flag take
    /// less room in every task than an intrusive waiter would).
    wake: AtomicWaker,
    woken: AtomicBool,
    /// Keep-alive bookkeeping in milliseconds of the server's clock; read by the sweep.
    last_seen_ms: AtomicU64,
    probed_ms: AtomicU64,
    connected_ms: u64,
    authorized: AtomicBool,
    /// The client negotiated `permessage-deflate` without context takeover: it gets the
    /// frames' shared compressed forms.
    deflate: AtomicBool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("socket_id", &self.socket_id)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the process started, for keep-alive bookkeeping.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Starts at 1 so that 0 can mean "never".
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// Channels with more subscribers than this are fanned out through the connection tasks:
/// one publishing thread writing to thousands of sockets in turn is slower than the tasks
/// writing in parallel, each batching the events that queued up meanwhile (measured:
/// 5.5 us of server CPU per delivered message with 10,000 direct writes per event, against
/// 2.1 us through the tasks; see BENCHMARKS.md).
pub const DIRECT_WRITE_MAX_FANOUT: usize = 512;

impl Conn {
    pub(crate) fn new(socket_id: SocketId, app: Arc<App>) -> Arc<Self> {
        let now = clock_ms();
        Arc::new(Self {
            socket_id,
            app: RwLock::new(app),
            outbox: Mutex::new(Outbox::default()),
            wake: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(now),
            probed_ms: AtomicU64::new(0),
            connected_ms: now,
            authorized: AtomicBool::new(false),
            deflate: AtomicBool::new(false),
        })
    }

    /// The settings of the connection's app as they are now.
    pub fn app(&self) -> Arc<App> {
        self.app.read().clone()
    }

    /// Reads the app's current settings without taking a reference (hot loops).
    pub fn with_app<R>(&self, f: impl FnOnce(&App) -> R) -> R {
        f(&self.app.read())
    }

    /// Follows a change of the app's settings.
    pub(crate) fn set_app(&self, app: Arc<App>) {
        *self.app.write() = app;
    }

    /// Sends a frame without waiting: written to the socket at once when nothing is queued
    /// (and a sink is attached), queued for the connection task otherwise. A full outbox closes
    /// the connection as a slow consumer (the frame and all later ones are then not delivered:
    /// the client is told and reconnects). Returns whether the frame was accepted.
    pub fn send(&self, frame: &Frame) -> bool {
        self.push(frame, true)
    }

    /// Like `send`, but always through the queue (see `DIRECT_WRITE_MAX_FANOUT`).
    pub fn send_queued(&self, frame: &Frame) -> bool {
        self.push(frame, false)
    }

    /// The connection gets frames compressed (shared forms, see `Frame::deflated`); set before
    /// `attach`.
    pub fn set_deflate(&self) {
        self.deflate.store(true, Ordering::Relaxed);
    }

    /// Whether `set_deflate` was called.
    pub fn deflates(&self) -> bool {
        self.deflate.load(Ordering::Relaxed)
    }

    /// The bytes of `frame` this connection gets.
    pub fn wire_of<'f>(&self, frame: &'f Frame) -> &'f Bytes {
        if self.deflates() {
            frame.deflated()
        } else {
            &frame.wire
        }
    }

    fn push(&self, frame: &Frame, direct: bool) -> bool {
        // Compressed (once per frame) before the lock, not under it.
        let wire = self.wire_of(frame);
        let mut o = self.outbox.lock();
        if o.close == Some(herald_protocol::codes::SLOW_CONSUMER) {
            return false;
        }
        if o.frames.len() >= OUTBOX_MAX_FRAMES || o.bytes + frame.wire.len() > OUTBOX_MAX_BYTES {
            if o.close.is_none() {
                o.close = Some(herald_protocol::codes::SLOW_CONSUMER);
                drop(o);
                self.wake_task();
            }
            return false;
        }
        let mut queued = None;
        // Not while a pong waits either: frames after it go behind it.
        if direct && o.frames.is_empty() && !o.writing && o.close.is_none() && o.pong.is_none() {
            if let Some(sink) = &o.sink {
                match sink.try_write(wire) {
                    Ok(n) if n == wire.len() => return true,
                    // The rest waits for the socket in the task, ahead of anything later.
                    Ok(n) => queued = Some(Frame::rest(wire, n)),
                    // Full socket or an error: the task finds out which and acts.
                    Err(_) => {}
                }
            }
        }
        let frame = queued.unwrap_or_else(|| frame.clone());
        let was_empty = o.frames.is_empty();
        o.bytes += frame.wire.len();
        o.frames.push_back(frame);
        drop(o);
        // The task takes the whole queue when it wakes: one wake-up per burst is enough.
        if was_empty {
            self.wake_task();
        }
        true
    }

    /// Takes everything queued. The connection task calls it after each wake-up, and
    /// `written` once it has written the frames it took.
    pub fn take(&self) -> Pending {
        let mut o = self.outbox.lock();
        o.bytes = 0;
        // Control frames too: a direct write must not land inside a pong or probe being written.
        o.writing = !o.frames.is_empty() || o.ping || o.pong.is_some();
        Pending {
            frames: std::mem::take(&mut o.frames),
            close: o.close,
            ping: std::mem::take(&mut o.ping),
            pong: o.pong.take(),
        }
    }

    /// Whether `take` would return anything (frames, a close, a probe or a pong).
    pub fn has_pending(&self) -> bool {
        let o = self.outbox.lock();
        !o.frames.is_empty() || o.close.is_some() || o.ping || o.pong.is_some()
    }

    /// Queues the answer to a WebSocket ping with this payload, after the frames queued so far
    /// and before any later ones. An answer not yet taken keeps its place and takes the newer
    /// payload. Called by the connection task itself, which writes it on its next turn (so no
    /// wake-up).
    pub fn pong(&self, payload: &[u8]) {
        let mut o = self.outbox.lock();
        let at = o.pong.as_ref().map_or(o.frames.len(), |(at, _)| *at);
        o.pong = Some((at, payload.into()));
    }

    /// The frames from the last `take` are written: direct writes may resume.
    pub fn written(&self) {
        self.outbox.lock().writing = false;
    }

    /// Lets the engine write to the socket directly while nothing is queued.
    pub fn attach(&self, sink: Arc<dyn Sink>) {
        self.outbox.lock().sink = Some(sink);
    }

    /// Ends direct writes (the connection task is done with the socket).
    pub fn detach(&self) {
        let sink = self.outbox.lock().sink.take();
        drop(sink);
    }

    /// Wakes the connection task without queueing anything (a transport that hands the
    /// connection from one request to the next uses it to tell the old one to let go).
    pub fn wake(&self) {
        self.wake_task();
    }

    fn wake_task(&self) {
        self.woken.store(true, Ordering::Release);
        self.wake.wake();
    }

    /// Ready once something was queued or requested since the last time it was ready.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.wake.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// `poll_woken` as a future.
    pub async fn woken(&self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await;
    }

    /// Ready with the close code once a close is requested. Unlike `poll_woken` it leaves the
    /// wake-up pending, so frames queued meanwhile are still noticed by the task's next wait.
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Poll<CloseCode> {
        // Registered before the check: a request after it wakes this waker.
        self.wake.register(cx.waker());
        match self.close_code() {
            Some(code) => Poll::Ready(code),
            None => Poll::Pending,
        }
    }

    /// Asks the connection task to close with `code` (the first request wins).
    pub fn request_close(&self, code: CloseCode) {
        let mut o = self.outbox.lock();
        if o.close.is_none() {
            o.close = Some(code);
            drop(o);
            self.wake_task();
        }
    }

    /// The close requested so far, if any.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.outbox.lock().close
    }

    pub fn is_closing(&self) -> bool {
        self.close_code().is_some()
    }

    /// The client sent something: it is alive, and any probe is answered.
    pub fn seen(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        self.probed_ms.store(0, Ordering::Relaxed);
    }

    /// Marks the connection as signed in or subscribed to an authorized channel.
    pub fn set_authorized(&self) {
        self.authorized.store(true, Ordering::Relaxed);
    }

    /// One step of the keep-alive sweep: probes a connection silent for `activity_ms`, closes one
    /// that left a probe unanswered for `pong_ms` (4201), and one that had to sign in within
    /// `auth_ms` and did not (4009).
    pub fn keepalive(&self, now_ms: u64, activity_ms: u64, pong_ms: u64, auth_ms: Option<u64>) {
        if let Some(limit) = auth_ms {
            if !self.authorized.load(Ordering::Relaxed) && now_ms >= self.connected_ms + limit {
                return self.request_close(herald_protocol::codes::UNAUTHORIZED);
            }
        }
        let probed = self.probed_ms.load(Ordering::Relaxed);
        if probed != 0 {
            if now_ms >= probed + pong_ms {
                self.request_close(herald_protocol::codes::PONG_TIMEOUT);
            }
        } else if now_ms >= self.last_seen_ms.load(Ordering::Relaxed) + activity_ms {
            self.probed_ms.store(now_ms, Ordering::Relaxed);
            self.outbox.lock().ping = true;
            self.wake_task();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Arc<Conn> {
        Conn::new(SocketId::new(1, 1), Arc::new(App::default_app()))
    }

    #[test]
    fn outbox_keeps_order_and_holds_nothing_once_taken() {
        let c = conn();
        for i in 0..10 {
            assert!(c.send(&Frame::from(format!("f{i}"))));
        }
        let p = c.take();
        let got: Vec<_> = p.frames.iter().map(|f| f.json().to_vec()).collect();
        assert_eq!(got.len(), 10);
        assert_eq!(got[3], b"f3");
        assert!(c.take().frames.is_empty());
        assert_eq!(c.outbox.lock().frames.capacity(), 0);
    }

    #[test]
    fn overflow_closes_as_slow_consumer_and_refuses_more() {
        let c = conn();
        let f = Frame::from("x");
        for _ in 0..OUTBOX_MAX_FRAMES {
            assert!(c.send(&f));
        }
        assert!(!c.send(&f));
        assert_eq!(c.close_code(), Some(herald_protocol::codes::SLOW_CONSUMER));
        c.take();
        assert!(!c.send(&f), "nothing is queued for a slow consumer");
        let big = Frame::text(&vec![b'a'; OUTBOX_MAX_BYTES + 1]);
        let d = conn();
        assert!(!d.send(&big));
        assert_eq!(d.close_code(), Some(herald_protocol::codes::SLOW_CONSUMER));
    }

    #[test]
    fn a_deflating_connection_gets_the_compressed_form_made_once_and_shared() {
        let json = format!("{{\"event\":\"e\",\"data\":\"{}\"}}", "abc".repeat(200));
        let f = Frame::build(json.as_bytes(), true);
        let sinks: Vec<_> = (0..3)
            .map(|_| {
                Arc::new(Partial {
                    room: Mutex::new(usize::MAX),
                    got: Mutex::new(Vec::new()),
                })
            })
            .collect();
        let conns: Vec<_> = sinks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let c = conn();
                if i > 0 {
                    c.set_deflate();
                }
                c.attach(s.clone());
                assert!(c.send(&f));
                c
            })
            .collect();
        assert_eq!(*sinks[0].got.lock(), f.wire().to_vec(), "plain");
        let z = sinks[1].got.lock().clone();
        assert_eq!(z, *sinks[2].got.lock());
        assert_eq!(z[0], 0x80 | wsdeflate::RSV1 | 0x1, "final text, RSV1");
        assert!(z.len() < 100, "{} bytes", z.len());
        let payload = &z[2..];
        assert_eq!(usize::from(z[1]), payload.len());
        assert_eq!(
            wsdeflate::Inflater::inflate_alone(payload, 10_000).unwrap(),
            json.as_bytes()
        );
        // The same bytes, not a copy per connection.
        assert_eq!(conns[1].wire_of(&f).as_ptr(), conns[2].wire_of(&f).as_ptr());
        // A frame without a compressed form (under the threshold) goes plain.
        let small = Frame::build(b"{}", false);
        assert_eq!(conns[1].wire_of(&small), small.wire());
        // Incompressible: plain too.
        let noise = Frame::build(b"q7", true);
        assert_eq!(conns[1].wire_of(&noise), noise.wire());
    }

    #[test]
    fn a_cut_direct_write_of_a_compressed_frame_queues_its_compressed_rest() {
        let json = "x".repeat(5000);
        let f = Frame::build(json.as_bytes(), true);
        let sink = Arc::new(Partial {
            room: Mutex::new(3),
            got: Mutex::new(Vec::new()),
        });
        let c = conn();
        c.set_deflate();
        c.attach(sink.clone());
        assert!(c.send(&f));
        let p = c.take();
        assert!(p.frames[0].is_rest());
        let whole = [sink.got.lock().clone(), p.frames[0].wire().to_vec()].concat();
        assert_eq!(&whole[..], &f.deflated()[..]);
    }

    #[test]
    fn frames_carry_a_websocket_header() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let json = vec![b'x'; len];
            let f = Frame::text(&json);
            assert_eq!(f.json(), &json[..]);
            assert_eq!(f.wire()[0], 0x81);
            let header = f.wire().len() - len;
            assert_eq!(
                header,
                if len < 126 {
                    2
                } else if len < 65536 {
                    4
                } else {
                    10
                }
            );
        }
    }

    /// A socket that takes at most `room` bytes.
    struct Partial {
        room: Mutex<usize>,
        got: Mutex<Vec<u8>>,
    }

    impl Sink for Partial {
        fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
            let mut room = self.room.lock();
            if *room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(*room);
            *room -= n;
            self.got.lock().extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    #[test]
    fn direct_writes_keep_order_with_the_queue() {
        let c = conn();
        let sink = Arc::new(Partial {
            room: Mutex::new(5),
            got: Mutex::new(Vec::new()),
        });
        c.attach(sink.clone());
        assert!(c.send(&Frame::from("ab")));
        assert_eq!(sink.got.lock().len(), 4, "written directly");
        assert!(c.take().frames.is_empty());
        // One byte of room left: the rest of the frame is queued, and so is the next one.
        assert!(c.send(&Frame::from("cd")));
        assert!(c.send(&Frame::from("ef")));
        *sink.room.lock() = 100;
        assert!(c.send(&Frame::from("gh")), "queued behind the others");
        let p = c.take();
        assert_eq!(p.frames.len(), 3);
        assert_eq!(p.frames[0].wire().len(), 3, "the unwritten tail");
        assert!(p.frames[0].is_rest(), "the tail is marked as begun");
        assert_eq!(p.frames[1].json(), b"ef");
        assert!(!p.frames[1].is_rest());
        assert!(c.send(&Frame::from("ij")));
        assert_eq!(
            c.take().frames.len(),
            1,
            "no direct write while the task writes"
        );
        c.written();
        c.take();
        c.written();
        assert!(c.send(&Frame::from("kl")));
        assert!(
            c.take().frames.is_empty(),
            "direct again once the queue is written"
        );
        c.detach();
        assert!(c.send(&Frame::from("mn")));
        assert_eq!(c.take().frames.len(), 1, "queued after detach");
    }

    #[test]
    fn one_pong_answers_the_latest_ping_and_holds_off_direct_writes() {
        let c = conn();
        let sink = Arc::new(Partial {
            room: Mutex::new(1000),
            got: Mutex::new(Vec::new()),
        });
        c.attach(sink.clone());
        assert!(!c.has_pending());
        for i in 0..1000 {
            c.pong(format!("ping {i}").as_bytes());
        }
        assert!(c.has_pending(), "a pong to write");
        // Events after a pong go behind it (no direct write ahead of it, or inside it).
        assert!(c.send(&Frame::from("ev")));
        assert!(sink.got.lock().is_empty());
        let p = c.take();
        let (at, payload) = p.pong.unwrap();
        assert_eq!((at, &payload[..]), (0, &b"ping 999"[..]), "only the latest");
        assert_eq!(p.frames.len(), 1);
        // While the task writes it, the same.
        assert!(c.send(&Frame::from("ev2")));
        assert!(sink.got.lock().is_empty());
        c.written();
        let p = c.take();
        assert_eq!(p.frames.len(), 1);
        assert!(p.pong.is_none(), "taken once");
        c.written();
        assert!(c.send(&Frame::from("ev3")));
        assert_eq!(sink.got.lock().len(), 5, "direct again once written");

        // Its place: after the frames queued before the first ping it answers.
        let d = conn();
        assert!(d.send(&Frame::from("a")));
        d.pong(b"1");
        assert!(d.send(&Frame::from("b")));
        d.pong(b"2");
        let p = d.take();
        assert_eq!(p.frames.len(), 2);
        assert_eq!(
            p.pong.map(|(at, p)| (at, p.to_vec())),
            Some((1, b"2".to_vec()))
        );
    }

    #[test]
    fn waiting_for_a_close_leaves_the_wake_up_for_queued_frames() {
        let c = conn();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(
            c.send(&Frame::from("queued")),
            "no sink: queued, task woken"
        );
        assert!(c.poll_close(&mut cx).is_pending());
        assert!(
            c.poll_woken(&mut cx).is_ready(),
            "the wake-up is still there"
        );
        assert!(c.poll_woken(&mut cx).is_pending());
        c.request_close(herald_protocol::codes::RECONNECT);
        assert_eq!(
            c.poll_close(&mut cx),
            Poll::Ready(herald_protocol::codes::RECONNECT)
        );
        assert!(c.poll_woken(&mut cx).is_ready());
    }

    #[test]
    fn keepalive_probes_then_closes() {
        let c = conn();
        let t0 = c.connected_ms;
        c.keepalive(t0 + 500, 1000, 1000, None);
        assert!(!c.take().ping);
        c.keepalive(t0 + 1000, 1000, 1000, None);
        assert!(c.take().ping);
        c.keepalive(t0 + 1500, 1000, 1000, None);
        assert!(!c.take().ping, "one probe per silence");
        assert_eq!(c.close_code(), None);
        c.keepalive(t0 + 2000, 1000, 1000, None);
        assert_eq!(c.close_code(), Some(herald_protocol::codes::PONG_TIMEOUT));

        let d = conn();
        d.keepalive(d.connected_ms + 900, 1000, 1000, None);
        d.seen(d.connected_ms + 900);
        d.keepalive(d.connected_ms + 1800, 1000, 1000, None);
        assert!(!d.take().ping, "activity postpones the probe");

        let e = conn();
        e.keepalive(e.connected_ms + 100, 1000, 1000, Some(100));
        assert_eq!(e.close_code(), Some(herald_protocol::codes::UNAUTHORIZED));
        let f = conn();
        f.set_authorized();
        f.keepalive(f.connected_ms + 100, 1000, 1000, Some(100));
        assert_eq!(f.close_code(), None);
    }
}
