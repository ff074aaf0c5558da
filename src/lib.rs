//! Resound: a broadcast server that speaks the Pusher Channels protocol v7 (WebSocket and HTTP
//! API), a drop-in for Laravel Reverb, Soketi and Pusher clients. See `ARCHITECTURE.md`.

pub mod app;
pub mod app_database;
pub mod broadcast;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod history;
pub mod http;
pub mod hub;
pub mod idempotency;
pub mod inbound;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod reload;
pub mod server;
pub mod shared_state;
pub mod state;
pub mod streams;
pub mod tap;
pub mod tls;
pub mod webhooks;

/// Entry points for the fuzz targets under `fuzz/`: the parsers that read untrusted input,
/// reachable from outside the crate without widening the modules that own them. Not an API;
/// nothing in the server uses it.
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::Arc;

    pub use crate::connection::frames::{
        parse_head, read_frame, Frame, FrameError, OpCode, PartialBudget, PartialHold,
        FREE_PARTIAL_BYTES,
    };
    pub use crate::http::signature::{verify_body, verify_query, Query};

    /// A partial-message budget of `limit` bytes whose metrics are registered nowhere.
    pub fn partial_budget(limit: usize) -> Option<Arc<PartialBudget>> {
        let held = prometheus::IntGauge::new("fuzz_partial_held", "held").ok()?;
        let refused = prometheus::IntCounter::new("fuzz_partial_refused", "refused").ok()?;
        Some(PartialBudget::new(limit, held, refused))
    }
}
