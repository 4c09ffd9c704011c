//! What the scenarios share: the run context, connecting a fleet, event payloads, helpers.

pub mod churn;
pub mod fanout;
pub mod floor;
pub mod idle;
pub mod node_kill;
pub mod presence;
pub mod soak;
pub mod spread;
pub mod trigger;

use crate::net::{self, BenchError, Client, ErrorLog, Target};
use crate::procfs::{Point, Probe};
use crate::progress;
use crate::stats::{Latency, LatencySummary};
use serde_json::Value;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

/// Everything a scenario needs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub target: Arc<Target>,
    pub probe: Probe,
    pub errors: Arc<ErrorLog>,
    /// Limit on one connect + subscribe.
    pub connect_timeout: Duration,
    /// Connect + subscribe handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Distinguishes channel names of this run from earlier ones.
    pub run_id: String,
    /// What a paced run must keep to its schedule.
    pub pacing: crate::schedule::Limits,
    /// A cluster's nodes and broker, observed over measured phases (may observe nothing).
    pub cluster: Arc<crate::cluster::Probe>,
}

impl Ctx {
    pub fn channel(&self, prefix: &str, scenario: &str, i: usize) -> String {
        format!("{prefix}bench-{scenario}-{}-{i}", self.run_id)
    }
}

/// Microseconds since the Unix epoch (the clock both ends of a latency share).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Event data carrying a per-channel sequence number and a send timestamp (at a rate the
/// event's scheduled instant), padded with `x` to `size` bytes: `SEQ:MICROS:xxxx`. It holds
/// nothing that JSON must escape.
pub fn event_data(seq: u64, sent_us: u64, size: usize) -> String {
    let mut s = format!("{seq}:{sent_us}:");
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

/// The sequence number and send timestamp of [`event_data`].
pub fn parse_event_data(data: &str) -> Option<(u64, u64)> {
    let mut parts = data.splitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((seq, sent))
}

/// Hands out connect permits and reports each connection's outcome to [`wait_ready`].
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Result<Duration, BenchError>>,
    first: Arc<OnceLock<Instant>>,
}

/// The outcomes a [`Gate`] reports, and when its first connect attempt started.
pub struct Outcomes {
    rx: mpsc::UnboundedReceiver<Result<Duration, BenchError>>,
    first: Arc<OnceLock<Instant>>,
}

pub fn gate(concurrency: usize) -> (Gate, Outcomes) {
    let (tx, rx) = mpsc::unbounded_channel();
    let first = Arc::new(OnceLock::new());
    (
        Gate {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            tx,
            first: first.clone(),
        },
        Outcomes { rx, first },
    )
}

impl Gate {
    /// Notes a connect attempt starting now; the first one starts the phase's clock.
    fn attempt(&self) -> Instant {
        let t0 = Instant::now();
        self.first.get_or_init(|| t0);
        t0
    }

    /// Connects and subscribes, at most `concurrency` at a time, and reports the outcome.
    pub async fn join(
        &self,
        ctx: &Ctx,
        channel: &str,
        channel_data: Option<&str>,
    ) -> Result<(Client, String), BenchError> {
        self.join_at(ctx, None, channel, channel_data).await
    }

    /// [`Gate::join`] on node `node` of the WebSocket endpoints (None: the next in turn).
    pub async fn join_at(
        &self,
        ctx: &Ctx,
        node: Option<usize>,
        channel: &str,
        channel_data: Option<&str>,
    ) -> Result<(Client, String), BenchError> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let t0 = self.attempt();
        let r = net::join_at(
            &ctx.target,
            node,
            channel,
            channel_data,
            ctx.connect_timeout,
        )
        .await;
        let _ = self
            .tx
            .send(r.as_ref().map(|_| t0.elapsed()).map_err(Clone::clone));
        r
    }
}

/// How a fleet's connecting went.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub ok: u64,
    pub failed: u64,
    /// From the first connect attempt until the last outcome (or the phase's time limit).
    pub elapsed: Duration,
    pub latency: LatencySummary,
}

impl Ready {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn put(&self, r: &mut crate::report::Report, what: &str) {
        r.result(&format!("{what}_ok"), self.ok);
        r.result(&format!("{what}_failed"), self.failed);
        r.result(
            &format!("{what}_seconds"),
            crate::report::round(self.elapsed.as_secs_f64(), 3),
        );
        r.result(
            &format!("{what}_per_s"),
            crate::report::round(self.rate(), 1),
        );
        r.result(&format!("{what}_latency"), self.latency.to_json());
    }
}

/// Waits for `n` outcomes from a [`Gate`] (or until `limit`), counting failures into `errors`.
pub async fn wait_ready(
    outcomes: Outcomes,
    n: u64,
    limit: Duration,
    label: &str,
    errors: &ErrorLog,
) -> Ready {
    let Outcomes { mut rx, first } = outcomes;
    let called = Instant::now();
    let pb = progress::counter(n, label);
    let mut latency = Latency::new();
    let (mut ok, mut failed) = (0, 0);
    let deadline = tokio::time::Instant::now() + limit;
    while ok + failed < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(d))) => {
                ok += 1;
                latency.record_us(d.as_micros() as u64);
            }
            Ok(Some(Err(e))) => {
                failed += 1;
                errors.add(&e);
            }
            Ok(None) => break,
            Err(_) => {
                let missing = n - ok - failed;
                errors.add(&BenchError::new(
                    "connect_phase_timeout",
                    format!("{missing} not ready after {limit:?}"),
                ));
                failed += missing;
                break;
            }
        }
        pb.set_position(ok + failed);
        if failed > 0 {
            pb.set_message(format!("{failed} failed"));
        }
    }
    pb.finish_and_clear();
    // Connecting starts as soon as the tasks are spawned, before this was called: the clock
    // starts at the first attempt (here only if none was ever made).
    let start = first.get().copied().unwrap_or(called);
    Ready {
        ok,
        failed,
        elapsed: start.elapsed(),
        latency: latency.summary(),
    }
}

/// A subscriber reports success just before it counts itself on its channel: waits (at most 5 s)
/// until `joined` adds up to the `ready` subscribers, then returns the count per channel. Only
/// the subscribers counted there are owed deliveries.
pub async fn joined_per_channel(joined: &[std::sync::atomic::AtomicU64], ready: u64) -> Vec<u64> {
    use std::sync::atomic::Ordering;
    let counted = || {
        joined
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let wait_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while counted() < ready && tokio::time::Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    joined.iter().map(|n| n.load(Ordering::Relaxed)).collect()
}

/// Awaits tasks for at most `limit`, then aborts the rest; returns the outputs of those that ended.
pub async fn collect<T: Send + 'static>(
    tasks: Vec<JoinHandle<T>>,
    limit: Duration,
) -> (Vec<T>, u64) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::with_capacity(tasks.len());
    let mut stuck = 0;
    for t in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(_)) => stuck += 1,
            Err(_) => {
                abort.abort();
                stuck += 1;
            }
        }
    }
    (out, stuck)
}

/// Live status for a timed phase, redrawn every 200 ms until the returned handle is aborted.
pub fn ticker(
    length: Duration,
    label: &str,
    status: impl Fn() -> String + Send + 'static,
) -> Ticker {
    let pb = progress::timer(length, label);
    let bar = pb.clone();
    let start = Instant::now();
    let task = tokio::spawn(async move {
        loop {
            bar.set_position(start.elapsed().as_millis() as u64);
            bar.set_message(status());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ticker { pb, task }
}

pub struct Ticker {
    pb: indicatif::ProgressBar,
    task: JoinHandle<()>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
        self.pb.finish_and_clear();
    }
}

/// Optional numbers as JSON (null when the server's PID was not given).
pub fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map(Into::into).unwrap_or(Value::Null)
}

/// CPU microseconds per unit of work.
pub fn us_per(cpu_s: Option<f64>, units: u64) -> Value {
    opt(cpu_s
        .filter(|_| units > 0)
        .map(|s| crate::report::round(s * 1e6 / units as f64, 3)))
}

/// Server CPU seconds between two points, rounded.
pub fn cpu_s(later: &Point, earlier: &Point) -> Option<f64> {
    later
        .server_cpu_since(earlier)
        .map(|s| crate::report::round(s, 2))
}

/// Whole-machine CPU use over a measured phase: how busy the machine was and how many CPU
/// seconds went to processes other than the server and this bench (other work on a shared
/// machine makes the numbers of that run pessimistic).
pub fn put_machine(r: &mut crate::report::Report, later: &Point, earlier: &Point) {
    use crate::report::round;
    if let Some(sys) = later.server_sys_share_since(earlier) {
        r.result("server_cpu_kernel_pct", round(sys * 100.0, 1));
    }
    let Some((busy_s, share)) = later.machine_busy_since(earlier) else {
        return;
    };
    r.result("machine_cpu_busy_pct", round(share * 100.0, 1));
    let ours = later.server_cpu_since(earlier).unwrap_or(0.0)
        + later.client_cpu_since(earlier).unwrap_or(0.0);
    r.result("other_cpu_s", round((busy_s - ours).max(0.0), 2));
}

/// Busy CPU seconds of the whole machine between two points, and this bench's own: what
/// `cluster::Probe::put` needs to tell how much went to anything but the cluster and the bench.
pub fn machine_and_own(later: &Point, earlier: &Point) -> Option<(f64, f64)> {
    let (busy, _) = later.machine_busy_since(earlier)?;
    Some((busy, later.client_cpu_since(earlier).unwrap_or(0.0)))
}

/// Own CPU seconds between two points, rounded.
pub fn client_cpu_s(later: &Point, earlier: &Point) -> Option<f64> {
    later
        .client_cpu_since(earlier)
        .map(|s| crate::report::round(s, 2))
}

/// A rate parameter as reported: the number, or "flat out" for 0.
pub fn rate_param(rate: f64) -> Value {
    if rate > 0.0 {
        serde_json::json!(rate)
    } else {
        "flat out".into()
    }
}

/// At a rate, the latency taken apart: each event's first and last `who` (subscriber or
/// receiver) and their spread, and each delivery's arrival in its socket.
pub fn put_breakdown(
    r: &mut crate::report::Report,
    who: &str,
    per_event: Option<&crate::stats::PerEvent>,
    at_socket: Option<&crate::stats::Sharded>,
) {
    if let Some(p) = per_event {
        let (first, last, spread) = p.summaries();
        r.result(&format!("latency_first_{who}"), first.summary().to_json());
        r.result(&format!("latency_last_{who}"), last.summary().to_json());
        r.result("delivery_spread", spread.summary().to_json());
    }
    if let Some(h) = at_socket {
        r.result("latency_at_socket", h.merged().summary().to_json());
    }
}

/// What a latency is measured from, as reported in `latency_origin`.
pub const SCHEDULED_SEND: &str = "the event's scheduled send instant";
pub const ACTUAL_SEND: &str = "the actual send";
pub const FIRST_DELIVERY: &str = "the event's first delivery";

/// Says in the report what each latency is measured from: at a rate (`paced`) the end-to-end
/// latencies in `end_to_end` are from each event's scheduled send instant (a sender that wakes
/// late or falls behind cannot hide that wait), flat out from the actual send, which is then the
/// schedule; `delivery_spread` is from the event's first delivery; `others` as given.
pub fn put_origins(
    r: &mut crate::report::Report,
    paced: bool,
    end_to_end: &[&str],
    others: &[(&str, &str)],
) {
    let mut m = serde_json::Map::new();
    let origin = if paced { SCHEDULED_SEND } else { ACTUAL_SEND };
    for k in end_to_end {
        if r.results.0.iter().any(|(key, _)| key == k) {
            m.insert(k.to_string(), origin.into());
        }
    }
    if r.results.0.iter().any(|(key, _)| key == "delivery_spread") {
        m.insert("delivery_spread".into(), FIRST_DELIVERY.into());
    }
    for (k, v) in others {
        m.insert(k.to_string(), (*v).into());
    }
    r.result("latency_origin", Value::Object(m));
}

/// A current-thread runtime on an OS thread of its own, for tasks that must not share the
/// scenario's worker threads (`fanout`'s publishers at a rate, as a publishing backend would be a
/// process of its own). Tasks are spawned through `handle`; dropping this stops the thread.
pub struct OwnThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OwnThread {
    /// Starts the thread; with `lowest_priority`, at the lowest priority of its scheduling policy
    /// (nice 19), which any process may choose for itself.
    pub fn start(name: &str, lowest_priority: bool) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started, outcome) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let lowered = if lowest_priority {
                    thread_priority::set_current_thread_priority(
                        thread_priority::ThreadPriority::Min,
                    )
                    .map_err(|e| std::io::Error::other(format!("cannot lower its priority: {e}")))
                } else {
                    Ok(())
                };
                let failed = lowered.is_err();
                let _ = started.send(lowered);
                if !failed {
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                }
            })?;
        outcome
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the thread did not start")))?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Where a scenario's senders run. At a rate (`paced`): on a thread of their own, so that
    /// their timers and responses wake none of the receivers' threads, and at the lowest priority,
    /// so that whenever the server or a receiver is ready to run, it runs first: in production
    /// the publishing backend is another process, usually on another host, and takes none of the
    /// server's or the subscribers' CPU. Latency at a rate counts from each event's scheduled
    /// instant, so any wait this priority costs a sender counts against the measured latency (and
    /// shows as send lag, which fails the run past its bound), never in its favour. Flat out: on
    /// the shared workers, for throughput. Keep the `OwnThread` until the senders are done.
    pub fn for_senders(
        paced: bool,
        name: &str,
    ) -> Result<(Option<Self>, tokio::runtime::Handle), String> {
        if !paced {
            return Ok((None, tokio::runtime::Handle::current()));
        }
        // BENCH_SENDER_PRIORITY=normal keeps the senders at normal priority, to measure
        // what the lowest priority changes (BENCHMARKS.md reports both).
        let lowest = std::env::var("BENCH_SENDER_PRIORITY").as_deref() != Ok("normal");
        let t = Self::start(name, lowest)
            .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
        let handle = t.handle().clone();
        Ok((Some(t), handle))
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread, from `/proc/thread-self/stat`.
    fn own_nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name (which may hold spaces): state is the 3rd, nice the 19th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(19 - 3).unwrap().parse().unwrap()
    }

    #[test]
    fn paced_senders_run_at_the_lowest_priority() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (thread, handle) = OwnThread::for_senders(true, "test-senders").unwrap();
            assert!(thread.is_some());
            assert_eq!(handle.spawn(async { own_nice() }).await.unwrap(), 19);
            // Flat out they share the scenario's workers, whose priority is left alone.
            let (thread, handle) = OwnThread::for_senders(false, "test-senders").unwrap();
            assert!(thread.is_none());
            assert_eq!(
                handle.spawn(async { own_nice() }).await.unwrap(),
                own_nice()
            );
        });
    }

    #[tokio::test]
    async fn the_connect_clock_starts_at_the_first_attempt() {
        let (g, outcomes) = gate(4);
        // Attempts start as soon as the connecting tasks are spawned, before anyone waits.
        let t0 = g.attempt();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _later = g.attempt();
        let _ = g.tx.send(Ok(t0.elapsed()));
        let _ = g.tx.send(Err(BenchError::new("tcp_connect", "refused")));
        drop(g);
        let errors = ErrorLog::default();
        let ready = wait_ready(outcomes, 2, Duration::from_secs(10), "test", &errors).await;
        assert_eq!((ready.ok, ready.failed), (1, 1));
        assert_eq!(errors.total(), 1);
        // At least the 50 ms before the wait, not only the time since it began.
        assert!(ready.elapsed >= Duration::from_millis(50), "{ready:?}");
    }

    #[test]
    fn event_data_round_trips_and_pads() {
        let d = event_data(42, 1_700_000_000_123_456, 100);
        assert_eq!(d.len(), 100);
        assert!(d.starts_with("42:1700000000123456:x"));
        assert_eq!(parse_event_data(&d), Some((42, 1_700_000_000_123_456)));
        assert_eq!(event_data(1, 2, 0), "1:2:");
        assert_eq!(parse_event_data("1:2:"), Some((1, 2)));
        assert_eq!(parse_event_data("hello"), None);
    }

    #[test]
    fn us_per_unit() {
        assert_eq!(us_per(Some(2.0), 1_000_000), serde_json::json!(2.0));
        assert_eq!(us_per(Some(2.0), 0), Value::Null);
        assert_eq!(us_per(None, 5), Value::Null);
    }
}
