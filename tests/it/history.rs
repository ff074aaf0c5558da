//! Channel history and resume on one node (protocol.md 11.2): a subscriber whose TCP
//! connection is cut without a close (a proxy that drops it) resumes with every missed event
//! exactly once and in order; beyond the window, or from a lost history, it is told recovery
//! failed; channels without history and clients that do not resume see the usual protocol.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::*;

/// A TCP proxy in front of the server: every accepted connection is piped to it until `cut`,
/// which drops both sockets at once (no WebSocket close, no goodbye to either side).
pub struct CuttingProxy {
    addr: std::net::SocketAddr,
    cut: watch::Sender<usize>,
}

impl CuttingProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0usize);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut rx = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.changed() => {}
                    }
                    // Both sockets are dropped here: a TCP close with no WebSocket close frame.
                });
            }
        });
        CuttingProxy { addr, cut }
    }

    pub fn ws_url(&self) -> String {
        format!(
            "ws://{}/app/{KEY}?protocol=7&client=js&version=8.4.0",
            self.addr
        )
    }

    /// Drops every connection piped so far.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

fn history_server(extra: &str) -> String {
    config(&format!("history_channels = [\"chat-*\"]\n{extra}"), "")
}

/// Subscribes to `channel` asking to resume from `from` (`{}`: no position yet); returns
/// the replayed events and the data of `resound:recovery`.
pub async fn resume(c: &mut Client, channel: &str, from: Value) -> (Vec<Value>, Value) {
    c.send(json!({"event":"pusher:subscribe","data":{"channel":channel,"resound_resume":from}}))
        .await;
    let ok = c.recv().await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let mut replayed = Vec::new();
    loop {
        let v = c.recv().await;
        if v["event"] == "resound:recovery" {
            assert_eq!(v["channel"], channel);
            return (replayed, data_json(&v));
        }
        replayed.push(v);
    }
}

/// The position of an event, as the resume request carries it.
pub fn position(ev: &Value) -> (String, u64) {
    let p = &ev["resound_position"];
    (
        p["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no position: {ev}"))
            .to_string(),
        p["offset"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn a_cut_subscriber_resumes_with_every_missed_event_exactly_once_in_order() {
    const EVENTS: usize = 1000;
    let s = TestServer::start(&history_server("history_max_events = 2000")).await;
    let proxy = CuttingProxy::start(s.addr).await;
    let mut c = Client::connect(&proxy.ws_url()).await;
    let (replayed, rec) = resume(&mut c, "chat-1", json!({})).await;
    assert!(replayed.is_empty());
    assert_eq!(rec["status"], "recovered");
    let (mut epoch, mut offset) = (
        rec["epoch"].as_str().unwrap().to_string(),
        rec["offset"].as_u64().unwrap(),
    );

    // 1,000 events at 100 per second, published over HTTP while the subscriber is cut.
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let api = s.api();
        let published = published.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..EVENTS {
                tick.tick().await;
                let r = api.trigger(&["chat-1"], "msg", &i.to_string()).await;
                assert_eq!(r.status, 200);
                published.store(i + 1, Ordering::Release);
            }
        })
    };

    let mut got: Vec<usize> = Vec::new();
    let mut cuts = 0;
    let mut recovered_total = 0;
    let mut socket_id = c.socket_id.clone();
    while got.len() < EVENTS {
        // Cut twice: after a quarter and after half of the events, each time for 0.5 s.
        if (cuts == 0 && got.len() >= EVENTS / 4) || (cuts == 1 && got.len() >= EVENTS / 2) {
            proxy.cut();
            cuts += 1;
            let before = published.load(Ordering::Acquire);
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                published.load(Ordering::Acquire) > before,
                "events went out while cut"
            );
            c = Client::connect(&proxy.ws_url()).await;
            let from = json!({"epoch":epoch,"offset":offset,"socket_id":socket_id});
            let (replayed, rec) = resume(&mut c, "chat-1", from).await;
            socket_id = c.socket_id.clone();
            assert_eq!(rec["status"], "recovered", "{rec}");
            assert_eq!(rec["recovered"].as_u64(), Some(replayed.len() as u64));
            assert!(!replayed.is_empty(), "something was missed while cut");
            recovered_total += replayed.len();
            for ev in replayed {
                (epoch, offset) = position(&ev);
                got.push(ev["data"].as_str().unwrap().parse().unwrap());
            }
            continue;
        }
        let ev = tokio::time::timeout(Duration::from_secs(10), c.recv())
            .await
            .expect("the next event");
        assert_eq!(ev["event"], "msg", "{ev}");
        (epoch, offset) = position(&ev);
        got.push(ev["data"].as_str().unwrap().parse().unwrap());
    }
    publisher.await.unwrap();
    assert_eq!(cuts, 2);
    assert!(recovered_total > 0);
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
async fn beyond_the_window_or_from_a_lost_history_recovery_fails_and_live_events_go_on() {
    let s = TestServer::start(&history_server("history_max_events = 5")).await;
    let mut c = s.client().await;
    let (_, rec) = resume(&mut c, "chat-2", json!({})).await;
    let epoch = rec["epoch"].as_str().unwrap().to_string();
    drop(c);
    for i in 0..10 {
        s.api().trigger(&["chat-2"], "msg", &i.to_string()).await;
    }
    let mut c = s.client().await;
    let (replayed, rec) = resume(&mut c, "chat-2", json!({"epoch":epoch,"offset":0})).await;
    assert!(replayed.is_empty());
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["reason"], "window_exceeded");
    assert_eq!(rec["epoch"], epoch.as_str());
    assert_eq!(rec["offset"], 10, "the position to go on from");
    s.api().trigger(&["chat-2"], "msg", "live").await;
    let ev = c.recv().await;
    assert_eq!((ev["data"].as_str(), position(&ev).1), (Some("live"), 11));

    // A position from another epoch (the history was lost): failed, with the current one.
    let mut d = s.client().await;
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
    // Within the window: the last five are kept, so resuming from 8 gives 9, 10 and 11.
    let mut e = s.client().await;
    let (replayed, rec) = resume(&mut e, "chat-2", json!({"epoch":epoch,"offset":8})).await;
    assert_eq!(rec["recovered"], 3);
    let data: Vec<&str> = replayed
        .iter()
        .map(|v| v["data"].as_str().unwrap())
        .collect();
    assert_eq!(data, ["8", "9", "live"]);
}

#[tokio::test]
async fn channels_without_history_and_clients_that_do_not_resume_see_the_usual_protocol() {
    let s = TestServer::start(&history_server("")).await;
    // No history on `news`: a resume is answered with an explicit failure, events carry no
    // position.
    let mut c = s.client().await;
    let (replayed, rec) = resume(&mut c, "news", json!({})).await;
    assert!(replayed.is_empty());
    assert_eq!(rec, json!({"status":"failed","reason":"no_history"}));
    s.api().trigger(&["news"], "msg", "1").await;
    assert_eq!(
        c.recv().await,
        json!({"event":"msg","channel":"news","data":"1"})
    );

    // A client that does not ask to resume: `subscription_succeeded`, then the events, with
    // only the extra top-level field that pusher-js and the other clients ignore.
    let mut plain = s.client().await;
    assert_eq!(
        plain.subscribe("chat-3").await,
        json!({"event":"pusher_internal:subscription_succeeded","channel":"chat-3","data":"{}"})
    );
    s.api().trigger(&["chat-3"], "msg", "2").await;
    let ev = plain.recv().await;
    assert_eq!(ev["event"], "msg");
    assert_eq!(ev["data"], "2");
    assert_eq!(position(&ev).1, 1);
    plain
        .expect_silence(Duration::from_millis(200), "nothing else")
        .await;
}

#[tokio::test]
async fn the_previous_connection_does_not_get_back_what_skipped_it() {
    let s = TestServer::start(&history_server("")).await;
    let mut c = s.client().await;
    let (_, rec) = resume(&mut c, "chat-4", json!({})).await;
    let old = c.socket_id.clone();
    drop(c);
    let own = json!({"name":"msg","channels":["chat-4"],"data":"mine","socket_id":old});
    assert_eq!(s.api().post("/events", &own).await.status, 200);
    s.api().trigger(&["chat-4"], "msg", "theirs").await;
    let mut c = s.client().await;
    let from = json!({"epoch":rec["epoch"],"offset":0,"socket_id":old});
    let (replayed, rec) = resume(&mut c, "chat-4", from).await;
    assert_eq!(rec["recovered"], 1);
    assert_eq!(replayed[0]["data"], "theirs");
}
