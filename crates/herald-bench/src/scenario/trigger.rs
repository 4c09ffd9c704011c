//! `trigger`: HTTP API publish requests per second and their latency over keep-alive
//! connections, K concurrent publishers; server CPU per request.

use super::{client_cpu_s, collect, cpu_s, event_data, now_us, opt, ticker, us_per, Ctx};
use crate::http::Publisher;
use crate::report::{round, Report};
use crate::schedule::{self, Kept, Schedule};
use crate::stats::Latency;
use clap::Args;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Args, Clone)]
pub struct TriggerArgs {
    /// Concurrent publishers, each with one keep-alive connection and one request in flight.
    #[arg(long, default_value_t = 8)]
    pub publishers: u64,
    /// Channels the events go to, in turn (nobody subscribes to them).
    #[arg(long, default_value_t = 10)]
    pub channels: u64,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Requests per second over all publishers; 0 is flat out.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 10_000_000)]
    pub max_requests: u64,
}

pub async fn run(ctx: &Ctx, a: &TriggerArgs) -> Report {
    let mut r = Report::new("trigger");
    let pubs = a.publishers.max(1);
    let channels = a.channels.max(1);
    r.param("publishers", pubs);
    r.param("channels", channels);
    r.param("payload_bytes", a.payload as u64);
    r.param("rate_per_s", super::rate_param(a.rate));
    r.param("duration_s", a.duration);

    let names: Arc<Vec<String>> = Arc::new(
        (0..channels as usize)
            .map(|c| ctx.channel("", "trigger", c))
            .collect(),
    );
    let attempts = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let sched = (a.rate > 0.0)
        .then(|| Schedule::new(start, a.rate, pubs, Duration::from_secs_f64(a.duration)));
    let before = ctx.probe.point();
    let mut tasks = Vec::new();
    for k in 0..pubs {
        let (ctx2, names, attempts, done) =
            (ctx.clone(), names.clone(), attempts.clone(), done.clone());
        let (payload, max) = (a.payload, a.max_requests);
        tasks.push(tokio::spawn(async move {
            let mut p = Publisher::new(ctx2.target.clone());
            let (mut ok, mut failed, mut latency) = (0u64, 0u64, Latency::new());
            let mut kept = Kept::default();
            let mut n: u64 = 0;
            loop {
                // At a rate: the slot due, evenly spaced over the publishers (see `fanout`),
                // kept to the microsecond (tokio's timers tick in milliseconds). A slot due
                // before the deadline is sent however late; its latency counts from the slot.
                let slot = match &sched {
                    Some(s) => {
                        let Some(at) = s.slot(k, n) else { break };
                        crate::pace::sleep_until(at).await;
                        if Instant::now() >= s.give_up() {
                            break;
                        }
                        Some(at)
                    }
                    None => None,
                };
                if (slot.is_none() && Instant::now() >= deadline)
                    || attempts.fetch_add(1, Ordering::Relaxed) >= max
                {
                    break;
                }
                let ch = (k as usize + n as usize * pubs as usize) % names.len();
                let t0 = match (&sched, slot) {
                    (Some(s), Some(at)) => {
                        let (_, lag_us) = schedule::stamp(at);
                        kept.record(s, lag_us, Instant::now());
                        at
                    }
                    _ => Instant::now(),
                };
                let data = event_data(n, now_us(), payload);
                match p
                    .trigger(&[names[ch].as_str()], "bench-trigger", &data)
                    .await
                {
                    Ok(()) => {
                        latency.record_us(t0.elapsed().as_micros() as u64);
                        ok += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        ctx2.errors.add(&e);
                        failed += 1;
                    }
                }
                n = n.wrapping_add(1);
            }
            (ok, failed, p.connections, latency, kept)
        }));
    }
    let d = done.clone();
    let t = ticker(Duration::from_secs_f64(a.duration), "trigger", move || {
        format!("{} requests", d.load(Ordering::Relaxed))
    });
    let (outs, stuck) = collect(tasks, Duration::from_secs_f64(a.duration + 30.0)).await;
    drop(t);
    let elapsed = start.elapsed().as_secs_f64();
    let after = ctx.probe.point();

    let (mut ok, mut failed, mut conns, mut latency) = (0, 0, 0, Latency::new());
    let mut kept = Kept::default();
    for (o, f, c, l, k) in &outs {
        ok += o;
        failed += f;
        conns += c;
        latency.merge(l);
        kept.merge(k);
    }
    let server_cpu = cpu_s(&after, &before);
    r.result("requests_ok", ok);
    r.result("requests_failed", failed);
    r.result("seconds", round(elapsed, 3));
    r.result("requests_per_s", round(ok as f64 / elapsed, 1));
    r.result("http_connections", conns);
    if let Some(s) = &sched {
        let o = schedule::Outcome::new(s, a.rate, a.max_requests, &kept);
        schedule::put(&mut r, &o, &ctx.pacing);
    }
    // The request's latency: until its response, from its slot at a rate.
    r.result("latency", latency.summary().to_json());
    super::put_origins(&mut r, sched.is_some(), &["latency"], &[]);
    r.result("server_cpu_s", opt(server_cpu));
    r.result("server_cpu_us_per_request", us_per(server_cpu, ok));
    r.result("server_rss_kb", opt(after.server_rss_kb()));
    r.result("client_cpu_s", opt(client_cpu_s(&after, &before)));
    super::put_machine(&mut r, &after, &before);
    if ok == 0 {
        r.failures.push("no request succeeded".into());
    }
    r.fail_if(failed, "requests failed");
    r.fail_if(stuck, "publishers that did not stop");
    r
}
