//! Webhooks: built from the engine's lifecycle events, delayed and de-duplicated where the
//! protocol says so, batched per app if asked, signed, and delivered with retries.
//!
//! Flow: `emit` (engine thread, never blocks) → per-app dispatcher task (vacate/member-removed
//! delay, cache-miss de-duplication, batching, per-target filtering and signing) → per-target
//! delivery worker (FIFO, retries with back-off within the retry window). At shutdown every
//! delayed event fires at once, workers deliver until the deadline, and what is left is written to
//! the spool file, which the next start sends first.

use crate::config::WebhookSettings;
use crate::sinks::event::{self, HookName};
use crate::sinks::metrics::Metrics;
use herald_core::{App, AppStore, LifecycleEvent, LifecycleSink, WebhookTarget};
use herald_protocol::sign;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Counters for operators (and metrics).
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub created: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub spooled: AtomicU64,
}

/// What became of a webhook (or of an event that would have become one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retried,
    Failed,
    Spooled,
    Dropped,
}

impl Outcome {
    /// The `outcome` label of `herald_webhooks_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
            Outcome::Spooled => "spooled",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Hears about every webhook request (the console shows them in its live log).
pub trait DeliveryObserver: Send + Sync {
    /// `events` are the (name, channel) pairs of the body; `result` is the HTTP status of the
    /// answer or the transport error.
    fn delivery(
        &self,
        app: &str,
        url: &str,
        events: &[(HookName, Arc<str>)],
        result: Result<u16, &str>,
    );
}

/// What a re-join cancels: the channel, and the user for member events.
type RejoinKey = (Arc<str>, Option<Arc<str>>);

/// One event in a webhook body.
#[derive(Debug, Clone)]
struct HookEvent {
    name: HookName,
    channel: Arc<str>,
    /// Member events: what a re-join within the delay cancels.
    user_id: Option<Arc<str>>,
    body: Map<String, Value>,
}

impl HookEvent {
    /// The body Pusher documents for `ev`: `name`, `channel` and the event's own fields.
    fn of(ev: &LifecycleEvent) -> Option<Self> {
        let name = event::hook(ev)?;
        let f = event::fields(ev);
        let channel: Arc<str> = Arc::from(f.channel?);
        let mut body = Map::new();
        body.insert("name".into(), json!(name.as_str()));
        f.put_common(&mut body);
        if let Some(d) = f.data {
            body.insert("data".into(), json!(d));
        }
        if let Some(n) = f.count {
            body.insert("subscription_count".into(), json!(n));
        }
        let user_id = matches!(name, HookName::MemberAdded | HookName::MemberRemoved)
            .then(|| f.user_id.map(Arc::from))
            .flatten();
        Some(Self {
            name,
            channel,
            user_id,
            body,
        })
    }
}

/// A signed request, ready to (re)send; also the spool file's line format.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    app_id: String,
    url: String,
    key: String,
    signature: String,
    body: String,
    headers: Vec<(String, String)>,
    /// Creation time (Unix ms): the retry window counts from here.
    created_ms: u64,
    /// The (name, channel) of each event in `body`, for observers (absent in older spools).
    #[serde(default)]
    events: Vec<(HookName, Arc<str>)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Inner {
    settings: WebhookSettings,
    apps: Arc<dyn AppStore>,
    client: reqwest::Client,
    dispatchers: Mutex<HashMap<String, mpsc::Sender<HookEvent>>>,
    /// Dispatcher tasks still running (workers keep going while any may still queue work).
    live_dispatchers: AtomicU64,
    workers: Mutex<HashMap<(String, String), Arc<Worker>>>,
    stats: Arc<WebhookStats>,
    metrics: Option<Arc<Metrics>>,
    /// Shows deliveries in the debug console's live log.
    observer: Option<Arc<dyn DeliveryObserver>>,
    tracker: TaskTracker,
    /// Cancelled when shutdown begins: dispatchers flush delayed events and stop.
    stopping: CancellationToken,
    /// Cancelled at the shutdown deadline: workers stop and spool what is left.
    deadline: CancellationToken,
    spool: Mutex<Vec<Arc<Delivery>>>,
}

/// A FIFO of deliveries for one (app, url) and the task that sends them.
struct Worker {
    queue: Mutex<Pending>,
    notify: Notify,
}

/// One target's pending webhooks, oldest first: at most `capacity` (`webhooks.queue_capacity`),
/// the one being sent included, since it stays at the front until it is delivered, given up
/// or spooled.
#[derive(Debug)]
struct Pending {
    items: VecDeque<Arc<Delivery>>,
    capacity: usize,
}

impl Pending {
    fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `d` behind the others, or hands it back when the queue is full.
    fn offer(&mut self, d: Arc<Delivery>) -> Result<(), Arc<Delivery>> {
        if self.items.len() >= self.capacity {
            return Err(d);
        }
        self.items.push_back(d);
        Ok(())
    }

    /// The oldest webhook, to send; it stays pending until `done`.
    fn front(&self) -> Option<Arc<Delivery>> {
        self.items.front().cloned()
    }

    /// The oldest webhook was delivered or given up.
    fn done(&mut self) {
        self.items.pop_front();
    }

    /// Everything pending, oldest first (for the spool).
    fn take_all(&mut self) -> impl Iterator<Item = Arc<Delivery>> + '_ {
        self.items.drain(..)
    }
}

/// The wait before the attempt that follows `failures` failed ones: 1 s, doubling, at most 60 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

/// Whether an attempt made after waiting `wait` from `now_ms` still starts inside the retry
/// window that ends at `window_end_ms` (receivers reject stale bodies).
fn retry_fits(now_ms: u64, wait: Duration, window_end_ms: u64) -> bool {
    now_ms + wait.as_millis() as u64 <= window_end_ms
}

/// Handle to the webhook machinery; also the engine's lifecycle sink.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Webhooks {
    pub fn new(
        settings: WebhookSettings,
        apps: Arc<dyn AppStore>,
        metrics: Option<Arc<Metrics>>,
        observer: Option<Arc<dyn DeliveryObserver>>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .http1_only()
            // PHP receivers read `X-Pusher-Key` case-sensitively.
            .http1_title_case_headers()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with static settings");
        Self {
            inner: Arc::new(Inner {
                settings,
                apps,
                client,
                dispatchers: Mutex::new(HashMap::new()),
                live_dispatchers: AtomicU64::new(0),
                workers: Mutex::new(HashMap::new()),
                stats: Arc::new(WebhookStats::default()),
                metrics,
                observer,
                tracker: TaskTracker::new(),
                stopping: CancellationToken::new(),
                deadline: CancellationToken::new(),
                spool: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.inner.stats
    }

    /// Sends what an earlier run left in the spool file, then removes the file.
    pub fn load_spool(&self) {
        let path = &self.inner.settings.spool_file;
        if path.is_empty() {
            return;
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let mut n = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Delivery>(line) {
                Ok(d) => {
                    self.enqueue(d);
                    n += 1;
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable webhook spool line"),
            }
        }
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(error = %e, path, "cannot remove the webhook spool file");
        }
        tracing::info!(
            count = n,
            path,
            "resending webhooks spooled at the last shutdown"
        );
    }

    fn dispatcher(&self, app: &App) -> Option<mpsc::Sender<HookEvent>> {
        if self.inner.stopping.is_cancelled() {
            return None;
        }
        let mut d = self.inner.dispatchers.lock();
        if let Some(tx) = d.get(&app.id) {
            return Some(tx.clone());
        }
        let (tx, rx) = mpsc::channel(self.inner.settings.queue_capacity.max(1));
        d.insert(app.id.clone(), tx.clone());
        let this = self.clone();
        let app_id = app.id.clone();
        self.inner.live_dispatchers.fetch_add(1, Ordering::SeqCst);
        self.inner.tracker.spawn(async move {
            this.clone().dispatch(app_id, rx).await;
            this.inner.live_dispatchers.fetch_sub(1, Ordering::SeqCst);
        });
        Some(tx)
    }

    /// The per-app dispatcher loop.
    async fn dispatch(self, app_id: String, mut rx: mpsc::Receiver<HookEvent>) {
        let s = &self.inner.settings;
        let delay = Duration::from_millis(s.vacate_delay_ms);
        let debounce = Duration::from_millis(s.cache_miss_debounce_ms);
        // Delayed vacate/member-removed events, keyed by what a re-join cancels.
        let mut delayed: HashMap<RejoinKey, (Instant, HookEvent)> = HashMap::new();
        let mut last_miss: HashMap<Arc<str>, Instant> = HashMap::new();
        let mut batch: Vec<HookEvent> = Vec::new();
        let mut batch_due: Option<Instant> = None;
        let mut stopping = false;
        loop {
            let next_delay = delayed.values().map(|(t, _)| *t).min();
            let wake = [next_delay, batch_due].into_iter().flatten().min();
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                () = async { tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)).await }, if wake.is_some() => None,
                () = self.inner.stopping.cancelled(), if !stopping => {
                    stopping = true;
                    None
                }
            };
            let now = Instant::now();
            if let Some(ev) = ev {
                let user = ev.user_id.clone();
                match ev.name {
                    HookName::ChannelVacated | HookName::MemberRemoved
                        if !delay.is_zero() && !stopping =>
                    {
                        delayed.insert((ev.channel.clone(), user), (now + delay, ev));
                    }
                    HookName::ChannelOccupied | HookName::MemberAdded
                        if delayed
                            .remove(&(ev.channel.clone(), user.clone()))
                            .is_some() =>
                    {
                        // A quick return: neither the leave nor this join is reported.
                    }
                    HookName::CacheMiss => {
                        if last_miss
                            .get(&ev.channel)
                            .is_none_or(|t| now.duration_since(*t) >= debounce)
                        {
                            last_miss.insert(ev.channel.clone(), now);
                            self.push(&app_id, ev, &mut batch, &mut batch_due, now);
                        }
                    }
                    _ => self.push(&app_id, ev, &mut batch, &mut batch_due, now),
                }
            } else if !stopping && rx.is_closed() && delayed.is_empty() {
                break;
            }
            // Fire what is due (everything once shutdown began).
            let due: Vec<_> = delayed
                .iter()
                .filter(|(_, (t, _))| stopping || *t <= now)
                .map(|(k, _)| k.clone())
                .collect();
            let mut fired: Vec<(Instant, HookEvent)> =
                due.into_iter().filter_map(|k| delayed.remove(&k)).collect();
            // Member removals before the vacate that follows them.
            fired.sort_by_key(|(t, e)| (*t, e.name == HookName::ChannelVacated));
            for (_, ev) in fired {
                self.push(&app_id, ev, &mut batch, &mut batch_due, now);
            }
            last_miss.retain(|_, t| now.duration_since(*t) < debounce);
            if batch_due.is_some_and(|t| stopping || t <= now) {
                self.flush(&app_id, std::mem::take(&mut batch));
                batch_due = None;
            }
            if stopping {
                // Drain whatever is still queued, without delays, then stop.
                while let Ok(ev) = rx.try_recv() {
                    self.push(&app_id, ev, &mut batch, &mut batch_due, now);
                }
                self.flush(&app_id, std::mem::take(&mut batch));
                break;
            }
        }
    }

    fn push(
        &self,
        app_id: &str,
        ev: HookEvent,
        batch: &mut Vec<HookEvent>,
        due: &mut Option<Instant>,
        now: Instant,
    ) {
        let Some(app) = self.inner.apps.by_id(app_id) else {
            return;
        };
        if !app.batch_webhooks {
            self.flush(app_id, vec![ev]);
            return;
        }
        batch.push(ev);
        if batch.len() >= self.inner.settings.batch_max_events.max(1) {
            self.flush(app_id, std::mem::take(batch));
            *due = None;
        } else if due.is_none() {
            *due = Some(now + Duration::from_millis(self.inner.settings.batch_window_ms));
        }
    }

    /// Builds one body per target from `events` (filtered per target, then signed) and queues it.
    fn flush(&self, app_id: &str, events: Vec<HookEvent>) {
        if events.is_empty() {
            return;
        }
        let Some(app) = self.inner.apps.by_id(app_id) else {
            return;
        };
        let created_ms = now_ms();
        for target in &app.webhooks {
            let wanted: Vec<&HookEvent> = events
                .iter()
                .filter(|e| target.wants(e.name.as_str(), &e.channel))
                .collect();
            let chosen: Vec<Value> = wanted
                .iter()
                .map(|e| Value::Object(e.body.clone()))
                .collect();
            if chosen.is_empty() {
                continue;
            }
            let body = json!({ "time_ms": created_ms, "events": chosen }).to_string();
            self.inner.stats.created.fetch_add(1, Ordering::Relaxed);
            self.enqueue(Delivery {
                app_id: app.id.clone(),
                url: target.url.clone(),
                key: app.key.clone(),
                signature: sign::hmac_hex(&app.secret, body.as_bytes()),
                body,
                headers: extra_headers(target),
                created_ms,
                events: wanted.iter().map(|e| (e.name, e.channel.clone())).collect(),
            });
        }
    }

    fn enqueue(&self, d: Delivery) {
        let key = (d.app_id.clone(), d.url.clone());
        let worker = {
            let mut w = self.inner.workers.lock();
            if let Some(w) = w.get(&key) {
                w.clone()
            } else {
                let worker = Arc::new(Worker {
                    queue: Mutex::new(Pending::new(self.inner.settings.queue_capacity)),
                    notify: Notify::new(),
                });
                w.insert(key, worker.clone());
                let this = self.clone();
                let wk = worker.clone();
                self.inner.tracker.spawn(async move { this.work(wk).await });
                worker
            }
        };
        let offered = worker.queue.lock().offer(Arc::new(d));
        if let Err(d) = offered {
            self.inner.outcome(&d.app_id, Outcome::Dropped, 1);
            tracing::warn!(app = %d.app_id, url = %d.url, capacity = self.inner.settings.queue_capacity, "webhook queue full: dropping a webhook");
            return;
        }
        worker.notify.notify_one();
    }

    /// Delivers one target's queue in order; at the deadline, spools what is left.
    async fn work(self, w: Arc<Worker>) {
        loop {
            let next = w.queue.lock().front();
            let Some(d) = next else {
                if self.inner.stopping.is_cancelled() && self.inner.dispatchers_done() {
                    return;
                }
                tokio::select! {
                    () = w.notify.notified() => continue,
                    () = self.inner.deadline.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)), if self.inner.stopping.is_cancelled() => continue,
                }
            };
            tokio::select! {
                () = self.deliver(&d) => w.queue.lock().done(),
                () = self.inner.deadline.cancelled() => {
                    // `d` is still at the front: spooled with the rest, in order.
                    self.inner.spool.lock().extend(w.queue.lock().take_all());
                    return;
                }
            }
        }
    }

    /// Sends `d` until a 2xx, or gives up at the end of the retry window.
    async fn deliver(&self, d: &Delivery) {
        let window_end = d.created_ms + self.inner.settings.retry_window_secs * 1000;
        let mut failures = 0;
        loop {
            if now_ms() > window_end {
                // Receivers reject stale bodies (pusher-http-python: older than 5 minutes).
                self.inner.outcome(&d.app_id, Outcome::Failed, 1);
                tracing::warn!(app = %d.app_id, url = %d.url, "webhook not sent: its retry window is over");
                return;
            }
            let remaining = Duration::from_millis(window_end.saturating_sub(now_ms()));
            let mut req = self
                .inner
                .client
                .post(&d.url)
                .header("Content-Type", "application/json")
                .header("X-Pusher-Key", &d.key)
                .header("X-Pusher-Signature", &d.signature)
                // No attempt may still be running when the window closes.
                .timeout(
                    remaining
                        .min(Duration::from_millis(
                            self.inner.settings.request_timeout_ms,
                        ))
                        .max(Duration::from_millis(1)),
                )
                .body(d.body.clone());
            for (k, v) in &d.headers {
                req = req.header(k, v);
            }
            let outcome = match req.send().await {
                Ok(r) => {
                    let status = r.status();
                    if let Some(o) = &self.inner.observer {
                        o.delivery(&d.app_id, &d.url, &d.events, Ok(status.as_u16()));
                    }
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("status {status}"))
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    if let Some(o) = &self.inner.observer {
                        o.delivery(&d.app_id, &d.url, &d.events, Err(&reason));
                    }
                    Err(reason)
                }
            };
            match outcome {
                Ok(()) => {
                    self.inner.outcome(&d.app_id, Outcome::Delivered, 1);
                    return;
                }
                Err(reason) => {
                    let wait = backoff(failures);
                    failures += 1;
                    if !retry_fits(now_ms(), wait, window_end) {
                        self.inner.outcome(&d.app_id, Outcome::Failed, 1);
                        tracing::warn!(app = %d.app_id, url = %d.url, %reason, "webhook failed; retry window over, giving up");
                        return;
                    }
                    self.inner.outcome(&d.app_id, Outcome::Retried, 1);
                    tracing::info!(app = %d.app_id, url = %d.url, %reason, retry_in_ms = wait.as_millis() as u64, "webhook attempt failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Flushes delayed events, delivers until `deadline`, and spools what is left.
    pub async fn shutdown(&self, deadline: Instant) {
        self.inner.stopping.cancel();
        self.inner.dispatchers.lock().clear();
        self.inner.tracker.close();
        if tokio::time::timeout_at(deadline, self.inner.tracker.wait())
            .await
            .is_err()
        {
            self.inner.deadline.cancel();
            self.inner.tracker.wait().await;
        }
        let left = std::mem::take(&mut *self.inner.spool.lock());
        // Workers that never started on their queue leave it there.
        let mut left = left;
        for w in self.inner.workers.lock().values() {
            left.extend(w.queue.lock().take_all());
        }
        if left.is_empty() {
            return;
        }
        let path = &self.inner.settings.spool_file;
        if path.is_empty() {
            tracing::error!(count = left.len(), "shutdown deadline reached with undelivered webhooks and no spool_file set: they are lost");
            return;
        }
        let text: String = left
            .iter()
            .filter_map(|d| serde_json::to_string(d).ok())
            .map(|l| l + "\n")
            .collect();
        match std::fs::write(path, text) {
            Ok(()) => {
                for d in &left {
                    self.inner.outcome(&d.app_id, Outcome::Spooled, 1);
                }
                tracing::info!(
                    count = left.len(),
                    path,
                    "undelivered webhooks saved for the next start"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, path, count = left.len(), "cannot write the webhook spool file")
            }
        }
    }
}

impl Inner {
    /// Counts an outcome in the stats and, per app, in the metrics.
    fn outcome(&self, app: &str, outcome: Outcome, n: u64) {
        let c = match outcome {
            Outcome::Delivered => &self.stats.delivered,
            Outcome::Retried => &self.stats.retried,
            Outcome::Failed => &self.stats.failed,
            Outcome::Spooled => &self.stats.spooled,
            Outcome::Dropped => &self.stats.dropped,
        };
        c.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            for _ in 0..n {
                m.webhook(app, outcome.label());
            }
        }
    }

    fn dispatchers_done(&self) -> bool {
        self.live_dispatchers.load(Ordering::SeqCst) == 0
    }
}

fn extra_headers(t: &WebhookTarget) -> Vec<(String, String)> {
    t.headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k != "content-type" && !k.starts_with("x-pusher-")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl LifecycleSink for Webhooks {
    fn emit(&self, ev: &LifecycleEvent) {
        let Some(hook) = HookEvent::of(ev) else {
            return;
        };
        let Some(app) = self.inner.apps.by_id(event::app(ev)) else {
            return;
        };
        // Every type goes to the dispatcher, even ones no target takes: a vacate nobody receives
        // still has to cancel the occupied that a quick return would otherwise repeat.
        if app.webhooks.is_empty() {
            return;
        }
        let Some(tx) = self.dispatcher(&app) else {
            self.inner.outcome(&app.id, Outcome::Dropped, 1);
            tracing::warn!(app = %app.id, event = hook.name.as_str(), "webhook event after shutdown began: not sent");
            return;
        };
        if tx.try_send(hook).is_err() {
            self.inner.outcome(&app.id, Outcome::Dropped, 1);
            tracing::warn!(app = %app.id, "webhook event queue full: dropping an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{StaticAppStore, WebhookFilter};

    fn delivery(url: &str, n: usize) -> Delivery {
        Delivery {
            app_id: "app-id".into(),
            url: url.into(),
            key: "app-key".into(),
            signature: String::new(),
            body: n.to_string(),
            headers: Vec::new(),
            created_ms: now_ms(),
            events: Vec::new(),
        }
    }

    /// A delivery as a queue holds it.
    fn queued(n: usize) -> Arc<Delivery> {
        Arc::new(delivery("http://127.0.0.1:9/hook", n))
    }

    fn bodies(q: &mut Pending) -> Vec<String> {
        q.take_all().map(|d| d.body.clone()).collect()
    }

    #[test]
    fn a_queue_holds_its_capacity_in_order_the_webhook_being_sent_included() {
        let mut q = Pending::new(3);
        for n in 0..3 {
            assert!(q.offer(queued(n)).is_ok());
        }
        assert_eq!(q.offer(queued(3)).unwrap_err().body, "3", "full");
        // The oldest is being sent: it keeps its place until done.
        assert_eq!(q.front().unwrap().body, "0");
        assert_eq!(q.front().unwrap().body, "0");
        assert!(q.offer(queued(4)).is_err());
        q.done();
        assert!(
            q.offer(queued(5)).is_ok(),
            "a delivered webhook frees its place"
        );
        assert_eq!(bodies(&mut q), ["1", "2", "5"]);
        assert!(q.front().is_none());
        let mut one = Pending::new(0);
        assert!(one.offer(queued(0)).is_ok(), "a capacity of 0 holds one");
        assert!(one.offer(queued(1)).is_err());
    }

    #[test]
    fn retries_back_off_from_one_second_to_a_minute() {
        let waits: Vec<u64> = (0..9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn no_attempt_starts_after_the_retry_window() {
        assert!(retry_fits(8_000, Duration::from_secs(2), 10_000));
        assert!(!retry_fits(8_001, Duration::from_secs(2), 10_000));
    }

    /// A webhook receiver that records each body when it arrives and answers 200 once `open`
    /// is true (until then requests hang). Returns the target URL and the bodies.
    async fn receiver(
        open: tokio::sync::watch::Receiver<bool>,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let seen = seen.clone();
                let mut open = open.clone();
                async move {
                    seen.lock().push(body);
                    let _ = open.wait_for(|o| *o).await;
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, got)
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn overflow_is_counted_and_what_fits_is_delivered_in_order() {
        let (gate, open) = tokio::sync::watch::channel(false);
        let (url, got) = receiver(open).await;
        let mut app = App::default_app();
        app.webhooks = vec![WebhookTarget {
            url: url.clone(),
            event_types: vec!["channel_occupied".into()],
            filter: WebhookFilter::default(),
            headers: Default::default(),
        }];
        let apps = Arc::new(StaticAppStore::new(vec![app]).unwrap());
        let settings = WebhookSettings {
            queue_capacity: 3,
            spool_file: String::new(),
            ..WebhookSettings::default()
        };
        let hooks = Webhooks::new(settings, apps, Some(Arc::new(Metrics::new())), None);
        let stats = hooks.stats().clone();
        hooks.enqueue(delivery(&url, 0));
        until("the first webhook to hang at the receiver", || {
            got.lock().len() == 1
        })
        .await;
        // One is being sent, so two more fit; the other seven overflow, each counted.
        for n in 1..10 {
            hooks.enqueue(delivery(&url, n));
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 7);
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
        gate.send_replace(true);
        until("three deliveries", || {
            stats.delivered.load(Ordering::Relaxed) == 3
        })
        .await;
        assert_eq!(*got.lock(), ["0", "1", "2"], "the ones that fit, in order");
        // Delivered webhooks free their places.
        hooks.enqueue(delivery(&url, 10));
        until("the next delivery", || {
            stats.delivered.load(Ordering::Relaxed) == 4
        })
        .await;
        assert_eq!(*got.lock(), ["0", "1", "2", "10"]);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 7);
        assert_eq!(stats.retried.load(Ordering::Relaxed), 0);
    }
}
