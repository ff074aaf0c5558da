//! The baseline: the smallest broadcaster that serves the bench's workloads, used to measure
//! the server under test as a ratio against what the same machine does with almost no work.
//!
//! It accepts a WebSocket upgrade on any path, greets with a `pusher:connection_established`
//! shaped message, answers any `pusher:subscribe` with `subscription_succeeded` (no auth
//! checks), relays `client-` events to the channel's other sockets, answers `pusher:ping`, and
//! broadcasts the `data` of every HTTP `POST` body (`{"name","channels"|"channel","data"}`) to
//! the channel's sockets in the frame shape of a Pusher event; `GET` answers 200. Frames are
//! encoded once and shared; each socket has a bounded queue and drops on overflow (counted in
//! the log at exit). No validation, no presence, no webhooks.

use anyhow::{Context, Result};
use bytes::Bytes;
use fastwebsockets::{upgrade, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;

/// Pending connections the kernel may queue for `accept`.
const LISTEN_BACKLOG: u32 = 4096;

/// Frames queued per socket before the baseline starts dropping for that socket.
const QUEUE: usize = 4096;

type Outbox = mpsc::Sender<Bytes>;

#[derive(Default)]
struct Hub {
    next_id: AtomicU64,
    dropped: AtomicU64,
    /// channel name → socket id → queue. The lock is never held across an await.
    channels: Mutex<HashMap<String, HashMap<u64, Outbox>>>,
}

impl Hub {
    fn join(&self, channel: &str, id: u64, outbox: Outbox) {
        if let Ok(mut channels) = self.channels.lock() {
            channels
                .entry(channel.to_string())
                .or_default()
                .insert(id, outbox);
        }
    }

    fn leave_all(&self, id: u64, joined: &[String]) {
        if let Ok(mut channels) = self.channels.lock() {
            for name in joined {
                if let Some(members) = channels.get_mut(name) {
                    members.remove(&id);
                    if members.is_empty() {
                        channels.remove(name);
                    }
                }
            }
        }
    }

    /// Sends one encoded frame to every socket of `channel` except `except`.
    fn broadcast(&self, channel: &str, frame: Bytes, except: Option<u64>) {
        let targets: Vec<Outbox> = match self.channels.lock() {
            Ok(channels) => channels
                .get(channel)
                .map(|m| {
                    m.iter()
                        .filter(|(id, _)| Some(**id) != except)
                        .map(|(_, tx)| tx.clone())
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => return,
        };
        for tx in targets {
            if tx.try_send(frame.clone()).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs the baseline server until killed, `exit_after` passes, or (with `exit_on_stdin_eof`)
/// stdin closes.
/// Prints `listening on PORT` once bound, so a parent started with `--port 0` learns the port.
pub fn serve(port: u16, exit_after: Option<Duration>, exit_on_stdin_eof: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("runtime")?;
    runtime.block_on(async move {
        // `TcpListener::bind` listens with a backlog of 128, which overflows when thousands of
        // clients reconnect at once; the kernel caps this at net.core.somaxconn.
        let socket = TcpSocket::new_v4().context("socket")?;
        socket.set_reuseaddr(true).context("reuseaddr")?;
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .context("bind")?;
        let listener = socket.listen(LISTEN_BACKLOG).context("listen")?;
        let bound = listener.local_addr().context("local addr")?;
        println!("listening on {}", bound.port());
        let hub = Arc::new(Hub::default());
        if let Some(after) = exit_after {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                std::process::exit(0);
            });
        }
        if exit_on_stdin_eof {
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                while let Ok(Some(_)) = lines.next_line().await {}
                eprintln!(
                    "baseline: exiting, {} frames dropped on full queues",
                    hub.dropped.load(Ordering::Relaxed)
                );
                std::process::exit(0);
            });
        }
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE under a connection flood; back off and keep serving.
                    eprintln!("baseline: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let hub = hub.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(hub.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    })
}

async fn handle(
    hub: Arc<Hub>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if upgrade::is_upgrade_request(&req) {
        return Ok(match upgrade::upgrade(&mut req) {
            Ok((response, fut)) => {
                tokio::spawn(async move {
                    if let Ok(ws) = fut.await {
                        socket(hub, ws).await;
                    }
                });
                let (parts, _) = response.into_parts();
                Response::from_parts(parts, Full::new(Bytes::new()))
            }
            Err(_) => plain(StatusCode::BAD_REQUEST, "{}"),
        });
    }
    if req.method() != hyper::Method::POST {
        return Ok(plain(StatusCode::OK, "{}"));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, "{}")),
    };
    publish(&hub, &body);
    Ok(plain(StatusCode::OK, "{}"))
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[derive(Deserialize)]
struct Trigger {
    #[serde(default)]
    name: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Value,
}

fn publish(hub: &Hub, body: &[u8]) {
    let Ok(trigger) = serde_json::from_slice::<Trigger>(body) else {
        return;
    };
    let mut channels = trigger.channels;
    if channels.is_empty() {
        channels.extend(trigger.channel);
    }
    for channel in channels {
        let frame = serde_json::json!({
            "event": trigger.name,
            "channel": channel,
            "data": trigger.data,
        });
        hub.broadcast(&channel, Bytes::from(frame.to_string()), None);
    }
}

#[derive(Deserialize)]
struct ClientMessage {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Value,
}

async fn socket(hub: Arc<Hub>, ws: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>) {
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let (read, mut write) = ws.split(tokio::io::split);
    let mut read = FragmentCollectorRead::new(read);
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Frame<'static>>(8);

    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                ctl = ctl_rx.recv() => match ctl {
                    Some(frame) => {
                        if write.write_frame(frame).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                data = rx.recv() => match data {
                    Some(bytes) => {
                        if write.write_frame(Frame::text(Payload::Borrowed(&bytes))).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });

    let hello = format!(
        r#"{{"event":"pusher:connection_established","data":"{{\"socket_id\":\"{id}.{id}\",\"activity_timeout\":120}}"}}"#
    );
    let _ = tx.try_send(Bytes::from(hello));
    let mut joined: Vec<String> = Vec::new();
    let ctl = ctl_tx.clone();
    let mut obligated = move |frame: Frame<'_>| {
        let owned = Frame::new(
            true,
            frame.opcode,
            None,
            Payload::Owned(frame.payload.to_vec()),
        );
        let ctl = ctl.clone();
        async move {
            ctl.send(owned)
                .await
                .map_err(|_| WebSocketError::ConnectionClosed)
        }
    };
    loop {
        let frame = match read.read_frame(&mut obligated).await {
            Ok(frame) => frame,
            Err(_) => break,
        };
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Close => break,
            _ => continue,
        }
        let Ok(message) = serde_json::from_slice::<ClientMessage>(&frame.payload) else {
            continue;
        };
        let data = match message.data {
            Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
            other => other,
        };
        match message.event.as_str() {
            "pusher:subscribe" => {
                let Some(channel) = data.get("channel").and_then(Value::as_str) else {
                    continue;
                };
                if !joined.iter().any(|c| c == channel) {
                    hub.join(channel, id, tx.clone());
                    joined.push(channel.to_string());
                }
                let reply = serde_json::json!({
                    "event": "pusher_internal:subscription_succeeded",
                    "channel": channel,
                    "data": "{}",
                });
                let _ = tx.try_send(Bytes::from(reply.to_string()));
            }
            "pusher:ping" => {
                let _ = tx.try_send(Bytes::from_static(
                    br#"{"event":"pusher:pong","data":"{}"}"#,
                ));
            }
            event if event.starts_with("client-") => {
                let Some(channel) = message.channel else {
                    continue;
                };
                if joined.contains(&channel) {
                    let relayed = serde_json::json!({
                        "event": event,
                        "channel": channel,
                        "data": data,
                    });
                    hub.broadcast(&channel, Bytes::from(relayed.to_string()), Some(id));
                }
            }
            _ => {}
        }
    }
    hub.leave_all(id, &joined);
    drop(tx);
    drop(ctl_tx);
    let _ = writer.await;
}

/// A baseline server running as a child of the bench.
pub struct BaselineChild {
    child: tokio::process::Child,
    pub port: u16,
    pub pid: Option<u32>,
}

impl BaselineChild {
    /// Starts `resound-bench baseline-server --port 0` and reads back the port it bound.
    pub async fn start() -> Result<Self> {
        let exe = std::env::current_exe().context("locate own binary")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["baseline-server", "--port", "0", "--exit-on-stdin-eof"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn baseline server")?;
        let stdout = child.stdout.take().context("baseline stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("baseline did not start in time")?
            .context("read baseline port")?
            .context("baseline exited before listening")?;
        let port = line
            .strip_prefix("listening on ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("unexpected baseline output: {line}"))?;
        let pid = child.id();
        Ok(Self { child, port, pid })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
