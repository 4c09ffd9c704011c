//! Real Redis engines for tests, started from the `redis-server` binary on free loopback ports
//! in a temporary directory, and killed when dropped: one server (optionally TLS with an ACL
//! user), a primary with a replica watched by three Sentinels, and a 3-primary Redis Cluster.
//! Admin commands go through `redis-cli`. `scripts/redis.sh start` installs both.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long an engine may take to answer after its start, or to reach a state.
const READY: Duration = Duration::from_secs(15);

/// Fails with what to do when `redis-server`, `redis-sentinel` or `redis-cli` is missing.
pub fn require_redis() {
    for bin in ["redis-server", "redis-sentinel", "redis-cli"] {
        let ok = Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{bin} is not on PATH: run `scripts/redis.sh start` (installs Debian's redis-server, redis-sentinel and redis-tools)"
        );
    }
}

/// A free TCP port on 127.0.0.1 (closed again before returning).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How `redis-cli` logs in to a server.
#[derive(Debug, Clone, Default)]
pub struct Login {
    pub user: Option<String>,
    pub password: Option<String>,
    /// CA file: TLS with this CA.
    pub tls_ca: Option<PathBuf>,
}

impl Login {
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(ca) = &self.tls_ca {
            a.extend(["--tls".into(), "--cacert".into(), ca.display().to_string()]);
        }
        if let Some(u) = &self.user {
            a.extend(["--user".into(), u.clone()]);
        }
        if let Some(p) = &self.password {
            a.extend(["--pass".into(), p.clone()]);
        }
        a.push("--no-auth-warning".into());
        a
    }
}

/// One `redis-server` or `redis-sentinel` process.
#[derive(Debug)]
pub struct Server {
    pub port: u16,
    /// The program and its arguments, to start it again the same way.
    bin: &'static str,
    args: Vec<String>,
    log: PathBuf,
    login: Login,
    child: Option<Child>,
}

impl Server {
    /// Starts `bin` (`redis-server` or `redis-sentinel`) with `args`, which must set the
    /// port, and waits for PING.
    pub fn start(
        dir: &Path,
        bin: &'static str,
        port: u16,
        args: Vec<String>,
        login: Login,
    ) -> Server {
        let mut s = Server {
            port,
            bin,
            args,
            log: dir.join(format!("redis-{port}.log")),
            login,
            child: None,
        };
        s.spawn();
        s
    }

    /// A data node: no persistence, loopback only, `extra` appended.
    pub fn data(dir: &Path, port: u16, extra: &[&str], login: Login) -> Server {
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::start(dir, "redis-server", port, args, login)
    }

    fn spawn(&mut self) {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} does not start ({e}): run scripts/redis.sh start",
                    self.bin
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{} on port {} exited ({status}):\n{}",
                    self.bin,
                    self.port,
                    self.log_tail()
                );
            }
            if self.cli(&["PING"]).is_ok_and(|r| r == "PONG") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} on port {} does not answer PING:\n{}",
                self.bin,
                self.port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs one command with `redis-cli`: its output (trimmed), or its error output.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(self.login.args())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success()
            || text.starts_with("ERR")
            || text.starts_with("Could not connect")
            || text.starts_with("NOAUTH")
            || text.starts_with("WRONGPASS")
        {
            return Err(format!(
                "{text} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(text)
    }

    /// Waits until `redis-cli` prints something `ok` accepts for `args`.
    pub fn wait_for(&self, args: &[&str], what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(out) = self.cli(args) {
                if ok(&out) {
                    return out;
                }
            }
            assert!(
                Instant::now() < deadline,
                "port {}: {what} not reached in {READY:?}; last `{}`: {:?}\n{}",
                self.port,
                args.join(" "),
                self.cli(args),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }

    /// kill -9, waiting for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server (if it runs) and starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY;
        // The port can stay held for a moment after the kill.
        while TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "port {} stays in use", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One plain `redis-server`.
#[derive(Debug)]
pub struct Standalone {
    pub server: Server,
    pub url: String,
    pub dir: TempDir,
}

pub fn start_redis() -> Standalone {
    require_redis();
    let dir = TempDir::new("redis");
    let port = free_port();
    let server = Server::data(&dir.0, port, &[], Login::default());
    Standalone {
        url: format!("redis://127.0.0.1:{port}"),
        server,
        dir,
    }
}

/// A `redis-server` that speaks TLS only, with a certificate for 127.0.0.1 signed by a CA
/// made for it, and one ACL user (the default user is off).
#[derive(Debug)]
pub struct TlsRedis {
    pub server: Server,
    /// `rediss://user:password@127.0.0.1:port`
    pub url: String,
    /// The CA's certificate (PEM).
    pub ca_file: PathBuf,
    pub dir: TempDir,
}

/// Makes a CA and a server certificate for 127.0.0.1 and localhost in `dir` with openssl:
/// (ca.crt, server.crt, server.key).
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n).display().to_string();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let runs: Vec<Vec<String>> = vec![
        [
            &["req", "-x509", "-new", "-nodes"][..],
            &ec,
            &["-keyout", &p("ca.key"), "-out", &p("ca.crt"), "-days", "2"],
            &["-subj", "/CN=herald test CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect(),
        [
            &["req", "-new", "-nodes"][..],
            &ec,
            &["-keyout", &p("server.key"), "-out", &p("server.csr")],
            &["-subj", "/CN=127.0.0.1"],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect(),
        [
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("server.crt"),
            "-days",
            "2",
            "-extfile",
            &p("server.ext"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ];
    for args in runs {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

pub fn start_redis_tls(user: &str, password: &str) -> TlsRedis {
    require_redis();
    let dir = TempDir::new("redis-tls");
    let (ca, cert, key) = make_certificates(&dir.0);
    let port = free_port();
    let path = |p: &PathBuf| p.display().to_string();
    let args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        &path(&cert),
        "--tls-key-file",
        &path(&key),
        "--tls-ca-cert-file",
        &path(&ca),
        "--tls-auth-clients",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.0.display().to_string(),
        "--user",
        "default",
        "off",
        "--user",
        user,
        "on",
        &format!(">{password}"),
        "~*",
        "&*",
        "+@all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let login = Login {
        user: Some(user.into()),
        password: Some(password.into()),
        tls_ca: Some(ca.clone()),
    };
    let server = Server::start(&dir.0, "redis-server", port, args, login);
    TlsRedis {
        url: format!("rediss://{user}:{password}@127.0.0.1:{port}"),
        server,
        ca_file: ca,
        dir,
    }
}

/// A primary and its replica, both with a password, watched by three Sentinels (quorum 2,
/// down after 1 s) that have their own password.
#[derive(Debug)]
pub struct Sentinels {
    pub primary: Server,
    pub replica: Server,
    pub sentinels: Vec<Server>,
    /// `redis://:<primary password>@127.0.0.1:<sentinel port>` for each Sentinel.
    pub urls: Vec<String>,
    pub master: String,
    pub sentinel_password: String,
    pub dir: TempDir,
}

pub const PRIMARY_PASSWORD: &str = "primary-pw-1";
pub const SENTINEL_PASSWORD: &str = "sentinel-pw-1";

pub fn start_sentinel() -> Sentinels {
    require_redis();
    let dir = TempDir::new("sentinel");
    let master = "herald-primary".to_owned();
    let data_login = Login {
        password: Some(PRIMARY_PASSWORD.into()),
        ..Login::default()
    };
    let auth = [
        "--requirepass",
        PRIMARY_PASSWORD,
        "--masterauth",
        PRIMARY_PASSWORD,
    ];
    let (pp, rp) = (free_port(), free_port());
    let primary = Server::data(&dir.0, pp, &auth, data_login.clone());
    let replica_of = ["--replicaof", "127.0.0.1", &pp.to_string()].map(String::from);
    let extra: Vec<&str> = auth
        .iter()
        .copied()
        .chain(replica_of.iter().map(String::as_str))
        .collect();
    let replica = Server::data(&dir.0, rp, &extra, data_login);
    replica.wait_for(&["INFO", "replication"], "replica in sync", |o| {
        o.contains("master_link_status:up")
    });
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let conf = dir.path(&format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nrequirepass {SENTINEL_PASSWORD}\n\
                 sentinel sentinel-pass {SENTINEL_PASSWORD}\n\
                 sentinel monitor {master} 127.0.0.1 {pp} 2\n\
                 sentinel auth-pass {master} {PRIMARY_PASSWORD}\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 10000\n\
                 sentinel parallel-syncs {master} 1\n",
                dir = dir.0.display()
            ),
        )
        .unwrap();
        let args = vec![conf.display().to_string()];
        let login = Login {
            password: Some(SENTINEL_PASSWORD.into()),
            ..Login::default()
        };
        sentinels.push(Server::start(&dir.0, "redis-sentinel", port, args, login));
    }
    // A failover needs each Sentinel to know the replica and the two other Sentinels.
    for s in &sentinels {
        s.wait_for(
            &["SENTINEL", "MASTER", &master],
            "the replica and two other Sentinels known",
            |o| {
                let v: Vec<&str> = o.lines().collect();
                let field = |k: &str| v.iter().position(|l| *l == k).and_then(|i| v.get(i + 1));
                field("num-slaves") == Some(&"1") && field("num-other-sentinels") == Some(&"2")
            },
        );
    }
    let urls = sentinels
        .iter()
        .map(|s| format!("redis://:{PRIMARY_PASSWORD}@127.0.0.1:{}", s.port))
        .collect();
    Sentinels {
        primary,
        replica,
        sentinels,
        urls,
        master,
        sentinel_password: SENTINEL_PASSWORD.into(),
        dir,
    }
}

impl Sentinels {
    /// The primary's port as the first live Sentinel names it now.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let out = s
                .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master])
                .ok()?;
            out.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// kill -9 of the primary: the Sentinels promote the replica.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// A failover asked of a Sentinel (`SENTINEL FAILOVER`), the primary staying up.
    pub fn failover(&self) -> Result<String, String> {
        self.sentinels[0].cli(&["SENTINEL", "FAILOVER", &self.master])
    }
}

/// A Redis Cluster of three primaries with one replica each (six processes), node timeout 1 s.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Server>,
    /// A seed URL for each node.
    pub urls: Vec<String>,
    pub dir: TempDir,
}

pub fn start_cluster() -> Cluster {
    require_redis();
    let dir = TempDir::new("cluster");
    let mut nodes = Vec::new();
    for _ in 0..6 {
        let (port, bus) = (free_port(), free_port());
        let conf = format!("nodes-{port}.conf");
        let extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &conf,
            "--cluster-node-timeout",
            "1000",
            "--cluster-port",
            &bus.to_string(),
        ];
        nodes.push(Server::data(&dir.0, port, &extra, Login::default()));
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let c = Cluster {
        urls: addrs.iter().map(|a| format!("redis://{a}")).collect(),
        nodes,
        dir,
    };
    for n in &c.nodes {
        n.wait_for(&["CLUSTER", "INFO"], "cluster_state:ok", |o| {
            o.contains("cluster_state:ok") && o.contains("cluster_known_nodes:6")
        });
        // A replica can take over only once it has been in sync.
        n.wait_for(
            &["INFO", "replication"],
            "primary, or replica in sync",
            |o| o.contains("role:master") || o.contains("master_link_status:up"),
        );
    }
    c
}

/// One line of CLUSTER NODES: (id, port, flags, primary id, slot ranges).
fn node_lines(out: &str) -> Vec<(&str, u16, &str, &str, Vec<&str>)> {
    out.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            Some((
                f[0],
                port,
                *f.get(2)?,
                *f.get(3)?,
                f.get(8..).unwrap_or(&[]).to_vec(),
            ))
        })
        .collect()
}

impl Cluster {
    /// CLUSTER NODES as a live node sees it.
    fn nodes_view(&self) -> String {
        let live = self
            .nodes
            .iter()
            .find(|n| n.cli(&["PING"]).is_ok())
            .unwrap();
        live.cli(&["CLUSTER", "NODES"]).unwrap()
    }

    /// The index in `nodes` of a live replica of the primary at index `primary`, if any.
    pub fn replica_of(&self, primary: usize) -> Option<usize> {
        let out = self.nodes_view();
        let lines = node_lines(&out);
        let port = self.nodes[primary].port;
        let id = lines.iter().find(|l| l.1 == port)?.0;
        let replica = lines.iter().find(|l| l.3 == id && !l.2.contains("fail"))?;
        self.nodes.iter().position(|n| n.port == replica.1)
    }

    /// The index in `nodes` of the live primary that serves `slot`.
    pub fn primary_of(&self, slot: u16) -> usize {
        let out = self.nodes_view();
        for (_, port, flags, _, ranges) in node_lines(&out) {
            if !flags.contains("master") || flags.contains("fail") {
                continue;
            }
            let serves = ranges.iter().any(|r| {
                let mut ends = r.split('-').map(|n| n.parse::<u16>());
                match (ends.next(), ends.next()) {
                    (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
                    (Some(Ok(a)), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no primary serves slot {slot}:\n{out}");
    }
}
