//! Cluster mode over a real Redis, delivery and shared answers: several nodes share one
//! Redis — separate `resound` processes on loopback ports (`nodes`), plus in-process servers
//! where a test needs the server's handle; every trigger, client event, user message and HTTP
//! answer must be cluster-wide, delivered once, and the wire version must follow the oldest
//! node.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::cluster_support::*;
use crate::support::*;

/// A client on each of `nodes`, subscribed to `channel`.
async fn subscribed_on_each(nodes: &[ServerProcess], channel: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for node in nodes {
        let mut c = node.client().await;
        assert_eq!(
            c.subscribe(channel).await["event"],
            "pusher_internal:subscription_succeeded"
        );
        clients.push(c);
    }
    clients
}

#[tokio::test]
async fn a_trigger_on_one_node_reaches_subscribers_on_every_node_once() {
    let ns = nodes(3, "").await;
    let mut clients = subscribed_on_each(&ns, "news").await;
    let r = ns[0]
        .api()
        .trigger(&["news"], "headline", "{\"n\":1}")
        .await;
    assert_eq!(r.status, 200);
    for c in &mut clients {
        assert_eq!(
            c.recv().await,
            json!({"event":"headline","channel":"news","data":"{\"n\":1}"})
        );
        c.expect_silence(Duration::from_millis(200), "delivered twice")
            .await;
    }
    // socket_id exclusion crosses nodes too.
    let excluded = clients[2].socket_id.clone();
    ns[0]
        .api()
        .post(
            "/events",
            &json!({"name":"e","channels":["news"],"data":"{}","socket_id":excluded}),
        )
        .await;
    assert_eq!(clients[0].recv().await["event"], "e");
    assert_eq!(clients[1].recv().await["event"], "e");
    clients[2]
        .expect_silence(
            Duration::from_millis(300),
            "excluded socket on another node",
        )
        .await;
}

#[tokio::test]
async fn client_events_cross_nodes_and_are_not_echoed() {
    let ns = nodes(2, "").await;
    let mut a = ns[0].client().await;
    let mut b = ns[1].client().await;
    a.subscribe_presence("presence-chat", r#"{"user_id":"1"}"#)
        .await;
    b.subscribe_presence("presence-chat", r#"{"user_id":"2"}"#)
        .await;
    a.recv_event("pusher_internal:member_added").await;
    a.send(json!({"event":"client-typing","channel":"presence-chat","data":{"t":1}}))
        .await;
    let got = b.recv_event("client-typing").await;
    assert_eq!(got["user_id"], "1");
    a.expect_silence(Duration::from_millis(300), "echo").await;
}

#[tokio::test]
async fn http_answers_agree_on_every_node() {
    let ns = nodes(3, "").await;
    let mut keep = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let mut c = n.client().await;
        c.subscribe("shared").await;
        c.subscribe(&format!("only-{i}")).await;
        keep.push(c);
    }
    for n in &ns {
        let list = n
            .api()
            .get("/channels", &[("info", "subscription_count")])
            .await;
        assert_eq!(
            list.body,
            json!({"channels":{"only-0":{"subscription_count":1},"only-1":{"subscription_count":1},"only-2":{"subscription_count":1},"shared":{"subscription_count":3}}})
        );
        assert_eq!(
            n.api().get("/connections", &[]).await.body,
            json!({"connections":3})
        );
        let info = n
            .api()
            .post(
                "/events",
                &json!({"name":"e","channels":["shared"],"data":"{}","info":"subscription_count"}),
            )
            .await;
        assert_eq!(
            info.body,
            json!({"channels":{"shared":{"subscription_count":3}}})
        );
    }
    drop(keep);
    for n in &ns {
        n.api()
            .get_until("/channels", &[], &json!({"channels":{}}))
            .await;
        n.api()
            .get_until("/connections", &[], &json!({"connections":0}))
            .await;
    }
}

#[tokio::test]
async fn app_connection_quota_is_cluster_wide() {
    let ns = nodes(2, "max_connections = 2").await;
    let _a = ns[0].client().await;
    let _b = ns[1].client().await;
    let mut ws = Client::raw(&ns[0].ws_url(KEY, "protocol=7")).await;
    let first = next_json(&mut ws).await.unwrap();
    assert_eq!(
        first["data"]["code"], 4004,
        "third connection across the cluster is over quota"
    );
}

#[tokio::test]
async fn terminate_and_send_to_user_reach_every_node() {
    let ns = nodes(2, "").await;
    let mut a = ns[0].client().await;
    a.signin(r#"{"id":"u1"}"#).await;
    let mut b = ns[1].client().await;
    b.signin(r#"{"id":"u1"}"#).await;
    let r = ns[1]
        .api()
        .trigger(&["#server-to-user-u1"], "note", "{}")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(a.recv().await["event"], "note");
    assert_eq!(b.recv().await["event"], "note");
    ns[0]
        .api()
        .post("/users/u1/terminate_connections", &json!({}))
        .await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv().await["data"]["code"], 4009);
        assert_eq!(c.closed().await, Some(4009));
    }
}

#[tokio::test]
async fn cache_channels_are_shared() {
    let ns = nodes(2, "").await;
    // Once a trigger is answered, its event is the cached one on every node: the last of
    // quick successive triggers wins.
    let mut last = String::new();
    for v in 0..10 {
        for w in 0..3 {
            last = format!(r#"{{"v":{v},"w":{w}}}"#);
            let r = ns[0].api().trigger(&["cache-board"], "state", &last).await;
            assert_eq!(r.status, 200);
        }
        let mut c = ns[1].client().await;
        c.subscribe("cache-board").await;
        assert_eq!(
            c.recv().await,
            json!({"event":"state","channel":"cache-board","data":last})
        );
    }
    let info = ns[1]
        .api()
        .get("/channels/cache-board", &[("info", "cache")])
        .await;
    assert_eq!(info.body["cache"]["data"], last);
}

#[tokio::test]
async fn three_processes_on_a_private_redis_deliver_a_trigger_to_every_node_once() {
    let redis = RedisProc::start(free_port()).await;
    let toml = cluster_config(
        &prefix(),
        &format!("redis://127.0.0.1:{}/0", redis.port),
        "",
    );
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(spawn_node(&toml).await);
    }
    let mut clients = subscribed_on_each(&nodes, "news").await;
    for (i, from) in nodes.iter().enumerate() {
        let data = format!("{{\"from\":{i}}}");
        assert_eq!(
            from.api()
                .trigger(&["news"], "headline", &data)
                .await
                .status,
            200
        );
        for c in &mut clients {
            assert_eq!(
                c.recv().await,
                json!({"event":"headline","channel":"news","data":data})
            );
        }
    }
    for c in &mut clients {
        c.expect_silence(Duration::from_millis(300), "delivered twice")
            .await;
    }
}

#[tokio::test]
async fn watchlist_status_crosses_nodes() {
    let ns = nodes(2, "watchlist_events = true").await;
    let mut watcher = ns[0].client().await;
    let ok = watcher
        .signin(r#"{"id":"watcher","watchlist":["friend"]}"#)
        .await;
    assert_eq!(ok["event"], "pusher:signin_success");
    let initial = watcher.recv().await;
    assert_eq!(initial["event"], "pusher_internal:watchlist_events");
    assert_eq!(
        data_json(&initial),
        json!({"events":[{"name":"offline","user_ids":["friend"]}]})
    );
    let mut friend = ns[1].client().await;
    friend.signin(r#"{"id":"friend"}"#).await;
    let online = watcher.recv().await;
    assert_eq!(
        data_json(&online),
        json!({"events":[{"name":"online","user_ids":["friend"]}]})
    );
    let mut friend2 = ns[0].client().await;
    friend2.signin(r#"{"id":"friend"}"#).await;
    watcher
        .expect_silence(
            Duration::from_millis(300),
            "a second connection is no transition",
        )
        .await;
    drop(friend);
    drop(friend2);
    let offline = watcher.recv().await;
    assert_eq!(
        data_json(&offline),
        json!({"events":[{"name":"offline","user_ids":["friend"]}]})
    );
}

// ---- lag metrics and the wire version ----

#[tokio::test]
async fn lag_is_measured_and_the_wire_version_follows_the_oldest_node() {
    let p = prefix();
    let (a, b, mut sub) = listening_pair(&cluster_config(&p, REDIS, "")).await;
    let redis = redis::Client::open(REDIS).unwrap();
    let mut spy = redis.get_async_pubsub().await.unwrap();
    spy.subscribe(format!("{p}#c#{APP_ID}#live")).await.unwrap();
    let mut spied = spy.into_on_message();
    let published = sample(&a, "resound_cluster_publish_lag_seconds_count").await;
    let received = sample(&b, "resound_cluster_receive_lag_seconds_count").await;

    // Until the version of what `a` publishes is `version` (one heartbeat or two).
    let mut n = 0;
    let mut sends = async |version: u8| {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            n += 1;
            a.api().trigger(&["live"], "e", &n.to_string()).await;
            let msg = tokio::time::timeout(WAIT, spied.next())
                .await
                .expect("the publish reaches Redis")
                .unwrap();
            assert_eq!(sub.recv_event("e").await["data"], n.to_string());
            if msg.get_payload_bytes()[0] == version {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still not sending version {version}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    sends(5).await;
    assert!(sample(&a, "resound_cluster_publish_lag_seconds_count").await > published);
    assert!(sample(&b, "resound_cluster_receive_lag_seconds_count").await > received);
    let lag = sample(&b, "resound_cluster_receive_lag_seconds_sum").await;
    assert!(lag < 5.0, "{lag} s from one node to the other on loopback");

    // A node of the previous release joins (a lease, no wire version): back to version 1,
    // which it reads; when it is gone, version 5 (the newest) again.
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let old_node = 4242u64;
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{p}:nodes"))
        .arg(now() * 1000 + 60_000)
        .arg(old_node)
        .query_async(&mut conn)
        .await
        .unwrap();
    sends(1).await;
    let _: i64 = redis::cmd("ZREM")
        .arg(format!("{p}:nodes"))
        .arg(old_node)
        .query_async(&mut conn)
        .await
        .unwrap();
    sends(5).await;
}

/// The next message the spy sees on `topic` whose payload holds every one of `needles`.
async fn spied_on(
    spied: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
    topic: &str,
    needles: &[&str],
) -> Vec<u8> {
    loop {
        let msg = tokio::time::timeout(WAIT, spied.next())
            .await
            .expect("the publish reaches Redis")
            .unwrap();
        let payload = msg.get_payload_bytes();
        let holds = |n: &str| payload.windows(n.len()).any(|w| w == n.as_bytes());
        if msg.get_channel_name() == topic && needles.iter().all(|n| holds(n)) {
            return payload.to_vec();
        }
    }
}

/// Member events cross nodes as member events: from version 3 on by their own kinds; while a
/// node that reads only an older version (1: no `P:wire` entry; 2; 3) is live, every node sends that
/// version, where a member event goes as a channel event, and the newest nodes still read it
/// as a member event. Either way rosters stay exact: a member event said again (republished
/// as is) reaches nobody, and other events on the channel reach everyone.
#[tokio::test]
async fn member_events_stay_exact_while_a_node_reads_only_an_older_wire_version() {
    let p = prefix();
    let (a, b, mut sub) = listening_pair(&cluster_config(&p, REDIS, "")).await;
    let redis = redis::Client::open(REDIS).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let live = format!("{p}#c#{APP_ID}#live");
    let room = format!("{p}#c#{APP_ID}#presence-room");
    let mut spy = redis.get_async_pubsub().await.unwrap();
    spy.subscribe(&live).await.unwrap();
    spy.subscribe(&room).await.unwrap();
    let mut spied = spy.into_on_message();
    let old_node = 4243u64;
    let mut n = 0;
    // Version 5 (every node the newest), 4 and 3 say what a member event is: kinds 6 and 7.
    for (version, added_kind, removed_kind) in
        [(5u8, 6u8, 7u8), (4, 6, 7), (3, 6, 7), (2, 1, 1), (1, 1, 1)]
    {
        if version < 5 {
            let _: i64 = redis::cmd("ZADD")
                .arg(format!("{p}:nodes"))
                .arg(now() * 1000 + 60_000)
                .arg(old_node)
                .query_async(&mut conn)
                .await
                .unwrap();
            let wire = format!("{p}:wire");
            let mut cmd = if version == 1 {
                redis::cmd("HDEL")
            } else {
                redis::cmd("HSET")
            };
            cmd.arg(&wire).arg(old_node);
            if version > 1 {
                cmd.arg(version);
            }
            let _: i64 = cmd.query_async(&mut conn).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            n += 1;
            let data = format!("n{n}");
            a.api().trigger(&["live"], "e", &data).await;
            let sent = spied_on(&mut spied, &live, &[&data]).await;
            assert_eq!(sub.recv_event("e").await["data"], data);
            if sent[0] == version {
                break;
            }
            assert!(Instant::now() < deadline, "still not sending {version}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let mut watcher = b.client().await;
        watcher
            .subscribe_presence("presence-room", &format!(r#"{{"user_id":"w-{version}"}}"#))
            .await;
        let user = format!("ada-v{version}");
        let mut tab = a.client().await;
        tab.subscribe_presence("presence-room", &format!(r#"{{"user_id":"{user}"}}"#))
            .await;
        let added = watcher.recv_event("pusher_internal:member_added").await;
        assert_eq!(data_json(&added)["user_id"], user.as_str());
        let sent = spied_on(&mut spied, &room, &["member_added", &user]).await;
        assert_eq!((sent[0], sent[1]), (version, added_kind));
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&room)
            .arg(&sent)
            .query_async(&mut conn)
            .await
            .unwrap();
        watcher
            .expect_silence(Duration::from_millis(400), "a member_added said again")
            .await;
        // Other events on the channel still reach everyone.
        a.api().trigger(&["presence-room"], "e", "x").await;
        assert_eq!(watcher.recv_event("e").await["data"], "x");

        drop(tab);
        let removed = watcher.recv_event("pusher_internal:member_removed").await;
        assert_eq!(data_json(&removed), json!({ "user_id": user }));
        let sent = spied_on(&mut spied, &room, &["member_removed", &user]).await;
        assert_eq!((sent[0], sent[1]), (version, removed_kind));
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&room)
            .arg(&sent)
            .query_async(&mut conn)
            .await
            .unwrap();
        watcher
            .expect_silence(Duration::from_millis(400), "a member_removed said again")
            .await;
    }
    let _: i64 = redis::cmd("ZREM")
        .arg(format!("{p}:nodes"))
        .arg(old_node)
        .query_async(&mut conn)
        .await
        .unwrap();
}
