//! Hostile subscription patterns: per-connection channel and subscribe-rate limits, repeated
//! subscribes, repeated sign-ins. Each test shows the bound holds and the connection (and
//! the server) keeps answering.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// The test app on a cluster node sharing Redis under `prefix`, with `app_extra` for the app.
fn cluster_toml(prefix: &str, app_extra: &str) -> String {
    format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\nshutdown_grace_period = 2\n\n\
         [scaling]\nenabled = true\nchannel = \"{prefix}\"\nredis_url = \"redis://127.0.0.1:6379/0\"\n\n\
         [[apps]]\nid = \"{APP_ID}\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n{app_extra}\n"
    )
}

fn unique_prefix() -> String {
    format!("it-{}", resound::protocol::SocketId::random()).replace('.', "-")
}

/// A connection that signs in twice as the same user with different watchlists, then
/// leaves, must give back exactly the watch interests it took: another connection of its
/// node still watching a user keeps hearing that user come online from another node.
#[tokio::test]
async fn a_repeated_signin_with_another_watchlist_keeps_the_node_watching_for_others() {
    let toml = cluster_toml(&unique_prefix(), "watchlist_events = true");
    let a = TestServer::start(&toml).await;
    let b = TestServer::start(&toml).await;

    let mut watcher = b.client().await;
    let ok = watcher
        .signin(r#"{"id":"watcher","watchlist":["friend"]}"#)
        .await;
    assert_eq!(ok["event"], "pusher:signin_success");
    let initial = watcher.recv().await;
    assert_eq!(
        data_json(&initial),
        json!({"events":[{"name":"offline","user_ids":["friend"]}]})
    );

    let mut fickle = b.client().await;
    fickle
        .signin(r#"{"id":"fickle","watchlist":["someone"]}"#)
        .await;
    fickle.recv_event("pusher_internal:watchlist_events").await;
    let again = fickle
        .signin(r#"{"id":"fickle","watchlist":["friend"]}"#)
        .await;
    assert_eq!(again["event"], "pusher:signin_success");
    fickle.assert_alive("repeated sign-in").await;
    drop(fickle);
    // The leave is handled on the server's side of the socket; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut friend = a.client().await;
    assert_eq!(
        friend.signin(r#"{"id":"friend"}"#).await["event"],
        "pusher:signin_success"
    );
    let online = watcher
        .await_event("pusher_internal:watchlist_events", Duration::from_secs(3))
        .await;
    assert_eq!(
        data_json(&online),
        json!({"events":[{"name":"online","user_ids":["friend"]}]})
    );
}

/// A repeated `pusher:subscribe` to a presence channel already joined must not send the
/// roster again: with large `user_info`, each 300-byte message would make the server queue
/// a roster of tens of kilobytes for a client that need not read it.
#[tokio::test]
async fn a_repeated_presence_subscribe_sends_no_roster_again() {
    let s = TestServer::default().await;
    let info = "x".repeat(1000);
    let mut members = Vec::new();
    for i in 0..10 {
        let mut c = s.client().await;
        let data = format!(r#"{{"user_id":"{i}","user_info":{{"bio":"{info}"}}}}"#);
        c.subscribe_presence("presence-big", &data).await;
        members.push(c);
    }
    let mut hostile = s.client().await;
    let data = r#"{"user_id":"hostile"}"#;
    let ok = hostile.subscribe_presence("presence-big", data).await;
    assert_eq!(data_json(&ok)["presence"]["count"], 11);
    for _ in 0..50 {
        hostile.try_presence_silently("presence-big", data).await;
    }
    // The next thing it hears is the answer to its ping: no roster came in between.
    hostile.assert_alive("repeated presence subscribes").await;
    // The others heard of the hostile member once, and of nothing since.
    let first = &mut members[0];
    let mut added = 0;
    first.send(json!({"event":"pusher:ping"})).await;
    loop {
        let ev = first.recv().await;
        match ev["event"].as_str() {
            Some("pusher_internal:member_added") => added += 1,
            Some("pusher:pong") => break,
            _ => {}
        }
    }
    // Member 0 was told of the 9 later members and of the hostile one, once each.
    assert_eq!(added, 10);
}

/// One socket cannot subscribe to unbounded channels: with the defaults, the 101st is refused
/// with 4100 naming the channel, the connection stays open and usable, and a freed slot can
/// be used again. A reconnecting client's resubscription to all of its 100 channels at once
/// fits the default burst.
#[tokio::test]
async fn channels_per_connection_are_capped_and_refused_with_4100() {
    let s = TestServer::start(&config("subscription_error_event = true", "")).await;
    let mut c = s.client().await;
    for i in 0..100 {
        let ok = c.subscribe(&format!("room-{i}")).await;
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "channel {i}"
        );
    }
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"room-100"}}))
        .await;
    let soketi = c.recv().await;
    assert_eq!(soketi["event"], "pusher:subscription_error");
    assert_eq!(soketi["channel"], "room-100");
    assert_eq!(soketi["data"]["status"], 4100);
    let e = c.recv().await;
    assert_eq!(e["event"], "pusher:error");
    assert_eq!(e["channel"], "room-100");
    assert_eq!(e["data"]["code"], 4100);
    c.assert_alive("refused by the channel limit").await;
    // A channel already held still answers; a freed slot takes a new channel.
    assert_eq!(
        c.subscribe("room-0").await["event"],
        "pusher_internal:subscription_succeeded"
    );
    c.send(json!({"event":"pusher:unsubscribe","data":{"channel":"room-0"}}))
        .await;
    // The burst is spent: the next join waits for the budget (10/s) to refill.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = c.subscribe("room-100").await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let r = s.api().get("/channels", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["channels"].as_object().map(|m| m.len()),
        Some(100),
        "{}",
        r.body
    );
}

/// `GET /channels` lists at most `max_channels_listed` channels per answer, in name order; a
/// clipped answer names the cursor of the next page (`next`, given back as `after`), and the
/// pages together list every occupied channel once. A `limit` beyond the cap is a 400.
#[tokio::test]
async fn channel_listing_is_paged_by_the_app_cap() {
    let s = TestServer::start(&config("max_channels_listed = 40", "")).await;
    let mut c = s.client().await;
    for i in 0..100 {
        c.subscribe(&format!("room-{i:03}")).await;
    }
    let mut listed: Vec<String> = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let r = s.api().get("/channels", &[("after", after.as_str())]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        pages += 1;
        let page: Vec<String> = r.body["channels"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        assert!(page.len() <= 40, "{} channels in one answer", page.len());
        listed.extend(page);
        match r.body["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
        assert!(pages < 10, "paging does not end: {}", r.body);
    }
    let expected: Vec<String> = (0..100).map(|i| format!("room-{i:03}")).collect();
    assert_eq!((pages, listed), (3, expected));
    let small = s.api().get("/channels", &[("limit", "7")]).await;
    assert_eq!(small.body["channels"].as_object().map(|m| m.len()), Some(7));
    assert_eq!(small.body["next"], "room-006");
    for bad in ["0", "41", "x"] {
        let r = s.api().get("/channels", &[("limit", bad)]).await;
        assert_eq!(r.status, 400, "limit={bad}: {}", r.text);
    }
}

/// Subscribe and unsubscribe in a loop: past the burst, joins are refused with 4301 at the
/// configured rate, the connection stays open, and joins are accepted again as the budget
/// refills.
#[tokio::test]
async fn subscribes_per_second_are_limited_after_a_burst() {
    let s = TestServer::start(&config(
        "max_channels_per_connection = 5\nmax_subscribes_per_second = 2",
        "",
    ))
    .await;
    let mut c = s.client().await;
    let mut refused = None;
    for i in 0..20 {
        let answer = c.subscribe(&format!("churn-{i}")).await;
        if answer["event"] == "pusher:error" {
            refused = Some((i, answer));
            break;
        }
        c.send(json!({"event":"pusher:unsubscribe","data":{"channel":format!("churn-{i}")}}))
            .await;
    }
    let (at, e) = refused.expect("a subscribe loop must be refused");
    // The burst is the channel limit (5); a few more may have refilled meanwhile.
    assert!((5..8).contains(&at), "refused at the {at}th subscribe");
    assert_eq!(e["data"]["code"], 4301);
    assert_eq!(e["channel"], format!("churn-{at}"));
    c.assert_alive("refused by the subscribe rate").await;
    let again = c.subscribe("later").await;
    assert_eq!(again["event"], "pusher:error", "no budget yet: {again}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        c.subscribe("later").await["event"],
        "pusher_internal:subscription_succeeded"
    );
}
