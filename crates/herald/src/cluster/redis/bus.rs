//! The bus: deliveries to and from other nodes over one Redis pub/sub channel.

use super::*;

/// A message between nodes on the shared pub/sub channel.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct BusMsg {
    /// Sending node.
    n: u32,
    #[serde(flatten)]
    body: Bus,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
pub(super) enum Bus {
    /// A frame for a channel's subscribers; `d` + `ttl` when a cache channel keeps it.
    #[serde(rename = "p")]
    Publish {
        a: String,
        c: String,
        f: String,
        x: Option<String>,
        d: Option<String>,
        ttl: Option<u64>,
    },
    #[serde(rename = "term")]
    Terminate { a: String, u: String },
    #[serde(rename = "w")]
    Watch { a: String, u: String, on: bool },
    /// A channel's cluster-wide subscription count; each node coalesces the frames it sends.
    #[serde(rename = "c")]
    Count { a: String, c: String, k: usize },
}

impl RedisAdapter {
    pub(super) fn bus_channel(&self) -> String {
        self.key(&["bus"])
    }

    pub(super) fn send(&self, body: Bus) {
        if !self.up() {
            // Redis is known to be away: this event stays with the local subscribers (documented).
            return;
        }
        let msg = BusMsg {
            n: self.inner.node_id,
            body,
        };
        let Ok(text) = serde_json::to_string(&msg) else {
            return;
        };
        if self
            .inner
            .bus
            .try_send((text, tokio::time::Instant::now()))
            .is_err()
        {
            tracing::warn!("cluster message queue full: a message for other nodes was dropped");
        }
    }

    pub(super) async fn send_bus(self, mut rx: mpsc::Receiver<(String, tokio::time::Instant)>) {
        let mut conn = self.connect().await;
        let channel = self.bus_channel();
        while let Some((msg, at)) = rx.recv().await {
            // One retry on a fresh connection: after a Redis restart the old one fails once.
            for attempt in 0..2 {
                if at.elapsed() > BUS_FRESH {
                    tracing::debug!(
                        "dropping a message for other nodes published while Redis was unreachable"
                    );
                    break;
                }
                let sent: redis::RedisResult<()> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&msg)
                    .query_async(&mut conn)
                    .await;
                match sent {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, attempt, "publishing to other nodes failed");
                        conn = self.connect().await;
                    }
                }
            }
        }
    }

    pub(super) async fn receive_bus(self) {
        use futures_util::StreamExt;
        let channel = self.bus_channel();
        loop {
            let mut pubsub = match self.inner.client.get_async_pubsub().await {
                Ok(p) => p,
                Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            if pubsub.subscribe(&channel).await.is_err() {
                tokio::time::sleep(RETRY).await;
                continue;
            }
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                let Ok(text) = msg.get_payload::<String>() else {
                    continue;
                };
                match serde_json::from_str::<BusMsg>(&text) {
                    Ok(m) if m.n != self.inner.node_id => self.inbound(m.body),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "unreadable cluster message"),
                }
            }
            self.set_up(false);
            tokio::time::sleep(RETRY).await;
        }
    }

    pub(super) fn inbound(&self, body: Bus) {
        let engine = self.engine();
        match body {
            Bus::Publish { a, c, f, x, d, ttl } => {
                let Ok(ch) = ChannelName::parse(&c, usize::MAX) else {
                    return;
                };
                let except = x.as_deref().and_then(SocketId::parse);
                let cache = d.as_deref().zip(ttl.map(Duration::from_millis));
                engine.deliver_local(&a, &ch, &Frame::from(f), except, cache);
            }
            Bus::Terminate { a, u } => {
                engine.terminate_user_local(&a, &u);
            }
            Bus::Watch { a, u, on } => engine.notify_watchers_local(&a, &u, on),
            Bus::Count { a, c, k } => {
                if let Ok(ch) = ChannelName::parse(&c, usize::MAX) {
                    engine.deliver_count(&a, &ch, k);
                }
            }
        }
    }

    /// Sends a frame to every subscriber of `channel` on every node (but `except`).
    pub(super) fn broadcast(
        &self,
        app: &str,
        channel: &ChannelName,
        frame: String,
        except: Option<SocketId>,
    ) {
        self.engine()
            .deliver_local(app, channel, &Frame::from(frame.clone()), except, None);
        self.send(Bus::Publish {
            a: app.to_owned(),
            c: channel.to_string(),
            f: frame,
            x: except.map(|s| s.to_string()),
            d: None,
            ttl: None,
        });
    }
}
