//! `[[apps]]` and `[[apps.webhooks]]`: the app tables as written, and their validation into
//! the runtime `App` with the defaults of protocol.md 7.7 (or Reverb's).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::app::{
    App, AppId, AppKey, AppSecret, AppSettings, ClientEventPolicy, HistorySettings, PreviousSecret,
};
use crate::streams::{AppStreams, StreamKind, StreamSink, DEFAULT_KEY, DEFAULT_MAXLEN};
use crate::webhooks::{redact_url, AppWebhooks, WebhookKind, WebhookTarget};

/// `[[apps]]`. Unset options take the defaults of protocol.md 7.7 (or Reverb's, for an app defined by
/// Reverb's variables).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    #[serde(alias = "app_id")]
    pub id: String,
    pub key: String,
    pub secret: String,
    pub enabled: Option<bool>,
    pub tls_only: Option<bool>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_connections: Option<u64>,
    pub over_quota_close_code: Option<u16>,
    pub activity_timeout: Option<u64>,
    pub ping_interval: Option<u64>,
    pub pong_timeout: Option<u64>,
    pub max_message_size: Option<usize>,
    pub max_channel_name_length: Option<usize>,
    pub max_presence_members_per_channel: Option<usize>,
    pub max_presence_member_size: Option<usize>,
    pub max_channels_per_connection: Option<usize>,
    pub max_subscribes_per_second: Option<u32>,
    pub max_channels_listed: Option<usize>,
    pub cache_ttl: Option<u64>,
    pub subscription_count_events: Option<bool>,
    pub subscription_error_event: Option<bool>,
    pub enable_client_messages: Option<bool>,
    /// Reverb's `accept_client_events_from`: `members`, `all` or `none`.
    pub accept_client_events_from: Option<String>,
    pub allow_client_events_on_public_channels: Option<bool>,
    pub max_client_events_per_second: Option<u32>,
    pub terminate_on_client_event_limit: Option<bool>,
    pub max_event_payload_bytes: Option<usize>,
    pub max_http_body_bytes: Option<usize>,
    pub max_event_channels: Option<usize>,
    pub max_batch_size: Option<usize>,
    pub max_event_name_length: Option<usize>,
    pub auth_timestamp_tolerance: Option<u64>,
    pub user_authentication: Option<bool>,
    pub require_authorization: Option<bool>,
    pub authorization_timeout: Option<u64>,
    pub watchlist_events: Option<bool>,
    pub max_watchlist_size: Option<usize>,
    pub terminate_presence_members: Option<bool>,
    pub max_backend_events_per_second: Option<u32>,
    pub max_read_requests_per_second: Option<u32>,
    /// Seconds an idempotency key of the HTTP API is remembered (0: keys are ignored).
    pub idempotency_window: Option<u64>,
    /// Idempotency keys remembered per app on one node (oldest forgotten first above it).
    pub idempotency_max_keys: Option<usize>,
    /// Bytes the remembered keys and answers may hold per app on one node.
    pub idempotency_max_bytes: Option<usize>,
    /// Channel name patterns (`*` wildcard) whose events are kept for resuming clients.
    pub history_channels: Option<Vec<String>>,
    /// Events kept per channel with history.
    pub history_max_events: Option<usize>,
    /// Seconds an event is kept in a channel's history.
    pub history_ttl: Option<u64>,
    /// Bytes the histories of an app's channels may hold in total (oldest dropped first).
    pub history_max_bytes: Option<usize>,
    /// The secret being rotated out, accepted until `previous_secret_until`.
    pub previous_secret: Option<String>,
    /// When the previous secret stops being accepted: RFC 3339 in UTC
    /// (`2026-12-31T23:00:00Z`).
    pub previous_secret_until: Option<String>,
    pub webhook_batching: Option<bool>,
    pub webhook_batch_window_ms: Option<u64>,
    pub webhook_batch_max_events: Option<usize>,
    pub webhook_removal_delay: Option<u64>,
    /// Overrides `server.compression` for this app.
    pub compression: Option<super::Compression>,
    /// Overrides `server.compression_threshold` for this app.
    pub compression_threshold: Option<usize>,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Redis stream sinks (`[[apps.streams]]`, docs/streams.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamConfig>,
}

/// `[[apps.streams]]`: one Redis stream sink.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// The stream key; `{app}` and `{channel}` are replaced (default `resound:{app}:events`).
    pub key: Option<String>,
    /// Event types written (empty: all): `client_event`, `member_added`, `member_removed`,
    /// `channel_occupied`, `channel_vacated`, `subscription_count`, `cache_miss`, `api_event`.
    #[serde(default)]
    pub events: Vec<String>,
    /// Channel name patterns, `*` for any run of characters (empty: all channels).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Entries kept per stream, approximately (`XADD ... MAXLEN ~`).
    pub maxlen: Option<u64>,
}

/// `[[apps.webhooks]]`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub channel_prefix: Option<String>,
    pub channel_suffix: Option<String>,
}

fn secs(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_secs)
}

/// The secret being rotated out, with its deadline; both keys or neither.
fn previous_secret(a: &AppConfig) -> Result<Option<PreviousSecret>, String> {
    match (&a.previous_secret, &a.previous_secret_until) {
        (None, None) => Ok(None),
        (Some(secret), Some(until)) => {
            if secret.is_empty() || *secret == a.secret {
                return Err("previous_secret must be non-empty and differ from secret".into());
            }
            let until = utc_time(until).ok_or_else(|| {
                format!(
                    "previous_secret_until {until:?} is not a UTC time like 2026-12-31T23:00:00Z"
                )
            })?;
            Ok(Some(PreviousSecret {
                secret: AppSecret(Arc::from(secret.as_str())),
                until,
            }))
        }
        _ => Err("previous_secret and previous_secret_until go together".into()),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or `+00:00` for `Z`) as a time.
fn utc_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let body = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = body.split_once(['T', ' '])?;
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let mut d = date.split('-').map(num);
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(num);
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (the civil-from-days inverse).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + min * 60 + sec).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The app's compression threshold (`AppSettings::deflate_threshold`): its own keys, else
/// the server's; none when compression is off.
pub(super) fn deflate_threshold(a: &AppConfig, server: &super::ServerConfig) -> Option<usize> {
    let on = a.compression.unwrap_or(server.compression) == super::Compression::On;
    on.then(|| {
        a.compression_threshold
            .unwrap_or(server.compression_threshold)
    })
}

pub(super) fn build_app(a: &AppConfig, reverb_defaults: bool) -> Result<App, String> {
    if a.id.is_empty() || a.key.is_empty() || a.secret.is_empty() {
        return Err("id, key and secret must be non-empty".into());
    }
    if a.key.contains('/') || a.id.contains('/') {
        return Err("id and key must not contain '/'".into());
    }
    let d = AppSettings::default();
    let (activity_default, ping_default, msg_size_default) = if reverb_defaults {
        (Duration::from_secs(30), Duration::from_secs(60), 10_000)
    } else {
        (d.activity_timeout, d.activity_timeout, d.max_message_size)
    };
    let activity_timeout = secs(a.activity_timeout, activity_default);
    if activity_timeout.is_zero() {
        return Err("activity_timeout must be > 0 (pusher-js refuses 0)".into());
    }
    let ping_interval = match a.ping_interval {
        Some(v) => Duration::from_secs(v),
        None if a.activity_timeout.is_some() => activity_timeout,
        None => ping_default,
    };
    if ping_interval.is_zero() {
        return Err("ping_interval must be > 0".into());
    }
    let pong_timeout = secs(a.pong_timeout, d.pong_timeout);
    if pong_timeout.is_zero() {
        return Err(
            "pong_timeout must be > 0 (0 would close every pinged socket before it could answer)"
                .into(),
        );
    }
    let client_events = match (
        a.accept_client_events_from.as_deref(),
        a.enable_client_messages,
    ) {
        (Some("all"), _) => ClientEventPolicy::MembersIncludingPublic,
        (Some("members"), _) => ClientEventPolicy::Members,
        (Some("none"), _) => ClientEventPolicy::Disabled,
        (Some(other), _) => {
            return Err(format!(
                "accept_client_events_from {other:?} must be \"members\", \"all\" or \"none\""
            ))
        }
        (None, Some(true)) if a.allow_client_events_on_public_channels == Some(true) => {
            ClientEventPolicy::MembersIncludingPublic
        }
        (None, Some(true)) => ClientEventPolicy::Members,
        // Reverb accepts whispers from members unless told otherwise.
        (None, None) if reverb_defaults => ClientEventPolicy::Members,
        (None, _) => ClientEventPolicy::Disabled,
    };
    let over_quota_close_code = a.over_quota_close_code.unwrap_or(d.over_quota_close_code);
    if !(4000..=4199).contains(&over_quota_close_code) {
        return Err("over_quota_close_code must be 4004 or a 41xx back-off code".into());
    }
    let allowed_origins = match &a.allowed_origins {
        None => None,
        Some(list) if list.iter().any(|o| o == "*") => None,
        Some(list) => Some(list.clone()),
    };
    let positive = |name: &str, v: usize| {
        if v == 0 {
            Err(format!("{name} must be > 0"))
        } else {
            Ok(v)
        }
    };
    let settings = AppSettings {
        // The server's setting applies unless the app overrides it: see `deflate_threshold`,
        // applied by `load`.
        deflate_threshold: d.deflate_threshold,
        enabled: a.enabled.unwrap_or(d.enabled),
        tls_only: a.tls_only.unwrap_or(d.tls_only),
        allowed_origins,
        max_connections: a.max_connections,
        over_quota_close_code,
        activity_timeout,
        ping_interval,
        pong_timeout,
        max_message_size: positive(
            "max_message_size",
            a.max_message_size.unwrap_or(msg_size_default),
        )?,
        max_channel_name_length: positive(
            "max_channel_name_length",
            a.max_channel_name_length
                .unwrap_or(d.max_channel_name_length),
        )?,
        max_presence_members_per_channel: positive(
            "max_presence_members_per_channel",
            a.max_presence_members_per_channel
                .unwrap_or(d.max_presence_members_per_channel),
        )?,
        max_presence_member_size: a
            .max_presence_member_size
            .unwrap_or(d.max_presence_member_size),
        max_channels_per_connection: positive(
            "max_channels_per_connection",
            a.max_channels_per_connection
                .unwrap_or(d.max_channels_per_connection),
        )?,
        max_subscribes_per_second: u32::try_from(positive(
            "max_subscribes_per_second",
            a.max_subscribes_per_second
                .unwrap_or(d.max_subscribes_per_second) as usize,
        )?)
        .unwrap_or(u32::MAX),
        max_channels_listed: positive(
            "max_channels_listed",
            a.max_channels_listed.unwrap_or(d.max_channels_listed),
        )?,
        cache_ttl: secs(a.cache_ttl, d.cache_ttl),
        subscription_count_events: a
            .subscription_count_events
            .unwrap_or(d.subscription_count_events),
        subscription_error_event: a
            .subscription_error_event
            .unwrap_or(d.subscription_error_event),
        client_events,
        max_client_events_per_second: a
            .max_client_events_per_second
            .unwrap_or(d.max_client_events_per_second),
        terminate_on_client_event_limit: a
            .terminate_on_client_event_limit
            .unwrap_or(d.terminate_on_client_event_limit),
        max_event_payload_bytes: positive(
            "max_event_payload_bytes",
            a.max_event_payload_bytes
                .unwrap_or(d.max_event_payload_bytes),
        )?,
        max_http_body_bytes: positive(
            "max_http_body_bytes",
            a.max_http_body_bytes.unwrap_or(d.max_http_body_bytes),
        )?,
        max_event_channels: positive(
            "max_event_channels",
            a.max_event_channels.unwrap_or(d.max_event_channels),
        )?,
        max_batch_size: positive(
            "max_batch_size",
            a.max_batch_size.unwrap_or(d.max_batch_size),
        )?,
        max_event_name_length: positive(
            "max_event_name_length",
            a.max_event_name_length.unwrap_or(d.max_event_name_length),
        )?,
        auth_timestamp_tolerance: secs(a.auth_timestamp_tolerance, d.auth_timestamp_tolerance),
        user_authentication: a.user_authentication.unwrap_or(d.user_authentication),
        require_authorization: a.require_authorization.unwrap_or(d.require_authorization),
        authorization_timeout: secs(a.authorization_timeout, d.authorization_timeout),
        watchlist_events: a.watchlist_events.unwrap_or(d.watchlist_events),
        max_watchlist_size: a.max_watchlist_size.unwrap_or(d.max_watchlist_size),
        terminate_presence_members: a
            .terminate_presence_members
            .unwrap_or(d.terminate_presence_members),
        max_backend_events_per_second: a.max_backend_events_per_second,
        max_read_requests_per_second: a.max_read_requests_per_second,
        idempotency_window: secs(a.idempotency_window, d.idempotency_window),
        idempotency_max_keys: positive(
            "idempotency_max_keys",
            a.idempotency_max_keys.unwrap_or(d.idempotency_max_keys),
        )?,
        idempotency_max_bytes: positive(
            "idempotency_max_bytes",
            a.idempotency_max_bytes.unwrap_or(d.idempotency_max_bytes),
        )?,
        history: history(a, &d)?,
        previous_secret: previous_secret(a)?,
    };
    let webhooks = build_webhooks(a)?;
    let streams = build_streams(a)?;
    Ok(App {
        id: AppId(Arc::from(a.id.as_str())),
        key: AppKey(Arc::from(a.key.as_str())),
        secret: AppSecret(Arc::from(a.secret.as_str())),
        settings,
        webhooks,
        streams,
    })
}

fn build_streams(a: &AppConfig) -> Result<Option<Arc<AppStreams>>, String> {
    if a.streams.is_empty() {
        return Ok(None);
    }
    let mut sinks = Vec::with_capacity(a.streams.len());
    for (i, s) in a.streams.iter().enumerate() {
        let events = s
            .events
            .iter()
            .map(|t| {
                t.parse::<StreamKind>()
                    .map_err(|e| format!("streams[{i}].events: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sink = StreamSink {
            key: s.key.clone().unwrap_or_else(|| DEFAULT_KEY.to_string()),
            events,
            channels: s.channels.clone(),
            maxlen: s.maxlen.unwrap_or(DEFAULT_MAXLEN),
        };
        sink.validate().map_err(|e| format!("streams[{i}]: {e}"))?;
        sinks.push(sink);
    }
    Ok(Some(Arc::new(AppStreams {
        app_id: a.id.clone(),
        sinks,
        removal_delay: Duration::from_secs(a.webhook_removal_delay.unwrap_or(3)),
    })))
}

/// The channels with history and their bounds; `None` unless `history_channels` names some.
fn history(a: &AppConfig, d: &AppSettings) -> Result<Option<HistorySettings>, String> {
    let Some(patterns) = a.history_channels.as_ref().filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    if patterns.iter().any(String::is_empty) {
        return Err("history_channels: a pattern must not be empty".into());
    }
    let base = d.history.clone().unwrap_or_default();
    let s = HistorySettings {
        channels: patterns.clone(),
        max_events: a.history_max_events.unwrap_or(base.max_events),
        ttl: secs(a.history_ttl, base.ttl),
        max_bytes: a.history_max_bytes.unwrap_or(base.max_bytes),
    };
    if s.max_events == 0 || s.ttl.is_zero() || s.max_bytes == 0 {
        return Err("history_max_events, history_ttl and history_max_bytes must be > 0".into());
    }
    Ok(Some(s))
}

fn build_webhooks(a: &AppConfig) -> Result<Option<Arc<AppWebhooks>>, String> {
    if a.webhooks.is_empty() {
        return Ok(None);
    }
    let mut targets = Vec::new();
    for (i, w) in a.webhooks.iter().enumerate() {
        let event_types = w
            .event_types
            .iter()
            .map(|t| {
                t.parse::<WebhookKind>()
                    .map_err(|_| format!("webhooks[{i}].event_types: unknown event type {t:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let target = WebhookTarget {
            url: w.url.clone(),
            event_types,
            headers: w
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            channel_prefix: w.channel_prefix.clone(),
            channel_suffix: w.channel_suffix.clone(),
        };
        target
            .validate()
            .map_err(|e| format!("webhooks[{i}] ({}): {e}", redact_url(&w.url)))?;
        targets.push(target);
    }
    Ok(Some(Arc::new(AppWebhooks {
        app_id: a.id.clone(),
        key: a.key.clone(),
        secret: a.secret.clone(),
        targets,
        batching: a.webhook_batching.unwrap_or(false),
        batch_window: Duration::from_millis(a.webhook_batch_window_ms.unwrap_or(50)),
        batch_max_events: a.webhook_batch_max_events.unwrap_or(100).max(1),
        removal_delay: Duration::from_secs(a.webhook_removal_delay.unwrap_or(3)),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_read_exactly_and_anything_else_refused() {
        let at =
            |t: &str| utc_time(t).map(|s| s.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok());
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(Some(0)));
        assert_eq!(at("2000-03-01T00:00:00Z"), Some(Some(951_868_800)));
        assert_eq!(at("2026-12-31T23:00:00Z"), Some(Some(1_798_758_000)));
        assert_eq!(at("2024-02-29T12:30:15+00:00"), Some(Some(1_709_209_815)));
        for bad in [
            "2026-12-31",
            "2026-12-31T23:00:00",
            "2026-13-01T00:00:00Z",
            "2026-12-31T23:00:00+01:00",
            "x-1-1T0:0:0Z",
            "2026-12-31T23:00Z",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_previous_secret_is_accepted_until_its_deadline() {
        let a = AppConfig {
            id: "1".into(),
            key: "k".into(),
            secret: "new".into(),
            previous_secret: Some("old".into()),
            previous_secret_until: Some("2030-01-01T00:00:00Z".into()),
            ..AppConfig::default()
        };
        let app = build_app(&a, false).unwrap_or_else(|e| panic!("{e}"));
        let before = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let after = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        assert_eq!(app.secrets_at(before).collect::<Vec<_>>(), ["new", "old"]);
        assert_eq!(app.secrets_at(after).collect::<Vec<_>>(), ["new"]);
        let alone = AppConfig {
            previous_secret_until: None,
            ..a.clone()
        };
        assert!(build_app(&alone, false).is_err());
        let same = AppConfig {
            previous_secret: Some("new".into()),
            ..a
        };
        assert!(build_app(&same, false).is_err());
    }
}
