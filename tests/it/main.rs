#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The integration-test binary: a real server on port 0 driven by real WebSocket and HTTP
//! clients, one module per part of protocol.md's conformance checklist (10.2). The cluster tests
//! (`cluster_*`, over a real Redis) share their setup in `cluster_support`.

mod support;

mod app_database;

mod channels;
mod client_events;
mod compression;
mod connection;
mod console;
mod deploy;
mod fallback;
mod hardening_connections;
mod hardening_http;
mod hardening_subscriptions;
mod history;
mod http_api;
mod idempotency;
mod lifecycle;
mod reload;
mod tls;
mod webhooks;

mod cluster_support;

mod cluster_fanout;
mod cluster_faults;
mod cluster_history;
mod cluster_presence;
mod cluster_quiet;
mod cluster_topologies;
mod cluster_webhooks;
mod streams;
