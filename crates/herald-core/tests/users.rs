//! Users: sign-in, termination, and watchlist statuses sent once per online/offline transition.

mod common;

use common::{app, drain, engine};
use herald_core::{App, ClusterNote, Engine};
use herald_protocol::codes;
use std::sync::Arc;

/// Signed-in connections per user, as the engine reports them to a cluster adapter.
fn signed_in(e: &Engine) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = e
        .local_notes()
        .into_iter()
        .filter_map(|n| match n {
            ClusterNote::UserCount { user_id, count, .. } => Some((user_id.to_string(), count)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn watchlist(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

const NO_WATCHLIST: &[String] = &[];

/// The `pusher_internal:watchlist_events` frame with `(name, user ids)` groups.
fn statuses(groups: &[(&str, &[&str])]) -> String {
    let events: Vec<String> = groups
        .iter()
        .map(|(name, ids)| {
            let ids: Vec<String> = ids.iter().map(|id| format!(r#"\"{id}\""#)).collect();
            format!(
                r#"{{\"name\":\"{name}\",\"user_ids\":[{}]}}"#,
                ids.join(",")
            )
        })
        .collect();
    format!(
        r#"{{"event":"pusher_internal:watchlist_events","data":"{{\"events\":[{}]}}"}}"#,
        events.join(",")
    )
}

#[test]
fn signin_counts_connections_and_terminate_closes_them_all() {
    let (e, rec) = engine(&app());
    let u1 = e.connect(app()).unwrap();
    let u2 = e.connect(app()).unwrap();
    let v = e.connect(app()).unwrap();
    assert!(signed_in(&e).is_empty());
    e.signin(&u1, "u", NO_WATCHLIST);
    assert_eq!(signed_in(&e), [("u".to_owned(), 1)]);
    e.signin(&u2, "u", NO_WATCHLIST);
    e.signin(&v, "v", NO_WATCHLIST);
    assert_eq!(signed_in(&e), [("u".to_owned(), 2), ("v".to_owned(), 1)]);

    assert_eq!(e.terminate_user("app-id", "u"), 2);
    assert_eq!(u1.close_code(), Some(codes::UNAUTHORIZED));
    assert_eq!(u2.close_code(), Some(codes::UNAUTHORIZED));
    assert_eq!(v.close_code(), None, "another user's connection stays");
    assert_eq!(e.terminate_user("app-id", "nobody"), 0);

    // The connection tasks, once closed, disconnect.
    e.disconnect(&u1, [], Some(("u", NO_WATCHLIST)));
    assert_eq!(signed_in(&e), [("u".to_owned(), 1), ("v".to_owned(), 1)]);
    e.disconnect(&u2, [], Some(("u", NO_WATCHLIST)));
    assert_eq!(signed_in(&e), [("v".to_owned(), 1)]);
    assert_eq!(e.terminate_user("app-id", "u"), 0, "the user is gone");
    assert_eq!(v.close_code(), None);
    assert_eq!(
        rec.take_all(),
        [
            "connected",
            "connected",
            "connected",
            "disconnected",
            "disconnected"
        ],
        "sign-in and termination emit no lifecycle events of their own"
    );
}

#[test]
fn watchers_hear_each_user_come_online_and_go_offline_once() {
    let (e, rec) = engine(&app());
    let w1 = e.connect(app()).unwrap();
    e.signin(&w1, "w", &watchlist(&["u", "x"]));
    assert_eq!(
        drain(&w1),
        [statuses(&[("offline", &["u", "x"])])],
        "the initial statuses"
    );

    let u1 = e.connect(app()).unwrap();
    e.signin(&u1, "u", NO_WATCHLIST);
    assert_eq!(drain(&w1), [statuses(&[("online", &["u"])])]);
    assert!(drain(&u1).is_empty(), "no watchlist, no statuses");
    let u2 = e.connect(app()).unwrap();
    e.signin(&u2, "u", NO_WATCHLIST);
    assert!(drain(&w1).is_empty(), "u was online already");

    // A second connection of the watcher gets the statuses as they are now.
    let w2 = e.connect(app()).unwrap();
    e.signin(&w2, "w", &watchlist(&["u", "x"]));
    assert_eq!(
        drain(&w2),
        [statuses(&[("online", &["u"]), ("offline", &["x"])])]
    );
    assert!(drain(&w1).is_empty());

    e.disconnect(&u1, [], Some(("u", NO_WATCHLIST)));
    assert!(drain(&w1).is_empty(), "u is still online");
    assert!(drain(&w2).is_empty());
    e.disconnect(&u2, [], Some(("u", NO_WATCHLIST)));
    let offline = [statuses(&[("offline", &["u"])])];
    assert_eq!(drain(&w1), offline);
    assert_eq!(drain(&w2), offline);

    // Once the watcher is gone, nobody is told.
    e.disconnect(&w1, [], Some(("w", &watchlist(&["u", "x"]))));
    e.disconnect(&w2, [], Some(("w", &watchlist(&["u", "x"]))));
    let u3 = e.connect(app()).unwrap();
    e.signin(&u3, "u", NO_WATCHLIST);
    assert!(drain(&w1).is_empty());
    assert!(drain(&w2).is_empty());
    assert!(drain(&u3).is_empty());

    let all = rec.take_all();
    assert!(
        all.iter().all(|e| e == "connected" || e == "disconnected"),
        "{all:?}"
    );
    assert_eq!(all.len(), 5 + 4);
}

#[test]
fn a_user_watching_itself_hears_its_own_status_once() {
    let (e, _) = engine(&app());
    let a = e.connect(app()).unwrap();
    e.signin(&a, "a", &watchlist(&["a"]));
    assert_eq!(drain(&a), [statuses(&[("online", &["a"])])]);
}

#[test]
fn no_statuses_when_the_app_has_watchlist_events_off() {
    let mut quiet: App = (*app()).clone();
    quiet.enable_watchlist_events = false;
    let quiet = Arc::new(quiet);
    let (e, _) = engine(&quiet);
    let w = e.connect(quiet.clone()).unwrap();
    e.signin(&w, "w", &watchlist(&["u"]));
    let u = e.connect(quiet.clone()).unwrap();
    e.signin(&u, "u", NO_WATCHLIST);
    e.disconnect(&u, [], Some(("u", NO_WATCHLIST)));
    assert!(drain(&w).is_empty());
    assert_eq!(signed_in(&e), [("w".to_owned(), 1)]);
}
