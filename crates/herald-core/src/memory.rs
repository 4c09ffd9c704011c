//! An in-memory [`Broker`] and [`Store`] shared by several engines in one process: the cluster
//! seam's reference implementation, for Rust tests of the engine as a cluster. Nothing moves
//! until [`MemoryHub::settle`] runs: messages are delivered in the one order the hub accepted
//! them, notes decide transitions one at a time, and a node can be stalled (its messages and
//! notes wait) or killed (its share is removed and the transitions that causes applied once).

use crate::cluster::{
    Broker, CachedEvent, Cluster, ClusterNote, Envelope, PublishError, Reading, Ready, Sent, Store,
    Topic, Transition,
};
use crate::Engine;
use herald_protocol::ChannelName;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::oneshot;

/// What one node holds of a counted key, and the key's cluster total.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Channel(Arc<str>, Arc<str>),
    Member(Arc<str>, Arc<str>, Arc<str>),
    User(Arc<str>, Arc<str>),
}

#[derive(Default)]
struct Hub {
    engines: BTreeMap<u32, Engine>,
    stalled: Vec<u32>,
    /// Holds per topic per node.
    interests: HashMap<Topic, BTreeMap<u32, usize>>,
    /// Messages in the order the hub accepted them.
    messages: VecDeque<(Topic, Envelope)>,
    notes: VecDeque<(u32, ClusterNote)>,
    shares: BTreeMap<Key, BTreeMap<u32, u64>>,
    /// Raw user_info of each member, for rosters.
    infos: HashMap<Key, Arc<str>>,
    cache: HashMap<(Arc<str>, Arc<str>), CachedEvent>,
    /// Messages each node received, for interest tests.
    received: BTreeMap<u32, usize>,
    /// Messages for a stalled node, delivered when it resumes (as a broker's buffer would).
    backlog: BTreeMap<u32, VecDeque<(Topic, Envelope)>>,
}

impl Hub {
    /// The oldest message held for a node that is running again.
    fn next_backlog(&mut self) -> Option<(u32, Topic, Envelope)> {
        let stalled = &self.stalled;
        let (node, q) = self
            .backlog
            .iter_mut()
            .find(|(n, q)| !stalled.contains(n) && !q.is_empty())?;
        let (t, e) = q.pop_front()?;
        Some((*node, t, e))
    }

    fn total(&self, k: &Key) -> u64 {
        self.shares.get(k).map_or(0, |s| s.values().sum())
    }

    /// Sets `node`'s share of `k`; returns the total before and after.
    fn set(&mut self, node: u32, k: Key, n: u64) -> (u64, u64) {
        let before = self.total(&k);
        let s = self.shares.entry(k.clone()).or_default();
        if n == 0 {
            s.remove(&node);
        } else {
            s.insert(node, n);
        }
        if s.is_empty() {
            self.shares.remove(&k);
        }
        (before, self.total(&k))
    }
}

/// Several engines joined in one process.
#[derive(Clone, Default)]
pub struct MemoryHub {
    hub: Arc<Mutex<Hub>>,
}

impl std::fmt::Debug for MemoryHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHub").finish_non_exhaustive()
    }
}

/// One node's handle on the hub: its broker and its store.
#[derive(Clone, Debug)]
pub struct MemoryNode {
    hub: MemoryHub,
    id: u32,
}

impl MemoryHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new node; pass [`MemoryNode::cluster`] to its engine, then [`MemoryHub::attach`] it.
    pub fn node(&self, id: u32) -> MemoryNode {
        MemoryNode {
            hub: self.clone(),
            id,
        }
    }

    pub fn attach(&self, node: &MemoryNode, engine: Engine) {
        self.hub.lock().engines.insert(node.id, engine);
    }

    /// A stalled node takes nothing in and decides nothing until resumed.
    pub fn stall(&self, id: u32, stalled: bool) {
        let mut h = self.hub.lock();
        h.stalled.retain(|s| *s != id);
        if stalled {
            h.stalled.push(id);
        }
    }

    /// Messages node `id` received so far.
    pub fn received(&self, id: u32) -> usize {
        self.hub.lock().received.get(&id).copied().unwrap_or(0)
    }

    /// The node is gone: its holds and shares are removed, and the transitions that causes are
    /// applied by the lowest-numbered live node (once).
    pub fn kill(&self, id: u32) {
        let mut out = Vec::new();
        let by = {
            let mut h = self.hub.lock();
            h.engines.remove(&id);
            h.stalled.retain(|s| *s != id);
            for holds in h.interests.values_mut() {
                holds.remove(&id);
            }
            h.notes.retain(|(n, _)| *n != id);
            h.backlog.remove(&id);
            let keys: Vec<Key> = h
                .shares
                .iter()
                .filter(|(_, s)| s.contains_key(&id))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                let (before, after) = h.set(id, k.clone(), 0);
                out.extend(transitions(&k, before, after, None, &h.infos));
            }
            h.engines.values().next().cloned()
        };
        if let Some(e) = by {
            for t in out {
                e.apply(t);
            }
        }
        self.settle();
    }

    /// Runs until nothing is left to do for the live, running nodes: notes decided and their
    /// transitions applied, messages delivered in order.
    pub fn settle(&self) {
        loop {
            let step = {
                let mut h = self.hub.lock();
                let note = h
                    .notes
                    .iter()
                    .position(|(n, _)| !h.stalled.contains(n))
                    .and_then(|i| h.notes.remove(i));
                if let Some((node, note)) = note {
                    let (k, n, info) = key_of(&note);
                    if let Some(info) = info {
                        if n > 0 {
                            h.infos.insert(k.clone(), info);
                        }
                    }
                    let (before, after) = h.set(node, k.clone(), n);
                    let ts = transitions(&k, before, after, Some(&note), &h.infos);
                    if after == 0 {
                        h.infos.remove(&k);
                    }
                    Step::Apply(h.engines.get(&node).cloned(), ts)
                } else if let Some((node, topic, env)) = h.next_backlog() {
                    *h.received.entry(node).or_default() += 1;
                    Step::Deliver(
                        topic,
                        env,
                        h.engines.get(&node).cloned().into_iter().collect(),
                    )
                } else if let Some((topic, env)) = h.messages.pop_front() {
                    let to: Vec<u32> = h
                        .interests
                        .get(&topic)
                        .into_iter()
                        .flat_map(|holds| holds.iter())
                        .filter(|(n, c)| **c > 0 && h.engines.contains_key(n))
                        .map(|(n, _)| *n)
                        .collect();
                    let mut now = Vec::new();
                    for n in to {
                        if h.stalled.contains(&n) {
                            let b = h.backlog.entry(n).or_default();
                            b.push_back((topic.clone(), env.clone()));
                        } else {
                            *h.received.entry(n).or_default() += 1;
                            now.extend(h.engines.get(&n).cloned());
                        }
                    }
                    Step::Deliver(topic, env, now)
                } else {
                    return;
                }
            };
            match step {
                Step::Apply(Some(e), ts) => ts.into_iter().for_each(|t| e.apply(t)),
                Step::Apply(None, _) => {}
                Step::Deliver(topic, env, to) => {
                    for e in to {
                        e.receive(&topic, env.clone());
                    }
                }
            }
        }
    }
}

enum Step {
    Apply(Option<Engine>, Vec<Transition>),
    Deliver(Topic, Envelope, Vec<Engine>),
}

fn key_of(note: &ClusterNote) -> (Key, u64, Option<Arc<str>>) {
    match note {
        ClusterNote::ChannelCount {
            app,
            channel,
            count,
        } => (
            Key::Channel(app.clone(), channel.arc().clone()),
            *count as u64,
            None,
        ),
        ClusterNote::MemberCount {
            app,
            channel,
            user_id,
            count,
            info,
            ..
        } => (
            Key::Member(app.clone(), channel.arc().clone(), user_id.clone()),
            u64::from(*count),
            Some(info.clone()),
        ),
        ClusterNote::UserCount {
            app,
            user_id,
            count,
        } => (Key::User(app.clone(), user_id.clone()), *count as u64, None),
    }
}

/// What a total's change from `before` to `after` means (the same rule a real store follows).
fn transitions(
    k: &Key,
    before: u64,
    after: u64,
    note: Option<&ClusterNote>,
    infos: &HashMap<Key, Arc<str>>,
) -> Vec<Transition> {
    let name = |c: &Arc<str>| ChannelName::parse(c, usize::MAX).ok();
    match k {
        Key::Channel(app, c) => name(c).map_or_else(Vec::new, |channel| {
            Transition::of_channel(app, &channel, before, after)
        }),
        Key::Member(app, c, user) => {
            let except = match note {
                Some(ClusterNote::MemberCount { socket_id, .. }) => Some(*socket_id),
                _ => None,
            };
            let info = infos.get(k).cloned().unwrap_or_else(|| Arc::from("null"));
            name(c)
                .and_then(|channel| {
                    Transition::of_member(app, &channel, user, &info, except, (before, after))
                })
                .into_iter()
                .collect()
        }
        Key::User(app, user) => Transition::of_user(app, user, (before, after))
            .into_iter()
            .collect(),
    }
}

impl MemoryNode {
    /// What this node's engine is joined to.
    pub fn cluster(&self) -> Cluster {
        let me = Arc::new(self.clone());
        Cluster::joined(me.clone(), me)
    }
}

impl Broker for MemoryNode {
    fn node_id(&self) -> u32 {
        self.id
    }
    fn clustered(&self) -> bool {
        true
    }
    fn subscribe(&self, topic: Topic) -> Option<Ready> {
        *self
            .hub
            .hub
            .lock()
            .interests
            .entry(topic)
            .or_default()
            .entry(self.id)
            .or_default() += 1;
        None
    }
    fn unsubscribe(&self, topic: Topic) {
        let mut h = self.hub.hub.lock();
        if let Some(holds) = h.interests.get_mut(&topic) {
            if let Some(n) = holds.get_mut(&self.id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    holds.remove(&self.id);
                }
            }
        }
    }
    fn publish(&self, topic: Topic, envelope: Envelope) -> Result<Sent, PublishError> {
        let mut h = self.hub.hub.lock();
        if let (
            Topic::Channel { app, channel },
            Envelope::Event {
                frame,
                cache: Some((data, ttl)),
                ..
            },
        ) = (&topic, &envelope)
        {
            h.cache.insert(
                (app.clone(), channel.arc().clone()),
                CachedEvent {
                    frame: frame.clone(),
                    data: data.clone(),
                    ttl: *ttl,
                },
            );
        }
        h.messages.push_back((topic, envelope));
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        Ok(Sent::Queued(rx))
    }
}

impl Store for MemoryNode {
    fn note(&self, note: ClusterNote) {
        self.hub.hub.lock().notes.push_back((self.id, note));
    }
    fn is_up(&self) -> bool {
        true
    }
    fn channel_counts<'a>(&'a self, app: &'a str) -> Reading<'a, Vec<(String, usize)>> {
        let h = self.hub.hub.lock();
        let v: Vec<(String, usize)> = h
            .shares
            .keys()
            .filter_map(|k| match k {
                Key::Channel(a, c) if &**a == app => Some((c.to_string(), h.total(k) as usize)),
                _ => None,
            })
            .collect();
        Box::pin(async move { Ok(v) })
    }
    fn channel_count<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, (usize, usize)> {
        let h = self.hub.hub.lock();
        let subs = h.total(&Key::Channel(Arc::from(app), Arc::from(channel))) as usize;
        let users = h
            .shares
            .keys()
            .filter(|k| matches!(k, Key::Member(a, c, _) if &**a == app && &**c == channel))
            .count();
        Box::pin(async move { Ok((subs, users)) })
    }
    fn members<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, Vec<(String, String)>> {
        let h = self.hub.hub.lock();
        let v: Vec<(String, String)> = h
            .shares
            .keys()
            .filter_map(|k| match k {
                Key::Member(a, c, u) if &**a == app && &**c == channel => Some((
                    u.to_string(),
                    h.infos.get(k).map_or("null".into(), |i| i.to_string()),
                )),
                _ => None,
            })
            .collect();
        Box::pin(async move { Ok(v) })
    }
    fn online<'a>(&'a self, app: &'a str, users: &'a [String]) -> Reading<'a, Vec<String>> {
        let h = self.hub.hub.lock();
        let v: Vec<String> = users
            .iter()
            .filter(|u| h.total(&Key::User(Arc::from(app), Arc::from(u.as_str()))) > 0)
            .cloned()
            .collect();
        Box::pin(async move { Ok(v) })
    }
    fn cached<'a>(&'a self, app: &'a str, channel: &'a str) -> Reading<'a, Option<CachedEvent>> {
        let v = self
            .hub
            .hub
            .lock()
            .cache
            .get(&(Arc::from(app), Arc::from(channel)))
            .cloned();
        Box::pin(async move { Ok(v) })
    }
}
