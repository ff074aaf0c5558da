//! Cluster mode over a real Redis, faults of Redis itself: a private `redis-server` that
//! restarts or stalls; delivery resumes and the shared state is repaired afterwards.

use std::time::{Duration, Instant};

use serde_json::json;

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
