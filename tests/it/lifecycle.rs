//! Termination, slow consumers and graceful shutdown.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn terminate_closes_only_that_users_signed_in_sockets() {
    let s = TestServer::default().await;
    let mut u1 = s.client().await;
    u1.signin(r#"{"id":"u1"}"#).await;
    let mut u1b = s.client().await;
    u1b.signin(r#"{"id":"u1"}"#).await;
    let mut u2 = s.client().await;
    u2.signin(r#"{"id":"u2"}"#).await;
    let mut anon = s.client().await;
    anon.subscribe_presence("presence-t", r#"{"user_id":"u1"}"#)
        .await;
    let r = s
        .api()
        .post("/users/u1/terminate_connections", &json!({}))
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "{}"));
    for c in [&mut u1, &mut u1b] {
        let e = c.recv().await;
        assert_eq!(e["event"], "pusher:error");
        assert_eq!(e["data"]["code"], 4009);
        assert_eq!(c.closed().await, Some(4009));
    }
    u2.assert_alive("other users untouched").await;
    anon.assert_alive("presence-only members are not signed in")
        .await;
    let r = s
        .api()
        .post("/users/nobody/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.text, "{}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_others_keep_up() {
    let toml = TestConfig::new()
        .server_setting("outbound_queue_size", 16)
        .app_setting("max_event_payload_bytes", 65536)
        .app_setting("max_http_body_bytes", 1048576)
        .toml();
    let s = TestServer::start(&toml).await;
    let mut slow = s.client().await;
    slow.subscribe("firehose").await;
    let mut fast = s.client().await;
    fast.subscribe("firehose").await;
    let payload = "y".repeat(60_000);
    let api = s.api();
    // The slow client never reads; its socket buffers fill, then its queue.
    let mut received = 0;
    for i in 0..400 {
        let r = api
            .trigger(
                &["firehose"],
                "e",
                &format!("{{\"i\":{i},\"p\":\"{payload}\"}}"),
            )
            .await;
        assert_eq!(r.status, 200);
        let ev = fast.recv().await;
        assert_eq!(data_json(&ev)["i"], i, "the fast client misses nothing");
        received += 1;
    }
    assert_eq!(received, 400);
    let mut cut = 0.0;
    for _ in 0..50 {
        let metrics = raw_request("GET", &s.url("/metrics"), String::new())
            .await
            .text;
        cut = metrics
            .lines()
            .find(|l| l.starts_with("resound_slow_consumer_disconnects_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if cut >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cut >= 1.0, "the slow consumer was disconnected");
    // Its socket eventually closes with a reconnect-class code (or drops).
    let code = tokio::time::timeout(Duration::from_secs(10), slow.closed())
        .await
        .ok()
        .flatten();
    assert!(code.is_none() || code == Some(4100), "{code:?}");
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_4200() {
    let mut s = TestServer::default().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.subscribe("x").await;
    let stop = tokio::spawn(async move {
        s.stop().await;
        s
    });
    for c in [&mut a, &mut b] {
        let e = c.recv().await;
        assert_eq!(e["data"]["code"], 4200);
        assert_eq!(c.closed().await, Some(4200));
    }
    let s = tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("server stopped in time")
        .expect("join");
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn authorized_connections_close_unauthorized_sockets_after_the_timeout() {
    let s = TestServer::start(&config(
        "require_authorization = true\nauthorization_timeout = 1",
        "",
    ))
    .await;
    // Before the handshake, so the server's clock for this socket starts later than this one.
    let started = std::time::Instant::now();
    let mut idle = s.client().await;
    let mut signed = s.client().await;
    signed.signin(r#"{"id":"ok"}"#).await;
    let mut private = s.client().await;
    private.subscribe_private("private-ok").await;
    let e = idle.recv().await;
    assert_eq!(
        e["data"]["code"], 4009,
        "an unauthorized socket is told why"
    );
    assert_eq!(idle.closed().await, Some(4009));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before authorization_timeout"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for c in [&mut signed, &mut private] {
        c.assert_alive("signed-in and private subscribers stay")
            .await;
    }
}

#[tokio::test]
async fn a_client_whose_socket_is_full_is_still_read() {
    let toml = TestConfig::new()
        .server_setting("outbound_queue_size", 100_000)
        .server_setting("outbound_queue_bytes", 64 * 1024 * 1024)
        .app_setting("max_event_payload_bytes", 65536)
        .app_setting("max_http_body_bytes", 1048576)
        .toml();
    let s = TestServer::start(&toml).await;
    let mut stalled = s.client().await;
    stalled.subscribe("firehose").await;
    let api = s.api();
    // 12 MB for a client that does not read: more than the socket's buffers on both ends hold,
    // so the server's writes to it are pending, within the queue's limits.
    let payload = "z".repeat(60_000);
    for i in 0..200 {
        let r = api
            .trigger(
                &["firehose"],
                "e",
                &format!("{{\"i\":{i},\"p\":\"{payload}\"}}"),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    // Its messages are still read and handled while its output waits.
    stalled
        .send(json!({"event": "pusher:subscribe", "data": {"channel": "later"}}))
        .await;
    api.get_until(
        "/channels/later",
        &[("info", "subscription_count")],
        &json!({"occupied": true, "subscription_count": 1}),
    )
    .await;
    // And what waited is delivered, in order, once it reads again.
    for i in 0..200 {
        let ev = stalled.recv_event("e").await;
        assert_eq!(data_json(&ev)["i"], i);
    }
    let ev = stalled
        .recv_event("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(ev["channel"], "later");
}
