//! `presence`: join/leave storms on presence channels. Watchers sit on each channel as members;
//! W workers join with a fresh user id (channel_data signed as an auth endpoint would) and
//! leave again, by disconnecting or unsubscribing. Every watcher must see each join as one
//! `member_added` followed by one `member_removed`.
//!
//! Against a cluster (`--ws-ports`): watcher m of channel c sits on node (c + m) mod N and a
//! worker's n-th join goes to node (worker + n) mod N, so with N watchers per channel every
//! join is seen from every node; the nodes' and Redis's usage per join is reported under
//! `cluster`. `--rate` paces the joins (all workers on one schedule) and the rate reached is
//! reported beside it.

use super::{client_cpu_s, collect, cpu_s, gate, now_us, opt, ticker, us_per, wait_ready, Ctx};
use crate::net::{BenchError, Client};
use crate::report::{round, Report};
use crate::stats::{Latency, Sharded};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Leave {
    /// Close the connection (a fresh connection per join).
    Disconnect,
    /// Send `pusher:unsubscribe` and reuse the connection for the next join.
    Unsubscribe,
}

#[derive(Debug, Args, Clone)]
pub struct PresenceArgs {
    #[arg(long, default_value_t = 4)]
    pub channels: u64,
    /// Watcher members per channel that check the member events.
    #[arg(long, default_value_t = 2)]
    pub watchers: u64,
    /// Concurrent join/leave loops (keep concurrency/channels + watchers under the server's
    /// presence member limit, 100 by default).
    #[arg(long, default_value_t = 40)]
    pub concurrency: u64,
    #[arg(long, value_enum, default_value_t = Leave::Disconnect)]
    pub leave: Leave,
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 10_000_000)]
    pub max_cycles: u64,
    /// Seconds to wait for the last member events after the storm.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Joins per second over all workers (0: each worker as fast as it can). A rate the
    /// workers cannot keep is not a failure: the rate reached is reported.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

#[derive(Deserialize)]
struct Member {
    user_id: serde_json::Value,
    #[serde(default)]
    user_info: Option<Info>,
}

#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    t: Option<u64>,
}

#[derive(Deserialize)]
struct Succeeded {
    presence: Roster,
}

#[derive(Deserialize)]
struct Roster {
    ids: Vec<serde_json::Value>,
}

fn id_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What one watcher saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemberLog {
    pub added: u64,
    pub removed: u64,
    pub duplicate_added: u64,
    pub duplicate_removed: u64,
    pub removed_before_added: u64,
}

/// Tracks each user through added → removed.
#[derive(Debug, Default)]
pub struct MemberTracker {
    state: HashMap<String, bool>,
    pub log: MemberLog,
}

impl MemberTracker {
    pub fn added(&mut self, user: &str) {
        match self.state.get(user) {
            None => {
                self.state.insert(user.to_string(), true);
                self.log.added += 1;
            }
            Some(_) => self.log.duplicate_added += 1,
        }
    }
    pub fn removed(&mut self, user: &str) {
        match self.state.get_mut(user) {
            None => self.log.removed_before_added += 1,
            Some(present @ true) => {
                *present = false;
                self.log.removed += 1;
            }
            Some(false) => self.log.duplicate_removed += 1,
        }
    }
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    joins: AtomicU64,
    failed: AtomicU64,
    added: AtomicU64,
    removed: AtomicU64,
}

pub async fn run(ctx: &Ctx, a: &PresenceArgs) -> Report {
    let mut r = Report::new("presence");
    let channels = a.channels.max(1) as usize;
    r.param("channels", channels as u64);
    r.param("watchers_per_channel", a.watchers);
    r.param("concurrency", a.concurrency);
    r.param("leave", format!("{:?}", a.leave).to_lowercase());
    r.param("duration_s", a.duration);
    r.param("rate_per_s", super::rate_param(a.rate));
    let nodes = ctx.target.ws_nodes();
    if nodes > 1 {
        r.param("ws_nodes", nodes as u64);
    }

    let names: Arc<Vec<String>> = Arc::new(
        (0..channels)
            .map(|c| ctx.channel("presence-", "presence", c))
            .collect(),
    );
    let counters = Arc::new(Counters::default());
    let joins_on: Arc<Vec<AtomicU64>> =
        Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let watchers_on: Arc<Vec<AtomicU64>> =
        Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let added_latency = Arc::new(Sharded::new(8));
    let cancel = CancellationToken::new();

    // Watchers.
    let (g, rx) = gate(ctx.connect_concurrency);
    let mut watcher_tasks = Vec::new();
    for c in 0..channels {
        for m in 0..a.watchers {
            let (ctx2, g, names, cancel, counters, watchers_on, lat) = (
                ctx.clone(),
                g.clone(),
                names.clone(),
                cancel.clone(),
                counters.clone(),
                watchers_on.clone(),
                added_latency.clone(),
            );
            let data = serde_json::json!({ "user_id": format!("watch-{c}-{m}"), "user_info": {} })
                .to_string();
            let node = (nodes > 1).then_some((c + m as usize) % nodes);
            watcher_tasks.push(tokio::spawn(async move {
                let name = names[c].as_str();
                let (mut client, _) = g.join_at(&ctx2, node, name, Some(&data)).await.ok()?;
                watchers_on[c].fetch_add(1, Ordering::Relaxed);
                let mut tracker = MemberTracker::default();
                let mut dropped = false;
                // Registered once, as in `fanout`.
                let cancelled = cancel.cancelled();
                tokio::pin!(cancelled);
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut cancelled => break,
                        got = client.next(|f| {
                            let added = match f.event.as_ref() {
                                "pusher_internal:member_added" => true,
                                "pusher_internal:member_removed" => false,
                                _ => return None,
                            };
                            let member: Member = serde_json::from_str(&f.data_str()?).ok()?;
                            Some((added, id_text(&member.user_id), member.user_info.and_then(|i| i.t), now_us()))
                        }) => match got {
                            Ok(Some((added, user, sent, at))) if !user.starts_with("watch-") => {
                                if added {
                                    tracker.added(&user);
                                    counters.added.fetch_add(1, Ordering::Relaxed);
                                    if let Some(sent) = sent {
                                        lat.record_us(c, at.saturating_sub(sent));
                                    }
                                } else {
                                    tracker.removed(&user);
                                    counters.removed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                ctx2.errors.add(&e);
                                dropped = true;
                                break;
                            }
                        }
                    }
                }
                if !dropped {
                    // Cleanup after the storm; `churn` is where closes are checked.
                    let _ = client.close().await;
                }
                Some((c, tracker.log, dropped))
            }));
        }
    }
    drop(g);
    let n_watchers = channels as u64 * a.watchers;
    let ready = wait_ready(
        rx,
        n_watchers,
        Duration::from_secs(60),
        "watchers",
        &ctx.errors,
    )
    .await;

    // The storm.
    let idle = ctx.cluster.idle().await;
    let before = ctx.probe.point();
    let cluster_before = ctx.cluster.point().await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let workers_n = a.concurrency.max(1);
    let schedule = (a.rate > 0.0).then(|| {
        crate::schedule::Schedule::new(
            start,
            a.rate,
            workers_n,
            Duration::from_secs_f64(a.duration),
        )
    });
    let join_latency = Arc::new(Mutex::new(Latency::new()));
    let mut workers = Vec::new();
    for w in 0..workers_n {
        let (ctx2, names, counters, joins_on, join_latency) = (
            ctx.clone(),
            names.clone(),
            counters.clone(),
            joins_on.clone(),
            join_latency.clone(),
        );
        let (leave, max) = (a.leave, a.max_cycles);
        workers.push(tokio::spawn(async move {
            let c = w as usize % names.len();
            let name = names[c].as_str();
            let mut held: Option<Client> = None;
            let mut n = 0u64;
            loop {
                // At a rate, this worker's next slot (a worker that fell behind goes at once).
                if let Some(s) = &schedule {
                    let Some(at) = s.slot(w, n) else {
                        break;
                    };
                    crate::pace::sleep_until(at).await;
                }
                if Instant::now() >= deadline
                    || counters.attempts.fetch_add(1, Ordering::Relaxed) >= max
                {
                    break;
                }
                n += 1;
                let user = format!("u-{w}-{n}");
                let t0 = Instant::now();
                let outcome = tokio::time::timeout(ctx2.connect_timeout, async {
                    let node = (nodes > 1).then_some((w as usize + n as usize) % nodes);
                    let mut client = match held.take() {
                        Some(c) => c,
                        None => Client::connect_at(&ctx2.target, node).await?,
                    };
                    let data =
                        serde_json::json!({ "user_id": user, "user_info": { "t": now_us() } })
                            .to_string();
                    let ok = client.subscribe(&ctx2.target, name, Some(&data)).await?;
                    joins_on[c].fetch_add(1, Ordering::Relaxed);
                    let roster: Succeeded = serde_json::from_str(&ok)
                        .map_err(|e| BenchError::new("protocol", format!("{e}: {ok}")))?;
                    if !roster.presence.ids.iter().any(|id| id_text(id) == user) {
                        return Err(BenchError::new(
                            "roster_missing_self",
                            format!("{user} not in {ok}"),
                        ));
                    }
                    Ok(client)
                })
                .await
                .unwrap_or_else(|_| Err(BenchError::new("timeout", "join")));
                match outcome {
                    Ok(mut client) => {
                        join_latency
                            .lock()
                            .expect("not poisoned")
                            .record_us(t0.elapsed().as_micros() as u64);
                        counters.joins.fetch_add(1, Ordering::Relaxed);
                        match leave {
                            // The leave is checked by every watcher's `member_removed`, which
                            // a close that failed still brings (the socket is dropped).
                            Leave::Disconnect => {
                                let _ = client.close().await;
                            }
                            Leave::Unsubscribe => match client.unsubscribe(name).await {
                                Ok(()) => held = Some(client),
                                Err(e) => {
                                    ctx2.errors.add(&e);
                                    counters.failed.fetch_add(1, Ordering::Relaxed);
                                }
                            },
                        }
                    }
                    Err(e) => {
                        ctx2.errors.add(&e);
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Some(client) = held {
                let _ = client.close().await;
            }
        }));
    }
    let cc = counters.clone();
    let t = ticker(Duration::from_secs_f64(a.duration), "presence", move || {
        format!(
            "{} joins, {} failed",
            cc.joins.load(Ordering::Relaxed),
            cc.failed.load(Ordering::Relaxed)
        )
    });
    let (_, stuck) = collect(
        workers,
        Duration::from_secs_f64(a.duration) + ctx.connect_timeout + Duration::from_secs(10),
    )
    .await;
    drop(t);
    let elapsed = start.elapsed().as_secs_f64();

    // Drain the member events.
    let expected: u64 = (0..channels)
        .map(|c| joins_on[c].load(Ordering::Relaxed) * watchers_on[c].load(Ordering::Relaxed))
        .sum();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(a.drain);
    while Instant::now() < drain_deadline
        && (counters.added.load(Ordering::Relaxed) < expected
            || counters.removed.load(Ordering::Relaxed) < expected)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = ctx.probe.point();
    let cluster_after = ctx.cluster.point().await;
    cancel.cancel();
    let (outs, stuck_watchers) = collect(watcher_tasks, Duration::from_secs(30)).await;

    let mut total = MemberLog::default();
    let (mut missing_added, mut missing_removed, mut extra, mut dropped) = (0, 0, 0, 0);
    for (c, log, d) in outs.into_iter().flatten() {
        let want = joins_on[c].load(Ordering::Relaxed);
        missing_added += want.saturating_sub(log.added);
        missing_removed += want.saturating_sub(log.removed);
        extra += log.added.saturating_sub(want);
        dropped += u64::from(d);
        total.added += log.added;
        total.removed += log.removed;
        total.duplicate_added += log.duplicate_added;
        total.duplicate_removed += log.duplicate_removed;
        total.removed_before_added += log.removed_before_added;
    }
    let joins = counters.joins.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let server_cpu = cpu_s(&after, &before);
    ready.put(&mut r, "watchers");
    r.result("joins", joins);
    r.result("joins_failed", failed);
    r.result("seconds", round(elapsed, 3));
    r.result("joins_per_s", round(joins as f64 / elapsed, 1));
    if a.rate > 0.0 {
        r.result(
            "rate_reached_pct",
            round(joins as f64 / elapsed / a.rate * 100.0, 1),
        );
    }
    r.result(
        "join_latency",
        join_latency
            .lock()
            .expect("not poisoned")
            .summary()
            .to_json(),
    );
    r.result("member_events_expected", expected * 2);
    r.result("member_added_received", total.added);
    r.result("member_removed_received", total.removed);
    r.result("member_added_missing", missing_added);
    r.result("member_removed_missing", missing_removed);
    r.result("member_added_unexpected", extra);
    r.result("duplicate_added", total.duplicate_added);
    r.result("duplicate_removed", total.duplicate_removed);
    r.result("removed_before_added", total.removed_before_added);
    r.result("watchers_dropped", dropped);
    r.result(
        "member_added_latency",
        added_latency.merged().summary().to_json(),
    );
    r.result("server_cpu_s", opt(server_cpu));
    r.result("server_cpu_us_per_join_leave", us_per(server_cpu, joins));
    r.result("server_rss_kb", opt(after.server_rss_kb()));
    r.result("client_cpu_s", opt(client_cpu_s(&after, &before)));
    super::put_machine(&mut r, &after, &before);
    ctx.cluster.put(
        &mut r,
        &cluster_after,
        &cluster_before,
        idle.as_ref(),
        &[("join", joins)],
        super::machine_and_own(&after, &before),
    );
    if joins == 0 {
        r.failures.push("no join succeeded".into());
    }
    r.fail_if(n_watchers - ready.ok, "watchers not established");
    r.fail_if(failed, "joins failed");
    r.fail_if(missing_added, "member_added events missing");
    r.fail_if(missing_removed, "member_removed events missing");
    r.fail_if(extra, "member_added events for failed joins");
    r.fail_if(
        total.duplicate_added + total.duplicate_removed,
        "duplicate member events",
    );
    r.fail_if(
        total.removed_before_added,
        "member_removed before member_added",
    );
    r.fail_if(dropped, "watchers disconnected");
    r.fail_if(stuck + stuck_watchers, "tasks that did not stop");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_tracker_checks_added_then_removed() {
        let mut t = MemberTracker::default();
        t.added("a");
        t.removed("a");
        t.added("b");
        t.added("b");
        t.removed("c");
        t.removed("a");
        let l = t.log;
        assert_eq!((l.added, l.removed), (2, 1));
        assert_eq!(
            (
                l.duplicate_added,
                l.duplicate_removed,
                l.removed_before_added
            ),
            (1, 1, 1)
        );
    }
}
