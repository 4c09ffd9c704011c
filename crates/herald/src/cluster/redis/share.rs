//! Each node's share of the cluster's counts, written next to the totals; one Lua script per
//! change decides every transition exactly once.

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

impl RedisAdapter {
    /// Writes notes to Redis, latest value per key, and reports the transitions they cause.
    pub(super) async fn write_notes(self, mut rx: mpsc::UnboundedReceiver<(ClusterNote, bool)>) {
        let script = Script::new(SET_COUNT);
        let mut pending: HashMap<NoteKey, (ClusterNote, bool)> = HashMap::new();
        let mut order: Vec<NoteKey> = Vec::new();
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
            let mut failed = false;
            let keys: Vec<NoteKey> = std::mem::take(&mut order);
            for (i, k) in keys.iter().enumerate() {
                let Some((note, quiet)) = pending.get(k).cloned() else {
                    continue;
                };
                match self.apply(&script, &note).await {
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
                // The link already replaced a dropped connection and retried once.
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    pub(super) async fn apply(
        &self,
        script: &Script,
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
        let (before, after): (i64, i64) = self.query(Query::Script(&inv)).await?;
        self.set_up(true);
        Ok((before, after))
    }

    /// Hands the transitions a note's (before, after) totals mean to the engine.
    pub(super) fn report(&self, note: &ClusterNote, (before, after): (i64, i64)) {
        let engine = self.engine();
        match note {
            ClusterNote::ChannelCount { app, channel, .. } => {
                let (app, channel) = (app.clone(), channel.clone());
                if before == 0 && after > 0 {
                    engine.apply(Transition::Occupied {
                        app: app.clone(),
                        channel: channel.clone(),
                    });
                } else if before > 0 && after == 0 {
                    engine.apply(Transition::Vacated {
                        app: app.clone(),
                        channel: channel.clone(),
                    });
                }
                if before != after && after > 0 {
                    engine.apply(Transition::Count {
                        app,
                        channel,
                        count: after as usize,
                    });
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
                    engine.apply(Transition::MemberAdded {
                        app: app.clone(),
                        channel: channel.clone(),
                        user_id: user_id.clone(),
                        info: info.clone(),
                        except: Some(*socket_id),
                    });
                } else if before > 0 && after == 0 {
                    engine.apply(Transition::MemberRemoved {
                        app: app.clone(),
                        channel: channel.clone(),
                        user_id: user_id.clone(),
                    });
                }
            }
            ClusterNote::UserCount { app, user_id, .. } => {
                if (before == 0) != (after == 0) {
                    engine.apply(Transition::Online {
                        app: app.clone(),
                        user_id: user_id.clone(),
                        online: after > 0,
                    });
                }
            }
        }
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
