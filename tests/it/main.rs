#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The integration-test binary: a real server on port 0 driven by real WebSocket and HTTP
//! clients, one module per part of the spec's conformance checklist (10.2).

mod support;

mod channels;
mod client_events;
mod cluster;
mod connection;
mod deploy;
mod hardening_subscriptions;
mod http_api;
mod lifecycle;
mod tls;
mod webhooks;
