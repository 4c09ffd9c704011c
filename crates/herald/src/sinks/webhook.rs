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

use crate::config::WebhookSettings;
use crate::redact::redact_url;
use crate::sinks::event::{self, HookName};
use crate::sinks::metrics::Metrics;
use herald_core::{App, AppStore, LifecycleEvent, LifecycleSink, WebhookTarget};
use herald_protocol::sign;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// At most one log line of each kind (dropped, retried, given up) per target, and per app for
/// the dispatcher's own queue, per this interval; each line says how many it stands for.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

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
    /// Events refused because an app's dispatcher queue was full, or shutdown had begun
    /// (key ""), not yet logged.
    event_drops: Mutex<HashMap<String, Throttle>>,
}

/// One (app, url) target: its schedule and the task that sends it.
struct Worker {
    app_id: String,
    /// The URL as logs and the console show it (password and secret query values hidden).
    shown_url: String,
    schedule: Mutex<Schedule>,
    notify: Notify,
    retry_slots: Semaphore,
    reports: Mutex<Reports>,
}

/// A webhook in a [`Schedule`]: its place in creation order and its channels.
#[derive(Debug)]
struct Entry {
    seq: u64,
    d: Arc<Delivery>,
    channels: Vec<Arc<str>>,
}

/// One target's webhooks and the order they may be sent in.
///
/// * First attempts are made one at a time, in creation order (the "line"), so that a target
///   that answers gets everything in the order it was created.
/// * A webhook whose attempt failed leaves the line and retries on its own. Until it is
///   delivered or given up it holds its channels: a later webhook that carries one of them is
///   parked, in order, and goes (first, before newer ones) once no older webhook holds any of
///   its channels. Pusher orders webhooks per channel; other channels are never held up.
/// * At most `capacity` webhooks (`webhooks.queue_capacity`), counting the ones waiting,
///   parked, being sent and retrying.
#[derive(Debug)]
struct Schedule {
    capacity: usize,
    next_seq: u64,
    /// Not looked at yet, in creation order.
    waiting: VecDeque<Entry>,
    /// Behind an older webhook that holds one of their channels, by creation order.
    parked: BTreeMap<u64, Entry>,
    /// Freed from `parked`, in creation order; older than everything in `waiting`.
    ready: VecDeque<Entry>,
    /// Being sent or retrying.
    active: BTreeMap<u64, Entry>,
    /// The active webhook on the line (its first attempt is running).
    line: Option<u64>,
    /// How many parked, ready or active webhooks carry each channel.
    holds: HashMap<Arc<str>, usize>,
    /// A finished webhook shared a channel with a parked one: look at `parked` again.
    rescan: bool,
}

impl Schedule {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            next_seq: 0,
            waiting: VecDeque::new(),
            parked: BTreeMap::new(),
            ready: VecDeque::new(),
            active: BTreeMap::new(),
            line: None,
            holds: HashMap::new(),
            rescan: false,
        }
    }

    fn len(&self) -> usize {
        self.waiting.len() + self.parked.len() + self.ready.len() + self.active.len()
    }

    /// Queues `d` behind the others, or hands it back when the target is full.
    fn offer(&mut self, d: Arc<Delivery>) -> Result<(), Arc<Delivery>> {
        if self.len() >= self.capacity {
            return Err(d);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let channels = d.channels();
        self.waiting.push_back(Entry { seq, d, channels });
        Ok(())
    }

    /// Whether a webhook carrying `channel` would now wait behind an older one that holds it.
    fn holds(&self, channel: &str) -> bool {
        self.holds.contains_key(channel)
    }

    fn hold(&mut self, channels: &[Arc<str>]) {
        for c in channels {
            *self.holds.entry(c.clone()).or_default() += 1;
        }
    }

    /// The webhook to attempt next on the line, if the line is free and one may go.
    fn next(&mut self) -> Option<(u64, Arc<Delivery>)> {
        if self.line.is_some() {
            return None;
        }
        if self.rescan {
            self.release();
        }
        let e = match self.ready.pop_front() {
            Some(e) => e,
            None => loop {
                let e = self.waiting.pop_front()?;
                let held = e.channels.iter().any(|c| self.holds.contains_key(c));
                self.hold(&e.channels);
                if held {
                    self.parked.insert(e.seq, e);
                } else {
                    break e;
                }
            },
        };
        let out = (e.seq, e.d.clone());
        self.line = Some(e.seq);
        self.active.insert(e.seq, e);
        Some(out)
    }

    /// Moves the parked webhooks that no older webhook holds up any more to `ready`.
    fn release(&mut self) {
        self.rescan = false;
        let mut taken: HashSet<Arc<str>> = self
            .active
            .values()
            .chain(self.ready.iter())
            .flat_map(|e| e.channels.iter().cloned())
            .collect();
        let mut free = Vec::new();
        for e in self.parked.values() {
            if !e.channels.iter().any(|c| taken.contains(c)) {
                free.push(e.seq);
            }
            taken.extend(e.channels.iter().cloned());
        }
        for seq in free {
            if let Some(e) = self.parked.remove(&seq) {
                self.ready.push_back(e);
            }
        }
    }

    /// The line's webhook failed its attempt and retries on its own; the line is free.
    fn leave_line(&mut self, seq: u64) {
        if self.line == Some(seq) {
            self.line = None;
        }
    }

    /// `seq` was delivered or given up: it frees its place and its channels.
    fn done(&mut self, seq: u64) {
        self.leave_line(seq);
        let Some(e) = self.active.remove(&seq) else {
            return;
        };
        for c in &e.channels {
            if let Some(n) = self.holds.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    self.holds.remove(c);
                } else {
                    // Someone younger carries this channel and may be free now.
                    self.rescan = true;
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything not yet delivered or given up, in creation order (for the spool).
    fn take_all(&mut self) -> Vec<Arc<Delivery>> {
        let mut all: Vec<Entry> = self.waiting.drain(..).collect();
        all.extend(self.ready.drain(..));
        all.extend(std::mem::take(&mut self.parked).into_values());
        all.extend(std::mem::take(&mut self.active).into_values());
        all.sort_by_key(|e| e.seq);
        self.holds.clear();
        self.line = None;
        self.rescan = false;
        all.into_iter().map(|e| e.d).collect()
    }
}

/// Counts occurrences of one kind of trouble and says when to log them: the first at once,
/// then at most one line per [`REPORT_INTERVAL`] carrying the count since the last line.
#[derive(Debug, Default)]
struct Throttle {
    unreported: u64,
    last_reason: String,
    last_report: Option<Instant>,
}

impl Throttle {
    /// Notes one occurrence; returns the count to log now, if a line is due.
    fn note(&mut self, now: Instant, reason: &str) -> Option<u64> {
        self.unreported += 1;
        if self.last_reason != reason {
            reason.clone_into(&mut self.last_reason);
        }
        self.take(now)
    }

    /// The count to log now, if there is one and the interval since the last line is over.
    fn take(&mut self, now: Instant) -> Option<u64> {
        if self.unreported == 0
            || self
                .last_report
                .is_some_and(|t| now.duration_since(t) < REPORT_INTERVAL)
        {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }

    /// When the count not logged yet may be.
    fn due(&self) -> Option<Instant> {
        (self.unreported > 0).then(|| {
            self.last_report
                .map_or_else(Instant::now, |t| t + REPORT_INTERVAL)
        })
    }

    /// The count not logged yet, interval or not (shutdown).
    fn take_rest(&mut self) -> Option<u64> {
        (self.unreported > 0).then(|| std::mem::take(&mut self.unreported))
    }
}

/// What a target's log lines are about.
#[derive(Debug, Clone, Copy)]
enum Report {
    Dropped,
    Retried,
    GaveUp,
}

/// One target's throttled log lines.
#[derive(Debug, Default)]
struct Reports {
    dropped: Throttle,
    retried: Throttle,
    gave_up: Throttle,
}

impl Reports {
    fn of(&mut self, r: Report) -> &mut Throttle {
        match r {
            Report::Dropped => &mut self.dropped,
            Report::Retried => &mut self.retried,
            Report::GaveUp => &mut self.gave_up,
        }
    }

    fn due(&self) -> Option<Instant> {
        [&self.dropped, &self.retried, &self.gave_up]
            .into_iter()
            .filter_map(Throttle::due)
            .min()
    }
}

impl Worker {
    /// Notes one occurrence of `r` and logs it if a line is due.
    fn note(&self, r: Report, reason: &str, capacity: usize) {
        let n = self.reports.lock().of(r).note(Instant::now(), reason);
        if let Some(n) = n {
            self.log(r, n, reason, capacity);
        }
    }

    /// Logs the counts whose interval is over (all of them with `all`, at shutdown).
    fn flush_reports(&self, all: bool, capacity: usize) {
        for r in [Report::Dropped, Report::Retried, Report::GaveUp] {
            let (n, reason) = {
                let mut reports = self.reports.lock();
                let t = reports.of(r);
                let n = if all {
                    t.take_rest()
                } else {
                    t.take(Instant::now())
                };
                (n, t.last_reason.clone())
            };
            if let Some(n) = n {
                self.log(r, n, &reason, capacity);
            }
        }
    }

    fn log(&self, r: Report, n: u64, reason: &str, capacity: usize) {
        let (app, url) = (&self.app_id, &self.shown_url);
        match r {
            Report::Dropped => tracing::warn!(
                app = %app, url = %url, capacity, dropped = n,
                "webhook queue full: {n} webhook(s) dropped since the last report"
            ),
            Report::Retried => tracing::info!(
                app = %app, url = %url, failed_attempts = n, last_reason = %reason,
                "{n} webhook attempt(s) failed since the last report; retrying"
            ),
            Report::GaveUp => tracing::warn!(
                app = %app, url = %url, given_up = n, last_reason = %reason,
                "{n} webhook(s) given up since the last report"
            ),
        }
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

/// Addresses `webhooks.deny_private_networks` refuses: loopback, private (RFC 1918), CGNAT,
/// link-local (cloud metadata at 169.254.169.254 among them), unique-local IPv6, unspecified,
/// multicast, broadcast and reserved ones, and IPv6 forms that embed such an IPv4 address.
pub(crate) fn is_private_destination(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => private_v4(a),
        IpAddr::V6(a) => private_v6(a),
    }
}

fn private_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    o0 == 0 // "this network", 0.0.0.0 included
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || (o0 == 100 && (o1 & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
        || (o0 == 192 && o1 == 0 && o2 == 0) // 192.0.0.0/24, protocol assignments
        || (o0 == 198 && (o1 & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || a.is_multicast()
        || o0 >= 240 // reserved, broadcast included
}

fn private_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let s = a.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, old site-local
        || (s[..6] == [0; 6] && private_v4(embedded(s[6], s[7]))) // ::a.b.c.d
        || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && private_v4(embedded(s[6], s[7]))) // NAT64
        || (s[0] == 0x2002 && private_v4(embedded(s[1], s[2]))) // 6to4
}

/// Why `url` may not be sent to under `webhooks.allowed_hosts` and, for a host written as an
/// IP address, `webhooks.deny_private_networks`; `None` when it may. Host names are checked
/// against the deny rule where they are resolved, at connect time ([`GuardedResolver`]).
pub(crate) fn refusal(s: &WebhookSettings, url: &str) -> Option<String> {
    if !s.deny_private_networks && s.allowed_hosts.is_empty() {
        return None;
    }
    let Ok(u) = reqwest::Url::parse(url) else {
        return Some("the URL does not parse".into());
    };
    // The parser writes hosts in one form: names in lower case, IPv4 dotted (also when the
    // URL said `2130706433` or `0x7f.1`), IPv6 in brackets.
    let Some(host) = u.host_str() else {
        return Some("the URL has no host".into());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !s.allowed_hosts.is_empty() {
        let listed = s.allowed_hosts.iter().any(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(host)
        });
        if !listed {
            return Some(format!("host {host} is not in webhooks.allowed_hosts"));
        }
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if s.deny_private_networks && is_private_destination(ip) => Some(format!(
            "{ip} is a private, loopback or link-local address (webhooks.deny_private_networks)"
        )),
        _ => None,
    }
}

/// Resolves webhook host names and keeps only the addresses `webhooks.deny_private_networks`
/// allows, so that the rule holds for the address actually connected to (a name that
/// resolves, or is re-pointed, to a private address is refused, DNS rebinding included).
#[derive(Debug)]
struct GuardedResolver;

/// A destination refused by the rules; final, not retried.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| !is_private_destination(a.ip()))
                .collect();
            if allowed.is_empty() && !all.is_empty() {
                let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(Box::new(Refused(format!(
                    "{host} resolves only to private, loopback or link-local addresses ({}) (webhooks.deny_private_networks)",
                    shown.join(", ")
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The refusal somewhere in `e`'s causes, if any.
fn refused_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(r) = x.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        cur = x.source();
    }
    None
}

/// A transport error as text with its causes, without the URL (it may hold a password).
fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
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
                event_drops: Mutex::new(HashMap::new()),
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
            let report_due = self.inner.event_drops_due(&app_id);
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
            self.inner.report_event_drops(&app_id, now, false);
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
        let worker = Arc::new(Worker {
            app_id: app_id.to_owned(),
            shown_url: redact_url(url),
            schedule: Mutex::new(Schedule::new(self.inner.settings.queue_capacity)),
            notify: Notify::new(),
            retry_slots: Semaphore::new(RETRY_CONCURRENCY),
            reports: Mutex::new(Reports::default()),
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
            worker.note(
                Report::Dropped,
                "queue full",
                self.inner.settings.queue_capacity,
            );
            return;
        }
        worker.notify.notify_one();
    }

    /// Makes the first attempts of one target, in order; failed ones retry in tasks of their
    /// own. At the deadline what is left stays in the schedule, for the spool.
    async fn work(self, w: Arc<Worker>) {
        let capacity = self.inner.settings.queue_capacity;
        loop {
            w.flush_reports(false, capacity);
            let next = w.schedule.lock().next();
            let Some((seq, d)) = next else {
                let stopping = self.inner.stopping.is_cancelled();
                if stopping && self.inner.dispatchers_done() && w.schedule.lock().is_empty() {
                    return;
                }
                let report_due = w.reports.lock().due();
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
        if let Some(why) = refusal(settings, &d.url) {
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
        w.note(Report::Retried, &reason, settings.queue_capacity);
        Attempt::Retry(wait)
    }

    fn give_up(&self, w: &Worker, d: &Delivery, reason: &str) -> Attempt {
        self.inner.outcome(&d.app_id, Outcome::Failed, 1);
        w.note(Report::GaveUp, reason, self.inner.settings.queue_capacity);
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
            w.flush_reports(true, self.inner.settings.queue_capacity);
            left.extend(w.schedule.lock().take_all());
        }
        let apps: Vec<String> = self.inner.event_drops.lock().keys().cloned().collect();
        for app in apps {
            self.inner.report_event_drops(&app, Instant::now(), true);
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
        let n = self
            .event_drops
            .lock()
            .entry(app.to_owned())
            .or_default()
            .note(Instant::now(), reason);
        if let Some(n) = n {
            tracing::warn!(app = %app, dropped = n, reason, "{n} webhook event(s) dropped since the last report");
        }
    }

    fn event_drops_due(&self, app: &str) -> Option<Instant> {
        self.event_drops.lock().get(app).and_then(Throttle::due)
    }

    fn report_event_drops(&self, app: &str, now: Instant, all: bool) {
        let (n, reason) = {
            let mut drops = self.event_drops.lock();
            let Some(t) = drops.get_mut(app) else {
                return;
            };
            let n = if all { t.take_rest() } else { t.take(now) };
            (n, t.last_reason.clone())
        };
        if let Some(n) = n {
            tracing::warn!(app = %app, dropped = n, reason = %reason, "{n} webhook event(s) dropped since the last report");
        }
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

    /// A delivery as a schedule holds it.
    fn queued(n: usize) -> Arc<Delivery> {
        Arc::new(delivery("http://127.0.0.1:9/hook", n))
    }

    /// A delivery named `body` whose events are on `channels`.
    fn on(body: &str, channels: &[&str]) -> Arc<Delivery> {
        let mut d = delivery("http://127.0.0.1:9/hook", 0);
        d.body = body.into();
        d.events = channels
            .iter()
            .map(|c| (HookName::ChannelOccupied, Arc::from(*c)))
            .collect();
        Arc::new(d)
    }

    fn bodies(s: &mut Schedule) -> Vec<String> {
        s.take_all().iter().map(|d| d.body.clone()).collect()
    }

    /// Takes the next webhook off the line; its body and place.
    fn next(s: &mut Schedule) -> Option<(String, u64)> {
        s.next().map(|(seq, d)| (d.body.clone(), seq))
    }

    #[test]
    fn a_schedule_holds_its_capacity_in_order_the_webhook_being_sent_included() {
        let mut s = Schedule::new(3);
        for n in 0..3 {
            assert!(s.offer(queued(n)).is_ok());
        }
        assert_eq!(s.offer(queued(3)).unwrap_err().body, "3", "full");
        let (first, seq) = next(&mut s).unwrap();
        assert_eq!(first, "0");
        assert!(s.next().is_none(), "one first attempt at a time");
        assert!(s.offer(queued(4)).is_err(), "the one being sent counts");
        s.done(seq);
        assert!(
            s.offer(queued(5)).is_ok(),
            "a delivered webhook frees its place"
        );
        assert_eq!(bodies(&mut s), ["1", "2", "5"]);
        assert!(s.next().is_none());
        let mut one = Schedule::new(0);
        assert!(one.offer(queued(0)).is_ok(), "a capacity of 0 holds one");
        assert!(one.offer(queued(1)).is_err());
    }

    #[test]
    fn a_retrying_webhook_holds_up_its_own_channel_only() {
        let mut s = Schedule::new(10);
        for (b, ch) in [
            ("a1", "A"),
            ("b1", "B"),
            ("a2", "A"),
            ("c1", "C"),
            ("a3", "A"),
        ] {
            s.offer(on(b, &[ch])).unwrap();
        }
        let (a1, a1_seq) = next(&mut s).unwrap();
        assert_eq!(a1, "a1");
        s.leave_line(a1_seq); // its attempt failed: it retries off the line
        let (b1, b1_seq) = next(&mut s).unwrap();
        assert_eq!(b1, "b1", "the retry does not hold the line");
        s.done(b1_seq);
        let (c1, c1_seq) = next(&mut s).unwrap();
        assert_eq!(c1, "c1", "a2 waits behind a1; c1 does not");
        s.done(c1_seq);
        assert!(s.next().is_none(), "a2 and a3 wait while a1 retries");
        assert!(s.holds("A") && !s.holds("B"));
        assert_eq!(s.len(), 3, "retrying and parked webhooks keep their places");
        s.offer(on("b2", &["B"])).unwrap();
        let (b2, b2_seq) = next(&mut s).unwrap();
        assert_eq!(b2, "b2", "other channels still go");
        s.done(b2_seq);
        s.done(a1_seq); // delivered at last
        let (a2, a2_seq) = next(&mut s).unwrap();
        assert_eq!(a2, "a2", "A's next webhook goes once a1 is through");
        s.leave_line(a2_seq); // fails too
        assert!(s.next().is_none(), "a3 waits behind a2 now");
        s.done(a2_seq);
        assert_eq!(next(&mut s).unwrap().0, "a3");
    }

    #[test]
    fn a_body_with_a_held_channel_waits_whole_and_holds_its_other_channels() {
        let mut s = Schedule::new(10);
        s.offer(on("a1", &["A"])).unwrap();
        let (_, a1) = next(&mut s).unwrap();
        s.leave_line(a1);
        s.offer(on("a2+b1", &["A", "B"])).unwrap();
        s.offer(on("b2", &["B"])).unwrap();
        s.offer(on("c1", &["C"])).unwrap();
        let (c1, c1_seq) = next(&mut s).unwrap();
        assert_eq!(c1, "c1", "b2 keeps B's order behind the parked batch");
        s.done(c1_seq);
        assert!(s.next().is_none());
        s.done(a1);
        let (batch, batch_seq) = next(&mut s).unwrap();
        assert_eq!(batch, "a2+b1");
        assert!(s.next().is_none(), "one first attempt at a time");
        s.done(batch_seq);
        assert_eq!(next(&mut s).unwrap().0, "b2");
    }

    #[test]
    fn the_spool_gets_every_webhook_in_creation_order_whatever_its_state() {
        let mut s = Schedule::new(10);
        for (b, ch) in [
            ("a1", "A"),
            ("b1", "B"),
            ("a2", "A"),
            ("c1", "C"),
            ("d1", "D"),
        ] {
            s.offer(on(b, &[ch])).unwrap();
        }
        let (_, a1) = next(&mut s).unwrap();
        s.leave_line(a1); // retrying
        let (_, b1) = next(&mut s).unwrap();
        s.leave_line(b1); // retrying; a2 gets parked on the next look
        assert_eq!(next(&mut s).unwrap().0, "c1"); // on the line
        assert_eq!(bodies(&mut s), ["a1", "b1", "a2", "c1", "d1"]);
        assert!(s.is_empty() && !s.holds("A"));
    }

    #[test]
    fn a_throttle_logs_the_first_at_once_then_one_count_per_interval() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.due(), None);
        assert_eq!(t.note(t0, "full"), Some(1), "the first at once");
        for _ in 0..999 {
            assert_eq!(t.note(t0 + Duration::from_secs(1), "full"), None);
        }
        assert_eq!(t.due(), Some(t0 + REPORT_INTERVAL));
        assert_eq!(
            t.take(t0 + REPORT_INTERVAL - Duration::from_millis(1)),
            None
        );
        assert_eq!(
            t.take(t0 + REPORT_INTERVAL),
            Some(999),
            "the count since the last line"
        );
        assert_eq!(t.due(), None);
        assert_eq!(t.note(t0 + REPORT_INTERVAL * 2, "other"), Some(1));
        assert_eq!(t.last_reason, "other");
        t.note(t0 + REPORT_INTERVAL * 2, "other");
        assert_eq!(t.take_rest(), Some(1), "shutdown logs what is left");
        assert_eq!(t.take_rest(), None);
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

    #[test]
    fn private_destinations() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(is_private_destination(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private_destination(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn refusal_follows_the_lists() {
        let open = WebhookSettings::default();
        assert_eq!(
            refusal(&open, "http://169.254.169.254/latest"),
            None,
            "off by default"
        );
        let deny = WebhookSettings {
            deny_private_networks: true,
            ..WebhookSettings::default()
        };
        for url in [
            "http://127.0.0.1:9/hook",
            "http://u:pw@169.254.169.254/x",
            "http://2130706433/", // 127.0.0.1 written as a number
            "http://0x7f.1/",
            "http://[::ffff:10.0.0.1]:80/",
            "http://[fe80::1]/",
        ] {
            let why = refusal(&deny, url).unwrap_or_default();
            assert!(why.contains("deny_private_networks"), "{url}: {why}");
        }
        assert_eq!(
            refusal(&deny, "https://hooks.example.com/in"),
            None,
            "names: at connect"
        );
        assert_eq!(refusal(&deny, "http://8.8.8.8/"), None);
        let listed = WebhookSettings {
            allowed_hosts: vec!["Hooks.Example.com".into(), "[::1]".into()],
            ..WebhookSettings::default()
        };
        assert_eq!(refusal(&listed, "https://hooks.example.COM:8443/in"), None);
        assert_eq!(refusal(&listed, "http://[::1]:9/"), None);
        let why = refusal(&listed, "https://evil.example/in").unwrap();
        assert!(why.contains("allowed_hosts"), "{why}");
        assert!(
            refusal(&listed, "https://sub.hooks.example.com/").is_some(),
            "exact names"
        );
    }

    #[cfg(unix)]
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
