//! Binds the listeners, spawns the background tasks, accepts connections into the HTTP edge
//! (`http::edge`: pending until upgraded or authenticated, shed oldest first at the cap or
//! when file descriptors run out) and serves HTTP/1.1 with a header read timeout, until a
//! shutdown signal; then drains: stop accepting, close every socket with 4200 so clients
//! reconnect elsewhere, let HTTP connections finish the request in progress, and return once
//! every connection task has ended or the grace period is over.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::app::{AppStore, StaticAppStore};
use crate::app_database::AppDatabase;
use crate::cluster::redis::RedisBackend;
use crate::cluster::{
    Adapter, ClusterError, ClusterState, InboundQueues, Local, SharedHistory, SharedKeys,
};
use crate::config::Config;
use crate::http::edge::{Edge, Pending, ShedReason, TimeoutPhase};
use crate::metrics::Metrics;
use crate::presence::MemoryPresence;
use crate::presence::PresenceStore;
use crate::reload::{Load, Reloader};
use crate::state::ServerState;
use crate::streams::{Streams, StreamsError};
use crate::tls::{Secure, Tls, TlsError};
use crate::webhooks::{Journal, SettleOnce, WebhookError, Webhooks};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("webhooks: {0}")]
    Webhooks(#[from] WebhookError),
    #[error("streams: {0}")]
    Streams(#[from] StreamsError),
    #[error("scaling: {0}")]
    Cluster(#[from] ClusterError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    AppDatabase(#[from] crate::app_database::AppDatabaseError),
}

/// A server bound to its port(s), not yet serving.
pub struct Server {
    state: Arc<ServerState>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    console_listener: Option<TcpListener>,
    tls: Option<Arc<Tls>>,
    redis: Option<Arc<RedisBackend>>,
    edge: Arc<Edge>,
    reloader: Arc<Reloader>,
    app_database: Option<Arc<AppDatabase>>,
    /// `server.watch_config_ms`, when on.
    watch_every: Option<std::time::Duration>,
}

impl Server {
    /// Builds the state and binds the listeners (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let metrics = Arc::new(Metrics::new(&config.server.metrics_prefix)?);
        let running = crate::reload::outside_apps(&config);
        let table = Arc::new(StaticAppStore::new(config.apps));
        let apps: Arc<dyn AppStore> = table.clone();
        let edge = Edge::new(
            config.server.max_pending_connections,
            &metrics.registry,
            &config.server.metrics_prefix,
        )?;
        let (presence, cluster, adapter, redis, inbound): Backend = if config.scaling.enabled {
            let (redis, inbound) = RedisBackend::connect(
                &config.scaling,
                &metrics.registry,
                &config.server.metrics_prefix,
            )
            .await?;
            (
                redis.clone(),
                Some(redis.clone()),
                redis.clone(),
                Some(redis),
                Some(inbound),
            )
        } else {
            (
                Arc::new(MemoryPresence::default()),
                None,
                Arc::new(Local),
                None,
                None,
            )
        };
        // One verdict per held removal, whichever of the webhooks and the stream sinks asks
        // first (settling takes the hold away).
        let journal = redis
            .clone()
            .map(|r| Arc::new(SettleOnce::new(r as Arc<dyn Journal>)) as Arc<dyn Journal>);
        let webhooks = Webhooks::start(
            config.webhooks.clone(),
            &metrics.registry,
            &format!("{}_webhooks", config.server.metrics_prefix),
            journal.clone(),
        )?;
        let streams = if config.streams.redis_url.is_empty() {
            Streams::off()
        } else {
            Streams::start(
                config.streams.clone(),
                &metrics.registry,
                &format!("{}_stream", config.server.metrics_prefix),
                journal,
            )?
        };
        let state = Arc::new(ServerState::new(
            config.server.clone(),
            apps.clone(),
            presence,
            cluster,
            redis.clone().map(|r| r as Arc<dyn SharedHistory>),
            redis.clone().map(|r| r as Arc<dyn SharedKeys>),
            adapter,
            metrics,
            webhooks,
            streams,
            config.console.clone(),
        ));
        if let Some(queues) = inbound {
            tokio::spawn(crate::inbound::apply(state.clone(), queues));
        }
        for app in apps.all() {
            state.hub(&app);
        }
        let tls = match &config.server.tls {
            Some(t) => Some(Arc::new(Tls::new(&t.cert, &t.key)?)),
            None => None,
        };
        let addr = format!("{}:{}", config.server.host, config.server.port);
        let listener = listen(&addr).await.map_err(|source| ServerError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let metrics_listener = match config.server.metrics_port {
            Some(port) => {
                let addr = format!("{}:{}", config.server.host, port);
                Some(
                    TcpListener::bind(&addr)
                        .await
                        .map_err(|source| ServerError::Bind { addr, source })?,
                )
            }
            None => None,
        };
        let console_listener = match &state.console {
            Some(c) if !c.on_main_listener() => {
                let addr = c.listen().to_string();
                Some(
                    listen(&addr)
                        .await
                        .map_err(|source| ServerError::Bind { addr, source })?,
                )
            }
            _ => None,
        };
        let reloader = Arc::new(Reloader::new(state.clone(), table, tls.clone(), running));
        let app_database = match &config.app_database {
            Some(db) => {
                let db = Arc::new(AppDatabase::new(db, &config.server.metrics_prefix)?);
                db.register_metrics(&state.metrics.registry)?;
                // The table's apps serve from the start when the database answers now.
                crate::app_database::read_once(&db, &reloader, false).await;
                Some(db)
            }
            None => None,
        };
        let watch_every = (config.server.watch_config_ms > 0)
            .then(|| std::time::Duration::from_millis(config.server.watch_config_ms));
        Ok(Server {
            state,
            listener,
            metrics_listener,
            console_listener,
            tls,
            redis,
            edge,
            reloader,
            app_database,
            watch_every,
        })
    }

    /// Where a reload (SIGHUP) reads the configuration again; without it, SIGHUP reloads
    /// only the TLS certificate.
    pub fn reload_from(&self, load: Load) {
        self.reloader.set_load(load);
    }

    /// The handle that applies a reload (what SIGHUP calls).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Where the debug console listens, when it has a listener of its own.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> Arc<ServerState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then drains: stop accepting, close every socket
    /// with 4200, let HTTP connections finish the request in progress, and wait until every
    /// connection task has ended or the grace period is over.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            state,
            listener,
            metrics_listener,
            console_listener,
            tls,
            redis,
            edge,
            reloader,
            app_database,
            watch_every,
        } = self;
        let app_refresh =
            app_database.map(|db| tokio::spawn(crate::app_database::refresh(db, reloader.clone())));
        let watcher = watch_every
            .map(|every| tokio::spawn(crate::reload::watch_files(reloader.clone(), every)));
        let reloader = tokio::spawn(crate::reload::on_sighup(reloader));
        let sweeper = tokio::spawn(sweep(state.clone()));
        let reorder = tokio::spawn(release_waiting(state.clone()));
        let metrics_task = metrics_listener.map(|l| tokio::spawn(serve_metrics(l, state.clone())));
        let console_task = console_listener.map(|l| tokio::spawn(serve_console(l, state.clone())));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let pending = edge.admit();
                        let conn = serve(stream, peer, tls.clone(), state.clone(), edge.clone(), pending);
                        edge.spawn(conn);
                    }
                    Err(e) if out_of_fds(&e) => {
                        // Free descriptors by closing the connections that have proved nothing
                        // yet, oldest first, so `/up` and real clients keep getting in.
                        let shed = edge.shed_oldest(FD_SHED, ShedReason::FdExhausted);
                        warn!(error = %e, shed, "accept failed: out of file descriptors");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    Err(e) => {
                        // Other accept errors are transient: back off instead of spinning.
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        }
        drop(listener);
        info!(connections = state.node_connections(), "draining");
        state.start_draining();
        edge.start_draining();
        let grace = Duration::from_secs(state.server.shutdown_grace_period);
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, edge.finished())
            .await
            .is_err()
        {
            warn!(
                left = edge.running(),
                sockets = state.node_connections(),
                "grace period over; exiting with connections open"
            );
        }
        // Webhooks and stream entries queued so far (vacates of the closed sockets included)
        // get what is left of the grace period, but a receiver that is down must not hold the
        // exit for all of it.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let flush = left.clamp(Duration::from_secs(1), WEBHOOK_FLUSH);
        tokio::join!(
            state.webhooks.shutdown(flush),
            state.streams.shutdown(flush)
        );
        // Survivors take over what is left (sockets still open, unsent webhooks) at their next
        // heartbeat instead of after the lease.
        if let Some(redis) = &redis {
            redis.leave().await;
        }
        sweeper.abort();
        reorder.abort();
        reloader.abort();
        for t in [app_refresh, watcher].into_iter().flatten() {
            t.abort();
        }
        if let Some(t) = metrics_task {
            t.abort();
        }
        if let Some(t) = console_task {
            t.abort();
        }
        info!("stopped");
    }
}

const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// The pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Pending connections closed each time `accept` runs out of file descriptors.
const FD_SHED: usize = 16;

/// EMFILE (the process) or ENFILE (the system) is out of file descriptors. The numbers are
/// the same on Linux and the BSDs (macOS included); the standard library has no `ErrorKind`
/// for them.
fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}
/// The longest a shutdown waits for queued webhooks.
const WEBHOOK_FLUSH: Duration = Duration::from_secs(3);

/// Pending connections the kernel may queue before `accept` (capped by `net.core.somaxconn`).
/// The default of 128 drops SYNs during a reconnect storm of thousands of clients.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`) with a deep accept backlog.
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
}

/// One accepted connection, from the TLS handshake (if any) to the end of its HTTP exchange
/// (an upgraded WebSocket continues in its own task). Dropped at once if the edge sheds it
/// while it is pending.
async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<Tls>>,
    state: Arc<ServerState>,
    edge: Arc<Edge>,
    pending: Pending,
) {
    let conn = async {
        match &tls {
            None => serve_http(stream, &state, false, peer, &edge, &pending).await,
            Some(tls) => {
                let acceptor = tls.acceptor();
                match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        serve_http(stream, &state, true, peer, &edge, &pending).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    };
    tokio::select! {
        () = conn => {}
        () = pending.shed() => debug!(%peer, "pending connection shed"),
    }
}

/// Serves HTTP/1.1 (with WebSocket upgrades) on one connection, with hyper's header read
/// timeout; once draining, the request in progress is answered and the connection closed.
async fn serve_http<I>(
    io: I,
    state: &Arc<ServerState>,
    secure: bool,
    peer: SocketAddr,
    edge: &Edge,
    pending: &Pending,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handle = pending.handle();
    let service_state = state.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if secure {
            req.extensions_mut().insert(Secure);
        }
        req.extensions_mut().insert(handle.clone());
        req.extensions_mut().insert(crate::http::Peer(peer));
        crate::http::handle(req, service_state.clone())
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(state.server.header_timeout));
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            () = edge.draining(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            edge.timed_out(TimeoutPhase::Header);
        }
        debug!(%peer, error = %e, "http connection ended");
    }
}

type Backend = (
    Arc<dyn PresenceStore>,
    Option<Arc<dyn ClusterState>>,
    Arc<dyn Adapter>,
    Option<Arc<RedisBackend>>,
    Option<InboundQueues>,
);

/// Lets events of shared histories that waited for a lower offset too long go on
/// (`ChannelRegistry::release_waiting`); a registry with nothing waiting costs one check.
async fn release_waiting(state: Arc<ServerState>) {
    let mut tick = tokio::time::interval(crate::channels::REORDER_WAIT / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for hub in state.hubs() {
            hub.channels.release_waiting(hub.deflate.as_ref());
        }
    }
}

/// How often the tables a crowd of connections grew are checked for shrinking.
const SHRINK_EVERY: Duration = Duration::from_secs(10);
/// Expired cache entries are dropped every this many shrink checks (once a minute).
const SWEEP_EVERY_SHRINKS: u32 = 6;

/// Gives back the tables a burst of connections left mostly empty (every 10 s), and drops
/// expired cache entries (once a minute).
async fn sweep(state: Arc<ServerState>) {
    let mut tick = tokio::time::interval(SHRINK_EVERY);
    let mut ticks: u32 = 0;
    loop {
        tick.tick().await;
        ticks = ticks.wrapping_add(1);
        for hub in state.hubs() {
            if ticks.is_multiple_of(SWEEP_EVERY_SHRINKS) {
                hub.channels.sweep_expired();
            }
            hub.shrink();
        }
        state.budgets.per_ip.shrink();
    }
}

/// Connections the console's listener serves at once; beyond, a new one is closed at once.
const CONSOLE_CONNECTIONS: usize = 64;

/// The debug console's own listener (`console.listen`), with the main port's header read
/// timeout. Its streams end when the server stops (the task and its connections are
/// dropped).
async fn serve_console(listener: TcpListener, state: Arc<ServerState>) {
    let open = Arc::new(tokio::sync::Semaphore::new(CONSOLE_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        // Reap the finished ones so the set holds only open connections.
        while connections.try_join_next().is_some() {}
        let Ok(permit) = open.clone().try_acquire_owned() else {
            debug!(%peer, "console connection refused: too many open");
            continue;
        };
        let state = state.clone();
        let header_timeout = Duration::from_secs(state.server.header_timeout);
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                crate::http::handle_console(req, state.clone())
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The metrics-only listener (`server.metrics_port`): `/metrics` and `/up`, with the same
/// header read timeout as the main port.
async fn serve_metrics(listener: TcpListener, state: Arc<ServerState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        let header_timeout = Duration::from_secs(state.server.header_timeout);
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let resp = crate::http::metrics_only(&state, req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
