//! `herald apps …` against a SQLite store, through the built binary, and a running server that
//! serves an app added by the CLI while it runs and refuses it once disabled.

use futures_util::StreamExt;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A SQLite file in a fresh temporary directory, removed at the end.
struct TempDb {
    dir: PathBuf,
    url: String,
}

impl TempDb {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-cli-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("herald.db").display());
        Self { dir, url }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The binary, with no `HERALD_*` variable of the caller's environment (the configuration
/// refuses unknown ones, and the test must not depend on them).
fn herald(store: Option<&TempDb>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") {
            cmd.env_remove(name);
        }
    }
    if let Some(db) = store {
        cmd.env("HERALD_STORE_KIND", "sqlite")
            .env("HERALD_STORE_URL", &db.url);
    }
    cmd
}

fn run(cmd: &mut Command, args: &[&str]) -> Output {
    cmd.args(args).output().expect("the herald binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(db: &TempDb, args: &[&str]) -> String {
    let o = run(&mut herald(Some(db)), args);
    assert!(
        o.status.success(),
        "herald {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn fails(db: &TempDb, args: &[&str]) -> String {
    let o = run(&mut herald(Some(db)), args);
    assert!(
        !o.status.success(),
        "herald {args:?} should fail: {}",
        stdout(&o)
    );
    stderr(&o)
}

/// The `apps list` line of an app.
fn line<'a>(list: &'a str, id: &str) -> Option<&'a str> {
    list.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
}

#[test]
fn add_list_disable_enable_remove() {
    let db = TempDb::new();
    let out = ok(&db, &["apps", "list"]);
    assert!(out.contains("no apps"), "{out}");

    let out = ok(
        &db,
        &[
            "apps",
            "add",
            "--id",
            "42",
            "--key",
            "key-42",
            "--secret",
            "secret-42",
            "--client-events",
        ],
    );
    assert!(out.contains("'42'") && out.contains("key-42"), "{out}");
    assert!(
        !out.contains("secret-42"),
        "a given secret is not echoed: {out}"
    );

    // Without --key/--secret both are generated and shown once.
    let out = ok(&db, &["apps", "add", "--id", "43", "--disabled"]);
    let secret = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret:"))
        .unwrap_or_else(|| panic!("the generated secret is printed: {out}"))
        .trim()
        .to_owned();
    assert!(secret.len() >= 32, "{out}");

    let list = ok(&db, &["apps", "list"]);
    assert!(
        !list.contains("secret-42") && !list.contains(&secret),
        "no secrets: {list}"
    );
    let l42 = line(&list, "42").unwrap_or_else(|| panic!("{list}"));
    assert!(
        l42.contains("key-42") && l42.contains("yes") && l42.contains("client-events"),
        "{l42}"
    );
    assert!(line(&list, "43").unwrap().contains("no"), "{list}");

    ok(&db, &["apps", "disable", "42"]);
    let list = ok(&db, &["apps", "list"]);
    let l42 = line(&list, "42").unwrap();
    assert!(l42.contains(" no "), "{l42}");
    ok(&db, &["apps", "enable", "43"]);
    let list = ok(&db, &["apps", "list"]);
    assert!(line(&list, "43").unwrap().contains(" yes "), "{list}");

    // Errors say what is wrong and what to do.
    let e = fails(&db, &["apps", "add", "--id", "42"]);
    assert!(e.contains("'42' already exists"), "{e}");
    let e = fails(&db, &["apps", "add", "--id", "44", "--key", "key-42"]);
    assert!(
        e.contains("key-42") && e.contains("already used by app '42'"),
        "{e}"
    );
    let e = fails(&db, &["apps", "disable", "nope"]);
    assert!(
        e.contains("'nope'") && e.contains("herald apps list"),
        "{e}"
    );
    let e = fails(&db, &["apps", "add", "--id", "45", "--webhook", "ftp://x"]);
    assert!(e.contains("http://"), "{e}");

    ok(&db, &["apps", "remove", "43"]);
    let list = ok(&db, &["apps", "list"]);
    assert!(
        line(&list, "43").is_none() && line(&list, "42").is_some(),
        "{list}"
    );
}

#[test]
fn config_store_lists_but_does_not_change() {
    let o = run(&mut herald(None), &["apps", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = stdout(&o);
    assert!(line(&list, "app-id").unwrap().contains("app-key"), "{list}");
    assert!(!list.contains("app-secret"), "{list}");

    for args in [
        &["apps", "add", "--id", "x"][..],
        &["apps", "disable", "app-id"][..],
        &["apps", "enable", "app-id"][..],
        &["apps", "remove", "app-id"][..],
    ] {
        let o = run(&mut herald(None), args);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains("configuration file")
                && e.contains("kind = \"sqlite\"")
                && e.contains("HERALD_STORE_KIND=sqlite"),
            "{e}"
        );
    }
}

#[test]
fn unreachable_store_fails_with_a_hint() {
    let o = run(
        herald(None)
            .env("HERALD_STORE_KIND", "postgres")
            .env("HERALD_STORE_URL", "postgres://herald@127.0.0.1:1/herald"),
        &["apps", "list"],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("cannot connect") && e.contains("HERALD_STORE_URL"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// A running server.

/// The server process, killed when the test ends (also on failure).
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(db: &TempDb) -> Self {
        let mut child = herald(Some(db))
            .env("HERALD_HOST", "127.0.0.1")
            .env("HERALD_PORT", "0")
            .env("HERALD_METRICS_PORT", "0")
            .env("HERALD_STORE_REFRESH_INTERVAL_MS", "200")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let Some(Ok(l)) = lines.next() else {
                let _ = child.kill();
                panic!("the server exited before listening");
            };
            if let Some(addr) = l.strip_prefix("Herald listening on ") {
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Established,
    /// `pusher:error` code, then the close frame's code.
    Refused(Option<u64>, Option<u16>),
}

async fn connect(port: u16, key: &str) -> Outcome {
    let url = format!("ws://127.0.0.1:{port}/app/{key}?protocol=7");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("the handshake finishes")
    .expect("the server accepts the upgrade");
    let mut error_code = None;
    let read = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    match v["event"].as_str() {
                        Some("pusher:connection_established") => return Outcome::Established,
                        Some("pusher:error") => {
                            let data = match &v["data"] {
                                serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
                                other => other.clone(),
                            };
                            error_code = data["code"].as_u64();
                        }
                        _ => {}
                    }
                }
                Ok(Message::Close(frame)) => {
                    return Outcome::Refused(error_code, frame.map(|f| u16::from(f.code)))
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Outcome::Refused(error_code, None)
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the server answers the connection")
}

/// Connects until the outcome is `want`: the server sees store changes at its next refresh.
async fn eventually(port: u16, key: &str, want: Outcome) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = connect(port, key).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 10 s the server still answers {got:?} for key {key}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn running_server_serves_apps_added_and_disabled_by_the_cli() {
    let db = TempDb::new();
    let server = Server::start(&db);
    let port = server.port;

    // A fresh store gets the configuration's default app.
    assert_eq!(connect(port, "app-key").await, Outcome::Established);
    assert_eq!(
        connect(port, "live-key").await,
        Outcome::Refused(Some(4001), Some(4001))
    );

    ok(
        &db,
        &[
            "apps",
            "add",
            "--id",
            "live",
            "--key",
            "live-key",
            "--secret",
            "live-secret",
        ],
    );
    eventually(port, "live-key", Outcome::Established).await;

    ok(&db, &["apps", "disable", "live"]);
    eventually(port, "live-key", Outcome::Refused(Some(4003), Some(4003))).await;
    // The other apps are untouched.
    assert_eq!(connect(port, "app-key").await, Outcome::Established);

    ok(&db, &["apps", "enable", "live"]);
    eventually(port, "live-key", Outcome::Established).await;
    drop(server);
}
