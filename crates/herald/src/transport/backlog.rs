//! The server port's listen backlog and the kernel's accept queue behind it: the backlog asked
//! for against the kernel's cap (`net.core.somaxconn`), and, while serving, what the kernel says
//! of the queue: its length on the server's listening socket and the listen-queue overflows it
//! counted (a connection attempt dropped because the queue was full, which the client sees as a
//! SYN retried after 1, 3, 7 s).
//!
//! `TCP_INFO` would give a socket's queue length and limit, but neither socket2 nor nix wraps it
//! and a raw `getsockopt` needs `unsafe`. The length comes from `/proc/net/tcp` (`tcp6` for an
//! IPv6 socket) instead, where a listening socket's `rx_queue` is its accept queue. The kernel
//! lists listening sockets before all others, so reading stops at the first line of another
//! state: a page or two however many connections are open. Overflows are counted by the kernel
//! for the whole network namespace only (`TcpExt: ListenOverflows` in `/proc/net/netstat`).

use std::io::BufRead;

const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";
const NETSTAT: &str = "/proc/net/netstat";
/// `st` of a listening socket in `/proc/net/tcp`.
const LISTEN: &str = "0A";
/// Lines read at most looking for the socket (listening sockets of the whole namespace).
const MAX_LINES: usize = 100_000;

/// The kernel's cap on any listen backlog, if readable.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string(SOMAXCONN).ok()?.trim().parse().ok()
}

/// The backlog the kernel applies when `asked` is passed to `listen`.
pub fn effective(asked: u32, somaxconn: Option<u32>) -> u32 {
    somaxconn.map_or(asked, |cap| asked.min(cap))
}

/// `ListenOverflows` and `ListenDrops` from the text of `/proc/net/netstat`: a `TcpExt:` line of
/// names followed by a `TcpExt:` line of values.
pub fn parse_netstat(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    let (mut overflows, mut drops) = (None, None);
    for (n, v) in names.zip(values) {
        match n {
            "ListenOverflows" => overflows = v.parse().ok(),
            "ListenDrops" => drops = v.parse().ok(),
            _ => {}
        }
    }
    Some((overflows?, drops?))
}

/// The accept queue of the listening socket `inode` from the lines of `/proc/net/tcp(6)`
/// (header first): `rx_queue`, in hex. None once the listening sockets are past.
pub fn parse_queue(lines: impl Iterator<Item = String>, inode: u64) -> Option<u64> {
    for line in lines.skip(1).take(MAX_LINES) {
        // sl local remote st tx_queue:rx_queue tr:when retrnsmt uid timeout inode ...
        let f: Vec<&str> = line.split_whitespace().take(10).collect();
        if f.len() < 10 || f[3] != LISTEN {
            return None;
        }
        if f[9].parse() == Ok(inode) {
            let rx = f[4].split_once(':')?.1;
            return u64::from_str_radix(rx, 16).ok();
        }
    }
    None
}

/// The inode of the socket behind descriptor `fd` of this process (`socket:[N]`).
fn socket_inode(fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// One listening socket as the kernel sees it, read on demand (at scrape time).
#[derive(Debug)]
pub struct ListenQueue {
    inode: u64,
    table: &'static str,
    /// The backlog it was bound with after the kernel's cap, when known.
    pub backlog: Option<u32>,
    /// The namespace's `ListenOverflows` when serving began.
    overflows_at_start: Option<u64>,
}

impl ListenQueue {
    /// The queue of `listener`, or None where `/proc` does not say (not Linux).
    #[cfg(unix)]
    pub fn of(listener: &tokio::net::TcpListener, backlog: Option<u32>) -> Option<Self> {
        use std::os::fd::AsRawFd;
        let inode = socket_inode(listener.as_raw_fd())?;
        let v6 = listener.local_addr().ok()?.is_ipv6();
        Some(Self {
            inode,
            table: if v6 {
                "/proc/net/tcp6"
            } else {
                "/proc/net/tcp"
            },
            backlog,
            overflows_at_start: overflows(),
        })
    }

    #[cfg(not(unix))]
    pub fn of(_: &tokio::net::TcpListener, _: Option<u32>) -> Option<Self> {
        None
    }

    /// Connections accepted by the kernel and waiting for the server's `accept`.
    pub fn length(&self) -> Option<u64> {
        let f = std::fs::File::open(self.table).ok()?;
        let lines = std::io::BufReader::new(f).lines().map_while(Result::ok);
        parse_queue(lines, self.inode)
    }

    /// Listen-queue overflows in this network namespace (every listening socket of the host,
    /// unless the server runs in a namespace of its own) since serving began.
    pub fn overflows_since_start(&self) -> Option<u64> {
        Some(overflows()?.saturating_sub(self.overflows_at_start?))
    }
}

fn overflows() -> Option<u64> {
    parse_netstat(&std::fs::read_to_string(NETSTAT).ok()?).map(|(o, _)| o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_cap_applies() {
        assert_eq!(effective(8192, Some(4096)), 4096);
        assert_eq!(effective(1024, Some(4096)), 1024);
        assert_eq!(effective(1024, None), 1024);
    }

    #[test]
    fn reads_netstat_counters_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\nTcpExt: 3 17 19 400\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_netstat(text), Some((17, 19)));
        assert_eq!(parse_netstat("IpExt: a\nIpExt: 1\n"), None);
        assert_eq!(parse_netstat("TcpExt: ListenOverflows\nTcpExt: x\n"), None);
    }

    #[test]
    fn finds_the_queue_among_listening_sockets_and_stops_after_them() {
        let head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        let table = [
            head,
            "   0: 0100007F:1771 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0",
            "   1: 00000000:1F91 00000000:0000 0A 00000000:0000002A 00:00000000 00000000  1000        0 222 1 0000000000000000 100 0 0 10 0",
            "   2: 0100007F:1F91 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 20 4 30 10 -1",
        ];
        let lines = || table.iter().map(|s| s.to_string());
        assert_eq!(parse_queue(lines(), 222), Some(42));
        assert_eq!(parse_queue(lines(), 111), Some(0));
        // An established socket is past the listening ones: not looked at.
        assert_eq!(parse_queue(lines(), 333), None);
        assert_eq!(parse_queue(lines(), 999), None);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn reads_its_own_listening_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let q = ListenQueue::of(&l, Some(128)).expect("/proc describes the socket");
        assert_eq!(q.length(), Some(0));
        // Two connections the server has not accepted wait in the queue.
        let addr = l.local_addr().unwrap();
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(q.length(), Some(2));
        assert!(q.overflows_since_start().is_some());
    }
}
