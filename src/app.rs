//! Apps (tenants): id, key, secret and the per-app settings of protocol.md 7.7, plus the `AppStore`
//! boundary through which the server finds them. The static store serves the apps of the
//! configuration; a database-backed store can implement the same trait.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;

/// The HTTP API's app id (`/apps/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(pub Arc<str>);

/// The public key clients connect with (`/app/{key}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppKey(pub Arc<str>);

/// The signing secret. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct AppSecret(pub Arc<str>);

impl fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppSecret(***)")
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AppId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl AppKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl AppSecret {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who may send client events (Reverb's `accept_client_events_from`, protocol.md 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEventPolicy {
    /// Off (Pusher's default).
    Disabled,
    /// Subscribed members of private/presence channels (Pusher's rule when enabled).
    Members,
    /// Reverb's `all`: also public channels the sender is subscribed to.
    MembersIncludingPublic,
}

/// Per-app limits and switches, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSettings {
    pub enabled: bool,
    pub tls_only: bool,
    /// Host patterns (`*` wildcard) for the `Origin` check; `None` when `*` disables it.
    pub allowed_origins: Option<Vec<String>>,
    pub max_connections: Option<u64>,
    pub over_quota_close_code: u16,
    pub activity_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub max_message_size: usize,
    pub max_channel_name_length: usize,
    pub max_presence_members_per_channel: usize,
    pub max_presence_member_size: usize,
    /// Channels one connection may be subscribed to at once (4100 above).
    pub max_channels_per_connection: usize,
    /// Subscribes one connection may make per second, after a burst of
    /// `max_channels_per_connection` (so a reconnecting client can subscribe to all its
    /// channels at once); 4301 above.
    pub max_subscribes_per_second: u32,
    /// Channels one `GET /channels` answer lists at most; the rest come in the next pages.
    pub max_channels_listed: usize,
    pub cache_ttl: Duration,
    pub subscription_count_events: bool,
    pub subscription_error_event: bool,
    pub client_events: ClientEventPolicy,
    pub max_client_events_per_second: u32,
    pub terminate_on_client_event_limit: bool,
    pub max_event_payload_bytes: usize,
    pub max_http_body_bytes: usize,
    pub max_event_channels: usize,
    pub max_batch_size: usize,
    pub max_event_name_length: usize,
    pub auth_timestamp_tolerance: Duration,
    pub user_authentication: bool,
    pub require_authorization: bool,
    pub authorization_timeout: Duration,
    pub watchlist_events: bool,
    pub max_watchlist_size: usize,
    pub terminate_presence_members: bool,
    /// Backend (HTTP publish) events per second, counted per target channel; `None` = unlimited.
    pub max_backend_events_per_second: Option<u32>,
    /// Signed GET requests per second; `None` = unlimited.
    pub max_read_requests_per_second: Option<u32>,
    /// How long an HTTP API idempotency key is remembered after its answer (zero: keys
    /// are ignored).
    pub idempotency_window: Duration,
    /// Keys remembered per app on one node; the oldest is forgotten first above it.
    pub idempotency_max_keys: usize,
    /// Bytes the remembered keys and answers of an app may hold on one node.
    pub idempotency_max_bytes: usize,
    /// Channels whose events are kept for resuming clients; `None`: no history.
    pub history: Option<HistorySettings>,
    /// A secret being rotated out: still accepted for channel tokens, sign-in and API
    /// signatures until its deadline, so backends can move to the new one one by one.
    pub previous_secret: Option<PreviousSecret>,
    /// `permessage-deflate` is accepted, and broadcast frames of at least this many bytes are
    /// compressed for the sockets that negotiated it; none: the extension is declined.
    pub deflate_threshold: Option<usize>,
}

/// Which channels of an app keep their events for resuming clients, and the bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySettings {
    /// Channel name patterns; `*` matches any run of characters.
    pub channels: Vec<String>,
    /// Events kept per channel (oldest dropped first).
    pub max_events: usize,
    /// How long an event is kept.
    pub ttl: Duration,
    /// Bytes all of the app's histories hold on one node (oldest event of the app dropped
    /// first).
    pub max_bytes: usize,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            channels: Vec::new(),
            max_events: 100,
            ttl: Duration::from_secs(120),
            max_bytes: 8 << 20,
        }
    }
}

impl HistorySettings {
    /// Whether `channel` keeps a history.
    pub fn covers(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| glob(p, channel))
    }

    /// The bounds a cluster's shared history keeps (`max_bytes` is a node's, not its).
    pub fn bounds(&self) -> crate::cluster::HistoryBounds {
        crate::cluster::HistoryBounds {
            max_events: self.max_events,
            ttl: self.ttl,
        }
    }
}

/// The secret an app had before, and until when it is accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousSecret {
    pub secret: AppSecret,
    pub until: std::time::SystemTime,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            enabled: true,
            tls_only: false,
            allowed_origins: None,
            max_connections: None,
            over_quota_close_code: 4004,
            activity_timeout: Duration::from_secs(120),
            ping_interval: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            max_message_size: 65_536,
            max_channel_name_length: 200,
            max_presence_members_per_channel: 100,
            max_presence_member_size: 1024,
            max_channels_per_connection: 100,
            max_subscribes_per_second: 10,
            max_channels_listed: 10_000,
            cache_ttl: Duration::from_secs(1800),
            subscription_count_events: false,
            subscription_error_event: false,
            client_events: ClientEventPolicy::Disabled,
            max_client_events_per_second: 10,
            terminate_on_client_event_limit: false,
            max_event_payload_bytes: 10_240,
            max_http_body_bytes: 262_144,
            max_event_channels: 100,
            max_batch_size: 10,
            max_event_name_length: 200,
            auth_timestamp_tolerance: Duration::from_secs(600),
            user_authentication: true,
            require_authorization: false,
            authorization_timeout: Duration::from_secs(30),
            watchlist_events: false,
            max_watchlist_size: 100,
            terminate_presence_members: false,
            max_backend_events_per_second: None,
            max_read_requests_per_second: None,
            idempotency_window: Duration::from_secs(300),
            idempotency_max_keys: 10_000,
            idempotency_max_bytes: 4 << 20,
            history: None,
            previous_secret: None,
            deflate_threshold: Some(512),
        }
    }
}

/// One app.
#[derive(Debug, PartialEq)]
pub struct App {
    pub id: AppId,
    pub key: AppKey,
    pub secret: AppSecret,
    pub settings: AppSettings,
    pub webhooks: Option<Arc<crate::webhooks::AppWebhooks>>,
    /// The app's Redis stream sinks (`[[apps.streams]]`).
    pub streams: Option<Arc<crate::streams::AppStreams>>,
}

impl App {
    /// The secrets a signature may be made with at `now`: the app's, then a previous one
    /// within its grace period. What the server signs itself (webhooks) uses the app's.
    pub fn secrets_at(&self, now: std::time::SystemTime) -> impl Iterator<Item = &str> {
        let previous = self
            .settings
            .previous_secret
            .as_ref()
            .filter(|p| now < p.until)
            .map(|p| p.secret.as_str());
        std::iter::once(self.secret.as_str()).chain(previous)
    }

    /// A hold for one of this app's removals (`channel_vacated`, `member_removed`), reported
    /// to its webhooks and stream sinks; none without either, or without removal delay.
    pub fn removal_hold(&self) -> Option<crate::webhooks::RemovalHold> {
        let delay = self
            .webhooks
            .as_ref()
            .map(|w| w.removal_delay)
            .or_else(|| self.streams.as_ref().map(|s| s.removal_delay))?;
        crate::webhooks::RemovalHold::new(delay)
    }

    /// Whether `origin` (the `Origin` header, possibly absent) passes `allowed_origins`
    /// (protocol.md 1.2 step 7): the host of the origin is matched against patterns with `*`. Only a
    /// well-formed origin, `scheme://host[:port]` (RFC 6454), can pass: anything after the
    /// host (a path, query or fragment), user info, or a malformed host or port is refused,
    /// so `https://evil.test#.example.com` does not pass as a host under `*.example.com`.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(patterns) = &self.settings.allowed_origins else {
            return true;
        };
        let Some(host) = origin.and_then(origin_host) else {
            return false;
        };
        patterns.iter().any(|p| wildcard_match(p, host))
    }
}

/// The host of a serialised origin, `scheme://host[:port]`; `None` for anything else
/// (including `null`, which has no host).
fn origin_host(origin: &str) -> Option<&str> {
    let (scheme, authority) = origin.split_once("://")?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, after) = v6.split_once(']')?;
        if inside.is_empty()
            || !inside
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !host_ok {
            return None;
        }
        (host, port)
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
    }
    Some(host)
}

/// `*` matches any run of characters; case-insensitive (host names).
fn wildcard_match(pattern: &str, text: &str) -> bool {
    glob(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
}

/// `text` matches `pattern`, where `*` stands for any run of characters; case-sensitive.
/// Compares bytes: `*` is ASCII, so the literal parts of a pattern match whole characters.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Where apps come from.
pub trait AppStore: Send + Sync {
    fn find_by_key(&self, key: &str) -> Option<Arc<App>>;
    fn find_by_id(&self, id: &str) -> Option<Arc<App>>;
    fn all(&self) -> Vec<Arc<App>>;
}

/// The apps, indexed by key and id: those of the configuration file and, with an app
/// database, those of its table (`replace` swaps in a new set from one source; readers hold
/// the lock only to clone an `Arc`). An app of the file wins over a database row with the same
/// id or key.
pub struct StaticAppStore {
    table: RwLock<Arc<AppTable>>,
    /// The apps of each source, as last given (writers serialize on it).
    sources: parking_lot::Mutex<[Vec<Arc<App>>; 2]>,
}

/// Where apps come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppSource {
    /// The configuration file and the environment.
    File = 0,
    /// The app database's table (`[app_database]`).
    Database = 1,
}

#[derive(Default)]
struct AppTable {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
    ordered: Vec<Arc<App>>,
}

impl AppTable {
    /// The table of `sources` in order; an app whose id or key an earlier one took is left
    /// out (and returned).
    fn merge(sources: &[Vec<Arc<App>>]) -> (AppTable, Vec<Arc<App>>) {
        let mut t = AppTable::default();
        let mut shadowed = Vec::new();
        for app in sources.iter().flatten() {
            if t.by_id.contains_key(app.id.as_str()) || t.by_key.contains_key(app.key.as_str()) {
                shadowed.push(app.clone());
                continue;
            }
            t.by_id.insert(app.id.as_str().to_owned(), app.clone());
            t.by_key.insert(app.key.as_str().to_owned(), app.clone());
            t.ordered.push(app.clone());
        }
        (t, shadowed)
    }
}

/// What a `StaticAppStore::replace` changed.
#[derive(Debug, Default)]
pub struct AppChanges {
    /// Apps that are new (by id).
    pub added: Vec<Arc<App>>,
    /// Apps whose definition changed: the new one.
    pub changed: Vec<Arc<App>>,
    /// Apps that are gone.
    pub removed: Vec<Arc<App>>,
    /// Apps left out because an app of the file (or an earlier row) has their id or key.
    pub shadowed: Vec<Arc<App>>,
}

impl AppChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl StaticAppStore {
    pub fn new(apps: Vec<App>) -> Self {
        let file: Vec<Arc<App>> = apps.into_iter().map(Arc::new).collect();
        let sources = [file, Vec::new()];
        let (table, _) = AppTable::merge(&sources);
        StaticAppStore {
            table: RwLock::new(Arc::new(table)),
            sources: parking_lot::Mutex::new(sources),
        }
    }

    fn table(&self) -> Arc<AppTable> {
        self.table.read().clone()
    }

    /// Replaces the apps of `source` with `apps`; an app whose definition is the same keeps
    /// its value.
    pub fn replace(&self, source: AppSource, apps: Vec<App>) -> AppChanges {
        let mut sources = self.sources.lock();
        let old = self.table();
        let mut changes = AppChanges::default();
        sources[source as usize] = apps
            .into_iter()
            .map(|app| match old.by_id.get(app.id.as_str()) {
                Some(was) if **was == app => was.clone(),
                _ => Arc::new(app),
            })
            .collect();
        let (table, shadowed) = AppTable::merge(&sources[..]);
        for app in &table.ordered {
            match old.by_id.get(app.id.as_str()) {
                Some(was) if Arc::ptr_eq(was, app) => {}
                Some(_) => changes.changed.push(app.clone()),
                None => changes.added.push(app.clone()),
            }
        }
        changes.removed = old
            .ordered
            .iter()
            .filter(|a| !table.by_id.contains_key(a.id.as_str()))
            .cloned()
            .collect();
        changes.shadowed = shadowed;
        *self.table.write() = Arc::new(table);
        changes
    }
}

impl AppStore for StaticAppStore {
    fn find_by_key(&self, key: &str) -> Option<Arc<App>> {
        self.table().by_key.get(key).cloned()
    }
    fn find_by_id(&self, id: &str) -> Option<Arc<App>> {
        self.table().by_id.get(id).cloned()
    }
    fn all(&self) -> Vec<Arc<App>> {
        self.table().ordered.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(origins: Option<Vec<&str>>) -> App {
        App {
            id: AppId("1".into()),
            key: AppKey("k".into()),
            secret: AppSecret("s".into()),
            settings: AppSettings {
                allowed_origins: origins.map(|o| o.into_iter().map(String::from).collect()),
                ..AppSettings::default()
            },
            webhooks: None,
            streams: None,
        }
    }

    #[test]
    fn origin_patterns_match_the_host() {
        let a = app(Some(vec!["laravel.test", "*.example.com"]));
        assert!(a.origin_allowed(Some("https://laravel.test")));
        assert!(a.origin_allowed(Some("http://laravel.test:8000")));
        assert!(a.origin_allowed(Some("https://app.example.com")));
        assert!(!a.origin_allowed(Some("https://example.org")));
        assert!(!a.origin_allowed(Some("https://evil.test")));
        assert!(!a.origin_allowed(None));
        assert!(app(None).origin_allowed(None));
    }

    #[test]
    fn hostile_origins_do_not_pass_a_wildcard() {
        let a = app(Some(vec!["*.example.com", "::1"]));
        for origin in [
            "https://evil.com#.example.com",
            "https://evil.com/.example.com",
            "https://evil.com?.example.com",
            "https://evil.com\\.example.com",
            "https://app.example.com@evil.com",
            "https://user@app.example.com",
            "https://evil.com:.example.com",
            "https://evil.com:443.example.com",
            "https://evil.com%2e.example.com",
            "https://evil.com .example.com",
            "https://app.example.com:99999x",
            "https://app.example.com:",
            "https://app.example.com/",
            "https://app.example.com/path",
            "app.example.com",
            "//app.example.com",
            "https://",
            "null",
            "",
            "https://[::1]evil",
            "https://[::1/x]",
            "1https://app.example.com",
            "https://evil.example.com.evil.org",
        ] {
            assert!(
                !a.origin_allowed(Some(origin)),
                "{origin:?} must be refused"
            );
        }
        for origin in [
            "https://app.example.com",
            "http://app.example.com:8080",
            "HTTPS://APP.EXAMPLE.COM",
            "https://a.b.example.com",
            "chrome-extension://x.example.com",
            "http://[::1]:6001",
            "http://[::1]",
        ] {
            assert!(a.origin_allowed(Some(origin)), "{origin:?} must pass");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(
            format!("{:?}", AppSecret("hunter2".into())),
            "AppSecret(***)"
        );
    }
}
