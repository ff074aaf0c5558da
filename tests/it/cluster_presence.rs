//! Cluster mode over a real Redis, presence: rosters are per user across nodes, the member
//! limit is cluster-wide, a killed node's members are removed by the survivors, and every
//! member sees an exact roster through concurrent joins and leaves on two nodes.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::cluster_support::*;
use crate::support::*;

#[tokio::test]
async fn presence_is_per_user_across_nodes() {
    let ns = nodes(3, "").await;
    let ch = "presence-room";
    let mut watcher = ns[2].client().await;
    watcher.subscribe_presence(ch, r#"{"user_id":"w"}"#).await;
    // User 42 on node 0, then a second tab on node 1.
    let mut tab1 = ns[0].client().await;
    let r1 = data_json(
        &tab1
            .subscribe_presence(ch, r#"{"user_id":42,"user_info":{"name":"Ada"}}"#)
            .await,
    );
    assert_eq!(r1["presence"]["count"], 2);
    let added = watcher.recv_event("pusher_internal:member_added").await;
    assert_eq!(data_json(&added)["user_id"], "42");
    let mut tab2 = ns[1].client().await;
    let r2 = data_json(
        &tab2
            .subscribe_presence(ch, r#"{"user_id":"42","user_info":{"name":"Ada"}}"#)
            .await,
    );
    assert_eq!(
        r2["presence"]["count"], 2,
        "a second tab on another node is the same member"
    );
    watcher
        .expect_silence(
            Duration::from_millis(300),
            "member_added for a second connection",
        )
        .await;
    // The same roster from every node's HTTP API.
    for n in &ns {
        let users = n.api().get(&format!("/channels/{ch}/users"), &[]).await;
        let mut ids: Vec<String> = users.body["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, vec!["42", "w"]);
        let info = n
            .api()
            .get(
                &format!("/channels/{ch}"),
                &[("info", "user_count,subscription_count")],
            )
            .await;
        assert_eq!(
            info.body,
            json!({"occupied":true,"user_count":2,"subscription_count":3})
        );
    }
    drop(tab1);
    watcher
        .expect_silence(
            Duration::from_millis(400),
            "member_removed while another tab remains",
        )
        .await;
    drop(tab2);
    let removed = watcher.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data_json(&removed), json!({"user_id":"42"}));
}

#[tokio::test]
async fn a_killed_nodes_members_are_removed_by_the_survivors() {
    let p = prefix();
    let toml = cluster_config(&p, REDIS, "");
    let survivor = TestServer::start(&toml).await;
    let doomed = spawn_node(&toml).await;
    let mut watcher = survivor.client().await;
    watcher
        .subscribe_presence("presence-crash", r#"{"user_id":"stay"}"#)
        .await;
    let mut victim = doomed.client().await;
    victim
        .subscribe_presence("presence-crash", r#"{"user_id":"gone"}"#)
        .await;
    watcher.recv_event("pusher_internal:member_added").await;
    let killed_at = Instant::now();
    drop(doomed); // SIGKILL: no goodbye to Redis.
    let removed = watcher
        .await_event("pusher_internal:member_removed", Duration::from_secs(20))
        .await;
    assert_eq!(data_json(&removed), json!({"user_id":"gone"}));
    assert!(
        killed_at.elapsed() <= Duration::from_secs(15),
        "took {:?}",
        killed_at.elapsed()
    );
    let users = survivor
        .api()
        .get("/channels/presence-crash/users", &[])
        .await;
    assert_eq!(users.body, json!({"users":[{"id":"stay"}]}));
    assert_eq!(
        survivor.api().get("/connections", &[]).await.body,
        json!({"connections":1})
    );
}

#[tokio::test]
async fn the_presence_member_limit_is_cluster_wide() {
    let ns = nodes(2, "max_presence_members_per_channel = 1").await;
    let ch = "presence-one";
    let mut first = ns[0].client().await;
    first.subscribe_presence(ch, r#"{"user_id":"1"}"#).await;
    let mut second = ns[1].client().await;
    let refused = second.try_presence(ch, r#"{"user_id":"2"}"#).await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(refused["data"]["code"], 4100, "{refused}");
    // Another tab of the member already there is no new member.
    let mut tab = ns[1].client().await;
    tab.subscribe_presence(ch, r#"{"user_id":"1"}"#).await;
}

/// What one presence subscriber has been told: its roster, then every member event after it.
/// Fails on an event that contradicts what it was told before (a `member_added` for a user
/// already listed, a `member_removed` for one it does not know).
struct View {
    who: String,
    members: std::collections::BTreeSet<String>,
}

impl View {
    fn from_roster(who: &str, succeeded: &serde_json::Value) -> View {
        let ids = data_json(succeeded)["presence"]["ids"].clone();
        let members = ids
            .as_array()
            .expect("roster ids")
            .iter()
            .map(|v| v.as_str().expect("string id").to_string())
            .collect();
        View {
            who: who.to_string(),
            members,
        }
    }

    fn apply(&mut self, ev: &serde_json::Value) {
        let user = data_json(ev)["user_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match ev["event"].as_str() {
            Some("pusher_internal:member_added") => assert!(
                self.members.insert(user.clone()),
                "{} got member_added for {user}, already in its roster or added before",
                self.who
            ),
            Some("pusher_internal:member_removed") => assert!(
                self.members.remove(&user),
                "{} got member_removed for {user}, whom it never knew",
                self.who
            ),
            _ => {}
        }
    }

    /// Applies the events that arrive until the view is `expected` (10 s at most), then every
    /// event of a quiet half second more, in which nothing may contradict it; checks the view.
    async fn settle(&mut self, c: &mut Client, expected: &std::collections::BTreeSet<String>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.members != *expected && self.next(c, deadline).await {}
        let quiet = Instant::now() + Duration::from_millis(500);
        while self.next(c, quiet).await {}
        assert_eq!(self.members, *expected, "{}'s view", self.who);
    }

    /// Applies the next message if one arrives before `until`; `false` when none did.
    async fn next(&mut self, c: &mut Client, until: Instant) -> bool {
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return false;
        };
        match tokio::time::timeout(left, c.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                self.apply(&serde_json::from_str(&t).expect("JSON"));
                true
            }
            Ok(Some(Ok(_))) => true,
            Ok(_) => panic!("{}: connection ended", self.who),
            Err(_) => false,
        }
    }
}

/// Waits for the other members' tasks; fails (instead of hanging) when one of them failed.
async fn meet(barrier: &tokio::sync::Barrier) {
    tokio::time::timeout(Duration::from_secs(15), barrier.wait())
        .await
        .expect("another member's task failed");
}

#[tokio::test]
async fn every_member_sees_an_exact_roster_when_many_join_and_leave_at_once_on_two_nodes() {
    // Rosters are read on one node while other nodes' member events are on their way: no
    // member may be announced twice to a subscriber, none missed, none removed unknown.
    const USERS: usize = 24;
    const ROUNDS: usize = 2;
    let ns = nodes(2, "").await;
    for round in 0..ROUNDS {
        let ch = format!("presence-crowd-{round}");
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(USERS));
        let leave = std::sync::Arc::new(tokio::sync::Barrier::new(USERS));
        // Nobody disconnects before everyone has checked (a disconnect is a departure).
        let done = std::sync::Arc::new(tokio::sync::Barrier::new(USERS));
        let mut tasks = Vec::new();
        for i in 0..USERS {
            let url = ns[i % 2].ws_url(KEY, "protocol=7");
            let (start, leave, done, ch) = (start.clone(), leave.clone(), done.clone(), ch.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(&url).await;
                let who = format!("u{i}");
                meet(&start).await;
                let ok = c
                    .subscribe_presence(&ch, &format!(r#"{{"user_id":"{who}"}}"#))
                    .await;
                let mut view = View::from_roster(&who, &ok);
                assert!(
                    view.members.contains(&who),
                    "{who} missing from its own roster"
                );
                let all: std::collections::BTreeSet<String> =
                    (0..USERS).map(|j| format!("u{j}")).collect();
                view.settle(&mut c, &all).await;
                meet(&leave).await;
                if i % 2 == 1 {
                    c.send(json!({"event":"pusher:unsubscribe","data":{"channel":ch}}))
                        .await;
                    meet(&done).await;
                    return;
                }
                let stayed: std::collections::BTreeSet<String> =
                    (0..USERS).step_by(2).map(|j| format!("u{j}")).collect();
                view.settle(&mut c, &stayed).await;
                meet(&done).await;
            }));
        }
        for t in tasks {
            t.await.expect("a member's view was wrong");
        }
    }
}
