//! `idle`: N connections, each subscribed to one of C channels, held, then closed.
//! Measures the connect rate and the server's memory per connection and CPU.

use super::{client_cpu_s, collect, cpu_s, gate, opt, ticker, us_per, wait_ready, Ctx};
use crate::report::{round, Report};
use clap::Args;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args, Clone)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Channels they spread over (connection i subscribes to channel i mod C).
    #[arg(long, default_value_t = 100)]
    pub channels: u64,
    /// Seconds to hold the connections once all are subscribed.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds to wait after closing before the last memory reading.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Seconds the whole connect phase may take.
    #[arg(long, default_value_t = 60.0)]
    pub max_connect_seconds: f64,
}

pub async fn run(ctx: &Ctx, a: &IdleArgs) -> Report {
    let mut r = Report::new("idle");
    r.param("transport", ctx.target.transport.name());
    r.param("connections", a.connections);
    r.param("channels", a.channels);
    r.param("duration_s", a.duration);
    r.param("connect_concurrency", ctx.connect_concurrency as u64);

    let before = ctx.probe.point();
    let (g, rx) = gate(ctx.connect_concurrency);
    let cancel = CancellationToken::new();
    let dropped = Arc::new(AtomicU64::new(0));
    let channels = a.channels.max(1);
    let mut tasks = Vec::with_capacity(a.connections as usize);
    for i in 0..a.connections {
        let (ctx2, g, cancel, dropped) = (ctx.clone(), g.clone(), cancel.clone(), dropped.clone());
        let channel = ctx.channel("", "idle", (i % channels) as usize);
        tasks.push(tokio::spawn(async move {
            let Ok((mut c, _)) = g.join(&ctx2, &channel, None).await else {
                return;
            };
            loop {
                tokio::select! {
                    biased;
                    // Closing is cleanup after the measurement (memory after close is read once
                    // the socket is gone either way); `churn` is where closes are checked.
                    _ = cancel.cancelled() => {
                        let _ = c.close().await;
                        return;
                    }
                    r = c.next(|_| ()) => if let Err(e) = r {
                        ctx2.errors.add(&e);
                        dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    drop(g);
    let ready = wait_ready(
        rx,
        a.connections,
        Duration::from_secs_f64(a.max_connect_seconds),
        "connect",
        &ctx.errors,
    )
    .await;
    let connected = ctx.probe.point();

    {
        let d = dropped.clone();
        let ok = ready.ok;
        let _t = ticker(Duration::from_secs_f64(a.duration), "hold", move || {
            format!(
                "{} held, {} dropped",
                ok - d.load(Ordering::Relaxed),
                d.load(Ordering::Relaxed)
            )
        });
        tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    }
    let held = ctx.probe.point();
    cancel.cancel();
    let (_, stuck) = collect(tasks, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let after = ctx.probe.point();

    ready.put(&mut r, "connections");
    let dropped = dropped.load(Ordering::Relaxed);
    r.result("dropped_while_held", dropped);
    r.result("close_stuck", stuck);
    r.result("server_rss_before_kb", opt(before.server_rss_kb()));
    r.result("server_rss_held_kb", opt(held.server_rss_kb()));
    r.result("server_rss_after_close_kb", opt(after.server_rss_kb()));
    let per_conn = match (before.server_rss_kb(), held.server_rss_kb()) {
        (Some(b), Some(h)) if ready.ok > 0 => {
            Some(round((h as f64 - b as f64) * 1024.0 / ready.ok as f64, 0))
        }
        _ => None,
    };
    r.result("server_rss_per_connection_bytes", opt(per_conn));
    let connect_cpu = cpu_s(&connected, &before);
    r.result("server_cpu_connect_s", opt(connect_cpu));
    r.result(
        "server_cpu_us_per_connection",
        us_per(connect_cpu, ready.ok),
    );
    r.result("server_cpu_hold_s", opt(cpu_s(&held, &connected)));
    r.result(
        "client_cpu_connect_s",
        opt(client_cpu_s(&connected, &before)),
    );
    super::put_machine(&mut r, &connected, &before);
    r.result("client_rss_held_kb", opt(held.client.map(|c| c.rss_kb)));
    r.fail_if(a.connections - ready.ok, "connections not established");
    r.fail_if(dropped, "connections dropped while held");
    r.fail_if(stuck, "connections that did not close");
    r
}
