//! Apps from a PostgreSQL or MySQL/MariaDB table (`[app_database]`, docs/operations.md "Apps
//! from a database"): the whole table is read at start and every `refresh_ms`, and handed to
//! the app store as the `Database` source (`Reloader::apply_source`), so no lookup waits for
//! the database. A read that fails keeps the apps of the last good one serving (a key the
//! node never read stays unknown until the database answers); rows that do not make a valid
//! app are skipped with a warning naming their id.
//!
//! The table (`examples/app-database/{postgres,mysql}.sql`): `id`, `app_key`, `secret`,
//! `enabled`, and `settings`, a JSON object with any other setting of `[[apps]]` under the
//! same names.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::{Map, Value};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use tracing::{info, warn};

use crate::app::{App, AppSource};
use crate::config::{app_from_config, AppConfig, AppDatabaseConfig};
use crate::reload::Reloader;

/// The layer's one error type.
#[derive(Debug, thiserror::Error)]
pub enum AppDatabaseError {
    #[error("app database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("app database: no answer within {0:?}")]
    Timeout(Duration),
    #[error("app database metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// `{prefix}_app_database_*`: how reading the table goes, for alerts on a database that stopped
/// answering (the node keeps serving the apps it read last, so nothing else would show it).
struct ReadMetrics {
    /// Reads by outcome (`ok`, `error`).
    reads: IntCounterVec,
    read_seconds: Histogram,
    /// Apps the last good read found.
    apps: IntGauge,
    /// Unix time of the last good read.
    last_success: Gauge,
    /// What reads changed in the store, by kind (`added`, `changed`, `removed`).
    changes: IntCounterVec,
}

impl ReadMetrics {
    fn new(prefix: &str) -> Result<ReadMetrics, prometheus::Error> {
        let name = |n: &str| format!("{prefix}_app_database_{n}");
        Ok(ReadMetrics {
            reads: IntCounterVec::new(
                Opts::new(name("reads_total"), "Reads of the app table, by outcome"),
                &["outcome"],
            )?,
            read_seconds: Histogram::with_opts(
                HistogramOpts::new(name("read_seconds"), "Time one read of the app table took")
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )?,
            apps: IntGauge::new(name("apps"), "Apps found by the last good read")?,
            last_success: Gauge::new(
                name("last_success_timestamp_seconds"),
                "Unix time of the last good read of the app table",
            )?,
            changes: IntCounterVec::new(
                Opts::new(
                    name("changes_total"),
                    "Apps added, changed or removed by reads",
                ),
                &["kind"],
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.reads.clone()))?;
        registry.register(Box::new(self.read_seconds.clone()))?;
        registry.register(Box::new(self.apps.clone()))?;
        registry.register(Box::new(self.last_success.clone()))?;
        registry.register(Box::new(self.changes.clone()))?;
        Ok(())
    }
}

enum Pool {
    Postgres(PgPool),
    MySql(MySqlPool),
}

/// A connection pool to the app table and how to read it.
pub struct AppDatabase {
    pool: Pool,
    table: String,
    max_apps: usize,
    timeout: Duration,
    refresh: Duration,
    metrics: ReadMetrics,
}

/// One row, before it is checked.
struct AppRow {
    id: String,
    key: String,
    secret: String,
    enabled: bool,
    settings: Option<String>,
}

impl AppDatabase {
    /// A pool that connects on first use (so a database that is down at start-up does not
    /// stop the server: the file's apps serve meanwhile). Its metrics are named with
    /// `metrics_prefix` and count once `register_metrics` has put them in a registry.
    pub fn new(
        config: &AppDatabaseConfig,
        metrics_prefix: &str,
    ) -> Result<AppDatabase, AppDatabaseError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let url = config.url.replacen("mariadb://", "mysql://", 1);
        let pool = if url.starts_with("mysql://") {
            Pool::MySql(
                MySqlPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .connect_lazy(&url)?,
            )
        } else {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .connect_lazy(&url)?,
            )
        };
        Ok(AppDatabase {
            pool,
            table: config.table.clone(),
            max_apps: config.max_apps,
            timeout,
            refresh: Duration::from_millis(config.refresh_ms),
            metrics: ReadMetrics::new(metrics_prefix)?,
        })
    }

    /// Puts the `{prefix}_app_database_*` metrics in `registry` (the node's `/metrics`).
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), AppDatabaseError> {
        Ok(self.metrics.register(registry)?)
    }

    /// Reads every app of the table (at most `max_apps`).
    pub async fn load(&self) -> Result<Vec<App>, AppDatabaseError> {
        let rows = tokio::time::timeout(self.timeout, self.rows())
            .await
            .map_err(|_| AppDatabaseError::Timeout(self.timeout))??;
        if rows.len() > self.max_apps {
            warn!(
                max_apps = self.max_apps,
                "the app table has more rows than app_database.max_apps; the rest are left out"
            );
        }
        Ok(rows
            .into_iter()
            .take(self.max_apps)
            .filter_map(|row| {
                let id = row.id.clone();
                row.into_app()
                    .map_err(|e| warn!(app_id = %id, error = %e, "app row skipped"))
                    .ok()
            })
            .collect())
    }

    async fn rows(&self) -> Result<Vec<AppRow>, sqlx::Error> {
        // The table name was checked by the configuration (letters, digits, `_`, one dot).
        let limit = self.max_apps.saturating_add(1);
        let sql = |text_type: &str| {
            format!(
                "SELECT id, app_key, secret, enabled, CAST(settings AS {text_type}) AS settings \
                 FROM {} ORDER BY id LIMIT {limit}",
                self.table
            )
        };
        // One query, read the same way from either driver's row type.
        macro_rules! read {
            ($pool:expr, $sql:expr) => {
                sqlx::query(&$sql)
                    .fetch_all($pool)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(AppRow {
                            id: r.try_get("id")?,
                            key: r.try_get("app_key")?,
                            secret: r.try_get("secret")?,
                            enabled: r.try_get("enabled")?,
                            settings: r.try_get("settings")?,
                        })
                    })
                    .collect()
            };
        }
        match &self.pool {
            Pool::Postgres(pool) => read!(pool, sql("TEXT")),
            Pool::MySql(pool) => read!(pool, sql("CHAR")),
        }
    }
}

impl AppRow {
    fn into_app(self) -> Result<App, String> {
        let mut map = match self.settings.as_deref().map(str::trim) {
            None | Some("") => Map::new(),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err("settings must be a JSON object".into()),
                Err(e) => return Err(format!("settings: {e}")),
            },
        };
        for reserved in ["id", "app_id", "key", "secret", "enabled"] {
            if map.contains_key(reserved) {
                return Err(format!(
                    "settings must not hold {reserved:?} (it is a column)"
                ));
            }
        }
        map.insert("id".into(), Value::String(self.id));
        map.insert("key".into(), Value::String(self.key));
        map.insert("secret".into(), Value::String(self.secret));
        map.insert("enabled".into(), Value::Bool(self.enabled));
        let config: AppConfig =
            serde_json::from_value(Value::Object(map)).map_err(|e| e.to_string())?;
        app_from_config(&config)
    }
}

/// Reads the table every `refresh_ms` and applies what changed; logs when reading starts or
/// stops failing, not at every failure.
pub async fn refresh(db: Arc<AppDatabase>, reloader: Arc<Reloader>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(db.refresh).await;
        failing = read_once(&db, &reloader, failing).await;
    }
}

/// One read of the table applied to the store; returns whether it failed.
pub async fn read_once(db: &AppDatabase, reloader: &Reloader, was_failing: bool) -> bool {
    let started = std::time::Instant::now();
    let read = db.load().await;
    let m = &db.metrics;
    m.read_seconds.observe(started.elapsed().as_secs_f64());
    match read {
        Ok(apps) => {
            if was_failing {
                info!("app database answering again");
            }
            m.reads.with_label_values(&["ok"]).inc();
            m.apps.set(i64::try_from(apps.len()).unwrap_or(i64::MAX));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            m.last_success.set(now);
            let changes = reloader.apply_source(AppSource::Database, apps);
            for (kind, n) in [
                ("added", changes.added.len()),
                ("changed", changes.changed.len()),
                ("removed", changes.removed.len()),
            ] {
                m.changes
                    .with_label_values(&[kind])
                    .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
            }
            false
        }
        Err(e) => {
            m.reads.with_label_values(&["error"]).inc();
            if !was_failing {
                warn!(error = %e, "reading the app database failed; the apps read before keep serving");
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(settings: Option<&str>) -> AppRow {
        AppRow {
            id: "7".into(),
            key: "k".into(),
            secret: "s".into(),
            enabled: true,
            settings: settings.map(str::to_string),
        }
    }

    #[test]
    fn settings_are_the_app_table_keys() {
        let app = row(Some(
            r#"{"max_connections": 5, "enable_client_messages": true}"#,
        ))
        .into_app()
        .expect("valid");
        assert_eq!(app.id.as_str(), "7");
        assert_eq!(app.settings.max_connections, Some(5));
        assert!(row(None).into_app().is_ok());
        assert!(row(Some("")).into_app().is_ok());
    }

    #[test]
    fn bad_settings_name_the_problem() {
        for (settings, says) in [
            ("[1]", "JSON object"),
            ("{", "settings"),
            (r#"{"no_such_setting": 1}"#, "no_such_setting"),
            (r#"{"secret": "x"}"#, "column"),
        ] {
            let err = row(Some(settings)).into_app().expect_err(settings);
            assert!(err.contains(says), "{settings}: {err}");
        }
    }
}
