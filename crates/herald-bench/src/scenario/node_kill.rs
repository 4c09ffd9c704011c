//! `node-kill`: one node of a cluster holds N connections (over C channels: even-numbered ones
//! presence channels with a member per connection, odd-numbered ones public) and is killed with
//! SIGKILL, so it cleans up nothing. Watchers on the other nodes (`--ws-ports`) sit on every
//! channel. Measures, from the kill: how long until each other node's HTTP API (`--api-ports`)
//! counts only the watchers again (`user_count` of the presence channels and
//! `subscription_count` of the public ones, from the channel list), when the watchers' last
//! `member_removed` arrived and whether each came exactly once, the members the API still lists
//! at the end, and, with `--redis-addr`, Redis's slowest commands over the whole cleanup
//! (`SLOWLOG`, recorded from just before the kill at `--slowlog-threshold-us`, then restored).

use super::presence::{MemberLog, MemberTracker};
use super::{collect, gate, joined_per_channel, now_us, wait_ready, Ctx};
use crate::http::Publisher;
use crate::net::{BenchError, Target};
use crate::redis_probe::{self, SlowEntry};
use crate::report::{round, Report};
use clap::Args;
use redis::FromRedisValue;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args, Clone)]
pub struct NodeKillArgs {
    /// WebSocket port of the node to kill (it holds every --connections).
    #[arg(long)]
    pub victim_port: u16,
    /// PID of the node to kill: sent SIGKILL once its connections are counted by the API.
    #[arg(long)]
    pub victim_pid: u32,
    /// Connections the victim holds, connection i on channel i mod C.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Channels: even-numbered ones presence (one member per connection; keep connections / C
    /// plus --watchers under the app's presence member limit, 100 by default), the others
    /// public.
    #[arg(long, default_value_t = 100)]
    pub channels: u64,
    /// Watchers per channel, on the other nodes (--ws-ports), spread over them.
    #[arg(long, default_value_t = 1)]
    pub watchers: u64,
    /// Milliseconds between two polls of each other node's API.
    #[arg(long, default_value_t = 100)]
    pub poll_ms: u64,
    /// Seconds to wait for the cleanup after the kill.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Seconds to wait, before the kill, until every node's API counts every connection.
    #[arg(long, default_value_t = 30.0)]
    pub settle_timeout: f64,
    /// SLOWLOG's threshold (slowlog-log-slower-than, µs) from just before the kill to the end.
    #[arg(long, default_value_t = 0)]
    pub slowlog_threshold_us: u64,
    /// SLOWLOG's length (slowlog-max-len) meanwhile: entries past it push out the oldest.
    #[arg(long, default_value_t = 100_000)]
    pub slowlog_max_len: u64,
    /// Seconds the connect phase may take.
    #[arg(long, default_value_t = 120.0)]
    pub max_connect_seconds: f64,
}

/// How long, once every API counts only the watchers, the watchers' missing `member_removed`
/// are waited for.
const MEMBER_GRACE: Duration = Duration::from_secs(5);

/// Counts by channel name from an API channel list (`{"channels": {NAME: {FIELD: n}}}`); a
/// channel listed without the field counts 1 (occupied).
pub fn parse_counts(body: &[u8], field: &str) -> Result<HashMap<String, u64>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("channel list: {e}"))?;
    let list = v
        .get("channels")
        .and_then(Value::as_object)
        .ok_or("channel list without channels")?;
    Ok(list
        .iter()
        .map(|(k, info)| {
            (
                k.clone(),
                info.get(field).and_then(Value::as_u64).unwrap_or(1),
            )
        })
        .collect())
}

/// How many channels do not show the expected count (a channel the list leaves out counts 0).
pub fn mismatches(expected: &[(String, u64)], seen: &HashMap<String, u64>) -> u64 {
    expected
        .iter()
        .filter(|(name, want)| seen.get(name).copied().unwrap_or(0) != *want)
        .count() as u64
}

/// What SLOWLOG held at the end, the probe's own commands (its connection's name) left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SlowSummary {
    pub entries: u64,
    pub total_us: i64,
    /// The slowest entries, slowest first (at most 5).
    pub slowest: Vec<SlowEntry>,
    /// Per command name: entries and the longest, in µs.
    pub by_command: BTreeMap<String, (u64, i64)>,
}

pub fn summarize_slowlog(entries: Vec<SlowEntry>, own_name: Option<&str>) -> SlowSummary {
    let mut s = SlowSummary::default();
    let mut kept: Vec<SlowEntry> = entries
        .into_iter()
        .filter(|e| own_name != Some(e.name.as_str()))
        .collect();
    for e in &kept {
        s.entries += 1;
        s.total_us += e.micros;
        let name = e
            .args
            .first()
            .map_or("?".into(), |a| a.to_ascii_uppercase());
        let c = s.by_command.entry(name).or_default();
        c.0 += 1;
        c.1 = c.1.max(e.micros);
    }
    kept.sort_by_key(|e| std::cmp::Reverse(e.micros));
    kept.truncate(5);
    s.slowest = kept;
    s
}

impl SlowSummary {
    fn to_json(&self) -> Value {
        let entry = |e: &SlowEntry| {
            let args: Vec<String> = e
                .args
                .iter()
                .take(4)
                .map(|a| a.chars().take(60).collect())
                .collect();
            json!({ "us": e.micros, "command": args.join(" "), "client": e.client })
        };
        json!({
            "entries": self.entries,
            "longest_us": self.slowest.first().map(|e| e.micros),
            "total_us": self.total_us,
            "slowest": self.slowest.iter().map(entry).collect::<Vec<_>>(),
            "by_command": self.by_command.iter()
                .map(|(k, (n, max))| (k.clone(), json!({ "entries": n, "longest_us": max })))
                .collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// One poll of an API: channels whose count is not the expected one (presence and public).
async fn poll(
    p: &mut Publisher,
    presence_prefix: &str,
    public_prefix: &str,
    expected_presence: &[(String, u64)],
    expected_public: &[(String, u64)],
) -> Result<u64, BenchError> {
    let protocol = |e: String| BenchError::new("protocol", e);
    let body = p
        .get_with(
            "/channels",
            &[
                ("filter_by_prefix", presence_prefix),
                ("info", "user_count"),
            ],
        )
        .await?;
    let presence = parse_counts(&body, "user_count").map_err(protocol)?;
    let body = p
        .get_with(
            "/channels",
            &[
                ("filter_by_prefix", public_prefix),
                ("info", "subscription_count"),
            ],
        )
        .await?;
    let public = parse_counts(&body, "subscription_count").map_err(protocol)?;
    Ok(mismatches(expected_presence, &presence) + mismatches(expected_public, &public))
}

pub async fn run(ctx: &Ctx, a: &NodeKillArgs) -> Report {
    let mut r = Report::new("node-kill");
    let channels = a.channels.max(1) as usize;
    r.param("connections", a.connections);
    r.param("channels", channels as u64);
    r.param("watchers_per_channel", a.watchers);
    r.param("victim_port", a.victim_port);
    r.param("victim_pid", a.victim_pid);
    r.param("poll_ms", a.poll_ms);
    let presence = |c: usize| c.is_multiple_of(2);
    let names: Arc<Vec<String>> = Arc::new(
        (0..channels)
            .map(|c| {
                let prefix = if presence(c) { "presence-" } else { "" };
                ctx.channel(prefix, "kill", c)
            })
            .collect(),
    );
    // The run's channels of each kind: their names without the index.
    let prefix_of = |p: &str| {
        let name = ctx.channel(p, "kill", 0);
        name.strip_suffix('0').unwrap_or(&name).to_string()
    };
    let (presence_prefix, public_prefix) = (prefix_of("presence-"), prefix_of(""));
    let cancel = CancellationToken::new();
    let killed = Arc::new(AtomicBool::new(false));
    let removed = Arc::new(AtomicU64::new(0));
    let last_removed_us = Arc::new(AtomicU64::new(0));
    let survivors = ctx.target.ws_nodes();

    // Watchers on the other nodes, first, so they see every victim join and leave.
    let watchers_on: Arc<Vec<AtomicU64>> =
        Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let (g, rx) = gate(ctx.connect_concurrency);
    let mut watcher_tasks = Vec::new();
    for c in 0..channels {
        for w in 0..a.watchers {
            let (ctx2, g, names, cancel, watchers_on, removed, last) = (
                ctx.clone(),
                g.clone(),
                names.clone(),
                cancel.clone(),
                watchers_on.clone(),
                removed.clone(),
                last_removed_us.clone(),
            );
            let data = presence(c).then(|| {
                json!({ "user_id": format!("watch-{c}-{w}"), "user_info": {} }).to_string()
            });
            let node = (c + w as usize) % survivors;
            watcher_tasks.push(tokio::spawn(async move {
                let name = names[c].as_str();
                let (mut client, _) = g
                    .join_at(&ctx2, Some(node), name, data.as_deref())
                    .await
                    .ok()?;
                watchers_on[c].fetch_add(1, Ordering::Relaxed);
                let mut tracker = MemberTracker::default();
                let mut dropped = false;
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
                            let m: Value = serde_json::from_str(&f.data_str()?).ok()?;
                            let id = match m.get("user_id")? {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            Some((added, id))
                        }) => match got {
                            Ok(Some((added, user))) if !user.starts_with("watch-") => {
                                if added {
                                    tracker.added(&user);
                                } else {
                                    tracker.removed(&user);
                                    removed.fetch_add(1, Ordering::Relaxed);
                                    last.fetch_max(now_us(), Ordering::Relaxed);
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
                    let _ = client.close().await;
                }
                Some((c, tracker.log, dropped))
            }));
        }
    }
    drop(g);
    let n_watchers = channels as u64 * a.watchers;
    let connect_limit = Duration::from_secs_f64(a.max_connect_seconds);
    let w_ready = wait_ready(rx, n_watchers, connect_limit, "watchers", &ctx.errors).await;

    // The victim's connections.
    let victim_addr = std::net::SocketAddr::new(ctx.target.addr.ip(), a.victim_port);
    let t = &ctx.target;
    let mut vctx = ctx.clone();
    vctx.target = Arc::new(
        Target::new(
            t.addr,
            &t.addr.ip().to_string(),
            &t.app_id,
            &t.key,
            &t.secret,
            t.source_ips(),
        )
        .with_ws_addrs(vec![victim_addr]),
    );
    let victims_on: Arc<Vec<AtomicU64>> =
        Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let dropped_before_kill = Arc::new(AtomicU64::new(0));
    let (g, rx) = gate(ctx.connect_concurrency);
    let mut victim_tasks = Vec::new();
    for i in 0..a.connections as usize {
        let c = i % channels;
        let (vctx, g, names, cancel, victims_on, killed, early) = (
            vctx.clone(),
            g.clone(),
            names.clone(),
            cancel.clone(),
            victims_on.clone(),
            killed.clone(),
            dropped_before_kill.clone(),
        );
        let data = presence(c)
            .then(|| json!({ "user_id": format!("v-{i}"), "user_info": {} }).to_string());
        victim_tasks.push(tokio::spawn(async move {
            let Ok((mut client, _)) = g.join(&vctx, &names[c], data.as_deref()).await else {
                return;
            };
            victims_on[c].fetch_add(1, Ordering::Relaxed);
            // Held, and read (member events), until the node dies or the run ends.
            tokio::select! {
                _ = cancel.cancelled() => {}
                e = async { loop { if let Err(e) = client.next(|_| ()).await { return e; } } } => {
                    if !killed.load(Ordering::Relaxed) {
                        vctx.errors.add(&e);
                        early.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    drop(g);
    let v_ready = wait_ready(
        rx,
        a.connections,
        connect_limit,
        "victim connections",
        &ctx.errors,
    )
    .await;
    // Each connection counts itself on its channel just after it reports success.
    let victims = joined_per_channel(&victims_on, v_ready.ok).await;
    let watchers = joined_per_channel(&watchers_on, w_ready.ok).await;
    let expect = |with_victims: bool, kind: bool| -> Vec<(String, u64)> {
        (0..channels)
            .filter(|c| presence(*c) == kind)
            .map(|c| {
                (
                    names[c].clone(),
                    watchers[c] + if with_victims { victims[c] } else { 0 },
                )
            })
            .collect()
    };
    let (full_presence, full_public) = (expect(true, true), expect(true, false));
    let (after_presence, after_public) = (expect(false, true), expect(false, false));

    // Every other node's API counts every connection before the kill.
    let apis = ctx.target.api_nodes();
    let mut pubs: Vec<Publisher> = (0..apis)
        .map(|i| Publisher::via(ctx.target.clone(), i))
        .collect();
    let settle_start = Instant::now();
    let settle_deadline = settle_start + Duration::from_secs_f64(a.settle_timeout);
    let mut settled = vec![false; apis];
    while !settled.iter().all(|s| *s) && Instant::now() < settle_deadline {
        for (k, p) in pubs.iter_mut().enumerate() {
            if !settled[k] {
                match poll(
                    p,
                    &presence_prefix,
                    &public_prefix,
                    &full_presence,
                    &full_public,
                )
                .await
                {
                    Ok(0) => settled[k] = true,
                    Ok(_) => {}
                    Err(e) => ctx.errors.add(&e),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(a.poll_ms)).await;
    }
    let settle_s = settle_start.elapsed().as_secs_f64();

    // SLOWLOG from just before the kill, at the given threshold.
    let mut slowlog_restore = Vec::new();
    if ctx.cluster.redis.is_some() {
        for key in ["slowlog-log-slower-than", "slowlog-max-len"] {
            let kv = ctx.cluster.redis_cmd(&["CONFIG", "GET", key]).await;
            // CONFIG GET answers [name, value].
            if let Ok((_, v)) =
                kv.and_then(|v| <(String, String)>::from_redis_value(&v).map_err(|e| e.to_string()))
            {
                slowlog_restore.push((key, v));
            }
        }
        let (thr, len) = (
            a.slowlog_threshold_us.to_string(),
            a.slowlog_max_len.to_string(),
        );
        for cmd in [
            &["CONFIG", "SET", "slowlog-log-slower-than", thr.as_str()][..],
            &["CONFIG", "SET", "slowlog-max-len", len.as_str()],
            &["SLOWLOG", "RESET"],
        ] {
            if let Err(e) = ctx.cluster.redis_cmd(cmd).await {
                ctx.errors.add(&BenchError::new("redis", e));
            }
        }
    }

    // The kill.
    let before = ctx.cluster.point().await;
    let probe_before = ctx.probe.point();
    let t0 = Instant::now();
    let t0_us = now_us();
    killed.store(true, Ordering::Relaxed);
    let kill = std::process::Command::new("kill")
        .args(["-KILL", &a.victim_pid.to_string()])
        .status();
    let kill_ok = matches!(&kill, Ok(s) if s.success());

    // Poll every other node's API until the victim's connections are gone from its counts, and
    // wait for the watchers' member_removed.
    let expected_removed: u64 = (0..channels)
        .filter(|c| presence(*c))
        .map(|c| victims[c] * watchers[c])
        .sum();
    let mut deadline = t0 + Duration::from_secs_f64(a.timeout);
    let mut gone_at: Vec<Option<f64>> = vec![None; apis];
    let mut first_change: Option<f64> = None;
    while kill_ok && Instant::now() < deadline {
        for (k, p) in pubs.iter_mut().enumerate() {
            if gone_at[k].is_some() {
                continue;
            }
            match poll(
                p,
                &presence_prefix,
                &public_prefix,
                &after_presence,
                &after_public,
            )
            .await
            {
                Ok(0) => gone_at[k] = Some(t0.elapsed().as_secs_f64()),
                Ok(_) => {}
                Err(e) => ctx.errors.add(&e),
            }
            if first_change.is_none() {
                let full = poll(
                    p,
                    &presence_prefix,
                    &public_prefix,
                    &full_presence,
                    &full_public,
                )
                .await;
                if matches!(full, Ok(n) if n > 0) {
                    first_change = Some(t0.elapsed().as_secs_f64());
                }
            }
        }
        if gone_at.iter().all(Option::is_some) {
            if removed.load(Ordering::Relaxed) >= expected_removed {
                break;
            }
            // The counts are back; member_removed still missing get a few seconds more.
            deadline = deadline.min(Instant::now() + MEMBER_GRACE);
        }
        tokio::time::sleep(Duration::from_millis(a.poll_ms)).await;
    }
    let after = ctx.cluster.point().await;
    let probe_after = ctx.probe.point();

    // Members still listed at the end (of the victim's, that is: not watchers).
    let mut ghosts = 0u64;
    for c in (0..channels).filter(|c| presence(*c)) {
        match pubs[0].get(&format!("/channels/{}/users", names[c])).await {
            Ok(body) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                ghosts += v["users"].as_array().map_or(0, |u| {
                    u.iter()
                        .filter(|m| !m["id"].as_str().unwrap_or("").starts_with("watch-"))
                        .count() as u64
                });
            }
            Err(e) => ctx.errors.add(&e),
        }
    }

    // SLOWLOG over the cleanup, then the settings as they were.
    let mut slow = None;
    if ctx.cluster.redis.is_some() {
        let own = ctx.cluster.own_redis_client().await;
        match ctx.cluster.redis_cmd(&["SLOWLOG", "GET", "-1"]).await {
            Ok(reply) => {
                slow = Some(summarize_slowlog(
                    redis_probe::slowlog_entries(&reply),
                    own.as_deref(),
                ))
            }
            Err(e) => ctx.errors.add(&BenchError::new("redis", e)),
        }
        for (key, v) in &slowlog_restore {
            let _ = ctx.cluster.redis_cmd(&["CONFIG", "SET", key, v]).await;
        }
    }
    cancel.cancel();
    let (outs, stuck) = collect(watcher_tasks, Duration::from_secs(30)).await;
    let _ = collect(victim_tasks, Duration::from_secs(5)).await;

    // Members as the watchers saw them.
    let (mut total, mut missing_added, mut missing_removed, mut dropped) =
        (MemberLog::default(), 0, 0, 0);
    for (c, log, d) in outs.into_iter().flatten() {
        if presence(c) {
            missing_added += victims[c].saturating_sub(log.added);
            missing_removed += victims[c].saturating_sub(log.removed);
        }
        total.added += log.added;
        total.removed += log.removed;
        total.duplicate_added += log.duplicate_added;
        total.duplicate_removed += log.duplicate_removed;
        total.removed_before_added += log.removed_before_added;
        dropped += u64::from(d);
    }
    let last = last_removed_us.load(Ordering::Relaxed);
    let victims_total: u64 = victims.iter().sum();
    w_ready.put(&mut r, "watchers");
    v_ready.put(&mut r, "victim_connections");
    r.result("victim_connections_held", victims_total);
    r.result(
        "victim_dropped_before_kill",
        dropped_before_kill.load(Ordering::Relaxed),
    );
    r.result("api_settled_before_kill", settled.iter().all(|s| *s));
    r.result("api_settle_seconds", round(settle_s, 3));
    r.result("kill_sent", kill_ok);
    r.result("api_first_change_s", first_change.map(|s| round(s, 3)));
    let gone: serde_json::Map<_, _> = gone_at
        .iter()
        .enumerate()
        .map(|(k, s)| (format!("api{}", k + 1), json!(s.map(|s| round(s, 3)))))
        .collect();
    r.result("api_counts_gone_s", Value::Object(gone));
    let all_gone = gone_at.iter().all(Option::is_some);
    r.result(
        "api_counts_gone_all_s",
        json!(all_gone
            .then(|| gone_at.iter().flatten().fold(0.0f64, |m, s| m.max(*s)))
            .map(|s| round(s, 3))),
    );
    r.result("api_members_left_at_end", ghosts);
    r.result("member_removed_expected", expected_removed);
    r.result("member_removed_received", total.removed);
    r.result("member_removed_missing", missing_removed);
    r.result("member_added_missing_before_kill", missing_added);
    r.result(
        "duplicate_member_events",
        total.duplicate_added + total.duplicate_removed,
    );
    r.result(
        "last_member_removed_s",
        json!((last > t0_us).then(|| round((last - t0_us) as f64 / 1e6, 3))),
    );
    r.result("watchers_dropped", dropped);
    if let Some(s) = &slow {
        r.result("slowlog_threshold_us", a.slowlog_threshold_us);
        r.result("slowlog_full", s.entries >= a.slowlog_max_len);
        r.result("slowlog", s.to_json());
    }
    ctx.cluster.put(
        &mut r,
        &after,
        &before,
        None,
        &[],
        super::machine_and_own(&probe_after, &probe_before),
    );

    r.fail_if(n_watchers - w_ready.ok, "watchers not established");
    r.fail_if(
        a.connections - v_ready.ok,
        "victim connections not established",
    );
    if !settled.iter().all(|s| *s) {
        r.fail("the API did not count every connection before the kill".into());
    }
    if !kill_ok {
        r.fail(format!("kill -KILL {} failed: {kill:?}", a.victim_pid));
    }
    if !all_gone {
        r.fail(format!(
            "counts not back to the watchers' within {} s",
            a.timeout
        ));
    }
    r.fail_if(ghosts, "members of the dead node still listed");
    r.fail_if(missing_removed, "member_removed missing");
    r.fail_if(
        total.duplicate_added + total.duplicate_removed,
        "duplicate member events",
    );
    r.fail_if(dropped, "watchers disconnected");
    r.fail_if(stuck, "watchers that did not stop");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_a_channel_list() {
        let body =
            br#"{"channels":{"presence-a":{"user_count":3},"b":{"subscription_count":2},"c":{}}}"#;
        let c = parse_counts(body, "user_count").unwrap();
        assert_eq!(c["presence-a"], 3);
        // Listed without the field: occupied.
        assert_eq!(c["c"], 1);
        assert!(parse_counts(b"{}", "user_count").is_err());
        assert!(parse_counts(b"nope", "user_count").is_err());
    }

    #[test]
    fn a_channel_left_out_counts_zero() {
        let seen: HashMap<String, u64> = [("a".to_string(), 1), ("b".to_string(), 5)].into();
        let want = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect::<Vec<_>>()
        };
        assert_eq!(mismatches(&want(&[("a", 1), ("c", 0)]), &seen), 0);
        assert_eq!(mismatches(&want(&[("a", 1), ("b", 1), ("c", 2)]), &seen), 2);
    }

    #[test]
    fn slowlog_summary_leaves_the_probe_out_and_ranks() {
        let e = |us: i64, cmd: &str, client: &str| SlowEntry {
            id: us,
            at: 0,
            micros: us,
            args: vec![cmd.into(), "k".into()],
            client: client.into(),
            name: if client.ends_with(":9") {
                "herald-bench-9".into()
            } else {
                String::new()
            },
        };
        let s = summarize_slowlog(
            vec![
                e(5, "publish", "127.0.0.1:1"),
                e(29_600, "EVALSHA", "127.0.0.1:2"),
                e(900, "INFO", "127.0.0.1:9"),
                e(40, "EVALSHA", "127.0.0.1:2"),
            ],
            Some("herald-bench-9"),
        );
        assert_eq!((s.entries, s.total_us), (3, 29_645));
        assert_eq!(s.slowest[0].micros, 29_600);
        assert_eq!(s.by_command["EVALSHA"], (2, 29_600));
        assert_eq!(s.by_command["PUBLISH"], (1, 5));
        assert!(!s.by_command.contains_key("INFO"));
        let j = s.to_json();
        assert_eq!(j["longest_us"], json!(29_600));
        assert_eq!(j["slowest"][0]["command"], json!("EVALSHA k"));
        assert_eq!(
            summarize_slowlog(Vec::new(), None).to_json()["longest_us"],
            Value::Null
        );
    }
}
