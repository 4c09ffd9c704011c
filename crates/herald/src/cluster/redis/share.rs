//! Each node's share of the cluster's counts, written next to the totals: one Lua script per
//! change, on the keys of one channel or one user (one hash slot), decides every transition
//! exactly once and hands it to this node's `Engine::apply`.
//!
//! Notes of different channels and users are written concurrently on the shared connection
//! (pipelined), notes of one key in order; a key's pending notes coalesce to the latest value
//! unless that would hide a transition (a join followed by a leave stays two notes).
//!
//! What spans slots is kept by separate single-slot commands, each safe under races between
//! nodes:
//! * the node's lists of where it has a share (`nc`, `nu`): added to before the share is
//!   written (refused once peers reaped this incarnation), removed from once a check between
//!   rounds of writes finds the share gone, so a reaper always finds every share;
//! * the app's list of occupied channels (`occ`): added to when a channel becomes occupied;
//!   when it empties, the channel is removed and its total read again, and put back if another
//!   node filled it meanwhile. The list is so never missing an occupied channel; an entry left
//!   over by an unlucky interleaving is skipped by readers (its total is 0) and removed then.

use super::keys::{self, ChannelKeys, Mode, NodeKeys, UserKeys, Wrote};
use super::*;
use std::collections::{HashSet, VecDeque};

/// Sets this node's share of a channel's subscribers or of a user's signed-in connections,
/// and the total. KEYS: shares, total, fence[, member shares]; ARGV: sid, count.
/// Returns {-1} when peers reaped this incarnation here, else {before, after, held}.
pub(super) const SET_SHARE: &str = r"
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return {-1} end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
if new == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], new) end
local before = tonumber(redis.call('GET', KEYS[2]) or '0')
local after = before + new - old
if after <= 0 then
  after = 0
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], after)
end
local held = 0
if new > 0 or (KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1) then held = 1 end
return {before, after, held}
";

/// Sets this node's connections of one presence member and the member's total.
/// KEYS: member shares (this node), member totals, user_info, channel shares, fence;
/// ARGV: sid, user, count, info. Returns as [`SET_SHARE`].
pub(super) const SET_MEMBER: &str = r"
if redis.call('SISMEMBER', KEYS[5], ARGV[1]) == 1 then return {-1} end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
local new = tonumber(ARGV[3])
if new == 0 then redis.call('HDEL', KEYS[1], ARGV[2]) else redis.call('HSET', KEYS[1], ARGV[2], new) end
local before = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local after = before + new - old
if after <= 0 then
  after = 0
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[2], after)
  if new > old then redis.call('HSET', KEYS[3], ARGV[2], ARGV[4]) end
end
local held = 0
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 or redis.call('EXISTS', KEYS[1]) == 1 then held = 1 end
return {before, after, held}
";

/// Adds an entry to this node's list unless peers reaped this incarnation.
/// KEYS: gone marker, list; ARGV: entry. Returns 1, or -1 when reaped.
pub(super) const LIST_ADD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
";

/// Notes written at once (each a script or two on its own slot).
const WRITE_PARALLEL: usize = 256;
/// Pending notes kept per key while Redis does not take them; beyond this the latest are
/// coalesced, giving up the transitions of a key that flaps throughout an outage.
const PENDING_PER_KEY: usize = 16;

/// Coalescing key of a pending note: notes of one key are written in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum NoteKey {
    Channel(Arc<str>, Arc<str>),
    Member(Arc<str>, Arc<str>, Arc<str>),
    User(Arc<str>, Arc<str>),
}

/// Follow-up of written notes, run between rounds of writes (in order, retried on failure).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum After {
    /// This node's share of a channel or a user may be gone: remove its list entry if so.
    Unlist(Entry),
    /// Bring the app's list of occupied channels in line with the channel's total.
    Listing { app: Arc<str>, channel: Arc<str> },
}

/// Where this node may have a share: a channel (subscribers or presence members) or a user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Entry {
    Channel(Arc<str>, Arc<str>),
    User(Arc<str>, Arc<str>),
}

impl Entry {
    fn of(note: &ClusterNote) -> Self {
        match note {
            ClusterNote::ChannelCount { app, channel, .. }
            | ClusterNote::MemberCount { app, channel, .. } => {
                Self::Channel(app.clone(), channel.arc().clone())
            }
            ClusterNote::UserCount { app, user_id, .. } => Self::User(app.clone(), user_id.clone()),
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Channel(a, n) | Self::User(a, n) => keys::entry(a, n),
        }
    }

    fn list(&self, node: &NodeKeys) -> String {
        match self {
            Self::Channel(..) => node.channels.clone(),
            Self::User(..) => node.users.clone(),
        }
    }
}

/// The scripts, loaded once per writer.
pub(super) struct Scripts {
    share: Script,
    member: Script,
    list_add: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            share: Script::new(SET_SHARE),
            member: Script::new(SET_MEMBER),
            list_add: Script::new(LIST_ADD),
        }
    }
}

/// Which of this node's list entries are known to be in Redis, for one incarnation and one
/// life of Redis's data (a restart empties the lists: the share is rewritten, so is this).
struct Listed {
    sid: Arc<str>,
    epoch: u64,
    entries: HashSet<Entry>,
}

/// Notes waiting to be written: per key in order, keys in the order they first came.
#[derive(Default)]
pub(super) struct Pending {
    by_key: HashMap<NoteKey, VecDeque<(ClusterNote, Mode)>>,
    order: Vec<NoteKey>,
}

fn count_of(n: &ClusterNote) -> u64 {
    match n {
        ClusterNote::ChannelCount { count, .. } | ClusterNote::UserCount { count, .. } => {
            *count as u64
        }
        ClusterNote::MemberCount { count, .. } => u64::from(*count),
    }
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Queues a note. It replaces the key's last pending value when both are zero or both
    /// non-zero (nothing observable lies between them), keeping the louder mode.
    pub fn push(&mut self, (n, mode): (ClusterNote, Mode)) {
        let k = note_key(&n);
        let q = self.by_key.entry(k.clone()).or_insert_with(|| {
            self.order.push(k);
            VecDeque::new()
        });
        let full = q.len() >= PENDING_PER_KEY;
        match q.back_mut() {
            Some(last) if full || (count_of(&last.0) == 0) == (count_of(&n) == 0) => {
                *last = (n, last.1.max(mode));
            }
            _ => q.push_back((n, mode)),
        }
    }

    /// The first pending note of each key, in order: one round of concurrent writes.
    fn round(&self) -> Vec<(NoteKey, ClusterNote, Mode)> {
        self.order
            .iter()
            .filter_map(|k| {
                let (n, m) = self.by_key.get(k)?.front()?;
                Some((k.clone(), n.clone(), *m))
            })
            .collect()
    }

    /// The key's first note is written (or superseded).
    fn done(&mut self, k: &NoteKey) {
        if let Some(q) = self.by_key.get_mut(k) {
            q.pop_front();
            if q.is_empty() {
                self.by_key.remove(k);
            }
        }
    }

    /// Drops the keys whose notes are all written.
    fn tidy(&mut self) {
        let by_key = &self.by_key;
        self.order.retain(|k| by_key.contains_key(k));
    }
}

/// What writing one note did.
enum Written {
    /// The totals before and after; follow-ups to run.
    Totals(i64, i64, Vec<After>),
    /// Peers reaped this node incarnation: nothing was written.
    Fenced,
}

impl RedisAdapter {
    /// Writes notes to Redis and reports the transitions they cause.
    pub(super) async fn write_notes(self, mut rx: mpsc::UnboundedReceiver<(ClusterNote, Mode)>) {
        let scripts = Scripts::new();
        let mut pending = Pending::default();
        let mut after: Vec<After> = Vec::new();
        let listed = parking_lot::Mutex::new(Listed {
            sid: self.sid(),
            epoch: self.epoch(),
            entries: HashSet::new(),
        });
        loop {
            if pending.is_empty() && after.is_empty() {
                match rx.recv().await {
                    Some(n) => pending.push(n),
                    None => return,
                }
            }
            while let Ok(n) = rx.try_recv() {
                pending.push(n);
            }
            let mut failed = self.follow_up(&mut after, &listed).await.is_err();
            if !failed {
                {
                    let mut l = listed.lock();
                    if l.sid != self.sid() || l.epoch != self.epoch() {
                        *l = Listed {
                            sid: self.sid(),
                            epoch: self.epoch(),
                            entries: HashSet::new(),
                        };
                    }
                }
                let round = pending.round();
                let mut results = Vec::with_capacity(round.len());
                // In flight together on the shared connection, a bounded number at a time
                // (a stream of borrowed notes trips the compiler's Send check).
                for chunk in round.chunks(WRITE_PARALLEL) {
                    let writes = chunk
                        .iter()
                        .map(|(_, note, _)| self.write(&scripts, note, &listed));
                    results.extend(futures_util::future::join_all(writes).await);
                }
                for ((k, note, mode), r) in round.into_iter().zip(results) {
                    match r {
                        Ok(Written::Totals(before, after_total, follow)) => {
                            pending.done(&k);
                            if mode != Mode::Quiet {
                                self.report(&note, (before, after_total), mode);
                            }
                            after.extend(follow);
                        }
                        Ok(Written::Fenced) => {
                            // Peers reaped this incarnation: the heartbeat comes back under a
                            // new one and rewrites every share, this note's value included.
                            pending.done(&k);
                            self.inner.beat_now.notify_one();
                        }
                        Err(e) => {
                            // Readiness is the heartbeat's call; this only retries (the link
                            // already replaced a dropped connection and retried once).
                            tracing::debug!(error = %e, "writing cluster state failed; will retry");
                            failed = true;
                        }
                    }
                }
                pending.tidy();
            }
            if failed {
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    /// Writes one note under this node's current incarnation: lists the entry first when the
    /// share becomes non-zero, then runs the note's script.
    async fn write(
        &self,
        s: &Scripts,
        note: &ClusterNote,
        listed: &parking_lot::Mutex<Listed>,
    ) -> redis::RedisResult<Written> {
        let p = &self.inner.prefix;
        let sid = listed.lock().sid.clone();
        let node = NodeKeys::new(p, &sid);
        let entry = Entry::of(note);
        let value = count_of(note);
        if value > 0 && !listed.lock().entries.contains(&entry) {
            let r: i64 = self
                .query(Query::Script(
                    s.list_add
                        .key(&node.gone)
                        .key(entry.list(&node))
                        .arg(entry.text()),
                ))
                .await?;
            if r < 0 {
                return Ok(Written::Fenced);
            }
            listed.lock().entries.insert(entry.clone());
        }
        let v: redis::Value = match note {
            ClusterNote::ChannelCount { app, channel, .. } => {
                let k = ChannelKeys::new(p, app, channel.as_str());
                self.query(Query::Script(
                    s.share
                        .key(&k.shares)
                        .key(&k.total)
                        .key(&k.fence)
                        .key(k.members(&sid))
                        .arg(&*sid)
                        .arg(value),
                ))
                .await?
            }
            ClusterNote::MemberCount {
                app,
                channel,
                user_id,
                info,
                ..
            } => {
                let k = ChannelKeys::new(p, app, channel.as_str());
                self.query(Query::Script(
                    s.member
                        .key(k.members(&sid))
                        .key(&k.member_totals)
                        .key(&k.info)
                        .key(&k.shares)
                        .key(&k.fence)
                        .arg(&*sid)
                        .arg(&**user_id)
                        .arg(value)
                        .arg(&**info),
                ))
                .await?
            }
            ClusterNote::UserCount { app, user_id, .. } => {
                let k = UserKeys::new(p, app, user_id);
                self.query(Query::Script(
                    s.share
                        .key(&k.shares)
                        .key(&k.total)
                        .key(&k.fence)
                        .arg(&*sid)
                        .arg(value),
                ))
                .await?
            }
        };
        let (before, after_total, held) = match keys::parse_wrote(&v) {
            Ok(Wrote::Totals {
                before,
                after,
                held,
            }) => (before, after, held),
            Ok(Wrote::Fenced) => return Ok(Written::Fenced),
            Err(e) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "unexpected answer from the count script",
                    e,
                )))
            }
        };
        self.set_up(true);
        let mut follow = Vec::new();
        if !held {
            follow.push(After::Unlist(entry));
        }
        if let ClusterNote::ChannelCount { app, channel, .. } = note {
            if (before == 0) != (after_total == 0) {
                follow.push(After::Listing {
                    app: app.clone(),
                    channel: channel.arc().clone(),
                });
            }
        }
        Ok(Written::Totals(before, after_total, follow))
    }

    /// Runs the follow-ups, each once, concurrently (each reads the state it repairs, so
    /// their order does not matter); those that failed stay for the next try. No write is in
    /// flight meanwhile, so a share found gone here stays gone until a later write lists it
    /// again.
    async fn follow_up(
        &self,
        after: &mut Vec<After>,
        listed: &parking_lot::Mutex<Listed>,
    ) -> redis::RedisResult<()> {
        let mut seen = HashSet::new();
        let todo: Vec<After> = std::mem::take(after)
            .into_iter()
            .filter(|a| seen.insert(a.clone()))
            .collect();
        let mut first_error = None;
        for chunk in todo.chunks(WRITE_PARALLEL) {
            let runs = chunk.iter().map(|a| async move {
                match a {
                    After::Unlist(entry) => self.unlist(entry, listed).await,
                    After::Listing { app, channel } => self.sync_listing(app, channel).await,
                }
            });
            for (a, r) in chunk.iter().zip(futures_util::future::join_all(runs).await) {
                if let Err(e) = r {
                    after.push(a.clone());
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes this node's list entry for a channel or a user when it has no share there.
    async fn unlist(
        &self,
        entry: &Entry,
        listed: &parking_lot::Mutex<Listed>,
    ) -> redis::RedisResult<()> {
        let p = &self.inner.prefix;
        let sid = listed.lock().sid.clone();
        let held: (bool, bool) = match entry {
            Entry::Channel(app, channel) => {
                let k = ChannelKeys::new(p, app, channel);
                self.query(Query::Pipe(
                    redis::pipe()
                        .cmd("HEXISTS")
                        .arg(&k.shares)
                        .arg(&*sid)
                        .cmd("EXISTS")
                        .arg(k.members(&sid)),
                ))
                .await?
            }
            Entry::User(app, user) => {
                let k = UserKeys::new(p, app, user);
                let h: bool = self
                    .query(Query::Cmd(redis::cmd("HEXISTS").arg(&k.shares).arg(&*sid)))
                    .await?;
                (h, false)
            }
        };
        if held.0 || held.1 {
            return Ok(());
        }
        listed.lock().entries.remove(entry);
        let list = entry.list(&NodeKeys::new(p, &sid));
        self.query(Query::Cmd(redis::cmd("SREM").arg(list).arg(entry.text())))
            .await
    }

    /// Brings the app's list of occupied channels in line with the channel's total, safely
    /// against other nodes doing the same: an occupied channel is added; an empty one is
    /// removed and then read again, and added back if another node occupied it meanwhile
    /// (whichever node removes last reads last, so an occupied channel always ends listed).
    pub(super) async fn sync_listing(&self, app: &str, channel: &str) -> redis::RedisResult<()> {
        let p = &self.inner.prefix;
        let total = ChannelKeys::new(p, app, channel).total;
        let listing = keys::occupied(p, app);
        let n: Option<i64> = self
            .query(Query::Cmd(redis::cmd("GET").arg(&total)))
            .await?;
        if n.unwrap_or(0) <= 0 {
            let _: () = self
                .query(Query::Cmd(redis::cmd("SREM").arg(&listing).arg(channel)))
                .await?;
            let again: Option<i64> = self
                .query(Query::Cmd(redis::cmd("GET").arg(&total)))
                .await?;
            if again.unwrap_or(0) <= 0 {
                return Ok(());
            }
        }
        self.query(Query::Cmd(redis::cmd("SADD").arg(&listing).arg(channel)))
            .await
    }

    /// Hands the transitions a note's (before, after) totals mean to the engine.
    pub(super) fn report(&self, note: &ClusterNote, totals: (i64, i64), mode: Mode) {
        let engine = self.engine();
        match note {
            ClusterNote::ChannelCount { app, channel, .. } => {
                for t in keys::channel_transitions(app, channel, totals.0, totals.1) {
                    engine.apply(t);
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
                let except = (mode != Mode::Rewrite).then_some(*socket_id);
                if let Some(t) =
                    keys::member_transition(app, channel, user_id, info, except, totals)
                {
                    engine.apply(t);
                }
            }
            ClusterNote::UserCount { app, user_id, .. } => {
                if let Some(t) = keys::user_transition(app, user_id, totals) {
                    engine.apply(t);
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

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::SocketId;

    fn member(user: &str, count: u32) -> ClusterNote {
        ClusterNote::MemberCount {
            app: Arc::from("a"),
            channel: ChannelName::parse("presence-x", 200).unwrap(),
            user_id: Arc::from(user),
            count,
            info: Arc::from("{}"),
            socket_id: SocketId::new(1, 2),
        }
    }

    fn counts(p: &Pending) -> Vec<(NoteKey, Vec<(u64, Mode)>)> {
        p.order
            .iter()
            .map(|k| {
                let q = &p.by_key[k];
                (
                    k.clone(),
                    q.iter().map(|(n, m)| (count_of(n), *m)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_keys_notes_coalesce_unless_that_hides_a_transition() {
        let mut p = Pending::default();
        p.push((member("u", 1), Mode::Loud));
        p.push((member("u", 2), Mode::Quiet));
        p.push((member("v", 1), Mode::Loud));
        // 2 then 0 then 1: the leave and the join again must both be written
        p.push((member("u", 0), Mode::Loud));
        p.push((member("u", 1), Mode::Loud));
        let c = counts(&p);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0].1,
            vec![(2, Mode::Loud), (0, Mode::Loud), (1, Mode::Loud)],
            "a quiet value keeps the louder mode of the one it replaces"
        );
        assert_eq!(c[1].1, vec![(1, Mode::Loud)]);
    }

    #[test]
    fn a_round_takes_one_note_per_key_in_order() {
        let mut p = Pending::default();
        p.push((member("u", 1), Mode::Loud));
        p.push((member("v", 1), Mode::Loud));
        p.push((member("u", 0), Mode::Loud));
        let r = p.round();
        assert_eq!(r.len(), 2);
        assert_eq!(count_of(&r[0].1), 1);
        for (k, ..) in &r {
            p.done(k);
        }
        p.tidy();
        let r = p.round();
        assert_eq!(r.len(), 1);
        assert_eq!(count_of(&r[0].1), 0);
        p.done(&r[0].0);
        p.tidy();
        assert!(p.is_empty());
    }

    #[test]
    fn a_key_that_flaps_while_redis_is_away_stays_bounded() {
        let mut p = Pending::default();
        for i in 0..10_000u32 {
            p.push((member("u", i % 2), Mode::Loud));
        }
        assert_eq!(p.by_key[&note_key(&member("u", 0))].len(), PENDING_PER_KEY);
    }
}
