//! `chat`: connections in rooms on `presence-` channels (signed `channel_data` per user),
//! typing `client-` events from every member plus messages triggered through the HTTP API,
//! at a total target rate; same delivery report as fanout.
//!
//! Rooms never span two workers, so each worker knows every typing event its members should
//! receive and accounts loss for them itself.

use anyhow::{Context, Result};

use crate::cli::ChatArgs;
use crate::connections::workers;
use crate::fanout::add_delivery_results;
use crate::ipc::{Assignment, ChannelKind, ChannelPlan, SenderSpec};
use crate::publish::HttpPlan;
use crate::report::{round3, Report};
use crate::run::{self, Setup, Workload};

/// Servers drop client events above this rate per connection (protocol.md 4.1).
const CLIENT_EVENT_LIMIT: f64 = 10.0;

pub async fn run(args: &ChatArgs, setup: &Setup) -> Result<Report> {
    let duration = args.common.duration_or(10.0)?;
    let room_size = args.room_size.max(2);
    let rooms = args.connections.div_ceil(room_size).max(1);
    let share = args.typing_share.clamp(0.0, 1.0);
    let typing_total = args.rate * share;
    let http_rate = args.rate - typing_total;
    let typing_per_conn = typing_total / args.connections.max(1) as f64;
    if typing_per_conn > CLIENT_EVENT_LIMIT {
        eprintln!(
            "warning: {typing_per_conn:.1} typing events/s per connection exceeds the usual \
             limit of {CLIENT_EVENT_LIMIT}/s; the server will reject some"
        );
    }
    let prefix = "presence-room-";
    let workload = Workload {
        subscribers: args.connections,
        channels: ChannelPlan {
            prefix: prefix.to_string(),
            kind: ChannelKind::Presence,
            total: rooms,
            assignment: Assignment::Rooms { size: room_size },
        },
        typing: (typing_per_conn > 0.0).then(|| SenderSpec {
            event: "client-typing".to_string(),
            rate: typing_per_conn,
            pad: args.payload_bytes,
            duration_ms: 0,
        }),
        client_publishers: None,
        http: (http_rate > 0.0).then(|| HttpPlan {
            target: setup.publish_target.clone(),
            app_id: setup.app_id.clone(),
            rate: http_rate,
            connections: args.http_conns.max(1),
            event: "message".to_string(),
            channel_prefix: prefix.to_string(),
            channels: rooms,
            pad: args.payload_bytes,
        }),
        duration,
        hold: false,
        storm: None,
    };
    let stream = match (&args.stream_redis, &args.stream_key) {
        (Some(url), Some(key)) => {
            let client = redis::Client::open(url.as_str()).context("--stream-redis")?;
            let before = entries_added(&client, key).await?;
            Some((client, key, before))
        }
        _ => None,
    };
    let outcome = run::run(setup, &workload).await?;
    let written = match &stream {
        Some((client, key, before)) => {
            // The sink writes in pipelines behind the sockets: give its queue a moment.
            let mut last = entries_added(client, key).await?;
            for _ in 0..20 {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let now = entries_added(client, key).await?;
                if now == last {
                    break;
                }
                last = now;
            }
            Some(last.saturating_sub(*before))
        }
        None => None,
    };

    let mut report = Report::new("chat", &setup.url, setup.baseline);
    report
        .param("connections", args.connections)
        .param("room_size", room_size)
        .param("rooms", rooms)
        .param("rate", args.rate)
        .param("typing_share", share)
        .param("typing_per_conn_per_s", round3(typing_per_conn))
        .param("http_rate", round3(http_rate))
        .param("duration_s", duration.as_secs_f64())
        .param("workers", workers(setup, args.connections));
    add_delivery_results(&mut report, &outcome);
    let window = outcome.window.as_secs_f64();
    let total_sent = outcome.client_sent + outcome.http.as_ref().map_or(0, |h| h.ok());
    if let Some(written) = written {
        report.result("stream_entries_written", written);
        #[allow(clippy::cast_precision_loss)]
        report.result(
            "stream_entries_per_s",
            round3(if window > 0.0 {
                written as f64 / window
            } else {
                0.0
            }),
        );
    }
    report.result(
        "messages_per_s",
        round3(if window > 0.0 {
            total_sent as f64 / window
        } else {
            0.0
        }),
    );
    Ok(report)
}

/// `entries-added` of `XINFO STREAM key`: every entry ever added, trimmed or not (0 when the
/// stream does not exist yet).
async fn entries_added(client: &redis::Client, key: &str) -> Result<u64> {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to --stream-redis")?;
    let exists: bool = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .context("EXISTS")?;
    if !exists {
        return Ok(0);
    }
    let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(&mut conn)
        .await
        .context("XINFO STREAM (entries-added needs Redis 7)")?;
    let added = info
        .get("entries-added")
        .context("XINFO STREAM has no entries-added (Redis 7 or later)")?;
    Ok(redis::from_redis_value(added)?)
}
