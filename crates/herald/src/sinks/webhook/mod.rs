//! Webhooks: built from the engine's lifecycle events, delayed and de-duplicated where the
//! protocol says so, batched per app if asked, signed, and delivered with retries.
//!
//! Flow: `emit` (engine thread, never blocks) → per-app dispatcher task (vacate/member-removed
//! delay, cache-miss de-duplication, batching, per-target filtering and signing) → per-target
//! worker. The worker makes first attempts one at a time in creation order; a webhook whose
//! attempt fails leaves that line and retries on its own timer, and until it is delivered or
//! given up, later webhooks that carry one of its channels wait behind it (see [`Schedule`]).
//! At shutdown every delayed event fires at once, workers deliver until the deadline, and what
//! is left is written to the spool file (mode 0600), which the next start sends first.
//!
//! `schedule`: the order rules and retry timing; `dest`: where webhooks may go; `report`:
//! throttled log lines.

pub(crate) mod dest;
mod report;
mod schedule;

use crate::config::WebhookSettings;
use crate::redact::redact_url;
use crate::sinks::event::{self, HookName};
use crate::sinks::metrics::Metrics;
use dest::{error_text, refusal, refused_in, GuardedResolver};
use herald_core::{App, AppStore, LifecycleEvent, LifecycleSink, WebhookTarget};
use herald_protocol::sign;
use parking_lot::Mutex;
use report::{EventDrops, Report, TargetReports};
use schedule::{backoff, retry_fits, Schedule};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify, Semaphore};
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

impl Delivery {
    /// The channels of the body's events, each once (none for an older spool's lines).
    fn channels(&self) -> Vec<Arc<str>> {
        let mut seen = HashSet::new();
        self.events
            .iter()
            .filter(|(_, c)| seen.insert(c.clone()))
            .map(|(_, c)| c.clone())
            .collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Retry attempts one target may have in flight at once: a receiver that comes back after an
/// outage is not hit by every retrying webhook together. First attempts do not count.
const RETRY_CONCURRENCY: usize = 8;

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
    /// Cancelled at the shutdown deadline: workers stop and what is left is spooled.
    deadline: CancellationToken,
    /// Events an app's dispatcher could not take, for the log.
    event_drops: EventDrops,
}

/// One (app, url) target: its schedule and the task that sends it.
struct Worker {
    /// The URL as logs and the console show it (password and secret query values hidden).
    shown_url: String,
    schedule: Mutex<Schedule>,
    notify: Notify,
    retry_slots: Semaphore,
    reports: TargetReports,
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Delivered,
    /// Failed; the next attempt after this wait still fits the retry window.
    Retry(Duration),
    /// Failed for good: the retry window is over, or the destination is refused.
    GaveUp,
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
        let mut client = reqwest::Client::builder()
            .http1_only()
            // PHP receivers read `X-Pusher-Key` case-sensitively.
            .http1_title_case_headers()
            // A redirect would carry the body, the signature and the secret headers to a
            // destination nobody configured: a 3xx is a failed attempt.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
        if settings.deny_private_networks {
            // The addresses connected to are checked where names are resolved; a proxy would
            // resolve them itself, out of reach of the rule.
            client = client.dns_resolver(Arc::new(GuardedResolver)).no_proxy();
        }
        let client = client
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
                event_drops: EventDrops::default(),
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
        // Only a regular file is ours to read and remove: a spool setting that names a device,
        // a directory or a link (say /dev/null) is left alone.
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_file() => {}
            Ok(_) => {
                tracing::error!(
                    path,
                    "webhooks.spool_file is not a regular file: left alone, nothing resent"
                );
                return;
            }
            Err(_) => return,
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
            let report_due = self.inner.event_drops.due(&app_id);
            let wake = [next_delay, batch_due, report_due]
                .into_iter()
                .flatten()
                .min();
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                () = async { tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)).await }, if wake.is_some() => None,
                () = self.inner.stopping.cancelled(), if !stopping => {
                    stopping = true;
                    None
                }
            };
            let now = Instant::now();
            self.inner.event_drops.flush(&app_id, false);
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

    /// Builds the bodies for each target from `events` (filtered per target, then signed) and
    /// queues them. Events of channels that wait behind a retry at the target go in a body of
    /// their own, so that a batch never holds the other channels up.
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
            if wanted.is_empty() {
                continue;
            }
            let worker = self.worker(&app.id, &target.url);
            let (held, free): (Vec<&HookEvent>, Vec<&HookEvent>) = {
                let s = worker.schedule.lock();
                wanted.into_iter().partition(|e| s.holds(&e.channel))
            };
            for part in [free, held] {
                if part.is_empty() {
                    continue;
                }
                let chosen: Vec<Value> =
                    part.iter().map(|e| Value::Object(e.body.clone())).collect();
                let body = json!({ "time_ms": created_ms, "events": chosen }).to_string();
                self.inner.stats.created.fetch_add(1, Ordering::Relaxed);
                self.offer(
                    &worker,
                    Delivery {
                        app_id: app.id.clone(),
                        url: target.url.clone(),
                        key: app.key.clone(),
                        signature: sign::hmac_hex(&app.secret, body.as_bytes()),
                        body,
                        headers: extra_headers(target),
                        created_ms,
                        events: part.iter().map(|e| (e.name, e.channel.clone())).collect(),
                    },
                );
            }
        }
    }

    /// The worker of (app, url), started on first use.
    fn worker(&self, app_id: &str, url: &str) -> Arc<Worker> {
        let key = (app_id.to_owned(), url.to_owned());
        let mut w = self.inner.workers.lock();
        if let Some(w) = w.get(&key) {
            return w.clone();
        }
        let capacity = self.inner.settings.queue_capacity;
        let shown_url = redact_url(url);
        let worker = Arc::new(Worker {
            reports: TargetReports::new(app_id, &shown_url, capacity),
            shown_url,
            schedule: Mutex::new(Schedule::new(capacity)),
            notify: Notify::new(),
            retry_slots: Semaphore::new(RETRY_CONCURRENCY),
        });
        w.insert(key, worker.clone());
        let this = self.clone();
        let wk = worker.clone();
        self.inner.tracker.spawn(async move { this.work(wk).await });
        worker
    }

    fn enqueue(&self, d: Delivery) {
        let worker = self.worker(&d.app_id, &d.url);
        self.offer(&worker, d);
    }

    fn offer(&self, worker: &Worker, d: Delivery) {
        let offered = worker.schedule.lock().offer(Arc::new(d));
        if let Err(d) = offered {
            self.inner.outcome(&d.app_id, Outcome::Dropped, 1);
            worker.reports.note(Report::Dropped, "queue full");
            return;
        }
        worker.notify.notify_one();
    }

    /// Makes the first attempts of one target, in order; failed ones retry in tasks of their
    /// own. At the deadline what is left stays in the schedule, for the spool.
    async fn work(self, w: Arc<Worker>) {
        loop {
            w.reports.flush(false);
            let next = w.schedule.lock().next();
            let Some((seq, d)) = next else {
                let stopping = self.inner.stopping.is_cancelled();
                if stopping && self.inner.dispatchers_done() && w.schedule.lock().is_empty() {
                    return;
                }
                let report_due = w.reports.due();
                tokio::select! {
                    () = w.notify.notified() => {}
                    () = self.inner.deadline.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)), if stopping => {}
                    () = async { tokio::time::sleep_until(report_due.unwrap_or_else(Instant::now)).await }, if report_due.is_some() => {}
                }
                continue;
            };
            tokio::select! {
                a = self.attempt(&w, &d, 0) => match a {
                    Attempt::Retry(wait) => {
                        w.schedule.lock().leave_line(seq);
                        self.retry(w.clone(), seq, d, wait);
                    }
                    Attempt::Delivered | Attempt::GaveUp => w.schedule.lock().done(seq),
                },
                () = self.inner.deadline.cancelled() => return,
            }
        }
    }

    /// Retries `d` (off the line) until it is delivered or given up, then frees its channels.
    fn retry(&self, w: Arc<Worker>, seq: u64, d: Arc<Delivery>, first_wait: Duration) {
        let this = self.clone();
        self.inner.tracker.spawn(async move {
            let deadline = this.inner.deadline.clone();
            let mut wait = first_wait;
            let mut failures = 1;
            loop {
                let a = tokio::select! {
                    a = async {
                        tokio::time::sleep(wait).await;
                        let _slot = w.retry_slots.acquire().await;
                        this.attempt(&w, &d, failures).await
                    } => a,
                    // `d` stays in the schedule: spooled with the rest, in order.
                    () = deadline.cancelled() => return,
                };
                match a {
                    Attempt::Retry(next) => {
                        wait = next;
                        failures += 1;
                    }
                    Attempt::Delivered | Attempt::GaveUp => break,
                }
            }
            w.schedule.lock().done(seq);
            w.notify.notify_one();
        });
    }

    /// One attempt at `d`, which has failed `failures` times before.
    async fn attempt(&self, w: &Worker, d: &Delivery, failures: u32) -> Attempt {
        let settings = &self.inner.settings;
        let window_end = d.created_ms + settings.retry_window_secs * 1000;
        if now_ms() > window_end {
            // Receivers reject stale bodies (pusher-http-python: older than 5 minutes).
            return self.give_up(w, d, "its retry window is over");
        }
        if let Some(why) = refusal(
            settings.deny_private_networks,
            &settings.allowed_hosts,
            &d.url,
        ) {
            self.observe(w, d, Err(&why));
            return self.give_up(w, d, &format!("destination refused: {why}"));
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
                    .min(Duration::from_millis(settings.request_timeout_ms))
                    .max(Duration::from_millis(1)),
            )
            .body(d.body.clone());
        for (k, v) in &d.headers {
            req = req.header(k, v);
        }
        let reason = match req.send().await {
            Ok(r) => {
                let status = r.status();
                self.observe(w, d, Ok(status.as_u16()));
                if status.is_success() {
                    self.inner.outcome(&d.app_id, Outcome::Delivered, 1);
                    return Attempt::Delivered;
                }
                // A 3xx lands here too: redirects are not followed.
                format!("status {status}")
            }
            Err(e) => {
                if let Some(why) = refused_in(&e) {
                    self.observe(w, d, Err(&why));
                    return self.give_up(w, d, &format!("destination refused: {why}"));
                }
                // Belt and braces: no cause may show the URL's password either.
                let text = error_text(e).replace(&d.url, &w.shown_url);
                self.observe(w, d, Err(&text));
                text
            }
        };
        let wait = backoff(failures);
        if !retry_fits(now_ms(), wait, window_end) {
            return self.give_up(w, d, &format!("{reason}; the retry window is over"));
        }
        self.inner.outcome(&d.app_id, Outcome::Retried, 1);
        w.reports.note(Report::Retried, &reason);
        Attempt::Retry(wait)
    }

    fn give_up(&self, w: &Worker, d: &Delivery, reason: &str) -> Attempt {
        self.inner.outcome(&d.app_id, Outcome::Failed, 1);
        w.reports.note(Report::GaveUp, reason);
        Attempt::GaveUp
    }

    fn observe(&self, w: &Worker, d: &Delivery, result: Result<u16, &str>) {
        if let Some(o) = &self.inner.observer {
            o.delivery(&d.app_id, &w.shown_url, &d.events, result);
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
        let mut left = Vec::new();
        let workers: Vec<Arc<Worker>> = self.inner.workers.lock().values().cloned().collect();
        for w in &workers {
            w.reports.flush(true);
            left.extend(w.schedule.lock().take_all());
        }
        self.inner.event_drops.flush_all();
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
        match write_private(path, &text) {
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

/// Writes `text` to `path`, readable by its owner only: the spool holds signed bodies and the
/// targets' extra headers (credentials) and URLs (passwords).
fn write_private(path: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let mut f = open.open(path)?;
    // The mode above applies to a new file only; a file left by an older run may be wider.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()
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

    /// Counts an event the dispatcher of `app` could not take (`reason` says why) and logs the
    /// count when a line is due.
    fn event_dropped(&self, app: &str, reason: &str) {
        self.outcome(app, Outcome::Dropped, 1);
        self.event_drops.note(app, reason);
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
            self.inner
                .event_dropped(&app.id, "event after shutdown began: not sent");
            return;
        };
        if tx.try_send(hook).is_err() {
            self.inner
                .event_dropped(&app.id, "webhook event queue full");
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

    #[cfg(unix)]
    #[tokio::test]
    async fn a_spool_setting_that_is_not_a_regular_file_is_never_removed() {
        let dir = std::env::temp_dir().join(format!("herald-spool-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("link");
        let target = dir.join("target");
        std::fs::write(&target, "not a spool\n").unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for path in [dir.clone(), link.clone()] {
            let hooks = hooks_for(
                &[],
                WebhookSettings {
                    spool_file: path.to_string_lossy().into_owned(),
                    ..no_spool()
                },
            );
            hooks.load_spool();
            assert!(
                std::fs::symlink_metadata(&path).is_ok(),
                "{path:?} was removed"
            );
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "not a spool\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_spool_file_is_private_to_its_owner_new_or_rewritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("herald-spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spool");
        let path_s = path.to_str().unwrap();
        let mode = || std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        write_private(path_s, "one\n").unwrap();
        assert_eq!(mode(), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(path_s, "two\n").unwrap();
        assert_eq!(
            mode(),
            0o600,
            "an older, wider file is narrowed when rewritten"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A webhook receiver that records each body when it arrives; `answer` gives the status
    /// for a body, or `None` to hang until `open` is true (then 200).
    async fn receiver(
        open: tokio::sync::watch::Receiver<bool>,
        answer: fn(&str) -> Option<u16>,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let seen = seen.clone();
                let mut open = open.clone();
                async move {
                    seen.lock().push(body.clone());
                    let status = match answer(&body) {
                        Some(s) => s,
                        None => {
                            let _ = open.wait_for(|o| *o).await;
                            200
                        }
                    };
                    axum::http::StatusCode::from_u16(status).unwrap()
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

    fn hooks_for(urls: &[&str], settings: WebhookSettings) -> Webhooks {
        let mut app = App::default_app();
        app.webhooks = urls
            .iter()
            .map(|url| WebhookTarget {
                url: (*url).into(),
                event_types: vec!["channel_occupied".into()],
                filter: WebhookFilter::default(),
                headers: Default::default(),
            })
            .collect();
        let apps = Arc::new(StaticAppStore::new(vec![app]).unwrap());
        Webhooks::new(settings, apps, Some(Arc::new(Metrics::new())), None)
    }

    fn no_spool() -> WebhookSettings {
        WebhookSettings {
            spool_file: String::new(),
            ..WebhookSettings::default()
        }
    }

    #[tokio::test]
    async fn overflow_is_counted_and_what_fits_is_delivered_in_order() {
        let (gate, open) = tokio::sync::watch::channel(false);
        let (url, got) = receiver(open, |_| None).await;
        let settings = WebhookSettings {
            queue_capacity: 3,
            ..no_spool()
        };
        let hooks = hooks_for(&[&url], settings);
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

    /// A delivery whose only event is a `channel_occupied` of `channel`.
    fn occupied(url: &str, channel: &str) -> Delivery {
        let mut d = delivery(url, 0);
        d.body = channel.into();
        d.events = vec![(HookName::ChannelOccupied, Arc::from(channel))];
        d
    }

    #[tokio::test]
    async fn a_retrying_channel_does_not_hold_up_the_others_and_keeps_its_own_order() {
        let (_gate, open) = tokio::sync::watch::channel(false);
        // Every attempt for "A" fails with a 500; the rest is accepted.
        let (url, got) = receiver(open, |b| Some(if b.starts_with("A") { 500 } else { 200 })).await;
        let hooks = hooks_for(&[&url], no_spool());
        let stats = hooks.stats().clone();
        hooks.enqueue(occupied(&url, "A"));
        until("A's first attempt", || {
            stats.retried.load(Ordering::Relaxed) == 1
        })
        .await;
        hooks.enqueue(occupied(&url, "A"));
        for n in 0..10 {
            hooks.enqueue(occupied(&url, &format!("other-{n}")));
        }
        until("the other ten", || {
            stats.delivered.load(Ordering::Relaxed) == 10
        })
        .await;
        let seen = got.lock().clone();
        assert_eq!(
            seen.iter().filter(|b| b.starts_with("A")).count(),
            1,
            "A's second webhook waits behind its first, which waits for its retry: {seen:?}"
        );
        assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    }

    /// Records what the console would be shown.
    #[derive(Default)]
    struct Shown(Mutex<Vec<(String, String)>>);

    impl DeliveryObserver for Shown {
        fn delivery(
            &self,
            _app: &str,
            url: &str,
            _events: &[(HookName, Arc<str>)],
            result: Result<u16, &str>,
        ) {
            let r = result.map_or_else(str::to_owned, |s| s.to_string());
            self.0.lock().push((url.to_owned(), r));
        }
    }

    #[tokio::test]
    async fn the_console_is_shown_target_urls_without_their_secrets() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://user:secretpw@127.0.0.1:{port}/hook?token=tok");
        let shown = Arc::new(Shown::default());
        let mut app = App::default_app();
        app.webhooks = vec![WebhookTarget {
            url: url.clone(),
            event_types: vec!["channel_occupied".into()],
            filter: WebhookFilter::default(),
            headers: Default::default(),
        }];
        let apps = Arc::new(StaticAppStore::new(vec![app]).unwrap());
        let hooks = Webhooks::new(no_spool(), apps, None, Some(shown.clone()));
        hooks.enqueue(occupied(&url, "c"));
        until("the failed attempt", || !shown.0.lock().is_empty()).await;
        let (seen_url, result) = shown.0.lock()[0].clone();
        assert_eq!(
            seen_url,
            format!("http://user:***@127.0.0.1:{port}/hook?token=***")
        );
        assert!(
            !result.contains("secretpw") && !result.contains("tok") && result.contains("refused"),
            "{result}"
        );
    }

    #[tokio::test]
    async fn private_destinations_are_refused_before_any_connection() {
        let (_gate, open) = tokio::sync::watch::channel(true);
        let (url, got) = receiver(open, |_| Some(200)).await;
        let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
        let by_name = format!("http://localhost:{port}/hook");
        let metadata = "http://169.254.169.254/latest/meta-data/";
        let settings = WebhookSettings {
            deny_private_networks: true,
            // An attempt that did connect to the unreachable address would hang past `until`.
            request_timeout_ms: 60_000,
            ..no_spool()
        };
        let hooks = hooks_for(&[&url, &by_name, metadata], settings);
        let stats = hooks.stats().clone();
        for u in [url.as_str(), &by_name, metadata] {
            hooks.enqueue(occupied(u, "c"));
        }
        until("three refusals", || {
            stats.failed.load(Ordering::Relaxed) == 3
        })
        .await;
        assert_eq!(
            stats.retried.load(Ordering::Relaxed),
            0,
            "a refusal is final"
        );
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
        assert!(got.lock().is_empty(), "nothing reached the receiver");
    }
}
