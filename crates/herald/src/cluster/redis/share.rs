//! Each node's share of the cluster's counts, written next to the totals; one Lua script per
//! change reports every transition exactly once.

use super::*;

/// Updates this node's share of a count and the cluster total; returns {total before, after}.
pub(super) const SET_COUNT: &str = r"
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[3])
if new == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], new) end
local before = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local after = before + new - old
if after <= 0 then
  after = 0
  redis.call('HDEL', KEYS[2], ARGV[2])
  if KEYS[3] then redis.call('HDEL', KEYS[3], ARGV[2]) end
else
  redis.call('HSET', KEYS[2], ARGV[2], after)
  if KEYS[3] and new > old then redis.call('HSET', KEYS[3], ARGV[2], ARGV[4]) end
end
return {before, after}
";

/// Coalescing key of a pending note: only the latest value per key needs writing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum NoteKey {
    Channel(Arc<str>, Arc<str>),
    Member(Arc<str>, Arc<str>, Arc<str>),
    User(Arc<str>, Arc<str>),
}

/// (app id, channel name).
pub(super) type CountKey = (Arc<str>, Arc<str>);

/// Channels above this many subscribers get at most one subscription count per window.
pub(super) const COUNT_THROTTLE_ABOVE: usize = 100;
pub(super) const COUNT_THROTTLE_WINDOW: Duration = Duration::from_secs(5);

impl RedisAdapter {
    /// Writes notes to Redis, latest value per key, and reports the transitions they cause.
    pub(super) async fn write_notes(self, mut rx: mpsc::UnboundedReceiver<(ClusterNote, bool)>) {
        let script = Script::new(SET_COUNT);
        let mut pending: HashMap<NoteKey, (ClusterNote, bool)> = HashMap::new();
        let mut order: Vec<NoteKey> = Vec::new();
        let mut conn: Option<MultiplexedConnection> = None;
        let mut retried_now = false;
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some(n) => push_note(&mut pending, &mut order, n),
                    None => return,
                }
            }
            while let Ok(n) = rx.try_recv() {
                push_note(&mut pending, &mut order, n);
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(self.connect().await),
            };
            let mut failed = false;
            let keys: Vec<NoteKey> = std::mem::take(&mut order);
            for (i, k) in keys.iter().enumerate() {
                let Some((note, quiet)) = pending.get(k).cloned() else {
                    continue;
                };
                match self.apply(&script, c, &note).await {
                    Ok(t) => {
                        pending.remove(k);
                        if !quiet {
                            self.report(&note, t);
                        }
                    }
                    Err(e) => {
                        // Readiness is the heartbeat's call; this only reconnects and retries.
                        tracing::debug!(error = %e, "writing cluster state failed; will retry");
                        order = keys[i..].to_vec();
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                conn = None;
                // The first failure after a Redis restart is the stale connection: retry at once.
                if retried_now {
                    tokio::time::sleep(RETRY).await;
                }
                retried_now = !retried_now;
            } else {
                retried_now = false;
            }
        }
    }

    pub(super) async fn apply(
        &self,
        script: &Script,
        c: &mut MultiplexedConnection,
        note: &ClusterNote,
    ) -> redis::RedisResult<(i64, i64)> {
        let node = self.inner.node_id.to_string();
        let mut inv = script.prepare_invoke();
        match note {
            ClusterNote::ChannelCount {
                app,
                channel,
                count,
            } => {
                inv.key(self.key(&["node", &node, "ch"]))
                    .key(self.key(&["ch", app]))
                    .arg(format!("{app}\n{channel}"))
                    .arg(channel.as_str())
                    .arg(*count);
            }
            ClusterNote::MemberCount {
                app,
                channel,
                user_id,
                count,
                info,
                ..
            } => {
                inv.key(self.key(&["node", &node, "pu"]))
                    .key(self.key(&["pu", app, channel.as_str()]))
                    .key(self.key(&["pi", app, channel.as_str()]))
                    .arg(format!("{app}\n{channel}\n{user_id}"))
                    .arg(&**user_id)
                    .arg(*count)
                    .arg(&**info);
            }
            ClusterNote::UserCount {
                app,
                user_id,
                count,
            } => {
                inv.key(self.key(&["node", &node, "us"]))
                    .key(self.key(&["us", app]))
                    .arg(format!("{app}\n{user_id}"))
                    .arg(&**user_id)
                    .arg(*count);
            }
        }
        let (before, after): (i64, i64) = inv.invoke_async(c).await?;
        self.set_up(true);
        Ok((before, after))
    }

    /// Reports what a note's (before, after) totals mean for the cluster.
    pub(super) fn report(&self, note: &ClusterNote, (before, after): (i64, i64)) {
        let engine = self.engine();
        match note {
            ClusterNote::ChannelCount { app, channel, .. } => {
                if before == 0 && after > 0 {
                    engine.emit_event(LifecycleEvent::ChannelOccupied {
                        app: app.clone(),
                        channel: channel.arc().clone(),
                    });
                } else if before > 0 && after == 0 {
                    engine.emit_event(LifecycleEvent::ChannelVacated {
                        app: app.clone(),
                        channel: channel.arc().clone(),
                    });
                }
                if before != after && after > 0 {
                    self.subscription_count(app, channel, after as usize);
                }
            }
            ClusterNote::MemberCount {
                app,
                channel,
                user_id,
                info,
                socket_id,
                ..
            } => {
                if before == 0 && after > 0 {
                    let frame = encode::member_added(
                        channel.as_str(),
                        user_id,
                        &serde_json::value::RawValue::from_string(info.to_string()).unwrap_or_else(
                            |_| {
                                serde_json::value::RawValue::from_string("null".into())
                                    .expect("null is JSON")
                            },
                        ),
                    );
                    self.broadcast(app, channel, frame, Some(*socket_id));
                    engine.emit_event(LifecycleEvent::MemberAdded {
                        app: app.clone(),
                        channel: channel.arc().clone(),
                        user_id: user_id.clone(),
                    });
                } else if before > 0 && after == 0 {
                    self.member_gone(app, channel, user_id);
                }
            }
            ClusterNote::UserCount { app, user_id, .. } => {
                if (before == 0) != (after == 0) {
                    self.online_changed(app, user_id, after > 0);
                }
            }
        }
    }

    pub(super) fn member_gone(&self, app: &Arc<str>, channel: &ChannelName, user_id: &Arc<str>) {
        self.broadcast(
            app,
            channel,
            encode::member_removed(channel.as_str(), user_id),
            None,
        );
        self.engine().emit_event(LifecycleEvent::MemberRemoved {
            app: app.clone(),
            channel: channel.arc().clone(),
            user_id: user_id.clone(),
        });
    }

    pub(super) fn online_changed(&self, app: &Arc<str>, user_id: &Arc<str>, online: bool) {
        self.engine().notify_watchers_local(app, user_id, online);
        self.send(Bus::Watch {
            a: app.to_string(),
            u: user_id.to_string(),
            on: online,
        });
    }

    pub(super) fn subscription_count(&self, app: &Arc<str>, channel: &ChannelName, count: usize) {
        if channel.is_presence() {
            return;
        }
        let Some(a) = self.engine().apps().by_id(app) else {
            return;
        };
        if !a.enable_subscription_count {
            return;
        }
        let key = (app.clone(), channel.arc().clone());
        let now = tokio::time::Instant::now();
        {
            let mut counts = self.inner.counts.lock();
            if count <= COUNT_THROTTLE_ABOVE {
                counts.remove(&key);
            } else {
                match counts.get_mut(&key) {
                    Some((last, pending)) if now.duration_since(*last) < COUNT_THROTTLE_WINDOW => {
                        // Inside the window: keep the latest value; one send at the window's end.
                        let schedule = pending.is_none();
                        *pending = Some(count);
                        if schedule {
                            let due = *last + COUNT_THROTTLE_WINDOW;
                            let this = self.clone();
                            let channel = channel.clone();
                            let app = app.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep_until(due).await;
                                let latest = {
                                    let mut counts = this.inner.counts.lock();
                                    counts
                                        .get_mut(&(app.clone(), channel.arc().clone()))
                                        .and_then(|(last, p)| {
                                            *last = tokio::time::Instant::now();
                                            p.take()
                                        })
                                };
                                if let Some(n) = latest {
                                    this.send_count(&app, &channel, n);
                                }
                            });
                        }
                        return;
                    }
                    _ => {
                        counts.insert(key, (now, None));
                    }
                }
            }
        }
        self.send_count(app, channel, count);
    }

    /// Hands a count to every node (this one included), each of which coalesces the frames to
    /// its own subscribers (`Engine::deliver_count`), and reports it.
    pub(super) fn send_count(&self, app: &Arc<str>, channel: &ChannelName, count: usize) {
        self.engine().deliver_count(app, channel, count);
        self.send(Bus::Count {
            a: app.to_string(),
            c: channel.to_string(),
            k: count,
        });
        self.engine().emit_event(LifecycleEvent::SubscriptionCount {
            app: app.clone(),
            channel: channel.arc().clone(),
            count,
        });
    }
}

pub(super) fn note_key(n: &ClusterNote) -> NoteKey {
    match n {
        ClusterNote::ChannelCount { app, channel, .. } => {
            NoteKey::Channel(app.clone(), channel.arc().clone())
        }
        ClusterNote::MemberCount {
            app,
            channel,
            user_id,
            ..
        } => NoteKey::Member(app.clone(), channel.arc().clone(), user_id.clone()),
        ClusterNote::UserCount { app, user_id, .. } => NoteKey::User(app.clone(), user_id.clone()),
    }
}

pub(super) fn push_note(
    pending: &mut HashMap<NoteKey, (ClusterNote, bool)>,
    order: &mut Vec<NoteKey>,
    (n, quiet): (ClusterNote, bool),
) {
    let k = note_key(&n);
    match pending.get_mut(&k) {
        // A loud note stays loud when a quiet resync value replaces it.
        Some(slot) => *slot = (n, slot.1 && quiet),
        None => {
            pending.insert(k.clone(), (n, quiet));
            order.push(k);
        }
    }
}
