//! Typed Prometheus handles. Metric names take a configurable prefix (default `resound`); the
//! names that exist in Soketi keep Soketi's suffixes, so `metrics_prefix = "soketi"` keeps its
//! dashboards working. Per-app handles are resolved once, so the hot path only bumps atomics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::connection::deflate::CompressionMetrics;
use crate::protocol::ChannelKind;

/// Every metric of the server.
pub struct Metrics {
    pub registry: Registry,
    pub prefix: String,
    connected: IntGaugeVec,
    new_connections: IntCounterVec,
    disconnections: IntCounterVec,
    ws_messages_received: IntCounterVec,
    ws_messages_sent: IntCounterVec,
    socket_received_bytes: IntCounterVec,
    socket_transmitted_bytes: IntCounterVec,
    subscriptions: IntGaugeVec,
    channels: IntGaugeVec,
    client_events: IntCounterVec,
    published_events: IntCounterVec,
    http_calls: IntCounterVec,
    pub http_received_bytes: IntCounter,
    pub http_transmitted_bytes: IntCounter,
    slow_consumers: IntCounterVec,
    rate_limited: IntCounterVec,
    refused: IntCounterVec,
    pub fanout_size: Histogram,
    pub http_request_seconds: HistogramVec,
    /// Bytes held by this node in partially received client messages (frame buffers and
    /// fragments being assembled), within `server.partial_message_node_bytes`.
    pub partial_message_bytes: IntGauge,
    /// Bytes of the node's outbound budget (`server.outbound_node_bytes`) reserved by
    /// connections whose queue holds more than their free allowance.
    pub outbound_reserved_bytes: IntGauge,
    /// Connections closed because a node-wide memory budget was spent, by budget.
    pub partial_budget_disconnects: IntCounter,
    pub outbound_budget_disconnects: IntCounter,
    /// WebSockets refused by a node admission limit (`server.max_memory_bytes`,
    /// `server.max_connections_per_ip`), by limit.
    pub memory_refusals: IntCounter,
    pub per_ip_refusals: IntCounter,
    /// Open connections on this node by transport (`ws`, `xhr_streaming`, `xhr_polling`, `sse`);
    /// `connected` counts them all, by app.
    connections_by_transport: IntGaugeVec,
    /// HTTP API requests (or batch events) answered from a remembered idempotency key.
    pub idempotent_replays: IntCounter,
    /// Idempotency keys forgotten before their window ended (a node's store was full).
    pub idempotency_evictions: IntCounter,
    /// Broadcast frames compressed for `permessage-deflate` sockets (once per frame).
    pub compression: CompressionMetrics,
    /// Resumes of a channel's history (protocol.md 11.2), by outcome (`recovered`, or the
    /// failure's reason).
    pub history_resumes: IntCounterVec,
    /// Events of channels with history that a cluster could not record (delivered without a
    /// position).
    pub history_record_failures: IntCounter,
}

/// Handles of one app, resolved once.
#[derive(Clone)]
pub struct AppMetrics {
    pub connected: IntGauge,
    pub new_connections: IntCounter,
    pub ws_messages_received: IntCounter,
    pub ws_messages_sent: IntCounter,
    pub socket_received_bytes: IntCounter,
    pub socket_transmitted_bytes: IntCounter,
    pub client_events: IntCounter,
    pub api_events: IntCounter,
    pub slow_consumers: IntCounter,
    pub client_events_rate_limited: IntCounter,
    pub backend_rate_limited: IntCounter,
    pub read_rate_limited: IntCounter,
    /// Subscribes refused by `max_subscribes_per_second`.
    pub subscribes_rate_limited: IntCounter,
    /// Subscribes refused by `max_channels_per_connection`.
    pub channel_limited: IntCounter,
    subscriptions: Vec<IntGauge>,
    channels: Vec<IntGauge>,
    disconnections: IntCounterVec,
    app_id: String,
}

impl AppMetrics {
    fn kind_index(kind: ChannelKind) -> usize {
        ChannelKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0)
    }
    pub fn subscriptions(&self, kind: ChannelKind) -> &IntGauge {
        &self.subscriptions[Self::kind_index(kind)]
    }
    pub fn channels(&self, kind: ChannelKind) -> &IntGauge {
        &self.channels[Self::kind_index(kind)]
    }
    pub fn disconnected(&self, code: u16) {
        self.disconnections
            .with_label_values(&[self.app_id.as_str(), &code.to_string()])
            .inc();
    }
}

macro_rules! register {
    ($registry:expr, $metric:expr) => {{
        let m = $metric;
        $registry.register(Box::new(m.clone()))?;
        m
    }};
}

impl Metrics {
    pub fn new(prefix: &str) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        // The process's CPU seconds, resident memory, open and maximum file descriptors and
        // threads, as `process_*` (the names every exporter uses).
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let o = |name: &str, help: &str| Opts::new(name, help).namespace(prefix.to_string());
        let admission_refusals = register!(
            registry,
            IntCounterVec::new(
                o(
                    "admission_refused_total",
                    "WebSockets refused (4100) by a node admission limit, by limit (memory, per_ip)"
                ),
                &["limit"]
            )?
        );
        let budget_disconnects = register!(
            registry,
            IntCounterVec::new(
                o(
                    "budget_disconnects_total",
                    "Connections closed because a node-wide memory budget was spent (4100), by budget"
                ),
                &["budget"]
            )?
        );
        let history_resumes = register!(
            registry,
            IntCounterVec::new(
                o(
                    "history_resumes_total",
                    "Resumes of a channel's history, by outcome (recovered, window_exceeded, history_lost, no_history, history_unavailable)"
                ),
                &["outcome"]
            )?
        );
        let history_record_failures = register!(
            registry,
            IntCounter::with_opts(o(
                "history_record_failures_total",
                "Events of channels with history a cluster could not record in its shared history (delivered without a position)"
            ))?
        );
        let m = Metrics {
            history_resumes,
            history_record_failures,
            connected: register!(
                registry,
                IntGaugeVec::new(o("connected", "Open WebSocket connections"), &["app_id"])?
            ),
            new_connections: register!(
                registry,
                IntCounterVec::new(
                    o("new_connections_total", "WebSocket connections established"),
                    &["app_id"]
                )?
            ),
            disconnections: register!(
                registry,
                IntCounterVec::new(
                    o(
                        "new_disconnections_total",
                        "WebSocket connections closed, by close code"
                    ),
                    &["app_id", "code"]
                )?
            ),
            ws_messages_received: register!(
                registry,
                IntCounterVec::new(
                    o("ws_messages_received_total", "WebSocket messages received"),
                    &["app_id"]
                )?
            ),
            ws_messages_sent: register!(
                registry,
                IntCounterVec::new(
                    o("ws_messages_sent_total", "WebSocket messages sent"),
                    &["app_id"]
                )?
            ),
            socket_received_bytes: register!(
                registry,
                IntCounterVec::new(
                    o("socket_received_bytes", "WebSocket payload bytes received"),
                    &["app_id"]
                )?
            ),
            socket_transmitted_bytes: register!(
                registry,
                IntCounterVec::new(
                    o("socket_transmitted_bytes", "WebSocket payload bytes sent"),
                    &["app_id"]
                )?
            ),
            subscriptions: register!(
                registry,
                IntGaugeVec::new(
                    o(
                        "subscriptions",
                        "Channel subscriptions on this node, by channel kind"
                    ),
                    &["app_id", "kind"]
                )?
            ),
            channels: register!(
                registry,
                IntGaugeVec::new(
                    o(
                        "channels",
                        "Occupied channels on this node, by channel kind"
                    ),
                    &["app_id", "kind"]
                )?
            ),
            client_events: register!(
                registry,
                IntCounterVec::new(
                    o("client_events_total", "Client events accepted and relayed"),
                    &["app_id"]
                )?
            ),
            published_events: register!(
                registry,
                IntCounterVec::new(
                    o(
                        "api_events_total",
                        "Events published through the HTTP API (one per target channel)"
                    ),
                    &["app_id"]
                )?
            ),
            http_calls: register!(
                registry,
                IntCounterVec::new(
                    o(
                        "http_calls_received_total",
                        "HTTP requests, by endpoint and status"
                    ),
                    &["endpoint", "status"]
                )?
            ),
            http_received_bytes: register!(
                registry,
                IntCounter::with_opts(o(
                    "http_received_bytes",
                    "HTTP request body bytes received"
                ))?
            ),
            http_transmitted_bytes: register!(
                registry,
                IntCounter::with_opts(o(
                    "http_transmitted_bytes",
                    "HTTP response body bytes sent"
                ))?
            ),
            slow_consumers: register!(
                registry,
                IntCounterVec::new(
                    o(
                        "slow_consumer_disconnects_total",
                        "Connections closed because their outbound queue was full"
                    ),
                    &["app_id"]
                )?
            ),
            rate_limited: register!(
                registry,
                IntCounterVec::new(
                    o(
                        "rate_limited_total",
                        "Requests, events or subscriptions refused by a rate or per-connection limit"
                    ),
                    &["app_id", "limit"]
                )?
            ),
            refused: register!(
                registry,
                IntCounterVec::new(
                    o(
                        "connections_refused_total",
                        "WebSocket handshakes refused, by close code (4001 unknown app, 4004 quota, 4009 origin, 4100 capacity, ...)"
                    ),
                    &["code"]
                )?
            ),
            fanout_size: register!(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "fanout_size",
                        "Sockets reached by one publish on this node"
                    )
                    .namespace(prefix.to_string())
                    .buckets(vec![
                        0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0,
                        50000.0
                    ])
                )?
            ),
            http_request_seconds: register!(
                registry,
                HistogramVec::new(
                    HistogramOpts::new("http_request_duration_seconds", "HTTP API latency")
                        .namespace(prefix.to_string())
                        .buckets(vec![
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0
                        ]),
                    &["endpoint"]
                )?
            ),
            partial_message_bytes: register!(
                registry,
                IntGauge::with_opts(o(
                    "partial_message_bytes",
                    "Bytes held in partially received client messages on this node"
                ))?
            ),
            outbound_reserved_bytes: register!(
                registry,
                IntGauge::with_opts(o(
                    "outbound_reserved_bytes",
                    "Bytes of the node's outbound budget reserved by connections with long queues"
                ))?
            ),
            connections_by_transport: register!(
                registry,
                IntGaugeVec::new(
                    o(
                        "connections_by_transport",
                        "Open connections on this node, by transport (ws, xhr_streaming, xhr_polling, sse)"
                    ),
                    &["transport"]
                )?
            ),
            partial_budget_disconnects: budget_disconnects.with_label_values(&["partial_messages"]),
            memory_refusals: admission_refusals.with_label_values(&["memory"]),
            per_ip_refusals: admission_refusals.with_label_values(&["per_ip"]),
            idempotent_replays: register!(
                registry,
                IntCounter::with_opts(o(
                    "idempotent_replays_total",
                    "HTTP API publishes answered from a remembered idempotency key (nothing published again)"
                ))?
            ),
            idempotency_evictions: register!(
                registry,
                IntCounter::with_opts(o(
                    "idempotency_evictions_total",
                    "Idempotency keys forgotten before their window ended because a node's store was full"
                ))?
            ),
            outbound_budget_disconnects: budget_disconnects.with_label_values(&["outbound_bytes"]),
            compression: CompressionMetrics {
                input_bytes: register!(
                    registry,
                    IntCounter::with_opts(o(
                        "compression_input_bytes_total",
                        "Bytes of broadcast frames compressed for permessage-deflate sockets, before compression"
                    ))?
                ),
                output_bytes: register!(
                    registry,
                    IntCounter::with_opts(o(
                        "compression_output_bytes_total",
                        "Bytes of the same frames after compression"
                    ))?
                ),
                frames: register!(
                    registry,
                    IntCounter::with_opts(o(
                        "compressed_frames_total",
                        "Broadcast frames compressed (once each, however many sockets they reach)"
                    ))?
                ),
                seconds: register!(
                    registry,
                    Histogram::with_opts(
                        HistogramOpts::new(
                            "compression_duration_seconds",
                            "Time spent compressing one broadcast frame"
                        )
                        .namespace(prefix.to_string())
                        .buckets(vec![
                            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
                            0.005, 0.025
                        ])
                    )?
                ),
            },
            registry,
            prefix: prefix.to_string(),
        };
        Ok(m)
    }

    /// A connection over `transport` opened (`delta` 1) or ended (-1).
    pub fn transport_connected(&self, transport: &str, delta: i64) {
        self.connections_by_transport
            .with_label_values(&[transport])
            .add(delta);
    }

    /// Open connections over `transport` on this node.
    pub fn transport_connections(&self, transport: &str) -> i64 {
        self.connections_by_transport
            .with_label_values(&[transport])
            .get()
    }

    /// Handles for one app.
    pub fn app(&self, app_id: &str) -> AppMetrics {
        let l = [app_id];
        AppMetrics {
            connected: self.connected.with_label_values(&l),
            new_connections: self.new_connections.with_label_values(&l),
            ws_messages_received: self.ws_messages_received.with_label_values(&l),
            ws_messages_sent: self.ws_messages_sent.with_label_values(&l),
            socket_received_bytes: self.socket_received_bytes.with_label_values(&l),
            socket_transmitted_bytes: self.socket_transmitted_bytes.with_label_values(&l),
            client_events: self.client_events.with_label_values(&l),
            api_events: self.published_events.with_label_values(&l),
            slow_consumers: self.slow_consumers.with_label_values(&l),
            client_events_rate_limited: self
                .rate_limited
                .with_label_values(&[app_id, "client_events"]),
            backend_rate_limited: self
                .rate_limited
                .with_label_values(&[app_id, "backend_events"]),
            read_rate_limited: self
                .rate_limited
                .with_label_values(&[app_id, "read_requests"]),
            subscribes_rate_limited: self.rate_limited.with_label_values(&[app_id, "subscribes"]),
            channel_limited: self
                .rate_limited
                .with_label_values(&[app_id, "channels_per_connection"]),
            subscriptions: ChannelKind::ALL
                .iter()
                .map(|k| self.subscriptions.with_label_values(&[app_id, k.label()]))
                .collect(),
            channels: ChannelKind::ALL
                .iter()
                .map(|k| self.channels.with_label_values(&[app_id, k.label()]))
                .collect(),
            disconnections: self.disconnections.clone(),
            app_id: app_id.to_string(),
        }
    }

    /// A handshake refused with `code` (protocol.md 1.2).
    pub fn refused(&self, code: u16) {
        self.refused.with_label_values(&[&code.to_string()]).inc();
    }

    pub fn http_call(&self, endpoint: &str, status: &http::StatusCode) {
        self.http_calls
            .with_label_values(&[endpoint, status.as_str()])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        buf
    }
}
