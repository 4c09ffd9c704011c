//! The loads of a soak, each paced and running until the common deadline: connection churn,
//! presence joins, fan-out publishers and subscribers, API reads, a hostile subscribe/unsubscribe
//! flood and slow readers. They count what they did in [`Work`].

use super::SoakArgs;
use crate::http::Publisher;
use crate::net::{self, BenchError, Client};
use crate::scenario::soak::drift::Counts;
use crate::scenario::{event_data, now_us, parse_event_data, Ctx};
use crate::schedule::Schedule;
use crate::stats::{Latency, SeqTracker};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const EVENT: &str = "soak-event";
/// A slow reader's receive buffer: small, so the server's writes to it block soon.
const SLOW_RECV_BUFFER: u32 = 4096;

/// What the loads did so far.
#[derive(Default)]
pub struct Work {
    churn_cycles: AtomicU64,
    joins: AtomicU64,
    published: AtomicU64,
    api_reads: AtomicU64,
    pub delivered: AtomicU64,
    hostile_frames: AtomicU64,
    connects: AtomicU64,
    connect_timeouts: AtomicU64,
    connects_over_1s: AtomicU64,
    /// Deliveries owed to the fan-out subscribers for the events the server accepted.
    pub expected: AtomicU64,
    pub churn_failed: AtomicU64,
    pub joins_failed: AtomicU64,
    pub publish_failed: AtomicU64,
    pub api_failed: AtomicU64,
    /// Hostile connections the server closed (a rate limit, say); they connect again.
    pub hostile_closed: AtomicU64,
    pub slow_cycles: AtomicU64,
    /// How each slow reader's close went: the close handshake after its queue drained, or the
    /// server having closed it first (outbox full, write deadline), by kind.
    pub slow_outcomes: Mutex<BTreeMap<String, u64>>,
    /// TCP connect times of this interval, and of the whole run.
    interval_connects: Mutex<Latency>,
    pub all_connects: Mutex<Latency>,
}

impl Work {
    pub fn counts(&self) -> Counts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            churn_cycles: l(&self.churn_cycles),
            joins: l(&self.joins),
            published: l(&self.published),
            api_reads: l(&self.api_reads),
            delivered: l(&self.delivered),
            hostile_frames: l(&self.hostile_frames),
            connects: l(&self.connects),
            connect_timeouts: l(&self.connect_timeouts),
            connects_over_1s: l(&self.connects_over_1s),
        }
    }

    /// The connect times since the last call.
    pub fn take_interval_connects(&self) -> Latency {
        std::mem::take(&mut *self.interval_connects.lock().expect("not poisoned"))
    }

    fn connected(&self, c: &Client) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        if c.tcp_connect >= Duration::from_secs(1) {
            self.connects_over_1s.fetch_add(1, Ordering::Relaxed);
        }
        let us = c.tcp_connect.as_micros() as u64;
        self.interval_connects
            .lock()
            .expect("not poisoned")
            .record_us(us);
        self.all_connects
            .lock()
            .expect("not poisoned")
            .record_us(us);
    }

    /// Counts a failed connect (or join): a timeout is row 16's symptom and counted apart.
    fn connect_failed(&self, ctx: &Ctx, e: &BenchError) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        if e.kind == "timeout" {
            self.connect_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        ctx.errors.add(e);
    }

    fn slow_outcome(&self, kind: &str) {
        *self
            .slow_outcomes
            .lock()
            .expect("not poisoned")
            .entry(kind.to_owned())
            .or_default() += 1;
    }
}

/// Where every load stops, and what the loads share.
#[derive(Clone)]
pub struct Run {
    pub ctx: Ctx,
    pub work: Arc<Work>,
    pub start: Instant,
    pub end: Instant,
}

impl Run {
    /// A paced loop: `senders` tasks take turns at `rate` per second over the run; `task(k, n)`
    /// is the n-th turn of task k, started at its slot (at once when behind).
    fn paced<F, Fut>(&self, rate: f64, senders: u64, task: F) -> Vec<JoinHandle<()>>
    where
        F: Fn(u64, u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        if rate <= 0.0 || senders == 0 {
            return Vec::new();
        }
        let schedule = Schedule::new(self.start, rate, senders, self.end - self.start);
        let task = Arc::new(task);
        (0..senders)
            .map(|k| {
                let task = task.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    while let Some(at) = schedule.slot(k, n) {
                        tokio::time::sleep_until(at).await;
                        // Behind by more than the schedule allows: the rest is not done.
                        if Instant::now() >= schedule.give_up() {
                            break;
                        }
                        task(k, n).await;
                        n += 1;
                    }
                })
            })
            .collect()
    }

    /// Connect, subscribe to a public channel, close: at `churn_rate`.
    pub fn churn(&self, a: &SoakArgs) -> Vec<JoinHandle<()>> {
        let names: Arc<Vec<String>> = Arc::new(
            (0..a.churn_channels.max(1) as usize)
                .map(|i| self.ctx.channel("", "soak-churn", i))
                .collect(),
        );
        let run = self.clone();
        self.paced(a.churn_rate, a.churn_concurrency, move |k, n| {
            let (run, names) = (run.clone(), names.clone());
            async move {
                let name = &names[(k + n) as usize % names.len()];
                let (ctx, w) = (&run.ctx, &run.work);
                match net::join(&ctx.target, name, None, ctx.connect_timeout).await {
                    Ok((client, _)) => {
                        w.connected(&client);
                        match client.close().await {
                            Ok(()) => {
                                w.churn_cycles.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                ctx.errors.add(&e);
                                w.churn_failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) => {
                        w.connect_failed(ctx, &e);
                        w.churn_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    }

    /// Connect, join a presence channel as a fresh user (checked in the roster), disconnect.
    pub fn joins(&self, a: &SoakArgs) -> Vec<JoinHandle<()>> {
        let names: Arc<Vec<String>> = Arc::new(
            (0..a.presence_channels.max(1) as usize)
                .map(|i| self.ctx.channel("presence-", "soak", i))
                .collect(),
        );
        let run = self.clone();
        self.paced(a.join_rate, a.join_concurrency, move |k, n| {
            let (run, names) = (run.clone(), names.clone());
            async move {
                let name = &names[k as usize % names.len()];
                let user = format!("soak-{k}-{n}");
                let (ctx, w) = (&run.ctx, &run.work);
                let data = serde_json::json!({ "user_id": user, "user_info": {} }).to_string();
                let joined = net::join(&ctx.target, name, Some(&data), ctx.connect_timeout).await;
                match joined {
                    Ok((client, roster)) => {
                        w.connected(&client);
                        if roster.contains(&format!("\"{user}\"")) {
                            w.joins.fetch_add(1, Ordering::Relaxed);
                        } else {
                            ctx.errors.add(&BenchError::new(
                                "roster_missing_self",
                                format!("{user} not in {roster}"),
                            ));
                            w.joins_failed.fetch_add(1, Ordering::Relaxed);
                        }
                        // The leave is the disconnect; `churn` is where closes are checked.
                        let _ = client.close().await;
                    }
                    Err(e) => {
                        w.connect_failed(ctx, &e);
                        w.joins_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    }

    /// Publishers of the fan-out at `rate` events per second: publisher k owns channels k,
    /// k + P, ..., so each channel's events are sent in order. Counts `published[ch]` (the
    /// events the server accepted, each numbered on its channel from 0) and the deliveries they
    /// owe to the `subs_on[ch]` subscribers.
    pub fn publishers(
        &self,
        a: &SoakArgs,
        names: Arc<Vec<String>>,
        subs_on: Arc<Vec<u64>>,
        published: Arc<Vec<AtomicU64>>,
    ) -> Vec<JoinHandle<()>> {
        let pubs = a.publishers.clamp(1, names.len() as u64);
        let payload = a.payload;
        // One keep-alive connection per publisher, each used by one turn at a time.
        let conns: Arc<Vec<tokio::sync::Mutex<Publisher>>> = Arc::new(
            (0..pubs)
                .map(|_| tokio::sync::Mutex::new(Publisher::new(self.ctx.target.clone())))
                .collect(),
        );
        let run = self.clone();
        self.paced(a.rate, pubs, move |k, n| {
            let (run, names, subs_on, published, conns) = (
                run.clone(),
                names.clone(),
                subs_on.clone(),
                published.clone(),
                conns.clone(),
            );
            async move {
                let owned: Vec<usize> = (k as usize..names.len()).step_by(pubs as usize).collect();
                let ch = owned[n as usize % owned.len()];
                let mut p = conns[k as usize].lock().await;
                // The channel's next number: only accepted events take one.
                let seq = published[ch].load(Ordering::Relaxed);
                let data = event_data(seq, now_us(), payload);
                match p.trigger(&[names[ch].as_str()], EVENT, &data).await {
                    Ok(()) => {
                        published[ch].fetch_add(1, Ordering::Relaxed);
                        run.work.published.fetch_add(1, Ordering::Relaxed);
                        run.work.expected.fetch_add(subs_on[ch], Ordering::Relaxed);
                    }
                    Err(e) => {
                        run.ctx.errors.add(&e);
                        run.work.publish_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    }

    /// Signed API reads at `api_rate`: the channel list and one fan-out channel, in turn.
    pub fn api_reads(&self, a: &SoakArgs, names: Arc<Vec<String>>) -> Vec<JoinHandle<()>> {
        let conn = Arc::new(tokio::sync::Mutex::new(Publisher::new(
            self.ctx.target.clone(),
        )));
        let run = self.clone();
        self.paced(a.api_rate, 1, move |_, n| {
            let (run, names, conn) = (run.clone(), names.clone(), conn.clone());
            async move {
                let rest = if n % 2 == 0 {
                    "/channels".to_owned()
                } else {
                    format!("/channels/{}", names[(n / 2) as usize % names.len()])
                };
                match conn.lock().await.get(&rest).await {
                    Ok(_) => {
                        run.work.api_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        run.ctx.errors.add(&e);
                        run.work.api_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    }

    /// Hostile connections subscribing to fresh channels and unsubscribing again, as fast as
    /// `hostile_rate` frames per second over all of them, reading only what is already there.
    /// One the server closes (a rate limit) connects again after 100 ms.
    pub fn hostile(&self, a: &SoakArgs) -> Vec<JoinHandle<()>> {
        let n = a.hostile;
        if n == 0 || a.hostile_rate <= 0.0 {
            return Vec::new();
        }
        // A pair of frames per turn.
        let schedule = Schedule::new(self.start, a.hostile_rate / 2.0, n, self.end - self.start);
        (0..n)
            .map(|k| {
                let run = self.clone();
                tokio::spawn(async move {
                    let (ctx, w) = (&run.ctx, &run.work);
                    let mut client: Option<Client> = None;
                    let mut turn = 0;
                    while let Some(at) = schedule.slot(k, turn) {
                        tokio::time::sleep_until(at).await;
                        if Instant::now() >= schedule.give_up() {
                            break;
                        }
                        turn += 1;
                        let c = match client.as_mut() {
                            Some(c) => c,
                            None => match tokio::time::timeout(
                                ctx.connect_timeout,
                                Client::connect(&ctx.target),
                            )
                            .await
                            .unwrap_or_else(|_| Err(BenchError::new("timeout", "hostile connect")))
                            {
                                Ok(c) => {
                                    w.connected(&c);
                                    client.insert(c)
                                }
                                Err(e) => {
                                    w.connect_failed(ctx, &e);
                                    continue;
                                }
                            },
                        };
                        let name = ctx.channel("", &format!("soak-hostile-{k}"), turn as usize);
                        let sub = serde_json::json!({ "event": "pusher:subscribe", "data": { "channel": name } });
                        let unsub = serde_json::json!({ "event": "pusher:unsubscribe", "data": { "channel": name } });
                        let mut outcome = c.send_text(sub.to_string()).await;
                        if outcome.is_ok() {
                            outcome = c.send_text(unsub.to_string()).await;
                        }
                        // What came meanwhile, without waiting for more.
                        while outcome.is_ok() {
                            match tokio::time::timeout(Duration::ZERO, c.next(|_| ())).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => outcome = Err(e),
                                Err(_) => break,
                            }
                        }
                        match outcome {
                            Ok(()) => {
                                w.hostile_frames.fetch_add(2, Ordering::Relaxed);
                            }
                            Err(_) => {
                                w.hostile_closed.fetch_add(1, Ordering::Relaxed);
                                client = None;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    if let Some(c) = client {
                        let _ = c.close().await;
                    }
                })
            })
            .collect()
    }

    /// Slow readers on the fan-out channels: connect with a small receive buffer, subscribe,
    /// read nothing for `slow_hold` seconds (the server queues their events), then close, which
    /// reads what was queued first; again until the end.
    pub fn slow_readers(&self, a: &SoakArgs, names: Arc<Vec<String>>) -> Vec<JoinHandle<()>> {
        let hold = Duration::from_secs_f64(a.slow_hold);
        let readers = a.slow_readers.max(1) as f64;
        (0..a.slow_readers)
            .map(|k| {
                let (run, names) = (self.clone(), names.clone());
                tokio::spawn(async move {
                    let (ctx, w) = (&run.ctx, &run.work);
                    let name = &names[k as usize % names.len()];
                    // Staggered, so they do not all close at once.
                    let first = run.start + hold.mul_f64(k as f64 / readers);
                    tokio::time::sleep_until(first.min(run.end)).await;
                    while Instant::now() < run.end {
                        let joined = tokio::time::timeout(ctx.connect_timeout, async {
                            let mut c =
                                Client::connect_with(&ctx.target, Some(SLOW_RECV_BUFFER)).await?;
                            c.subscribe(&ctx.target, name, None).await?;
                            Ok::<_, BenchError>(c)
                        })
                        .await
                        .unwrap_or_else(|_| Err(BenchError::new("timeout", "slow reader connect")));
                        let c = match joined {
                            Ok(c) => {
                                w.connected(&c);
                                c
                            }
                            Err(e) => {
                                w.connect_failed(ctx, &e);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                        tokio::time::sleep_until((Instant::now() + hold).min(run.end)).await;
                        let kind = match c.close().await {
                            Ok(()) => "closed_after_reading".to_owned(),
                            Err(e) => e.kind.to_owned(),
                        };
                        w.slow_outcome(&kind);
                        w.slow_cycles.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect()
    }
}

/// What one fan-out subscriber saw.
pub struct Seen {
    pub channel: usize,
    pub tracker: SeqTracker,
    pub dropped: bool,
}

/// A fan-out subscriber on channel `ch` (already joined): tracks each event's number until
/// `cancel`.
pub async fn subscriber(
    mut c: Client,
    name: String,
    ch: usize,
    work: Arc<Work>,
    ctx: Ctx,
    cancel: CancellationToken,
) -> Seen {
    let mut tracker = SeqTracker::default();
    let mut dropped = false;
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            got = c.next(|f| {
                if f.event != EVENT || f.channel.as_deref() != Some(name.as_str()) {
                    return None;
                }
                Some(f.data_str().and_then(|d| parse_event_data(&d)))
            }) => match got {
                Ok(Some(Some((seq, _)))) => {
                    tracker.record(seq);
                    work.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(None)) => ctx.errors.add(&BenchError::new("bad_event_data", "unparsable data")),
                Ok(None) => {}
                Err(e) => {
                    ctx.errors.add(&e);
                    dropped = true;
                    break;
                }
            }
        }
    }
    if !dropped {
        let _ = c.close().await;
    }
    Seen {
        channel: ch,
        tracker,
        dropped,
    }
}
