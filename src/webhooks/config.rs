//! The module's configuration types: [`WebhookTarget`] (one URL and its filters),
//! [`AppWebhooks`] (an app's credentials, targets and batching/delay settings) and
//! [`DispatcherSettings`] (queue and retry limits shared by every app).
//!
//! It also owns the per-target filter ([`WebhookTarget::wants`]). It does not read files or the
//! environment: the config layer builds these values and checks them with
//! [`WebhookTarget::validate`] / [`super::validate_target_url`] at start-up.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::endpoint;
use super::error::WebhookError;
use super::event::{WebhookEvent, WebhookKind};

/// Default batching window (protocol.md 6.5 [REC]).
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Default maximum number of events in one batched request (protocol.md 6.5 [REC]).
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 100;
/// Default delay of `channel_vacated` / `member_removed` (protocol.md 6.4 [REC]).
pub const DEFAULT_REMOVAL_DELAY: Duration = Duration::from_secs(3);

/// One webhook URL of an app, with the events it wants.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct WebhookTarget {
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// Kinds this URL receives; empty means every kind.
    pub event_types: Vec<WebhookKind>,
    /// Extra request headers. They never replace `Content-Type`, `X-Pusher-Key`,
    /// `X-Pusher-Signature` or the framing headers; [`WebhookTarget::validate`] rejects such names.
    pub headers: Vec<(String, String)>,
    /// Only channels whose name starts with this prefix ([EXT], Soketi's `channel_name_starts_with`).
    pub channel_prefix: Option<String>,
    /// Only channels whose name ends with this suffix ([EXT], Soketi's `channel_name_ends_with`).
    pub channel_suffix: Option<String>,
}

impl WebhookTarget {
    /// A target that receives every event kind on every channel.
    pub fn new(url: impl Into<String>) -> Self {
        WebhookTarget {
            url: url.into(),
            ..WebhookTarget::default()
        }
    }

    /// Whether this URL receives `event`: its kind is selected and its channel passes the
    /// prefix/suffix filter. Applied before a body is serialised and signed, so each URL is
    /// sent (and signs) only its own events.
    pub fn wants(&self, event: &WebhookEvent) -> bool {
        self.wants_kind(event.kind()) && self.matches_channel(event.channel())
    }

    /// Whether the kind filter selects `kind` (an empty filter selects every kind).
    pub fn wants_kind(&self, kind: WebhookKind) -> bool {
        self.event_types.is_empty() || self.event_types.contains(&kind)
    }

    /// Whether `channel` passes both the prefix and the suffix filter.
    pub fn matches_channel(&self, channel: &str) -> bool {
        let prefix_ok = self
            .channel_prefix
            .as_deref()
            .is_none_or(|prefix| channel.starts_with(prefix));
        let suffix_ok = self
            .channel_suffix
            .as_deref()
            .is_none_or(|suffix| channel.ends_with(suffix));
        prefix_ok && suffix_ok
    }

    /// Checks the URL (absolute `http://` or `https://`, see [`super::validate_target_url`]) and the custom
    /// headers (valid names and values, none that the protocol owns). Meant for the config
    /// layer at start-up; at run time a bad header is skipped with a warning instead.
    pub fn validate(&self) -> Result<(), WebhookError> {
        endpoint::validate_target_url(&self.url)?;
        for (name, value) in &self.headers {
            endpoint::custom_header(name, value)?;
        }
        Ok(())
    }
}

/// Header values can carry credentials, so Debug shows header names only.
impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("headers", &header_names)
            .field("channel_prefix", &self.channel_prefix)
            .field("channel_suffix", &self.channel_suffix)
            .finish()
    }
}

/// The webhook configuration of one app. Passed to `Webhooks::emit` behind an `Arc`; a new
/// `Arc` (after a config reload) takes effect for the events emitted with it.
#[derive(Clone, PartialEq, Eq)]
pub struct AppWebhooks {
    /// The app id; requests never mix apps, and metrics are labelled with it.
    pub app_id: String,
    /// The app key, sent as `X-Pusher-Key`.
    pub key: String,
    /// The app secret, the HMAC key of `X-Pusher-Signature`.
    pub secret: String,
    /// Where the app's events go.
    pub targets: Vec<WebhookTarget>,
    /// Several events per request (per target) when true; one event per request otherwise.
    pub batching: bool,
    /// How long the first event of a batch waits for company (default 50 ms).
    pub batch_window: Duration,
    /// The most events in one request (default 100; 0 is treated as 1).
    pub batch_max_events: usize,
    /// Delay of `channel_vacated` / `member_removed` (default 3 s; zero sends at once).
    pub removal_delay: Duration,
}

impl AppWebhooks {
    /// An app with protocol.md's defaults: no batching (window 50 ms, 100 events when turned
    /// on) and a 3 s removal delay.
    pub fn new(
        app_id: impl Into<String>,
        key: impl Into<String>,
        secret: impl Into<String>,
        targets: Vec<WebhookTarget>,
    ) -> Self {
        AppWebhooks {
            app_id: app_id.into(),
            key: key.into(),
            secret: secret.into(),
            targets,
            batching: false,
            batch_window: DEFAULT_BATCH_WINDOW,
            batch_max_events: DEFAULT_BATCH_MAX_EVENTS,
            removal_delay: DEFAULT_REMOVAL_DELAY,
        }
    }

    /// Whether any target could receive `event`, counting the pairing of protocol.md 6.4: a target
    /// that wants `channel_vacated` also needs `channel_occupied` to pass, since the re-add
    /// is what cancels a pending removal (and likewise for members). Allocation-free; this
    /// is the no-op test at the top of `emit`.
    pub fn wants(&self, event: &WebhookEvent) -> bool {
        let kind = event.kind();
        let paired = kind.paired();
        let channel = event.channel();
        self.targets.iter().any(|target| {
            (target.wants_kind(kind) || paired.is_some_and(|other| target.wants_kind(other)))
                && target.matches_channel(channel)
        })
    }
}

/// The secret never appears in Debug output.
impl fmt::Debug for AppWebhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppWebhooks")
            .field("app_id", &self.app_id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("targets", &self.targets)
            .field("batching", &self.batching)
            .field("batch_window", &self.batch_window)
            .field("batch_max_events", &self.batch_max_events)
            .field("removal_delay", &self.removal_delay)
            .finish()
    }
}

/// Limits shared by every app's dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherSettings {
    /// Events that may wait per app before `emit` starts dropping the newest (default 10 000).
    pub queue_capacity: usize,
    /// Limit for one HTTP attempt, connect to response body (default 10 s).
    pub request_timeout: Duration,
    /// No attempt starts later than this after the first one (default 300 s, the tolerance of
    /// pusher-http-python for `time_ms`).
    pub retry_window: Duration,
    /// Wait before the first retry (default 1 s); doubles on each further retry.
    pub initial_backoff: Duration,
    /// Cap of the doubling wait (default 60 s).
    pub max_backoff: Duration,
    /// Extra trusted roots (PEM) for `https://` targets.
    pub ca_file: Option<PathBuf>,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        DispatcherSettings {
            queue_capacity: 10_000,
            request_timeout: Duration::from_secs(10),
            retry_window: Duration::from_secs(300),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ca_file: None,
        }
    }
}

impl DispatcherSettings {
    /// Rejects settings that cannot work (zero capacity or timeout, inverted back-off).
    pub fn check(&self) -> Result<(), WebhookError> {
        if self.queue_capacity == 0 {
            return Err(WebhookError::InvalidSettings(
                "queue_capacity must be at least 1",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(WebhookError::InvalidSettings(
                "request_timeout must be positive",
            ));
        }
        if self.initial_backoff.is_zero() {
            return Err(WebhookError::InvalidSettings(
                "initial_backoff must be positive",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(WebhookError::InvalidSettings(
                "max_backoff must not be below initial_backoff",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupied(channel: &str) -> WebhookEvent {
        WebhookEvent::ChannelOccupied {
            channel: channel.into(),
        }
    }

    fn client_event(channel: &str) -> WebhookEvent {
        WebhookEvent::ClientEvent {
            channel: channel.into(),
            event: "client-x".into(),
            data: "{}".into(),
            socket_id: "1.1".into(),
            user_id: None,
        }
    }

    #[test]
    fn empty_event_types_select_everything() {
        let target = WebhookTarget::new("http://127.0.0.1/hook");
        for kind in WebhookKind::ALL {
            assert!(target.wants_kind(kind));
        }
        assert!(target.wants(&occupied("anything")));
    }

    #[test]
    fn event_types_select_only_listed_kinds() {
        let target = WebhookTarget {
            event_types: vec![WebhookKind::ClientEvent, WebhookKind::CacheMiss],
            ..WebhookTarget::new("http://127.0.0.1/hook")
        };
        assert!(target.wants(&client_event("private-a")));
        assert!(target.wants(&WebhookEvent::CacheMiss {
            channel: "cache-a".into()
        }));
        assert!(!target.wants(&occupied("private-a")));
        assert!(!target.wants(&WebhookEvent::MemberAdded {
            channel: "presence-a".into(),
            user_id: "1".into()
        }));
    }

    #[test]
    fn prefix_and_suffix_filter_channels() {
        let prefix = WebhookTarget {
            channel_prefix: Some("presence-".into()),
            ..WebhookTarget::new("http://127.0.0.1/hook")
        };
        assert!(prefix.wants(&occupied("presence-room")));
        assert!(!prefix.wants(&occupied("private-room")));

        let suffix = WebhookTarget {
            channel_suffix: Some("-orders".into()),
            ..WebhookTarget::new("http://127.0.0.1/hook")
        };
        assert!(suffix.wants(&occupied("private-orders")));
        assert!(!suffix.wants(&occupied("private-orders-archive")));

        let both = WebhookTarget {
            channel_prefix: Some("private-".into()),
            channel_suffix: Some("-orders".into()),
            event_types: vec![WebhookKind::ClientEvent],
            ..WebhookTarget::new("http://127.0.0.1/hook")
        };
        assert!(both.wants(&client_event("private-eu-orders")));
        assert!(!both.wants(&client_event("presence-eu-orders")));
        assert!(!both.wants(&client_event("private-eu-carts")));
        assert!(!both.wants(&occupied("private-eu-orders")));
    }

    #[test]
    fn app_wants_paired_kinds_so_removals_can_be_cancelled() {
        let only_vacated = WebhookTarget {
            event_types: vec![WebhookKind::ChannelVacated],
            channel_prefix: Some("private-".into()),
            ..WebhookTarget::new("http://127.0.0.1/hook")
        };
        let app = AppWebhooks::new("1", "key", "secret", vec![only_vacated]);
        assert!(app.wants(&occupied("private-a")));
        assert!(!app.wants(&occupied("public-a")));
        assert!(!app.wants(&client_event("private-a")));

        let none = AppWebhooks::new("1", "key", "secret", Vec::new());
        assert!(!none.wants(&occupied("private-a")));
    }

    #[test]
    fn debug_output_hides_secrets_and_header_values() {
        let target = WebhookTarget {
            headers: vec![("Authorization".into(), "Bearer hunter2".into())],
            ..WebhookTarget::new("http://127.0.0.1/hook")
        };
        let app = AppWebhooks::new("1", "key", "very-secret", vec![target]);
        let shown = format!("{app:?}");
        assert!(!shown.contains("very-secret"));
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("Authorization"));
    }

    #[test]
    fn settings_are_checked() {
        assert!(DispatcherSettings::default().check().is_ok());
        let zero_queue = DispatcherSettings {
            queue_capacity: 0,
            ..DispatcherSettings::default()
        };
        assert!(zero_queue.check().is_err());
        let inverted = DispatcherSettings {
            max_backoff: Duration::from_millis(1),
            ..DispatcherSettings::default()
        };
        assert!(inverted.check().is_err());
    }
}
