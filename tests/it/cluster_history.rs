//! Channel history and resume in a cluster (protocol.md 11.2): the history is kept once in
//! Redis, so positions agree on every node, and a subscriber that lost its node (its TCP
//! connection cut without a close, the node killed with SIGKILL, or drained with 4200)
//! resumes on another node with every missed event exactly once and in order; beyond the
//! window, or from a lost history, it is told recovery failed; channels without history see
//! the usual protocol.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::cluster_support::*;
use crate::history::{position, resume, CuttingProxy};
use crate::support::*;

/// One cluster's configuration (a prefix of its own) with history on `chat-*`.
fn history_cluster(extra: &str) -> String {
    cluster_config(
        &prefix(),
        REDIS,
        &format!("history_channels = [\"chat-*\"]\n{extra}"),
    )
}

const EVENTS: usize = 1000;

/// Publishes `EVENTS` events (`0`, `1`, …) on `chat-1` through `api` at 100 per second;
/// `published` counts those answered.
fn publisher(api: Api, published: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..EVENTS {
            tick.tick().await;
            let r = api.trigger(&["chat-1"], "msg", &i.to_string()).await;
            assert_eq!(r.status, 200, "publish {i}");
            published.store(i + 1, Ordering::Release);
        }
    })
}

/// What takes the subscriber's first node away.
enum Loss {
    /// A proxy in front of the node drops the TCP connection (no close on either side).
    Cut(CuttingProxy),
    /// The node (a `resound` process) is killed with SIGKILL.
    Kill(ServerProcess),
    /// The node (in process) shuts down gracefully: 4200 to every socket.
    Drain(TestServer),
}

/// The scenario every loss runs: `first` (a client of the node `loss` takes away) resumes
/// on `chat-1` from no position, `EVENTS` events are published through `api` at 100/s, the
/// node goes away after a quarter of them, the client reconnects to `other` (0.5 s later)
/// and resumes there. It must end with every event exactly once, in order.
async fn resumes_on_another_node(mut c: Client, loss: Loss, api: Api, other: String) {
    let (replayed, rec) = resume(&mut c, "chat-1", json!({})).await;
    assert!(replayed.is_empty());
    assert_eq!(rec["status"], "recovered", "{rec}");
    let (mut epoch, mut offset) = (
        rec["epoch"].as_str().unwrap().to_string(),
        rec["offset"].as_u64().unwrap(),
    );
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = publisher(api, published.clone());
    let mut got: Vec<usize> = Vec::new();
    let mut loss = Some(loss);
    let mut recovered = 0;
    while got.len() < EVENTS {
        if got.len() >= EVENTS / 4 {
            if let Some(l) = loss.take() {
                match l {
                    Loss::Cut(proxy) => proxy.cut(),
                    Loss::Kill(node) => {
                        signal(&node.child, "-KILL");
                        drop(node);
                    }
                    Loss::Drain(mut node) => {
                        tokio::spawn(async move { node.stop().await });
                        // Events sent before the goodbye still count; then 4200.
                        loop {
                            let ev = tokio::time::timeout(Duration::from_secs(10), c.recv())
                                .await
                                .expect("4200 in time");
                            if ev["event"] == "pusher:error" {
                                assert_eq!(ev["data"]["code"], 4200, "{ev}");
                                break;
                            }
                            assert_eq!(ev["event"], "msg", "{ev}");
                            (epoch, offset) = position(&ev);
                            got.push(ev["data"].as_str().unwrap().parse().unwrap());
                        }
                    }
                }
                let before = published.load(Ordering::Acquire);
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert!(
                    published.load(Ordering::Acquire) > before,
                    "events went out meanwhile"
                );
                let old = c.socket_id.clone();
                drop(c);
                c = Client::connect(&other).await;
                let from = json!({"epoch":epoch,"offset":offset,"socket_id":old});
                let (replayed, rec) = resume(&mut c, "chat-1", from).await;
                assert_eq!(rec["status"], "recovered", "{rec}");
                assert_eq!(rec["recovered"].as_u64(), Some(replayed.len() as u64));
                assert!(!replayed.is_empty(), "something was missed meanwhile");
                recovered = replayed.len();
                for ev in replayed {
                    (epoch, offset) = position(&ev);
                    got.push(ev["data"].as_str().unwrap().parse().unwrap());
                }
                continue;
            }
        }
        let ev = tokio::time::timeout(Duration::from_secs(10), c.recv())
            .await
            .expect("the next event");
        assert_eq!(ev["event"], "msg", "{ev}");
        (epoch, offset) = position(&ev);
        got.push(ev["data"].as_str().unwrap().parse().unwrap());
    }
    publishing.await.unwrap();
    assert!(recovered > 0);
    assert_eq!(
        got,
        (0..EVENTS).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    assert_eq!(offset, EVENTS as u64, "positions count every event");
    c.expect_silence(Duration::from_millis(300), "nothing after the last event")
        .await;
}

#[tokio::test]
async fn positions_agree_on_every_node() {
    let toml = history_cluster("");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe("chat-p").await;
    on_b.subscribe("chat-p").await;
    // Four publishers at once, two through each node, 25 events each.
    let mut publishers = Vec::new();
    for p in 0..4 {
        let api = if p % 2 == 0 { a.api() } else { b.api() };
        publishers.push(tokio::spawn(async move {
            for i in 0..25 {
                let data = format!("{p}-{i}");
                assert_eq!(api.trigger(&["chat-p"], "msg", &data).await.status, 200);
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut seen: Vec<HashMap<String, (String, u64)>> = Vec::new();
    for c in [&mut on_a, &mut on_b] {
        let mut at = HashMap::new();
        let mut offsets = Vec::new();
        for _ in 0..100 {
            let ev = c.recv().await;
            assert_eq!(ev["event"], "msg", "{ev}");
            offsets.push(position(&ev).1);
            at.insert(ev["data"].as_str().unwrap().to_string(), position(&ev));
        }
        assert_eq!(
            offsets,
            (1..=100).collect::<Vec<u64>>(),
            "every node delivers in the order of the offsets"
        );
        seen.push(at);
    }
    assert_eq!(
        seen[0], seen[1],
        "the same position for each event on both nodes"
    );
    let epochs: std::collections::HashSet<&String> = seen[0].values().map(|(e, _)| e).collect();
    assert_eq!(epochs.len(), 1, "one epoch");
    // A subscriber on either node that asks for the current position gets the same one.
    for node in [&a, &b] {
        let mut c = node.client().await;
        let (_, rec) = resume(&mut c, "chat-p", json!({})).await;
        assert_eq!(rec["offset"], 100);
        assert_eq!(
            rec["epoch"].as_str(),
            epochs.iter().next().map(|e| e.as_str())
        );
    }
}

#[tokio::test]
async fn a_cut_subscriber_resumes_on_the_other_node_with_every_missed_event_once_in_order() {
    let toml = history_cluster("history_max_events = 2000");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    let proxy = CuttingProxy::start(a.addr).await;
    let c = Client::connect(&proxy.ws_url()).await;
    let other = b.ws_url(KEY, "protocol=7&client=js&version=8.4.0");
    resumes_on_another_node(c, Loss::Cut(proxy), a.api(), other).await;
}

#[tokio::test]
async fn a_subscriber_resumes_on_a_survivor_after_its_node_was_killed() {
    let mut nodes = nodes(
        2,
        "history_channels = [\"chat-*\"]\nhistory_max_events = 2000",
    )
    .await;
    let survivor = nodes.pop().unwrap();
    let doomed = nodes.pop().unwrap();
    let c = doomed.client().await;
    let other = survivor.ws_url(KEY, "protocol=7");
    resumes_on_another_node(c, Loss::Kill(doomed), survivor.api(), other).await;
}

#[tokio::test]
async fn a_subscriber_resumes_on_another_node_after_a_graceful_drain() {
    let toml = history_cluster("history_max_events = 2000");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    let c = a.client().await;
    let other = b.ws_url(KEY, "protocol=7&client=js&version=8.4.0");
    resumes_on_another_node(c, Loss::Drain(a), b.api(), other).await;
}

#[tokio::test]
async fn beyond_the_window_or_from_a_lost_history_recovery_fails_on_any_node() {
    let toml = history_cluster("history_max_events = 5");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    let mut c = a.client().await;
    let (_, rec) = resume(&mut c, "chat-2", json!({})).await;
    let epoch = rec["epoch"].as_str().unwrap().to_string();
    drop(c);
    for i in 0..10 {
        a.api().trigger(&["chat-2"], "msg", &i.to_string()).await;
    }
    let mut c = b.client().await;
    let (replayed, rec) = resume(&mut c, "chat-2", json!({"epoch":epoch,"offset":0})).await;
    assert!(replayed.is_empty());
    assert_eq!(
        rec,
        json!({"status":"failed","reason":"window_exceeded","epoch":epoch,"offset":10})
    );
    a.api().trigger(&["chat-2"], "msg", "live").await;
    let ev = c.recv().await;
    assert_eq!((ev["data"].as_str(), position(&ev).1), (Some("live"), 11));

    let mut d = b.client().await;
    let (replayed, rec) = resume(
        &mut d,
        "chat-2",
        json!({"epoch":"0000000000000000","offset":3}),
    )
    .await;
    assert!(replayed.is_empty());
    assert_eq!(
        (rec["status"].as_str(), rec["reason"].as_str()),
        (Some("failed"), Some("history_lost"))
    );
    assert_eq!(rec["offset"], 11);
    // Within the window, on the node the events were not published on.
    let mut e = b.client().await;
    let (replayed, rec) = resume(&mut e, "chat-2", json!({"epoch":epoch,"offset":8})).await;
    assert_eq!(rec["recovered"], 3, "{rec}");
    let data: Vec<&str> = replayed
        .iter()
        .map(|v| v["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["8", "9", "live"]);
}

#[tokio::test]
async fn channels_without_history_are_unaffected_in_a_cluster() {
    let toml = history_cluster("");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    let mut c = b.client().await;
    let (replayed, rec) = resume(&mut c, "news", json!({})).await;
    assert!(replayed.is_empty());
    assert_eq!(rec, json!({"status":"failed","reason":"no_history"}));
    a.api().trigger(&["news"], "msg", "1").await;
    assert_eq!(
        c.recv().await,
        json!({"event":"msg","channel":"news","data":"1"})
    );
    // A client that does not resume gets the events with their positions only.
    let mut plain = b.client().await;
    plain.subscribe("chat-3").await;
    a.api().trigger(&["chat-3"], "msg", "2").await;
    let ev = plain.recv().await;
    assert_eq!(
        (ev["event"].as_str(), ev["data"].as_str()),
        (Some("msg"), Some("2"))
    );
    assert_eq!(position(&ev).1, 1);
    plain
        .expect_silence(Duration::from_millis(200), "nothing else")
        .await;
}

#[tokio::test]
async fn the_previous_connection_does_not_get_back_what_skipped_it_on_another_node() {
    let toml = history_cluster("");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    let mut c = a.client().await;
    let (_, rec) = resume(&mut c, "chat-4", json!({})).await;
    let old = c.socket_id.clone();
    drop(c);
    let own = json!({"name":"msg","channels":["chat-4"],"data":"mine","socket_id":old});
    assert_eq!(a.api().post("/events", &own).await.status, 200);
    a.api().trigger(&["chat-4"], "msg", "theirs").await;
    let mut c = b.client().await;
    let from = json!({"epoch":rec["epoch"],"offset":0,"socket_id":old});
    let (replayed, rec) = resume(&mut c, "chat-4", from).await;
    assert_eq!(rec["recovered"], 1);
    assert_eq!(replayed[0]["data"], "theirs");
    assert_eq!(position(&replayed[0]).1, 2);
}

/// Redis unreachable: a resume is answered at once with `history_unavailable` and events go
/// on without positions; Redis back but empty (the history lost): `history_lost`, and the
/// positions start anew.
#[tokio::test]
async fn without_redis_a_resume_fails_explicitly_and_a_lost_history_is_told() {
    let redis = RedisProc::start(free_port()).await;
    let port = redis.port;
    let url = format!("redis://127.0.0.1:{port}/0");
    let toml = cluster_config(&prefix(), &url, "history_channels = [\"chat-*\"]");
    let a = TestServer::start(&toml).await;
    let mut c = a.client().await;
    let (_, rec) = resume(&mut c, "chat-5", json!({})).await;
    let epoch = rec["epoch"].as_str().unwrap().to_string();
    a.api().trigger(&["chat-5"], "msg", "1").await;
    assert_eq!(position(&c.recv().await), (epoch.clone(), 1));

    drop(redis);
    let started = std::time::Instant::now();
    loop {
        let ready = raw_request("GET", &a.url("/ready"), String::new()).await;
        if ready.status == 503 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut d = a.client().await;
    let asked = std::time::Instant::now();
    let (replayed, rec) = resume(&mut d, "chat-5", json!({"epoch":epoch,"offset":1})).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert!(replayed.is_empty());
    assert_eq!(
        rec,
        json!({"status":"failed","reason":"history_unavailable"})
    );
    // Events still reach this node's subscribers, without a position.
    a.api().trigger(&["chat-5"], "msg", "2").await;
    for sub in [&mut c, &mut d] {
        assert_eq!(
            sub.recv().await,
            json!({"event":"msg","channel":"chat-5","data":"2"})
        );
    }

    let _redis = RedisProc::start(port).await;
    let started = std::time::Instant::now();
    loop {
        let ready = raw_request("GET", &a.url("/ready"), String::new()).await;
        if ready.status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "not back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut e = a.client().await;
    let (replayed, rec) = resume(&mut e, "chat-5", json!({"epoch":epoch,"offset":1})).await;
    assert!(replayed.is_empty());
    assert_eq!(rec["reason"], "history_lost", "{rec}");
    assert_ne!(rec["epoch"].as_str(), Some(epoch.as_str()), "a new epoch");
    assert_eq!(rec["offset"], 0);
}
