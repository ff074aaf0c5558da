//! The messages between the coordinating process and its worker processes: one `JobSpec`
//! line, then `Command` lines on the worker's stdin; `Event` lines on its stdout.
//!
//! Plain serde types. The channel plan lives here because both sides must agree on which
//! connection subscribes to which channel.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Where the clients connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetSpec {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Path prefix in front of `/app/{key}` and `/apps/{id}` (empty by default).
    pub prefix: String,
    pub key: String,
    pub secret: String,
}

/// What kind of channels the connections subscribe to (decides the auth they need).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelKind {
    Public,
    Private,
    Presence,
}

/// Which channel indices connection `i` (global index) subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assignment {
    /// `per_conn` consecutive channels starting at `i * per_conn`, modulo the channel count.
    Spread { per_conn: u64 },
    /// One room each: channel `i / size`.
    Rooms { size: u64 },
    /// Connection `i` of `stride` connections takes every channel `c` with `c % stride == i`;
    /// when there are more connections than channels, channel `i % channels`.
    Strided { stride: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelPlan {
    pub prefix: String,
    pub kind: ChannelKind,
    pub total: u64,
    pub assignment: Assignment,
}

impl ChannelPlan {
    pub fn name(&self, index: u64) -> String {
        format!("{}{}", self.prefix, index)
    }

    /// Channel indices of connection `i`.
    pub fn channels_of(&self, i: u64) -> Vec<u64> {
        let total = self.total.max(1);
        match self.assignment {
            Assignment::Spread { per_conn } => {
                let per_conn = per_conn.clamp(1, total);
                (0..per_conn).map(|k| (i * per_conn + k) % total).collect()
            }
            Assignment::Rooms { size } => vec![(i / size.max(1)) % total],
            Assignment::Strided { stride } => {
                let stride = stride.max(1);
                if stride >= total {
                    vec![i % total]
                } else {
                    (0..total).filter(|c| c % stride == i % stride).collect()
                }
            }
        }
    }
}

/// Client events a connection sends once told to start (chat typing, client-event publishers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SenderSpec {
    pub event: String,
    /// Events per second per connection, spread round-robin over its channels.
    pub rate: f64,
    pub pad: usize,
    /// Stop sending after this long even without a stop command.
    pub duration_ms: u64,
}

/// How a storm connection leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum CloseMode {
    /// Send a WebSocket close frame, then drop the socket without waiting.
    Ws,
    /// Drop the socket (TCP FIN).
    Fin,
    /// Reset the socket (SO_LINGER 0, TCP RST).
    Rst,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormSpec {
    /// The first `steady` connections of this job stay connected through the storm.
    pub steady: u64,
    pub close: CloseMode,
    /// Reconnection attempts in flight at once in this worker.
    pub reconnect_inflight: usize,
    /// Give up reconnecting after this long.
    pub timeout_ms: u64,
}

/// Everything a worker process needs to run its share of a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub worker: usize,
    pub target: TargetSpec,
    /// Global index of this worker's first connection, and how many it runs.
    pub first: u64,
    pub count: u64,
    pub channels: ChannelPlan,
    /// Connection attempts per second for this worker (0 = as fast as allowed).
    pub connect_rate: f64,
    pub max_inflight: usize,
    pub connect_timeout_ms: u64,
    pub source_ips: Vec<Ipv4Addr>,
    pub sender: Option<SenderSpec>,
    /// Publishers only send: they neither count deliveries nor report loss.
    pub count_deliveries: bool,
    /// Share of the connections that offer permessage-deflate (spread evenly by index).
    #[serde(default)]
    pub deflate_share: f64,
    pub storm: Option<StormSpec>,
    /// How long to wait after `finish` for deliveries to stop arriving.
    pub drain_ms: u64,
    /// Hard limit on the worker's life; it exits by itself after this.
    pub deadline_ms: u64,
}

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Start the senders (no effect on pure subscribers).
    Start,
    /// Drop every storm connection now and reconnect it.
    Storm { at_ns: u64 },
    /// The storm window is over: later deliveries go to the "after" histogram.
    StormEnd,
    /// Stop the senders and report what they sent.
    Stop,
    /// Publishing is over; `expected[c]` messages were published to channel `c` by publishers
    /// outside this worker. Drain, then report.
    Finish { expected: Vec<u64> },
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Every connection has either subscribed to all its channels or failed.
    Ready(ReadyReport),
    /// Every storm connection has reconnected or given up.
    StormDone(StormReport),
    /// Senders stopped; what they sent per channel.
    Stopped {
        sent: Vec<u64>,
        errors: u64,
    },
    Result(Box<WorkerResult>),
    /// The worker could not run its job.
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadyReport {
    pub connected: u64,
    pub failed: u64,
    pub first_ready_ns: u64,
    pub last_ready_ns: u64,
    /// Time from the first attempt to subscribed, per connection.
    pub connect_latency: Vec<(u64, u64)>,
    /// A few failure reasons, for the report.
    pub failure_samples: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormReport {
    pub dropped: u64,
    pub reconnected: u64,
    pub gave_up: u64,
    pub failed_attempts: u64,
    /// First `connection_established` on a reconnection (0 if none).
    pub first_established_ns: u64,
    /// Last reconnection fully subscribed (0 if none).
    pub last_ready_ns: u64,
    pub reconnect_latency: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Stamped messages received (duplicates included).
    pub deliveries: u64,
    pub unique: u64,
    pub duplicates: u64,
    /// Messages expected by subscriptions whose loss is accounted, and how many of them
    /// never arrived / arrived in surplus.
    pub expected: u64,
    pub lost: u64,
    pub surplus: u64,
    /// Stamped messages for a channel the connection had not subscribed to.
    pub misrouted: u64,
    /// Latency histograms by phase: before the storm (or the whole run), during, after.
    pub latency: [Vec<(u64, u64)>; 3],
    /// `pusher:error` frames received after connecting.
    pub server_errors: u64,
    /// Connections the server closed while the run was going.
    pub disconnects: u64,
    /// Client events sent by this worker's senders.
    pub sent: u64,
    pub first_delivery_ns: u64,
    pub last_delivery_ns: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn plan(total: u64, assignment: Assignment) -> ChannelPlan {
        ChannelPlan {
            prefix: "c-".into(),
            kind: ChannelKind::Public,
            total,
            assignment,
        }
    }

    #[test]
    fn spread_covers_channels_evenly() {
        let p = plan(4, Assignment::Spread { per_conn: 2 });
        assert_eq!(p.channels_of(0), vec![0, 1]);
        assert_eq!(p.channels_of(1), vec![2, 3]);
        assert_eq!(p.channels_of(2), vec![0, 1]);
        let p = plan(3, Assignment::Spread { per_conn: 1 });
        let counts = (0..300).fold([0; 3], |mut acc, i| {
            acc[p.channels_of(i)[0] as usize] += 1;
            acc
        });
        assert_eq!(counts, [100, 100, 100]);
        assert_eq!(p.name(2), "c-2");
    }

    #[test]
    fn rooms_group_consecutive_connections() {
        let p = plan(1000, Assignment::Rooms { size: 10 });
        assert_eq!(p.channels_of(0), vec![0]);
        assert_eq!(p.channels_of(9), vec![0]);
        assert_eq!(p.channels_of(10), vec![1]);
    }

    #[test]
    fn strided_publishers_cover_every_channel_once() {
        let p = plan(10, Assignment::Strided { stride: 3 });
        let mut all: Vec<u64> = (0..3).flat_map(|i| p.channels_of(i)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let p = plan(2, Assignment::Strided { stride: 5 });
        assert_eq!(p.channels_of(3), vec![1]);
    }

    #[test]
    fn commands_and_events_round_trip_as_json_lines() {
        let line = serde_json::to_string(&Command::Finish {
            expected: vec![1, 2],
        })
        .unwrap();
        assert_eq!(line, r#"{"cmd":"finish","expected":[1,2]}"#);
        let back: Command = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, Command::Finish { expected } if expected == vec![1, 2]));
        let ev = serde_json::to_string(&Event::Stopped {
            sent: vec![3],
            errors: 0,
        })
        .unwrap();
        assert!(matches!(
            serde_json::from_str::<Event>(&ev).unwrap(),
            Event::Stopped { .. }
        ));
    }
}
