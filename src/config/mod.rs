//! Configuration: one serde tree read from TOML, the `.env`/process environment (`RESOUND_*`
//! and Laravel Reverb's `REVERB_*`/`REDIS_*` names), validated once into runtime types.
//!
//! Precedence, lowest first: built-in defaults, the `--config` file, Reverb's variables,
//! `RESOUND_<SECTION>__<KEY>` variables. Nothing outside this module reads the environment.
//! Unknown keys and bad values stop start-up with a message naming the key and its source.

mod files;
mod reverb;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::app::{App, AppId, AppKey, AppSecret, AppSettings, ClientEventPolicy};
use crate::webhooks::{redact_url, AppWebhooks, DispatcherSettings, WebhookKind, WebhookTarget};

/// A configuration problem, already phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        ConfigError::Invalid(msgs.join("; "))
    }
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub scaling: ScalingConfig,
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    #[serde(default)]
    pub apps: Vec<AppConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Route prefix applied to every route (Reverb's `REVERB_SERVER_PATH`).
    pub path: String,
    /// Node connection capacity (4100 when reached); none = unlimited.
    pub max_connections: Option<u64>,
    /// Seconds to wait for sockets to close after SIGTERM/SIGINT.
    pub shutdown_grace_period: u64,
    /// Also serve `/metrics` on this port.
    pub metrics_port: Option<u16>,
    /// Prefix of every metric name (`soketi` keeps Soketi dashboards working).
    pub metrics_prefix: String,
    /// Messages buffered per socket before a slow consumer is disconnected.
    pub outbound_queue_size: usize,
    /// Bytes buffered per socket (queued or being written) before a slow consumer is
    /// disconnected.
    pub outbound_queue_bytes: usize,
    /// Bytes the node lets all sockets together buffer beyond a small allowance each
    /// (`connection::handle::FREE_QUEUE_BYTES`); when spent, the socket that needs more is
    /// disconnected as a slow consumer.
    pub outbound_node_bytes: usize,
    /// Bytes the node holds at most in partially received client messages (frames and
    /// fragments not yet complete); a socket that needs more is closed with 4100.
    pub partial_message_node_bytes: usize,
    /// TLS termination in the binary: every connection on `port` is TLS.
    pub tls: Option<TlsConfig>,
    /// Seconds a client may take to send a request's line and headers, the WebSocket
    /// handshake included; an idle keep-alive connection is closed after it too.
    pub header_timeout: u64,
    /// Seconds a signed API request may take to send its body.
    pub body_timeout: u64,
    /// Accepted connections that have neither upgraded to a WebSocket nor passed a signature
    /// check; at the cap the oldest of them is closed to admit a new one.
    pub max_pending_connections: usize,
}

/// `[server.tls]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 8080,
            path: String::new(),
            max_connections: None,
            shutdown_grace_period: 10,
            metrics_port: None,
            metrics_prefix: "resound".into(),
            outbound_queue_size: 1024,
            outbound_queue_bytes: 1024 * 1024,
            outbound_node_bytes: 1024 * 1024 * 1024,
            partial_message_node_bytes: 64 * 1024 * 1024,
            tls: None,
            header_timeout: 10,
            body_timeout: 10,
            max_pending_connections: 4096,
        }
    }
}

/// `[scaling]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingConfig {
    pub enabled: bool,
    /// The Redis server; with `sentinels`, only its scheme (`rediss://` for TLS), credentials
    /// and database apply to the master the sentinels name.
    pub redis_url: String,
    pub channel: String,
    /// Sentinel URLs: when set, the master named `sentinel_master` is found through them and
    /// followed across failovers.
    pub sentinels: Vec<String>,
    pub sentinel_master: Option<String>,
    /// Redis Cluster seed URLs: when set, commands follow the cluster's slots and pub/sub is
    /// sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis 7+; classic on 6.2); `redis_url` is not used.
    pub cluster_nodes: Vec<String>,
    /// PEM file of the CA (or self-signed certificate) to trust for `rediss://`, instead of
    /// the public roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            enabled: false,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            channel: "resound".into(),
            sentinels: Vec::new(),
            sentinel_master: None,
            cluster_nodes: Vec::new(),
            tls_ca_file: None,
        }
    }
}

/// `[webhooks]`: delivery settings shared by every app (targets are per app, in
/// `[[apps.webhooks]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Extra trusted roots (PEM) for `https://` targets, added to the bundled Mozilla roots
    /// and the system's trust store: a private CA or a receiver's self-signed certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// Seconds one attempt may take, connect to response.
    pub request_timeout: u64,
    /// Seconds after the first attempt during which failed requests are retried.
    pub retry_window: u64,
    /// Events that may wait per app before the newest are dropped.
    pub queue_capacity: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let d = DispatcherSettings::default();
        WebhooksConfig {
            ca_file: None,
            request_timeout: d.request_timeout.as_secs(),
            retry_window: d.retry_window.as_secs(),
            queue_capacity: d.queue_capacity,
        }
    }
}

impl WebhooksConfig {
    /// The dispatcher settings these values describe (back-off stays at its defaults).
    pub fn dispatcher(&self) -> DispatcherSettings {
        DispatcherSettings {
            queue_capacity: self.queue_capacity,
            request_timeout: Duration::from_secs(self.request_timeout),
            retry_window: Duration::from_secs(self.retry_window),
            ca_file: self.ca_file.clone(),
            ..DispatcherSettings::default()
        }
    }
}

/// `[[apps]]`. Unset options take the defaults of spec 7.7 (or Reverb's, for an app defined by
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
    pub webhook_batching: Option<bool>,
    pub webhook_batch_window_ms: Option<u64>,
    pub webhook_batch_max_events: Option<usize>,
    pub webhook_removal_delay: Option<u64>,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
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

/// The validated configuration the server runs with.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub scaling: ScalingConfig,
    pub webhooks: DispatcherSettings,
    pub apps: Vec<App>,
    /// What `check-config` prints (secrets masked).
    pub effective: FileConfig,
}

/// Where to read from.
#[derive(Debug, Default)]
pub struct Sources<'a> {
    pub config_file: Option<&'a Path>,
    pub env_file: Option<&'a Path>,
    /// The process environment (injected so tests never touch the real one).
    pub process_env: Vec<(String, String)>,
}

/// A provider over a list of `(dotted.key, raw value, variable name)`, so errors name the
/// variable a bad value came from.
struct Vars {
    name: String,
    entries: Vec<(String, String, String)>,
}

impl Provider for Vars {
    fn metadata(&self) -> Metadata {
        let names: BTreeMap<String, String> = self
            .entries
            .iter()
            .map(|(k, _, var)| (k.clone(), var.clone()))
            .collect();
        Metadata::named(self.name.clone()).interpolater(move |_: &Profile, k: &[&str]| {
            let key = k.join(".");
            names.get(&key).cloned().unwrap_or(key)
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw, _) in &self.entries {
            let value = env_value(raw);
            let path: Vec<&str> = key.split('.').collect();
            insert_path(&mut dict, &path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// An environment value as figment reads one (`true`, `42`, `["a", "b"]`), else the text
/// itself. figment 0.10's unescaping of a quoted string slices it by character index
/// (`value/escape.rs`), which panics when a non-ASCII character comes before a backslash; such
/// a value is taken as text without asking figment. (Found by `fuzz/`'s `config` target.)
fn env_value(raw: &str) -> Value {
    if !raw.is_ascii() && raw.contains('\\') {
        return Value::from(raw.to_string());
    }
    raw.parse().unwrap_or_else(|_| Value::from(raw.to_string()))
}

/// Inserts `value` at the nested `path` of `dict`, creating tables on the way.
fn insert_path(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// Parses a `.env` file as Laravel's loader reads it: `KEY=VALUE` lines, `#` comments (a comment
/// after a value needs a space before the `#`), optional `export `, a quoted value taken up to
/// its closing quote (so `KEY="v" # comment` is `v`), `\"`, `\\` and `\n` escapes inside double
/// quotes, single quotes literal.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        out.push((k.trim().to_string(), env_file_value(v.trim())));
    }
    out
}

/// One value of a `.env` line, quotes and trailing comment removed.
fn env_file_value(v: &str) -> String {
    let mut chars = v.chars();
    let quote = match chars.next() {
        Some(q @ ('"' | '\'')) => q,
        _ => {
            // Unquoted: a `#` after whitespace starts a comment.
            let end = v
                .char_indices()
                .find(|&(i, c)| c == '#' && v[..i].ends_with([' ', '\t']))
                .map_or(v.len(), |(i, _)| i);
            return v[..end].trim_end().to_string();
        }
    };
    let mut value = String::new();
    while let Some(c) = chars.next() {
        match c {
            c if c == quote => return value,
            '\\' if quote == '"' => match chars.next() {
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                Some(e @ ('"' | '\\' | '$')) => value.push(e),
                Some(other) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            },
            c => value.push(c),
        }
    }
    // No closing quote: the value is the text as written.
    v.to_string()
}

/// Reads, merges and validates every source.
pub fn load(sources: &Sources<'_>) -> Result<Config, ConfigError> {
    // The environment: `.env` first, the process environment wins (as Laravel's loader does).
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if let Some(path) = sources.env_file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        env.extend(parse_env_file(&text));
    }
    env.extend(sources.process_env.iter().cloned());

    let mut figment = Figment::from(Serialized::defaults(FileConfig::default()));
    if let Some(path) = sources.config_file {
        if !path.is_file() {
            return Err(ConfigError::Invalid(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let reverb = reverb::server_vars(&env);
    if !reverb.is_empty() {
        figment = figment.merge(Vars {
            name: "Reverb environment variable".into(),
            entries: reverb,
        });
    }
    let resound: Vec<(String, String, String)> = env
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("RESOUND_")?;
            // Only `RESOUND_<SECTION>__<KEY>` is configuration; `RESOUND_LOG` and other
            // single-word names belong to tools.
            if !rest.contains("__") {
                return None;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            Some((key, v.clone(), k.clone()))
        })
        .collect();
    if !resound.is_empty() {
        figment = figment.merge(Vars {
            name: "environment variable".into(),
            entries: resound,
        });
    }
    let mut file: FileConfig = figment.extract()?;

    // An app defined by Reverb's variables joins the configured apps; when the file has an app
    // with the same id, the variables override its credentials and the settings they name, the
    // file's other settings (webhooks included) stay, and what neither sets takes Reverb's
    // defaults, as it would without the file.
    let reverb_app = reverb::app_from_env(&env)?;
    if let Some(app) = &reverb_app {
        if let Some(existing) = file.apps.iter_mut().find(|a| a.id == app.id) {
            reverb::overlay(existing, app);
        } else {
            file.apps.push(app.clone());
        }
    }
    let embedded = file.apps.is_empty();
    if embedded {
        file.apps.push(embedded_app());
    }
    validate_server(&file.server)?;
    validate_scaling(&file.scaling)?;
    files::check_readable(&file)?;
    let webhooks = file.webhooks.dispatcher();
    webhooks
        .check()
        .map_err(|e| ConfigError::Invalid(format!("webhooks: {e}")))?;
    let mut apps = Vec::with_capacity(file.apps.len());
    let mut seen_keys = std::collections::HashSet::new();
    let mut seen_ids = std::collections::HashSet::new();
    for (i, a) in file.apps.iter().enumerate() {
        let is_reverb = reverb_app.as_ref().is_some_and(|r| r.id == a.id);
        let app = build_app(a, is_reverb)
            .map_err(|m| ConfigError::Invalid(format!("apps[{i}] (id {:?}): {m}", a.id)))?;
        if !seen_keys.insert(a.key.clone()) {
            return Err(ConfigError::Invalid(format!(
                "apps[{i}]: duplicate key {:?}",
                a.key
            )));
        }
        if !seen_ids.insert(a.id.clone()) {
            return Err(ConfigError::Invalid(format!(
                "apps[{i}]: duplicate id {:?}",
                a.id
            )));
        }
        apps.push(app);
    }
    let mut effective = file.clone();
    for a in &mut effective.apps {
        a.secret = "***".into();
        // Header values are credentials more often than not (`Authorization`), and URLs may
        // carry tokens in their user info or query.
        for w in &mut a.webhooks {
            w.url = redact_url(&w.url);
            for value in w.headers.values_mut() {
                *value = "***".into();
            }
        }
    }
    effective.scaling.redis_url = mask_url_password(&effective.scaling.redis_url);
    for s in effective
        .scaling
        .sentinels
        .iter_mut()
        .chain(effective.scaling.cluster_nodes.iter_mut())
    {
        *s = mask_url_password(s);
    }
    Ok(Config {
        server: file.server,
        scaling: file.scaling,
        webhooks,
        apps,
        effective,
    })
}

/// The app served when nothing is configured: `app-id`/`app-key`/`app-secret`, client events on.
pub fn embedded_app() -> AppConfig {
    AppConfig {
        id: "app-id".into(),
        key: "app-key".into(),
        secret: "app-secret".into(),
        enable_client_messages: Some(true),
        ..AppConfig::default()
    }
}

fn validate_server(s: &ServerConfig) -> Result<(), ConfigError> {
    if !s.path.is_empty() && (!s.path.starts_with('/') || s.path.ends_with('/')) {
        return Err(ConfigError::Invalid(format!(
            "server.path {:?} must start with '/' and not end with '/' (e.g. \"/reverb\")",
            s.path
        )));
    }
    for (key, value) in [
        ("outbound_queue_size", s.outbound_queue_size),
        ("outbound_queue_bytes", s.outbound_queue_bytes),
        ("outbound_node_bytes", s.outbound_node_bytes),
        ("partial_message_node_bytes", s.partial_message_node_bytes),
    ] {
        if value == 0 {
            return Err(ConfigError::Invalid(format!("server.{key} must be > 0")));
        }
    }
    for (key, v) in [
        ("header_timeout", s.header_timeout),
        ("body_timeout", s.body_timeout),
    ] {
        if v == 0 {
            return Err(ConfigError::Invalid(format!("server.{key} must be > 0")));
        }
    }
    if s.max_pending_connections == 0 {
        return Err(ConfigError::Invalid(
            "server.max_pending_connections must be > 0".into(),
        ));
    }
    if s.metrics_prefix.is_empty()
        || !s
            .metrics_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ConfigError::Invalid(format!(
            "server.metrics_prefix {:?} must be [A-Za-z0-9_]+",
            s.metrics_prefix
        )));
    }
    Ok(())
}

fn validate_scaling(s: &ScalingConfig) -> Result<(), ConfigError> {
    let urls = || {
        std::iter::once(&s.redis_url)
            .chain(&s.sentinels)
            .chain(&s.cluster_nodes)
    };
    for url in urls() {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::Invalid(format!(
                "scaling: {} must start with redis:// or rediss://",
                mask_url_password(url)
            )));
        }
        // Certificate checks cannot be turned off: trust a private CA with `tls_ca_file`.
        if url.ends_with("#insecure") {
            return Err(ConfigError::Invalid(format!(
                "scaling: {} asks for unverified TLS, which is not supported; set scaling.tls_ca_file to the CA that signed the Redis certificate",
                mask_url_password(url)
            )));
        }
    }
    let tls = urls().any(|u| u.starts_with("rediss://"));
    if s.tls_ca_file.is_some() && !tls {
        return Err(ConfigError::Invalid(
            "scaling.tls_ca_file is only used with rediss:// URLs (redis_url, sentinels or cluster_nodes)".into(),
        ));
    }
    if !s.cluster_nodes.is_empty() && !s.sentinels.is_empty() {
        return Err(ConfigError::Invalid(
            "scaling.cluster_nodes and scaling.sentinels cannot be combined: a Redis Cluster fails over by itself".into(),
        ));
    }
    match (&s.sentinel_master, s.sentinels.is_empty()) {
        (None, false) => Err(ConfigError::Invalid(
            "scaling.sentinels needs scaling.sentinel_master (the master's name in the sentinels' configuration)".into(),
        )),
        (Some(_), true) => Err(ConfigError::Invalid(
            "scaling.sentinel_master needs scaling.sentinels".into(),
        )),
        _ => Ok(()),
    }
}

fn secs(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_secs)
}

fn build_app(a: &AppConfig, reverb_defaults: bool) -> Result<App, String> {
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
    };
    let webhooks = build_webhooks(a)?;
    Ok(App {
        id: AppId(Arc::from(a.id.as_str())),
        key: AppKey(Arc::from(a.key.as_str())),
        secret: AppSecret(Arc::from(a.secret.as_str())),
        settings,
        webhooks,
    })
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

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((creds, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match creds.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
