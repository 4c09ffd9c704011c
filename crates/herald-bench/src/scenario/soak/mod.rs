//! `soak`: every load at once for a long time (connection churn, presence joins, a fan-out with
//! its publishers, API reads, a hostile subscribe/unsubscribe flood and slow readers), sampling
//! the server once per interval: resident memory, open descriptors (each second, for the most
//! and fewest), CPU, and the work done, so CPU per unit of work compares across intervals. The
//! run fails when an event the server accepted is lost, when any connect attempt times out
//! (issue 19, row 16), or when memory, descriptors or CPU per unit rise after the warm-up
//! intervals beyond the stated tolerance (`drift.rs`).

mod drift;
mod load;

use super::{collect, gate, joined_per_channel, opt, wait_ready, Ctx};
use crate::procfs;
use crate::report::{round, Report};
use crate::stats::Delivery;
use clap::Args;
use drift::{Interval, Tolerance};
use load::{Run, Work};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args, Clone)]
pub struct SoakArgs {
    /// Seconds of mixed load (a whole number of intervals; the rest is dropped).
    #[arg(long, default_value_t = 1800.0)]
    pub duration: f64,
    /// Seconds per sampling interval.
    #[arg(long, default_value_t = 60.0)]
    pub interval: f64,
    /// Intervals before drift is judged: later ones are compared with the first after these.
    #[arg(long, default_value_t = 5)]
    pub warmup_intervals: usize,
    /// Connect/subscribe/close cycles per second.
    #[arg(long, default_value_t = 500.0)]
    pub churn_rate: f64,
    /// Cycles in flight at most (the workers taking turns at the rate).
    #[arg(long, default_value_t = 50)]
    pub churn_concurrency: u64,
    #[arg(long, default_value_t = 10)]
    pub churn_channels: u64,
    /// Presence joins (a fresh connection and user each, left by disconnecting) per second.
    #[arg(long, default_value_t = 300.0)]
    pub join_rate: f64,
    /// Joins in flight at most; keep joins in flight per channel under the presence member limit.
    #[arg(long, default_value_t = 30)]
    pub join_concurrency: u64,
    #[arg(long, default_value_t = 10)]
    pub presence_channels: u64,
    /// Fan-out subscribers (subscriber i on channel i mod C), connected before the load starts.
    #[arg(long, default_value_t = 500)]
    pub subscribers: u64,
    /// Fan-out channels.
    #[arg(long, default_value_t = 10)]
    pub channels: u64,
    /// Fan-out events per second, published through the HTTP API.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    #[arg(long, default_value_t = 4)]
    pub publishers: u64,
    /// Signed API reads (channel list, channel info) per second.
    #[arg(long, default_value_t = 20.0)]
    pub api_rate: f64,
    /// Hostile connections flooding subscribe/unsubscribe frames.
    #[arg(long, default_value_t = 2)]
    pub hostile: u64,
    /// Hostile frames per second over all hostile connections.
    #[arg(long, default_value_t = 400.0)]
    pub hostile_rate: f64,
    /// Slow readers on the fan-out channels.
    #[arg(long, default_value_t = 10)]
    pub slow_readers: u64,
    /// Seconds a slow reader reads nothing before it closes (and reads what was queued).
    #[arg(long, default_value_t = 20.0)]
    pub slow_hold: f64,
    /// Seconds to wait for the last deliveries after the load.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// RSS may rise by the larger of this share and --rss-tolerance-kb.
    #[arg(long, default_value_t = 10.0)]
    pub rss_tolerance_pct: f64,
    #[arg(long, default_value_t = 4096)]
    pub rss_tolerance_kb: u64,
    /// Open descriptors may rise by the larger of this share and --fd-tolerance.
    #[arg(long, default_value_t = 10.0)]
    pub fd_tolerance_pct: f64,
    #[arg(long, default_value_t = 32)]
    pub fd_tolerance: u64,
    /// CPU per unit of work may rise by this share.
    #[arg(long, default_value_t = 25.0)]
    pub cpu_tolerance_pct: f64,
}

/// One reading of the server: memory, descriptors, CPU.
struct Reading {
    rss_kb: u64,
    fds: u64,
    cpu_ticks: u64,
}

fn read(pid: u32) -> Option<Reading> {
    let s = procfs::sample(&pid.to_string())?;
    Some(Reading {
        rss_kb: s.rss_kb,
        fds: procfs::open_fds(pid)?,
        cpu_ticks: s.cpu_ticks,
    })
}

pub async fn run(ctx: &Ctx, a: &SoakArgs) -> Report {
    let mut r = Report::new("soak");
    let interval = Duration::from_secs_f64(a.interval.max(0.1));
    let intervals = ((a.duration / interval.as_secs_f64()).floor() as usize).max(1);
    let channels = a.channels.max(1) as usize;
    for (k, v) in [
        (
            "duration_s",
            serde_json::json!(interval.as_secs_f64() * intervals as f64),
        ),
        ("interval_s", interval.as_secs_f64().into()),
        ("warmup_intervals", a.warmup_intervals.into()),
        ("churn_per_s", a.churn_rate.into()),
        ("churn_concurrency", a.churn_concurrency.into()),
        ("joins_per_s", a.join_rate.into()),
        ("join_concurrency", a.join_concurrency.into()),
        ("presence_channels", a.presence_channels.into()),
        ("subscribers", a.subscribers.into()),
        ("channels", (channels as u64).into()),
        ("events_per_s", a.rate.into()),
        ("payload_bytes", (a.payload as u64).into()),
        ("api_reads_per_s", a.api_rate.into()),
        ("hostile", a.hostile.into()),
        ("hostile_frames_per_s", a.hostile_rate.into()),
        ("slow_readers", a.slow_readers.into()),
        ("slow_hold_s", a.slow_hold.into()),
        (
            "connect_timeout_s",
            ctx.connect_timeout.as_secs_f64().into(),
        ),
        (
            "unit",
            "a churn cycle, join, API call (publish or read), delivery or hostile frame".into(),
        ),
    ] {
        r.param(k, v);
    }
    let Some(pid) = ctx.probe.server_pid else {
        r.fail(
            "soak needs --server-pid: it samples the server's memory, descriptors and CPU".into(),
        );
        return r;
    };
    let Some(first) = read(pid) else {
        r.fail(format!("cannot read /proc/{pid}"));
        return r;
    };
    let work = Arc::new(Work::default());

    // The fan-out's subscribers, connected before anything else starts.
    let names: Arc<Vec<String>> = Arc::new(
        (0..channels)
            .map(|c| ctx.channel("", "soak-fanout", c))
            .collect(),
    );
    let joined: Arc<Vec<AtomicU64>> = Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let cancel = CancellationToken::new();
    let (g, outcomes) = gate(ctx.connect_concurrency);
    let mut sub_tasks = Vec::new();
    for i in 0..a.subscribers as usize {
        let ch = i % channels;
        let (ctx2, g, names, joined, work, cancel) = (
            ctx.clone(),
            g.clone(),
            names.clone(),
            joined.clone(),
            work.clone(),
            cancel.clone(),
        );
        sub_tasks.push(tokio::spawn(async move {
            let name = names[ch].clone();
            let (c, _) = g.join(&ctx2, &name, None).await.ok()?;
            joined[ch].fetch_add(1, Ordering::Relaxed);
            Some(load::subscriber(c, name, ch, work, ctx2, cancel).await)
        }));
    }
    drop(g);
    let ready = wait_ready(
        outcomes,
        a.subscribers,
        Duration::from_secs(120),
        "subscribe",
        &ctx.errors,
    )
    .await;
    let subs_on: Arc<Vec<u64>> = Arc::new(joined_per_channel(&joined, ready.ok).await);
    ready.put(&mut r, "subscribers");

    // Every load at once until the end.
    let start = Instant::now();
    let run = Run {
        ctx: ctx.clone(),
        work: work.clone(),
        start,
        end: start + interval * intervals as u32,
    };
    let published: Arc<Vec<AtomicU64>> =
        Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = run.churn(a);
    tasks.extend(run.joins(a));
    tasks.extend(run.publishers(a, names.clone(), subs_on.clone(), published.clone()));
    tasks.extend(run.api_reads(a, names.clone()));
    tasks.extend(run.hostile(a));
    tasks.extend(run.slow_readers(a, names.clone()));

    // Sampling: memory and descriptors each second, everything at each interval's end.
    let overflows_at_start = procfs::listen_overflows().map(|(o, _)| o);
    let mut series: Vec<Interval> = Vec::with_capacity(intervals);
    let (mut last_cpu, mut last_counts, mut last_overflows) =
        (first.cpu_ticks, work.counts(), overflows_at_start);
    let load_start = ctx.probe.point();
    let mut last_point = load_start;
    let mut server_gone = false;
    for i in 0..intervals {
        let from = Instant::now();
        let until = start + interval * (i as u32 + 1);
        let (mut rss_max, mut fds_min, mut fds_max, mut last) = (0, u64::MAX, 0, None);
        loop {
            match read(pid) {
                Some(x) => {
                    rss_max = rss_max.max(x.rss_kb);
                    fds_min = fds_min.min(x.fds);
                    fds_max = fds_max.max(x.fds);
                    last = Some(x);
                }
                None => server_gone = true,
            }
            let now = Instant::now();
            if now >= until || server_gone {
                break;
            }
            tokio::time::sleep_until((now + Duration::from_secs(1)).min(until)).await;
        }
        let Some(last) = last else { break };
        let counts = work.counts();
        let overflows = procfs::listen_overflows().map(|(o, _)| o);
        let connects = work.take_interval_connects().summary();
        let point = ctx.probe.point();
        let iv = Interval {
            end_s: start.elapsed().as_secs_f64(),
            seconds: from.elapsed().as_secs_f64(),
            rss_kb: last.rss_kb,
            rss_max_kb: rss_max,
            fds_min,
            fds_max,
            cpu_s: last.cpu_ticks.saturating_sub(last_cpu) as f64 / procfs::TICKS_PER_SEC,
            work: counts.since(&last_counts),
            listen_overflows: overflows
                .zip(last_overflows)
                .map(|(n, l)| n.saturating_sub(l)),
            connect_p999_ms: connects.p999_ms,
            connect_max_ms: connects.max_ms,
            machine_busy_pct: point
                .machine_busy_since(&last_point)
                .map(|(_, share)| share * 100.0),
        };
        last_point = point;
        eprintln!("{}", iv.line(i, intervals));
        series.push(iv);
        (last_cpu, last_counts, last_overflows) = (last.cpu_ticks, counts, overflows);
        if server_gone {
            break;
        }
    }
    let (_, stuck) = collect(
        tasks,
        Duration::from_secs_f64(a.slow_hold) + ctx.connect_timeout + Duration::from_secs(10),
    )
    .await;

    // The last deliveries, then the subscribers' accounts.
    let drain_until = Instant::now() + Duration::from_secs_f64(a.drain);
    while Instant::now() < drain_until
        && work.delivered.load(Ordering::Relaxed) < work.expected.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let (seen, stuck_subs) = collect(sub_tasks, Duration::from_secs(30)).await;
    let mut delivery = Delivery::default();
    let mut dropped = 0;
    for s in seen.iter().flatten() {
        delivery.add(&s.tracker, published[s.channel].load(Ordering::Relaxed));
        dropped += u64::from(s.dropped);
    }
    let end = read(pid);
    let load_end = last_point;

    let total = work.counts();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    r.result(
        "intervals",
        serde_json::Value::Array(series.iter().map(Interval::to_json).collect()),
    );
    r.result("churn_cycles", total.churn_cycles);
    r.result("churn_failed", load(&work.churn_failed));
    r.result("joins", total.joins);
    r.result("joins_failed", load(&work.joins_failed));
    r.result("connects", total.connects);
    r.result("connect_timeouts", total.connect_timeouts);
    r.result("connects_over_1s", total.connects_over_1s);
    r.result(
        "tcp_connect_latency",
        work.all_connects
            .lock()
            .expect("not poisoned")
            .summary()
            .to_json(),
    );
    r.result(
        "listen_overflows_host",
        opt(procfs::listen_overflows()
            .map(|(o, _)| o)
            .zip(overflows_at_start)
            .map(|(n, s)| n.saturating_sub(s))),
    );
    r.result("events_published", total.published);
    r.result("publish_failed", load(&work.publish_failed));
    r.result("deliveries_expected", delivery.expected);
    r.result("delivered", delivery.delivered);
    r.result("lost", delivery.lost);
    r.result("duplicates", delivery.duplicates);
    r.result("out_of_order", delivery.out_of_order);
    r.result("unexpected", delivery.unexpected);
    r.result("subscribers_dropped", dropped);
    r.result("api_reads", total.api_reads);
    r.result("api_failed", load(&work.api_failed));
    r.result("hostile_frames", total.hostile_frames);
    r.result("hostile_closed_by_server", load(&work.hostile_closed));
    r.result("slow_reader_cycles", load(&work.slow_cycles));
    r.result(
        "slow_reader_outcomes",
        serde_json::json!(*work.slow_outcomes.lock().expect("not poisoned")),
    );
    r.result("server_rss_initial_kb", first.rss_kb);
    r.result("server_rss_end_kb", opt(end.as_ref().map(|e| e.rss_kb)));
    r.result("server_fds_initial", first.fds);
    r.result("server_fds_end", opt(end.as_ref().map(|e| e.fds)));
    let tolerance = Tolerance {
        rss_pct: a.rss_tolerance_pct,
        rss_kb: a.rss_tolerance_kb,
        fds_pct: a.fd_tolerance_pct,
        fds: a.fd_tolerance,
        cpu_pct: a.cpu_tolerance_pct,
    };
    let verdict = drift::judge(&series, a.warmup_intervals, &tolerance);
    r.result("drift", verdict.to_json());
    if verdict.baseline.is_none() {
        r.result(
            "drift_not_judged",
            format!(
                "{} interval(s), none after the {} of warm-up",
                series.len(),
                a.warmup_intervals
            ),
        );
    }
    r.result("seconds", round(start.elapsed().as_secs_f64(), 1));
    r.result("server_cpu_s", opt(super::cpu_s(&load_end, &load_start)));
    r.result(
        "client_cpu_s",
        opt(super::client_cpu_s(&load_end, &load_start)),
    );
    super::put_machine(&mut r, &load_end, &load_start);

    if server_gone {
        r.fail("the server went away during the run".into());
    }
    r.fail_if(a.subscribers - ready.ok, "subscribers not established");
    if total.units() == 0 {
        r.fail("no work done".into());
    }
    r.fail_if(total.connect_timeouts, "connect attempts timed out");
    r.fail_if(delivery.lost, "accepted events lost (deliveries)");
    r.fail_if(delivery.duplicates, "duplicate deliveries");
    r.fail_if(delivery.out_of_order, "deliveries out of order");
    r.fail_if(delivery.unexpected, "deliveries never published");
    r.fail_if(dropped, "subscribers disconnected");
    r.fail_if(stuck + stuck_subs, "load tasks that did not stop");
    for f in verdict.failures {
        r.fail(f);
    }
    r
}
