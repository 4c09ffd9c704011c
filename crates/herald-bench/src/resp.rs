//! A minimal Redis client for observing the broker of a cluster from outside: RESP2 commands
//! and replies, `INFO` fields and `SLOWLOG GET` entries. One connection, one command at a time;
//! it counts the bytes it sends and receives so that a measurement can take its own traffic out
//! of Redis's `total_net_*_bytes`.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    /// A bulk string (None: the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// An array (None: the null array).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple or bulk string).
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the start of `buf`: Ok(None) while it is incomplete, else the reply
/// and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, rest)) = buf[..end].split_first() else {
        return Err("empty line".into());
    };
    let line = std::str::from_utf8(rest).map_err(|e| format!("not UTF-8: {e}"))?;
    let after = end + 2;
    let number = || {
        line.parse::<i64>()
            .map_err(|_| format!("bad length or integer {line:?}"))
    };
    match kind {
        b'+' => Ok(Some((Reply::Simple(line.into()), after))),
        b'-' => Ok(Some((Reply::Error(line.into()), after))),
        b':' => Ok(Some((Reply::Int(number()?), after))),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = n as usize;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err("bulk string without its CRLF".into());
            }
            Ok(Some((
                Reply::Bulk(Some(buf[after..after + n].to_vec())),
                after + n + 2,
            )))
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::with_capacity((n as usize).min(4096));
            let mut at = after;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(format!("unknown reply type {:?}", other as char)),
    }
}

/// A field of an `INFO` reply (`name:value` lines).
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// One entry of `SLOWLOG GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowEntry {
    pub id: i64,
    /// Unix time (seconds) the command was processed.
    pub at: i64,
    pub micros: i64,
    /// The command and its first arguments (Redis shortens long ones).
    pub args: Vec<String>,
    /// The client's address (`IP:PORT`).
    pub client: String,
}

/// The entries of a `SLOWLOG GET` reply (unreadable entries are skipped).
pub fn slowlog_entries(reply: &Reply) -> Vec<SlowEntry> {
    let Reply::Array(Some(entries)) = reply else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let Reply::Array(Some(f)) = e else {
                return None;
            };
            let args = match f.get(3)? {
                Reply::Array(Some(a)) => a.iter().filter_map(Reply::text).collect(),
                _ => Vec::new(),
            };
            Some(SlowEntry {
                id: f.first()?.int()?,
                at: f.get(1)?.int()?,
                micros: f.get(2)?.int()?,
                args,
                client: f.get(4).and_then(Reply::text).unwrap_or_default(),
            })
        })
        .collect()
}

/// One connection to Redis.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes written to Redis so far.
    pub sent: u64,
    /// Bytes read from Redis so far.
    pub received: u64,
}

/// How long one command may take.
const TIMEOUT: Duration = Duration::from_secs(5);

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("redis {addr}: connect timed out"))?
            .map_err(|e| format!("redis {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(8192),
            sent: 0,
            received: 0,
        })
    }

    /// This end's address, as Redis names the client (`IP:PORT`).
    pub fn local_addr(&self) -> Option<String> {
        self.stream.local_addr().ok().map(|a| a.to_string())
    }

    /// Sends one command and reads its reply; a Redis error reply is an `Err`.
    pub async fn cmd(&mut self, args: &[&str]) -> Result<Reply, String> {
        tokio::time::timeout(TIMEOUT, self.exchange(args))
            .await
            .map_err(|_| format!("redis {}: no reply within {TIMEOUT:?}", args.join(" ")))?
    }

    async fn exchange(&mut self, args: &[&str]) -> Result<Reply, String> {
        let out = encode(args);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("redis write: {e}"))?;
        self.sent += out.len() as u64;
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return match reply {
                    Reply::Error(e) => Err(format!("redis {}: {e}", args.join(" "))),
                    r => Ok(r),
                };
            }
            let mut chunk = [0u8; 16384];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("redis read: {e}"))?;
            if n == 0 {
                return Err("redis closed the connection".into());
            }
            self.received += n as u64;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `INFO section` as text.
    pub async fn info(&mut self, section: &str) -> Result<String, String> {
        self.cmd(&["INFO", section])
            .await?
            .text()
            .ok_or_else(|| "INFO: not a string".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(
            encode(&["INFO", "stats"]),
            b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n"
        );
        assert_eq!(encode(&[]), b"*0\r\n");
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Reply::Simple("OK".into()), 5))
        );
        assert_eq!(
            parse(b"-ERR no\r\n").unwrap(),
            Some((Reply::Error("ERR no".into()), 9))
        );
        assert_eq!(parse(b":-42\r\n").unwrap(), Some((Reply::Int(-42), 6)));
        assert_eq!(
            parse(b"$3\r\nabc\r\nrest").unwrap(),
            Some((Reply::Bulk(Some(b"abc".to_vec())), 9))
        );
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((Reply::Array(None), 5)));
        let nested = b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n";
        assert_eq!(
            parse(nested).unwrap(),
            Some((
                Reply::Array(Some(vec![
                    Reply::Array(Some(vec![Reply::Int(1)])),
                    Reply::Bulk(Some(Vec::new()))
                ])),
                nested.len()
            ))
        );
    }

    #[test]
    fn incomplete_replies_wait_for_more_and_garbage_is_an_error() {
        for partial in [&b""[..], b"+OK", b"$5\r\nab", b"$2\r\nab", b"*2\r\n:1\r\n"] {
            assert_eq!(parse(partial).unwrap(), None, "{partial:?}");
        }
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b"$2\r\nabcd").is_err());
        assert!(parse(b":x\r\n").is_err());
    }

    #[test]
    fn reads_info_fields_by_exact_name() {
        let info = "# Stats\r\ntotal_net_input_bytes:51\r\ntotal_net_input_bytes_x:9\r\nused_cpu_sys:0.004625\r\n";
        assert_eq!(info_field(info, "total_net_input_bytes"), Some("51"));
        assert_eq!(info_field(info, "used_cpu_sys"), Some("0.004625"));
        assert_eq!(info_field(info, "total_net"), None);
    }

    #[test]
    fn reads_slowlog_entries() {
        let entry = |id: i64, us: i64, args: &[&str]| {
            Reply::Array(Some(vec![
                Reply::Int(id),
                Reply::Int(1_796_643_201),
                Reply::Int(us),
                Reply::Array(Some(
                    args.iter()
                        .map(|a| Reply::Bulk(Some(a.as_bytes().to_vec())))
                        .collect(),
                )),
                Reply::Bulk(Some(b"127.0.0.1:1".to_vec())),
                Reply::Bulk(Some(Vec::new())),
            ]))
        };
        let reply = Reply::Array(Some(vec![
            entry(2, 29_600, &["EVALSHA", "abc", "1"]),
            Reply::Int(7),
            entry(1, 3, &["PUBLISH", "bus", "x"]),
        ]));
        let e = slowlog_entries(&reply);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].id, e[0].micros), (2, 29_600));
        assert_eq!(e[0].args, vec!["EVALSHA", "abc", "1"]);
        assert_eq!(e[1].args[0], "PUBLISH");
        assert_eq!(e[1].client, "127.0.0.1:1");
        assert!(slowlog_entries(&Reply::Int(1)).is_empty());
    }
}
