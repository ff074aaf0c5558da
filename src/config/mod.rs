//! Configuration: one serde tree read from TOML, the `.env`/process environment (`RESOUND_*`
//! and Laravel Reverb's `REVERB_*`/`REDIS_*` names), validated once into runtime types.
//!
//! Precedence, lowest first: built-in defaults, the `--config` file, Reverb's variables,
//! `RESOUND_<SECTION>__<KEY>` variables. Nothing outside this module reads the environment.
//! Unknown keys and bad values stop start-up with a message naming the key and its source.

mod apps;
mod files;
mod peers;
mod reverb;

use apps::build_app;
pub use apps::{AppConfig, StreamConfig, WebhookConfig};

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::webhooks::{redact_url, DispatcherSettings};

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
    pub streams: StreamsConfig,
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    #[serde(default)]
    pub app_database: AppDatabaseConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// `[console]`: the live debug console (docs/operations.md, "Debug console"). Off by default;
/// on its own listener unless `on_main_listener` asks for the public one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// `host:port` of the console's own listener (not used with `on_main_listener`).
    pub listen: String,
    /// Serve the console under `/console` on the main listener instead of its own.
    pub on_main_listener: bool,
    /// The admin token, which opens every app; empty: each app opens with its own secret only.
    pub token: String,
    /// Entries one viewer is sent per second at most; beyond, entries are skipped and the
    /// stream says how many.
    pub max_entries_per_second: u32,
    /// Entries kept per app for a viewer that reads slowly; older ones are skipped (and
    /// counted) when it falls further behind.
    pub buffer: usize,
    /// Viewers of the whole node at once (503 beyond).
    pub max_viewers: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: false,
            listen: "127.0.0.1:9601".into(),
            on_main_listener: false,
            token: String::new(),
            max_entries_per_second: 200,
            buffer: 256,
            max_viewers: 16,
        }
    }
}

/// `[app_database]`: apps read from a PostgreSQL or MySQL/MariaDB table besides the file's
/// (docs/operations.md, "Apps from a database").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppDatabaseConfig {
    /// `postgres://…` or `mysql://…` (`mariadb://` is taken as `mysql://`); empty: off.
    pub url: String,
    /// The table (`[schema.]name`).
    pub table: String,
    /// How often the table is read again (ms).
    pub refresh_ms: u64,
    /// The most rows read (the rest are left out, and a warning says so).
    pub max_apps: usize,
    /// How long one read may take (ms) before it counts as failed.
    pub timeout_ms: u64,
}

impl Default for AppDatabaseConfig {
    fn default() -> Self {
        AppDatabaseConfig {
            url: String::new(),
            table: "resound_apps".into(),
            refresh_ms: 5_000,
            max_apps: 100_000,
            timeout_ms: 5_000,
        }
    }
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
    /// Resident memory (bytes) above which new WebSockets are refused with 4100; none = no
    /// limit.
    pub max_memory_bytes: Option<u64>,
    /// Open WebSockets per client address (4100 above); none = no limit. Behind a proxy,
    /// set `client_ip_header` or every client shares the proxy's address.
    pub max_connections_per_ip: Option<u32>,
    /// A header the proxy in front sets to the client's address (`X-Forwarded-For`: its last
    /// address is the one the proxy added); without it, the TCP peer's address counts.
    pub client_ip_header: Option<String>,
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
    /// Milliseconds between checks of the configuration file (and `--env-file`) for a
    /// change, which then reloads like SIGHUP; 0: only SIGHUP reloads.
    pub watch_config_ms: u64,
    /// `[server.fallback]`: pusher-js's HTTP transports.
    pub fallback: FallbackConfig,
    /// `permessage-deflate` for the clients that offer it (each app may override it).
    pub compression: Compression,
    /// Frames of at least this many bytes are compressed; smaller ones go as they are.
    pub compression_threshold: usize,
}

/// `server.compression` and an app's `compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Accept `permessage-deflate` offers; compress each large broadcast once per node.
    On,
    /// Decline the extension: every client is served uncompressed.
    Off,
}

/// `[server.fallback]`: pusher-js's HTTP transports (`xhr_streaming`, `xhr_polling`) under
/// `/pusher/app/{key}/...` (protocol.md 1.9).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// Serve the HTTP transports at all (404 when off).
    pub enabled: bool,
    /// Seconds between heartbeat frames on a stream; a poll is answered after this long
    /// when nothing arrives.
    pub heartbeat_interval: u64,
    /// Seconds a session lives with no receiving request open (a stream closed and not
    /// reopened, no poll): then it ends as a closed socket does.
    pub disconnect_delay: u64,
    /// HTTP sessions one app may hold on this node; beyond, new ones are refused with 4100.
    pub max_sessions_per_app: usize,
    /// Bytes of one `xhr_send` body (413 above).
    pub max_send_bytes: usize,
    /// Bytes a polling session may hold queued between polls; beyond, it is closed as a slow
    /// consumer (4100).
    pub max_poll_queue_bytes: usize,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            enabled: true,
            heartbeat_interval: 25,
            disconnect_delay: 10,
            max_sessions_per_app: 10_000,
            max_send_bytes: 64 * 1024,
            max_poll_queue_bytes: 256 * 1024,
        }
    }
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
            max_memory_bytes: None,
            max_connections_per_ip: None,
            client_ip_header: None,
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
            watch_config_ms: 0,
            fallback: FallbackConfig::default(),
            compression: Compression::On,
            compression_threshold: 512,
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
    /// Bytes of messages for other nodes that may wait to be published (while Redis is slow
    /// or hangs) before new ones are dropped and counted.
    pub publish_backlog_bytes: usize,
    /// Messages no other node subscribes to are not published to Redis (a node's own
    /// channels cost no round trip through Redis); on a standalone Redis only.
    pub skip_unheard: bool,
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
            publish_backlog_bytes: 64 * 1024 * 1024,
            skip_unheard: true,
        }
    }
}

/// `[streams]`: where the apps' Redis stream sinks (`[[apps.streams]]`) are written, and how
/// much may wait (docs/streams.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// The Redis the streams are written to; empty: `scaling.redis_url` when `[scaling]` is
    /// enabled with a single Redis URL.
    pub redis_url: String,
    /// Bytes of events that may wait per app (Redis slow or unreachable) before new ones are
    /// dropped and counted.
    pub queue_bytes: usize,
    /// The most `XADD`s in one pipeline.
    pub batch_max: usize,
    /// Milliseconds one pipeline or connection attempt may take before it counts as failed
    /// (and is retried).
    pub write_timeout_ms: u64,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        let d = crate::streams::SinkSettings::default();
        StreamsConfig {
            redis_url: String::new(),
            queue_bytes: d.queue_bytes,
            batch_max: d.batch_max,
            write_timeout_ms: u64::try_from(d.write_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl StreamsConfig {
    /// The sink settings, with the Redis URL resolved (empty: none known).
    fn settings(&self, scaling: &ScalingConfig) -> Result<crate::streams::SinkSettings, String> {
        let redis_url = if !self.redis_url.is_empty() {
            self.redis_url.clone()
        } else if scaling.enabled
            && scaling.sentinels.is_empty()
            && scaling.cluster_nodes.is_empty()
        {
            scaling.redis_url.clone()
        } else {
            String::new()
        };
        if !redis_url.is_empty() {
            redis::Client::open(redis_url.as_str()).map_err(|e| {
                format!("streams.redis_url {:?}: {e}", mask_url_password(&redis_url))
            })?;
        }
        if self.queue_bytes == 0 || self.batch_max == 0 || self.write_timeout_ms == 0 {
            return Err("streams.queue_bytes, batch_max and write_timeout_ms must be > 0".into());
        }
        Ok(crate::streams::SinkSettings {
            redis_url,
            queue_bytes: self.queue_bytes,
            batch_max: self.batch_max,
            write_timeout: Duration::from_millis(self.write_timeout_ms),
        })
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

/// The validated configuration the server runs with.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub scaling: ScalingConfig,
    pub webhooks: DispatcherSettings,
    /// `[streams]`, its Redis URL resolved (empty: no sink can be written on this node).
    pub streams: crate::streams::SinkSettings,
    pub apps: Vec<App>,
    /// `[app_database]` when its `url` is set.
    pub app_database: Option<AppDatabaseConfig>,
    /// `[console]` when enabled.
    pub console: Option<ConsoleConfig>,
    /// What `check-config` prints (secrets masked).
    pub effective: FileConfig,
    /// What the operator should know but that does not stop start-up (logged once).
    pub warnings: Vec<String>,
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

/// Levels in a `RESOUND_A__B__C` name (the deepest setting has four).
const MAX_ENV_KEY_DEPTH: usize = 8;

/// Nesting of brackets and braces in one environment value (a list of tables needs two).
const MAX_ENV_VALUE_NESTING: usize = 32;

/// An environment value as figment reads one (`true`, `42`, `["a", "b"]`), else the text
/// itself. figment 0.10's unescaping of a quoted string slices it by character index
/// (`value/escape.rs`), which panics when a non-ASCII character comes before a backslash; such
/// a value is taken as text without asking figment. (Found by `fuzz/`'s `config` target.)
///
/// figment's parser also recurses once per `[` or `{` with no bound, so a value nested deeper
/// than any setting can be (`MAX_ENV_VALUE_NESTING`) is taken as text too, and the setting it
/// names refuses it with an ordinary error instead of the parser running out of stack.
fn env_value(raw: &str) -> Value {
    if !raw.is_ascii() && raw.contains('\\') {
        return Value::from(raw.to_string());
    }
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in raw.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_ENV_VALUE_NESTING {
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
    let soketi = peers::soketi_server_vars(&env)?;
    if !soketi.is_empty() {
        figment = figment.merge(Vars {
            name: "Soketi environment variable".into(),
            entries: soketi,
        });
    }
    let reverb = reverb::server_vars(&env);
    if !reverb.is_empty() {
        figment = figment.merge(Vars {
            name: "Reverb environment variable".into(),
            entries: reverb,
        });
    }
    let mut resound: Vec<(String, String, String)> = Vec::new();
    for (k, v) in &env {
        let Some(rest) = k.strip_prefix("RESOUND_") else {
            continue;
        };
        // Only `RESOUND_<SECTION>__<KEY>` is configuration; `RESOUND_LOG` and other
        // single-word names belong to tools.
        if !rest.contains("__") {
            continue;
        }
        let key = rest.to_ascii_lowercase().replace("__", ".");
        // No setting is deeper than a few levels; a deeper name is refused before anything
        // recurses over it.
        if key.split('.').count() > MAX_ENV_KEY_DEPTH {
            return Err(ConfigError::Invalid(format!(
                "{k}: no setting is nested more than {MAX_ENV_KEY_DEPTH} levels deep"
            )));
        }
        resound.push((key, v.clone(), k.clone()));
    }
    if !resound.is_empty() {
        figment = figment.merge(Vars {
            name: "environment variable".into(),
            entries: resound,
        });
    }
    let mut file: FileConfig = figment.extract()?;

    // Soketi's and Pusher's apps join the same way; Reverb's variables win over both.
    for app in [peers::pusher_app(&env)?, peers::soketi_app(&env)?]
        .into_iter()
        .flatten()
    {
        match file.apps.iter_mut().find(|a| a.id == app.id) {
            Some(existing) => peers::overlay(existing, &app)?,
            None => file.apps.push(app),
        }
    }
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
    // With an app database, its apps are the ones served: no embedded default.
    let embedded = file.apps.is_empty() && file.app_database.url.is_empty();
    if embedded {
        file.apps.push(embedded_app());
    }
    let mut warnings = Vec::new();
    let unmapped = peers::soketi_unmapped(&env);
    if !unmapped.is_empty() {
        warnings.push(format!(
            "ignored (no equivalent here; see docs/migrating.md): {}",
            unmapped.join(", ")
        ));
    }
    let soketi_limits = peers::soketi_app_limits(&env)?;
    for app in &mut file.apps {
        peers::fill(app, &soketi_limits)?;
    }
    validate_server(&file.server)?;
    validate_scaling(&file.scaling)?;
    validate_app_database(&file.app_database)?;
    validate_console(&file.console)?;
    files::check_readable(&file)?;
    let webhooks = file.webhooks.dispatcher();
    webhooks
        .check()
        .map_err(|e| ConfigError::Invalid(format!("webhooks: {e}")))?;
    let streams = file
        .streams
        .settings(&file.scaling)
        .map_err(ConfigError::Invalid)?;
    if streams.redis_url.is_empty() {
        if let Some((i, a)) = file
            .apps
            .iter()
            .enumerate()
            .find(|(_, a)| !a.streams.is_empty())
        {
            return Err(ConfigError::Invalid(format!(
                "apps[{i}] (id {:?}): streams need streams.redis_url (or [scaling] enabled with redis_url)",
                a.id
            )));
        }
    }
    let mut apps = Vec::with_capacity(file.apps.len());
    let mut seen_keys = std::collections::HashSet::new();
    let mut seen_ids = std::collections::HashSet::new();
    for (i, a) in file.apps.iter().enumerate() {
        let is_reverb = reverb_app.as_ref().is_some_and(|r| r.id == a.id);
        let mut app = build_app(a, is_reverb)
            .map_err(|m| ConfigError::Invalid(format!("apps[{i}] (id {:?}): {m}", a.id)))?;
        app.settings.deflate_threshold = apps::deflate_threshold(a, &file.server);
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
        if a.previous_secret.is_some() {
            a.previous_secret = Some("***".into());
        }
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
    effective.app_database.url = mask_url_password(&effective.app_database.url);
    effective.streams.redis_url = mask_url_password(&effective.streams.redis_url);
    if !effective.console.token.is_empty() {
        effective.console.token = "***".into();
    }
    for s in effective
        .scaling
        .sentinels
        .iter_mut()
        .chain(effective.scaling.cluster_nodes.iter_mut())
    {
        *s = mask_url_password(s);
    }
    let app_database = (!file.app_database.url.is_empty()).then(|| file.app_database.clone());
    let console = file.console.enabled.then(|| file.console.clone());
    Ok(Config {
        server: file.server,
        scaling: file.scaling,
        webhooks,
        streams,
        apps,
        app_database,
        console,
        effective,
        warnings,
    })
}

/// An app of `[[apps]]`'s shape from another source (the app database), checked as the
/// file's are.
pub fn app_from_config(a: &AppConfig) -> Result<App, String> {
    build_app(a, false)
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
    if s.max_connections_per_ip == Some(0) || s.max_memory_bytes == Some(0) {
        return Err(ConfigError::Invalid(
            "server.max_connections_per_ip and server.max_memory_bytes must be > 0 (leave them out for no limit)".into(),
        ));
    }
    if let Some(h) = &s.client_ip_header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(ConfigError::Invalid(format!(
                "server.client_ip_header {h:?} is not a header name"
            )));
        }
    }
    if s.max_pending_connections == 0 {
        return Err(ConfigError::Invalid(
            "server.max_pending_connections must be > 0".into(),
        ));
    }
    let f = &s.fallback;
    for (key, v) in [
        ("heartbeat_interval", f.heartbeat_interval),
        ("disconnect_delay", f.disconnect_delay),
        ("max_sessions_per_app", f.max_sessions_per_app as u64),
        ("max_send_bytes", f.max_send_bytes as u64),
        ("max_poll_queue_bytes", f.max_poll_queue_bytes as u64),
    ] {
        if v == 0 {
            return Err(ConfigError::Invalid(format!(
                "server.fallback.{key} must be > 0"
            )));
        }
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

/// The shortest admin token accepted: it opens every app's live traffic.
const MIN_CONSOLE_TOKEN: usize = 16;

fn validate_console(c: &ConsoleConfig) -> Result<(), ConfigError> {
    if !c.enabled {
        return Ok(());
    }
    if !c.token.is_empty() && c.token.chars().count() < MIN_CONSOLE_TOKEN {
        return Err(ConfigError::Invalid(format!(
            "console.token must be at least {MIN_CONSOLE_TOKEN} characters (or empty: each app's secret opens its own console)"
        )));
    }
    if !c.on_main_listener
        && c.listen
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(ConfigError::Invalid(format!(
            "console.listen {:?} must be host:port (e.g. \"127.0.0.1:9601\")",
            c.listen
        )));
    }
    if c.max_entries_per_second == 0 || c.buffer == 0 || c.max_viewers == 0 {
        return Err(ConfigError::Invalid(
            "console: max_entries_per_second, buffer and max_viewers must be at least 1".into(),
        ));
    }
    Ok(())
}

fn validate_app_database(d: &AppDatabaseConfig) -> Result<(), ConfigError> {
    if d.url.is_empty() {
        return Ok(());
    }
    let scheme = d.url.split("://").next().unwrap_or("");
    if !["postgres", "postgresql", "mysql", "mariadb"].contains(&scheme) || !d.url.contains("://") {
        return Err(ConfigError::Invalid(format!(
            "app_database.url must start with postgres://, postgresql://, mysql:// or mariadb:// (got {:?})",
            mask_url_password(&d.url)
        )));
    }
    let valid_part = |p: &str| {
        !p.is_empty()
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    let parts: Vec<&str> = d.table.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| valid_part(p)) {
        return Err(ConfigError::Invalid(format!(
            "app_database.table must be a name or schema.name of letters, digits and _ (got {:?})",
            d.table
        )));
    }
    if d.refresh_ms < 100 || d.timeout_ms == 0 || d.max_apps == 0 {
        return Err(ConfigError::Invalid(
            "app_database: refresh_ms must be at least 100, timeout_ms and max_apps at least 1"
                .into(),
        ));
    }
    Ok(())
}

fn validate_scaling(s: &ScalingConfig) -> Result<(), ConfigError> {
    if s.publish_backlog_bytes == 0 {
        return Err(ConfigError::Invalid(
            "scaling.publish_backlog_bytes must be at least 1".into(),
        ));
    }
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
