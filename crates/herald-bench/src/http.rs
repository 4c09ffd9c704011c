//! Publishing through the signed HTTP API over one keep-alive connection.

use crate::net::{BenchError, Target};
use crate::sign;
use crate::tls::Wire;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;

/// The JSON body of a trigger request.
pub fn event_body(name: &str, channels: &[&str], data: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "name": name, "channels": channels, "data": data }))
        .expect("serialisable")
}

type Connection = hyper::client::conn::http1::Connection<TokioIo<Wire<TcpStream>>, Full<Bytes>>;

/// One HTTP/1.1 connection, reopened after an error. The connection is driven by the task that
/// publishes (not a task of its own), so a request costs no hand-off between threads on the
/// client side: measured latency is the server's and the network's.
pub struct Publisher {
    target: Arc<Target>,
    /// The server this publisher talks to, and the Host header it sends.
    addr: std::net::SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    conn: Option<Pin<Box<Connection>>>,
    /// Connections opened (1 on a healthy run).
    pub connections: u64,
}

impl Publisher {
    pub fn new(target: Arc<Target>) -> Self {
        let (addr, host) = (target.addr, target.host.clone());
        Self {
            target,
            addr,
            host,
            sender: None,
            conn: None,
            connections: 0,
        }
    }

    /// A publisher to HTTP API endpoint `i` of `--api-ports` (modulo their number; `--port`
    /// when none were given).
    pub fn via(target: Arc<Target>, i: usize) -> Self {
        let addr = target.api_addr(i);
        let mut p = Self::new(target);
        if addr != p.addr {
            p.host = addr.to_string();
            p.addr = addr;
        }
        p
    }

    async fn connect(&mut self) -> Result<(), BenchError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) || self.conn.is_none() {
            let tcp = self.target.tcp_to(self.addr, None).await?;
            let stream = self.target.tls().wrap(tcp).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| BenchError::new("http_connect", e))?;
            self.connections += 1;
            self.sender = Some(sender);
            self.conn = Some(Box::pin(conn));
        }
        Ok(())
    }

    /// `POST /apps/{id}/events`; Ok when the server answers 200.
    pub async fn trigger(
        &mut self,
        channels: &[&str],
        name: &str,
        data: &str,
    ) -> Result<(), BenchError> {
        let body = event_body(name, channels, data);
        let path = format!("/apps/{}/events", self.target.app_id);
        let query = sign::signed_query(
            "POST",
            &path,
            &self.target.key,
            &self.target.secret,
            unix_now(),
            &body,
        );
        let req = Request::post(format!("{path}?{query}"))
            .header(header::HOST, self.host.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| BenchError::new("http_request", e))?;
        self.send(req).await.map(drop)
    }

    /// A signed `GET /apps/{id}{rest}` (`rest`: `/channels`, `/channels/NAME`); the body of a
    /// 200 answer.
    pub async fn get(&mut self, rest: &str) -> Result<Bytes, BenchError> {
        self.get_with(rest, &[]).await
    }

    /// A signed `GET /apps/{id}{rest}` with query parameters (`filter_by_prefix`, `info`; values
    /// that need no URL encoding); the body of a 200 answer.
    pub async fn get_with(
        &mut self,
        rest: &str,
        params: &[(&str, &str)],
    ) -> Result<Bytes, BenchError> {
        let path = format!("/apps/{}{rest}", self.target.app_id);
        let query = sign::signed_get_query_with(
            &path,
            &self.target.key,
            &self.target.secret,
            unix_now(),
            params,
        );
        let req = Request::get(format!("{path}?{query}"))
            .header(header::HOST, self.host.as_str())
            .body(Full::new(Bytes::new()))
            .map_err(|e| BenchError::new("http_request", e))?;
        self.send(req).await
    }

    /// Sends one request on the connection (opened first if need be); the body of a 200 answer.
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Bytes, BenchError> {
        let result = async {
            self.connect().await?;
            let (Some(sender), Some(conn)) = (self.sender.as_mut(), self.conn.as_mut()) else {
                return Err(BenchError::new("http_connect", "not connected"));
            };
            let exchange = async {
                sender
                    .ready()
                    .await
                    .map_err(|e| BenchError::new("http_connect", e))?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| BenchError::new("http_io", e))?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| BenchError::new("http_io", e))?
                    .to_bytes();
                Ok((status, body))
            };
            let (status, body) = tokio::select! {
                r = exchange => r?,
                r = conn.as_mut() => {
                    return Err(BenchError::new(
                        "http_io",
                        format!("connection ended: {:?}", r.err()),
                    ));
                }
            };
            if status != StatusCode::OK {
                return Err(BenchError::new(
                    status_kind(status),
                    format!("{status}: {}", String::from_utf8_lossy(&body)),
                ));
            }
            Ok(body)
        }
        .await;
        if matches!(&result, Err(e) if !e.kind.starts_with(STATUS_KIND)) {
            self.sender = None;
            self.conn = None;
        }
        result
    }
}

/// The error kind of an answer other than 200 starts with this.
pub const STATUS_KIND: &str = "http_status";
/// The kinds of the answers that say "not now, try again": the server's backpressure.
pub const REJECTED_429: &str = "http_status_429";
pub const REJECTED_503: &str = "http_status_503";

/// The error kind of an HTTP answer other than 200: 429 and 503 (backpressure) have kinds of
/// their own, so a run can count them apart from failures.
pub fn status_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => REJECTED_429,
        503 => REJECTED_503,
        _ => STATUS_KIND,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backpressure_answers_have_kinds_of_their_own() {
        assert_eq!(status_kind(StatusCode::TOO_MANY_REQUESTS), REJECTED_429);
        assert_eq!(status_kind(StatusCode::SERVICE_UNAVAILABLE), REJECTED_503);
        assert_eq!(status_kind(StatusCode::BAD_REQUEST), STATUS_KIND);
        assert!(REJECTED_429.starts_with(STATUS_KIND) && REJECTED_503.starts_with(STATUS_KIND));
    }

    #[test]
    fn body_keeps_data_as_a_string() {
        let b = event_body("foo", &["project-3"], r#"{"some":"data"}"#);
        assert_eq!(
            b,
            br#"{"channels":["project-3"],"data":"{\"some\":\"data\"}","name":"foo"}"#.to_vec()
        );
    }
}
