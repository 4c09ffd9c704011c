//! Observing the broker of a cluster from outside, with the `redis` crate: one connection that
//! runs one command at a time, `INFO` fields and `SLOWLOG GET` entries. The connection counts
//! the bytes it sends and receives (RESP2, as Redis counts them) so that a measurement can take
//! its own traffic out of Redis's `total_net_*_bytes`, and names itself (`CLIENT SETNAME`) so
//! that its own commands can be told apart in `SLOWLOG`.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, FromRedisValue, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// How long connecting, and one command, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The client's name (`CLIENT SETNAME`; empty when it has none).
    pub name: String,
}

/// The entries of a `SLOWLOG GET` reply (unreadable entries are skipped).
pub fn slowlog_entries(reply: &Value) -> Vec<SlowEntry> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    let int = |v: Option<&Value>| i64::from_redis_value(v?).ok();
    let text = |v: Option<&Value>| v.and_then(|v| String::from_redis_value(v).ok());
    entries
        .iter()
        .filter_map(|e| {
            let Value::Array(f) = e else {
                return None;
            };
            let args = match f.get(3)? {
                Value::Array(a) => a.iter().filter_map(|a| text(Some(a))).collect(),
                _ => Vec::new(),
            };
            Some(SlowEntry {
                id: int(f.first())?,
                at: int(f.get(1))?,
                micros: int(f.get(2))?,
                args,
                client: text(f.get(4)).unwrap_or_default(),
                name: text(f.get(5)).unwrap_or_default(),
            })
        })
        .collect()
}

/// Decimal digits of `n`, its sign included.
fn digits(n: i64) -> u64 {
    let mut len = u64::from(n < 0) + 1;
    let mut m = n.unsigned_abs();
    while m >= 10 {
        m /= 10;
        len += 1;
    }
    len
}

/// The size of a reply on the wire, in RESP2 (what this connection speaks; RESP3-only types
/// do not occur on it and count 0).
pub fn reply_bytes(v: &Value) -> u64 {
    // A type byte, a header and CRLF.
    let line = |header: u64| 1 + header + 2;
    match v {
        Value::Nil => line(2),
        Value::Okay => line(2),
        Value::Int(i) => line(digits(*i)),
        Value::SimpleString(s) => line(s.len() as u64),
        Value::BulkString(b) => line(digits(b.len() as i64)) + b.len() as u64 + 2,
        Value::Array(items) => {
            line(digits(items.len() as i64)) + items.iter().map(reply_bytes).sum::<u64>()
        }
        Value::ServerError(e) => {
            line(e.code().len() as u64 + e.details().map_or(0, |d| 1 + d.len() as u64))
        }
        _ => 0,
    }
}

/// One connection to Redis.
pub struct Conn {
    conn: MultiplexedConnection,
    /// The name this connection gave itself (`CLIENT SETNAME`).
    pub name: String,
    /// Bytes written to Redis since the connection was set up.
    pub sent: u64,
    /// Bytes read from Redis since the connection was set up.
    pub received: u64,
    /// Whether a command failed for want of a reply (broken connection, timeout): the
    /// connection is not to be used again.
    pub broken: bool,
}

impl Conn {
    /// Connects, and names the connection `herald-bench-<pid>`.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let client = redis::Client::open(format!("redis://{addr}/"))
            .map_err(|e| format!("redis {addr}: {e}"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("redis {addr}: {e}"))?;
        let name = format!("herald-bench-{}", std::process::id());
        let mut c = Conn {
            conn,
            name,
            sent: 0,
            received: 0,
            broken: false,
        };
        let name = c.name.clone();
        c.cmd(&["CLIENT", "SETNAME", &name]).await?;
        Ok(c)
    }

    /// Sends one command and reads its reply; a Redis error reply is an `Err` (the connection
    /// stays usable), as is a broken connection or no reply within 5 s.
    pub async fn cmd(&mut self, args: &[&str]) -> Result<Value, String> {
        let mut cmd = redis::Cmd::new();
        for a in args {
            cmd.arg(*a);
        }
        self.sent += cmd.get_packed_command().len() as u64;
        let reply = self.conn.req_packed_command(&cmd).await.map_err(|e| {
            self.broken = true;
            format!("redis {}: {e}", args.join(" "))
        })?;
        self.received += reply_bytes(&reply);
        match reply {
            Value::ServerError(e) => Err(format!(
                "redis {}: {}",
                args.join(" "),
                redis::RedisError::from(e)
            )),
            r => Ok(r),
        }
    }

    /// `INFO section` as text.
    pub async fn info(&mut self, section: &str) -> Result<String, String> {
        let reply = self.cmd(&["INFO", section]).await?;
        String::from_redis_value(&reply).map_err(|e| format!("INFO: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_info_fields_by_exact_name() {
        let info = "# Stats\r\ntotal_net_input_bytes:51\r\ntotal_net_input_bytes_x:9\r\nused_cpu_sys:0.004625\r\n";
        assert_eq!(info_field(info, "total_net_input_bytes"), Some("51"));
        assert_eq!(info_field(info, "used_cpu_sys"), Some("0.004625"));
        assert_eq!(info_field(info, "total_net"), None);
    }

    #[test]
    fn reads_slowlog_entries() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = |id: i64, us: i64, args: &[&str], name: &str| {
            Value::Array(vec![
                Value::Int(id),
                Value::Int(1_796_643_201),
                Value::Int(us),
                Value::Array(args.iter().map(|a| bulk(a)).collect()),
                bulk("127.0.0.1:1"),
                bulk(name),
            ])
        };
        let reply = Value::Array(vec![
            entry(2, 29_600, &["EVALSHA", "abc", "1"], ""),
            Value::Int(7),
            entry(1, 3, &["PUBLISH", "bus", "x"], "herald-bench-1"),
        ]);
        let e = slowlog_entries(&reply);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].id, e[0].micros), (2, 29_600));
        assert_eq!(e[0].args, vec!["EVALSHA", "abc", "1"]);
        assert_eq!(e[0].name, "");
        assert_eq!(e[1].args[0], "PUBLISH");
        assert_eq!(e[1].client, "127.0.0.1:1");
        assert_eq!(e[1].name, "herald-bench-1");
        assert!(slowlog_entries(&Value::Int(1)).is_empty());
    }

    #[test]
    fn counts_replies_as_resp2_bytes() {
        let nested = "*3\r\n*1\r\n:1\r\n$0\r\n\r\n$12\r\nabcdefghijkl\r\n";
        for wire in [
            "+OK\r\n",
            "+QUEUED\r\n",
            "$-1\r\n",
            ":-42\r\n",
            ":7\r\n",
            "$3\r\nabc\r\n",
            nested,
            "-ERR no such key\r\n",
            "-NOSCRIPT\r\n",
        ] {
            let v = redis::parse_redis_value(wire.as_bytes()).unwrap();
            assert_eq!(reply_bytes(&v), wire.len() as u64, "{wire:?}");
        }
        assert_eq!(
            (digits(0), digits(9), digits(10), digits(-100)),
            (1, 1, 2, 4)
        );
    }
}
