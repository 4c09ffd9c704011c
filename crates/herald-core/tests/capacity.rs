//! `EngineConfig::max_subscriptions`: subscriptions held across all apps, beyond which a
//! subscribe is refused; a refusal leaves no state behind and every way out gives a place back.

mod common;

use common::{app, ch, drain, member, Recorder};
use herald_core::{App, Cluster, Engine, EngineConfig, StaticAppStore, SubscribeError};
use std::sync::Arc;

fn capped(apps: Vec<App>, max: usize) -> Engine {
    Engine::new(
        Arc::new(StaticAppStore::new(apps).unwrap()),
        Cluster::local(),
        vec![Arc::new(Recorder::default())],
        EngineConfig {
            max_subscriptions: max,
            ..EngineConfig::default()
        },
    )
}

#[test]
fn subscribes_beyond_the_cap_are_refused_across_apps_and_leave_no_channel() {
    let a = app();
    let mut b = (*app()).clone();
    b.id = "other".into();
    b.key = "other-key".into();
    let b = Arc::new(b);
    let e = capped(vec![(*a).clone(), (*b).clone()], 3);
    let x = e.connect(a.clone()).unwrap();
    let y = e.connect(b.clone()).unwrap();
    e.subscribe(&x, &ch("one"), None).unwrap();
    e.subscribe(&x, &ch("two"), None).unwrap();
    e.subscribe(&y, &ch("one"), None).unwrap();
    assert_eq!(e.total_subscriptions(), 3);
    drain(&x);
    drain(&y);

    let refused = e.subscribe(&y, &ch("three"), None).unwrap_err();
    assert_eq!(
        refused,
        SubscribeError::OverCapacity {
            channel: "three".into(),
            max: 3
        }
    );
    assert_eq!(
        refused.to_string(),
        "Cannot subscribe to three: the server holds its limit of 3 subscriptions"
    );
    assert!(drain(&y).is_empty(), "nothing queued for a refusal");
    assert!(!e.stats("other", &ch("three")).occupied);
    assert!(e.channels("other", "").iter().all(|(n, _)| &**n != "three"));
    assert_eq!(e.total_subscriptions(), 3);

    // An unsubscribe gives its place back; so does a disconnect.
    e.unsubscribe(&x, &ch("two"));
    e.subscribe(&y, &ch("three"), None).unwrap();
    assert!(e.subscribe(&x, &ch("two"), None).is_err());
    e.disconnect(&x, [&ch("one")], None);
    assert_eq!(e.total_subscriptions(), 2);
    let z = e.connect(a.clone()).unwrap();
    e.subscribe(&z, &ch("two"), None).unwrap();
    assert_eq!(e.total_subscriptions(), 3);
}

#[test]
fn refusals_for_other_reasons_take_no_place() {
    let mut a = (*app()).clone();
    a.limits.max_presence_members = 1;
    let a = Arc::new(a);
    let e = capped(vec![(*a).clone()], 2);
    let x = e.connect(a.clone()).unwrap();
    let y = e.connect(a.clone()).unwrap();
    e.subscribe(&x, &ch("presence-room"), Some(member("u1")))
        .unwrap();
    assert!(matches!(
        e.subscribe(&x, &ch("presence-room"), Some(member("u1"))),
        Err(SubscribeError::Existing { .. })
    ));
    assert!(matches!(
        e.subscribe(&y, &ch("presence-room"), Some(member("u2"))),
        Err(SubscribeError::PresenceFull { .. })
    ));
    assert_eq!(e.total_subscriptions(), 1);
    e.subscribe(&y, &ch("news"), None).unwrap();
    assert_eq!(e.total_subscriptions(), 2);
}

#[test]
fn zero_means_no_cap() {
    let a = app();
    let e = capped(vec![(*a).clone()], 0);
    let x = e.connect(a.clone()).unwrap();
    for i in 0..2000 {
        e.subscribe(&x, &ch(&format!("c{i}")), None).unwrap();
    }
    assert_eq!(e.total_subscriptions(), 2000);
}
