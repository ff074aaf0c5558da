//! Idempotent publishing (protocol.md 11.1): raw signed requests with an idempotency key in
//! a header, in the body, or on batch items; one node, and two nodes over Redis.

use std::time::Duration;

use serde_json::json;

use crate::cluster_support::{cluster_config, prefix, REDIS};
use crate::support::*;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn the_same_key_twice_delivers_once_and_answers_alike() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    c.subscribe("orders").await;
    let body = json!({"name":"paid","channels":["orders"],"data":"{\"id\":1}","info":"subscription_count"});
    let first = s
        .api()
        .post_with("/events", &body, &[("X-Idempotency-Key", "order-1-paid")])
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(
        first.body,
        json!({"channels":{"orders":{"subscription_count":1}}})
    );
    assert_eq!(c.recv().await["event"], "paid");
    // The retry is signed anew (another timestamp) but carries the same key and body.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let retry = s
        .api()
        .post_with("/events", &body, &[("X-Idempotency-Key", "order-1-paid")])
        .await;
    assert_eq!((retry.status, &retry.text), (200, &first.text));
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    c.expect_silence(QUIET, "a retry with the same key").await;
    // The IETF header name, the same key: still remembered.
    let again = s
        .api()
        .post_with("/events", &body, &[("Idempotency-Key", "order-1-paid")])
        .await;
    assert_eq!(again.text, first.text);
    c.expect_silence(QUIET, "a retry through Idempotency-Key")
        .await;
}

#[tokio::test]
async fn different_keys_deliver_twice_and_a_key_in_the_body_counts_as_well() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    c.subscribe("orders").await;
    for key in ["a", "b"] {
        let body = json!({"name":"e","channels":["orders"],"data":"{}","idempotency_key":key});
        assert_eq!(s.api().post("/events", &body).await.status, 200);
        assert_eq!(c.recv().await["event"], "e");
    }
    let body = json!({"name":"e","channels":["orders"],"data":"{}","idempotency_key":"a"});
    assert_eq!(s.api().post("/events", &body).await.status, 200);
    c.expect_silence(QUIET, "a body key seen before").await;
}

#[tokio::test]
async fn a_key_reused_for_another_request_or_malformed_is_refused() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    c.subscribe("orders").await;
    let h = [("X-Idempotency-Key", "k")];
    let one = json!({"name":"e","channels":["orders"],"data":"1"});
    assert_eq!(s.api().post_with("/events", &one, &h).await.status, 200);
    assert_eq!(c.recv().await["data"], "1");
    let other = json!({"name":"e","channels":["orders"],"data":"2"});
    let r = s.api().post_with("/events", &other, &h).await;
    assert_eq!(r.status, 409, "{}", r.text);
    for bad in ["", "has space", &"x".repeat(129)] {
        let r = s
            .api()
            .post(
                "/events",
                &json!({"name":"e","channels":["orders"],"data":"3","idempotency_key":bad}),
            )
            .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text);
    }
    let r = s
        .api()
        .post_with(
            "/events",
            &json!({"name":"e","channels":["orders"],"data":"3","idempotency_key":"x"}),
            &[("X-Idempotency-Key", "y")],
        )
        .await;
    assert_eq!(r.status, 400, "two different keys: {}", r.text);
    c.expect_silence(QUIET, "refused requests").await;
    // A refused request leaves no key behind: a corrected retry publishes.
    let r = s
        .api()
        .post(
            "/events",
            &json!({"name":"e","channels":["nope nope"],"data":"4","idempotency_key":"z"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .api()
        .post(
            "/events",
            &json!({"name":"e","channels":["orders"],"data":"4","idempotency_key":"z"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.recv().await["data"], "4");
}

#[tokio::test]
async fn batch_items_with_a_seen_key_are_skipped_and_the_rest_published() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    c.subscribe("feed").await;
    let item = |n: u32| json!({"name":"e","channel":"feed","data":n.to_string(),"idempotency_key":format!("item-{n}")});
    let r = s
        .api()
        .post("/batch_events", &json!({"batch":[item(1), item(2)]}))
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "{}"));
    assert_eq!(c.recv().await["data"], "1");
    assert_eq!(c.recv().await["data"], "2");
    // A retry of the whole batch with one more item: only the new one goes out.
    let r = s
        .api()
        .post(
            "/batch_events",
            &json!({"batch":[item(1), item(2), item(3)]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(c.recv().await["data"], "3");
    c.expect_silence(QUIET, "items seen before").await;
    // A request key on a batch: the retry is answered alike and publishes nothing.
    let b = json!({"batch":[{"name":"e","channel":"feed","data":"4"}]});
    let h = [("X-Idempotency-Key", "batch-4")];
    assert_eq!(s.api().post_with("/batch_events", &b, &h).await.status, 200);
    assert_eq!(c.recv().await["data"], "4");
    let r = s.api().post_with("/batch_events", &b, &h).await;
    assert_eq!((r.status, r.text.as_str()), (200, "{}"));
    c.expect_silence(QUIET, "a batch retried with its key")
        .await;
}

#[tokio::test]
async fn a_zero_window_ignores_keys() {
    let s = TestServer::start(&config("idempotency_window = 0", "")).await;
    let mut c = s.client().await;
    c.subscribe("orders").await;
    let body = json!({"name":"e","channels":["orders"],"data":"{}"});
    for _ in 0..2 {
        let r = s
            .api()
            .post_with("/events", &body, &[("X-Idempotency-Key", "k")])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(c.recv().await["event"], "e");
    }
}

#[tokio::test]
async fn a_retry_on_another_node_is_recognised() {
    let toml = cluster_config(&prefix(), REDIS, "");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;
    let mut c = b.client().await;
    c.subscribe("orders").await;
    let body = json!({"name":"paid","channels":["orders"],"data":"{}"});
    let h = [("X-Idempotency-Key", "cluster-1")];
    let first = a.api().post_with("/events", &body, &h).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(c.recv().await["event"], "paid");
    let retry = b.api().post_with("/events", &body, &h).await;
    assert_eq!((retry.status, &retry.text), (200, &first.text));
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    c.expect_silence(QUIET, "a retry on the other node").await;
    // Another key from the other node publishes.
    let r = b
        .api()
        .post_with("/events", &body, &[("X-Idempotency-Key", "cluster-2")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.recv().await["event"], "paid");
    // Batch items across nodes.
    let item = json!({"batch":[{"name":"i","channel":"orders","data":"{}","idempotency_key":"cluster-item"}]});
    assert_eq!(a.api().post("/batch_events", &item).await.status, 200);
    assert_eq!(c.recv().await["event"], "i");
    assert_eq!(b.api().post("/batch_events", &item).await.status, 200);
    c.expect_silence(QUIET, "a batch item retried on the other node")
        .await;
}
