//! `fanout`: N subscribers over C channels; events published through the HTTP API at a rate or
//! flat out. Measures delivery (loss, duplicates, order), end-to-end latency and server CPU per
//! delivered message. At a rate every latency counts from the event's scheduled instant (which
//! the event carries), the publishers' lag behind their schedule and the rate they achieved are
//! reported, and a run that did not keep its schedule fails (`schedule.rs`). At a rate the
//! latency is also taken apart: each event's first and last subscriber, and each delivery's
//! arrival in the subscriber's socket (the server's part, without this process's own wake-up and
//! parsing on the cores it shares with the server).
//!
//! Against a cluster (`--ws-ports`, `--api-ports`): subscriber i connects to the node
//! `spread::node_of_subscriber` gives it, publishers go through the APIs as `--publish-via`
//! says, and every delivery counts as local (published through the subscriber's own node) or
//! cross-node, with a latency of each; loss, duplicates and order are also counted channel by
//! channel and by the subscriber's node, and the nodes' and Redis's usage is reported under
//! `cluster` (`--node-pids`, `--redis-addr`).

use super::spread::{self, PublishVia};
use super::{
    client_cpu_s, collect, cpu_s, event_data, gate, joined_per_channel, now_us, opt,
    parse_event_data, ticker, us_per, wait_ready, Ctx,
};
use crate::http::{self, Publisher};
use crate::report::{round, Report};
use crate::schedule::{self, Kept, Schedule};
use crate::stats::{Delivery, Latency, PerChannel, PerEvent, SeqTracker, Sharded};
use clap::Args;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const EVENT: &str = "bench-event";

#[derive(Debug, Args, Clone)]
pub struct FanoutArgs {
    /// Subscriber connections (subscriber i listens on channel i mod C).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: u64,
    #[arg(long, default_value_t = 100)]
    pub channels: u64,
    /// Events per second over all channels; 0 publishes flat out.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Bytes of event data.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Concurrent HTTP publishers, each on its own keep-alive connection and owning a share of
    /// the channels, so that each channel's events are sent in order.
    #[arg(long, default_value_t = 4)]
    pub publishers: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many events.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_events: u64,
    /// Flat out only: most deliveries published but not yet received before publishers wait
    /// (0: 4 per subscriber). Keeps the server's outboxes from overflowing while measuring its
    /// throughput.
    #[arg(long, default_value_t = 0)]
    pub window: u64,
    /// Flat out only: publish without any flow control.
    #[arg(long)]
    pub no_window: bool,
    /// Seconds to wait for the last deliveries after publishing stops.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Seconds the whole connect phase may take.
    #[arg(long, default_value_t = 60.0)]
    pub max_connect_seconds: f64,
    /// With several --api-ports: `split` gives each publisher one API (publisher k uses API
    /// k mod A, so each channel enters the cluster through one node); `alternate` sends each
    /// channel's consecutive events through the APIs in turn, each answered before the next is
    /// sent. Either way one publisher owns each channel and numbers its events in the order the
    /// cluster accepted them, so a subscriber that sees another order saw the cluster reorder.
    #[arg(long, value_enum, default_value_t = PublishVia::Split)]
    pub publish_via: PublishVia,
    /// Count 429 and 503 answers as the server's backpressure: reported as rejected, owing no
    /// delivery, not as failed requests (without it they fail the run like any other error).
    #[arg(long)]
    pub backpressure_ok: bool,
}

struct SubOutcome {
    channel: usize,
    /// Index of its node in --ws-ports.
    node: usize,
    tracker: SeqTracker,
    dropped: bool,
}

struct PubOutcome {
    /// (channel, events the server accepted) for each channel owned.
    published: Vec<(usize, u64)>,
    /// Events accepted through each API of --api-ports.
    via: Vec<u64>,
    failed: u64,
    /// Answers 429 and 503, with --backpressure-ok.
    rejected_429: u64,
    rejected_503: u64,
    connections: u64,
    latency: Latency,
    /// At a rate: how the publisher kept to its share of the schedule.
    kept: Kept,
}

/// Shared counters between publishers and subscribers.
#[derive(Default)]
struct Flow {
    expected: AtomicU64,
    received: AtomicU64,
    last_receive_us: AtomicU64,
    published: AtomicU64,
    attempts: AtomicU64,
}

pub async fn run(ctx: &Ctx, a: &FanoutArgs) -> Report {
    let mut r = Report::new("fanout");
    let channels = a.channels.max(1) as usize;
    let flat_out = a.rate <= 0.0;
    let window = if !flat_out || a.no_window {
        0
    } else if a.window > 0 {
        a.window
    } else {
        4 * a.subscribers.max(250)
    };
    r.param("transport", ctx.target.transport.name());
    r.param("subscribers", a.subscribers);
    r.param("channels", channels as u64);
    r.param("rate_per_s", super::rate_param(a.rate));
    r.param("payload_bytes", a.payload as u64);
    r.param("publishers", a.publishers);
    r.param("duration_s", a.duration);
    r.param("window_deliveries", window);
    let (nodes, apis) = (ctx.target.ws_nodes(), ctx.target.api_nodes());
    // A cluster: deliveries are told apart by where they were published.
    let clustered = nodes > 1 || apis > 1;
    if clustered {
        r.param("ws_nodes", nodes as u64);
        r.param("api_nodes", apis as u64);
        r.param("publish_via", format!("{:?}", a.publish_via).to_lowercase());
    }
    let pubs = a.publishers.clamp(1, channels as u64) as usize;
    let via = a.publish_via;

    let names: Arc<Vec<String>> = Arc::new(
        (0..channels)
            .map(|c| ctx.channel("", "fanout", c))
            .collect(),
    );
    let joined: Arc<Vec<AtomicU64>> = Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let flow = Arc::new(Flow::default());
    let latency = Arc::new(Sharded::new(32));
    // In a cluster: the latency of deliveries published through the subscriber's own node, and
    // through another one.
    let local_remote = clustered.then(|| Arc::new((Sharded::new(16), Sharded::new(16))));
    // At a rate, also each delivery's arrival in the subscriber's socket: the server's share.
    let at_socket = (!flat_out).then(|| Arc::new(Sharded::new(32)));
    // At a rate, each event's first and last delivery (flat out it would only add contention).
    let per_event = (!flat_out).then(|| Arc::new(PerEvent::new(channels)));
    let cancel = CancellationToken::new();

    // Subscribers.
    let start_probe = ctx.probe.point();
    let (g, rx) = gate(ctx.connect_concurrency);
    let mut sub_tasks = Vec::with_capacity(a.subscribers as usize);
    for i in 0..a.subscribers as usize {
        let ch = i % channels;
        let (ctx2, g, cancel, flow, latency, names, joined, per_event, at_socket) = (
            ctx.clone(),
            g.clone(),
            cancel.clone(),
            flow.clone(),
            latency.clone(),
            names.clone(),
            joined.clone(),
            per_event.clone(),
            at_socket.clone(),
        );
        let node = spread::node_of_subscriber(i, channels, nodes);
        // In a cluster only: the local and cross-node histograms, and which events (by sequence
        // number) enter the cluster through this subscriber's node. On one node this is None
        // and a delivery costs one test of it, nothing more.
        let split = local_remote.as_ref().map(|lr| {
            let (lr, target) = (lr.clone(), ctx.target.clone());
            let (my_addr, publisher) = (target.ws_addr(node), spread::publisher_of(ch, pubs));
            let local = move |seq: u64| {
                target.api_addr(spread::api_of(via, publisher, seq, apis)) == my_addr
            };
            (lr, local)
        });
        sub_tasks.push(tokio::spawn(async move {
            let name = names[ch].as_str();
            let at_node = (nodes > 1).then_some(node);
            let (mut c, _) = g.join_at(&ctx2, at_node, name, None).await.ok()?;
            if at_socket.is_some() {
                if let Err(e) = c.stamp_arrivals() {
                    ctx2.errors.add(&e);
                }
            }
            joined[ch].fetch_add(1, Ordering::Relaxed);
            let mut tracker = SeqTracker::default();
            let mut dropped = false;
            // Registered once: a fresh wait per message would lock the token's waiter list,
            // shared by every subscriber, twice per delivery.
            let cancelled = cancel.cancelled();
            tokio::pin!(cancelled);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut cancelled => break,
                    got = c.next(|f| {
                        if f.event != EVENT || f.channel.as_deref() != Some(name) {
                            return None;
                        }
                        let parsed = f.data_str().and_then(|d| parse_event_data(&d));
                        Some(parsed.map(|(seq, sent)| (seq, sent, now_us())))
                    }) => match got {
                        Ok(Some(Some((seq, sent, at)))) => {
                            let us = at.saturating_sub(sent);
                            latency.record_us(i, us);
                            if let Some((lr, local)) = &split {
                                let h = if local(seq) { &lr.0 } else { &lr.1 };
                                h.record_us(i, us);
                            }
                            if let Some(p) = &per_event {
                                p.record_us(ch, seq, us);
                            }
                            if let (Some(h), Some(arrived)) = (&at_socket, c.last_arrival_us()) {
                                h.record_us(i, arrived.saturating_sub(sent));
                            }
                            tracker.record(seq);
                            flow.received.fetch_add(1, Ordering::Relaxed);
                            flow.last_receive_us.fetch_max(at, Ordering::Relaxed);
                        }
                        Ok(Some(None)) => ctx2.errors.add(&crate::net::BenchError::new("bad_event_data", "unparsable data")),
                        Ok(None) => {}
                        Err(e) => {
                            ctx2.errors.add(&e);
                            dropped = true;
                            break;
                        }
                    }
                }
            }
            if !dropped {
                // Cleanup after the measurement; `churn` is where closes are checked.
                let _ = c.close().await;
            }
            Some(SubOutcome { channel: ch, node, tracker, dropped })
        }));
    }
    drop(g);
    let ready = wait_ready(
        rx,
        a.subscribers,
        Duration::from_secs_f64(a.max_connect_seconds),
        "subscribe",
        &ctx.errors,
    )
    .await;
    // Only subscribers that made it count towards expected deliveries; the others are reported as
    // connection failures.
    let subs_on: Vec<u64> = joined_per_channel(&joined, ready.ok).await;

    // The cluster idle (connected, nothing published) for --idle-window, then the phase.
    let idle = ctx.cluster.idle().await;
    // Publishers.
    let publish_start = Instant::now();
    let publish_start_us = now_us();
    let deadline = publish_start + Duration::from_secs_f64(a.duration);
    let schedule = (!flat_out).then(|| {
        Schedule::new(
            publish_start,
            a.rate,
            pubs as u64,
            Duration::from_secs_f64(a.duration),
        )
    });
    let before = ctx.probe.point();
    let cluster_before = ctx.cluster.point().await;
    let subs_on = Arc::new(subs_on);
    let (own_thread, spawner) = match super::OwnThread::for_senders(!flat_out, "publishers") {
        Ok(t) => t,
        Err(e) => {
            r.failures.push(e);
            return r;
        }
    };
    let mut pub_tasks = Vec::new();
    for k in 0..pubs {
        let owned: Vec<usize> = (k..channels).step_by(pubs).collect();
        let (ctx2, flow, names, subs_on) =
            (ctx.clone(), flow.clone(), names.clone(), subs_on.clone());
        let (payload, max_events, backpressure_ok) = (a.payload, a.max_events, a.backpressure_ok);
        pub_tasks.push(spawner.spawn(async move {
            // One keep-alive connection per API this publisher uses, opened on first use.
            let mut conns: Vec<Option<Publisher>> = (0..apis).map(|_| None).collect();
            let mut via_count = vec![0u64; apis];
            let mut seqs = vec![0u64; owned.len()];
            let (mut failed, mut latency, mut kept) = (0, Latency::new(), Kept::default());
            let (mut rejected_429, mut rejected_503) = (0, 0);
            let mut n: u64 = 0;
            loop {
                // At a rate, the slot this event is due at. Publishers take turns, a fraction of
                // a period apart: the events of a rate arrive evenly spaced, not in bursts.
                let slot = match &schedule {
                    Some(s) => {
                        let Some(at) = s.slot(k as u64, n) else {
                            break;
                        };
                        crate::pace::sleep_until(at).await;
                        // Behind by more than the schedule allows: the rest stays unsent (and
                        // the run short of its rate).
                        if Instant::now() >= s.give_up() {
                            break;
                        }
                        Some(at)
                    }
                    None => None,
                };
                while window > 0
                    && flow
                        .expected
                        .load(Ordering::Relaxed)
                        .saturating_sub(flow.received.load(Ordering::Relaxed))
                        > window
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                // A slot due before the deadline is sent however late (its lag then counts in
                // its latency); flat out, publishing stops at the deadline.
                if (slot.is_none() && Instant::now() >= deadline)
                    || flow.attempts.fetch_add(1, Ordering::Relaxed) >= max_events
                {
                    break;
                }
                let j = n as usize % owned.len();
                let ch = owned[j];
                // The event carries its scheduled instant at a rate: receivers measure from it.
                let sent_us = match (&schedule, slot) {
                    (Some(s), Some(at)) => {
                        let (scheduled_us, lag_us) = schedule::stamp(at);
                        kept.record(s, lag_us, Instant::now());
                        scheduled_us
                    }
                    _ => now_us(),
                };
                let data = event_data(seqs[j], sent_us, payload);
                let api = spread::api_of(via, k, seqs[j], apis);
                let p = conns[api].get_or_insert_with(|| Publisher::via(ctx2.target.clone(), api));
                let t0 = Instant::now();
                match p.trigger(&[names[ch].as_str()], EVENT, &data).await {
                    Ok(()) => {
                        latency.record_us(t0.elapsed().as_micros() as u64);
                        seqs[j] += 1;
                        via_count[api] += 1;
                        flow.expected.fetch_add(subs_on[ch], Ordering::Relaxed);
                        flow.published.fetch_add(1, Ordering::Relaxed);
                    }
                    // Backpressure: the event was refused, openly; it owes no delivery.
                    Err(e) if backpressure_ok && e.kind == http::REJECTED_429 => rejected_429 += 1,
                    Err(e) if backpressure_ok && e.kind == http::REJECTED_503 => rejected_503 += 1,
                    Err(e) => {
                        ctx2.errors.add(&e);
                        failed += 1;
                    }
                }
                n = n.wrapping_add(1);
            }
            PubOutcome {
                published: owned.into_iter().zip(seqs).collect(),
                via: via_count,
                failed,
                rejected_429,
                rejected_503,
                connections: conns.iter().flatten().map(|p| p.connections).sum(),
                latency,
                kept,
            }
        }));
    }
    let ticker_flow = flow.clone();
    let t = ticker(Duration::from_secs_f64(a.duration), "publish", move || {
        let f = &ticker_flow;
        format!(
            "{} events, {}/{} delivered",
            f.published.load(Ordering::Relaxed),
            f.received.load(Ordering::Relaxed),
            f.expected.load(Ordering::Relaxed)
        )
    });
    let (pub_out, _) = collect(pub_tasks, Duration::from_secs_f64(a.duration + 30.0)).await;
    drop(own_thread);
    drop(t);
    let publish_elapsed = publish_start.elapsed();

    // Drain: wait until every expected delivery arrived or the drain time is up.
    let drain_deadline = Instant::now() + Duration::from_secs_f64(a.drain);
    let mut complete = false;
    while Instant::now() < drain_deadline {
        if flow.received.load(Ordering::Relaxed) >= flow.expected.load(Ordering::Relaxed) {
            complete = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = ctx.probe.point();
    let cluster_after = ctx.cluster.point().await;
    cancel.cancel();
    let (sub_out, stuck) = collect(sub_tasks, Duration::from_secs(30)).await;

    // Accounting.
    let mut published = vec![0u64; channels];
    let (mut publish_failed, mut http_conns, mut http_latency) = (0, 0, Latency::new());
    let (mut rejected_429, mut rejected_503, mut via_count) = (0, 0, vec![0u64; apis]);
    let mut kept = Kept::default();
    for p in &pub_out {
        kept.merge(&p.kept);
        for &(ch, n) in &p.published {
            published[ch] = n;
        }
        for (a, n) in p.via.iter().enumerate() {
            via_count[a] += n;
        }
        rejected_429 += p.rejected_429;
        rejected_503 += p.rejected_503;
        publish_failed += p.failed;
        http_conns += p.connections;
        http_latency.merge(&p.latency);
    }
    let events: u64 = published.iter().sum();
    let mut per_channel = PerChannel::new(channels);
    let mut per_node = vec![Delivery::default(); nodes];
    let (mut dropped, mut lost_live) = (0, 0);
    let subs_ok = sub_out.iter().flatten().count() as u64;
    for s in sub_out.iter().flatten() {
        per_channel.add(s.channel, &s.tracker, published[s.channel]);
        let mut one = Delivery::default();
        one.add(&s.tracker, published[s.channel]);
        per_node[s.node].merge(&one);
        dropped += u64::from(s.dropped);
        if !s.dropped {
            lost_live += one.lost;
        }
    }
    let delivery = per_channel.total();
    // Events acknowledged by the server that at least one live subscriber of their channel
    // never got.
    let mut live_of: Vec<Vec<&SeqTracker>> = vec![Vec::new(); channels];
    for s in sub_out.iter().flatten().filter(|s| !s.dropped) {
        live_of[s.channel].push(&s.tracker);
    }
    let events_missed: u64 = live_of
        .iter()
        .zip(&published)
        .map(|(t, n)| crate::stats::events_missed_by_any(t.iter().copied(), *n))
        .sum();
    let last_us = flow.last_receive_us.load(Ordering::Relaxed);
    let delivery_secs = (last_us.saturating_sub(publish_start_us) as f64 / 1e6).max(1e-6);
    let server_cpu = cpu_s(&after, &before);

    ready.put(&mut r, "subscribers");
    r.result("events_published", events);
    r.result("events_failed", publish_failed);
    if a.backpressure_ok {
        r.result("events_rejected_429", rejected_429);
        r.result("events_rejected_503", rejected_503);
    }
    if apis > 1 {
        r.result("events_published_per_api", serde_json::json!(via_count));
    }
    r.result("publish_seconds", round(publish_elapsed.as_secs_f64(), 3));
    r.result(
        "publish_rate_per_s",
        round(events as f64 / publish_elapsed.as_secs_f64(), 1),
    );
    let paced = schedule.map(|s| schedule::Outcome::new(&s, a.rate, a.max_events, &kept));
    if let Some(o) = &paced {
        schedule::put(&mut r, o, &ctx.pacing);
    }
    r.result("http_connections", http_conns);
    r.result("deliveries_expected", delivery.expected);
    r.result("delivered", delivery.delivered);
    r.result(
        "delivered_per_s",
        round(delivery.delivered as f64 / delivery_secs, 1),
    );
    r.result("lost", delivery.lost);
    r.result("lost_at_live_subscribers", lost_live);
    r.result("events_missed_by_a_live_subscriber", events_missed);
    r.result(
        "events_missed_pct",
        round(events_missed as f64 * 100.0 / events.max(1) as f64, 3),
    );
    r.result("loss_ratio", delivery.loss_ratio());
    r.result("duplicates", delivery.duplicates);
    r.result("out_of_order", delivery.out_of_order);
    r.result("adjacent_pairs_inverted", delivery.adjacent_inversions);
    r.result(
        "adjacent_pairs_inverted_pct",
        round(delivery.inverted_pairs_pct(), 4),
    );
    r.result("unexpected", delivery.unexpected);
    r.result("per_channel", per_channel.summary().to_json());
    if nodes > 1 {
        let by_node: serde_json::Map<_, _> = per_node
            .iter()
            .enumerate()
            .map(|(n, d)| {
                let v = serde_json::json!({
                    "delivered": d.delivered,
                    "lost": d.lost,
                    "duplicates": d.duplicates,
                    "out_of_order": d.out_of_order,
                });
                (format!("node{}", n + 1), v)
            })
            .collect();
        r.result("by_subscriber_node", serde_json::Value::Object(by_node));
    }
    r.result("subscribers_dropped", dropped);
    r.result("drain_complete", complete);
    r.result("latency", latency.merged().summary().to_json());
    if let Some(lr) = &local_remote {
        r.result("latency_local", lr.0.merged().summary().to_json());
        r.result("latency_cross_node", lr.1.merged().summary().to_json());
    }
    super::put_breakdown(
        &mut r,
        "subscriber",
        per_event.as_deref(),
        at_socket.as_deref(),
    );
    r.result("http_latency", http_latency.summary().to_json());
    super::put_origins(
        &mut r,
        paced.is_some(),
        &[
            "latency",
            "latency_local",
            "latency_cross_node",
            "latency_first_subscriber",
            "latency_last_subscriber",
            "latency_at_socket",
        ],
        &[("http_latency", super::ACTUAL_SEND)],
    );
    r.result("server_cpu_s", opt(server_cpu));
    r.result(
        "server_cpu_us_per_delivered",
        us_per(server_cpu, delivery.delivered),
    );
    r.result("server_cpu_us_per_event", us_per(server_cpu, events));
    r.result("server_rss_before_kb", opt(start_probe.server_rss_kb()));
    r.result("server_rss_subscribed_kb", opt(before.server_rss_kb()));
    r.result("server_rss_end_kb", opt(after.server_rss_kb()));
    r.result("client_cpu_s", opt(client_cpu_s(&after, &before)));
    super::put_machine(&mut r, &after, &before);
    ctx.cluster.put(
        &mut r,
        &cluster_after,
        &cluster_before,
        idle.as_ref(),
        &[("event", events), ("delivery", delivery.delivered)],
        super::machine_and_own(&after, &before),
    );

    r.fail_if(a.subscribers - subs_ok, "subscribers not established");
    if events == 0 {
        r.failures.push("no event published".into());
    }
    r.fail_if(publish_failed, "publish requests failed");
    r.fail_if(delivery.lost, "deliveries lost");
    r.fail_if(delivery.duplicates, "duplicate deliveries");
    r.fail_if(delivery.out_of_order, "deliveries out of order");
    r.fail_if(delivery.unexpected, "deliveries never published");
    r.fail_if(dropped, "subscribers disconnected");
    r.fail_if(stuck, "subscribers that did not close");
    r
}
