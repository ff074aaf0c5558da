//! Cluster mode over a real Redis, webhooks: occupancy events fire once per cluster, a page
//! reload across nodes sends none, and a queued webhook survives the node that queued it
//! (`kill -9`, or handed over at a graceful stop).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster_support::*;
use crate::support::*;

#[tokio::test]
async fn occupancy_webhooks_fire_once_per_cluster() {
    let (port, mut rx) = event_receiver(0).await;
    let url = format!("http://127.0.0.1:{port}/hooks");
    let ns = nodes(2, &format!("webhook_removal_delay = 1\n\n[[apps.webhooks]]\nurl = \"{url}\"\nevent_types = [\"channel_occupied\", \"channel_vacated\"]\n")).await;
    let mut a = ns[0].client().await;
    a.subscribe("both").await;
    let mut b = ns[1].client().await;
    b.subscribe("both").await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(b);
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        got.push(e);
    }
    assert_eq!(
        got,
        vec![
            json!({"name":"channel_occupied","channel":"both"}),
            json!({"name":"channel_vacated","channel":"both"})
        ],
        "one occupied/vacated pair per channel across the cluster"
    );
}

/// Every event `rx` gets within `within`.
async fn events_within(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    within: Duration,
) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        got.push(e);
    }
    got
}

#[tokio::test]
async fn a_page_reload_that_lands_on_another_node_sends_no_webhooks() {
    let (port, mut rx) = event_receiver(0).await;
    let url = format!("http://127.0.0.1:{port}/hooks");
    let ns = nodes(2, &format!("webhook_removal_delay = 2\n\n[[apps.webhooks]]\nurl = \"{url}\"\nevent_types = [\"channel_occupied\", \"channel_vacated\", \"member_added\", \"member_removed\"]\n")).await;
    let (ch, member) = ("presence-room", r#"{"user_id":"7"}"#);
    let mut page = ns[0].client().await;
    page.subscribe_presence(ch, member).await;
    assert_eq!(
        events_within(&mut rx, Duration::from_millis(1500)).await,
        vec![
            json!({"name":"channel_occupied","channel":ch}),
            json!({"name":"member_added","channel":ch,"user_id":"7"})
        ]
    );
    // A reload: the page goes away on one node and comes back on the other in time.
    drop(page);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = ns[1].client().await;
    again.subscribe_presence(ch, member).await;
    assert_eq!(
        events_within(&mut rx, Duration::from_secs(4)).await,
        Vec::<serde_json::Value>::new(),
        "a return within the removal delay is no departure, whichever node it lands on"
    );
    // Leaving for good is reported, once, after the delay.
    drop(again);
    assert_eq!(
        events_within(&mut rx, Duration::from_secs(5)).await,
        vec![
            json!({"name":"channel_vacated","channel":ch}),
            json!({"name":"member_removed","channel":ch,"user_id":"7"})
        ]
    );
}

/// A receiver on `port` (0: any) that forwards every event it gets; returns its port.
pub(crate) async fn event_receiver(
    port: u16,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let b = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                                for e in v["events"].as_array().cloned().unwrap_or_default() {
                                    let _ = tx.send(e);
                                }
                            }
                            Ok::<_, Infallible>(hyper::Response::new(
                                Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, rx)
}

/// A node process whose only webhook target (`channel_occupied` to `port`, where nothing
/// listens yet) is failing, with a socket subscribed to `channel` on it: the occupied webhook
/// is journaled and being retried. Returns the cluster's configuration too.
async fn node_with_an_unsent_webhook(channel: &str) -> (String, u16, ServerProcess, Client) {
    let port = free_port();
    let hooks = format!(
        "[[apps.webhooks]]\nurl = \"http://127.0.0.1:{port}/hooks\"\nevent_types = [\"channel_occupied\"]\n"
    );
    let toml = cluster_config(&prefix(), REDIS, &hooks);
    let node = spawn_node(&toml).await;
    let mut c = node.client().await;
    c.subscribe(channel).await;
    // The first attempt fails at once; the request is journaled before it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (toml, port, node, c)
}

/// Waits for the journaled `channel_occupied` of `channel` and checks it came within `bound`
/// of `since`.
async fn taken_over(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    channel: &str,
    since: Instant,
    bound: Duration,
) {
    let first = tokio::time::timeout(bound + Duration::from_secs(5), rx.recv())
        .await
        .expect("the unsent webhook arrives from another node")
        .unwrap();
    assert_eq!(first, json!({"name":"channel_occupied","channel":channel}));
    assert!(since.elapsed() <= bound, "took {:?}", since.elapsed());
}

#[tokio::test]
async fn a_queued_webhook_survives_a_kill_9_of_the_node_that_queued_it() {
    let (toml, port, doomed, c) = node_with_an_unsent_webhook("durable").await;
    let killed_at = Instant::now();
    drop(doomed); // SIGKILL: the queued webhook is only in Redis now.
    drop(c);

    let (_, mut rx) = event_receiver(port).await;
    // The node's replacement (same configuration) takes the journal over once the dead
    // node's lease expires, and delivers.
    let _successor = TestServer::start(&toml).await;
    taken_over(&mut rx, "durable", killed_at, Duration::from_secs(15)).await;
    let again = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
    assert!(again.is_err(), "delivered once: {again:?}");
}

#[tokio::test]
async fn a_graceful_stop_hands_unsent_webhooks_to_the_other_nodes_at_once() {
    let (toml, port, mut old, _c) = node_with_an_unsent_webhook("rolling").await;
    let _other = TestServer::start(&toml).await;
    // SIGTERM, as a rolling deploy does: the node drains, gives its webhooks a moment, leaves.
    signal(&old.child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    while old.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the node did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited_at = Instant::now();
    let (_, mut rx) = event_receiver(port).await;
    // A node that left is taken over at the next heartbeat, not after its lease.
    taken_over(&mut rx, "rolling", exited_at, Duration::from_secs(5)).await;
}
