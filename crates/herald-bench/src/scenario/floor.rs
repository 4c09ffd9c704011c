//! `floor`: the machine's own latency for the path a `fanout` run measures, with no Pusher
//! server involved. A plain relay runs in a child process (this binary's hidden `echo-server`, on
//! a tokio runtime like a server's). Senders write fixed-size messages at a rate, and the relay
//! either echoes each back (no `--receivers`) or writes it to every receiver of the message's
//! group, from the task that read it, as a server fans an event out to a channel's subscribers.
//! No HTTP, no WebSocket framing, no JSON: what remains is the kernel, the wake-ups and the
//! runtime, so no server measured on this machine at this moment can go below these numbers, and
//! a run next to `fanout` tells the server's share of a latency from the machine's. At a rate,
//! as in `fanout`, latency counts from each message's scheduled instant (carried in its header)
//! and the schedule must be kept.

use super::{collect, now_us, ticker, Ctx};
use crate::arrival::Stamped;
use crate::report::{round, Report};
use crate::schedule::{self, Kept, Schedule};
use crate::stats::{Latency, PerEvent, Sharded};
use clap::Args;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args, Clone)]
pub struct FloorArgs {
    /// Sending connections, each with its share of the rate and of the groups (as `fanout`'s
    /// publishers and channels).
    #[arg(long, default_value_t = 4)]
    pub connections: u64,
    /// Receiving connections (receiver i in group i mod G); 0: each message is echoed back to
    /// its sender and the round trip is measured.
    #[arg(long, default_value_t = 0)]
    pub receivers: u64,
    /// Groups the receivers are spread over (as `fanout`'s channels).
    #[arg(long, default_value_t = 100)]
    pub groups: u64,
    /// Messages per second over all senders; 0 is flat out (with receivers: at most 4
    /// deliveries per receiver in flight, as `fanout`'s window).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Bytes per message (at least 16: group, send time and sequence number).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

/// Message header: group (u32 LE), send time in µs since the epoch (u64 LE; at a rate the
/// scheduled one), the message's sequence number in its group (u32 LE).
const HEADER: usize = 16;

/// Receivers of each group, written to directly by the sender's task.
type Groups = Mutex<HashMap<u32, Vec<Arc<OwnedWriteHalf>>>>;

/// The child process. A connection's first byte says its role: `E` echo, `R` + group (u32 LE)
/// receiver (acknowledged with one byte once registered), `S` + message size (u32 LE) sender.
/// Exits when its stdin closes (the parent ended), so that it never outlives a run. Returns only
/// on failure, with the reason.
pub async fn echo_server() -> String {
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => return format!("echo-server: cannot listen: {e}"),
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => return format!("echo-server: {e}"),
    };
    println!("port {port}");
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let groups: Arc<Groups> = Arc::default();
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(relay(s, groups.clone()));
    }
}

async fn relay(mut s: TcpStream, groups: Arc<Groups>) {
    let Ok(role) = s.read_u8().await else { return };
    match role {
        b'E' => {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
        b'R' => {
            let Ok(group) = s.read_u32_le().await else {
                return;
            };
            let (mut rd, mut wr) = s.into_split();
            if wr.write_u8(b'k').await.is_err() {
                return;
            }
            let wr = Arc::new(wr);
            lock(&groups).entry(group).or_default().push(wr.clone());
            // Held until the receiver closes.
            let mut sink = [0u8; 64];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
            if let Some(v) = lock(&groups).get_mut(&group) {
                v.retain(|w| !Arc::ptr_eq(w, &wr));
            }
        }
        b'S' => {
            let Ok(size) = s.read_u32_le().await else {
                return;
            };
            let mut msg = vec![0u8; (size as usize).max(HEADER)];
            while s.read_exact(&mut msg).await.is_ok() {
                let group = u32::from_le_bytes(msg[..4].try_into().expect("4 bytes"));
                if let Some(receivers) = lock(&groups).get(&group) {
                    for w in receivers {
                        // Few small messages are in flight per receiver (a rate, or the window
                        // flat out), so a socket buffer never fills; if one did, the receiver
                        // would come up short and the run would report deliveries lost.
                        let _ = w.try_write(&msg);
                    }
                }
            }
        }
        _ => {}
    }
}

fn lock(g: &Groups) -> std::sync::MutexGuard<'_, HashMap<u32, Vec<Arc<OwnedWriteHalf>>>> {
    g.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills the child when the scenario ends, however it ends.
struct EchoChild(Child);

impl Drop for EchoChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_echo() -> Result<(EchoChild, u16), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut child = Command::new(exe)
        .arg("echo-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the echo process: {e}"))?;
    let stdout = child.stdout.take().ok_or("echo process has no stdout")?;
    let child = EchoChild(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("echo process: {e}"))?;
    let port = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("echo process said {line:?}, not its port"))?;
    Ok((child, port))
}

async fn connect(port: u16, hello: &[u8]) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot connect to the echo process: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.write_all(hello).await.map_err(|e| format!("echo: {e}"))?;
    Ok(s)
}

/// Counters shared by the senders and receivers.
struct Flow {
    sent: AtomicU64,
    /// Deliveries due for what was sent.
    expected: AtomicU64,
    received: Arc<AtomicU64>,
    /// Receivers registered in each group.
    per_group: Vec<u64>,
    /// Most deliveries in flight before senders wait (0: no limit).
    window: u64,
}

struct Sender {
    port: u16,
    /// This sender's number among all of them (its turn in the schedule).
    k: u64,
    /// Groups this sender owns, in turn (empty: echo mode).
    groups: Vec<u32>,
    /// None: flat out.
    schedule: Option<Schedule>,
    deadline: Instant,
    payload: usize,
}

/// What one sender did: the round trips' latency (echo mode), how many messages went to each
/// owned group, and at a rate how it kept its schedule.
type Sent = (Latency, Vec<(u32, u64)>, Kept);

impl Sender {
    /// Sends until the deadline (at a rate: every slot of its schedule, late if need be).
    async fn run(self, flow: Arc<Flow>) -> Result<Sent, String> {
        let echo = self.groups.is_empty();
        let size = self.payload.max(HEADER);
        let mut hello = vec![if echo { b'E' } else { b'S' }];
        hello.extend_from_slice(&(size as u32).to_le_bytes());
        let mut s = connect(self.port, if echo { &hello[..1] } else { &hello }).await?;
        let mut msg = vec![b'x'; size];
        let mut back = vec![0u8; size];
        let mut latency = Latency::new();
        let mut counts = vec![0u64; self.groups.len()];
        let mut kept = Kept::default();
        let mut n: u64 = 0;
        loop {
            // At a rate the slot due (latency is measured from it), flat out now.
            let at = match &self.schedule {
                Some(sch) => match sch.slot(self.k, n) {
                    Some(at) => {
                        crate::pace::sleep_until(at).await;
                        (Instant::now() < sch.give_up()).then_some(at)
                    }
                    None => None,
                },
                None => Some(Instant::now()).filter(|&now| now < self.deadline),
            };
            let Some(at) = at else {
                return Ok((latency, self.groups.into_iter().zip(counts).collect(), kept));
            };
            while flow.window > 0
                && flow
                    .expected
                    .load(Ordering::Relaxed)
                    .saturating_sub(flow.received.load(Ordering::Relaxed))
                    > flow.window
                && Instant::now() < self.deadline
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let j = n as usize % self.groups.len().max(1);
            let group = self.groups.get(j).copied().unwrap_or(0);
            msg[..4].copy_from_slice(&group.to_le_bytes());
            let sent_us = match &self.schedule {
                Some(sch) => {
                    let (scheduled_us, lag_us) = schedule::stamp(at);
                    kept.record(sch, lag_us, Instant::now());
                    scheduled_us
                }
                None => now_us(),
            };
            msg[4..12].copy_from_slice(&sent_us.to_le_bytes());
            let seq = counts.get(j).copied().unwrap_or(0) as u32;
            msg[12..HEADER].copy_from_slice(&seq.to_le_bytes());
            s.write_all(&msg).await.map_err(|e| format!("echo: {e}"))?;
            flow.sent.fetch_add(1, Ordering::Relaxed);
            flow.expected
                .fetch_add(flow.per_group[group as usize], Ordering::Relaxed);
            if let Some(c) = counts.get_mut(j) {
                *c += 1;
            }
            if echo {
                s.read_exact(&mut back)
                    .await
                    .map_err(|e| format!("echo: {e}"))?;
                latency.record_us(at.elapsed().as_micros() as u64);
            }
            n = n.wrapping_add(1);
        }
    }
}

/// Connects a receiver of `group`; returns once the relay has registered it.
async fn join(port: u16, group: u32) -> Result<TcpStream, String> {
    let mut hello = vec![b'R'];
    hello.extend_from_slice(&group.to_le_bytes());
    let mut s = connect(port, &hello).await?;
    match s.read_u8().await {
        Ok(b'k') => Ok(s),
        _ => Err("echo process did not register a receiver".into()),
    }
}

pub async fn run(ctx: &Ctx, a: &FloorArgs) -> Report {
    let mut r = Report::new("floor");
    let groups = a.groups.max(1);
    // Every sender owns at least one group (one without would be taken for an echo sender).
    let senders = if a.receivers > 0 {
        a.connections.clamp(1, groups)
    } else {
        a.connections.max(1)
    };
    let size = a.payload.max(HEADER);
    r.param("connections", senders);
    r.param("receivers", a.receivers);
    if a.receivers > 0 {
        r.param("groups", groups);
    }
    r.param("rate_per_s", super::rate_param(a.rate));
    r.param("payload_bytes", size as u64);
    r.param("duration_s", a.duration);
    let (child, port) = match spawn_echo() {
        Ok(c) => c,
        Err(e) => {
            r.failures.push(e);
            return r;
        }
    };

    // Receivers first, all registered before anything is sent.
    let latency = Arc::new(Sharded::new(32));
    let per_event = (a.rate > 0.0).then(|| Arc::new(PerEvent::new(groups as usize)));
    let at_socket = (a.rate > 0.0).then(|| Arc::new(Sharded::new(32)));
    let received = Arc::new(AtomicU64::new(0));
    let cancel = CancellationToken::new();
    let mut errors = Vec::new();
    let mut receivers = Vec::new();
    let mut per_group = vec![0u64; groups as usize];
    for i in 0..a.receivers {
        let g = (i % groups) as u32;
        match join(port, g).await {
            Ok(s) => {
                per_group[g as usize] += 1;
                let rx = Receiver {
                    size,
                    shard: i as usize,
                    latency: latency.clone(),
                    per_event: per_event.clone(),
                    at_socket: at_socket.clone(),
                    received: received.clone(),
                };
                receivers.push(tokio::spawn(rx.run(s, cancel.clone())));
            }
            Err(e) => {
                errors.push(e);
                break;
            }
        }
    }

    let flat_out = a.rate <= 0.0;
    let start = Instant::now() + Duration::from_millis(100);
    let deadline = start + Duration::from_secs_f64(a.duration);
    let sched = (!flat_out)
        .then(|| Schedule::new(start, a.rate, senders, Duration::from_secs_f64(a.duration)));
    let relay_pid = child.0.id().to_string();
    let relay_before = crate::procfs::sample(&relay_pid);
    let machine_before = ctx.probe.point();
    let flow = Arc::new(Flow {
        sent: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        received: received.clone(),
        per_group: per_group.clone(),
        window: if flat_out { 4 * a.receivers } else { 0 },
    });
    let flow2 = flow.clone();
    let t = ticker(Duration::from_secs_f64(a.duration), "send", move || {
        format!(
            "{} sent, {} received",
            flow2.sent.load(Ordering::Relaxed),
            flow2.received.load(Ordering::Relaxed)
        )
    });
    // As `fanout`'s publishers: at a rate on a thread of their own, evenly spaced.
    let (own_thread, spawner) = match super::OwnThread::for_senders(!flat_out, "senders") {
        Ok(t) => t,
        Err(e) => {
            r.failures.push(e);
            return r;
        }
    };
    let tasks: Vec<_> = (0..senders)
        .map(|k| {
            let owned = if a.receivers == 0 {
                Vec::new()
            } else {
                (k..groups)
                    .step_by(senders as usize)
                    .map(|g| g as u32)
                    .collect()
            };
            let sender = Sender {
                port,
                k,
                groups: owned,
                schedule: sched,
                deadline,
                payload: size,
            };
            spawner.spawn(sender.run(flow.clone()))
        })
        .collect();
    let mut echo_latency = Latency::new();
    let mut kept = Kept::default();
    let mut expected = 0;
    for (k, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(Ok((l, counts, kept_k))) => {
                echo_latency.merge(&l);
                kept.merge(&kept_k);
                expected += counts
                    .iter()
                    .map(|&(g, n)| n * per_group[g as usize])
                    .sum::<u64>();
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("sender {k}: {e}")),
        }
    }
    drop(own_thread);
    drop(t);
    let messages = flow.sent.load(Ordering::Relaxed);
    if a.receivers > 0 {
        let wait_until = Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::Relaxed) < expected && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let relay_cpu = crate::procfs::sample(&relay_pid)
        .zip(relay_before)
        .map(|(after, before)| after.cpu_since(&before));
    let machine_after = ctx.probe.point();
    cancel.cancel();
    let (rx_out, _) = collect(receivers, Duration::from_secs(5)).await;
    errors.extend(rx_out.into_iter().filter_map(Result::err));

    r.result("messages", messages);
    r.result(
        "messages_per_s",
        round(messages as f64 / a.duration.max(1e-6), 1),
    );
    if let Some(s) = &sched {
        let o = schedule::Outcome::new(s, a.rate, u64::MAX, &kept);
        schedule::put(&mut r, &o, &ctx.pacing);
    }
    if a.receivers == 0 {
        r.result("latency", echo_latency.summary().to_json());
    } else {
        let got = received.load(Ordering::Relaxed);
        r.result("deliveries_expected", expected);
        r.result("delivered", got);
        r.result(
            "delivered_per_s",
            round(got as f64 / a.duration.max(1e-6), 1),
        );
        r.result("latency", latency.merged().summary().to_json());
        super::put_breakdown(
            &mut r,
            "receiver",
            per_event.as_deref(),
            at_socket.as_deref(),
        );
        r.result("relay_cpu_us_per_delivered", super::us_per(relay_cpu, got));
        r.fail_if(expected.saturating_sub(got), "deliveries lost");
    }
    super::put_origins(
        &mut r,
        sched.is_some(),
        &[
            "latency",
            "latency_first_receiver",
            "latency_last_receiver",
            "latency_at_socket",
        ],
        &[],
    );
    r.result("relay_cpu_s", super::opt(relay_cpu));
    // How busy the machine was, and with what besides the relay and this process, as `fanout`
    // reports it: a paced run's lag and latency mean little on a machine busy with other work.
    if let Some((busy_s, share)) = machine_after.machine_busy_since(&machine_before) {
        let ours = relay_cpu.unwrap_or(0.0)
            + machine_after
                .client_cpu_since(&machine_before)
                .unwrap_or(0.0);
        r.result("machine_cpu_busy_pct", round(share * 100.0, 1));
        r.result("other_cpu_s", round((busy_s - ours).max(0.0), 2));
    }
    r.result(
        "relay_cpu_us_per_message",
        super::us_per(relay_cpu, messages),
    );
    r.fail_if(errors.len() as u64, "connections failed");
    r.failures.extend(errors);
    if messages == 0 {
        r.failures.push("nothing sent".into());
    }
    r
}

/// A receiver: records each message's latency from the (scheduled) send time it carries.
struct Receiver {
    size: usize,
    shard: usize,
    latency: Arc<Sharded>,
    /// At a rate: each message's first and last delivery.
    per_event: Option<Arc<PerEvent>>,
    /// At a rate: each message's arrival in the receiver's socket.
    at_socket: Option<Arc<Sharded>>,
    received: Arc<AtomicU64>,
}

impl Receiver {
    async fn run(self, s: TcpStream, cancel: CancellationToken) -> Result<(), String> {
        let mut s = Stamped::new(s);
        if self.at_socket.is_some() {
            s.stamp_arrivals().map_err(|e| format!("receiver: {e}"))?;
        }
        let mut msg = vec![0u8; self.size];
        // Registered once, as in `fanout`.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => return Ok(()),
                got = s.read_exact(&mut msg) => {
                    got.map_err(|e| format!("receiver: {e}"))?;
                    let field = |r: std::ops::Range<usize>| {
                        msg[r].iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b))
                    };
                    let (group, sent, seq) = (field(0..4), field(4..12), field(12..HEADER));
                    let us = now_us().saturating_sub(sent);
                    self.latency.record_us(self.shard, us);
                    if let Some(p) = &self.per_event {
                        p.record_us(group as usize, seq, us);
                    }
                    if let (Some(h), Some(at)) = (&self.at_socket, s.last_arrival_us()) {
                        h.record_us(self.shard, at.saturating_sub(sent));
                    }
                    self.received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
