//! Resound: a broadcast server that speaks the Pusher Channels protocol v7 (WebSocket and HTTP
//! API), a drop-in for Laravel Reverb, Soketi and Pusher clients. See `ARCHITECTURE.md`.

pub mod app;
pub mod broadcast;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod server;
pub mod shared_state;
pub mod state;
pub mod tls;
pub mod webhooks;
