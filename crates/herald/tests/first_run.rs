//! What an operator meets first, through the built binary: errors that name their subject
//! (the address and setting of a port in use, the file with line and column, the variable, the
//! app), `check-config` checking what `serve` checks, `trigger` without a server, the
//! `--host`/`--port`/`--config` flags and their precedence, the startup banner, logs without
//! colours in a file, and the Redis lines at the default level.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a command that should exit at once may take, and a server to announce its port.
const LIMIT: Duration = Duration::from_secs(15);

/// A fresh temporary directory, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-first-run-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with none of the caller's `HERALD_*` variables (unknown ones are refused), no
/// `NO_COLOR` (the colour test must be able to fail), loopback ports chosen by the kernel and
/// a spool file in `dir`.
fn herald(dir: &TempDir) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") || name == "NO_COLOR" || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(&dir.0)
        .env("HERALD_HOST", "127.0.0.1")
        .env("HERALD_PORT", "0")
        .env("HERALD_METRICS_PORT", "0")
        .env("HERALD_WEBHOOKS_SPOOL_FILE", dir.path("webhooks.spool"))
        .stdin(Stdio::null());
    cmd
}

/// A loopback port with nothing listening on it (just released by the kernel).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn drain(r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(r).read_to_string(&mut s);
        s
    })
}

/// Runs a command that must exit by itself within [`LIMIT`] (it is killed, and the test fails,
/// if it does not: say a server that started when it should have refused to).
fn run(mut cmd: Command, args: &[&str]) -> Out {
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the herald binary runs");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + LIMIT;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "herald {args:?} still running after {LIMIT:?}: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Runs a command that must fail with status 2 before serving, and returns its stderr.
fn refused(cmd: Command, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert_eq!(o.code, Some(2), "herald {args:?}: {}{}", o.stdout, o.stderr);
    assert!(
        !o.stdout.contains("Herald listening") && !o.stdout.contains("configuration is valid"),
        "herald {args:?} went on: {}",
        o.stdout
    );
    o.stderr
}

/// A running server: its ports, and its log (stderr) in a file, as an operator who redirects
/// it would have it. Killed when dropped.
struct Server {
    child: Child,
    port: u16,
    metrics_port: Option<u16>,
    log: PathBuf,
}

impl Server {
    fn start(mut cmd: Command, args: &[&str], dir: &TempDir) -> Self {
        let log = dir.0.join(format!("herald-{}.log", free_port()));
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut metrics_port = None;
        let deadline = Instant::now() + LIMIT;
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no `Herald listening on` line; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            };
            let port_of = |l: &str| l.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            if let Some(a) = line.strip_prefix("Herald metrics on ") {
                metrics_port = Some(port_of(a));
            }
            if let Some(a) = line.strip_prefix("Herald listening on ") {
                break port_of(a);
            }
        };
        Self {
            child,
            port,
            metrics_port,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log satisfies `ok`, and returns it.
    fn log_until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let log = self.log();
            if ok(&log) {
                return log;
            }
            assert!(Instant::now() < deadline, "{what} not logged:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status line of a plain `GET path` on a loopback port.
fn get_status(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Errors that name their subject.

#[test]
fn a_port_in_use_names_the_address_and_the_settings() {
    let dir = TempDir::new();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let p = held.local_addr().unwrap().port();

    let mut cmd = herald(&dir);
    cmd.env("HERALD_PORT", p.to_string());
    let e = refused(cmd, &[]);
    for want in [
        &format!("cannot listen on 127.0.0.1:{p} for the server"),
        "server.port",
        "HERALD_PORT",
        "--port",
        "Address already in use",
    ] {
        assert!(e.contains(want), "{want:?} missing: {e}");
    }
    // The flag gives the same message.
    let e = refused(herald(&dir), &["--port", &p.to_string()]);
    assert!(
        e.contains(&format!("127.0.0.1:{p}")) && e.contains("--port"),
        "{e}"
    );

    let mut cmd = herald(&dir);
    cmd.env("HERALD_METRICS_PORT", p.to_string());
    let e = refused(cmd, &[]);
    for want in [
        &format!("cannot listen on 127.0.0.1:{p} for metrics"),
        "metrics.port",
        "HERALD_METRICS_PORT",
        "soketi",
        "9601",
        "metrics.enabled = false",
    ] {
        assert!(e.contains(want), "{want:?} missing: {e}");
    }
    drop(held);
}

#[test]
fn config_file_errors_give_the_file_line_column_and_the_table_or_app() {
    let dir = TempDir::new();
    for (text, want) in [
        ("[server]\nport = 6001\n[metrics\n", ":3:9: "),
        (
            "[server]\nport = 6001\nprot = 6002\n",
            ":3:1: in [server]: unknown field `prot`, expected one of `host`, `port`",
        ),
        (
            "[[apps]]\nid = 'a'\nkey = 'k'\nsecret = 's'\n\n[[apps]]\nid = 'b'\nkey = 'k2'\n",
            ":6:1: in apps[1] (id `b`): missing field `secret`",
        ),
        (
            "[server]\nport = 70000\n",
            ":2:8: server.port: `70000` is out of range: expected a port number",
        ),
    ] {
        let file = dir.file("herald.toml", text);
        // The file's port is the one at fault here: no HERALD_PORT over it.
        let cmd = || {
            let mut c = herald(&dir);
            c.env_remove("HERALD_PORT");
            c
        };
        let e = refused(cmd(), &["--config", &file, "check-config"]);
        assert!(
            e.starts_with(&format!("herald: {file}{want}")),
            "{text:?}: want {file}{want}, got {e}"
        );
        // `serve` refuses with the same line.
        assert_eq!(refused(cmd(), &["--config", &file]), e);
    }
}

#[test]
fn bad_environment_values_name_their_variable() {
    let dir = TempDir::new();
    for (name, value, want) in [
        (
            "HERALD_PORT",
            "70000",
            "invalid value for HERALD_PORT: `70000` is out of range: expected a port number (0 picks a free one) from 0 to 65535",
        ),
        (
            "HERALD_METRICS_PORT",
            "-1",
            "invalid value for HERALD_METRICS_PORT: `-1` is out of range",
        ),
        (
            "HERALD_METRICS_ENABLED",
            "maybe",
            "invalid value for HERALD_METRICS_ENABLED: `maybe` is not a boolean",
        ),
        (
            "HERALD_SERVER_ACTIVITY_TIMEOUT",
            "2m",
            "invalid value for HERALD_SERVER_ACTIVITY_TIMEOUT: `2m` is not an integer",
        ),
        (
            "HERALD_DEFAULT_APP_MAX_CONNECTIONS",
            "many",
            "invalid value for HERALD_DEFAULT_APP_MAX_CONNECTIONS",
        ),
    ] {
        let mut cmd = herald(&dir);
        cmd.env(name, value);
        let e = refused(cmd, &["check-config"]);
        assert!(e.contains(want), "{name}={value}: {e}");
    }
    // An unknown variable: the list of what Herald reads includes every short name.
    let mut cmd = herald(&dir);
    cmd.env("HERALD_FOO", "1");
    let e = refused(cmd, &["check-config"]);
    for want in [
        "HERALD_FOO",
        "HERALD_HOST",
        "HERALD_PORT",
        "HERALD_ADAPTER",
        "HERALD_CONFIG",
        "HERALD_LOG",
        "HERALD_<SECTION>_<KEY>",
    ] {
        assert!(e.contains(want), "{want} missing: {e}");
    }
}

/// Variables to set for one case.
type Env = Vec<(&'static str, String)>;

/// `check-config` refuses what `serve` would refuse before binding, with the same message.
#[test]
fn check_config_checks_what_serve_checks() {
    let dir = TempDir::new();
    let missing = dir.path("no-such-cert.pem");
    let garbage = dir.file("garbage.pem", "not a certificate\n");
    let mut cases: Vec<(Env, Vec<String>)> = vec![
        (
            vec![
                ("HERALD_TLS_CERT_FILE", missing.clone()),
                ("HERALD_TLS_KEY_FILE", missing.clone()),
            ],
            vec!["tls.cert_file".into(), missing.clone()],
        ),
        (
            vec![
                ("HERALD_TLS_CERT_FILE", garbage.clone()),
                ("HERALD_TLS_KEY_FILE", garbage.clone()),
            ],
            vec!["tls.cert_file".into(), garbage.clone()],
        ),
        (
            vec![(
                "HERALD_WEBHOOKS_SPOOL_FILE",
                dir.path("no-such-dir/webhooks.spool"),
            )],
            vec![
                "webhooks.spool_file".into(),
                "HERALD_WEBHOOKS_SPOOL_FILE".into(),
                "does not exist".into(),
            ],
        ),
        (
            vec![("HERALD_WEBHOOKS_SPOOL_FILE", dir.0.display().to_string())],
            vec!["webhooks.spool_file".into(), "not a regular file".into()],
        ),
        (
            vec![(
                "HERALD_DEFAULT_APP_WEBHOOKS",
                r#"[{"url":"http://:pw@/hook"}]"#.to_owned(),
            )],
            vec!["apps[0].webhooks[0].url".into(), "not a valid URL".into()],
        ),
    ];
    if cfg!(feature = "redis") {
        cases.push((
            vec![
                ("HERALD_ADAPTER", "redis".to_owned()),
                ("HERALD_REDIS_URL", "http://127.0.0.1:6379".to_owned()),
            ],
            vec!["redis.url".into(), "HERALD_REDIS_URL".into()],
        ));
    }
    if cfg!(feature = "sqlite") {
        cases.push((
            vec![
                ("HERALD_STORE_KIND", "sqlite".to_owned()),
                (
                    "HERALD_STORE_URL",
                    format!("sqlite://{}", dir.path("no-such-dir/herald.db")),
                ),
            ],
            vec!["store.url".into(), "does not exist".into()],
        ));
    }
    for (env, wants) in cases {
        let with = |cmd: &mut Command| {
            for (k, v) in &env {
                cmd.env(k, v);
            }
        };
        let mut check = herald(&dir);
        with(&mut check);
        let e = refused(check, &["check-config"]);
        for want in &wants {
            assert!(e.contains(want.as_str()), "{env:?}: {want:?} missing: {e}");
        }
        assert!(!e.contains(":pw@"), "the password stays out: {e}");
        let mut serve = herald(&dir);
        with(&mut serve);
        assert_eq!(refused(serve, &[]), e, "{env:?}: serve says the same");
    }
    // Nothing was created on the way (no SQLite file, no spool).
    assert!(!Path::new(&dir.path("no-such-dir")).exists());
}

#[test]
fn trigger_without_a_server_says_where_it_tried_in_one_line() {
    let dir = TempDir::new();
    let p = free_port();
    let e = refused(
        herald(&dir),
        &["--port", &p.to_string(), "trigger", "ch", "ev", "{}"],
    );
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    assert!(
        e.starts_with(&format!("herald: no answer from http://127.0.0.1:{p} (")),
        "{e}"
    );
    assert!(e.contains("is the server running there?"), "{e}");
    assert!(
        !e.contains("auth_signature") && !e.contains("/apps/"),
        "no signed URL: {e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Command-line habits.

#[test]
fn flags_override_the_environment_which_overrides_the_file() {
    let dir = TempDir::new();
    let file = dir.file(
        "herald.toml",
        "[server]\nhost = \"127.0.0.2\"\nport = 7001\n",
    );
    let effective = |env_port: Option<&str>, args: &[&str]| {
        let mut cmd = herald(&dir);
        cmd.env_remove("HERALD_PORT").env_remove("HERALD_HOST");
        if let Some(p) = env_port {
            cmd.env("HERALD_PORT", p);
        }
        let o = run(cmd, args);
        assert_eq!(o.code, Some(0), "{args:?}: {}", o.stderr);
        let server = o.stdout.split("[server]").nth(1).unwrap().to_owned();
        let get = |key: &str| {
            server
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key} = ")))
                .unwrap()
                .trim_matches('"')
                .to_owned()
        };
        (get("host"), get("port"))
    };
    let pc = "--print-config";
    assert_eq!(effective(None, &[pc]), ("0.0.0.0".into(), "6001".into()));
    assert_eq!(
        effective(None, &["--config", &file, pc]),
        ("127.0.0.2".into(), "7001".into())
    );
    assert_eq!(
        effective(Some("7002"), &["--config", &file, pc]),
        ("127.0.0.2".into(), "7002".into())
    );
    assert_eq!(
        effective(
            Some("7002"),
            &[
                "--config",
                &file,
                "--port",
                "7003",
                "--host",
                "127.0.0.3",
                pc
            ]
        ),
        ("127.0.0.3".into(), "7003".into())
    );
    // A bad flag value names the flag.
    let e = refused(herald(&dir), &["--port", "70000"]);
    assert!(e.contains("--port") && e.contains("70000"), "{e}");
    // --help says it all.
    let help = run(herald(&dir), &["--help"]).stdout;
    for want in ["--port", "--host", "--config", "HERALD_PORT", "overrides"] {
        assert!(help.contains(want), "{want} missing from --help:\n{help}");
    }
    let help = run(herald(&dir), &["serve", "--help"]).stdout;
    assert!(help.contains("--port") && help.contains("--host"), "{help}");
}

#[test]
fn a_server_started_with_port_flags_answers_there() {
    let dir = TempDir::new();
    let file = dir.file("herald.toml", "[server]\nport = 1\n");
    for args in [
        vec!["--host", "127.0.0.1", "--port"],
        vec!["serve", "--config", &file, "--port"],
    ] {
        let p = free_port();
        let mut cmd = herald(&dir);
        // The environment says another port: the flag wins.
        cmd.env("HERALD_PORT", free_port().to_string());
        let mut args = args.clone();
        let port = p.to_string();
        args.push(&port);
        let s = Server::start(cmd, &args, &dir);
        assert_eq!(s.port, p, "{args:?}");
        assert_eq!(get_status(p, "/healthz"), "HTTP/1.1 200 OK", "{args:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Lines an operator needs.

#[test]
fn the_banner_says_where_everything_is_and_a_log_file_has_no_colours() {
    let dir = TempDir::new();
    let file = dir.file(
        "herald.toml",
        "[console]\ntoken = \"console-tok-1\"\n[[apps]]\nid = 'banner-a'\nkey = 'key-a'\nsecret = 'secret-a-1'\n[[apps]]\nid = 'banner-b'\nkey = 'key-b'\nsecret = 'secret-b-1'\n",
    );
    let s = Server::start(herald(&dir), &["--config", &file], &dir);
    let m = s.metrics_port.expect("metrics on");
    let log = s.log_until("the banner", |l| l.contains("apps:"));
    let p = s.port;
    for want in [
        format!("ready on 127.0.0.1:{p}"),
        format!("WebSocket: ws://127.0.0.1:{p}/app/{{key}}"),
        format!("HTTP API:  http://127.0.0.1:{p}/apps/{{app_id}}/events"),
        format!("metrics:   http://127.0.0.1:{m}/metrics"),
        format!("console:   http://127.0.0.1:{p}/console"),
        "apps:      2 served (store `config`): banner-a, banner-b".to_owned(),
    ] {
        assert!(log.contains(&want), "{want:?} missing:\n{log}");
    }
    assert!(log.contains(" INFO "), "at info: {log}");
    for secret in ["secret-a-1", "secret-b-1", "console-tok-1"] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log:?}"
    );
}

#[cfg(feature = "redis")]
#[test]
fn an_unreachable_redis_is_a_warning_once_naming_the_url_without_its_password() {
    let dir = TempDir::new();
    let p = free_port();
    let mut cmd = herald(&dir);
    cmd.env("HERALD_ADAPTER", "redis")
        .env(
            "HERALD_REDIS_URL",
            format!("redis://:hunter2pw@127.0.0.1:{p}/"),
        )
        // Debug lines show each retry, so "once" can be checked after several.
        .env("HERALD_LOG", "info,herald::cluster=debug");
    let s = Server::start(cmd, &[], &dir);
    let log = s.log_until("three connection retries", |l| {
        l.matches("heartbeat failed").count() >= 3
    });
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("cannot reach Redis"))
        .collect();
    assert_eq!(warns.len(), 1, "one warning:\n{log}");
    assert!(
        warns[0].contains(&format!("redis://:***@127.0.0.1:{p}/")) && warns[0].contains("error="),
        "{}",
        warns[0]
    );
    assert!(!log.contains("hunter2pw"), "{log}");
    assert!(log.contains("cluster:   through Redis"), "{log}");
}

/// A stand-in for a Redis that refuses every password: each first command of a connection
/// (the AUTH) gets `-WRONGPASS`, the rest `+OK`.
#[cfg(feature = "redis")]
fn refusing_redis() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut first = true;
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    for _ in text.split("\r\n").filter(|l| l.starts_with('*')) {
                        let reply: &[u8] = if std::mem::take(&mut first) {
                            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
                        } else {
                            b"+OK\r\n"
                        };
                        if conn.write_all(reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[cfg(feature = "redis")]
#[test]
fn a_refused_redis_login_is_an_error() {
    let dir = TempDir::new();
    let p = refusing_redis();
    let mut cmd = herald(&dir);
    cmd.env("HERALD_ADAPTER", "redis").env(
        "HERALD_REDIS_URL",
        format!("redis://:wrong-pw-9@127.0.0.1:{p}"),
    );
    let s = Server::start(cmd, &[], &dir);
    let log = s.log_until("the refused login", |l| {
        l.contains("Redis refused the login")
    });
    let line = log
        .lines()
        .find(|l| l.contains("Redis refused the login"))
        .unwrap();
    assert!(line.contains(" ERROR "), "{line}");
    assert!(
        line.contains(&format!("redis://:***@127.0.0.1:{p}")),
        "{line}"
    );
    assert!(!log.contains("wrong-pw-9"), "{log}");
}
