//! The engine as a cluster: three engines joined by the in-memory broker and store
//! (`herald_core::memory`), checked for the guarantees the Redis engine must give too: one
//! order per channel, interest routing, transitions and member events once, a killed node
//! cleaned up, a stalled node catching up.

mod common;

use common::{ch, drain, member, Recorder, TRANSITIONS};
use herald_core::memory::{MemoryHub, MemoryNode};
use herald_core::{App, Conn, Engine, EngineConfig, StaticAppStore, Store};
use std::sync::Arc;
use std::time::Duration;

struct Node {
    engine: Engine,
    rec: Arc<Recorder>,
    mem: MemoryNode,
}

fn app() -> Arc<App> {
    let mut a = App::default_app();
    a.enable_subscription_count = false;
    Arc::new(a)
}

fn cluster(n: u32) -> (MemoryHub, Vec<Node>) {
    let hub = MemoryHub::new();
    let a = app();
    let nodes = (1..=n)
        .map(|id| {
            let mem = hub.node(id);
            let rec = Arc::new(Recorder::default());
            let engine = Engine::new(
                Arc::new(StaticAppStore::new(vec![(*a).clone()]).unwrap()),
                mem.cluster(),
                vec![rec.clone()],
                EngineConfig::default(),
            );
            hub.attach(&mem, engine.clone());
            Node { engine, rec, mem }
        })
        .collect();
    (hub, nodes)
}

fn conn(n: &Node) -> Arc<Conn> {
    n.engine.connect(app()).unwrap()
}

/// The lifecycle transitions every node emitted, together, sorted (each must appear once).
fn transitions(nodes: &[Node]) -> Vec<String> {
    let mut all: Vec<String> = nodes.iter().flat_map(|n| n.rec.take(TRANSITIONS)).collect();
    all.sort();
    all
}

fn events(conn: &Conn) -> Vec<String> {
    drain(conn)
        .into_iter()
        .filter(|f| !f.contains("pusher_internal:subscription_succeeded"))
        .collect()
}

fn publish(n: &Node, channel: &str, event: &str) {
    let r = n
        .engine
        .publish("app-id", &ch(channel), event, "{}", None, Duration::ZERO)
        .unwrap();
    assert!(r.is_some(), "a clustered publish goes through the broker");
}

#[test]
fn occupied_and_vacated_once_for_the_cluster() {
    let (hub, nodes) = cluster(3);
    let conns: Vec<_> = nodes.iter().map(conn).collect();
    for (n, c) in nodes.iter().zip(&conns) {
        n.engine.subscribe(c, &ch("news"), None).unwrap();
    }
    hub.settle();
    assert_eq!(transitions(&nodes), ["occupied news"]);
    for (n, c) in nodes.iter().zip(&conns).take(2) {
        n.engine.unsubscribe(c, &ch("news"));
    }
    hub.settle();
    assert_eq!(transitions(&nodes), Vec::<String>::new());
    nodes[2].engine.unsubscribe(&conns[2], &ch("news"));
    hub.settle();
    assert_eq!(transitions(&nodes), ["vacated news"]);
}

#[test]
fn every_subscriber_sees_one_order_whoever_publishes() {
    let (hub, nodes) = cluster(3);
    let conns: Vec<_> = nodes.iter().map(conn).collect();
    for (n, c) in nodes.iter().zip(&conns) {
        n.engine.subscribe(c, &ch("c"), None).unwrap();
        drain(c);
    }
    hub.settle();
    // Publishers on two nodes, interleaved, with nothing delivered in between: the publishing
    // node's own subscribers wait for the broker like everyone else.
    for i in 0..20 {
        publish(&nodes[i % 2], "c", &format!("e{i}"));
        assert!(
            events(&conns[i % 2]).is_empty(),
            "delivered before the broker"
        );
    }
    hub.settle();
    let first = events(&conns[0]);
    assert_eq!(first.len(), 20);
    for c in &conns[1..] {
        assert_eq!(events(c), first);
    }
}

#[test]
fn a_node_receives_only_what_it_has_subscribers_for() {
    let (hub, nodes) = cluster(3);
    let c1 = conn(&nodes[0]);
    nodes[0]
        .engine
        .subscribe(&c1, &ch("only-n1"), None)
        .unwrap();
    hub.settle();
    for _ in 0..10 {
        publish(&nodes[1], "only-n1", "e");
    }
    hub.settle();
    assert_eq!(hub.received(1), 10);
    assert_eq!(hub.received(2), 0, "the publishing node has no subscriber");
    assert_eq!(hub.received(3), 0);
    // Its last subscriber gone, node 1 stops receiving the channel.
    nodes[0].engine.unsubscribe(&c1, &ch("only-n1"));
    publish(&nodes[1], "only-n1", "after");
    hub.settle();
    assert_eq!(hub.received(1), 10);
}

#[test]
fn a_user_on_two_nodes_is_one_member_announced_once() {
    let (hub, nodes) = cluster(3);
    let watcher = conn(&nodes[2]);
    let p = ch("presence-room");
    nodes[2]
        .engine
        .subscribe(&watcher, &p, Some(member("w")))
        .unwrap();
    hub.settle();
    drain(&watcher);
    transitions(&nodes);
    let a1 = conn(&nodes[0]);
    let a2 = conn(&nodes[1]);
    nodes[0]
        .engine
        .subscribe(&a1, &p, Some(member("alice")))
        .unwrap();
    hub.settle();
    nodes[1]
        .engine
        .subscribe(&a2, &p, Some(member("alice")))
        .unwrap();
    hub.settle();
    let added: Vec<String> = drain(&watcher)
        .into_iter()
        .filter(|f| f.contains("member_added"))
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert!(added[0].contains("alice"));
    assert_eq!(transitions(&nodes), ["added presence-room alice"]);
    // Leaving one node removes nobody; leaving the other removes alice once.
    nodes[0].engine.unsubscribe(&a1, &p);
    hub.settle();
    assert!(drain(&watcher)
        .iter()
        .all(|f| !f.contains("member_removed")));
    nodes[1].engine.unsubscribe(&a2, &p);
    hub.settle();
    let removed: Vec<String> = drain(&watcher)
        .into_iter()
        .filter(|f| f.contains("member_removed"))
        .collect();
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(transitions(&nodes), ["removed presence-room alice"]);
}

#[test]
fn a_killed_node_is_cleaned_up_once() {
    let (hub, nodes) = cluster(3);
    let p = ch("presence-k");
    let w = conn(&nodes[0]);
    nodes[0]
        .engine
        .subscribe(&w, &p, Some(member("w")))
        .unwrap();
    let b = conn(&nodes[1]);
    nodes[1]
        .engine
        .subscribe(&b, &p, Some(member("bob")))
        .unwrap();
    let only = conn(&nodes[1]);
    nodes[1]
        .engine
        .subscribe(&only, &ch("on-n2"), None)
        .unwrap();
    hub.settle();
    drain(&w);
    transitions(&nodes);
    hub.kill(2);
    let frames = drain(&w);
    assert_eq!(
        frames
            .iter()
            .filter(|f| f.contains("member_removed"))
            .count(),
        1,
        "{frames:?}"
    );
    let live = &nodes[0..1];
    let mut got: Vec<String> = live.iter().flat_map(|n| n.rec.take(TRANSITIONS)).collect();
    got.extend(nodes[2].rec.take(TRANSITIONS));
    got.sort();
    assert_eq!(got, ["removed presence-k bob", "vacated on-n2"]);
    let members = futures_now(nodes[0].mem.members("app-id", "presence-k"));
    assert_eq!(members.len(), 1);
}

#[test]
fn a_stalled_node_catches_up_when_resumed() {
    let (hub, nodes) = cluster(2);
    let c2 = conn(&nodes[1]);
    nodes[1].engine.subscribe(&c2, &ch("s"), None).unwrap();
    hub.settle();
    hub.stall(2, true);
    publish(&nodes[0], "s", "while-stalled");
    hub.settle();
    assert!(events(&c2).is_empty());
    hub.stall(2, false);
    hub.settle();
    let got = events(&c2);
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("while-stalled"));
}

#[test]
fn a_cache_channel_event_reaches_a_late_subscriber_on_another_node() {
    let (hub, nodes) = cluster(2);
    nodes[0]
        .engine
        .publish(
            "app-id",
            &ch("cache-x"),
            "cached",
            "{\"v\":1}",
            None,
            Duration::from_secs(60),
        )
        .unwrap();
    hub.settle();
    let late = conn(&nodes[1]);
    let stored = futures_now(nodes[1].mem.cached("app-id", "cache-x"));
    assert!(stored.is_some());
    nodes[1]
        .engine
        .subscribe_with(&late, &ch("cache-x"), None, &[], stored)
        .unwrap();
    let frames = drain(&late);
    assert!(
        frames.iter().any(|f| f.contains("\"cached\"")),
        "{frames:?}"
    );
    assert!(
        !frames.iter().any(|f| f.contains("cache_miss")),
        "{frames:?}"
    );
}

/// Runs a store read that is ready at once.
fn futures_now<T>(f: herald_core::Reading<'_, T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(f).unwrap()
}
