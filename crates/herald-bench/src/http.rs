//! Publishing through the signed HTTP API over one keep-alive connection.

use crate::net::{BenchError, Target};
use crate::sign;
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

type Connection = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One HTTP/1.1 connection, reopened after an error. The connection is driven by the task that
/// publishes (not a task of its own), so a request costs no hand-off between threads on the
/// client side: measured latency is the server's and the network's.
pub struct Publisher {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
    conn: Option<Pin<Box<Connection>>>,
    /// Connections opened (1 on a healthy run).
    pub connections: u64,
}

impl Publisher {
    pub fn new(target: Arc<Target>) -> Self {
        Self {
            target,
            sender: None,
            conn: None,
            connections: 0,
        }
    }

    async fn connect(&mut self) -> Result<(), BenchError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) || self.conn.is_none() {
            let stream = self.target.tcp().await?;
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
            .header(header::HOST, self.target.host.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| BenchError::new("http_request", e))?;
        self.send(req).await.map(drop)
    }

    /// A signed `GET /apps/{id}{rest}` (`rest`: `/channels`, `/channels/NAME`); the body of a
    /// 200 answer.
    pub async fn get(&mut self, rest: &str) -> Result<Bytes, BenchError> {
        let path = format!("/apps/{}{rest}", self.target.app_id);
        let query =
            sign::signed_get_query(&path, &self.target.key, &self.target.secret, unix_now());
        let req = Request::get(format!("{path}?{query}"))
            .header(header::HOST, self.target.host.as_str())
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
                    "http_status",
                    format!("{status}: {}", String::from_utf8_lossy(&body)),
                ));
            }
            Ok(body)
        }
        .await;
        if matches!(&result, Err(e) if e.kind != "http_status") {
            self.sender = None;
            self.conn = None;
        }
        result
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
    fn body_keeps_data_as_a_string() {
        let b = event_body("foo", &["project-3"], r#"{"some":"data"}"#);
        assert_eq!(
            b,
            br#"{"channels":["project-3"],"data":"{\"some\":\"data\"}","name":"foo"}"#.to_vec()
        );
    }
}
