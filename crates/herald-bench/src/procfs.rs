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
    fn reads_machine_ticks() {
        let s = "cpu  100 5 50 800 20 0 10 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine_ticks(s), Some((165, 985)));
    }

    #[test]
    fn reads_own_process() {
        let p = sample("self").expect("/proc/self");
        assert!(p.rss_kb > 0);
    }
}
