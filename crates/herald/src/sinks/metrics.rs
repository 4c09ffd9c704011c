//! Prometheus metrics, labelled by app. Gauges are read from the engine (and the listen queue from
//! the kernel) at scrape time, so no
//! extra bookkeeping runs on the hot path; counters on the hot path are taken per connection once
//! and incremented per batch.

use crate::transport::backlog::ListenQueue;
use herald_core::{Engine, LifecycleEvent, LifecycleSink};
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    connections: IntGaugeVec,
    fallback_sessions: IntGaugeVec,
    channels: IntGaugeVec,
    subscriptions: IntGaugeVec,
    connections_opened: IntCounterVec,
    messages_in: IntCounterVec,
    bytes_in: IntCounterVec,
    messages_out: IntCounterVec,
    bytes_out: IntCounterVec,
    compressed_out: IntCounterVec,
    compressed_bytes_out: IntCounterVec,
    http_requests: IntCounterVec,
    webhooks: IntCounterVec,
    slow_consumers: IntCounterVec,
    rejections: IntCounterVec,
    accept_failures: IntCounterVec,
    refused: IntCounterVec,
    adapter_up: IntGauge,
    cluster_up: IntGauge,
    cluster_dropped: IntCounterVec,
    cluster_garbage: IntCounter,
    listen_queue_length: IntGauge,
    listen_backlog: IntGauge,
    listen_overflows: IntCounter,
    /// The server port's listening socket, read at scrape time (set once serving begins).
    listen: Arc<parking_lot::Mutex<Option<ListenQueue>>>,
    /// One set of hot-path counters per app, shared by its connections.
    per_app:
        std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<String, Arc<ConnCounters>>>>,
}

/// Hot-path counters of one connection's app.
#[derive(Debug, Clone)]
pub struct ConnCounters {
    pub messages_in: IntCounter,
    pub bytes_in: IntCounter,
    pub messages_out: IntCounter,
    pub bytes_out: IntCounter,
    /// Of the messages sent, those compressed (`permessage-deflate`), and their bytes.
    pub compressed_out: IntCounter,
    pub compressed_bytes_out: IntCounter,
}

impl ConnCounters {
    /// Counts a compressed server frame that went out whole (RSV1 marks it).
    pub fn sent_frame(&self, frame: &[u8]) {
        if frame
            .first()
            .is_some_and(|b| b & herald_protocol::wsdeflate::RSV1 != 0)
        {
            self.compressed_out.inc();
            self.compressed_bytes_out.inc_by(frame.len() as u64);
        }
    }
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric names are valid");
    reg.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric names are valid");
    reg.register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let adapter_up = IntGauge::new(
            "herald_cluster_adapter_up",
            "1 while the cluster adapter is connected (always 1 for a single node)",
        )
        .expect("metric names are valid");
        r.register(Box::new(adapter_up.clone()))
            .expect("metric names are unique");
        adapter_up.set(1);
        let cluster_up = IntGauge::new(
            "herald_cluster_up",
            "1 while the cluster's broker is reachable (always 1 for a single node)",
        )
        .expect("metric names are valid");
        r.register(Box::new(cluster_up.clone()))
            .expect("metric names are unique");
        cluster_up.set(1);
        let cluster_garbage = IntCounter::new(
            "herald_cluster_unreadable_total",
            "Messages on the broker's channels that were not Herald's (or not readable)",
        )
        .expect("metric names are valid");
        r.register(Box::new(cluster_garbage.clone()))
            .expect("metric names are unique");
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric names are valid");
            r.register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let listen_queue_length = int_gauge(
            "herald_listen_queue_length",
            "Connections the kernel accepted on the server port that wait for the server to take them (read at scrape time)",
        );
        let listen_backlog = int_gauge(
            "herald_listen_backlog",
            "The server port's listen backlog after the kernel's cap (net.core.somaxconn); 0 when not known",
        );
        let listen_overflows = IntCounter::new(
            "herald_listen_queue_overflows_total",
            "Connection attempts the kernel dropped because a listen queue was full, since the server started: host-wide (TcpExt ListenOverflows of the network namespace), not only this server's port",
        )
        .expect("metric names are valid");
        r.register(Box::new(listen_overflows.clone()))
            .expect("metric names are unique");
        Self {
            connections: gauge(
                &r,
                "herald_connections",
                "Open connections (WebSocket and HTTP fallback sessions)",
                &["app"],
            ),
            fallback_sessions: gauge(
                &r,
                "herald_fallback_sessions",
                "Open sessions on the HTTP fallback transports, by transport (counted in herald_connections too)",
                &["app", "transport"],
            ),
            channels: gauge(&r, "herald_channels", "Occupied channels", &["app"]),
            subscriptions: gauge(
                &r,
                "herald_subscriptions",
                "Channel subscriptions",
                &["app"],
            ),
            connections_opened: counter(
                &r,
                "herald_connections_opened_total",
                "WebSocket connections accepted",
                &["app"],
            ),
            messages_in: counter(
                &r,
                "herald_ws_messages_received_total",
                "WebSocket messages received from clients",
                &["app"],
            ),
            bytes_in: counter(
                &r,
                "herald_ws_received_bytes_total",
                "WebSocket payload bytes received from clients",
                &["app"],
            ),
            messages_out: counter(
                &r,
                "herald_ws_messages_sent_total",
                "WebSocket messages sent to clients",
                &["app"],
            ),
            bytes_out: counter(
                &r,
                "herald_ws_sent_bytes_total",
                "WebSocket payload bytes sent to clients",
                &["app"],
            ),
            compressed_out: counter(
                &r,
                "herald_ws_compressed_messages_sent_total",
                "WebSocket messages sent to clients compressed (permessage-deflate)",
                &["app"],
            ),
            compressed_bytes_out: counter(
                &r,
                "herald_ws_compressed_sent_bytes_total",
                "WebSocket bytes of the messages sent compressed (permessage-deflate), frame headers included",
                &["app"],
            ),
            http_requests: counter(
                &r,
                "herald_http_requests_total",
                "HTTP API requests by route and status",
                &["app", "route", "status"],
            ),
            webhooks: counter(
                &r,
                "herald_webhooks_total",
                "Webhook requests by outcome (delivered, retried, failed, dropped, spooled)",
                &["app", "outcome"],
            ),
            slow_consumers: counter(
                &r,
                "herald_slow_consumer_disconnects_total",
                "Connections closed because their outbox overflowed or a write to them stalled",
                &["app"],
            ),
            rejections: counter(
                &r,
                "herald_limit_rejections_total",
                "Requests refused by a limit or rate limit",
                &["app", "limit"],
            ),
            accept_failures: counter(
                &r,
                "herald_accept_failures_total",
                "Failed accepts (usually out of file descriptors), by port",
                &["port"],
            ),
            refused: counter(
                &r,
                "herald_connections_refused_total",
                "Connections refused before any app was known, by port and reason",
                &["port", "reason"],
            ),
            adapter_up,
            cluster_up,
            cluster_dropped: counter(
                &r,
                "herald_cluster_dropped_total",
                "Messages that did not reach every interested node, by reason: `unreachable` (the broker was down or did not take it: refused, an API publish answered 503), `local_only` (delivered to this node only during an outage), `gap` (this node's subscriptions were lost and renewed: messages meanwhile were missed), `busy` (refused: queue full)",
                &["reason"],
            ),
            cluster_garbage,
            listen_queue_length,
            listen_backlog,
            listen_overflows,
            listen: Default::default(),
            per_app: Default::default(),
            registry: r,
        }
    }

    pub fn accept_failed(&self, port: &str) {
        self.accept_failures.with_label_values(&[port]).inc();
    }

    pub fn refused(&self, port: &str, reason: &str) {
        self.refused.with_label_values(&[port, reason]).inc();
    }

    /// Reports the cluster broker's connection state.
    pub fn set_adapter_up(&self, up: bool) {
        self.adapter_up.set(i64::from(up));
        self.cluster_up.set(i64::from(up));
    }

    /// Counts `n` messages that did not reach every interested node.
    pub fn cluster_dropped(&self, reason: &str, n: u64) {
        self.cluster_dropped.with_label_values(&[reason]).inc_by(n);
    }

    /// Counts a message on the broker that could not be read.
    pub fn cluster_garbage(&self) {
        self.cluster_garbage.inc();
    }

    pub fn conn_counters(&self, app: &str) -> Arc<ConnCounters> {
        if let Some(c) = self.per_app.lock().get(app) {
            return c.clone();
        }
        let c = Arc::new(ConnCounters {
            messages_in: self.messages_in.with_label_values(&[app]),
            bytes_in: self.bytes_in.with_label_values(&[app]),
            messages_out: self.messages_out.with_label_values(&[app]),
            bytes_out: self.bytes_out.with_label_values(&[app]),
            compressed_out: self.compressed_out.with_label_values(&[app]),
            compressed_bytes_out: self.compressed_bytes_out.with_label_values(&[app]),
        });
        self.per_app.lock().insert(app.to_owned(), c.clone());
        c
    }

    pub fn http(&self, app: &str, route: &str, status: u16) {
        self.http_requests
            .with_label_values(&[app, route, &status.to_string()])
            .inc();
    }

    pub fn webhook(&self, app: &str, outcome: &str) {
        self.webhooks.with_label_values(&[app, outcome]).inc();
    }

    /// A session on an HTTP fallback transport opened (`+1`) or ended (`-1`).
    pub fn fallback_session(&self, app: &str, transport: &str, delta: i64) {
        self.fallback_sessions
            .with_label_values(&[app, transport])
            .add(delta);
    }

    pub fn slow_consumer(&self, app: &str) {
        self.slow_consumers.with_label_values(&[app]).inc();
    }

    /// A limit refused something: `limit` names which (client_event_rate, api_rate, …).
    pub fn rejected(&self, app: &str, limit: &str) {
        self.rejections.with_label_values(&[app, limit]).inc();
    }

    /// Reports the server port's listen queue from now on.
    pub fn watch_listen_queue(&self, queue: ListenQueue) {
        self.listen_backlog.set(queue.backlog.map_or(0, i64::from));
        *self.listen.lock() = Some(queue);
    }

    /// Reads the kernel's view of the listen queue: two small reads of `/proc` per scrape, none
    /// while nobody scrapes.
    fn sample_listen_queue(&self) {
        let listen = self.listen.lock();
        let Some(q) = listen.as_ref() else {
            return;
        };
        if let Some(n) = q.length() {
            self.listen_queue_length.set(n as i64);
        }
        // The counter follows the kernel's: whatever it counted since the last scrape.
        if let Some(total) = q.overflows_since_start() {
            let seen = self.listen_overflows.get();
            if total > seen {
                self.listen_overflows.inc_by(total - seen);
            }
        }
    }

    /// Renders the text exposition format, reading gauges from the engine and the kernel first.
    pub fn render(&self, engine: &Engine) -> String {
        self.sample_listen_queue();
        for app in engine.apps().all() {
            let (channels, subs) = engine.channel_totals(&app.id);
            self.connections
                .with_label_values(&[&app.id])
                .set(engine.connection_count(&app.id) as i64);
            self.channels
                .with_label_values(&[&app.id])
                .set(channels as i64);
            self.subscriptions
                .with_label_values(&[&app.id])
                .set(subs as i64);
        }
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl LifecycleSink for Metrics {
    fn emit(&self, event: &LifecycleEvent) {
        if let LifecycleEvent::Connected { app, .. } = event {
            self.connections_opened.with_label_values(&[app]).inc();
        }
    }
}
