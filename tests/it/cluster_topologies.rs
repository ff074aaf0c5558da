//! Cluster mode over Redis topologies other than one plain server: Sentinel (nodes follow
//! the master through failovers), TLS with a private certificate, and Redis Cluster (sharded
//! pub/sub, the classic fallback, a shard failover). Every `redis-server` here is a process
//! the test starts on free loopback ports.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::cluster_support::*;
use crate::support::*;

/// The test app (with `extra`'s lines) on a node of the cluster `prefix` whose `[scaling]`
/// section also holds `scaling`'s lines.
fn scaled_config(prefix: &str, scaling: &str, extra: &str) -> String {
    TestConfig::new()
        .scaling(prefix)
        .scaling_lines(scaling)
        .app_lines(extra)
        .toml()
}

// ---- Redis Sentinel ----

/// A master, two replicas and one sentinel watching them, on free ports.
struct SentinelGroup {
    redis: Vec<RedisProc>,
    sentinel: RedisProc,
}

const MASTER_NAME: &str = "resound-it";

impl SentinelGroup {
    async fn start() -> SentinelGroup {
        let m = free_port();
        let mut redis = vec![RedisProc::start(m).await];
        for _ in 0..2 {
            let r = free_port();
            let args = [
                "--port",
                &r.to_string(),
                "--replicaof",
                "127.0.0.1",
                &m.to_string(),
            ];
            redis.push(RedisProc::with_args(r, &args).await);
        }
        let s = free_port();
        let dir = std::env::temp_dir().join(format!("resound-sentinel-{}", prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {s}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {m} 1\nsentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 10000\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        wait_up(s).await;
        let group = SentinelGroup {
            redis,
            sentinel: RedisProc { child, port: s },
        };
        group.wait_for_replica().await;
        group
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel.port)
    }

    async fn ask(&self, cmd: &redis::Cmd) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async(&mut c).await.unwrap()
    }

    async fn master_port(&self) -> u16 {
        let v = self
            .ask(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(MASTER_NAME),
            )
            .await;
        let (_, port): (String, u16) = redis::from_redis_value(&v).unwrap();
        port
    }

    /// Until the sentinel knows a replica in sync with the master (a failover needs one).
    async fn wait_for_replica(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self
                .ask(redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME))
                .await;
            let replicas: Vec<std::collections::HashMap<String, String>> =
                redis::from_redis_value(&v).unwrap();
            if replicas.iter().any(|r| {
                r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel found no replica in sync: {replicas:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Until the sentinel names a master other than the one on `old`.
    async fn wait_for_new_master(&self, old: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let port = self.master_port().await;
            if port != old {
                return port;
            }
            assert!(Instant::now() < deadline, "the sentinel did not fail over");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self, port: u16) {
        self.redis.retain(|r| r.port != port);
    }
}

/// Until both nodes use the master on `port`: `b`'s pub/sub connection subscribes there to
/// the channel `sub` is in, and what `a` publishes reaches that master and `sub`. Returns
/// when that was first true.
async fn follows(port: u16, prefix: &str, a: &TestServer, sub: &mut Client) {
    let master = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = master.get_multiplexed_async_connection().await.unwrap();
    let topic = format!("{prefix}#c#{APP_ID}#live");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&topic)
            .query_async(&mut conn)
            .await
            .unwrap();
        if counts[0].1 == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber's node stays away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut spy = master.get_async_pubsub().await.unwrap();
    spy.subscribe(&topic).await.unwrap();
    let mut spied = spy.on_message();
    let mut n = 0;
    loop {
        n += 1;
        a.api().trigger(&["live"], "after", &format!("{n}")).await;
        let seen = tokio::time::timeout(Duration::from_millis(200), spied.next()).await;
        if seen.is_ok() {
            let v = sub.recv().await;
            assert_eq!(v["event"], "after", "{v}");
            return;
        }
        assert!(Instant::now() < deadline, "the publishing node stays away");
    }
}

#[tokio::test]
async fn nodes_follow_the_master_through_sentinel_failovers() {
    let mut group = SentinelGroup::start().await;
    let p = prefix();
    let scaling = format!(
        "sentinels = [\"{}\"]\nsentinel_master = \"{MASTER_NAME}\"",
        group.url()
    );
    let (a, _b, mut sub) = listening_pair(&scaled_config(&p, &scaling, "")).await;
    let first = group.master_port().await;
    follows(first, &p, &a, &mut sub).await;

    // A switch-over: the old master keeps running, as a master until the sentinel turns it
    // into a replica some seconds later.
    group
        .ask(redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME))
        .await;
    let switched = Instant::now();
    let second = group.wait_for_new_master(first).await;
    let promoted = switched.elapsed();
    follows(second, &p, &a, &mut sub).await;
    eprintln!(
        "switch-over: promoted after {promoted:?}, both nodes on the new master after {:?}",
        switched.elapsed()
    );

    // A crash: the master dies; the sentinel promotes the other replica.
    group.wait_for_replica().await;
    group.kill(second);
    let crashed = Instant::now();
    let third = group.wait_for_new_master(second).await;
    let promoted = crashed.elapsed();
    follows(third, &p, &a, &mut sub).await;
    eprintln!(
        "crash: promoted after {promoted:?}, both nodes on the new master after {:?}",
        crashed.elapsed()
    );
    // The HTTP API answers from the new master, where the nodes published their state again.
    live_counted_once(&a).await;
}

// ---- TLS to Redis ----

/// A `redis-server` answering only TLS, with a self-signed certificate for `localhost`;
/// returns it and the certificate's PEM file.
async fn tls_redis() -> (RedisProc, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("resound-redis-tls-{}", prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("redis.crt"), dir.join("redis.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let redis = RedisProc::with_args(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "tls-secret",
        ],
    )
    .await;
    (redis, cert)
}

#[tokio::test]
async fn nodes_share_a_redis_over_tls_with_a_private_certificate() {
    let (redis, cert) = tls_redis().await;
    let p = prefix();
    let url = format!("rediss://:tls-secret@localhost:{}/0", redis.port);

    // Certificates are verified: without the private CA the node refuses to start, and
    // says so without the password.
    let untrusted = scaled_config(&p, &format!("redis_url = \"{url}\""), "");
    let dir = std::env::temp_dir().join(format!("resound-it-{}", prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resound.toml");
    std::fs::write(&path, &untrusted).unwrap();
    let config = resound::config::load(&resound::config::Sources {
        config_file: Some(&path),
        ..Default::default()
    })
    .unwrap();
    let refused = resound::server::Server::bind(config).await.err();
    let message = refused
        .expect("an untrusted certificate is refused")
        .to_string();
    assert!(!message.contains("tls-secret"), "{message}");

    let scaling = format!(
        "redis_url = \"{url}\"\ntls_ca_file = \"{}\"",
        cert.display()
    );
    let (a, b, mut sub) = listening_pair(&scaled_config(&p, &scaling, "")).await;
    delivery_resumes(&a, &mut sub, Duration::from_secs(3)).await;
    assert_eq!(
        b.api()
            .get("/channels/live", &[("info", "subscription_count")])
            .await
            .body,
        json!({"occupied":true,"subscription_count":1})
    );
}

// ---- Redis Cluster ----

/// Two nodes on the Redis Cluster `shards`, checked to carry triggers across once each, on
/// 12 channels `room-0`..`room-11` whose topics land on various shards. Returns the prefix,
/// the `[scaling]` lines, the nodes, and the subscriber of the rooms (on the second node).
async fn nodes_on_redis_cluster(
    shards: &[RedisProc],
) -> (String, String, TestServer, TestServer, Client) {
    let seeds: Vec<String> = shards
        .iter()
        .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
        .collect();
    let p = prefix();
    let scaling = format!("cluster_nodes = [{}]", seeds.join(", "));
    let a = TestServer::start(&scaled_config(&p, &scaling, "")).await;
    let b = TestServer::start(&scaled_config(&p, &scaling, "")).await;
    let mut sub = b.client().await;
    let channels: Vec<String> = (0..12).map(|i| format!("room-{i}")).collect();
    for channel in &channels {
        sub.subscribe(channel).await;
    }
    for channel in &channels {
        let reply = a.api().trigger(&[channel], "hello", channel).await;
        assert_eq!(reply.status, 200);
        let got = sub.recv_event("hello").await;
        assert_eq!(got["channel"], channel.as_str());
        assert_eq!(got["data"], channel.as_str());
    }
    sub.expect_silence(Duration::from_millis(300), "a duplicate")
        .await;
    (p, scaling, a, b, sub)
}

/// How many of `shards` list topics of prefix `p` under `PUBSUB <listing>`.
async fn shards_with_topics(shards: &[RedisProc], p: &str, listing: &str) -> usize {
    let mut used = 0;
    for shard in shards {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", shard.port)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let topics: Vec<String> = redis::cmd("PUBSUB")
            .arg(listing)
            .arg(format!("{p}#c#*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !topics.is_empty() {
            used += 1;
        }
    }
    used
}

#[tokio::test]
async fn a_redis_cluster_without_sharded_pub_sub_falls_back_to_classic_pub_sub() {
    // Redis 6.2 has no SSUBSCRIBE/SPUBLISH; renaming them away makes a 7.0 server look so.
    let shards = redis_cluster(&[
        "--rename-command",
        "SSUBSCRIBE",
        "",
        "--rename-command",
        "SPUBLISH",
        "",
    ])
    .await;
    let (p, _, _a, _b, _) = nodes_on_redis_cluster(&shards).await;
    assert_eq!(shards_with_topics(&shards, &p, "SHARDCHANNELS").await, 0);
    assert!(shards_with_topics(&shards, &p, "CHANNELS").await >= 1);
}

/// Three Redis Cluster masters on loopback (no replicas), slots assigned, state ok; `extra`
/// arguments for each `redis-server`.
async fn redis_cluster(extra: &[&str]) -> Vec<RedisProc> {
    redis_cluster_with(extra, 0).await
}

/// Three masters with `replicas` replicas each (masters first in the returned list).
async fn redis_cluster_with(extra: &[&str], replicas: usize) -> Vec<RedisProc> {
    let mut shards = Vec::new();
    for _ in 0..3 * (1 + replicas) {
        let port = free_port();
        let p = port.to_string();
        let mut args = vec![
            "--port",
            &p,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        args.extend_from_slice(extra);
        shards.push(RedisProc::with_args(port, &args).await);
    }
    let addrs: Vec<String> = shards
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli must be installed (Debian package redis-tools)");
    assert!(created.success(), "redis-cli --cluster create failed");
    for shard in &shards {
        cluster_ok(shard.port, Duration::from_secs(15)).await;
    }
    shards
}

/// Until the Redis Cluster node on `port` reports `cluster_state:ok`; fails after `within`.
async fn cluster_ok(port: u16, within: Duration) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + within;
    loop {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            return;
        }
        assert!(Instant::now() < deadline, "the Redis Cluster is not ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn nodes_share_a_redis_cluster_with_sharded_pub_sub() {
    let shards = redis_cluster(&[]).await;
    // `_sub` (a client on b) stays connected: it counts in `/connections` below.
    let (p, scaling, a, b, _sub) = nodes_on_redis_cluster(&shards).await;
    // The topics are spread over the shards (sharded pub/sub), not all on one.
    let used = shards_with_topics(&shards, &p, "SHARDCHANNELS").await;
    assert!(used >= 2, "topics on {used} shard(s) only");

    // Shared state: presence and counts agree on both nodes.
    let mut alice = a.client().await;
    alice
        .subscribe_presence("presence-shards", r#"{"user_id":"alice"}"#)
        .await;
    let mut bob = b.client().await;
    let joined = bob
        .subscribe_presence("presence-shards", r#"{"user_id":"bob"}"#)
        .await;
    assert_eq!(data_json(&joined)["presence"]["count"], 2);
    let added = alice.recv_event("pusher_internal:member_added").await;
    assert_eq!(data_json(&added), json!({"user_id":"bob"}));
    for node in [&a, &b] {
        let users = node.api().get("/channels/presence-shards/users", &[]).await;
        assert_eq!(
            users.body["users"].as_array().map(Vec::len),
            Some(2),
            "{} {}",
            users.status,
            users.text
        );
        assert_eq!(
            node.api().get("/connections", &[]).await.body,
            json!({"connections":3})
        );
    }
    drop(bob);
    let removed = alice.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data_json(&removed), json!({"user_id":"bob"}));

    // A node that dies is reaped through the cluster too.
    let doomed = spawn_node(&scaled_config(&p, &scaling, "")).await;
    let mut carol = doomed.client().await;
    carol
        .subscribe_presence("presence-shards", r#"{"user_id":"carol"}"#)
        .await;
    alice.recv_event("pusher_internal:member_added").await;
    drop(doomed);
    let gone = alice
        .await_event("pusher_internal:member_removed", Duration::from_secs(15))
        .await;
    assert_eq!(data_json(&gone), json!({"user_id":"carol"}));
}

/// A shard's master is killed and its replica promoted: every channel delivers across nodes
/// again without restarting a node (the connection is replaced, topics subscribed again and
/// renewed until the failover settled), and the shared state survives.
#[tokio::test]
async fn delivery_resumes_after_a_redis_cluster_failover() {
    // A replica may take over however long it was out of touch with its master.
    let mut shards = redis_cluster_with(&["--cluster-replica-validity-factor", "0"], 1).await;
    let (p, _, a, b, mut sub) = nodes_on_redis_cluster(&shards).await;
    let channels: Vec<String> = (0..12).map(|i| format!("room-{i}")).collect();
    let mut presence = a.client().await;
    presence
        .subscribe_presence("presence-failover", r#"{"user_id":"p"}"#)
        .await;

    // A master dies (the first three are masters); its replica takes over.
    let killed = shards.remove(0);
    drop(killed);
    let failed_at = Instant::now();
    cluster_ok(shards[0].port, Duration::from_secs(20)).await;

    // Every channel delivers across nodes again, without restarting a node, whichever shard
    // its topic was on; and the shared state is still there.
    for channel in &channels {
        let started = Instant::now();
        let mut n = 0;
        'channel: loop {
            n += 1;
            a.api().trigger(&[channel], "after", &format!("{n}")).await;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            while let Ok(Some(v)) = tokio::time::timeout_at(deadline, next_json(&mut sub.ws)).await
            {
                if v["event"] == "after" && v["channel"] == channel.as_str() {
                    break 'channel;
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                let client =
                    redis::Client::open(format!("redis://127.0.0.1:{}", shards[0].port)).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let mut subs = String::new();
                for shard in &shards {
                    let c =
                        redis::Client::open(format!("redis://127.0.0.1:{}", shard.port)).unwrap();
                    let mut c = c.get_multiplexed_async_connection().await.unwrap();
                    let t: Vec<String> = redis::cmd("PUBSUB")
                        .arg("SHARDCHANNELS")
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    let k: String = redis::cmd("CLUSTER")
                        .arg("KEYSLOT")
                        .arg(format!("{p}#c#1001#{channel}"))
                        .query_async(&mut c)
                        .await
                        .map(|v: i64| v.to_string())
                        .unwrap_or_default();
                    subs.push_str(&format!("{} slot {k}: {t:?}\n", shard.port));
                }
                panic!("{channel}: no delivery within 20 s of the failover; the cluster:\n{nodes}\n{subs}");
            }
        }
    }
    let took = failed_at.elapsed();
    channel_info_becomes(
        &b,
        "presence-failover",
        "user_count",
        json!({"occupied":true,"user_count":1}),
    )
    .await;
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// Channel history on a Redis Cluster: the history's keys carry the prefix's hash tag like
/// every other key, so its scripts run there too; positions agree and a resume on the other
/// node gets what was missed.
#[tokio::test]
async fn channel_history_works_on_a_redis_cluster() {
    let shards = redis_cluster(&[]).await;
    let seeds: Vec<String> = shards
        .iter()
        .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
        .collect();
    let scaling = format!("cluster_nodes = [{}]", seeds.join(", "));
    let toml = scaled_config(&prefix(), &scaling, "history_channels = [\"chat-*\"]");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    let mut c = b.client().await;
    let (_, rec) = crate::history::resume(&mut c, "chat-1", json!({})).await;
    assert_eq!(rec["status"], "recovered", "{rec}");
    let epoch = rec["epoch"].as_str().unwrap().to_string();
    for i in 1..=3 {
        a.api().trigger(&["chat-1"], "msg", &i.to_string()).await;
        let ev = c.recv().await;
        assert_eq!(crate::history::position(&ev), (epoch.clone(), i));
    }
    let mut d = a.client().await;
    let (replayed, rec) =
        crate::history::resume(&mut d, "chat-1", json!({"epoch":epoch,"offset":1})).await;
    assert_eq!(rec["recovered"], 2, "{rec}");
    let data: Vec<&str> = replayed
        .iter()
        .map(|v| v["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["2", "3"]);
}
