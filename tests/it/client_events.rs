//! Spec 10.2 "Client events": acceptance rules in order, relay, never echoed, rate limit.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn relayed_verbatim_to_others_never_echoed() {
    let s = TestServer::default().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.subscribe_private("private-chat").await;
    b.subscribe_private("private-chat").await;
    // Object data with odd spacing, and a forged user_id that must be stripped.
    a.send_text(r#"{"event":"client-typing","channel":"private-chat","data":{ "typing" : true },"user_id":"forged","extra":1}"#).await;
    let got = b.recv().await;
    assert_eq!(
        got,
        json!({"event":"client-typing","channel":"private-chat","data":{"typing":true}})
    );
    a.expect_silence(
        Duration::from_millis(200),
        "client event echoed to its sender",
    )
    .await;
    // String data stays a string.
    a.send(json!({"event":"client-s","channel":"private-chat","data":"just text"}))
        .await;
    assert_eq!(b.recv().await["data"], "just text");
}

#[tokio::test]
async fn relay_preserves_the_exact_bytes_of_data() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::default().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.subscribe_private("private-bytes").await;
    b.subscribe_private("private-bytes").await;
    a.send_text(r#"{"event":"client-x","channel":"private-bytes","data":{"b":1, "a":[1,2]}}"#)
        .await;
    let raw = tokio::time::timeout(WAIT, b.ws.next())
        .await
        .expect("message")
        .expect("open")
        .expect("ok");
    let Message::Text(t) = raw else {
        panic!("text")
    };
    assert!(
        t.contains(r#""data":{"b":1, "a":[1,2]}"#),
        "data must be byte-identical: {t}"
    );
}

#[tokio::test]
async fn presence_relay_carries_the_sender_user_id_private_does_not() {
    let s = TestServer::default().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.subscribe_presence("presence-room", r#"{"user_id":42}"#)
        .await;
    b.subscribe_presence("presence-room", r#"{"user_id":"7"}"#)
        .await;
    a.send(json!({"event":"client-typing","channel":"presence-room","data":{"typing":true}}))
        .await;
    let got = b.recv_event("client-typing").await;
    assert_eq!(got["user_id"], "42", "user_id as a string");
    a.subscribe_private("private-p").await;
    b.subscribe_private("private-p").await;
    a.send(json!({"event":"client-x","channel":"private-p","data":{}}))
        .await;
    let got = b.recv_event("client-x").await;
    assert!(
        got.get("user_id").is_none(),
        "no user_id on private channels"
    );
}

#[tokio::test]
async fn refusals_in_order() {
    let s = TestServer::start(&config(
        "",
        "[[apps]]\nid = \"2\"\nkey = \"off-key\"\nsecret = \"s\"\n",
    ))
    .await;
    let mut off = Client::connect(&s.ws_url("off-key", "protocol=7")).await;
    off.send(json!({"event":"client-x","channel":"private-a","data":{}}))
        .await;
    assert_eq!(
        off.recv().await["data"]["code"],
        4301,
        "app without client events"
    );

    let mut c = s.client().await;
    c.subscribe("public-chan").await;
    c.send(json!({"event":"client-x","channel":"public-chan","data":{}}))
        .await;
    let e = c.recv().await;
    assert_eq!(e["data"]["code"], 4009, "public channel refused");
    c.send(json!({"event":"client-x","channel":"private-not-joined","data":{}}))
        .await;
    let e = c.recv().await;
    assert_eq!(e["data"]["code"], 4009, "not subscribed");
    assert!(e["data"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("not subscribed"));
    c.subscribe_private("private-big").await;
    let big = "x".repeat(11_000);
    c.send(json!({"event":"client-x","channel":"private-big","data":big}))
        .await;
    assert_eq!(c.recv().await["data"]["code"], 4301, "too large");
    let long_name = format!("client-{}", "x".repeat(200));
    c.send(json!({"event":long_name,"channel":"private-big","data":{}}))
        .await;
    assert_eq!(c.recv().await["data"]["code"], 4301, "name too long");
}

#[tokio::test]
async fn the_eleventh_event_in_a_second_is_dropped_with_4301() {
    let s = TestServer::default().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.subscribe_private("private-rate").await;
    b.subscribe_private("private-rate").await;
    // One write, so the eleven arrive together however busy the machine is.
    for i in 0..11 {
        let ev = json!({"event":"client-n","channel":"private-rate","data":{"i":i}});
        a.ws.feed(Message::text(ev.to_string()))
            .await
            .expect("feed");
    }
    a.ws.flush().await.expect("flush");
    let e = a.recv().await;
    assert_eq!(e["data"]["code"], 4301);
    for i in 0..10 {
        assert_eq!(b.recv().await["data"]["i"], i);
    }
    b.expect_silence(Duration::from_millis(200), "the 11th event must be dropped")
        .await;
}

#[tokio::test]
async fn reverb_all_policy_allows_public_channels() {
    let s = TestServer::start(&config("accept_client_events_from = \"all\"", "")).await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.subscribe("public-w").await;
    b.subscribe("public-w").await;
    a.send(json!({"event":"client-w","channel":"public-w","data":{}}))
        .await;
    assert_eq!(b.recv().await["event"], "client-w");
}
