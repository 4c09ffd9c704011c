//! The engine's state rules without any network: subscriptions, presence per user, lifecycle
//! events once per transition, exclusion, cache replay and the connection quota.

mod common;

use common::{app, ch, drain, engine, member, TRANSITIONS};
use herald_core::{Sink, SubscribeError, DIRECT_WRITE_MAX_FANOUT};
use herald_protocol::codes;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn subscribe_once_and_deliver_with_exclusion() {
    let (e, rec) = engine(&app());
    let a = e.connect(app()).unwrap();
    let b = e.connect(app()).unwrap();
    let news = ch("news");
    e.subscribe(&a, &news, None).unwrap();
    e.subscribe(&b, &news, None).unwrap();
    assert_eq!(
        e.subscribe(&a, &news, None),
        Err(SubscribeError::Existing {
            channel: "news".into()
        })
    );
    assert_eq!(
        drain(&a),
        [r#"{"event":"pusher_internal:subscription_succeeded","channel":"news","data":"{}"}"#]
    );
    drain(&b);
    e.publish(
        "app-id",
        &news,
        "ev",
        "{}",
        Some(a.socket_id),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(drain(&a).is_empty(), "the excluded socket gets nothing");
    assert_eq!(
        drain(&b),
        [r#"{"event":"ev","channel":"news","data":"{}"}"#]
    );
    e.unsubscribe(&a, &news);
    e.unsubscribe(&b, &news);
    assert_eq!(rec.take(TRANSITIONS), ["occupied news", "vacated news"]);
    assert!(!e.stats("app-id", &news).occupied);
}

#[test]
fn presence_members_are_users_not_connections() {
    let (e, rec) = engine(&app());
    let room = ch("presence-room");
    let a = e.connect(app()).unwrap();
    let b1 = e.connect(app()).unwrap();
    let b2 = e.connect(app()).unwrap();
    e.subscribe(&a, &room, Some(member("a"))).unwrap();
    e.subscribe(&b1, &room, Some(member("b"))).unwrap();
    e.subscribe(&b2, &room, Some(member("b"))).unwrap();
    let frames = drain(&a);
    assert_eq!(
        frames.iter().filter(|f| f.contains("member_added")).count(),
        1,
        "{frames:?}"
    );
    assert_eq!(e.stats("app-id", &room).user_count, 2);
    assert_eq!(e.stats("app-id", &room).subscription_count, 3);
    e.unsubscribe(&b1, &room);
    assert!(
        drain(&a).iter().all(|f| !f.contains("member_removed")),
        "b is still there"
    );
    e.disconnect(&b2, [&room], None);
    assert_eq!(
        drain(&a)
            .iter()
            .filter(|f| f.contains("member_removed"))
            .count(),
        1
    );
    assert_eq!(
        rec.take(TRANSITIONS),
        [
            "occupied presence-room",
            "added presence-room a",
            "added presence-room b",
            "removed presence-room b"
        ]
    );
}

#[test]
fn presence_limit_refuses_new_users_only() {
    let mut limited = (*app()).clone();
    limited.limits.max_presence_members = 1;
    let limited = Arc::new(limited);
    let (e, _) = engine(&limited);
    let room = ch("presence-full");
    let a = e.connect(limited.clone()).unwrap();
    let a2 = e.connect(limited.clone()).unwrap();
    let b = e.connect(limited.clone()).unwrap();
    e.subscribe(&a, &room, Some(member("a"))).unwrap();
    e.subscribe(&a2, &room, Some(member("a"))).unwrap();
    assert!(matches!(
        e.subscribe(&b, &room, Some(member("b"))),
        Err(SubscribeError::PresenceFull { max: 1, .. })
    ));
}

#[test]
fn cache_channels_replay_the_last_event_or_report_a_miss() {
    let (e, _) = engine(&app());
    let a = e.connect(app()).unwrap();
    let empty = ch("cache-empty");
    e.subscribe(&a, &empty, None).unwrap();
    assert_eq!(
        drain(&a)[1],
        r#"{"event":"pusher:cache_miss","channel":"cache-empty"}"#
    );
    let price = ch("cache-price");
    e.publish("app-id", &price, "tick", "1", None, Duration::from_secs(60))
        .unwrap();
    e.publish("app-id", &price, "tick", "2", None, Duration::from_secs(60))
        .unwrap();
    e.subscribe(&a, &price, None).unwrap();
    assert_eq!(
        drain(&a)[1],
        r#"{"event":"tick","channel":"cache-price","data":"2"}"#
    );
    assert_eq!(
        e.stats("app-id", &price).cache.map(|(d, _)| d.to_string()),
        Some("2".into())
    );
    let gone = ch("cache-gone");
    e.publish("app-id", &gone, "tick", "1", None, Duration::ZERO)
        .unwrap();
    e.subscribe(&a, &gone, None).unwrap();
    assert!(
        drain(&a)[1].contains("cache_miss"),
        "an expired event is not replayed"
    );
}

#[test]
fn an_absurd_cache_ttl_keeps_the_event_instead_of_overflowing_the_clock() {
    // A TTL can come from another node over the bus, unchecked by this node's settings.
    let (e, _) = engine(&app());
    let a = e.connect(app()).unwrap();
    let far = ch("cache-far");
    e.publish("app-id", &far, "tick", "1", None, Duration::MAX)
        .unwrap();
    let remote = ch("cache-remote");
    let frame = herald_protocol::encode::channel_event("tick", "cache-remote", "2");
    e.deliver_local(
        "app-id",
        &remote,
        &frame.into(),
        None,
        Some(("2", Duration::MAX)),
    );
    e.subscribe(&a, &far, None).unwrap();
    e.subscribe(&a, &remote, None).unwrap();
    let got = drain(&a);
    assert!(
        got.iter()
            .any(|f| f.contains(r#""channel":"cache-far","data":"1""#)),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|f| f.contains(r#""channel":"cache-remote","data":"2""#)),
        "{got:?}"
    );
}

#[test]
fn connection_quota() {
    let mut limited = (*app()).clone();
    limited.limits.max_connections = 1;
    let limited = Arc::new(limited);
    let (e, _) = engine(&limited);
    let a = e.connect(limited.clone()).unwrap();
    assert_eq!(e.connect(limited.clone()).err(), Some(codes::OVER_QUOTA));
    e.disconnect(&a, [], None);
    assert!(e.connect(limited).is_ok(), "a freed slot can be used again");
}

/// Counts the frames written to it directly.
#[derive(Default)]
struct CountingSink(Mutex<usize>);

impl Sink for CountingSink {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        *self.0.lock() += 1;
        Ok(buf.len())
    }
}

#[test]
fn small_channels_write_directly_large_ones_queue() {
    for (subscribers, direct) in [(3, true), (DIRECT_WRITE_MAX_FANOUT + 1, false)] {
        let (e, _) = engine(&app());
        let room = ch("room");
        let mut conns = Vec::new();
        for _ in 0..subscribers {
            let c = e.connect(app()).unwrap();
            e.subscribe(&c, &room, None).unwrap();
            drain(&c);
            // As the connection task does once it has written what it took.
            c.written();
            let sink = Arc::new(CountingSink::default());
            c.attach(sink.clone());
            conns.push((c, sink));
        }
        e.publish("app-id", &room, "ev", "{}", None, Duration::from_secs(60))
            .unwrap();
        for (c, sink) in &conns {
            let queued = drain(c);
            if direct {
                assert_eq!(*sink.0.lock(), 1, "written directly");
                assert!(queued.is_empty());
            } else {
                assert_eq!(*sink.0.lock(), 0, "no direct write on a large channel");
                assert_eq!(queued, [r#"{"event":"ev","channel":"room","data":"{}"}"#]);
            }
        }
    }
}
