//! Cluster mode over a real Redis: several nodes share one Redis — separate `resound`
//! processes on loopback ports (`nodes`), plus in-process servers where a test needs the
//! server's handle; every behaviour a client or the HTTP API sees must be cluster-wide. Redis must run on 127.0.0.1:6379 (`.ci/run` starts it); these tests fail, not
//! skip, without it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::support::*;

fn prefix() -> String {
    format!("it-{}", resound::protocol::SocketId::random()).replace('.', "-")
}

/// The test app on a cluster node: `[scaling]` goes between `[server]` and `[[apps]]`.
fn cluster_config(prefix: &str, redis_url: &str, extra: &str) -> String {
    scaled_config(prefix, &format!("redis_url = \"{redis_url}\""), extra)
}

/// The test app on a cluster node whose `[scaling]` section also holds `scaling`'s lines.
fn scaled_config(prefix: &str, scaling: &str, extra: &str) -> String {
    let scaling = format!(
        "shutdown_grace_period = 2\n\n[scaling]\nenabled = true\nchannel = \"{prefix}\"\n{scaling}"
    );
    config(extra, "").replace("shutdown_grace_period = 2", &scaling)
}

const REDIS: &str = "redis://127.0.0.1:6379/0";

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

/// Two in-process nodes started from `toml`, and a client of the second subscribed to `live`.
async fn listening_pair(toml: &str) -> (TestServer, TestServer, Client) {
    let a = TestServer::start(toml).await;
    let b = TestServer::start(toml).await;
    let mut sub = b.client().await;
    sub.subscribe("live").await;
    (a, b, sub)
}

/// `n` nodes of one cluster on the shared Redis, each a `resound` process of its own.
async fn nodes(n: usize, extra: &str) -> Vec<ServerProcess> {
    let toml = cluster_config(&prefix(), REDIS, extra);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(spawn_node(&toml).await);
    }
    out
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

// ---- real processes: node failure and Redis restart ----

async fn spawn_node(toml: &str) -> ServerProcess {
    let dir = std::env::temp_dir().join(format!("resound-node-{}", prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resound.toml");
    std::fs::write(&path, toml).unwrap();
    ServerProcess::start(&path).await
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

struct RedisProc {
    child: Child,
    port: u16,
}

impl RedisProc {
    async fn start(port: u16) -> RedisProc {
        RedisProc::with_args(port, &["--port", &port.to_string()]).await
    }

    /// `redis-server` with `args` (which must make it listen on `port`), no persistence; a
    /// replica's copy of the data set goes to a directory of its own.
    async fn with_args(port: u16, args: &[&str]) -> RedisProc {
        let dir = std::env::temp_dir().join(format!("resound-redis-{}", prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        wait_up(port).await;
        RedisProc { child, port }
    }
}

/// Until `node`'s HTTP API counts one subscription of `live` (10 s at most): the nodes
/// published their state to a Redis that had lost it.
async fn live_counted_once(node: &TestServer) {
    channel_info_becomes(
        node,
        "live",
        "subscription_count",
        json!({"occupied":true,"subscription_count":1}),
    )
    .await;
}

/// Until `GET /channels/{channel}?info=...` on `node` answers `expected` (10 s at most).
async fn channel_info_becomes(
    node: &TestServer,
    channel: &str,
    info: &str,
    expected: serde_json::Value,
) {
    node.api()
        .get_until(
            &format!("/channels/{channel}"),
            &[("info", info)],
            &expected,
        )
        .await;
}

/// Triggers on `on` until `sub` receives the event; returns how long that took. Fails after
/// `within`.
async fn delivery_resumes(on: &TestServer, sub: &mut Client, within: Duration) -> Duration {
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        on.api().trigger(&["live"], "after", &format!("{n}")).await;
        if let Ok(Some(v)) =
            tokio::time::timeout(Duration::from_millis(200), next_json(&mut sub.ws)).await
        {
            if v["event"] == "after" {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < within,
            "cross-node delivery did not resume within {within:?}"
        );
    }
}

/// Two nodes sharing a Redis of their own (which the test may stop, pause or restart).
async fn private_cluster() -> (RedisProc, TestServer, TestServer) {
    let redis = RedisProc::start(free_port()).await;
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let p = prefix();
    let a = TestServer::start(&cluster_config(&p, &url, "")).await;
    let b = TestServer::start(&cluster_config(&p, &url, "")).await;
    (redis, a, b)
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn delivery_resumes_after_redis_restarts() {
    let (redis, a, b) = private_cluster().await;
    let port = redis.port;
    let mut sub = b.client().await;
    sub.subscribe("live").await;
    a.api().trigger(&["live"], "before", "{}").await;
    assert_eq!(sub.recv().await["event"], "before");

    drop(redis);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The node keeps serving its own clients and says it is not ready.
    let local = a.api().trigger(&["live"], "local-only", "{}").await;
    assert_eq!(local.status, 200);
    let mut ready = 200;
    for _ in 0..40 {
        ready = raw_request("GET", &a.url("/ready"), String::new())
            .await
            .status;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 503, "/ready reports the lost backend");
    // A cache channel's trigger does not wait for the unreachable store either.
    let started = Instant::now();
    let cached = a.api().trigger(&["cache-down"], "e", "{}").await;
    assert_eq!(cached.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    // Presence needs the shared roster: refused as a server error, not as a full channel.
    let mut joiner = a.client().await;
    let refused = joiner
        .try_presence("presence-down", r#"{"user_id":"1"}"#)
        .await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(refused["data"]["code"], 4302, "{refused}");

    let _redis = RedisProc::start(port).await;
    // Without restarting any node, cross-node delivery comes back.
    delivery_resumes(&a, &mut sub, Duration::from_secs(15)).await;
    assert_eq!(
        raw_request("GET", &a.url("/ready"), String::new())
            .await
            .status,
        200
    );
    // Counts were published again (Redis came back empty).
    live_counted_once(&a).await;
}

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
async fn event_receiver(
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

#[tokio::test]
async fn a_departure_during_a_redis_stall_is_repaired_when_redis_answers_again() {
    let (redis, a, b) = private_cluster().await;
    let mut watcher = a.client().await;
    watcher
        .subscribe_presence("presence-stall", r#"{"user_id":"w"}"#)
        .await;
    let mut leaver = b.client().await;
    leaver
        .subscribe_presence("presence-stall", r#"{"user_id":"l"}"#)
        .await;
    watcher.recv_event("pusher_internal:member_added").await;

    // Redis stops answering; the departure cannot be recorded.
    signal(&redis.child, "-STOP");
    drop(leaver);
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(&redis.child, "-CONT");

    let removed = watcher
        .await_event("pusher_internal:member_removed", Duration::from_secs(10))
        .await;
    assert_eq!(data_json(&removed), json!({"user_id":"l"}));
    let users = a.api().get("/channels/presence-stall/users", &[]).await;
    assert_eq!(users.body, json!({"users":[{"id":"w"}]}));
}

// ---- Redis Sentinel ----

/// A master, two replicas and one sentinel watching them, on free ports.
struct SentinelGroup {
    redis: Vec<RedisProc>,
    sentinel: RedisProc,
}

const MASTER_NAME: &str = "resound-it";

impl SentinelGroup {
    async fn start() -> SentinelGroup {
        let m = free_port();
        let mut redis = vec![RedisProc::start(m).await];
        for _ in 0..2 {
            let r = free_port();
            let args = [
                "--port",
                &r.to_string(),
                "--replicaof",
                "127.0.0.1",
                &m.to_string(),
            ];
            redis.push(RedisProc::with_args(r, &args).await);
        }
        let s = free_port();
        let dir = std::env::temp_dir().join(format!("resound-sentinel-{}", prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {s}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {m} 1\nsentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 10000\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        wait_up(s).await;
        let group = SentinelGroup {
            redis,
            sentinel: RedisProc { child, port: s },
        };
        group.wait_for_replica().await;
        group
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel.port)
    }

    async fn ask(&self, cmd: &redis::Cmd) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async(&mut c).await.unwrap()
    }

    async fn master_port(&self) -> u16 {
        let v = self
            .ask(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(MASTER_NAME),
            )
            .await;
        let (_, port): (String, u16) = redis::from_redis_value(&v).unwrap();
        port
    }

    /// Until the sentinel knows a replica in sync with the master (a failover needs one).
    async fn wait_for_replica(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self
                .ask(redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME))
                .await;
            let replicas: Vec<std::collections::HashMap<String, String>> =
                redis::from_redis_value(&v).unwrap();
            if replicas.iter().any(|r| {
                r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel found no replica in sync: {replicas:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Until the sentinel names a master other than the one on `old`.
    async fn wait_for_new_master(&self, old: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let port = self.master_port().await;
            if port != old {
                return port;
            }
            assert!(Instant::now() < deadline, "the sentinel did not fail over");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self, port: u16) {
        self.redis.retain(|r| r.port != port);
    }
}

/// Until both nodes use the master on `port`: `b`'s pub/sub connection subscribes there to
/// the channel `sub` is in, and what `a` publishes reaches that master and `sub`. Returns
/// when that was first true.
async fn follows(port: u16, prefix: &str, a: &TestServer, sub: &mut Client) {
    let master = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = master.get_multiplexed_async_connection().await.unwrap();
    let topic = format!("{prefix}#c#{APP_ID}#live");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&topic)
            .query_async(&mut conn)
            .await
            .unwrap();
        if counts[0].1 == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber's node stays away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut spy = master.get_async_pubsub().await.unwrap();
    spy.subscribe(&topic).await.unwrap();
    let mut spied = spy.on_message();
    let mut n = 0;
    loop {
        n += 1;
        a.api().trigger(&["live"], "after", &format!("{n}")).await;
        let seen = tokio::time::timeout(Duration::from_millis(200), spied.next()).await;
        if seen.is_ok() {
            let v = sub.recv().await;
            assert_eq!(v["event"], "after", "{v}");
            return;
        }
        assert!(Instant::now() < deadline, "the publishing node stays away");
    }
}

#[tokio::test]
async fn nodes_follow_the_master_through_sentinel_failovers() {
    let mut group = SentinelGroup::start().await;
    let p = prefix();
    let scaling = format!(
        "sentinels = [\"{}\"]\nsentinel_master = \"{MASTER_NAME}\"",
        group.url()
    );
    let (a, _b, mut sub) = listening_pair(&scaled_config(&p, &scaling, "")).await;
    let first = group.master_port().await;
    follows(first, &p, &a, &mut sub).await;

    // A switch-over: the old master keeps running, as a master until the sentinel turns it
    // into a replica some seconds later.
    group
        .ask(redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME))
        .await;
    let switched = Instant::now();
    let second = group.wait_for_new_master(first).await;
    let promoted = switched.elapsed();
    follows(second, &p, &a, &mut sub).await;
    eprintln!(
        "switch-over: promoted after {promoted:?}, both nodes on the new master after {:?}",
        switched.elapsed()
    );

    // A crash: the master dies; the sentinel promotes the other replica.
    group.wait_for_replica().await;
    group.kill(second);
    let crashed = Instant::now();
    let third = group.wait_for_new_master(second).await;
    let promoted = crashed.elapsed();
    follows(third, &p, &a, &mut sub).await;
    eprintln!(
        "crash: promoted after {promoted:?}, both nodes on the new master after {:?}",
        crashed.elapsed()
    );
    // The HTTP API answers from the new master, where the nodes published their state again.
    live_counted_once(&a).await;
}

// ---- TLS to Redis ----

/// A `redis-server` answering only TLS, with a self-signed certificate for `localhost`;
/// returns it and the certificate's PEM file.
async fn tls_redis() -> (RedisProc, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("resound-redis-tls-{}", prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("redis.crt"), dir.join("redis.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let redis = RedisProc::with_args(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "tls-secret",
        ],
    )
    .await;
    (redis, cert)
}

#[tokio::test]
async fn nodes_share_a_redis_over_tls_with_a_private_certificate() {
    let (redis, cert) = tls_redis().await;
    let p = prefix();
    let url = format!("rediss://:tls-secret@localhost:{}/0", redis.port);

    // Certificates are verified: without the private CA the node refuses to start, and
    // says so without the password.
    let untrusted = scaled_config(&p, &format!("redis_url = \"{url}\""), "");
    let dir = std::env::temp_dir().join(format!("resound-it-{}", prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resound.toml");
    std::fs::write(&path, &untrusted).unwrap();
    let config = resound::config::load(&resound::config::Sources {
        config_file: Some(&path),
        ..Default::default()
    })
    .unwrap();
    let refused = resound::server::Server::bind(config).await.err();
    let message = refused
        .expect("an untrusted certificate is refused")
        .to_string();
    assert!(!message.contains("tls-secret"), "{message}");

    let scaling = format!(
        "redis_url = \"{url}\"\ntls_ca_file = \"{}\"",
        cert.display()
    );
    let (a, b, mut sub) = listening_pair(&scaled_config(&p, &scaling, "")).await;
    delivery_resumes(&a, &mut sub, Duration::from_secs(3)).await;
    assert_eq!(
        b.api()
            .get("/channels/live", &[("info", "subscription_count")])
            .await
            .body,
        json!({"occupied":true,"subscription_count":1})
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
    sends(3).await;
    assert!(sample(&a, "resound_cluster_publish_lag_seconds_count").await > published);
    assert!(sample(&b, "resound_cluster_receive_lag_seconds_count").await > received);
    let lag = sample(&b, "resound_cluster_receive_lag_seconds_sum").await;
    assert!(lag < 5.0, "{lag} s from one node to the other on loopback");

    // A node of the previous release joins (a lease, no wire version): back to version 1,
    // which it reads; when it is gone, version 3 again.
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
    sends(3).await;
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

/// Member events cross nodes as member events: in version 3 by their own kinds; while a node
/// that reads only an older version (1: no `P:wire` entry; 2) is live, every node sends that
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
    // Version 3 (every node the newest) says what a member event is: kinds 6 and 7.
    for (version, added_kind, removed_kind) in [(3u8, 6u8, 7u8), (2, 1, 1), (1, 1, 1)] {
        if version < 3 {
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

// ---- Redis Cluster ----

/// Two nodes on the Redis Cluster `shards`, checked to carry triggers across once each, on
/// 12 channels `room-0`..`room-11` whose topics land on various shards. Returns the prefix,
/// the `[scaling]` lines, the nodes, and the subscriber of the rooms (on the second node).
async fn nodes_on_redis_cluster(
    shards: &[RedisProc],
) -> (String, String, TestServer, TestServer, Client) {
    let seeds: Vec<String> = shards
        .iter()
        .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
        .collect();
    let p = prefix();
    let scaling = format!("cluster_nodes = [{}]", seeds.join(", "));
    let a = TestServer::start(&scaled_config(&p, &scaling, "")).await;
    let b = TestServer::start(&scaled_config(&p, &scaling, "")).await;
    let mut sub = b.client().await;
    let channels: Vec<String> = (0..12).map(|i| format!("room-{i}")).collect();
    for channel in &channels {
        sub.subscribe(channel).await;
    }
    for channel in &channels {
        let reply = a.api().trigger(&[channel], "hello", channel).await;
        assert_eq!(reply.status, 200);
        let got = sub.recv_event("hello").await;
        assert_eq!(got["channel"], channel.as_str());
        assert_eq!(got["data"], channel.as_str());
    }
    sub.expect_silence(Duration::from_millis(300), "a duplicate")
        .await;
    (p, scaling, a, b, sub)
}

/// How many of `shards` list topics of prefix `p` under `PUBSUB <listing>`.
async fn shards_with_topics(shards: &[RedisProc], p: &str, listing: &str) -> usize {
    let mut used = 0;
    for shard in shards {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", shard.port)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let topics: Vec<String> = redis::cmd("PUBSUB")
            .arg(listing)
            .arg(format!("{p}#c#*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !topics.is_empty() {
            used += 1;
        }
    }
    used
}

#[tokio::test]
async fn a_redis_cluster_without_sharded_pub_sub_falls_back_to_classic_pub_sub() {
    // Redis 6.2 has no SSUBSCRIBE/SPUBLISH; renaming them away makes a 7.0 server look so.
    let shards = redis_cluster(&[
        "--rename-command",
        "SSUBSCRIBE",
        "",
        "--rename-command",
        "SPUBLISH",
        "",
    ])
    .await;
    let (p, _, _a, _b, _) = nodes_on_redis_cluster(&shards).await;
    assert_eq!(shards_with_topics(&shards, &p, "SHARDCHANNELS").await, 0);
    assert!(shards_with_topics(&shards, &p, "CHANNELS").await >= 1);
}

/// Three Redis Cluster masters on loopback (no replicas), slots assigned, state ok; `extra`
/// arguments for each `redis-server`.
async fn redis_cluster(extra: &[&str]) -> Vec<RedisProc> {
    redis_cluster_with(extra, 0).await
}

/// Three masters with `replicas` replicas each (masters first in the returned list).
async fn redis_cluster_with(extra: &[&str], replicas: usize) -> Vec<RedisProc> {
    let mut shards = Vec::new();
    for _ in 0..3 * (1 + replicas) {
        let port = free_port();
        let p = port.to_string();
        let mut args = vec![
            "--port",
            &p,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        args.extend_from_slice(extra);
        shards.push(RedisProc::with_args(port, &args).await);
    }
    let addrs: Vec<String> = shards
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli must be installed (Debian package redis-tools)");
    assert!(created.success(), "redis-cli --cluster create failed");
    for shard in &shards {
        cluster_ok(shard.port, Duration::from_secs(15)).await;
    }
    shards
}

/// Until the Redis Cluster node on `port` reports `cluster_state:ok`; fails after `within`.
async fn cluster_ok(port: u16, within: Duration) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + within;
    loop {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            return;
        }
        assert!(Instant::now() < deadline, "the Redis Cluster is not ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn nodes_share_a_redis_cluster_with_sharded_pub_sub() {
    let shards = redis_cluster(&[]).await;
    // `_sub` (a client on b) stays connected: it counts in `/connections` below.
    let (p, scaling, a, b, _sub) = nodes_on_redis_cluster(&shards).await;
    // The topics are spread over the shards (sharded pub/sub), not all on one.
    let used = shards_with_topics(&shards, &p, "SHARDCHANNELS").await;
    assert!(used >= 2, "topics on {used} shard(s) only");

    // Shared state: presence and counts agree on both nodes.
    let mut alice = a.client().await;
    alice
        .subscribe_presence("presence-shards", r#"{"user_id":"alice"}"#)
        .await;
    let mut bob = b.client().await;
    let joined = bob
        .subscribe_presence("presence-shards", r#"{"user_id":"bob"}"#)
        .await;
    assert_eq!(data_json(&joined)["presence"]["count"], 2);
    let added = alice.recv_event("pusher_internal:member_added").await;
    assert_eq!(data_json(&added), json!({"user_id":"bob"}));
    for node in [&a, &b] {
        let users = node.api().get("/channels/presence-shards/users", &[]).await;
        assert_eq!(
            users.body["users"].as_array().map(Vec::len),
            Some(2),
            "{} {}",
            users.status,
            users.text
        );
        assert_eq!(
            node.api().get("/connections", &[]).await.body,
            json!({"connections":3})
        );
    }
    drop(bob);
    let removed = alice.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data_json(&removed), json!({"user_id":"bob"}));

    // A node that dies is reaped through the cluster too.
    let doomed = spawn_node(&scaled_config(&p, &scaling, "")).await;
    let mut carol = doomed.client().await;
    carol
        .subscribe_presence("presence-shards", r#"{"user_id":"carol"}"#)
        .await;
    alice.recv_event("pusher_internal:member_added").await;
    drop(doomed);
    let gone = alice
        .await_event("pusher_internal:member_removed", Duration::from_secs(15))
        .await;
    assert_eq!(data_json(&gone), json!({"user_id":"carol"}));
}

/// A shard's master is killed and its replica promoted: every channel delivers across nodes
/// again without restarting a node (the connection is replaced, topics subscribed again and
/// renewed until the failover settled), and the shared state survives.
#[tokio::test]
async fn delivery_resumes_after_a_redis_cluster_failover() {
    // A replica may take over however long it was out of touch with its master.
    let mut shards = redis_cluster_with(&["--cluster-replica-validity-factor", "0"], 1).await;
    let (p, _, a, b, mut sub) = nodes_on_redis_cluster(&shards).await;
    let channels: Vec<String> = (0..12).map(|i| format!("room-{i}")).collect();
    let mut presence = a.client().await;
    presence
        .subscribe_presence("presence-failover", r#"{"user_id":"p"}"#)
        .await;

    // A master dies (the first three are masters); its replica takes over.
    let killed = shards.remove(0);
    drop(killed);
    let failed_at = Instant::now();
    cluster_ok(shards[0].port, Duration::from_secs(20)).await;

    // Every channel delivers across nodes again, without restarting a node, whichever shard
    // its topic was on; and the shared state is still there.
    for channel in &channels {
        let started = Instant::now();
        let mut n = 0;
        'channel: loop {
            n += 1;
            a.api().trigger(&[channel], "after", &format!("{n}")).await;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            while let Ok(Some(v)) = tokio::time::timeout_at(deadline, next_json(&mut sub.ws)).await
            {
                if v["event"] == "after" && v["channel"] == channel.as_str() {
                    break 'channel;
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                let client =
                    redis::Client::open(format!("redis://127.0.0.1:{}", shards[0].port)).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let mut subs = String::new();
                for shard in &shards {
                    let c =
                        redis::Client::open(format!("redis://127.0.0.1:{}", shard.port)).unwrap();
                    let mut c = c.get_multiplexed_async_connection().await.unwrap();
                    let t: Vec<String> = redis::cmd("PUBSUB")
                        .arg("SHARDCHANNELS")
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    let k: String = redis::cmd("CLUSTER")
                        .arg("KEYSLOT")
                        .arg(format!("{p}#c#1001#{channel}"))
                        .query_async(&mut c)
                        .await
                        .map(|v: i64| v.to_string())
                        .unwrap_or_default();
                    subs.push_str(&format!("{} slot {k}: {t:?}\n", shard.port));
                }
                panic!("{channel}: no delivery within 20 s of the failover; the cluster:\n{nodes}\n{subs}");
            }
        }
    }
    let took = failed_at.elapsed();
    channel_info_becomes(
        &b,
        "presence-failover",
        "user_count",
        json!({"occupied":true,"user_count":1}),
    )
    .await;
    assert!(took < Duration::from_secs(30), "took {took:?}");
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
