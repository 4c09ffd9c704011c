//! `pusher_internal:subscription_count`. Every change of a channel with up to 100 subscribers is
//! reported (the `SubscriptionCount` lifecycle event, so one webhook per change), and its frame
//! goes out at once unless one went out less than `COUNT_COALESCE_WINDOW` ago; the changes of a
//! window collapse into one frame with the latest count, which `Engine::tick` sends when the
//! window ends. Above 100 subscribers frame and report go together, at most once per 5 s.
//!
//! The clock is paused: time moves only by `advance`, so "at once" means at the same instant.

mod common;

use common::{app, ch, drain, engine, Recorder};
use herald_core::{App, Conn, Engine, COUNT_COALESCE_WINDOW as SHORT};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{advance, Instant};

/// The engine's throttle: above this many subscribers, one count per window.
const THROTTLE_ABOVE: usize = 100;
const WINDOW: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);

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

/// Lets every count window end and sends what was held back.
async fn settle(e: &Engine) {
    advance(WINDOW).await;
    e.tick(Instant::now());
}

#[tokio::test(start_paused = true)]
async fn a_single_change_on_a_quiet_channel_is_sent_and_reported_at_once() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let x = e.connect(a.clone()).unwrap();
    let y = e.connect(a.clone()).unwrap();
    e.subscribe(&x, &room, None).unwrap();
    assert_eq!(
        drain(&x),
        [
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"room","data":"{}"}"#
                .to_owned(),
            count_frame("room", 1),
        ]
    );
    advance(SHORT).await;
    e.subscribe(&y, &room, None).unwrap();
    assert_eq!(drain(&x), [count_frame("room", 2)]);
    assert_eq!(drain(&y)[1..], [count_frame("room", 2)]);
    advance(SHORT).await;
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
    settle(&e).await;
    assert!(counts_seen(&rec).is_empty(), "nothing was held back");
    assert!(drain(&x).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_burst_on_a_small_channel_is_one_frame_at_once_and_the_latest_at_the_window_end() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let listeners = fill(&e, &a, 10);
    settle(&e).await;
    listeners.iter().for_each(|c| {
        drain(c);
    });
    counts_seen(&rec);
    // The tick just sent a frame: let its window pass, so the channel is quiet.
    advance(SHORT).await;

    // 1,000 subscribe/unsubscribe pairs at one instant.
    let attacker = e.connect(a.clone()).unwrap();
    for _ in 0..1000 {
        e.subscribe(&attacker, &room, None).unwrap();
        e.unsubscribe(&attacker, &room);
    }
    for c in &listeners {
        assert_eq!(
            drain(c),
            [count_frame("room", 11)],
            "the first change, at once"
        );
    }
    // Every change is still reported (webhooks are one per change, not one per subscriber).
    assert_eq!(counts_seen(&rec).len(), 2000);

    e.tick(Instant::now() + SHORT - MS);
    for c in &listeners {
        assert!(drain(c).is_empty(), "nothing more within the window");
    }
    advance(SHORT).await;
    e.tick(Instant::now());
    for c in &listeners {
        assert_eq!(drain(c), [count_frame("room", 10)], "the latest count");
    }
    assert!(counts_seen(&rec).is_empty(), "reported already");
    settle(&e).await;
    for c in &listeners {
        assert!(drain(c).is_empty(), "sent once");
    }
}

#[tokio::test(start_paused = true)]
async fn a_long_burst_sends_at_most_one_frame_per_window_and_ends_on_the_true_count() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let listener = fill(&e, &a, 1).remove(0);
    settle(&e).await;
    drain(&listener);
    counts_seen(&rec);
    advance(SHORT).await;

    // Two seconds of changes every 10 ms, with the sweep ticking every 100 ms.
    let attacker = e.connect(a.clone()).unwrap();
    let start = Instant::now();
    let mut frames: Vec<(Instant, String)> = Vec::new();
    let mut subscribed = false;
    for step in 1..=200u32 {
        if subscribed {
            e.unsubscribe(&attacker, &room);
        } else {
            e.subscribe(&attacker, &room, None).unwrap();
        }
        subscribed = !subscribed;
        frames.extend(drain(&listener).into_iter().map(|f| (Instant::now(), f)));
        advance(Duration::from_millis(10)).await;
        if step % 10 == 0 {
            e.tick(Instant::now());
        }
    }
    settle(&e).await;
    frames.extend(drain(&listener).into_iter().map(|f| (Instant::now(), f)));
    let elapsed = Instant::now() - start - WINDOW;

    // At most one frame per window: 2 s / 250 ms, plus the first one.
    let most = 1 + (elapsed.as_millis() / SHORT.as_millis()) as usize;
    assert!(
        frames.len() <= most && frames.len() >= 2,
        "{} frames in {elapsed:?}",
        frames.len()
    );
    for w in frames.windows(2) {
        assert!(w[1].0 - w[0].0 >= SHORT, "frames closer than the window");
    }
    // The attacker made an even number of changes: back to one subscriber.
    assert_eq!(frames.last().unwrap().1, count_frame("room", 1));
    assert_eq!(counts_seen(&rec).len(), 200, "one report per change");
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_joining_within_the_window_gets_the_latest_count_at_its_end() {
    let a = counting_app();
    let (e, _rec) = engine(&a);
    let room = ch("room");
    let x = e.connect(a.clone()).unwrap();
    let y = e.connect(a.clone()).unwrap();
    e.subscribe(&x, &room, None).unwrap();
    drain(&x);
    e.subscribe(&y, &room, None).unwrap();
    assert!(drain(&x).is_empty());
    assert_eq!(drain(&y).len(), 1, "subscription_succeeded only, for now");
    advance(SHORT).await;
    e.tick(Instant::now());
    assert_eq!(drain(&x), [count_frame("room", 2)]);
    assert_eq!(drain(&y), [count_frame("room", 2)]);
}

#[tokio::test(start_paused = true)]
async fn no_counts_when_the_app_has_them_off() {
    let a = app();
    let (e, rec) = engine(&a);
    let x = e.connect(a.clone()).unwrap();
    e.subscribe(&x, &ch("room"), None).unwrap();
    assert_eq!(drain(&x).len(), 1, "subscription_succeeded only");
    settle(&e).await;
    assert!(drain(&x).is_empty());
    assert!(counts_seen(&rec).is_empty());
}

#[tokio::test(start_paused = true)]
async fn big_channels_get_one_count_per_window_the_latest() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let mut conns = fill(&e, &a, THROTTLE_ABOVE);
    // Up to the limit every change is reported at once; the frames of that burst collapse.
    let reported: Vec<String> = (1..=THROTTLE_ABOVE)
        .map(|n| format!("count room {n}"))
        .collect();
    assert_eq!(counts_seen(&rec), reported);
    let last_report = Instant::now();
    advance(SHORT).await;
    e.tick(Instant::now());
    for c in &conns {
        assert_eq!(drain(c), [count_frame("room", THROTTLE_ABOVE)]);
    }

    // Above the limit, within 5 s of the last report: held back, frame and report.
    conns.extend(fill(&e, &a, 3));
    e.unsubscribe(&conns[0], &room);
    for c in &conns {
        assert!(drain(c).is_empty(), "nothing sent within the window");
    }
    assert!(counts_seen(&rec).is_empty());
    e.tick(last_report + WINDOW - MS);
    for c in &conns {
        assert!(drain(c).is_empty(), "nothing before the window ends");
    }
    assert!(counts_seen(&rec).is_empty());

    // The window ended: the latest count, once, to every subscriber, reported once.
    let end = last_report + WINDOW;
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

    // That report started the next window.
    advance(WINDOW - SHORT).await;
    conns.extend(fill(&e, &a, 1));
    e.tick(end + WINDOW - MS);
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

#[tokio::test(start_paused = true)]
async fn a_channel_emptied_before_the_window_ends_gets_no_late_count() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let conns = fill(&e, &a, THROTTLE_ABOVE + 2);
    counts_seen(&rec);
    for c in &conns {
        e.unsubscribe(c, &room);
    }
    // Down to the limit every change is reported at once again: 100, 99, ... 1 (none when
    // empty).
    let expected: Vec<String> = (1..=THROTTLE_ABOVE)
        .rev()
        .map(|n| format!("count room {n}"))
        .collect();
    assert_eq!(counts_seen(&rec), expected);
    for c in &conns {
        drain(c);
    }
    settle(&e).await;
    settle(&e).await;
    assert!(counts_seen(&rec).is_empty(), "nothing for an empty channel");
    for c in &conns {
        assert!(drain(c).is_empty());
    }
    assert!(!e.stats("app-id", &room).occupied);
}

#[tokio::test(start_paused = true)]
async fn presence_and_internal_channels_get_no_counts() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let x = e.connect(a.clone()).unwrap();
    e.subscribe(&x, &ch("presence-room"), Some(common::member("u")))
        .unwrap();
    settle(&e).await;
    assert!(drain(&x).iter().all(|f| !f.contains("subscription_count")));
    assert!(counts_seen(&rec).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_count_sent_at_once_meanwhile_replaces_the_held_back_one() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let conns = fill(&e, &a, THROTTLE_ABOVE + 1);
    assert_eq!(counts_seen(&rec).len(), THROTTLE_ABOVE, "101 is held back");
    // Back to the limit after the short window: sent and reported at once; the held-back one
    // is no longer due.
    advance(SHORT).await;
    e.unsubscribe(&conns[0], &room);
    assert_eq!(counts_seen(&rec), [format!("count room {THROTTLE_ABOVE}")]);
    for c in &conns[1..] {
        assert_eq!(drain(c), [count_frame("room", THROTTLE_ABOVE)]);
    }
    settle(&e).await;
    settle(&e).await;
    assert!(counts_seen(&rec).is_empty());
    for c in &conns {
        assert!(drain(c).is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_channel_shrinking_to_the_limit_gets_its_frame_after_the_short_window_not_5_s() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let room = ch("room");
    let conns = fill(&e, &a, THROTTLE_ABOVE + 1);
    counts_seen(&rec);
    // 101 is held for 5 s; one leaves at the same instant: 100 is reported at once and its
    // frame waits for the short window only.
    e.unsubscribe(&conns[0], &room);
    assert_eq!(counts_seen(&rec), [format!("count room {THROTTLE_ABOVE}")]);
    advance(SHORT).await;
    e.tick(Instant::now());
    for c in &conns[1..] {
        assert_eq!(drain(c), [count_frame("room", THROTTLE_ABOVE)]);
    }
    settle(&e).await;
    assert!(counts_seen(&rec).is_empty(), "101 was never reported");
    for c in &conns[1..] {
        assert!(drain(c).is_empty());
    }
}

/// A clustered adapter decides the cluster-wide count and hands every node each change; the
/// node's subscribers get the same coalescing as local changes: one frame at once, then the
/// latest delivered count at the window's end, and no report (the deciding node made it).
#[tokio::test(start_paused = true)]
async fn cluster_counts_are_coalesced_per_node_and_the_last_one_wins() {
    let a = counting_app();
    let (e, rec) = engine(&a);
    let conns = fill(&e, &a, 3);
    advance(WINDOW).await;
    counts_seen(&rec);
    let room = ch("room");
    e.deliver_count(&a.id, &room, 40);
    for c in &conns {
        assert_eq!(drain(c), [count_frame("room", 40)]);
    }
    for n in 41..=60 {
        e.deliver_count(&a.id, &room, n);
    }
    e.deliver_count(&a.id, &room, 57);
    assert!(drain(&conns[0]).is_empty(), "held within the window");
    advance(SHORT - MS).await;
    e.tick(Instant::now());
    assert!(drain(&conns[0]).is_empty(), "not before the window ends");
    advance(MS).await;
    e.tick(Instant::now());
    for c in &conns {
        assert_eq!(drain(c), [count_frame("room", 57)], "the latest delivered");
    }
    assert!(
        counts_seen(&rec).is_empty(),
        "the deciding node reports, not this one"
    );
    settle(&e).await;
    assert!(drain(&conns[0]).is_empty(), "nothing more");
    // A channel without local subscribers gets no entry from it.
    e.deliver_count(&a.id, &ch("elsewhere"), 5);
    assert_eq!(e.channel_totals(&a.id), (1, 3));
}
