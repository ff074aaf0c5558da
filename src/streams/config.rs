//! The module's configuration types: [`StreamSink`] (one stream key template with its
//! filters), [`AppStreams`] (an app's sinks and removal delay) and [`SinkSettings`] (where
//! the node writes and how much may wait). It owns the per-sink filter and the key template;
//! it does not read files or the environment (the config layer builds these values).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::app::glob;
use crate::webhooks::WebhookKind;

/// What a sink can select: the transitions and client events webhooks report, and events
/// published through the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// One of the webhook event types (`client_event`, `member_added`, ...).
    Webhook(WebhookKind),
    /// `api_event`: an event published through the HTTP API (or the console).
    ApiEvent,
}

impl StreamKind {
    /// The name in configuration and in the entries' `name` field.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Webhook(kind) => kind.as_str(),
            StreamKind::ApiEvent => "api_event",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StreamKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name == "api_event" {
            return Ok(StreamKind::ApiEvent);
        }
        name.parse::<WebhookKind>()
            .map(StreamKind::Webhook)
            .map_err(|_| format!("unknown event type {name:?}"))
    }
}

/// Default `maxlen` of a sink: entries kept per stream (approximately, `MAXLEN ~`).
pub const DEFAULT_MAXLEN: u64 = 100_000;
/// Default key template.
pub const DEFAULT_KEY: &str = "resound:{app}:events";

/// One stream sink of an app: which events, of which channels, into which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSink {
    /// The stream key; `{app}` is replaced by the app id and `{channel}` by the channel name.
    pub key: String,
    /// Kinds written; empty means every kind.
    pub events: Vec<StreamKind>,
    /// Channel name patterns (`*` stands for any run of characters); empty means every
    /// channel.
    pub channels: Vec<String>,
    /// Each `XADD` trims the stream to about this many entries (`MAXLEN ~`).
    pub maxlen: u64,
}

impl StreamSink {
    /// A sink of every event of every channel into `key`.
    pub fn new(key: impl Into<String>) -> StreamSink {
        StreamSink {
            key: key.into(),
            events: Vec::new(),
            channels: Vec::new(),
            maxlen: DEFAULT_MAXLEN,
        }
    }

    /// Whether this sink writes events of `kind` on `channel`.
    pub fn wants(&self, kind: StreamKind, channel: &str) -> bool {
        self.wants_kind(kind) && self.matches_channel(channel)
    }

    fn wants_kind(&self, kind: StreamKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    fn matches_channel(&self, channel: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|p| glob(p, channel))
    }

    /// The stream key of an event of `app_id` on `channel`.
    pub fn key_for(&self, app_id: &str, channel: &str) -> String {
        if !self.key.contains('{') {
            return self.key.clone();
        }
        self.key
            .replace("{app}", app_id)
            .replace("{channel}", channel)
    }

    /// Checks what the config layer cannot leave to run time: a key, a positive `maxlen`,
    /// non-empty patterns, and no placeholder other than `{app}` and `{channel}`.
    pub fn validate(&self) -> Result<(), String> {
        if self.key.is_empty() {
            return Err("key must not be empty".into());
        }
        let rest = self.key.replace("{app}", "").replace("{channel}", "");
        if rest.contains('{') || rest.contains('}') {
            return Err(format!(
                "key {:?}: the only placeholders are {{app}} and {{channel}}",
                self.key
            ));
        }
        if self.maxlen == 0 {
            return Err("maxlen must be > 0".into());
        }
        if self.channels.iter().any(String::is_empty) {
            return Err("channels: a pattern must not be empty".into());
        }
        Ok(())
    }
}

/// The stream sinks of one app. Passed to `Streams::emit` behind an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppStreams {
    pub app_id: String,
    pub sinks: Vec<StreamSink>,
    /// How long `channel_vacated` / `member_removed` are held (the app's
    /// `webhook_removal_delay`; a quick re-add cancels both, as for webhooks).
    pub removal_delay: Duration,
}

impl AppStreams {
    /// Whether any sink could write an event of `kind` on `channel`, counting the pairing
    /// of removals with re-adds (the re-add is what cancels a held removal).
    pub fn wants(&self, kind: StreamKind, channel: &str) -> bool {
        let paired = match kind {
            StreamKind::Webhook(k) => k.paired().map(StreamKind::Webhook),
            StreamKind::ApiEvent => None,
        };
        self.sinks.iter().any(|sink| {
            (sink.wants_kind(kind) || paired.is_some_and(|p| sink.wants_kind(p)))
                && sink.matches_channel(channel)
        })
    }
}

/// Where the node writes and how much may wait, shared by every app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// `redis://` or `rediss://` URL of the Redis the streams are written to.
    pub redis_url: String,
    /// Bytes of entries that may wait per app (while Redis is slow or unreachable) before new
    /// ones are dropped and counted.
    pub queue_bytes: usize,
    /// The most `XADD`s in one pipeline.
    pub batch_max: usize,
    /// How long one pipeline (or a connection attempt) may take before it counts as failed.
    pub write_timeout: Duration,
}

impl Default for SinkSettings {
    fn default() -> Self {
        SinkSettings {
            redis_url: String::new(),
            queue_bytes: 16 << 20,
            batch_max: 512,
            write_timeout: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_their_names() {
        assert_eq!("api_event".parse(), Ok(StreamKind::ApiEvent));
        assert_eq!(
            "client_event".parse(),
            Ok(StreamKind::Webhook(WebhookKind::ClientEvent))
        );
        assert!("client-event".parse::<StreamKind>().is_err());
        assert_eq!(StreamKind::ApiEvent.to_string(), "api_event");
    }

    #[test]
    fn sinks_filter_by_kind_and_channel_pattern() {
        let sink = StreamSink {
            events: vec![StreamKind::Webhook(WebhookKind::ClientEvent)],
            channels: vec!["private-chat-*".into(), "presence-*-room".into()],
            ..StreamSink::new("k")
        };
        let client = StreamKind::Webhook(WebhookKind::ClientEvent);
        assert!(sink.wants(client, "private-chat-42"));
        assert!(sink.wants(client, "presence-eu-room"));
        assert!(!sink.wants(client, "private-orders"));
        assert!(!sink.wants(StreamKind::ApiEvent, "private-chat-42"));
        let all = StreamSink::new("k");
        assert!(all.wants(StreamKind::ApiEvent, "anything"));
    }

    #[test]
    fn keys_take_the_app_and_the_channel() {
        let sink = StreamSink::new("chat:{app}:{channel}");
        assert_eq!(sink.key_for("7", "private-a"), "chat:7:private-a");
        assert_eq!(
            StreamSink::new(DEFAULT_KEY).key_for("7", "x"),
            "resound:7:events"
        );
        assert!(StreamSink::new("a:{user}").validate().is_err());
        assert!(StreamSink::new("").validate().is_err());
        assert!(StreamSink {
            maxlen: 0,
            ..StreamSink::new("k")
        }
        .validate()
        .is_err());
        assert!(StreamSink::new("a:{app}:{channel}").validate().is_ok());
    }

    #[test]
    fn apps_want_paired_kinds_so_removals_can_be_cancelled() {
        let app = AppStreams {
            app_id: "1".into(),
            sinks: vec![StreamSink {
                events: vec![StreamKind::Webhook(WebhookKind::MemberRemoved)],
                ..StreamSink::new("k")
            }],
            removal_delay: Duration::from_secs(3),
        };
        assert!(app.wants(StreamKind::Webhook(WebhookKind::MemberAdded), "presence-a"));
        assert!(!app.wants(StreamKind::Webhook(WebhookKind::ClientEvent), "presence-a"));
    }
}
