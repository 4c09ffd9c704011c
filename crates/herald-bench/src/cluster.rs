//! The nodes of a cluster and its broker, observed from outside during a measured phase: each
//! node's CPU (from `/proc`, `--node-pids`) and Redis's CPU, bytes on the wire and commands (from
//! `INFO`, `--redis-addr`), as totals and per unit of work (an event, a delivery, a join). An
//! idle window before the phase (`--idle-window`) measures what the cluster spends with nothing
//! published (heartbeats, timers), and each per-unit figure is also given net of it.

use crate::procfs;
use crate::redis_probe::{self, Conn};
use crate::report::{round, Report};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long the idle window waits after the connect phase before it starts: the nodes are
/// still writing what the connections changed (subscription counts, presence) for a moment
/// after the last one is answered. Measured on 3 nodes with 300 subscribers: about 300 Redis
/// commands/s over a 1 s window started at once, 73/s over a 4 s one; this much quiet keeps
/// that tail out of the idle rate.
pub const IDLE_SETTLE: Duration = Duration::from_secs(1);

/// Where the cluster's processes are.
pub struct Probe {
    pub node_pids: Vec<u32>,
    pub redis: Option<SocketAddr>,
    /// Seconds of the idle window scenarios measure before their phase (0: none).
    pub idle_window: f64,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("node_pids", &self.node_pids)
            .field("redis", &self.redis)
            .finish()
    }
}

/// Redis's counters at one moment, with this probe's own traffic so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RedisPoint {
    /// used_cpu_sys + used_cpu_user, seconds.
    pub cpu_s: f64,
    pub net_in: u64,
    pub net_out: u64,
    pub commands: u64,
    /// Bytes this probe had sent, its INFO command included (Redis counts input as it reads it).
    pub own_sent: u64,
    /// Bytes this probe had received before this reply (Redis counts output as it writes it).
    pub own_received: u64,
}

impl RedisPoint {
    /// Reads the counters from the text of `INFO` (sections stats and cpu).
    pub fn from_info(info: &str) -> Option<Self> {
        let num = |k: &str| redis_probe::info_field(info, k)?.parse::<f64>().ok();
        Some(Self {
            cpu_s: num("used_cpu_sys")? + num("used_cpu_user")?,
            net_in: num("total_net_input_bytes")? as u64,
            net_out: num("total_net_output_bytes")? as u64,
            commands: num("total_commands_processed")? as u64,
            own_sent: 0,
            own_received: 0,
        })
    }
}

/// Readings of the cluster at one moment.
#[derive(Debug, Clone)]
pub struct Point {
    at: Instant,
    /// CPU nanoseconds of each node (None: unreadable, such as a node that was killed).
    nodes: Vec<Option<u64>>,
    redis: Option<RedisPoint>,
}

/// What the cluster spent between two points.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub seconds: f64,
    pub node_cpu_s: Vec<Option<f64>>,
    pub redis: Option<RedisUsage>,
}

/// What Redis spent between two points, this probe's own traffic taken out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RedisUsage {
    pub cpu_s: f64,
    pub net_in: u64,
    pub net_out: u64,
    pub commands: u64,
}

/// Usage between `before` and `after`.
pub fn usage(after: &Point, before: &Point) -> Usage {
    let node_cpu_s = after
        .nodes
        .iter()
        .zip(&before.nodes)
        .map(|(a, b)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?) as f64 / 1e9))
        .collect();
    let redis = match (after.redis, before.redis) {
        (Some(a), Some(b)) => Some(redis_usage(&a, &b)),
        _ => None,
    };
    Usage {
        seconds: after.at.saturating_duration_since(before.at).as_secs_f64(),
        node_cpu_s,
        redis,
    }
}

/// Redis's counters between two readings, less the probe's own commands and replies between
/// them: input from just after the first INFO command up to the second one included, output
/// from the first INFO's reply up to the second's excluded.
pub fn redis_usage(after: &RedisPoint, before: &RedisPoint) -> RedisUsage {
    let own_in = after.own_sent.saturating_sub(before.own_sent);
    let own_out = after.own_received.saturating_sub(before.own_received);
    RedisUsage {
        cpu_s: (after.cpu_s - before.cpu_s).max(0.0),
        net_in: after
            .net_in
            .saturating_sub(before.net_in)
            .saturating_sub(own_in),
        net_out: after
            .net_out
            .saturating_sub(before.net_out)
            .saturating_sub(own_out),
        // The second INFO is counted once it has run.
        commands: after.commands.saturating_sub(before.commands + 1),
    }
}

/// `total` per unit, and net of an idle rate (`idle_total / idle_seconds` over `seconds`).
fn per_unit(total: f64, units: u64, scale: f64, idle: Option<(f64, f64)>, seconds: f64) -> Value {
    if units == 0 {
        return Value::Null;
    }
    let raw = total * scale / units as f64;
    match idle {
        Some((idle_total, idle_s)) if idle_s > 0.0 => {
            let net = (total - idle_total / idle_s * seconds) * scale / units as f64;
            json!({ "raw": round(raw, 3), "net_of_idle": round(net, 3) })
        }
        _ => json!(round(raw, 3)),
    }
}

impl Usage {
    /// The usage as JSON: totals, and per each of `units` (name, count), e.g. ("event", 10000).
    /// With `idle` (usage over a quiet window before), each per-unit figure is an object with the
    /// raw value and the value net of what the idle window's rate would have spent anyway.
    pub fn to_json(&self, pids: &[u32], units: &[(&str, u64)], idle: Option<&Usage>) -> Value {
        // Keyed node1, node2, ... (an object, so the table shows every node).
        let mut nodes = Map::new();
        for (i, cpu) in self.node_cpu_s.iter().enumerate() {
            let mut m = Map::new();
            m.insert("pid".into(), json!(pids.get(i)));
            m.insert("cpu_s".into(), json!(cpu.map(|c| round(c, 4))));
            let idle_cpu = idle
                .and_then(|u| Some((u.node_cpu_s.get(i).copied()??, u.seconds)))
                .filter(|_| cpu.is_some());
            if let Some((c, s)) = idle_cpu {
                m.insert("idle_cpu_pct".into(), json!(round(c / s * 100.0, 2)));
            }
            for (name, n) in units {
                let v = cpu.map_or(Value::Null, |c| {
                    per_unit(c, *n, 1e6, idle_cpu, self.seconds)
                });
                m.insert(format!("cpu_us_per_{name}"), v);
            }
            nodes.insert(format!("node{}", i + 1), Value::Object(m));
        }
        let mut out = Map::new();
        out.insert("seconds".into(), json!(round(self.seconds, 3)));
        let total: f64 = self.node_cpu_s.iter().flatten().sum();
        out.insert("nodes_cpu_s".into(), json!(round(total, 3)));
        out.insert("nodes".into(), Value::Object(nodes));
        if let Some(r) = &self.redis {
            let idle_r = idle.and_then(|u| Some((u.redis?, u.seconds)));
            let mut m = Map::new();
            m.insert("cpu_s".into(), json!(round(r.cpu_s, 4)));
            m.insert("net_in_bytes".into(), json!(r.net_in));
            m.insert("net_out_bytes".into(), json!(r.net_out));
            m.insert("commands".into(), json!(r.commands));
            if let Some((i, s)) = idle_r.filter(|(_, s)| *s > 0.0) {
                m.insert(
                    "idle_per_s".into(),
                    json!({
                        "cpu_pct": round(i.cpu_s / s * 100.0, 3),
                        "net_in_bytes": round(i.net_in as f64 / s, 1),
                        "net_out_bytes": round(i.net_out as f64 / s, 1),
                        "commands": round(i.commands as f64 / s, 1),
                    }),
                );
            }
            for (name, n) in units {
                let f = |total: f64, pick: fn(&RedisUsage) -> f64, scale: f64| {
                    per_unit(
                        total,
                        *n,
                        scale,
                        idle_r.map(|(i, s)| (pick(&i), s)),
                        self.seconds,
                    )
                };
                m.insert(format!("cpu_us_per_{name}"), f(r.cpu_s, |u| u.cpu_s, 1e6));
                m.insert(
                    format!("net_in_bytes_per_{name}"),
                    f(r.net_in as f64, |u| u.net_in as f64, 1.0),
                );
                m.insert(
                    format!("net_out_bytes_per_{name}"),
                    f(r.net_out as f64, |u| u.net_out as f64, 1.0),
                );
                m.insert(
                    format!("commands_per_{name}"),
                    f(r.commands as f64, |u| u.commands as f64, 1.0),
                );
            }
            out.insert("redis".into(), Value::Object(m));
        }
        Value::Object(out)
    }
}

impl Probe {
    pub fn new(node_pids: Vec<u32>, redis: Option<SocketAddr>, idle_window: f64) -> Self {
        Self {
            node_pids,
            redis,
            idle_window,
            conn: Mutex::new(None),
        }
    }

    /// Whether there is anything to observe.
    pub fn active(&self) -> bool {
        !self.node_pids.is_empty() || self.redis.is_some()
    }

    /// Reads every node and Redis now (Redis: None when it cannot be read).
    pub async fn point(&self) -> Point {
        let redis = match self.redis {
            Some(addr) => self.redis_point(addr).await.ok(),
            None => None,
        };
        Point {
            at: Instant::now(),
            nodes: self.node_pids.iter().map(|p| procfs::cpu_ns(*p)).collect(),
            redis,
        }
    }

    async fn redis_point(&self, addr: SocketAddr) -> Result<RedisPoint, String> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(Conn::connect(addr).await?);
        }
        let conn = guard.as_mut().expect("just set");
        let own_received = conn.received;
        let result = conn.info("all").await;
        let own_sent = conn.sent;
        if conn.broken {
            *guard = None;
        }
        match result.map(|text| RedisPoint::from_info(&text)) {
            Ok(Some(p)) => Ok(RedisPoint {
                own_sent,
                own_received,
                ..p
            }),
            Ok(None) => Err("INFO without the expected fields".into()),
            Err(e) => Err(e),
        }
    }

    /// Runs a command on the probe's Redis connection (a broken connection is set up again by
    /// the next command; an error reply leaves it as it is).
    pub async fn redis_cmd(&self, args: &[&str]) -> Result<redis::Value, String> {
        let addr = self.redis.ok_or("no --redis-addr given")?;
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(Conn::connect(addr).await?);
        }
        let conn = guard.as_mut().expect("just set");
        let r = conn.cmd(args).await;
        if conn.broken {
            *guard = None;
        }
        r
    }

    /// The name of the probe's own Redis connection (its commands are in SLOWLOG too).
    pub async fn own_redis_client(&self) -> Option<String> {
        Some(self.conn.lock().await.as_ref()?.name.clone())
    }

    /// The cluster's usage over `--idle-window` seconds, after [`IDLE_SETTLE`] (None when
    /// there is nothing to observe or no window).
    pub async fn idle(&self) -> Option<Usage> {
        if !self.active() || self.idle_window <= 0.0 {
            return None;
        }
        tokio::time::sleep(IDLE_SETTLE).await;
        let before = self.point().await;
        tokio::time::sleep(Duration::from_secs_f64(self.idle_window)).await;
        Some(usage(&self.point().await, &before))
    }

    /// Puts `cluster` (the usage between the points, per each of `units`) into the report, and
    /// `other_cpu_s_beyond_cluster`: CPU the machine spent on anything but the nodes, Redis and
    /// this bench (`machine`: busy CPU seconds over the phase, and this bench's own).
    pub fn put(
        &self,
        r: &mut Report,
        after: &Point,
        before: &Point,
        idle: Option<&Usage>,
        units: &[(&str, u64)],
        machine: Option<(f64, f64)>,
    ) {
        if !self.active() {
            return;
        }
        let u = usage(after, before);
        let mut v = u.to_json(&self.node_pids, units, idle);
        if let (Some((busy, own)), Value::Object(m)) = (machine, &mut v) {
            let ours: f64 =
                u.node_cpu_s.iter().flatten().sum::<f64>() + u.redis.map_or(0.0, |r| r.cpu_s) + own;
            m.insert(
                "other_cpu_s_beyond_cluster".into(),
                json!(round((busy - ours).max(0.0), 2)),
            );
        }
        r.result("cluster", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: Instant, nodes: Vec<Option<u64>>, redis: Option<RedisPoint>) -> Point {
        Point { at, nodes, redis }
    }

    #[test]
    fn reads_redis_counters_from_info() {
        let info = "# Stats\r\ntotal_commands_processed:12\r\ntotal_net_input_bytes:51\r\n\
                    total_net_output_bytes:277\r\n# CPU\r\nused_cpu_sys:0.5\r\nused_cpu_user:0.25\r\n";
        let p = RedisPoint::from_info(info).unwrap();
        assert_eq!((p.net_in, p.net_out, p.commands), (51, 277, 12));
        assert!((p.cpu_s - 0.75).abs() < 1e-9);
        assert_eq!(RedisPoint::from_info("# Stats\r\n"), None);
    }

    #[test]
    fn takes_the_probes_own_traffic_out() {
        // First INFO: 30 bytes sent (counted by Redis before it answered), nothing received yet.
        // Its 4,000-byte reply comes after Redis read its counters, so it lands in the next
        // reading, as does the second command (30 more bytes sent).
        let before = RedisPoint {
            cpu_s: 1.0,
            net_in: 1_030,
            net_out: 5_000,
            commands: 10,
            own_sent: 30,
            own_received: 0,
        };
        let after = RedisPoint {
            cpu_s: 1.5,
            net_in: 1_030 + 10_000 + 30,
            net_out: 5_000 + 4_000 + 20_000,
            commands: 10 + 100 + 1,
            own_sent: 60,
            own_received: 4_000,
        };
        let u = redis_usage(&after, &before);
        assert_eq!((u.net_in, u.net_out, u.commands), (10_000, 20_000, 100));
        assert!((u.cpu_s - 0.5).abs() < 1e-9);
    }

    #[test]
    fn usage_per_unit_raw_and_net_of_idle() {
        let t0 = Instant::now();
        let redis = |cpu: f64, out: u64| RedisPoint {
            cpu_s: cpu,
            net_out: out,
            ..Default::default()
        };
        // Idle: 1 s, node 1 spent 10 ms, Redis 1 ms and 100 bytes out.
        let idle = usage(
            &point(
                t0 + Duration::from_secs(1),
                vec![Some(10_000_000), None],
                Some(redis(0.001, 100)),
            ),
            &point(t0, vec![Some(0), None], Some(redis(0.0, 0))),
        );
        // Phase: 2 s, 1,000 events, node 1 spent 1.02 s, Redis 0.102 s and 10,200 bytes out.
        let phase = usage(
            &point(
                t0 + Duration::from_secs(2),
                vec![Some(1_020_000_000), None],
                Some(redis(0.102, 10_200)),
            ),
            &point(t0, vec![Some(0), None], Some(redis(0.0, 0))),
        );
        let v = phase.to_json(&[7, 8], &[("event", 1000)], Some(&idle));
        let n1 = &v["nodes"]["node1"];
        assert_eq!(n1["pid"], json!(7));
        assert_eq!(n1["cpu_us_per_event"]["raw"], json!(1020.0));
        assert_eq!(n1["cpu_us_per_event"]["net_of_idle"], json!(1000.0));
        assert_eq!(n1["idle_cpu_pct"], json!(1.0));
        // A node that could not be read has no figures.
        assert_eq!(v["nodes"]["node2"]["cpu_s"], Value::Null);
        assert_eq!(v["nodes"]["node2"]["cpu_us_per_event"], Value::Null);
        assert_eq!(v["redis"]["cpu_us_per_event"]["raw"], json!(102.0));
        assert_eq!(v["redis"]["cpu_us_per_event"]["net_of_idle"], json!(100.0));
        assert_eq!(
            v["redis"]["net_out_bytes_per_event"]["net_of_idle"],
            json!(10.0)
        );
        // Without an idle window, plain numbers; with no units, null.
        let plain = phase.to_json(&[7, 8], &[("event", 1000), ("join", 0)], None);
        assert_eq!(plain["redis"]["net_out_bytes_per_event"], json!(10.2));
        assert_eq!(plain["redis"]["net_out_bytes_per_join"], Value::Null);
        assert_eq!(plain["nodes_cpu_s"], json!(1.02));
    }

    /// Against a real `redis-server` when one is installed: the probe's own commands (INFO,
    /// CONFIG, SLOWLOG) come out of Redis's byte counters exactly, and its SLOWLOG entries carry
    /// its name.
    #[tokio::test]
    async fn own_traffic_comes_out_of_a_real_redis() {
        use redis::FromRedisValue;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let Ok(mut server) = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
        else {
            eprintln!("redis-server not installed: skipped");
            return;
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let probe = Probe::new(Vec::new(), Some(addr), 0.0);
        let mut first = None;
        for _ in 0..100 {
            first = probe.point().await.redis;
            if first.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let first = first.expect("redis-server answers");
        probe
            .redis_cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "0"])
            .await
            .unwrap();
        assert!(probe.redis_cmd(&["NO-SUCH-COMMAND"]).await.is_err());
        // CONFIG GET answers [name, value], as node-kill reads it to restore the setting.
        let got = probe
            .redis_cmd(&["CONFIG", "GET", "slowlog-log-slower-than"])
            .await
            .unwrap();
        let got = <(String, String)>::from_redis_value(&got).unwrap();
        assert_eq!(got.1, "0");
        let before = probe.point().await.redis.unwrap();
        let slow = probe.redis_cmd(&["SLOWLOG", "GET", "-1"]).await.unwrap();
        let after = probe.point().await.redis.unwrap();
        server.kill().unwrap();
        let _ = server.wait();
        // Nothing but the probe talked to Redis: net of its own traffic, nothing.
        let u = redis_usage(&after, &before);
        assert_eq!((u.net_in, u.net_out, u.commands), (0, 0, 1), "{u:?}");
        let u = redis_usage(&after, &first);
        assert_eq!((u.net_in, u.net_out), (0, 0), "{u:?}");
        let own = probe.own_redis_client().await.unwrap();
        let entries = redis_probe::slowlog_entries(&slow);
        assert!(entries
            .iter()
            .any(|e| e.name == own && e.args[0] == "CONFIG"));
    }
}
