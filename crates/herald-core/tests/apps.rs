//! The app store is the one source of app settings: open connections follow a reload, and the
//! connections of a disabled or removed app are closed.

use herald_core::{App, Cluster, Engine, EngineConfig, StaticAppStore};
use herald_protocol::codes;
use std::sync::Arc;

fn setup(apps: Vec<App>) -> (Engine, Arc<StaticAppStore>) {
    let store = Arc::new(StaticAppStore::new(apps).unwrap());
    let engine = Engine::new(
        store.clone(),
        Cluster::local(),
        vec![],
        EngineConfig::default(),
    );
    (engine, store)
}

fn other_app() -> App {
    let mut b = App::default_app();
    b.id = "b".into();
    b.key = "b-key".into();
    b
}

#[test]
fn open_connections_follow_changed_settings() {
    let (engine, store) = setup(vec![App::default_app(), other_app()]);
    let app = engine.apps().by_id("app-id").unwrap();
    let conn = engine.connect(app.clone()).unwrap();
    assert!(conn.app().enable_client_messages);

    // Nothing changed: nothing is closed, the connection keeps the very same settings.
    assert!(engine.follow_apps().is_empty());
    assert!(Arc::ptr_eq(&conn.app(), &app));

    let mut changed = App::default_app();
    changed.enable_client_messages = false;
    changed.limits.client_event_rate = 3;
    store.replace(vec![changed, other_app()]).unwrap();
    // Until the engine follows, the connection still has what it was admitted with.
    assert!(conn.app().enable_client_messages);
    assert!(engine.follow_apps().is_empty());
    assert!(!conn.app().enable_client_messages);
    assert_eq!(conn.app().limits.client_event_rate, 3);
    assert_eq!(conn.close_code(), None);
}

#[test]
fn disabled_and_removed_apps_are_closed() {
    let (engine, store) = setup(vec![App::default_app(), other_app()]);
    let a = engine
        .connect(engine.apps().by_id("app-id").unwrap())
        .unwrap();
    let b = engine.connect(engine.apps().by_id("b").unwrap()).unwrap();
    let b2 = engine.connect(engine.apps().by_id("b").unwrap()).unwrap();

    let mut off = App::default_app();
    off.enabled = false;
    store.replace(vec![off]).unwrap();
    let mut closed = engine.follow_apps();
    closed.sort_by(|x, y| x.0.cmp(&y.0));
    let summary: Vec<(&str, u16, usize)> = closed
        .iter()
        .map(|(app, code, n)| (&**app, code.code, *n))
        .collect();
    assert_eq!(
        summary,
        [
            ("app-id", codes::APP_DISABLED.code, 1),
            ("b", codes::APP_NOT_FOUND.code, 2)
        ]
    );
    assert_eq!(a.close_code(), Some(codes::APP_DISABLED));
    assert_eq!(b.close_code(), Some(codes::APP_NOT_FOUND));
    assert_eq!(b2.close_code(), Some(codes::APP_NOT_FOUND));
}
