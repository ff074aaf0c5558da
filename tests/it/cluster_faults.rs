//! Cluster mode over a real Redis, faults of Redis itself: a private `redis-server` that
//! restarts or stalls; delivery resumes and the shared state is repaired afterwards.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster_support::*;
use crate::support::*;

/// Two nodes sharing a Redis of their own (which the test may stop, pause or restart).
async fn private_cluster() -> (RedisProc, TestServer, TestServer) {
    let redis = RedisProc::start(free_port()).await;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let p = prefix();
    let a = TestServer::start(&cluster_config(&p, &url, "")).await;
    let b = TestServer::start(&cluster_config(&p, &url, "")).await;
    (redis, a, b)
}

#[tokio::test]
async fn delivery_resumes_after_redis_restarts() {
    let (redis, a, b) = private_cluster().await;
    let port = redis.port;
    let mut sub = b.client().await;
    sub.subscribe("live").await;
    a.api().trigger(&["live"], "before", "{}").await;
    assert_eq!(sub.recv().await["event"], "before");

    drop(redis);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The node keeps serving its own clients and says it is not ready.
    let local = a.api().trigger(&["live"], "local-only", "{}").await;
    assert_eq!(local.status, 200);
    let mut ready = 200;
    for _ in 0..40 {
        ready = raw_request("GET", &a.url("/ready"), String::new())
            .await
            .status;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 503, "/ready reports the lost backend");
    // A cache channel's trigger does not wait for the unreachable store either.
    let started = Instant::now();
    let cached = a.api().trigger(&["cache-down"], "e", "{}").await;
    assert_eq!(cached.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    // Presence needs the shared roster: refused as a server error, not as a full channel.
    let mut joiner = a.client().await;
    let refused = joiner
        .try_presence("presence-down", r#"{"user_id":"1"}"#)
        .await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(refused["data"]["code"], 4302, "{refused}");

    let _redis = RedisProc::start(port).await;
    // Without restarting any node, cross-node delivery comes back.
    delivery_resumes(&a, &mut sub, Duration::from_secs(15)).await;
    assert_eq!(
        raw_request("GET", &a.url("/ready"), String::new())
            .await
            .status,
        200
    );
    // Counts were published again (Redis came back empty).
    live_counted_once(&a).await;
}

#[tokio::test]
async fn a_departure_during_a_redis_stall_is_repaired_when_redis_answers_again() {
    let (redis, a, b) = private_cluster().await;
    let mut watcher = a.client().await;
    watcher
        .subscribe_presence("presence-stall", r#"{"user_id":"w"}"#)
        .await;
    let mut leaver = b.client().await;
    leaver
        .subscribe_presence("presence-stall", r#"{"user_id":"l"}"#)
        .await;
    watcher.recv_event("pusher_internal:member_added").await;

    // Redis stops answering; the departure cannot be recorded.
    signal(&redis.child, "-STOP");
    drop(leaver);
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&redis.child, "-CONT");

    let removed = watcher
        .await_event("pusher_internal:member_removed", Duration::from_secs(10))
        .await;
    assert_eq!(data_json(&removed), json!({"user_id":"l"}));
    let users = a.api().get("/channels/presence-stall/users", &[]).await;
    assert_eq!(users.body, json!({"users":[{"id":"w"}]}));
}

/// `GET /ready` on `node`.
async fn ready(node: &TestServer) -> u16 {
    raw_request("GET", &node.url("/ready"), String::new())
        .await
        .status
}

/// Until `/ready` on `node` answers `status`; how long that took. Fails after `within`.
async fn ready_becomes(node: &TestServer, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if ready(node).await == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/ready is not {status} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes each of `clients` to a channel of its own (`{stem}-{i}`), all at once, and
/// waits for every answer; how long the slowest took.
async fn subscribe_all(clients: &mut [Client], stem: &str, within: Duration) -> Duration {
    let started = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"event":"pusher:subscribe","data":{"channel":format!("{stem}-{i}")}}))
            .await;
    }
    let answers = clients.iter_mut().map(|c| async {
        loop {
            let frame = tokio::time::timeout(within, c.ws.next())
                .await
                .expect("a subscribe is answered while Redis hangs")
                .expect("the connection stays open")
                .expect("a frame");
            if let Message::Text(t) = frame {
                let reply: serde_json::Value = serde_json::from_str(&t).unwrap();
                if reply["event"] != "pusher:ping" {
                    return reply;
                }
            }
        }
    });
    for reply in futures_util::future::join_all(answers).await {
        assert_eq!(
            reply["event"], "pusher_internal:subscription_succeeded",
            "{reply}"
        );
    }
    started.elapsed()
}

/// A Redis that stops answering without closing its sockets (SIGSTOP) is noticed by the
/// heartbeat: `/ready` turns 503 within seconds and 200 again once Redis answers. Meanwhile
/// subscribes to channels new to the node are answered within a bound, none waiting for
/// another channel's `SUBSCRIBE` (with one node-wide lock across the round trip, 20 of them
/// took 20 × 2 s), and a channel subscribed during the hang gets other nodes' events after it.
#[tokio::test]
async fn a_hung_redis_turns_ready_503_and_subscribes_are_still_answered() {
    let (redis, a, b) = private_cluster().await;
    assert_eq!(ready(&a).await, 200);
    let mut early = Vec::new();
    let mut late = Vec::new();
    for _ in 0..20 {
        early.push(a.client().await);
        late.push(a.client().await);
    }

    signal(&redis.child, "-STOP");
    // Before the node knows: each waits at most for its own round trips.
    let slowest = subscribe_all(&mut early, "hung", Duration::from_secs(8)).await;
    assert!(slowest < Duration::from_secs(6), "took {slowest:?}");
    let noticed = ready_becomes(&a, 503, Duration::from_secs(10)).await;
    // Once it knows, nothing waits for Redis.
    let slowest = subscribe_all(&mut late, "known", Duration::from_secs(3)).await;
    assert!(slowest < Duration::from_secs(1), "took {slowest:?}");

    signal(&redis.child, "-CONT");
    ready_becomes(&a, 200, Duration::from_secs(10)).await;
    // The SUBSCRIBE queued during the hang took effect: b's events reach a's subscriber.
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        b.api().trigger(&["hung-0"], "after", &n.to_string()).await;
        if let Ok(Some(v)) =
            tokio::time::timeout(Duration::from_millis(200), next_json(&mut early[0].ws)).await
        {
            if v["event"] == "after" {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no cross-node delivery after the hang (noticed after {noticed:?})"
        );
    }
}

/// Messages for other nodes wait for a hung Redis in a backlog bounded in bytes
/// (`scaling.publish_backlog_bytes`); beyond it new ones are dropped and counted, and local
/// delivery goes on.
#[tokio::test]
async fn the_publish_backlog_is_bounded_in_bytes_while_redis_hangs() {
    let redis = RedisProc::start(free_port()).await;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let toml = TestConfig::new()
        .scaling(&prefix())
        .scaling_setting("redis_url", url.as_str())
        .scaling_setting("publish_backlog_bytes", 100_000)
        .toml();
    let a = TestServer::start(&toml).await;
    let mut local = a.client().await;
    local.subscribe("big").await;
    let dropped = |n: &TestServer| {
        let n = n.url("/metrics");
        async move {
            raw_request("GET", &n, String::new())
                .await
                .text
                .lines()
                .find(|l| {
                    l.starts_with(r#"resound_cluster_dropped_total{reason="publish_backlog_full"}"#)
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        }
    };
    assert_eq!(dropped(&a).await, 0.0);

    signal(&redis.child, "-STOP");
    let data = "x".repeat(8_000);
    for i in 0..40 {
        let r = a.api().trigger(&["big"], "e", &data).await;
        assert_eq!(r.status, 200, "trigger {i}");
        assert_eq!(local.recv_event("e").await["data"], data.as_str());
        let backlog = sample(&a, "resound_cluster_publish_backlog_bytes").await;
        assert!(backlog <= 100_000.0, "{backlog} bytes waiting");
    }
    assert!(dropped(&a).await > 0.0, "nothing was dropped");
    signal(&redis.child, "-CONT");
}
