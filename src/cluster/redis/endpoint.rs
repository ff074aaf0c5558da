//! Where the cluster's Redis is: one server named by `redis_url`, or the master of a
//! Sentinel-managed group, found through the sentinels at start and found again after a
//! failover. Owns the command connection (`Commands`, a handle every caller clones) and opens
//! pub/sub connections to the current master; says when the master moved, so the pub/sub
//! reader reconnects. Knows nothing of keys, topics or messages.
//!
//! Failover detection: the sentinels' `+switch-master` announcement, or a command that fails
//! the way a vanished or demoted master makes it fail (connection refused or dropped, timeout,
//! `READONLY`), wakes the follower task, which also asks the sentinels every `RECHECK` in case
//! both were missed. When the sentinels name another master, the command connection is
//! replaced and `moved()` fires.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, Role, TlsCertificates, Value,
};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::shards::Shards;
use crate::cluster::ClusterError;
use crate::config::{mask_url_password, ScalingConfig};

/// Bound on connecting and on each command.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the sentinels are asked for the master when nothing failed.
const RECHECK: Duration = Duration::from_secs(10);
/// Pause between attempts while the sentinels name no usable master (mid-failover).
const RETRY: Duration = Duration::from_millis(250);

enum Source {
    Url(Client),
    Sentinel {
        sentinels: Vec<Client>,
        master: String,
        template: ConnectionInfo,
    },
}

struct Master {
    client: Client,
    conn: ConnectionManager,
}

/// The Redis the cluster talks to (see the module docs).
pub struct Endpoint {
    source: Source,
    /// For logs: the URL or the sentinels and master name, passwords masked.
    described: String,
    current: Mutex<Master>,
    moved: watch::Sender<u64>,
    stale: Notify,
    db: i64,
}

/// The command connection: a cheap handle on the current master's multiplexed connection,
/// which reconnects on its own and follows a failover (`Endpoint`), or on a Redis Cluster
/// connection, which routes each command to the shard of its key (`shards.rs`).
#[derive(Clone)]
pub struct Commands {
    route: Route,
}

#[derive(Clone)]
enum Route {
    Endpoint(Arc<Endpoint>),
    Shards(Arc<Shards>),
}

impl Commands {
    /// Commands over a Redis Cluster connection.
    pub(super) fn sharded(shards: Arc<Shards>) -> Commands {
        Commands {
            route: Route::Shards(shards),
        }
    }
}

fn cluster_err(e: &RedisError) -> ClusterError {
    ClusterError::Setup(e.to_string())
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(COMMAND_TIMEOUT)
        .set_response_timeout(COMMAND_TIMEOUT)
        .set_number_of_retries(2)
        .set_max_delay(1000)
}

pub(super) fn certificates(ca: Option<&Path>) -> Result<Option<TlsCertificates>, ClusterError> {
    let Some(path) = ca else { return Ok(None) };
    let pem = std::fs::read(path).map_err(|e| {
        ClusterError::Setup(format!(
            "scaling.tls_ca_file {}: cannot read: {e}",
            path.display()
        ))
    })?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A client for one URL, trusting `certs` (a private CA) for `rediss://`.
fn client_for(url: &str, certs: Option<&TlsCertificates>) -> Result<Client, ClusterError> {
    let info = url.into_connection_info().map_err(|e| {
        ClusterError::Setup(format!("invalid Redis URL {}: {e}", mask_url_password(url)))
    })?;
    match (certs, &info.addr) {
        (Some(certs), ConnectionAddr::TcpTls { .. }) => {
            Client::build_with_tls(info, certs.clone()).map_err(|e| cluster_err(&e))
        }
        _ => Client::open(info).map_err(|e| cluster_err(&e)),
    }
}

/// The master's connection settings (scheme, credentials, database, trusted CA) from
/// `redis_url`, to be pointed at the address the sentinels name.
fn master_template(
    s: &ScalingConfig,
    certs: Option<&TlsCertificates>,
) -> Result<ConnectionInfo, ClusterError> {
    Ok(client_for(&s.redis_url, certs)?
        .get_connection_info()
        .clone())
}

fn at(template: &ConnectionInfo, host: String, port: u16) -> Result<Client, ClusterError> {
    let addr = match &template.addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    Client::open(ConnectionInfo {
        addr,
        redis: template.redis.clone(),
    })
    .map_err(|e| cluster_err(&e))
}

/// Whether a failed command suggests the master is gone or no longer the master.
fn lost_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown)
}

impl Endpoint {
    /// Finds the master (through the sentinels when configured) and connects to it; fails
    /// fast when it cannot be reached at start-up.
    pub async fn connect(s: &ScalingConfig) -> Result<Arc<Endpoint>, ClusterError> {
        let certs = certificates(s.tls_ca_file.as_deref())?;
        let (source, described) = if s.sentinels.is_empty() {
            (
                Source::Url(client_for(&s.redis_url, certs.as_ref())?),
                mask_url_password(&s.redis_url),
            )
        } else {
            let master = s.sentinel_master.clone().unwrap_or_default();
            let listed: Vec<String> = s.sentinels.iter().map(|u| mask_url_password(u)).collect();
            let described = format!("master {master:?} of sentinels {}", listed.join(", "));
            let sentinels = s
                .sentinels
                .iter()
                .map(|u| client_for(u, certs.as_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            let template = master_template(s, certs.as_ref())?;
            (
                Source::Sentinel {
                    sentinels,
                    master,
                    template,
                },
                described,
            )
        };
        let client = resolve(&source)
            .await
            .map_err(|e| ClusterError::Setup(format!("{described}: {e}")))?;
        let conn = manager(&client)
            .await
            .map_err(|e| ClusterError::Setup(format!("{described}: {e}")))?;
        let db = client.get_connection_info().redis.db;
        let sentinel = matches!(source, Source::Sentinel { .. });
        if sentinel {
            info!(target = %described, master = %address(&client), "found the Redis master");
        }
        let endpoint = Arc::new(Endpoint {
            source,
            described,
            current: Mutex::new(Master { client, conn }),
            moved: watch::channel(0).0,
            stale: Notify::new(),
            db,
        });
        if sentinel {
            tokio::spawn(follow(endpoint.clone()));
            tokio::spawn(announcements(endpoint.clone()));
        }
        Ok(endpoint)
    }

    /// The command connection.
    pub fn commands(self: &Arc<Self>) -> Commands {
        Commands {
            route: Route::Endpoint(self.clone()),
        }
    }

    /// A new pub/sub connection to the current master.
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        let client = self.current.lock().client.clone();
        let r = match tokio::time::timeout(COMMAND_TIMEOUT * 2, client.get_async_pubsub()).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::from((
                ErrorKind::IoError,
                "timed out connecting",
                self.described.clone(),
            ))),
        };
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    /// Changes each time the master moved (after a failover).
    pub fn moved(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }

    fn failed(&self, e: &RedisError) {
        if matches!(self.source, Source::Sentinel { .. }) && lost_master(e) {
            self.stale.notify_one();
        }
    }
}

fn address(client: &Client) -> String {
    match &client.get_connection_info().addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            format!("{h}:{p}")
        }
        ConnectionAddr::Unix(path) => path.display().to_string(),
    }
}

async fn resolve(source: &Source) -> Result<Client, ClusterError> {
    let (sentinels, master, template) = match source {
        Source::Url(c) => return Ok(c.clone()),
        Source::Sentinel {
            sentinels,
            master,
            template,
        } => (sentinels, master, template),
    };
    let mut last = ClusterError::Setup("no sentinel configured".into());
    for sentinel in sentinels {
        let asked = tokio::time::timeout(COMMAND_TIMEOUT * 2, async {
            let found = ask(sentinel, master).await?;
            verify(template, found).await
        })
        .await;
        match asked {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = ClusterError::Setup("timed out asking a sentinel for the master".into())
            }
        }
    }
    Err(last)
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME`, as the clients Sentinel's documentation describes do.
/// Written here because the crate's `SentinelClient` reads `SENTINEL MASTERS`, which names
/// the new master only when the failover has ended (every replica reconfigured), seconds
/// after the promotion.
async fn ask(sentinel: &Client, master: &str) -> Result<(String, u16), ClusterError> {
    let mut conn = sentinel
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| cluster_err(&e))?;
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(|e| cluster_err(&e))?;
    addr.ok_or_else(|| {
        ClusterError::Setup(format!("the sentinels know no master named {master:?}"))
    })
}

/// A client for the named master, once it says it is one (a just-promoted replica may not
/// have taken the role yet).
async fn verify(
    template: &ConnectionInfo,
    (host, port): (String, u16),
) -> Result<Client, ClusterError> {
    let client = at(template, host, port)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| cluster_err(&e))?;
    let role: Role = redis::cmd("ROLE")
        .query_async(&mut conn)
        .await
        .map_err(|e| cluster_err(&e))?;
    match role {
        Role::Primary { .. } => Ok(client),
        _ => Err(ClusterError::Setup(format!(
            "{} is not a master yet",
            address(&client)
        ))),
    }
}

async fn manager(client: &Client) -> Result<ConnectionManager, ClusterError> {
    tokio::time::timeout(
        COMMAND_TIMEOUT * 3,
        client.get_connection_manager_with_config(manager_config()),
    )
    .await
    .map_err(|_| ClusterError::Setup(format!("timed out connecting to {}", address(client))))?
    .map_err(|e| cluster_err(&e))
}

/// Follows the master of a Sentinel group: asks the sentinels when a command failed as a lost
/// master makes it fail, and every `RECHECK`; switches the command connection and signals
/// `moved` when they name another master.
async fn follow(endpoint: Arc<Endpoint>) {
    let Source::Sentinel { master, .. } = &endpoint.source else {
        return;
    };
    let mut retry = false;
    loop {
        if !retry {
            tokio::select! {
                () = endpoint.stale.notified() => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
        }
        let found = match resolve(&endpoint.source).await {
            Ok(client) => client,
            Err(e) => {
                if retry {
                    debug!(master = %master, error = %e, "the sentinels name no usable master yet");
                } else {
                    warn!(master = %master, error = %e, "the sentinels name no usable master yet");
                }
                retry = true;
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        retry = false;
        let same = endpoint.current.lock().client.get_connection_info().addr
            == found.get_connection_info().addr;
        if same {
            continue;
        }
        match manager(&found).await {
            Ok(conn) => {
                info!(master = %master, address = %address(&found), "following the new Redis master");
                *endpoint.current.lock() = Master {
                    client: found,
                    conn,
                };
                endpoint.moved.send_modify(|n| *n += 1);
            }
            Err(e) => {
                warn!(address = %address(&found), error = %e, "cannot connect to the new Redis master");
                retry = true;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Listens to a sentinel's `+switch-master` announcements, so a failover is followed as soon
/// as it is done: a switch-over leaves the old master running (and accepting writes) until the
/// sentinels reconfigure it, so failing commands alone would notice late.
async fn announcements(endpoint: Arc<Endpoint>) {
    let Source::Sentinel {
        sentinels, master, ..
    } = &endpoint.source
    else {
        return;
    };
    loop {
        for sentinel in sentinels {
            let Ok(Ok(mut pubsub)) =
                tokio::time::timeout(COMMAND_TIMEOUT, sentinel.get_async_pubsub()).await
            else {
                continue;
            };
            if pubsub.subscribe("+switch-master").await.is_err() {
                continue;
            }
            // Whatever happened while not listening.
            endpoint.stale.notify_one();
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                // `<master name> <old ip> <old port> <new ip> <new port>`
                let payload: String = msg.get_payload().unwrap_or_default();
                if payload.split(' ').next() == Some(master.as_str()) {
                    endpoint.stale.notify_one();
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A route's connection of the moment, with what to tell when a command on it fails.
enum Current {
    Endpoint(Arc<Endpoint>, ConnectionManager),
    Shards(Arc<Shards>, u64, redis::cluster_async::ClusterConnection),
}

impl Route {
    fn current(&self) -> Current {
        match self {
            Route::Endpoint(endpoint) => {
                let conn = endpoint.current.lock().conn.clone();
                Current::Endpoint(endpoint.clone(), conn)
            }
            Route::Shards(shards) => {
                let (generation, conn) = shards.conn();
                Current::Shards(shards.clone(), generation, conn)
            }
        }
    }
}

impl Current {
    fn conn(&mut self) -> &mut (dyn ConnectionLike + Send) {
        match self {
            Current::Endpoint(_, conn) => conn,
            Current::Shards(_, _, conn) => conn,
        }
    }

    /// Passes a failure on to the owner of the connection (a failover may follow).
    fn report<T>(&self, result: &RedisResult<T>) {
        let Err(e) = result else { return };
        match self {
            Current::Endpoint(endpoint, _) => endpoint.failed(e),
            Current::Shards(shards, generation, _) => shards.failed(*generation, e),
        }
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut current = self.route.current();
        Box::pin(async move {
            let r = current.conn().req_packed_command(cmd).await;
            current.report(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut current = self.route.current();
        Box::pin(async move {
            let r = current.conn().req_packed_commands(cmd, offset, count).await;
            current.report(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.route {
            Route::Endpoint(endpoint) => endpoint.db,
            Route::Shards(_) => 0,
        }
    }
}
