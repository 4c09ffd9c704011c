//! Heartbeats, and the reaping of nodes whose heartbeat is gone, without blocking Redis.
//!
//! * Each node incarnation (`sid`) beats into a key that expires; a beat also says whether
//!   Redis still holds the node's share (`alive`: gone after a Redis restart, rewritten
//!   quietly) and whether peers reaped it (`gone`: the node comes back under a new sid and
//!   rewrites its share loudly, so what peers announced as removed is announced again).
//! * A live node that finds a peer's heartbeat gone claims it (one claim, refreshed while it
//!   works; a reaper that dies lets it expire and another takes over) and reaps it channel by
//!   channel and user by user, walking the dead node's own lists in batches: each step is one
//!   small script on one slot, a bounded slice of a big channel's members at most, so no
//!   command holds Redis for long whatever the dead node held. Every step decides its own
//!   transitions, which this node applies; a channel reaped once fences the dead incarnation
//!   out, so a stalled node's late write cannot bring its old share back.

use super::keys::{self, ChannelKeys, Mode, NodeKeys, UserKeys};
use super::*;
use futures_util::{StreamExt, TryStreamExt};

/// One beat. KEYS: heartbeat, alive, gone; ARGV: heartbeat ttl ms.
/// Returns 'reaped' (peers reaped this incarnation), 'fresh' (Redis lost its share) or 'ok'.
pub(super) const BEAT: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return 'reaped' end
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
if redis.call('SET', KEYS[2], 1, 'NX') then return 'fresh' end
return 'ok'
";

/// Claims (or keeps claiming) a dead node for reaping. KEYS: heartbeat, claim, gone, alive;
/// ARGV: reaper, claim ttl ms, gone ttl s. Returns 1 when this reaper holds the claim.
pub(super) const CLAIM: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], 1, 'EX', ARGV[3])
redis.call('DEL', KEYS[4])
return 1
";

/// One step of reaping a channel: the dead node's subscribers (first step) and a slice of its
/// presence members. KEYS: channel shares, total, member shares (dead node), member totals,
/// user_info, fence; ARGV: dead sid, scan cursor, slice size, fence ttl s.
/// Returns {subscribers before, after, next cursor ('0': done), removed member...}.
pub(super) const REAP_CHANNEL: &str = r"
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('EXPIRE', KEYS[6], ARGV[4])
local before = tonumber(redis.call('GET', KEYS[2]) or '0')
local after = before
local share = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if share > 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  after = before - share
  if after <= 0 then
    after = 0
    redis.call('DEL', KEYS[2])
  else
    redis.call('SET', KEYS[2], after)
  end
end
local scan = redis.call('HSCAN', KEYS[3], ARGV[2], 'COUNT', ARGV[3])
local out = {before, after, scan[1]}
local rows = scan[2]
for i = 1, #rows, 2 do
  local n = tonumber(rows[i + 1])
  redis.call('HDEL', KEYS[3], rows[i])
  local left = redis.call('HINCRBY', KEYS[4], rows[i], -n)
  if left <= 0 then
    redis.call('HDEL', KEYS[4], rows[i])
    redis.call('HDEL', KEYS[5], rows[i])
    if left + n > 0 then table.insert(out, rows[i]) end
  end
end
return out
";

/// Reaps the dead node's share of a user. KEYS: shares, total, fence; ARGV: dead sid, fence
/// ttl s. Returns {before, after}.
pub(super) const REAP_USER: &str = r"
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[2])
local before = tonumber(redis.call('GET', KEYS[2]) or '0')
local share = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if share == 0 then return {before, before} end
redis.call('HDEL', KEYS[1], ARGV[1])
local after = before - share
if after <= 0 then
  after = 0
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], after)
end
return {before, after}
";

/// A claim lasts this long unless the reaper renews it (after each batch).
const CLAIM_MS: u64 = 15_000;
/// A reaped node, and each channel it was fenced out of, stays marked this long: a node
/// stalled for longer comes back as if Redis had restarted (quietly).
const GONE_S: u64 = 86_400;
/// List entries read per batch, and channel/user steps run at once.
const REAP_BATCH: usize = 200;
const REAP_PARALLEL: usize = 16;
/// Presence members of the dead node handled per step of a channel.
const REAP_SLICE: usize = 100;

/// The scripts of the heartbeat and the reaper.
#[derive(Clone)]
struct LifeScripts {
    beat: Script,
    claim: Script,
    channel: Script,
    user: Script,
}

impl LifeScripts {
    fn new() -> Self {
        Self {
            beat: Script::new(BEAT),
            claim: Script::new(CLAIM),
            channel: Script::new(REAP_CHANNEL),
            user: Script::new(REAP_USER),
        }
    }
}

/// What a reap removed, for the log line.
#[derive(Default)]
struct Reaped {
    channels: usize,
    users: usize,
    transitions: usize,
}

impl RedisAdapter {
    /// Heartbeats, resynchronises after an outage or a reap, and reaps dead peers.
    pub(super) async fn heartbeat(self) {
        let s = LifeScripts::new();
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.inner.beat_now.notified() => {}
            }
            // The link replaces a connection Redis dropped (a restart) and retries once.
            if let Err(e) = self.beat(&s).await {
                tracing::debug!(error = %e, "heartbeat failed");
                self.set_up(false);
            }
        }
    }

    async fn beat(&self, s: &LifeScripts) -> redis::RedisResult<()> {
        let p = &self.inner.prefix;
        let sid = loop {
            let sid = self.sid();
            let k = NodeKeys::new(p, &sid);
            let state: String = self
                .query(Query::Script(
                    s.beat
                        .key(&k.heartbeat)
                        .key(&k.alive)
                        .key(&k.gone)
                        .arg(HEARTBEAT_TTL_MS),
                ))
                .await?;
            match state.as_str() {
                "reaped" => self.reincarnate(&sid),
                "fresh" => {
                    self.rewrite_share(&sid);
                    break sid;
                }
                _ => break sid,
            }
        };
        let registry = keys::registry(p);
        let _: () = self
            .query(Query::Cmd(redis::cmd("SADD").arg(&registry).arg(&*sid)))
            .await?;
        self.set_up(true);
        let peers: Vec<String> = self
            .query(Query::Cmd(redis::cmd("SMEMBERS").arg(&registry)))
            .await?;
        let peers: Vec<String> = {
            let reaping = self.inner.reaping.lock();
            peers
                .into_iter()
                .filter(|m| m.as_str() != &*sid && !reaping.contains(m))
                .collect()
        };
        // One EXISTS per peer (each on its own slot), all in flight at once.
        let alive: Vec<bool> = futures_util::future::try_join_all(peers.iter().map(|peer| {
            let key = NodeKeys::new(p, peer).heartbeat;
            async move {
                self.query::<bool>(Query::Cmd(redis::cmd("EXISTS").arg(key)))
                    .await
            }
        }))
        .await?;
        for (peer, _) in peers.iter().zip(alive).filter(|(_, a)| !a) {
            if self.claim(s, peer).await? {
                self.inner.reaping.lock().insert(peer.clone());
                tokio::spawn(self.clone().reap(s.clone(), peer.clone()));
            }
        }
        Ok(())
    }

    /// Peers reaped this incarnation (it was stalled or cut off past its heartbeat's expiry):
    /// continue under a new sid, whose first beat rewrites the share loudly.
    fn reincarnate(&self, old: &str) {
        let mut sid = self.inner.sid.lock();
        if &**sid != old {
            return;
        }
        let n = self.inner.incarnation.fetch_add(1, Ordering::Relaxed) + 1;
        *sid = Arc::from(format!("{}.{n}", self.inner.node_id));
        self.inner.reborn.store(true, Ordering::Relaxed);
        tracing::warn!(
            node = self.inner.node_id,
            old = %old,
            new = %sid,
            "other nodes removed this node's connections while it did not answer (stalled or cut off): announcing them again"
        );
    }

    /// Queues this node's whole share for writing: quietly when Redis lost it (nothing was
    /// announced), loudly when peers reaped it (they announced it removed).
    fn rewrite_share(&self, sid: &str) {
        let mode = if self.inner.reborn.swap(false, Ordering::Relaxed) {
            Mode::Rewrite
        } else {
            Mode::Quiet
        };
        self.inner.epoch.fetch_add(1, Ordering::Relaxed);
        let notes = self.engine().local_notes();
        tracing::info!(
            node = %sid,
            entries = notes.len(),
            announced = mode == Mode::Rewrite,
            "writing this node's share of the cluster state"
        );
        for n in notes {
            let _ = self.inner.notes.send((n, mode));
        }
    }

    async fn claim(&self, s: &LifeScripts, dead: &str) -> redis::RedisResult<bool> {
        let k = NodeKeys::new(&self.inner.prefix, dead);
        self.query(Query::Script(
            s.claim
                .key(&k.heartbeat)
                .key(&k.claim)
                .key(&k.gone)
                .key(&k.alive)
                .arg(self.inner.node_id)
                .arg(CLAIM_MS)
                .arg(GONE_S),
        ))
        .await
    }

    /// Reaps a claimed dead node; on a failure the claim lapses and a later beat (here or on
    /// a peer) takes it up again where the lists say.
    async fn reap(self, s: LifeScripts, dead: String) {
        let started = tokio::time::Instant::now();
        match self.reap_all(&s, &dead).await {
            Ok(Some(r)) => tracing::warn!(
                node = %dead,
                channels = r.channels,
                users = r.users,
                transitions = r.transitions,
                ms = started.elapsed().as_millis() as u64,
                "removed a dead node's connections from the cluster"
            ),
            Ok(None) => {
                tracing::debug!(node = %dead, "another node took over reaping a dead node")
            }
            Err(e) => {
                tracing::warn!(node = %dead, error = %e, "reaping a dead node failed; it is retried")
            }
        }
        self.inner.reaping.lock().remove(&dead);
    }

    async fn reap_all(&self, s: &LifeScripts, dead: &str) -> redis::RedisResult<Option<Reaped>> {
        let k = NodeKeys::new(&self.inner.prefix, dead);
        let mut done = Reaped::default();
        for (list, channels) in [(&k.channels, true), (&k.users, false)] {
            let mut cursor = 0u64;
            loop {
                let (next, entries): (u64, Vec<String>) = self
                    .query(Query::Cmd(
                        redis::cmd("SSCAN")
                            .arg(list)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(REAP_BATCH),
                    ))
                    .await?;
                let steps: Vec<usize> = futures_util::stream::iter(entries)
                    .map(|e| async move {
                        let n = match keys::parse_entry(&e) {
                            Some((app, name)) if channels => {
                                self.reap_channel(s, dead, app, name).await?
                            }
                            Some((app, user)) => self.reap_user(s, dead, app, user).await?,
                            None => 0,
                        };
                        let _: () = self
                            .query(Query::Cmd(redis::cmd("SREM").arg(list).arg(&e)))
                            .await?;
                        Ok::<_, redis::RedisError>(n)
                    })
                    .buffer_unordered(REAP_PARALLEL)
                    .try_collect()
                    .await?;
                if channels {
                    done.channels += steps.len();
                } else {
                    done.users += steps.len();
                }
                done.transitions += steps.iter().sum::<usize>();
                if !self.claim(s, dead).await? {
                    return Ok(None);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let _: () = self
            .query(Query::Cmd(
                redis::cmd("SREM")
                    .arg(keys::registry(&self.inner.prefix))
                    .arg(dead),
            ))
            .await?;
        let _: () = self
            .query(Query::Cmd(
                redis::cmd("DEL")
                    .arg(&k.channels)
                    .arg(&k.users)
                    .arg(&k.claim),
            ))
            .await?;
        Ok(Some(done))
    }

    /// Reaps one channel, a slice of its members per step; returns the transitions applied.
    async fn reap_channel(
        &self,
        s: &LifeScripts,
        dead: &str,
        app: &str,
        name: &str,
    ) -> redis::RedisResult<usize> {
        let Ok(channel) = ChannelName::parse(name, usize::MAX) else {
            return Ok(0);
        };
        let app: Arc<str> = Arc::from(app);
        let k = ChannelKeys::new(&self.inner.prefix, &app, name);
        let members = k.members(dead);
        let mut cursor = String::from("0");
        let mut subs = None;
        let mut applied = 0;
        loop {
            let v: redis::Value = self
                .query(Query::Script(
                    s.channel
                        .key(&k.shares)
                        .key(&k.total)
                        .key(&members)
                        .key(&k.member_totals)
                        .key(&k.info)
                        .key(&k.fence)
                        .arg(dead)
                        .arg(&cursor)
                        .arg(REAP_SLICE)
                        .arg(GONE_S),
                ))
                .await?;
            let step = keys::parse_reaped(&v).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "unexpected answer from the reap script",
                    e,
                ))
            })?;
            // Only the first step moves the subscribers; its totals are the ones to announce.
            subs.get_or_insert((step.before, step.after));
            for user in step.removed {
                applied += 1;
                self.engine().apply(Transition::MemberRemoved {
                    app: app.clone(),
                    channel: channel.clone(),
                    user_id: Arc::from(user),
                });
            }
            if step.cursor == "0" {
                break;
            }
            cursor = step.cursor;
        }
        let (before, after) = subs.unwrap_or((0, 0));
        for t in keys::channel_transitions(&app, &channel, before, after) {
            applied += 1;
            self.engine().apply(t);
        }
        // Also repairs the listing where the dead node died between its script and its SADD.
        self.sync_listing(&app, name).await?;
        Ok(applied)
    }

    async fn reap_user(
        &self,
        s: &LifeScripts,
        dead: &str,
        app: &str,
        user: &str,
    ) -> redis::RedisResult<usize> {
        let k = UserKeys::new(&self.inner.prefix, app, user);
        let totals: (i64, i64) = self
            .query(Query::Script(
                s.user
                    .key(&k.shares)
                    .key(&k.total)
                    .key(&k.fence)
                    .arg(dead)
                    .arg(GONE_S),
            ))
            .await?;
        let t = keys::user_transition(&Arc::from(app), &Arc::from(user), totals);
        Ok(t.map_or(0, |t| {
            self.engine().apply(t);
            1
        }))
    }
}
