//! Live reload (SIGHUP): the configuration is read again from the sources it came from, the
//! TLS certificate is reloaded, and the apps are replaced without dropping a socket.
//!
//! What a reload applies to apps: an added app serves at once; a changed app's definition
//! (secret, previous secret, limits, switches, webhooks) is what every later read sees —
//! new connections, HTTP requests and their signatures, channel and user authentication on
//! connections already open; limits a connection took when it opened (activity timeout,
//! channels per connection...) stay for that connection. An app that is removed has its
//! sockets closed with 4001 (`AppNotFound`), a disabled one with 4003 (`AppDisabled`).
//! Settings outside the apps (listener, scaling, webhook dispatcher...) apply at the next
//! start; a reload names the ones that changed in the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tracing::{info, warn};

use crate::app::{AppChanges, AppSource, StaticAppStore};
use crate::config::{Config, ConfigError};
use crate::protocol::ErrorKind;
use crate::state::ServerState;
use crate::tls::Tls;

/// Reads the configuration again (from the sources the server started with).
pub type Load = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Applies a reload to a running server (see the module docs).
pub struct Reloader {
    state: Arc<ServerState>,
    apps: Arc<StaticAppStore>,
    tls: Option<Arc<Tls>>,
    load: std::sync::OnceLock<Load>,
    /// The files `watch_files` checks for a change (the configuration and `.env` files).
    watched: std::sync::OnceLock<Vec<PathBuf>>,
    /// The settings outside the apps the server runs with, as `check-config` shows them.
    running: parking_lot::Mutex<Value>,
}

/// What one reload did.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub apps: AppChanges,
    /// Settings that changed but apply only at the next start (`server.port`, ...).
    pub need_restart: Vec<String>,
}

impl Reloader {
    pub(crate) fn new(
        state: Arc<ServerState>,
        apps: Arc<StaticAppStore>,
        tls: Option<Arc<Tls>>,
        running: Value,
    ) -> Reloader {
        Reloader {
            state,
            apps,
            tls,
            load: std::sync::OnceLock::new(),
            watched: std::sync::OnceLock::new(),
            running: parking_lot::Mutex::new(running),
        }
    }

    /// Where a reload reads the configuration from; without it, only the certificate reloads.
    /// Set once.
    pub(crate) fn set_load(&self, load: Load) {
        let _ = self.load.set(load);
    }

    /// The files whose change reloads (with `server.watch_config_ms`). Set once.
    pub fn watch(&self, paths: Vec<PathBuf>) {
        let _ = self.watched.set(paths);
    }

    /// Reloads the certificate, then the configuration. A configuration that does not load
    /// changes nothing (the error says why).
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => info!("TLS certificate reloaded"),
                Err(e) => {
                    warn!(error = %e, "TLS certificate reload failed; keeping the previous one")
                }
            }
        }
        let Some(load) = self.load.get() else {
            return Ok(Reloaded::default());
        };
        let config = load()?;
        for w in &config.warnings {
            warn!("{w}");
        }
        let now = outside_apps(&config);
        let need_restart = {
            let mut running = self.running.lock();
            let changed = changed_keys(&running, &now);
            *running = now;
            changed
        };
        if !need_restart.is_empty() {
            warn!(
                settings = %need_restart.join(", "),
                "changed settings apply at the next start, not by a reload"
            );
        }
        let changes = self.apps.replace(AppSource::File, config.apps);
        self.apply(&changes);
        info!(
            added = changes.added.len(),
            changed = changes.changed.len(),
            removed = changes.removed.len(),
            "apps reloaded"
        );
        Ok(Reloaded {
            apps: changes,
            need_restart,
        })
    }

    /// Replaces the apps of `source` (the app database's refresh) and applies what changed.
    pub fn apply_source(&self, source: AppSource, apps: Vec<crate::app::App>) -> AppChanges {
        let changes = self.apps.replace(source, apps);
        self.apply(&changes);
        changes
    }

    fn apply(&self, changes: &AppChanges) {
        for app in &changes.shadowed {
            warn!(app_id = %app.id, key = %app.key.as_str(), "app left out: another app has its id or key");
        }
        for app in &changes.added {
            info!(app_id = %app.id, key = %app.key.as_str(), "app added");
            self.state.hub(app);
        }
        for app in &changes.changed {
            info!(app_id = %app.id, "app changed");
            if let Some(hub) = self.state.existing_hub(&app.id) {
                hub.set_app(app.clone());
                if !app.settings.enabled {
                    hub.close_all(ErrorKind::AppDisabled);
                }
            }
        }
        for app in &changes.removed {
            info!(app_id = %app.id, "app removed");
            if let Some(hub) = self.state.remove_hub(&app.id) {
                hub.close_all(ErrorKind::AppNotFound);
            }
        }
    }
}

/// The configuration outside the apps, as `check-config` shows it (secrets masked).
pub(crate) fn outside_apps(config: &Config) -> Value {
    let mut v = serde_json::to_value(&config.effective).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.remove("apps");
    }
    v
}

/// The dotted names of the settings that differ (two levels deep: `server.port`).
fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let (Value::Object(o), Value::Object(n)) = (old, new) else {
        return if old == new {
            Vec::new()
        } else {
            vec!["(all)".into()]
        };
    };
    let mut out = Vec::new();
    let sections: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    for section in sections {
        match (o.get(section), n.get(section)) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    if a.get(k) != b.get(k) {
                        out.push(format!("{section}.{k}"));
                    }
                }
            }
            (a, b) if a != b => out.push(section.clone()),
            _ => {}
        }
    }
    out
}

/// Reloads on every SIGHUP.
pub(crate) async fn on_sighup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            warn!("cannot listen for SIGHUP; reload disabled");
            return;
        };
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading");
            if let Err(e) = reloader.reload() {
                warn!(error = %e, "reload failed; the configuration running stays");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloader;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_keys_names_each_setting() {
        let old = json!({"server": {"port": 1, "host": "a"}, "scaling": {"enabled": false}});
        let new =
            json!({"server": {"port": 2, "host": "a"}, "scaling": {"enabled": false}, "x": 1});
        assert_eq!(changed_keys(&old, &new), ["server.port", "x"]);
        assert!(changed_keys(&old, &old).is_empty());
    }
}

/// What a watched file looks like: a change of any part is an edit (an editor that saves by
/// renaming a new file over the old one changes the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

async fn stamp(path: &Path) -> Option<Stamp> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

async fn stamps(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        out.push(stamp(p).await);
    }
    out
}

/// Checks the watched files every `every` and reloads once a change has settled (the files
/// look the same at two checks in a row, so a file caught half-written is not read). A file
/// that disappears is waited for; a reload that fails keeps the running configuration, like
/// SIGHUP.
pub(crate) async fn watch_files(reloader: Arc<Reloader>, every: Duration) {
    let Some(paths) = reloader.watched.get().cloned().filter(|p| !p.is_empty()) else {
        return;
    };
    info!(files = ?paths, every_ms = every.as_millis() as u64, "watching the configuration for changes");
    let mut seen = stamps(&paths).await;
    let mut pending: Option<Vec<Option<Stamp>>> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = stamps(&paths).await;
        if now == seen {
            pending = None;
            continue;
        }
        if now.iter().any(Option::is_none) || pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue;
        }
        seen = now;
        pending = None;
        info!("configuration file changed: reloading");
        if let Err(e) = reloader.reload() {
            warn!(error = %e, "reload failed; the configuration running stays");
        }
    }
}
