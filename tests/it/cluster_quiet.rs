//! Messages no other node hears are not published (`[scaling] skip_unheard`, on by default):
//! a channel whose subscribers all sit on the publishing node costs no round trip through
//! Redis, and a subscriber that joins on another node still gets every event published after
//! its `subscription_succeeded`, however the two race.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster_support::*;
use crate::support::*;

/// Waits until `check` holds of `name` on `node` (5 s at most).
async fn metric_becomes(node: &TestServer, name: &str, check: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = sample(node, name).await;
        if check(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} is still {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The numbers of the `e` events `client` receives until it has `last`, in arrival order.
async fn numbers_until(client: &mut Client, last: u64) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let v = client.recv_event("e").await;
        let n: u64 = v["data"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .expect("a number");
        got.push(n);
        if n >= last {
            return got;
        }
    }
}

#[tokio::test]
async fn a_channel_heard_on_its_own_node_only_is_not_published_and_a_newcomer_elsewhere_misses_nothing(
) {
    let toml = cluster_config(&prefix(), REDIS, "");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;

    // Only `a` has subscribers of `room`: after the first publish asks Redis, nothing more
    // goes through it but the node's own syncs.
    let mut local = a.client().await;
    local.subscribe("room").await;
    let published = sample(&a, "resound_cluster_publishes_total").await;
    for n in 1..=100u64 {
        a.api().trigger(&["room"], "e", &n.to_string()).await;
        assert_eq!(local.recv_event("e").await["data"], n.to_string());
    }
    metric_becomes(&a, "resound_cluster_unheard_total", |v| v >= 90.0).await;
    let sent = sample(&a, "resound_cluster_publishes_total").await - published;
    assert!(
        sent <= 30.0,
        "{sent} messages published for 100 events no other node hears"
    );
    assert_eq!(sample(&a, "resound_cluster_quiet_topics").await, 1.0);

    // A publisher that never stops, numbering its events; `started` is the number of the
    // last one whose request has begun.
    let started = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (api, started, stop) = (a.api(), started.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 1_000u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                started.store(n, Ordering::SeqCst);
                api.trigger(&["room"], "e", &n.to_string()).await;
            }
        })
    };
    let drain = tokio::spawn(async move { while next_json(&mut local.ws).await.is_some() {} });

    for round in 0..3 {
        // `room` is quiet again on `a` (asked anew after the last newcomer left).
        metric_becomes(&a, "resound_cluster_quiet_topics", |v| v == 1.0).await;
        let mut newcomer = b.client().await;
        assert_eq!(
            newcomer.subscribe("room").await["event"],
            "pusher_internal:subscription_succeeded"
        );
        // Every event whose publication began after this is owed to the newcomer.
        let owed_from = started.load(Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let last = started.load(Ordering::SeqCst);
        let got = numbers_until(&mut newcomer, last).await;
        assert!(
            got[0] <= owed_from,
            "round {round}: first event {} but {owed_from} was owed",
            got[0]
        );
        // Events held when the announcement was read are published with it, so the newcomer
        // may also get the last of the first hundred (held, their sync not yet back): a tail
        // of 1..=100, then the publisher's events, each run without a gap or a repeat.
        for pair in got.windows(2) {
            assert!(
                pair[1] == pair[0] + 1 || (pair[0] == 100 && pair[1] == 1_001),
                "round {round}: a gap or a repeat in {got:?}"
            );
        }
        drop(newcomer);
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    drain.await.expect("drain");
}

/// A node publishing to a channel nobody subscribes to anywhere sends nothing for it, and
/// still reaches a subscriber who arrives later on another node.
#[tokio::test]
async fn a_publisher_only_node_sends_nothing_until_someone_listens() {
    let toml = cluster_config(&prefix(), REDIS, "");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    a.api().trigger(&["empty"], "e", "0").await;
    metric_becomes(&a, "resound_cluster_quiet_topics", |v| v == 1.0).await;
    let published = sample(&a, "resound_cluster_publishes_total").await;
    for n in 1..=50u64 {
        a.api().trigger(&["empty"], "e", &n.to_string()).await;
    }
    metric_becomes(&a, "resound_cluster_unheard_total", |v| v >= 50.0).await;
    let sent = sample(&a, "resound_cluster_publishes_total").await - published;
    assert!(
        sent <= 20.0,
        "{sent} messages published for 50 events nobody hears"
    );

    let mut late = b.client().await;
    late.subscribe("empty").await;
    a.api().trigger(&["empty"], "e", "51").await;
    assert_eq!(late.recv_event("e").await["data"], "51");
    assert_eq!(sample(&a, "resound_cluster_quiet_topics").await, 0.0);
}

/// With `skip_unheard = false` every message is published, as before.
#[tokio::test]
async fn skip_unheard_off_publishes_everything() {
    let p = prefix();
    let toml = TestConfig::new()
        .scaling(&p)
        .scaling_setting("redis_url", REDIS)
        .scaling_setting("skip_unheard", false)
        .toml();
    let a = TestServer::start(&toml).await;
    let mut local = a.client().await;
    local.subscribe("room").await;
    let published = sample(&a, "resound_cluster_publishes_total").await;
    for n in 1..=20u64 {
        a.api().trigger(&["room"], "e", &n.to_string()).await;
        local.recv_event("e").await;
    }
    metric_becomes(&a, "resound_cluster_publishes_total", |v| {
        v >= published + 20.0
    })
    .await;
    assert_eq!(sample(&a, "resound_cluster_unheard_total").await, 0.0);
}
