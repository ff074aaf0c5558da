//! Laravel Reverb's environment variables (protocol.md 7.1), so an existing Laravel `.env` works as is.

use std::collections::BTreeMap;

use super::{AppConfig, ConfigError};

/// `(dotted key, raw value, variable name)` for the server and scaling settings Reverb defines.
pub(super) fn server_vars(env: &BTreeMap<String, String>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut map = |var: &str, key: &str| {
        if let Some(v) = env.get(var) {
            out.push((key.to_string(), v.clone(), var.to_string()));
        }
    };
    map("REVERB_SERVER_HOST", "server.host");
    map("REVERB_SERVER_PORT", "server.port");
    map("REVERB_SERVER_PATH", "server.path");
    map("REVERB_SCALING_ENABLED", "scaling.enabled");
    map("REVERB_SCALING_CHANNEL", "scaling.channel");
    if let Some(url) = redis_url(env, "REDIS_") {
        out.push(("scaling.redis_url".into(), url, "REDIS_URL/REDIS_*".into()));
    }
    out
}

/// `{prefix}URL`, or a URL built from `{prefix}HOST`/`PORT`/`USERNAME`/`PASSWORD`/`DB`
/// (`REDIS_` for Laravel's names).
pub(super) fn redis_url(env: &BTreeMap<String, String>, prefix: &str) -> Option<String> {
    let name = |k: &str| format!("{prefix}{k}");
    if let Some(url) = env.get(&name("URL")).filter(|u| !u.is_empty()) {
        return Some(url.clone());
    }
    let keys = ["HOST", "PORT", "USERNAME", "PASSWORD", "DB"];
    if !keys.iter().any(|k| env.contains_key(&name(k))) {
        return None;
    }
    let get = |k: &str| {
        env.get(&name(k))
            .filter(|v| !v.is_empty() && v.as_str() != "null")
    };
    let host = get("HOST").map_or("127.0.0.1", |s| s.as_str());
    let port = get("PORT").map_or("6379", |s| s.as_str());
    let db = get("DB").map_or("0", |s| s.as_str());
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let creds = match (get("USERNAME"), get("PASSWORD")) {
        (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
        (None, Some(p)) => format!(":{}@", enc(p)),
        (Some(u), None) => format!("{}@", enc(u)),
        (None, None) => String::new(),
    };
    Some(format!("redis://{creds}{host}:{port}/{db}"))
}

fn parse<T: std::str::FromStr>(
    env: &BTreeMap<String, String>,
    var: &str,
) -> Result<Option<T>, ConfigError> {
    match env
        .get(var)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty() && *v != "null")
    {
        None => Ok(None),
        Some(v) => v.parse::<T>().map(Some).map_err(|_| {
            ConfigError::Invalid(format!("environment variable {var}: invalid value {v:?}"))
        }),
    }
}

/// The app Reverb's `REVERB_APP_*` variables define, with Reverb's defaults for what they leave
/// out (client events from members, so Echo's `whisper` keeps working).
pub(super) fn app_from_env(
    env: &BTreeMap<String, String>,
) -> Result<Option<AppConfig>, ConfigError> {
    let id = env.get("REVERB_APP_ID");
    let key = env.get("REVERB_APP_KEY");
    let secret = env.get("REVERB_APP_SECRET");
    let (id, key, secret) = match (id, key, secret) {
        (None, None, None) => return Ok(None),
        (Some(i), Some(k), Some(s)) => (i.clone(), k.clone(), s.clone()),
        _ => {
            return Err(ConfigError::Invalid(
                "REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET must be set together".into(),
            ))
        }
    };
    let accept = env.get("REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM").cloned();
    if let Some(a) = &accept {
        if !matches!(a.as_str(), "members" | "all" | "none") {
            return Err(ConfigError::Invalid(format!(
                "environment variable REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM: invalid value {a:?} (members, all or none)"
            )));
        }
    }
    Ok(Some(AppConfig {
        id,
        key,
        secret,
        ping_interval: parse(env, "REVERB_APP_PING_INTERVAL")?,
        activity_timeout: parse(env, "REVERB_APP_ACTIVITY_TIMEOUT")?,
        max_message_size: parse(env, "REVERB_APP_MAX_MESSAGE_SIZE")?,
        max_connections: parse(env, "REVERB_APP_MAX_CONNECTIONS")?,
        accept_client_events_from: accept,
        ..AppConfig::default()
    }))
}

/// Applies what Reverb's variables set to an app of the configuration file with the same id.
pub(super) fn overlay(app: &mut AppConfig, env: &AppConfig) {
    app.key.clone_from(&env.key);
    app.secret.clone_from(&env.secret);
    if env.ping_interval.is_some() {
        app.ping_interval = env.ping_interval;
    }
    if env.activity_timeout.is_some() {
        app.activity_timeout = env.activity_timeout;
    }
    if env.max_message_size.is_some() {
        app.max_message_size = env.max_message_size;
    }
    if env.max_connections.is_some() {
        app.max_connections = env.max_connections;
    }
    if env.accept_client_events_from.is_some() {
        app.accept_client_events_from
            .clone_from(&env.accept_client_events_from);
    }
}
