//! Shared setup of the cluster tests (`cluster_*.rs`): unique key prefixes, node
//! configurations, nodes as in-process servers or `resound` processes, private
//! `redis-server` processes, and waits for cluster-wide state. Redis must run on
//! 127.0.0.1:6379 (`.ci/run` starts it); the cluster tests fail, not skip, without it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// A key and topic prefix of its own, so parallel tests share the one Redis without meeting.
pub fn prefix() -> String {
    format!("it-{}", resound::protocol::SocketId::random()).replace('.', "-")
}

/// The test app (with `extra`'s lines) on a node of the cluster `prefix` on `redis_url`.
pub fn cluster_config(prefix: &str, redis_url: &str, extra: &str) -> String {
    TestConfig::new()
        .scaling(prefix)
        .scaling_setting("redis_url", redis_url)
        .app_lines(extra)
        .toml()
}

/// The Redis every cluster test shares (each under a [`prefix`] of its own).
pub const REDIS: &str = "redis://127.0.0.1:6379/0";

/// Two in-process nodes started from `toml`, and a client of the second subscribed to `live`.
pub async fn listening_pair(toml: &str) -> (TestServer, TestServer, Client) {
    let a = TestServer::start(toml).await;
    let b = TestServer::start(toml).await;
    let mut sub = b.client().await;
    sub.subscribe("live").await;
    (a, b, sub)
}

/// `n` nodes of one cluster on the shared Redis, each a `resound` process of its own.
pub async fn nodes(n: usize, extra: &str) -> Vec<ServerProcess> {
    let toml = cluster_config(&prefix(), REDIS, extra);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(spawn_node(&toml).await);
    }
    out
}

/// A `resound` process started from `toml` (killed when dropped: no goodbye to Redis).
pub async fn spawn_node(toml: &str) -> ServerProcess {
    let dir = std::env::temp_dir().join(format!("resound-node-{}", prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resound.toml");
    std::fs::write(&path, toml).unwrap();
    ServerProcess::start(&path).await
}

/// A `redis-server` process of the test's own on a free loopback port; killed when dropped.
pub struct RedisProc {
    pub child: Child,
    pub port: u16,
}

impl RedisProc {
    pub async fn start(port: u16) -> RedisProc {
        RedisProc::with_args(port, &["--port", &port.to_string()]).await
    }

    /// `redis-server` with `args` (which must make it listen on `port`), no persistence; a
    /// replica's copy of the data set goes to a directory of its own.
    pub async fn with_args(port: u16, args: &[&str]) -> RedisProc {
        let dir = std::env::temp_dir().join(format!("resound-redis-{}", prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        wait_up(port).await;
        RedisProc { child, port }
    }
}

/// Until `node`'s HTTP API counts one subscription of `live` (10 s at most): the nodes
/// published their state to a Redis that had lost it.
pub async fn live_counted_once(node: &TestServer) {
    channel_info_becomes(
        node,
        "live",
        "subscription_count",
        json!({"occupied":true,"subscription_count":1}),
    )
    .await;
}

/// Until `GET /channels/{channel}?info=...` on `node` answers `expected` (10 s at most).
pub async fn channel_info_becomes(
    node: &TestServer,
    channel: &str,
    info: &str,
    expected: serde_json::Value,
) {
    node.api()
        .get_until(
            &format!("/channels/{channel}"),
            &[("info", info)],
            &expected,
        )
        .await;
}

/// Triggers on `on` until `sub` receives the event; returns how long that took. Fails after
/// `within`.
pub async fn delivery_resumes(on: &TestServer, sub: &mut Client, within: Duration) -> Duration {
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        on.api().trigger(&["live"], "after", &format!("{n}")).await;
        if let Ok(Some(v)) =
            tokio::time::timeout(Duration::from_millis(200), next_json(&mut sub.ws)).await
        {
            if v["event"] == "after" {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < within,
            "cross-node delivery did not resume within {within:?}"
        );
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
