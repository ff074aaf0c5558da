//! The environment of the servers teams move from, read where it maps cleanly onto ours
//! (docs/migrating.md has the table): Soketi's `SOKETI_*` variables and the `PUSHER_APP_*`
//! credentials a Laravel or Node app already holds. Reverb's variables are `reverb.rs`.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::{AppConfig, ConfigError, WebhookConfig};

type Env = BTreeMap<String, String>;

/// A Soketi value: `null` and empty mean unset.
fn raw<'a>(env: &'a Env, var: &str) -> Option<&'a str> {
    env.get(var)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty() && *v != "null")
}

fn invalid(var: &str, v: &str, what: &str) -> ConfigError {
    ConfigError::Invalid(format!(
        "environment variable {var}: invalid value {v:?} ({what})"
    ))
}

fn number(env: &Env, var: &str) -> Result<Option<u64>, ConfigError> {
    raw(env, var)
        .map(|v| v.parse::<u64>().map_err(|_| invalid(var, v, "a number")))
        .transpose()
}

/// Soketi's limits: `-1` is "no limit".
fn limit(env: &Env, var: &str) -> Result<Option<Option<u64>>, ConfigError> {
    match raw(env, var) {
        None => Ok(None),
        Some("-1") => Ok(Some(None)),
        Some(v) => v
            .parse::<u64>()
            .map(|n| Some(Some(n)))
            .map_err(|_| invalid(var, v, "a number, or -1 for no limit")),
    }
}

fn flag(env: &Env, var: &str) -> Result<Option<bool>, ConfigError> {
    match raw(env, var) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(v) => Err(invalid(var, v, "true or false")),
    }
}

fn kib(env: &Env, var: &str) -> Result<Option<usize>, ConfigError> {
    Ok(number(env, var)?.map(|n| usize::try_from(n.saturating_mul(1024)).unwrap_or(usize::MAX)))
}

fn size(env: &Env, var: &str) -> Result<Option<usize>, ConfigError> {
    Ok(number(env, var)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
}

/// A rate per second; Soketi's "no limit" is ours too (unset). Our defaults stand when the
/// variable is absent.
fn rate(env: &Env, var: &str) -> Result<Option<u32>, ConfigError> {
    Ok(match limit(env, var)? {
        None | Some(None) => None,
        Some(Some(n)) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
    })
}

/// `(dotted key, value, variable)` for the server and scaling settings Soketi's variables set.
pub(super) fn soketi_server_vars(env: &Env) -> Result<Vec<(String, String, String)>, ConfigError> {
    let mut out = Vec::new();
    let mut put = |key: &str, value: String, var: &str| {
        out.push((key.to_string(), value, var.to_string()));
    };
    for (var, key) in [
        ("SOKETI_PORT", "server.port"),
        ("SOKETI_METRICS_SERVER_PORT", "server.metrics_port"),
        ("SOKETI_SSL_CERT", "server.tls.cert"),
        ("SOKETI_SSL_KEY", "server.tls.key"),
        ("SOKETI_ADAPTER_REDIS_PREFIX", "scaling.channel"),
        ("SOKETI_DB_REDIS_INSTANCE_NAME", "scaling.sentinel_master"),
    ] {
        if let Some(v) = raw(env, var) {
            put(key, v.to_string(), var);
        }
    }
    if let Some(prefix) = raw(env, "SOKETI_PATH_PREFIX") {
        put("server.path", prefix.to_string(), "SOKETI_PATH_PREFIX");
    }
    // Milliseconds in Soketi, seconds here (rounded up).
    if let Some(ms) = number(env, "SOKETI_SHUTDOWN_GRACE_PERIOD")? {
        put(
            "server.shutdown_grace_period",
            ms.div_ceil(1000).to_string(),
            "SOKETI_SHUTDOWN_GRACE_PERIOD",
        );
    }
    match raw(env, "SOKETI_ADAPTER_DRIVER") {
        None | Some("local") => {}
        Some("redis") => {
            put("scaling.enabled", "true".into(), "SOKETI_ADAPTER_DRIVER");
            if let Some(url) = super::reverb::redis_url(env, "SOKETI_DB_REDIS_") {
                put("scaling.redis_url", url, "SOKETI_DB_REDIS_*");
            }
        }
        Some(other) => {
            return Err(invalid(
                "SOKETI_ADAPTER_DRIVER",
                other,
                "local or redis; Resound's cluster runs over Redis",
            ))
        }
    }
    if let Some(list) = raw(env, "SOKETI_DB_REDIS_SENTINELS") {
        let sentinels = serde_json::from_str::<Vec<Json>>(list)
            .map_err(|_| invalid("SOKETI_DB_REDIS_SENTINELS", list, "a JSON array"))?
            .iter()
            .map(|s| {
                let host = s.get("host").and_then(Json::as_str).unwrap_or("127.0.0.1");
                let port = s.get("port").and_then(Json::as_u64).unwrap_or(26379);
                Json::String(format!("{host}:{port}"))
            })
            .collect::<Vec<_>>();
        put(
            "scaling.sentinels",
            Json::Array(sentinels).to_string(),
            "SOKETI_DB_REDIS_SENTINELS",
        );
    }
    Ok(out)
}

/// The server-wide limits of Soketi, which are per app here: every app that does not set
/// them takes them.
pub(super) fn soketi_app_limits(env: &Env) -> Result<AppConfig, ConfigError> {
    Ok(AppConfig {
        max_presence_members_per_channel: size(env, "SOKETI_PRESENCE_MAX_MEMBERS")?,
        max_presence_member_size: kib(env, "SOKETI_PRESENCE_MAX_MEMBER_SIZE")?,
        max_channel_name_length: size(env, "SOKETI_CHANNEL_LIMITS_MAX_NAME_LENGTH")?,
        max_event_channels: size(env, "SOKETI_EVENT_MAX_CHANNELS_AT_ONCE")?,
        max_event_name_length: size(env, "SOKETI_EVENT_MAX_NAME_LENGTH")?,
        max_event_payload_bytes: kib(env, "SOKETI_EVENT_MAX_SIZE_IN_KB")?,
        ..AppConfig::default()
    })
}

/// The three credentials `{prefix}ID`, `{prefix}KEY`, `{prefix}SECRET`: all or none.
fn credentials(env: &Env, prefix: &str) -> Result<Option<(String, String, String)>, ConfigError> {
    let get = |k: &str| raw(env, &format!("{prefix}{k}")).map(str::to_string);
    match (get("ID"), get("KEY"), get("SECRET")) {
        (None, None, None) => Ok(None),
        (Some(i), Some(k), Some(s)) => Ok(Some((i, k, s))),
        _ => Err(ConfigError::Invalid(format!(
            "{prefix}ID, {prefix}KEY and {prefix}SECRET must be set together"
        ))),
    }
}

/// The app `SOKETI_DEFAULT_APP_*` defines.
pub(super) fn soketi_app(env: &Env) -> Result<Option<AppConfig>, ConfigError> {
    let Some((id, key, secret)) = credentials(env, "SOKETI_DEFAULT_APP_")? else {
        return Ok(None);
    };
    let webhooks = match raw(env, "SOKETI_DEFAULT_APP_WEBHOOKS") {
        None => Vec::new(),
        Some(list) => soketi_webhooks(list)?,
    };
    Ok(Some(AppConfig {
        id,
        key,
        secret,
        enabled: flag(env, "SOKETI_DEFAULT_APP_ENABLED")?,
        max_connections: limit(env, "SOKETI_DEFAULT_APP_MAX_CONNS")?.flatten(),
        enable_client_messages: flag(env, "SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES")?,
        user_authentication: flag(env, "SOKETI_DEFAULT_APP_ENABLE_USER_AUTHENTICATION")?,
        max_client_events_per_second: rate(env, "SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC")?,
        max_backend_events_per_second: rate(env, "SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC")?,
        max_read_requests_per_second: rate(env, "SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC")?,
        webhooks,
        ..AppConfig::default()
    }))
}

/// Soketi's webhook list: `[{url, event_types, headers?, filter?: {channel_name_starts_with,
/// channel_name_ends_with}}]`. Lambda targets have no equivalent and are refused.
fn soketi_webhooks(list: &str) -> Result<Vec<WebhookConfig>, ConfigError> {
    const VAR: &str = "SOKETI_DEFAULT_APP_WEBHOOKS";
    let items = serde_json::from_str::<Vec<Json>>(list)
        .map_err(|_| invalid(VAR, list, "a JSON array of webhooks"))?;
    items
        .iter()
        .map(|w| {
            let url = w.get("url").and_then(Json::as_str).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "environment variable {VAR}: every webhook needs a \"url\" (Lambda targets are not supported)"
                ))
            })?;
            let strings = |v: Option<&Json>| -> Vec<String> {
                v.and_then(Json::as_array)
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default()
            };
            let headers = w
                .get("headers")
                .and_then(Json::as_object)
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let filter = |k: &str| {
                w.get("filter")
                    .and_then(|f| f.get(k))
                    .and_then(Json::as_str)
                    .map(String::from)
            };
            Ok(WebhookConfig {
                url: url.to_string(),
                event_types: strings(w.get("event_types")),
                headers,
                channel_prefix: filter("channel_name_starts_with"),
                channel_suffix: filter("channel_name_ends_with"),
            })
        })
        .collect()
}

/// The app `PUSHER_APP_ID`, `PUSHER_APP_KEY` and `PUSHER_APP_SECRET` name (what a Laravel or
/// Node backend that talks to Pusher already holds).
pub(super) fn pusher_app(env: &Env) -> Result<Option<AppConfig>, ConfigError> {
    Ok(
        credentials(env, "PUSHER_APP_")?.map(|(id, key, secret)| AppConfig {
            id,
            key,
            secret,
            ..AppConfig::default()
        }),
    )
}

/// `SOKETI_*` variables that have no equivalent here (named in a warning at start-up, so a
/// migration does not lose a setting silently).
pub(super) fn soketi_unmapped(env: &Env) -> Vec<String> {
    const MAPPED: &[&str] = &[
        "SOKETI_PORT",
        "SOKETI_METRICS_SERVER_PORT",
        "SOKETI_METRICS_ENABLED",
        "SOKETI_SSL_CERT",
        "SOKETI_SSL_KEY",
        "SOKETI_PATH_PREFIX",
        "SOKETI_SHUTDOWN_GRACE_PERIOD",
        "SOKETI_ADAPTER_DRIVER",
        "SOKETI_ADAPTER_REDIS_PREFIX",
        "SOKETI_DB_REDIS_HOST",
        "SOKETI_DB_REDIS_PORT",
        "SOKETI_DB_REDIS_DB",
        "SOKETI_DB_REDIS_USERNAME",
        "SOKETI_DB_REDIS_PASSWORD",
        "SOKETI_DB_REDIS_SENTINELS",
        "SOKETI_DB_REDIS_INSTANCE_NAME",
        "SOKETI_PRESENCE_MAX_MEMBERS",
        "SOKETI_PRESENCE_MAX_MEMBER_SIZE",
        "SOKETI_CHANNEL_LIMITS_MAX_NAME_LENGTH",
        "SOKETI_EVENT_MAX_CHANNELS_AT_ONCE",
        "SOKETI_EVENT_MAX_NAME_LENGTH",
        "SOKETI_EVENT_MAX_SIZE_IN_KB",
        "SOKETI_DEFAULT_APP_ID",
        "SOKETI_DEFAULT_APP_KEY",
        "SOKETI_DEFAULT_APP_SECRET",
        "SOKETI_DEFAULT_APP_ENABLED",
        "SOKETI_DEFAULT_APP_MAX_CONNS",
        "SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES",
        "SOKETI_DEFAULT_APP_ENABLE_USER_AUTHENTICATION",
        "SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC",
        "SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC",
        "SOKETI_DEFAULT_APP_MAX_READ_REQ_PER_SEC",
        "SOKETI_DEFAULT_APP_WEBHOOKS",
    ];
    env.keys()
        .filter(|k| k.starts_with("SOKETI_") && !MAPPED.contains(&k.as_str()))
        .cloned()
        .collect()
}

/// Sets on `app` every setting `from` sets (credentials included), leaving the others as
/// they are.
pub(super) fn overlay(app: &mut AppConfig, from: &AppConfig) -> Result<(), ConfigError> {
    merge(app, from, true)
}

/// Sets on `app` the settings `from` sets and `app` leaves unset.
pub(super) fn fill(app: &mut AppConfig, from: &AppConfig) -> Result<(), ConfigError> {
    merge(app, from, false)
}

fn merge(app: &mut AppConfig, from: &AppConfig, replace: bool) -> Result<(), ConfigError> {
    let bad = |e: serde_json::Error| ConfigError::Invalid(format!("app settings: {e}"));
    let (Json::Object(mut into), Json::Object(src)) = (
        serde_json::to_value(&*app).map_err(bad)?,
        serde_json::to_value(from).map_err(bad)?,
    ) else {
        return Ok(());
    };
    for (k, v) in src {
        let unset = |v: &Json| {
            v.is_null() || v.as_str() == Some("") || v.as_array().is_some_and(Vec::is_empty)
        };
        if unset(&v) {
            continue;
        }
        if replace || into.get(&k).is_none_or(unset) {
            into.insert(k, v);
        }
    }
    *app = serde_json::from_value(Json::Object(into)).map_err(bad)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{load, Config, Sources};
    use crate::app::ClientEventPolicy;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Config, String> {
        load(&Sources {
            process_env: env(pairs),
            ..Sources::default()
        })
        .map_err(|e| e.to_string())
    }

    fn ok(pairs: &[(&str, &str)]) -> Config {
        load_env(pairs).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_soketi_environment_becomes_the_same_server_and_app() {
        let c = ok(&[
            ("SOKETI_PORT", "6001"),
            ("SOKETI_PATH_PREFIX", "/ws"),
            ("SOKETI_SHUTDOWN_GRACE_PERIOD", "3500"),
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_ADAPTER_REDIS_PREFIX", "soketi-prod"),
            ("SOKETI_DB_REDIS_HOST", "10.0.0.5"),
            ("SOKETI_DB_REDIS_PASSWORD", "p@ss"),
            ("SOKETI_DEFAULT_APP_ID", "1234"),
            ("SOKETI_DEFAULT_APP_KEY", "soketi-key"),
            ("SOKETI_DEFAULT_APP_SECRET", "soketi-secret"),
            ("SOKETI_DEFAULT_APP_MAX_CONNS", "-1"),
            ("SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true"),
            ("SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC", "50"),
            ("SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC", "-1"),
            ("SOKETI_DEFAULT_APP_ENABLE_USER_AUTHENTICATION", "true"),
            (
                "SOKETI_DEFAULT_APP_WEBHOOKS",
                r#"[{"url":"https://hooks.test/pusher","event_types":["channel_occupied","member_added"],"headers":{"X-Token":"t"},"filter":{"channel_name_starts_with":"presence-"}}]"#,
            ),
            ("SOKETI_PRESENCE_MAX_MEMBERS", "250"),
            ("SOKETI_PRESENCE_MAX_MEMBER_SIZE", "4"),
            ("SOKETI_EVENT_MAX_SIZE_IN_KB", "100"),
        ]);
        assert_eq!(c.server.port, 6001);
        assert_eq!(c.server.path, "/ws");
        assert_eq!(c.server.shutdown_grace_period, 4);
        assert!(c.scaling.enabled);
        assert_eq!(c.scaling.channel, "soketi-prod");
        assert_eq!(c.scaling.redis_url, "redis://:p%40ss@10.0.0.5:6379/0");
        assert_eq!(c.apps.len(), 1);
        let a = &c.apps[0];
        assert_eq!(
            (a.id.0.as_ref(), a.key.as_str(), a.secret.as_str()),
            ("1234", "soketi-key", "soketi-secret")
        );
        let s = &a.settings;
        assert_eq!(s.max_connections, None);
        assert_ne!(s.client_events, ClientEventPolicy::Disabled);
        assert_eq!(s.max_client_events_per_second, 50);
        assert_eq!(s.max_backend_events_per_second, None);
        assert!(s.user_authentication);
        assert_eq!(s.max_presence_members_per_channel, 250);
        assert_eq!(s.max_presence_member_size, 4096);
        assert_eq!(s.max_event_payload_bytes, 102_400);
        let hooks = a
            .webhooks
            .as_ref()
            .map(|w| w.targets.clone())
            .unwrap_or_default();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].url, "https://hooks.test/pusher");
        assert_eq!(hooks[0].event_types.len(), 2);
        assert_eq!(hooks[0].channel_prefix.as_deref(), Some("presence-"));
        assert_eq!(hooks[0].headers, [("X-Token".to_string(), "t".to_string())]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn soketi_variables_without_an_equivalent_are_named_not_lost_silently() {
        let c = ok(&[
            ("SOKETI_APP_MANAGER_DRIVER", "mysql"),
            ("SOKETI_QUEUE_DRIVER", "redis"),
            ("SOKETI_PORT", "6001"),
        ]);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("SOKETI_APP_MANAGER_DRIVER, SOKETI_QUEUE_DRIVER"));
        let e = load_env(&[("SOKETI_ADAPTER_DRIVER", "nats")])
            .err()
            .unwrap_or_default();
        assert!(e.contains("SOKETI_ADAPTER_DRIVER"), "{e}");
        let e = load_env(&[("SOKETI_DEFAULT_APP_ID", "1")])
            .err()
            .unwrap_or_default();
        assert!(e.contains("must be set together"), "{e}");
    }

    #[test]
    fn pusher_credentials_define_an_app_and_reverb_wins_on_the_same_id() {
        let c = ok(&[
            ("PUSHER_APP_ID", "77"),
            ("PUSHER_APP_KEY", "pusher-key"),
            ("PUSHER_APP_SECRET", "pusher-secret"),
        ]);
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].key.as_str(), "pusher-key");
        // Pusher's own defaults: client events off, activity timeout 120 s.
        assert_eq!(
            c.apps[0].settings.client_events,
            ClientEventPolicy::Disabled
        );
        let c = ok(&[
            ("PUSHER_APP_ID", "77"),
            ("PUSHER_APP_KEY", "pusher-key"),
            ("PUSHER_APP_SECRET", "pusher-secret"),
            ("REVERB_APP_ID", "77"),
            ("REVERB_APP_KEY", "reverb-key"),
            ("REVERB_APP_SECRET", "reverb-secret"),
        ]);
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].key.as_str(), "reverb-key");
        let c = ok(&[
            ("PUSHER_APP_ID", "1"),
            ("PUSHER_APP_KEY", "k1"),
            ("PUSHER_APP_SECRET", "s1"),
            ("SOKETI_DEFAULT_APP_ID", "2"),
            ("SOKETI_DEFAULT_APP_KEY", "k2"),
            ("SOKETI_DEFAULT_APP_SECRET", "s2"),
        ]);
        assert_eq!(c.apps.len(), 2, "different ids are two apps");
    }
}
