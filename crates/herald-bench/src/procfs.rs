//! Server (and own) resource use from `/proc`: resident memory and CPU time.

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rss_kb: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// stime alone, in clock ticks.
    pub sys_ticks: u64,
}

impl Sample {
    /// CPU seconds between `earlier` and `self`.
    pub fn cpu_since(&self, earlier: &Sample) -> f64 {
        self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / TICKS_PER_SEC
    }
}

/// `VmRSS` in kB from the text of `/proc/PID/status`.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// (utime, stime) in ticks from the text of `/proc/PID/stat`.
pub fn parse_user_sys_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// Reads `/proc/{pid}` where pid is a number or `self`.
pub fn sample(pid: &str) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user, sys) = parse_user_sys_ticks(&stat)?;
    Some(Sample {
        rss_kb: parse_vm_rss(&status)?,
        cpu_ticks: user + sys,
        sys_ticks: sys,
    })
}

/// CPU time of a process in nanoseconds: the sum over its threads of the first field of
/// `/proc/{pid}/task/*/schedstat` (time on a CPU, in ns), finer than the clock ticks of
/// `/proc/{pid}/stat`. Threads that ended between two readings are no longer counted, so this
/// suits processes whose threads live as long as they do (a server's runtime workers); without
/// schedstat it falls back to the ticks of `stat`.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = parse_schedstat_ns(&text) {
            total += ns;
            any = true;
        }
    }
    if any {
        return Some(total);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user, sys) = parse_user_sys_ticks(&stat)?;
    Some((user + sys) * (1_000_000_000 / TICKS_PER_SEC as u64))
}

/// Nanoseconds on a CPU from the text of a `schedstat` file (its first field).
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Open file descriptors of a process (entries of `/proc/{pid}/fd`).
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// `ListenOverflows` and `ListenDrops` from the text of `/proc/net/netstat` (a `TcpExt:` line of
/// names, then one of values): connection attempts the kernel dropped at a full listen queue, in
/// this network namespace (the whole host, for a server in the same one).
pub fn parse_listen_overflows(netstat: &str) -> Option<(u64, u64)> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let (mut overflows, mut drops) = (None, None);
    for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
        match n {
            "ListenOverflows" => overflows = v.parse().ok(),
            "ListenDrops" => drops = v.parse().ok(),
            _ => {}
        }
    }
    Some((overflows?, drops?))
}

/// The namespace's listen-queue overflows and drops now.
pub fn listen_overflows() -> Option<(u64, u64)> {
    parse_listen_overflows(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

/// Busy and total clock ticks of the whole machine, from the text of `/proc/stat`.
pub fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The server under test (optional) and this process.
#[derive(Debug, Clone)]
pub struct Probe {
    pub server_pid: Option<u32>,
}

/// Readings of the server and of the bench itself at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub server: Option<Sample>,
    pub client: Option<Sample>,
    /// Busy and total ticks of all CPUs.
    pub machine: Option<(u64, u64)>,
}

impl Probe {
    pub fn point(&self) -> Point {
        Point {
            server: self.server_pid.and_then(|p| sample(&p.to_string())),
            client: sample("self"),
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| parse_machine_ticks(&s)),
        }
    }
}

impl Point {
    pub fn server_cpu_since(&self, earlier: &Point) -> Option<f64> {
        Some(self.server?.cpu_since(&earlier.server?))
    }
    pub fn client_cpu_since(&self, earlier: &Point) -> Option<f64> {
        Some(self.client?.cpu_since(&earlier.client?))
    }
    /// CPU seconds the whole machine was busy, and the share of its capacity that was.
    pub fn machine_busy_since(&self, earlier: &Point) -> Option<(f64, f64)> {
        let ((b1, t1), (b0, t0)) = (self.machine?, earlier.machine?);
        let busy = b1.saturating_sub(b0);
        let total = t1.saturating_sub(t0).max(1);
        Some((busy as f64 / TICKS_PER_SEC, busy as f64 / total as f64))
    }
    /// Share of the server's CPU time spent in the kernel (socket writes, TCP) since `earlier`.
    pub fn server_sys_share_since(&self, earlier: &Point) -> Option<f64> {
        let (now, then) = (self.server?, earlier.server?);
        let all = now.cpu_ticks.saturating_sub(then.cpu_ticks);
        (all > 0).then(|| now.sys_ticks.saturating_sub(then.sys_ticks) as f64 / all as f64)
    }
    pub fn server_rss_kb(&self) -> Option<u64> {
        self.server.map(|s| s.rss_kb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let s = "Name:\therald\nVmPeak:\t  10 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(s), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn reads_cpu_ticks_past_odd_command_names() {
        let s =
            "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_user_sys_ticks(s), Some((250, 75)));
    }

    #[test]
    fn reads_schedstat_and_the_cpu_of_a_process() {
        assert_eq!(parse_schedstat_ns("942718 3427985 3\n"), Some(942_718));
        assert_eq!(parse_schedstat_ns(""), None);
        let me = std::process::id();
        let a = cpu_ns(me).expect("own cpu");
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_ns(me).unwrap() > a);
        assert_eq!(cpu_ns(u32::MAX), None);
    }

    #[test]
    fn reads_machine_ticks() {
        let s = "cpu  100 5 50 800 20 0 10 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine_ticks(s), Some((165, 985)));
    }

    #[test]
    fn reads_own_process() {
        let p = sample("self").expect("/proc/self");
        assert!(p.rss_kb > 0);
        assert!(listen_overflows().is_some());
    }

    #[test]
    fn counts_the_descriptors_of_a_process() {
        // Two children that inherit the same descriptors from the test harness (which holds
        // some, such as cargo's jobserver pipes), one of them with two more of its own: this
        // process's own count moves with the tests running beside this one.
        let child = |script: &str| {
            std::process::Command::new("bash")
                .args(["-c", script])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut plain = child("exec sleep 10");
        let mut more = child("exec 97</dev/null 98</dev/null; exec sleep 10");
        let sleeping = |pid: u32| {
            (0..500).any(|_| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                comm.trim() == "sleep" || {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    false
                }
            })
        };
        assert!(sleeping(plain.id()) && sleeping(more.id()));
        let (a, b) = (open_fds(plain.id()), open_fds(more.id()));
        for c in [&mut plain, &mut more] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let a = a.expect("a count");
        assert!(a >= 3, "{a}");
        assert_eq!(b, Some(a + 2));
        assert_eq!(open_fds(u32::MAX), None);
    }

    #[test]
    fn reads_listen_overflows_by_name() {
        let s = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 1 807 811\nIpExt: X\nIpExt: 2\n";
        assert_eq!(parse_listen_overflows(s), Some((807, 811)));
        assert_eq!(parse_listen_overflows("IpExt: X\nIpExt: 2\n"), None);
    }
}
