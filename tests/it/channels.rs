//! Spec 10.2 "Channels": names, every channel kind, presence rosters, cache, server-to-user.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn invalid_channel_names_are_refused_with_4009() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    let long = "a".repeat(201);
    for bad in ["a b", "é", long.as_str(), "#foo", ""] {
        let e = c.subscribe(bad).await;
        assert_eq!(e["event"], "pusher:error", "{bad:?} must be refused");
        assert_eq!(e["data"]["code"], 4009, "{bad:?}");
    }
    let ok = c.subscribe(&"a".repeat(200)).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "a 200-character name is valid"
    );
}

#[tokio::test]
async fn public_subscribe_in_every_form_succeeds_with_string_data() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    let forms = [
        json!({"event":"pusher:subscribe","data":{"auth":"","channel":"one"}}),
        json!({"event":"pusher:subscribe","data":{"channel":"two"}}),
        json!({"event":"pusher:subscribe","data":"{\"channel\":\"three\"}"}),
    ];
    for (f, name) in forms.iter().zip(["one", "two", "three"]) {
        c.send(f.clone()).await;
        let ok = c.recv().await;
        assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(ok["channel"], name);
        assert_eq!(ok["data"], "{}", "data must be the string \"{{}}\"");
    }
}

#[tokio::test]
async fn private_and_encrypted_need_a_valid_signature() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    for ch in [
        "private-orders",
        "private-encrypted-orders",
        "private-cache-x",
    ] {
        let ok = c.subscribe_private(ch).await;
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "{ch}"
        );
    }
    let mut c2 = s.client().await;
    // A token signed for another socket (N1) and a garbage token.
    let other = c.sid();
    let forged =
        resound::protocol::auth::sign_token(KEY, SECRET, &format!("{other}:private-secret"));
    for auth in [forged.as_str(), "it-key:0000", "", "nocolon"] {
        c2.send(
            json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":"private-secret"}}),
        )
        .await;
        let e = c2.recv().await;
        assert_eq!(e["event"], "pusher:error", "{auth}");
        assert_eq!(e["data"]["code"], 4009);
        assert_eq!(e["channel"], "private-secret");
        assert!(
            !e["data"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(&forged[7..]),
            "never leaks the expected signature"
        );
    }
    c2.send(json!({"event":"pusher:subscribe","data":{"channel":"private-secret"}}))
        .await;
    assert_eq!(c2.recv().await["data"]["code"], 4009, "missing auth");
}

#[tokio::test]
async fn presence_rosters_are_per_user_with_string_ids() {
    let s = TestServer::default().await;
    let ch = "presence-room";
    let mut ada = s.client().await;
    let ok = ada
        .subscribe_presence(ch, r#"{"user_id":"11","user_info":{"name":"Ada"}}"#)
        .await;
    let roster = data_json(&ok);
    assert_eq!(
        roster["presence"]["ids"],
        json!(["11"]),
        "roster includes the subscriber"
    );
    // Numeric user_id, Python-style spacing: accepted over the exact bytes, id stringified.
    let mut mr = s.client().await;
    let ok = mr
        .subscribe_presence(
            ch,
            r#"{"user_id": 10, "user_info": {"name": "Mr. Pusher"}}"#,
        )
        .await;
    let roster = data_json(&ok);
    assert_eq!(roster["presence"]["count"], 2);
    assert_eq!(
        roster["presence"]["ids"],
        json!(["11", "10"]),
        "ids must be strings"
    );
    assert_eq!(roster["presence"]["hash"]["10"]["name"], "Mr. Pusher");
    let added = ada.recv_event("pusher_internal:member_added").await;
    assert_eq!(
        data_json(&added),
        json!({"user_id":"10","user_info":{"name":"Mr. Pusher"}})
    );
    mr.expect_silence(
        Duration::from_millis(200),
        "the joiner gets no member_added for itself",
    )
    .await;

    // A second tab of user 10: no member_added, count unchanged.
    let mut mr2 = s.client().await;
    let ok = mr2
        .subscribe_presence(ch, r#"{"user_id":"10","user_info":{"name":"Mr. Pusher"}}"#)
        .await;
    assert_eq!(data_json(&ok)["presence"]["count"], 2);
    ada.expect_silence(Duration::from_millis(200), "second connection of a member")
        .await;

    // First tab leaves: no member_removed. Last tab leaves: member_removed to others only.
    mr.send(json!({"event":"pusher:unsubscribe","data":{"channel":ch}}))
        .await;
    ada.expect_silence(Duration::from_millis(200), "not the user's last connection")
        .await;
    drop(mr2);
    let removed = ada.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data_json(&removed), json!({"user_id":"10"}));
    let users = s.api().get(&format!("/channels/{ch}/users"), &[]).await;
    assert_eq!(users.body, json!({"users":[{"id":"11"}]}));
}

#[tokio::test]
async fn presence_member_limit_refuses_new_users_only() {
    let s = TestServer::start(&config("max_presence_members_per_channel = 2", "")).await;
    let ch = "presence-small";
    let mut a = s.client().await;
    a.subscribe_presence(ch, r#"{"user_id":"1"}"#).await;
    let mut b = s.client().await;
    b.subscribe_presence(ch, r#"{"user_id":"2"}"#).await;
    let mut c = s.client().await;
    let cd = r#"{"user_id":"3"}"#;
    let auth =
        resound::protocol::auth::sign_token(KEY, SECRET, &format!("{}:{ch}:{cd}", c.socket_id));
    c.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":ch,"channel_data":cd}}))
        .await;
    let e = c.recv().await;
    assert_eq!(e["event"], "pusher:error");
    assert_eq!(e["data"]["code"], 4100);
    let mut a2 = s.client().await;
    let ok = a2.subscribe_presence(ch, r#"{"user_id":"1"}"#).await;
    assert_eq!(
        data_json(&ok)["presence"]["count"],
        2,
        "another tab of a member is accepted"
    );
}

#[tokio::test]
async fn presence_user_info_over_the_limit_is_refused() {
    let s = TestServer::start(&config("max_presence_member_size = 20", "")).await;
    let mut c = s.client().await;
    let cd = format!(
        r#"{{"user_id":"1","user_info":{{"bio":"{}"}}}}"#,
        "x".repeat(50)
    );
    let auth = resound::protocol::auth::sign_token(
        KEY,
        SECRET,
        &format!("{}:presence-x:{cd}", c.socket_id),
    );
    c.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":"presence-x","channel_data":cd}})).await;
    let e = c.recv().await;
    assert_eq!(e["data"]["code"], 4301);
}

#[tokio::test]
async fn presence_without_channel_data_needs_a_signed_in_user() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    let e = c.subscribe_private("presence-signed").await;
    assert_eq!(e["event"], "pusher:error", "not signed in");
    let ok = c
        .signin(r#"{"id":"77","user_info":{"name":"Signed"}}"#)
        .await;
    assert_eq!(ok["event"], "pusher:signin_success");
    let ok = c.subscribe_private("presence-signed").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let roster = data_json(&ok);
    assert_eq!(roster["presence"]["ids"], json!(["77"]));
    assert_eq!(roster["presence"]["hash"]["77"]["name"], "Signed");
}

#[tokio::test]
async fn duplicate_subscribe_answers_public_channels_again_and_presence_with_nothing() {
    let s = TestServer::default().await;
    let mut a = s.client().await;
    a.subscribe_presence("presence-dup", r#"{"user_id":"1"}"#)
        .await;
    let mut b = s.client().await;
    b.subscribe_presence("presence-dup", r#"{"user_id":"2"}"#)
        .await;
    a.recv_event("pusher_internal:member_added").await;
    // The client holds the roster already: no second copy, no member event, still subscribed.
    b.try_presence_silently("presence-dup", r#"{"user_id":"2"}"#)
        .await;
    b.assert_alive("a duplicate presence subscribe gets no answer")
        .await;
    a.assert_alive("a duplicate subscribe announces nothing")
        .await;
    s.api()
        .trigger(&["presence-dup"], "still-there", "{}")
        .await;
    assert_eq!(b.recv().await["event"], "still-there");
    assert_eq!(a.recv().await["event"], "still-there");

    assert_eq!(
        b.subscribe("news").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let again = b.subscribe("news").await;
    assert_eq!(again["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(again["channel"], "news");
}

#[tokio::test]
async fn cache_channels_replay_the_last_api_event_or_send_cache_miss() {
    let s = TestServer::default().await;
    let api = s.api();
    let mut c = s.client().await;
    let ok = c.subscribe("cache-empty").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let miss = c.recv().await;
    assert_eq!(miss["event"], "pusher:cache_miss");
    assert_eq!(miss["channel"], "cache-empty");

    // Published before anyone subscribed: cached anyway.
    assert_eq!(
        api.trigger(&["cache-prices"], "price-updated", r#"{"price":42}"#)
            .await
            .status,
        200
    );
    let mut c2 = s.client().await;
    let ok = c2.subscribe("cache-prices").await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "succeeded comes first"
    );
    let cached = c2.recv().await;
    assert_eq!(
        cached,
        json!({"event":"price-updated","channel":"cache-prices","data":"{\"price\":42}"})
    );
    let info = api
        .get("/channels/cache-prices", &[("info", "cache")])
        .await;
    assert_eq!(info.body["cache"]["data"], r#"{"price":42}"#);
    assert!(info.body["cache"]["ttl"].as_u64().is_some_and(|t| t > 1700));
    let none = api
        .get("/channels/cache-nothing", &[("info", "cache")])
        .await;
    assert_eq!(none.body["cache"], serde_json::Value::Null);
}

#[tokio::test]
async fn whispers_are_never_cached() {
    let s = TestServer::default().await;
    let mut a = s.client().await;
    a.subscribe_private("private-cache-board").await;
    a.recv_event("pusher:cache_miss").await;
    a.send(json!({"event":"client-draw","channel":"private-cache-board","data":{"x":1}}))
        .await;
    let mut b = s.client().await;
    b.subscribe_private("private-cache-board").await;
    assert_eq!(
        b.recv().await["event"],
        "pusher:cache_miss",
        "a client event must not fill the cache"
    );
}

#[tokio::test]
async fn cache_ttl_expires() {
    let s = TestServer::start(&config("cache_ttl = 1", "")).await;
    s.api().trigger(&["cache-short"], "e", "{}").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = s.client().await;
    c.subscribe("cache-short").await;
    assert_eq!(
        c.recv().await["event"],
        "pusher:cache_miss",
        "expired cache"
    );
}

#[tokio::test]
async fn server_to_user_channel_only_for_that_user_and_reaches_every_connection() {
    let s = TestServer::default().await;
    let mut stranger = s.client().await;
    let e = stranger.subscribe("#server-to-user-12345").await;
    assert_eq!(e["event"], "pusher:error", "not signed in");
    assert_eq!(e["data"]["code"], 4009);
    stranger.signin(r#"{"id":"999"}"#).await;
    let e = stranger.subscribe("#server-to-user-12345").await;
    assert_eq!(e["data"]["code"], 4009, "signed in as someone else");

    let mut tab1 = s.client().await;
    let ok = tab1.signin(r#"{"id":"12345"}"#).await;
    assert_eq!(
        ok,
        json!({"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"12345\"}"}})
    );
    let ok = tab1.subscribe("#server-to-user-12345").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let mut tab2 = s.client().await;
    tab2.signin(r#"{"id": "12345"}"#).await;

    let r = s
        .api()
        .trigger(
            &["#server-to-user-12345"],
            "my-event",
            r#"{"message":"hello world"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let expected = json!({"event":"my-event","channel":"#server-to-user-12345","data":"{\"message\":\"hello world\"}"});
    assert_eq!(tab1.recv().await, expected);
    assert_eq!(
        tab2.recv().await,
        expected,
        "every connection signed in as the user"
    );
    stranger
        .expect_silence(Duration::from_millis(200), "other users")
        .await;
}

#[tokio::test]
async fn signin_rules() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    let auth = resound::protocol::auth::sign_token(KEY, SECRET, "1.1::user::{\"id\":\"1\"}");
    c.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":"{\"id\":\"1\"}"}}))
        .await;
    assert_eq!(
        c.recv().await["data"]["code"],
        4009,
        "token for another socket"
    );
    assert_eq!(
        c.signin(r#"{"id":"1"}"#).await["event"],
        "pusher:signin_success"
    );
    assert_eq!(
        c.signin(r#"{"id":"1"}"#).await["event"],
        "pusher:signin_success",
        "same id again is fine"
    );
    assert_eq!(
        c.signin(r#"{"id":"2"}"#).await["data"]["code"],
        4009,
        "a different id is refused"
    );
}

#[tokio::test]
async fn unsubscribe_sends_nothing_and_stops_delivery() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    c.subscribe("news").await;
    c.send(json!({"event":"pusher:unsubscribe","data":{"channel":"news"}}))
        .await;
    c.send(json!({"event":"pusher:unsubscribe","data":{"channel":"never-subscribed"}}))
        .await;
    c.expect_silence(Duration::from_millis(200), "unsubscribe has no reply")
        .await;
    s.api().trigger(&["news"], "e", "{}").await;
    c.expect_silence(Duration::from_millis(200), "after unsubscribe")
        .await;
}

#[tokio::test]
async fn subscription_count_events_when_enabled() {
    let s = TestServer::start(&config("subscription_count_events = true", "")).await;
    let mut a = s.client().await;
    a.subscribe("counted").await;
    let ev = a.recv().await;
    assert_eq!(ev["event"], "pusher_internal:subscription_count");
    assert_eq!(data_json(&ev), json!({"subscription_count":1}));
    let mut b = s.client().await;
    b.subscribe("counted").await;
    assert_eq!(data_json(&a.recv().await), json!({"subscription_count":2}));
}
