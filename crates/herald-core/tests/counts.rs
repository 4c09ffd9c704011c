//! `pusher_internal:subscription_count`: sent on every change of a small channel, at most once
//! per window on a big one, where `Engine::tick` sends the latest count when the window ends.

mod common;

use common::{app, ch, drain, engine, Recorder};
use herald_core::{App, Conn, Engine};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The engine's throttle: above this many subscribers, one count per window.
const THROTTLE_ABOVE: usize = 100;
const WINDOW: Duration = Duration::from_secs(5);

fn counting_app() -> Arc<App> {
    let mut a = (*app()).clone();
    a.enable_subscription_count = true;
    Arc::new(a)
}

fn count_frame(channel: &str, n: usize) -> String {
    format!(
        r#"{{"event":"pusher_internal:subscription_count","channel":"{channel}","data":"{{\"subscription_count\":{n}}}"}}"#
    )
}

fn counts_seen(rec: &Recorder) -> Vec<String> {
    rec.take(&["count"])
}

/// Subscribes `n` new connections to `room` and forgets what they were sent.
fn fill(e: &Engine, a: &Arc<App>, n: usize) -> Vec<Arc<Conn>> {
    let room = ch("room");
    let conns: Vec<_> = (0..n)
        .map(|_| {
            let c = e.connect(a.clone()).unwrap();
            e.subscribe(&c, &room, None).unwrap();
            c
        })
        .collect();
    conns.iter().for_each(|c| {
        drain(c);
    });
    conns
}

#[test]
fn small_channels_get_a_count_on_every_change() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let x = e.connect(a.clone()).unwrap();
    let y = e.connect(a.clone()).unwrap();
    e.subscribe(&x, &room, None).unwrap();
    e.subscribe(&y, &room, None).unwrap();
    assert_eq!(
        drain(&x),
        [
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"room","data":"{}"}"#
                .to_owned(),
            count_frame("room", 1),
            count_frame("room", 2),
        ]
    );
    assert_eq!(drain(&y)[1..], [count_frame("room", 2)]);
    e.unsubscribe(&y, &room);
    assert_eq!(drain(&x), [count_frame("room", 1)]);
    assert!(
        drain(&y).is_empty(),
        "an unsubscribed connection hears nothing"
    );
    e.unsubscribe(&x, &room);
    assert!(drain(&x).is_empty(), "no count for an emptied channel");
    assert_eq!(
        counts_seen(&rec),
        ["count room 1", "count room 2", "count room 1"]
    );
    e.tick(Instant::now() + WINDOW);
    assert!(counts_seen(&rec).is_empty(), "nothing was held back");
}

#[test]
fn no_counts_when_the_app_has_them_off() {
    let a = app();
    let (e, rec) = engine(&a);
    let x = e.connect(a.clone()).unwrap();
    e.subscribe(&x, &ch("room"), None).unwrap();
    assert_eq!(drain(&x).len(), 1, "subscription_succeeded only");
    assert!(counts_seen(&rec).is_empty());
}

#[test]
fn big_channels_get_one_count_per_window_the_latest() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let mut conns = fill(&e, &a, THROTTLE_ABOVE - 1);
    // The change to the throttle's limit still goes out at once and starts the window.
    let before = Instant::now();
    conns.extend(fill(&e, &a, 1));
    let after = Instant::now();
    for c in &conns[..THROTTLE_ABOVE - 1] {
        assert_eq!(drain(c), [count_frame("room", THROTTLE_ABOVE)]);
    }
    assert_eq!(counts_seen(&rec).len(), THROTTLE_ABOVE);

    // Above the limit, within the window: held back.
    conns.extend(fill(&e, &a, 3));
    e.unsubscribe(&conns[0], &room);
    for c in &conns {
        assert!(drain(c).is_empty(), "nothing sent within the window");
    }
    assert!(counts_seen(&rec).is_empty());
    e.tick(before + WINDOW - Duration::from_millis(1));
    for c in &conns {
        assert!(drain(c).is_empty(), "nothing before the window ends");
    }
    assert!(counts_seen(&rec).is_empty());

    // The window ended: the latest count, once, to every subscriber.
    let end = after + WINDOW;
    e.tick(end);
    assert!(drain(&conns[0]).is_empty(), "no longer subscribed");
    for c in &conns[1..] {
        assert_eq!(drain(c), [count_frame("room", THROTTLE_ABOVE + 2)]);
    }
    assert_eq!(
        counts_seen(&rec),
        [format!("count room {}", THROTTLE_ABOVE + 2)]
    );
    e.tick(end);
    assert!(counts_seen(&rec).is_empty(), "sent once");

    // That count started the next window.
    conns.extend(fill(&e, &a, 1));
    e.tick(end + WINDOW - Duration::from_millis(1));
    assert!(counts_seen(&rec).is_empty());
    e.tick(end + WINDOW);
    for c in &conns[1..] {
        assert_eq!(drain(c), [count_frame("room", THROTTLE_ABOVE + 3)]);
    }
    assert_eq!(
        counts_seen(&rec),
        [format!("count room {}", THROTTLE_ABOVE + 3)]
    );
}

#[test]
fn a_channel_emptied_before_the_window_ends_gets_no_late_count() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let conns = fill(&e, &a, THROTTLE_ABOVE + 2);
    counts_seen(&rec);
    for c in &conns {
        e.unsubscribe(c, &room);
    }
    // Down to the limit the counts go out at once again: 100, 99, ... 1 (none when empty).
    let expected: Vec<String> = (1..=THROTTLE_ABOVE)
        .rev()
        .map(|n| format!("count room {n}"))
        .collect();
    assert_eq!(counts_seen(&rec), expected);
    for c in &conns {
        drain(c);
    }
    e.tick(Instant::now() + 2 * WINDOW);
    assert!(counts_seen(&rec).is_empty(), "nothing for an empty channel");
    for c in &conns {
        assert!(drain(c).is_empty());
    }
    assert!(!e.stats("app-id", &room).occupied);
}

#[test]
fn presence_and_internal_channels_get_no_counts() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let x = e.connect(a.clone()).unwrap();
    e.subscribe(&x, &ch("presence-room"), Some(common::member("u")))
        .unwrap();
    assert!(drain(&x).iter().all(|f| !f.contains("subscription_count")));
    assert!(counts_seen(&rec).is_empty());
}

#[test]
fn a_count_sent_at_once_meanwhile_replaces_the_held_back_one() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let conns = fill(&e, &a, THROTTLE_ABOVE + 1);
    assert_eq!(counts_seen(&rec).len(), THROTTLE_ABOVE, "101 is held back");
    // Back to the limit: the count goes out at once; the held-back one is no longer due.
    e.unsubscribe(&conns[0], &room);
    assert_eq!(counts_seen(&rec), [format!("count room {THROTTLE_ABOVE}")]);
    for c in &conns[1..] {
        assert_eq!(drain(c), [count_frame("room", THROTTLE_ABOVE)]);
    }
    e.tick(Instant::now() + 2 * WINDOW);
    assert!(counts_seen(&rec).is_empty());
    for c in &conns {
        assert!(drain(c).is_empty());
    }
}
