//! Redis stream sinks (`[[apps.streams]]`, docs/streams.md) against the real Redis on
//! 127.0.0.1:6379, each test under a key prefix of its own: every event type lands with the
//! documented fields; once per cluster and in order with two nodes; filters by kind and
//! channel pattern; a consumer group reads and acks; an outage of the sink's Redis (a proxy
//! of the test's own, stopped and started) queues events up to the bound, counts the
//! overflow and leaves `/ready` alone; the PHP worker of `examples/streams/` reads the
//! entries with php-redis; and the artisan command of `examples/laravel-worker/` (Debian's
//! Laravel) filters, notifies mentions, counts and acks, with the code examples/laravel.md
//! shows (its stream is the app's `chat:1001:messages`, emptied before and after).

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;

use crate::cluster_support::*;
use crate::support::*;

type Entry = (String, HashMap<String, String>);

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every entry of `key`, oldest first.
async fn entries(key: &str) -> Vec<Entry> {
    let mut conn = redis().await;
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(key).await.unwrap();
    reply
        .ids
        .into_iter()
        .map(|id| {
            let fields = id
                .map
                .iter()
                .map(|(k, v)| (k.clone(), redis::from_redis_value::<String>(v).unwrap()))
                .collect();
            (id.id, fields)
        })
        .collect()
}

/// Until `key` holds at least `n` entries (10 s at most); then all of them.
async fn entries_until(key: &str, n: usize) -> Vec<Entry> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = entries(key).await;
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fields(e: &Entry) -> Vec<(&str, &str)> {
    let mut f: Vec<(&str, &str)> =
        e.1.iter()
            .filter(|(k, _)| k.as_str() != "time")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
    f.sort();
    f
}

fn sorted<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = pairs.to_vec();
    v.sort();
    v
}

/// The test app with `sinks` (`[[apps.streams]]` tables) writing to `redis_url`, on one node.
fn single(redis_url: &str, app_lines: &str, sinks: &str) -> String {
    TestConfig::new()
        .app_lines(&format!("{app_lines}\n{sinks}"))
        .more(&format!("[streams]\nredis_url = {}\n", redis_url.to_toml()))
        .toml()
}

#[tokio::test]
async fn every_event_type_lands_with_the_documented_fields() {
    let key = format!("{}:{{app}}:events", prefix());
    let stream = key.replace("{app}", APP_ID);
    let s = TestServer::start(&single(
        REDIS,
        "subscription_count_events = true\nwebhook_removal_delay = 1",
        &format!("[[apps.streams]]\nkey = {}\nmaxlen = 1000", key.to_toml()),
    ))
    .await;
    let started = now() * 1000;
    let mut a = s.client().await;
    a.subscribe_presence(
        "presence-room",
        r#"{"user_id":"7","user_info":{"name":"Ann"}}"#,
    )
    .await;
    let mut b = s.client().await;
    b.subscribe_presence("presence-room", r#"{"user_id":"8"}"#)
        .await;
    a.send(json!({"event":"client-said","channel":"presence-room","data":{"text":"hi @8"}}))
        .await;
    b.recv_event("client-said").await;
    let mut c = s.client().await;
    c.subscribe("counted").await;
    let mut d = s.client().await;
    d.subscribe("counted").await;
    let reply = s
        .api()
        .post(
            "/events",
            &json!({"name":"order-shipped","channels":["counted"],"data":"{\"id\":5}","socket_id":d.sid().to_string()}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    drop(b);
    drop(c);
    drop(d);
    let got = entries_until(&stream, 11).await;
    let a_sid = a.sid().to_string();
    let d_sid = d_socket(&got);
    let expected: Vec<Vec<(&str, &str)>> = vec![
        vec![("name", "channel_occupied"), ("channel", "presence-room")],
        vec![
            ("name", "member_added"),
            ("channel", "presence-room"),
            ("user_id", "7"),
        ],
        vec![
            ("name", "member_added"),
            ("channel", "presence-room"),
            ("user_id", "8"),
        ],
        vec![
            ("name", "client_event"),
            ("channel", "presence-room"),
            ("event", "client-said"),
            ("data", r#"{"text":"hi @8"}"#),
            ("socket_id", &a_sid),
            ("user_id", "7"),
        ],
        vec![("name", "channel_occupied"), ("channel", "counted")],
        vec![
            ("name", "subscription_count"),
            ("channel", "counted"),
            ("subscription_count", "1"),
        ],
        vec![
            ("name", "subscription_count"),
            ("channel", "counted"),
            ("subscription_count", "2"),
        ],
        vec![
            ("name", "api_event"),
            ("channel", "counted"),
            ("event", "order-shipped"),
            ("data", r#"{"id":5}"#),
            ("socket_id", &d_sid),
        ],
    ];
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(fields(&got[i]), sorted(want), "entry {i}: {got:?}");
    }
    // After the removal delay (1 s): the member and the channels that were left.
    let rest: Vec<Vec<(&str, &str)>> = got[expected.len()..].iter().map(fields).collect();
    for want in [
        vec![
            ("name", "member_removed"),
            ("channel", "presence-room"),
            ("user_id", "8"),
        ],
        vec![("name", "channel_vacated"), ("channel", "counted")],
    ] {
        assert!(
            rest.contains(&sorted(&want)),
            "{want:?} missing from {rest:?}"
        );
    }
    for e in &got {
        let t: u64 = e.1["time"].parse().unwrap();
        assert!(
            t >= started && t <= now() * 1000 + 1000,
            "time {t} is milliseconds"
        );
    }
    assert!(
        sample(
            &s,
            &format!("resound_stream_written_total{{app_id=\"{APP_ID}\"}}")
        )
        .await
            >= 11.0
    );
}

/// The socket id the API event excluded (the test's fourth client).
fn d_socket(got: &[Entry]) -> String {
    got.iter()
        .find(|e| e.1.get("name").map(String::as_str) == Some("api_event"))
        .and_then(|e| e.1.get("socket_id").cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn two_nodes_write_each_event_once_and_one_channel_in_publish_order() {
    let p = prefix();
    let key = format!("{p}:{{channel}}");
    let toml = TestConfig::new()
        .scaling(&p)
        .scaling_setting("redis_url", REDIS)
        .app_lines(&format!(
            "max_client_events_per_second = 10000\nwebhook_removal_delay = 1\n[[apps.streams]]\nkey = {}",
            key.to_toml()
        ))
        .toml();
    let n1 = TestServer::start(&toml).await;
    let n2 = TestServer::start(&toml).await;
    let ch = "presence-chat";
    let mut a = n1.client().await;
    a.subscribe_presence(ch, r#"{"user_id":"1"}"#).await;
    let mut b = n2.client().await;
    b.subscribe_presence(ch, r#"{"user_id":"2"}"#).await;
    // A second connection of user 1, on the other node: no second member_added.
    let mut a2 = n2.client().await;
    a2.subscribe_presence(ch, r#"{"user_id":"1"}"#).await;
    const N: usize = 200;
    for i in 0..N {
        a.send(json!({"event":"client-msg","channel":ch,"data":{"seq":i}}))
            .await;
    }
    for i in 0..20 {
        let r = n2
            .api()
            .trigger(&[ch], "server-msg", &format!("{{\"seq\":{i}}}"))
            .await;
        assert_eq!(r.status, 200);
    }
    // Every client event was accepted (b got them all) before their sender leaves.
    for i in 0..N {
        let e = b.await_event("client-msg", Duration::from_secs(5)).await;
        assert_eq!(data_json(&e)["seq"], i as u64);
    }
    drop(a);
    drop(a2);
    drop(b);
    let stream = format!("{p}:{ch}");
    // occupied, 2 members, N client events, 20 API events, 2 removals, vacated.
    let total = 1 + 2 + N + 20 + 2 + 1;
    let got = entries_until(&stream, total).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_again = entries(&stream).await;
    assert_eq!(got_again.len(), got.len(), "no late duplicates");
    let count = |name: &str| got.iter().filter(|e| e.1["name"] == name).count();
    assert_eq!(count("channel_occupied"), 1, "{got:?}");
    assert_eq!(count("member_added"), 2);
    assert_eq!(count("client_event"), N);
    assert_eq!(count("api_event"), 20);
    assert_eq!(count("member_removed"), 2);
    assert_eq!(count("channel_vacated"), 1);
    assert_eq!(got.len(), total);
    let seqs = |name: &str| -> Vec<u64> {
        got.iter()
            .filter(|e| e.1["name"] == name)
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.1["data"]).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(
        seqs("client_event"),
        (0..N as u64).collect::<Vec<_>>(),
        "client events in the order sent"
    );
    assert_eq!(
        seqs("api_event"),
        (0..20).collect::<Vec<_>>(),
        "API events in the order published"
    );
    // The removals, held for the delay after everyone left, come after every message (the
    // two nodes release theirs in either order).
    let tail: Vec<&str> = got[got.len() - 3..]
        .iter()
        .map(|e| e.1["name"].as_str())
        .collect();
    assert!(
        tail.iter()
            .all(|n| *n == "member_removed" || *n == "channel_vacated"),
        "{tail:?}"
    );
}

#[tokio::test]
async fn sinks_filter_by_event_type_and_channel_pattern() {
    let p = prefix();
    let s = TestServer::start(&single(
        REDIS,
        "",
        &format!(
            "[[apps.streams]]\nkey = \"{p}:chat\"\nevents = [\"client_event\"]\nchannels = [\"private-chat-*\"]\n\n\
             [[apps.streams]]\nkey = \"{p}:api:{{channel}}\"\nevents = [\"api_event\"]\n"
        ),
    ))
    .await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    for ch in ["private-chat-1", "private-other"] {
        a.subscribe_private(ch).await;
        b.subscribe_private(ch).await;
        a.send(json!({"event":"client-x","channel":ch,"data":{"on":ch}}))
            .await;
        b.recv_event("client-x").await;
        s.api().trigger(&[ch], "e", "{}").await;
        // Read the event here, so that the next subscribe's answer is what the next
        // `subscribe_private` reads (and `b` is subscribed before `a` sends on it).
        a.recv_event("e").await;
        b.recv_event("e").await;
    }
    let chat = entries_until(&format!("{p}:chat"), 1).await;
    let api_chat = entries_until(&format!("{p}:api:private-chat-1"), 1).await;
    let api_other = entries_until(&format!("{p}:api:private-other"), 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let chat = if chat.len() == 1 {
        entries(&format!("{p}:chat")).await
    } else {
        chat
    };
    assert_eq!(chat.len(), 1, "{chat:?}");
    assert_eq!(chat[0].1["channel"], "private-chat-1");
    assert_eq!(chat[0].1["name"], "client_event");
    assert_eq!((api_chat.len(), api_other.len()), (1, 1));
    assert_eq!(api_other[0].1["name"], "api_event");
}

#[tokio::test]
async fn a_consumer_group_reads_and_acks() {
    let p = prefix();
    let stream = format!("{p}:events");
    let s = TestServer::start(&single(
        REDIS,
        "",
        &format!("[[apps.streams]]\nkey = \"{stream}\"\nevents = [\"api_event\"]\n"),
    ))
    .await;
    let mut conn = redis().await;
    let _: () = conn
        .xgroup_create_mkstream(&stream, "workers", "$")
        .await
        .unwrap();
    for i in 0..5 {
        s.api()
            .trigger(&["orders"], "placed", &format!("{{\"n\":{i}}}"))
            .await;
    }
    entries_until(&stream, 5).await;
    let opts = redis::streams::StreamReadOptions::default()
        .group("workers", "w1")
        .count(10)
        .block(2000);
    let read: redis::streams::StreamReadReply =
        conn.xread_options(&[&stream], &[">"], &opts).await.unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 5);
    let data: Vec<String> = read.keys[0]
        .ids
        .iter()
        .map(|e| e.get::<String>("data").unwrap())
        .collect();
    assert_eq!(data[0], r#"{"n":0}"#);
    let acked: i64 = conn.xack(&stream, "workers", &ids).await.unwrap();
    assert_eq!(acked, 5);
    let pending: redis::streams::StreamPendingReply =
        conn.xpending(&stream, "workers").await.unwrap();
    assert_eq!(pending.count(), 0, "nothing left unacknowledged");
}

/// A TCP proxy to the shared Redis that the test stops (closing every connection and the
/// listener) and starts again on the same port.
struct Proxy {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect("127.0.0.1:6379").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Proxy { task: Some(task) }
    }

    /// Closes the listener and every proxied connection (the JoinSet aborts them).
    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

#[tokio::test]
async fn an_outage_queues_events_up_to_the_bound_and_counts_the_overflow() {
    let p = prefix();
    let stream = format!("{p}:events");
    let port = free_port();
    let mut proxy = Proxy::start(port).await;
    let url = format!("redis://127.0.0.1:{port}/0");
    // Each event is charged about 128 bytes plus its strings: some 25 of these fit.
    let toml = TestConfig::new()
        .app_lines(&format!(
            "[[apps.streams]]\nkey = \"{stream}\"\nevents = [\"api_event\"]\n"
        ))
        .more(&format!(
            "[streams]\nredis_url = \"{url}\"\nqueue_bytes = 20000\nwrite_timeout_ms = 500\n"
        ))
        .toml();
    let s = TestServer::start(&toml).await;
    let pad = "x".repeat(600);
    let send = |phase: &'static str, i: usize| {
        let api = s.api();
        let pad = pad.clone();
        async move {
            let r = api
                .trigger(
                    &["feed"],
                    phase,
                    &format!("{{\"i\":{i},\"pad\":\"{pad}\"}}"),
                )
                .await;
            assert_eq!(r.status, 200);
        }
    };
    for i in 0..10 {
        send("before", i).await;
    }
    entries_until(&stream, 10).await;
    proxy.stop().await;
    let down = std::time::Instant::now();
    for i in 0..60 {
        send("during", i).await;
    }
    let ready = raw_request("GET", &s.url("/ready"), String::new()).await;
    assert_eq!(ready.status, 200, "/ready does not follow the sink");
    let dropped_name =
        format!("resound_stream_dropped_total{{app_id=\"{APP_ID}\",reason=\"queue_full\"}}");
    let dropped = sample(&s, &dropped_name).await as usize;
    assert!(dropped > 0 && dropped < 60, "dropped {dropped}");
    let queued = sample(
        &s,
        &format!("resound_stream_queue_entries{{app_id=\"{APP_ID}\"}}"),
    )
    .await;
    assert_eq!(queued as usize, 60 - dropped);
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down.elapsed())).await;
    let _proxy = Proxy::start(port).await;
    // Once the queue has drained (the writer retries within its 2 s back-off), new events
    // fit again.
    let queue = format!("resound_stream_queue_entries{{app_id=\"{APP_ID}\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sample(&s, &queue).await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..10 {
        send("after", i).await;
    }
    let want = 10 + (60 - dropped) + 10;
    let got = entries_until(&stream, want).await;
    // A pipeline cut off by the outage may have been written before it failed: written again,
    // it shows twice. Each event counts once here, in the order first written.
    let mut seen = std::collections::HashSet::new();
    let order: Vec<(String, u64)> = got
        .iter()
        .map(|e| {
            let data: serde_json::Value = serde_json::from_str(&e.1["data"]).unwrap();
            (e.1["event"].clone(), data["i"].as_u64().unwrap())
        })
        .filter(|k| seen.insert(k.clone()))
        .collect();
    let expected: Vec<(String, u64)> = (0..10)
        .map(|i| ("before".to_string(), i))
        .chain((0..(60 - dropped) as u64).map(|i| ("during".to_string(), i)))
        .chain((0..10).map(|i| ("after".to_string(), i)))
        .collect();
    assert_eq!(
        order, expected,
        "the queued events, oldest first; the newest were dropped"
    );
    assert!(sample(&s, "resound_stream_write_failures_total").await >= 1.0);
    assert_eq!(
        sample(
            &s,
            &format!("resound_stream_queue_bytes{{app_id=\"{APP_ID}\"}}")
        )
        .await,
        0.0
    );
}

/// Whether `php` with the redis extension can run here.
fn php_with_redis() -> bool {
    std::process::Command::new("php")
        .args(["-r", "exit(class_exists('Redis') ? 0 : 1);"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn the_php_worker_reads_the_fields_with_php_redis() {
    // .ci/run installs php-cli and php-redis (Debian packages); like redis-server, they are
    // required, not optional.
    assert!(
        php_with_redis(),
        "php with the redis extension is needed: apt-get install php-cli php-redis"
    );
    let p = prefix();
    let stream = format!("{p}:chat");
    let s = TestServer::start(&single(
        REDIS,
        "",
        &format!(
            "[[apps.streams]]\nkey = \"{stream}\"\nevents = [\"client_event\", \"member_added\"]\n"
        ),
    ))
    .await;
    let mut a = s.client().await;
    a.subscribe_presence("presence-room", r#"{"user_id":"ann"}"#)
        .await;
    let mut b = s.client().await;
    b.subscribe_presence("presence-room", r#"{"user_id":"bob"}"#)
        .await;
    a.send(json!({"event":"client-message","channel":"presence-room","data":{"text":"hello @bob, darn it"}}))
        .await;
    b.recv_event("client-message").await;
    entries_until(&stream, 3).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("php")
        .arg(root.join("examples/streams/worker.php"))
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", "6379")
        .env("STREAM", &stream)
        .env("GROUP", "chat-workers")
        .env("CONSUMER", "it")
        .env("MAX_ENTRIES", "3")
        .output()
        .await
        .expect("run php");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"name":"member_added","channel":"presence-room","user_id":"ann"}),
            json!({"name":"member_added","channel":"presence-room","user_id":"bob"}),
            json!({"name":"client_event","channel":"presence-room","event":"client-message","user_id":"ann","text":"hello @bob, **** it","mentions":["bob"]}),
        ]
    );
    let mut conn = redis().await;
    let pending: redis::streams::StreamPendingReply =
        conn.xpending(&stream, "chat-workers").await.unwrap();
    assert_eq!(pending.count(), 0, "the worker acknowledged what it read");
}

#[tokio::test]
async fn webhooks_and_streams_share_each_held_removal_verdict_across_nodes() {
    let (port, mut rx) = crate::cluster_webhooks::event_receiver(0).await;
    let p = prefix();
    let stream = format!("{p}:presence");
    let toml = TestConfig::new()
        .scaling(&p)
        .scaling_setting("redis_url", REDIS)
        .app_lines(&format!(
            "webhook_removal_delay = 1\n\
             [[apps.webhooks]]\nurl = \"http://127.0.0.1:{port}/hooks\"\nevent_types = [\"member_added\", \"member_removed\"]\n\
             [[apps.streams]]\nkey = \"{stream}\"\nevents = [\"member_added\", \"member_removed\"]\n"
        ))
        .toml();
    let n1 = TestServer::start(&toml).await;
    let n2 = TestServer::start(&toml).await;
    let (ch, member) = ("presence-room", r#"{"user_id":"7"}"#);
    let mut page = n1.client().await;
    page.subscribe_presence(ch, member).await;
    // A reload that lands on the other node within the delay: no removal, no second add.
    drop(page);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = n2.client().await;
    again.subscribe_presence(ch, member).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Then a departure for good: both hear of it, once.
    drop(again);
    let got = entries_until(&stream, 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = if got.len() == 2 {
        entries(&stream).await
    } else {
        got
    };
    let names: Vec<(&str, &str)> = got
        .iter()
        .map(|e| (e.1["name"].as_str(), e.1["user_id"].as_str()))
        .collect();
    assert_eq!(names, [("member_added", "7"), ("member_removed", "7")]);
    let mut hooks = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        hooks.push(e["name"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        hooks,
        ["member_added", "member_removed"],
        "the webhooks agree"
    );
}

/// Whether Debian's Laravel (php-laravel-framework) can be loaded here.
fn php_with_laravel() -> bool {
    std::process::Command::new("php")
        .args([
            "-r",
            "require 'Illuminate/autoload.php'; exit(class_exists('Redis') && class_exists(Illuminate\\Foundation\\Application::class) ? 0 : 1);",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `php artisan chat:process-stream --stop-when-empty` of `examples/laravel-worker/`
/// against the server `s`, with Laravel's Redis keys under `prefix` and its caches in `dir`.
async fn laravel_worker(s: &TestServer, prefix: &str, dir: &std::path::Path) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/laravel-worker");
    let out = tokio::process::Command::new("php")
        .arg("artisan")
        .args(["chat:process-stream", "--consumer=it", "--stop-when-empty"])
        .current_dir(&root)
        .env("REVERB_APP_ID", APP_ID)
        .env("REVERB_APP_KEY", KEY)
        .env("REVERB_APP_SECRET", SECRET)
        .env("REVERB_HOST", "127.0.0.1")
        .env("REVERB_PORT", s.addr.port().to_string())
        .env("REVERB_SCHEME", "http")
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", "6379")
        // The default connection's keys (the cache's) are the test's own; the streams
        // connection has no prefix.
        .env("REDIS_PREFIX", format!("{prefix}:"))
        .env("CACHE_PREFIX", "cache")
        // Laravel writes its package and provider manifests here, not into the example.
        .env("APP_PACKAGES_CACHE", dir.join("packages.php"))
        .env("APP_SERVICES_CACHE", dir.join("services.php"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("the command stops once the stream holds nothing new")
        .expect("run php artisan");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test]
async fn the_laravel_worker_filters_notifies_mentions_counts_and_acks() {
    // .ci/run installs php-cli, php-redis and php-laravel-framework (Debian packages).
    assert!(
        php_with_laravel(),
        "php with the redis extension and Laravel is needed: \
         apt-get install php-cli php-redis php-laravel-framework"
    );
    // The command reads `chat:{REVERB_APP_ID}:messages` with the group `chat-processors`, as
    // examples/laravel.md shows; a run before this one may have left both.
    let stream = format!("chat:{APP_ID}:messages");
    let mut conn = redis().await;
    let _: () = conn.del(&stream).await.unwrap();
    let p = prefix();
    let dir = std::env::temp_dir().join(format!("resound-it-laravel-{p}"));
    std::fs::create_dir_all(&dir).unwrap();
    let s = TestServer::start(&single(
        REDIS,
        "",
        "[[apps.streams]]\nkey = \"chat:{app}:messages\"\n\
         events = [\"client_event\", \"member_added\", \"member_removed\"]\n\
         channels = [\"presence-chat.*\"]\n",
    ))
    .await;
    let room = "presence-chat.1";
    let mut bob = s.client().await;
    bob.subscribe_private("private-user.bob").await;
    bob.subscribe_presence(room, r#"{"user_id":"bob"}"#).await;
    let mut ann = s.client().await;
    ann.subscribe_private("private-user.ann").await;
    ann.subscribe_presence(room, r#"{"user_id":"ann"}"#).await;
    ann.send(json!({"event":"client-message","channel":room,"data":{"text":"hello @bob and @ann, darn it"}}))
        .await;
    bob.recv_event("client-message").await;
    // A client event the command passes over (it handles `client-message`).
    ann.send(json!({"event":"client-typing","channel":room,"data":{"typing":true}}))
        .await;
    bob.recv_event("client-typing").await;
    assert_eq!(entries_until(&stream, 4).await.len(), 4);

    let out = laravel_worker(&s, &p, &dir).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["presence-chat.1 ann: hello @bob and @ann, **** it"],
        "one line per handled message, filtered"
    );
    // Bob, mentioned, hears of it on his private channel; Ann mentioned herself and does not.
    let mention = bob.recv_event("mention").await;
    assert_eq!(mention["channel"], "private-user.bob");
    assert_eq!(
        data_json(&mention),
        json!({"by":"ann","channel":room,"text":"hello @bob and @ann, **** it"})
    );
    ann.expect_silence(Duration::from_millis(300), "no mention of herself")
        .await;
    let pending: redis::streams::StreamPendingReply =
        conn.xpending(&stream, "chat-processors").await.unwrap();
    assert_eq!(pending.count(), 0, "the command acknowledged what it read");
    // The statistics, in Laravel's cache (the cache connection's prefix, then the cache's).
    for (key, want) in [
        ("chat:messages:presence-chat.1", 1),
        ("chat:messages:user:ann", 1),
        ("chat:member_added:presence-chat.1", 2),
    ] {
        let got: Option<i64> = conn.get(format!("{p}:cache:{key}")).await.unwrap();
        assert_eq!(got, Some(want), "{key}");
    }

    // A second run finds the group and nothing new.
    assert_eq!(laravel_worker(&s, &p, &dir).await, "");
    let _: () = conn.del(&stream).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn examples_laravel_md_shows_the_laravel_worker_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("examples/laravel.md")).unwrap();
    for file in [
        "app/Console/Commands/ProcessChatStream.php",
        "app/Events/UserMentioned.php",
    ] {
        let caption = format!("`{file}`:\n\n```php\n");
        let start = doc
            .find(&caption)
            .unwrap_or_else(|| panic!("examples/laravel.md shows {file} under {caption:?}"))
            + caption.len();
        let end = start + doc[start..].find("\n```\n").unwrap() + 1;
        let code =
            std::fs::read_to_string(root.join("examples/laravel-worker").join(file)).unwrap();
        assert_eq!(
            &doc[start..end],
            code,
            "examples/laravel.md and examples/laravel-worker/{file} differ"
        );
    }
}
