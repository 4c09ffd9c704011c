//! `churn`: W workers loop connect → subscribe → disconnect. Measures cycles per second and the
//! drift of the server's resident memory from start to end.

use super::{client_cpu_s, collect, cpu_s, opt, ticker, us_per, Ctx};
use crate::net::{self, BenchError, ErrorLog};
use crate::report::{round, Report};
use crate::stats::Latency;
use clap::Args;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Args, Clone)]
pub struct ChurnArgs {
    /// Concurrent connect/subscribe/disconnect loops.
    #[arg(long, default_value_t = 50)]
    pub concurrency: u64,
    #[arg(long, default_value_t = 10)]
    pub channels: u64,
    /// Subscribe to private channels (signed auth) instead of public ones.
    #[arg(long)]
    pub private: bool,
    /// Seconds of churn measured.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of churn before the starting memory reading (allocator warm-up).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 10_000_000)]
    pub max_cycles: u64,
    /// Seconds to wait after the last cycle before the final memory reading.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    /// Cycles that connected, subscribed and closed with the close handshake.
    cycles: AtomicU64,
    /// Cycles that did not, for any reason (a close that failed included).
    failed: AtomicU64,
    /// Of those, the cycles whose close handshake failed or timed out (or after whose close
    /// frame the server still sent something).
    close_failed: AtomicU64,
}

impl Counters {
    /// Settles a cycle that connected and subscribed by how its close went: only a completed
    /// close handshake makes it a good cycle. Returns whether it was one.
    fn closed(&self, outcome: Result<(), BenchError>, errors: &ErrorLog) -> bool {
        match outcome {
            Ok(()) => {
                self.cycles.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                errors.add(&e);
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.close_failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

async fn churn(
    ctx: &Ctx,
    a: &ChurnArgs,
    seconds: f64,
    label: &str,
    c: Arc<Counters>,
    latency: Arc<Mutex<Latency>>,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let prefix = if a.private { "private-" } else { "" };
    let channels = a.channels.max(1);
    let mut tasks = Vec::new();
    for w in 0..a.concurrency.max(1) {
        let (ctx2, c, latency) = (ctx.clone(), c.clone(), latency.clone());
        let names: Vec<String> = (0..channels as usize)
            .map(|i| ctx.channel(prefix, "churn", i))
            .collect();
        let max = a.max_cycles;
        tasks.push(tokio::spawn(async move {
            let mut n = w as usize;
            while Instant::now() < deadline && c.attempts.fetch_add(1, Ordering::Relaxed) < max {
                let t0 = Instant::now();
                match net::join(
                    &ctx2.target,
                    &names[n % names.len()],
                    None,
                    ctx2.connect_timeout,
                )
                .await
                {
                    Ok((client, _)) => {
                        if c.closed(client.close().await, &ctx2.errors) {
                            latency
                                .lock()
                                .expect("not poisoned")
                                .record_us(t0.elapsed().as_micros() as u64);
                        }
                    }
                    Err(e) => {
                        ctx2.errors.add(&e);
                        c.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        }));
    }
    let cc = c.clone();
    let _t = ticker(Duration::from_secs_f64(seconds), label, move || {
        format!(
            "{} cycles, {} failed",
            cc.cycles.load(Ordering::Relaxed),
            cc.failed.load(Ordering::Relaxed)
        )
    });
    let (_, stuck) = collect(
        tasks,
        Duration::from_secs_f64(seconds) + ctx.connect_timeout + Duration::from_secs(10),
    )
    .await;
    stuck
}

pub async fn run(ctx: &Ctx, a: &ChurnArgs) -> Report {
    let mut r = Report::new("churn");
    r.param("concurrency", a.concurrency);
    r.param("channels", a.channels);
    r.param("private", a.private);
    r.param("duration_s", a.duration);
    r.param("warmup_s", a.warmup);

    let initial = ctx.probe.point();
    let mut stuck = 0;
    let warm = Arc::new(Counters::default());
    if a.warmup > 0.0 {
        stuck += churn(
            ctx,
            a,
            a.warmup,
            "warm-up",
            warm.clone(),
            Arc::new(Mutex::new(Latency::new())),
        )
        .await;
    }
    let start = ctx.probe.point();
    let started = Instant::now();

    // Memory once a second while churning.
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (probe, timeline) = (ctx.probe.clone(), timeline.clone());
        tokio::spawn(async move {
            loop {
                if let Some(kb) = probe.point().server_rss_kb() {
                    timeline
                        .lock()
                        .expect("not poisoned")
                        .push(serde_json::json!([
                            round(started.elapsed().as_secs_f64(), 1),
                            kb
                        ]));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let counters = Arc::new(Counters::default());
    let latency = Arc::new(Mutex::new(Latency::new()));
    stuck += churn(
        ctx,
        a,
        a.duration,
        "churn",
        counters.clone(),
        latency.clone(),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let end_busy = ctx.probe.point();
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    sampler.abort();
    let end = ctx.probe.point();

    let cycles = counters.cycles.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed) + warm.failed.load(Ordering::Relaxed);
    let close_failed =
        counters.close_failed.load(Ordering::Relaxed) + warm.close_failed.load(Ordering::Relaxed);
    let server_cpu = cpu_s(&end_busy, &start);
    r.result("warmup_cycles", warm.cycles.load(Ordering::Relaxed));
    r.result("cycles", cycles);
    r.result("cycles_failed", failed);
    r.result("close_failed", close_failed);
    r.result("seconds", round(elapsed, 3));
    r.result("cycles_per_s", round(cycles as f64 / elapsed, 1));
    r.result(
        "cycle_latency",
        latency.lock().expect("not poisoned").summary().to_json(),
    );
    r.result("server_rss_initial_kb", opt(initial.server_rss_kb()));
    r.result("server_rss_start_kb", opt(start.server_rss_kb()));
    r.result("server_rss_end_kb", opt(end.server_rss_kb()));
    let drift = start
        .server_rss_kb()
        .zip(end.server_rss_kb())
        .map(|(s, e)| e as i64 - s as i64);
    r.result("server_rss_drift_kb", opt(drift));
    r.result(
        "server_rss_drift_bytes_per_cycle",
        opt(drift
            .filter(|_| cycles > 0)
            .map(|d| round(d as f64 * 1024.0 / cycles as f64, 2))),
    );
    let peak = timeline
        .lock()
        .expect("not poisoned")
        .iter()
        .filter_map(|v| v[1].as_u64())
        .max();
    r.result("server_rss_peak_kb", opt(peak));
    r.result("server_cpu_s", opt(server_cpu));
    r.result("server_cpu_us_per_cycle", us_per(server_cpu, cycles));
    r.result("client_cpu_s", opt(client_cpu_s(&end_busy, &start)));
    super::put_machine(&mut r, &end_busy, &start);
    r.result(
        "server_rss_timeline_s_kb",
        serde_json::Value::Array(timeline.lock().expect("not poisoned").clone()),
    );
    if cycles == 0 {
        r.failures.push("no cycle completed".into());
    }
    r.fail_if(failed, "cycles failed");
    r.fail_if(
        close_failed,
        "closes not clean (failed, timed out or followed by frames; see errors)",
    );
    r.fail_if(stuck, "workers that did not stop");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_counts_only_with_a_completed_close() {
        let (c, errors) = (Counters::default(), ErrorLog::default());
        assert!(c.closed(Ok(()), &errors));
        assert!(!c.closed(
            Err(BenchError::new("close_timeout", "no close handshake")),
            &errors
        ));
        assert!(!c.closed(Err(BenchError::new("close_failed", "reset")), &errors));
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            (load(&c.cycles), load(&c.failed), load(&c.close_failed)),
            (1, 2, 2)
        );
        assert_eq!(errors.total(), 2);
        let j = errors.to_json();
        assert_eq!(j["close_timeout"]["count"], 1);
        assert_eq!(j["close_failed"]["count"], 1);
    }
}
