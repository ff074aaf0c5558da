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
