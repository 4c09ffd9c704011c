//! The built-in debug console at `/console` (off unless `console.token` is set).
//!
//! Three parts:
//! - [`Console`], a [`LifecycleSink`] that turns engine events into JSON lines for attached
//!   viewers. With nobody watching, `emit` returns after one atomic load: nothing is formatted.
//!   Each app has its own bounded broadcast buffer; a viewer that falls behind loses the oldest
//!   lines of its own buffer and is told how many (`{"type":"skipped","count":N}`). While the
//!   console is on it also keeps the latest lines ([`history`]), which a newly opened log
//!   starts with.
//! - The routes: the page (`/console`, signed in), its login prompt and static assets
//!   (public: they hold no data), sign-in and sign-out, and a small JSON API under
//!   `/console/api/` (signed in) that reads and publishes through the same
//!   [`Executor`](crate::executor::Executor) as the HTTP API, plus the server-sent-events feed
//!   `/console/api/feed?app=ID`.
//! - [`access`]: sign-in trades the admin token (POSTed once) for a session cookie; scripts may
//!   send `Authorization: Bearer <token>`; the token never travels in a URL. State-changing
//!   requests must come from the console's own origin. No credentials → 401 (the page redirects
//!   to the login prompt); cross-origin change → 403; console off (no token configured) → 404.

pub mod access;
pub mod history;
pub mod routes;

use crate::drain::Drain;
use crate::executor::Executor;
use crate::sinks::event::{self, HookName};
use crate::sinks::webhook::DeliveryObserver;
use herald_core::{LifecycleEvent, LifecycleSink};
use history::{History, HISTORY_BYTES, HISTORY_LINES, OVERHEAD_BYTES};
use parking_lot::RwLock;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use routes::router;

/// What the console's routes need: their narrow handle.
#[derive(Debug)]
pub struct ConsoleState {
    pub console: Arc<Console>,
    pub executor: Executor,
    pub drain: Arc<Drain>,
    /// The admin token; the console is off while it is empty.
    pub token: String,
    /// Sessions and the wrong-token rate limit.
    pub auth: access::Auth,
    /// Connections arrive over TLS (session cookies are then `Secure`).
    pub tls: bool,
    pub path_prefix: String,
    pub max_request_body_bytes: usize,
}

/// Lines buffered per app for its viewers; a viewer further behind skips the oldest.
pub const FEED_CAPACITY: usize = 1024;
/// Event data (client events and API publishes) shown in the log is cut to this many bytes.
pub const DATA_PREVIEW_BYTES: usize = 256;
/// How often an idle feed checks whether the server is draining.
const DRAIN_CHECK: Duration = Duration::from_secs(1);

/// Receives lifecycle events for attached console viewers.
#[derive(Debug, Default)]
pub struct Console {
    /// Attached viewers over all apps: the zero-cost fast path of `emit`.
    viewers: AtomicUsize,
    /// One bounded broadcast buffer of JSON lines per watched app.
    feeds: RwLock<HashMap<Arc<str>, broadcast::Sender<Live>>>,
    /// The latest lines of every app, when the console is on (none: nobody can open a log).
    history: Option<History<Kept>>,
    /// Ends every feed (server shutdown).
    closed: CancellationToken,
}

/// A line as the history keeps it: an event is formatted only if someone opens a log.
#[derive(Debug, Clone)]
enum Kept {
    Event(LifecycleEvent, u64),
    Line(Arc<str>),
}

/// A line of a live feed with its place in the history (0 without one).
#[derive(Debug, Clone)]
struct Live {
    seq: u64,
    line: Arc<str>,
}

/// What a newly opened feed starts with: the app's recent lines, oldest first, as
/// `(event id, line)`, and the last sequence number they cover (later live lines are new).
#[derive(Debug, Default)]
pub struct Backlog {
    pub lines: Vec<(String, Arc<str>)>,
    pub upto: u64,
}

/// One attached viewer of one app's feed; detaches when dropped.
#[derive(Debug)]
pub struct Viewer {
    rx: broadcast::Receiver<Live>,
    console: Arc<Console>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.console.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a viewer reads next.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// One JSON line and its sequence number in the history (0 without one).
    Line(u64, Arc<str>),
    /// The viewer fell behind and this many lines were dropped from its buffer.
    Skipped(u64),
}

impl Viewer {
    /// The next line, `None` once the console is closed.
    pub async fn next(&mut self) -> Option<FeedItem> {
        match self.rx.recv().await {
            Ok(live) => Some(FeedItem::Line(live.seq, live.line)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(FeedItem::Skipped(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Console {
    /// A console that keeps no history (it costs nothing while nobody watches).
    pub fn new() -> Self {
        Self::default()
    }

    /// A console that keeps the latest lines of every app for the logs opened later (at most
    /// [`HISTORY_BYTES`]): each event is then kept, unformatted, even while nobody watches.
    pub fn keeping_history() -> Self {
        Self {
            history: Some(History::new(HISTORY_BYTES)),
            ..Self::default()
        }
    }

    /// Number of attached viewers (all apps).
    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }

    /// Attaches a viewer to `app`'s feed.
    pub fn attach(self: &Arc<Self>, app: &str) -> Viewer {
        self.viewers.fetch_add(1, Ordering::Relaxed);
        let mut feeds = self.feeds.write();
        // Forget the buffers of apps nobody watches any more.
        feeds.retain(|_, tx| tx.receiver_count() > 0);
        let tx = feeds
            .entry(Arc::from(app))
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0);
        Viewer {
            rx: tx.subscribe(),
            console: self.clone(),
        }
    }

    /// What a feed of `app` opened now starts with: its latest lines (at most
    /// [`HISTORY_LINES`]) after the one `last_id` names (the `Last-Event-ID` of a reconnecting
    /// browser; none: all of them). Call it after [`Console::attach`], so that every line is in
    /// the backlog or in the feed: the feed skips those numbered up to `upto`.
    pub fn backlog(&self, app: &str, last_id: Option<&str>) -> Backlog {
        let Some(h) = &self.history else {
            return Backlog::default();
        };
        let after = last_id.map_or(0, |id| h.seq_of(id));
        let (kept, upto) = h.recent(app, after, HISTORY_LINES);
        let lines = kept
            .into_iter()
            .map(|(seq, k)| {
                let line = match k {
                    Kept::Event(ev, ts) => event_json(&ev, ts).into(),
                    Kept::Line(line) => line,
                };
                (h.event_id(seq), line)
            })
            .collect();
        Backlog { lines, upto }
    }

    /// The event id of line `seq` of the history.
    pub fn event_id(&self, seq: u64) -> Option<String> {
        self.history
            .as_ref()
            .filter(|_| seq > 0)
            .map(|h| h.event_id(seq))
    }

    /// Ends every feed; viewers see the end of their stream.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// The sender for `app` when someone watches it. Takes no lock while nobody watches anything.
    fn watched(&self, app: &str) -> Option<broadcast::Sender<Live>> {
        if self.viewers.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let feeds = self.feeds.read();
        feeds.get(app).filter(|tx| tx.receiver_count() > 0).cloned()
    }
}

impl DeliveryObserver for Console {
    fn delivery(
        &self,
        app: &str,
        url: &str,
        events: &[(HookName, Arc<str>)],
        result: Result<u16, &str>,
    ) {
        if self.history.is_none() && self.viewers() == 0 {
            return;
        }
        let line: Arc<str> = webhook_json(url, events, result, now_ms()).into();
        let app: Arc<str> = Arc::from(app);
        // Kept first, then sent: see `backlog`.
        let seq = self.history.as_ref().map_or(0, |h| {
            h.keep(&app, Kept::Line(line.clone()), OVERHEAD_BYTES + line.len())
        });
        if let Some(tx) = self.watched(&app) {
            let _ = tx.send(Live { seq, line });
        }
    }
}

impl LifecycleSink for Console {
    fn emit(&self, event: &LifecycleEvent) {
        if self.history.is_none() && self.viewers() == 0 {
            return;
        }
        let ts = now_ms();
        let app = event::app(event);
        // Kept first, then sent: a viewer that attached before reading the history gets every
        // later line from the feed (see `backlog`).
        let seq = self.history.as_ref().map_or(0, |h| {
            h.keep(app, Kept::Event(event.clone(), ts), weight(event))
        });
        if let Some(tx) = self.watched(app) {
            let _ = tx.send(Live {
                seq,
                line: event_json(event, ts).into(),
            });
        }
    }
}

/// The bytes an event holds while kept: its strings (payloads whole) and a slot.
fn weight(ev: &LifecycleEvent) -> usize {
    let f = event::fields(ev);
    let len = |s: Option<&str>| s.map_or(0, str::len);
    OVERHEAD_BYTES + len(f.channel) + len(f.event) + len(f.data) + len(f.user_id)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `s` cut to at most `max` bytes on a character boundary.
fn preview(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One log line: `{"ts":<unix ms>,"type":"…", …}` with the event's fields.
pub fn event_json(ev: &LifecycleEvent, ts_ms: u64) -> String {
    let f = event::fields(ev);
    let mut o = Map::new();
    o.insert("ts".into(), json!(ts_ms));
    o.insert("type".into(), json!(event::log_name(ev)));
    f.put_common(&mut o);
    match ev {
        // The log shows who sent a client event even when nobody signed it (null).
        LifecycleEvent::ClientEvent { .. } => {
            o.entry("user_id").or_insert(Value::Null);
        }
        LifecycleEvent::ApiPublish { .. } => {
            o.insert(
                "except".into(),
                f.except.map_or(Value::Null, |s| json!(s.to_string())),
            );
        }
        _ => {}
    }
    if let Some(d) = f.data {
        o.insert("data_len".into(), json!(d.len()));
        o.insert("data".into(), json!(preview(d, DATA_PREVIEW_BYTES)));
    }
    if let Some(n) = f.count {
        o.insert("count".into(), json!(n));
    }
    Value::Object(o).to_string()
}

/// A webhook delivery line: the events it carried (name and channel), the URL and the result.
/// The line's `channel` is set when every event is about the same channel.
pub fn webhook_json(
    url: &str,
    events: &[(HookName, Arc<str>)],
    result: Result<u16, &str>,
    ts_ms: u64,
) -> String {
    let (kind, result) = match result {
        Ok(status) if (200..300).contains(&status) => ("webhook_sent", json!(status)),
        Ok(status) => ("webhook_failed", json!(status)),
        Err(e) => ("webhook_failed", json!(e)),
    };
    let list: Vec<Value> = events
        .iter()
        .map(|(name, channel)| json!({ "name": name.as_str(), "channel": &**channel }))
        .collect();
    let mut o = json!({ "ts": ts_ms, "type": kind, "url": url, "events": list, "result": result });
    if let Some((_, first)) = events.first() {
        if events.iter().all(|(_, c)| c == first) {
            o["channel"] = json!(&**first);
        }
    }
    o.to_string()
}

/// The line a lagging viewer gets in place of what it missed.
pub fn skipped_json(count: u64, ts_ms: u64) -> String {
    json!({ "ts": ts_ms, "type": "skipped", "count": count }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::SocketId;

    fn connected(app: &str, seq: u64) -> LifecycleEvent {
        LifecycleEvent::Connected {
            app: Arc::from(app),
            socket_id: SocketId::new(1, seq),
        }
    }

    #[test]
    fn events_format_as_json_lines() {
        let v: Value = serde_json::from_str(&event_json(&connected("a", 7), 42)).unwrap();
        assert_eq!(
            v,
            json!({ "ts": 42, "type": "connected", "socket_id": "1.7" })
        );

        let ev = LifecycleEvent::ApiPublish {
            app: "a".into(),
            channel: "my-channel".into(),
            event: "my-event".into(),
            data: r#"{"message":"hi"}"#.into(),
            except: Some(SocketId::new(3, 4)),
        };
        let v: Value = serde_json::from_str(&event_json(&ev, 1)).unwrap();
        assert_eq!(
            v,
            json!({ "ts": 1, "type": "api_publish", "channel": "my-channel", "event": "my-event",
                    "data_len": 16, "data": r#"{"message":"hi"}"#, "except": "3.4" })
        );

        // Long payloads are cut the same way for client events and API publishes.
        let long = "é".repeat(200); // 400 bytes
        let ev = LifecycleEvent::ClientEvent {
            app: "a".into(),
            channel: "private-c".into(),
            event: "client-x".into(),
            data: long.as_str().into(),
            socket_id: SocketId::new(1, 2),
            user_id: None,
        };
        let v: Value = serde_json::from_str(&event_json(&ev, 1)).unwrap();
        assert_eq!(v["type"], "client_event");
        assert_eq!(v["data_len"], 400);
        assert_eq!(v["data"].as_str().unwrap().len(), DATA_PREVIEW_BYTES);
        assert_eq!(v["user_id"], Value::Null);
        let ev = LifecycleEvent::ApiPublish {
            app: "a".into(),
            channel: "c".into(),
            event: "e".into(),
            data: long.as_str().into(),
            except: None,
        };
        let v: Value = serde_json::from_str(&event_json(&ev, 1)).unwrap();
        assert_eq!(v["type"], "api_publish");
        assert_eq!(v["data_len"], 400);
        assert_eq!(v["data"].as_str().unwrap().len(), DATA_PREVIEW_BYTES);
        assert_eq!(v["except"], Value::Null);
        assert!(v.get("user_id").is_none());

        let ev = LifecycleEvent::MemberAdded {
            app: "a".into(),
            channel: "presence-p".into(),
            user_id: "u1".into(),
        };
        let v: Value = serde_json::from_str(&event_json(&ev, 1)).unwrap();
        assert_eq!(
            v,
            json!({ "ts": 1, "type": "member_added", "channel": "presence-p", "user_id": "u1" })
        );

        let one = [(HookName::ChannelOccupied, Arc::from("c1"))];
        let v: Value = serde_json::from_str(&webhook_json("http://h/x", &one, Ok(500), 1)).unwrap();
        assert_eq!(
            v,
            json!({ "ts": 1, "type": "webhook_failed", "url": "http://h/x", "result": 500, "channel": "c1",
                    "events": [{ "name": "channel_occupied", "channel": "c1" }] })
        );
        let two = [
            (HookName::ChannelVacated, Arc::from("a")),
            (HookName::MemberAdded, Arc::from("b")),
        ];
        let v: Value = serde_json::from_str(&webhook_json("u", &two, Ok(204), 1)).unwrap();
        assert_eq!(v["type"], "webhook_sent");
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert!(v.get("channel").is_none());
        let v: Value = serde_json::from_str(&webhook_json("u", &[], Err("refused"), 1)).unwrap();
        assert_eq!(v["type"], "webhook_failed");
        assert_eq!(v["result"], "refused");
        let v: Value = serde_json::from_str(&skipped_json(12, 1)).unwrap();
        assert_eq!(v, json!({ "ts": 1, "type": "skipped", "count": 12 }));
    }

    #[test]
    fn preview_cuts_on_char_boundaries() {
        assert_eq!(preview("abc", 5), "abc");
        assert_eq!(preview("aé", 2), "a");
        assert_eq!(preview("aé", 3), "aé");
    }

    #[tokio::test]
    async fn nobody_watching_costs_nothing() {
        let c = Arc::new(Console::new());
        // No viewer: emit stops at the atomic load; no buffer exists for anyone.
        c.emit(&connected("a", 1));
        assert_eq!(c.viewers(), 0);
        assert!(c.watched("a").is_none());
        assert!(c.feeds.read().is_empty());

        let mut v = c.attach("a");
        assert_eq!(c.viewers(), 1);
        c.emit(&connected("b", 2)); // another app: not formatted for this viewer
        c.emit(&connected("a", 3));
        let FeedItem::Line(_, line) = v.next().await.unwrap() else {
            panic!("expected a line")
        };
        assert!(line.contains("\"1.3\""), "{line}");
        drop(v);
        assert_eq!(c.viewers(), 0);
        assert!(c.watched("a").is_none());
        // A new viewer does not see what happened while nobody watched.
        c.emit(&connected("a", 4));
        let mut v = c.attach("a");
        assert!(c.feeds.read().len() == 1);
        c.emit(&connected("a", 5));
        let FeedItem::Line(_, line) = v.next().await.unwrap() else {
            panic!("expected a line")
        };
        assert!(line.contains("\"1.5\""), "{line}");
    }

    #[tokio::test]
    async fn slow_viewer_skips_with_a_count() {
        let c = Arc::new(Console::new());
        let mut slow = c.attach("a");
        let n = FEED_CAPACITY as u64 + 10;
        for i in 0..n {
            c.emit(&connected("a", i));
        }
        assert_eq!(slow.next().await, Some(FeedItem::Skipped(10)));
        let FeedItem::Line(_, line) = slow.next().await.unwrap() else {
            panic!("expected a line")
        };
        assert!(line.contains("\"1.10\""), "{line}");
    }

    #[tokio::test]
    async fn a_new_viewer_starts_with_the_history_and_no_line_twice() {
        let c = Arc::new(Console::keeping_history());
        // Nobody watches, yet the events are kept.
        c.emit(&connected("a", 1));
        c.emit(&connected("b", 2));
        c.emit(&connected("a", 3));
        c.delivery(
            "a",
            "http://h/x",
            &[(HookName::ChannelOccupied, Arc::from("c1"))],
            Ok(200),
        );

        let mut v = c.attach("a");
        // An event between attaching and reading the history: in both, shown once.
        c.emit(&connected("a", 4));
        let b = c.backlog("a", None);
        let ids: Vec<&str> = b.lines.iter().map(|(_, l)| &**l).collect();
        assert_eq!(ids.len(), 4, "{ids:?}");
        assert!(
            ids[0].contains("\"1.1\"") && ids[1].contains("\"1.3\""),
            "{ids:?}"
        );
        assert!(
            ids[2].contains("webhook_sent") && ids[3].contains("\"1.4\""),
            "{ids:?}"
        );
        c.emit(&connected("a", 5));
        let first_new = loop {
            match v.next().await.unwrap() {
                FeedItem::Line(seq, _) if seq <= b.upto => {} // in the backlog
                FeedItem::Line(_, line) => break line,
                FeedItem::Skipped(n) => panic!("skipped {n}"),
            }
        };
        assert!(first_new.contains("\"1.5\""), "{first_new}");

        // A reconnecting browser names the last line it saw and gets only the later ones.
        let (third, _) = &b.lines[2];
        let again = c.backlog("a", Some(third.as_str()));
        let lines: Vec<&str> = again.lines.iter().map(|(_, l)| &**l).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("\"1.4\"") && lines[1].contains("\"1.5\""));
        // An id from another run means nothing: the whole history again.
        assert_eq!(c.backlog("a", Some("0-2")).lines.len(), 5);
        assert_eq!(c.backlog("b", None).lines.len(), 1);
    }

    #[test]
    fn the_history_is_bounded() {
        let c = Console::keeping_history();
        let big = "x".repeat(10_000);
        for i in 0..(HISTORY_BYTES / 10_000 + 50) {
            c.emit(&LifecycleEvent::ApiPublish {
                app: "a".into(),
                channel: "c".into(),
                event: format!("e{i}").into(),
                data: big.as_str().into(),
                except: None,
            });
        }
        let h = c.history.as_ref().unwrap();
        assert!(h.bytes() <= HISTORY_BYTES, "{} bytes", h.bytes());
        assert!(c.backlog("a", None).lines.len() < HISTORY_BYTES / 10_000);
        for i in 0..HISTORY_LINES as u64 + 20 {
            c.emit(&connected("a", i));
        }
        let b = c.backlog("a", None);
        assert_eq!(b.lines.len(), HISTORY_LINES);
        assert!(b.lines[HISTORY_LINES - 1]
            .1
            .contains(&format!("\"1.{}\"", HISTORY_LINES + 19)));
        // Without a history (the console off) nothing is kept.
        let off = Console::new();
        off.emit(&connected("a", 1));
        assert!(off.backlog("a", None).lines.is_empty());
    }

    #[tokio::test]
    async fn close_ends_feeds() {
        let c = Arc::new(Console::new());
        let _v = c.attach("a");
        c.close();
        assert!(c.closed.is_cancelled());
    }
}
