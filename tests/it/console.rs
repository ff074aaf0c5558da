//! The debug console (docs/operations.md, "Debug console"): where it is served, who may open
//! it, what its live feed carries, and how it samples a burst.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

use crate::support::*;

const TOKEN: &str = "console-admin-token-0123";

/// The test app, a second app, and the console on its own loopback listener (port 0).
fn console_config() -> TestConfig {
    TestConfig::new().more(&format!(
        "[[apps]]\nid = \"2002\"\nkey = \"other-key\"\nsecret = \"other-secret\"\n\n\
         [console]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ))
}

fn console_url(server: &TestServer, path: &str) -> String {
    let addr = server
        .console_addr
        .expect("the console has its own listener");
    format!("http://{addr}{path}")
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request_with("GET", url, String::new(), headers).await
}

/// A live feed: the records of `GET /console/apps/{id}/stream`.
struct Feed {
    body: Incoming,
    partial: String,
    records: Vec<Value>,
    /// Records read but not yet asked for.
    passed: Vec<Value>,
}

impl Feed {
    async fn open(url: &str, auth: &str) -> Feed {
        let client: HttpClient<_, Full<Bytes>> =
            HttpClient::builder(TokioExecutor::new()).build_http();
        let req = http::Request::builder()
            .uri(url)
            .header("authorization", auth)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut feed = Feed {
            body: resp.into_body(),
            partial: String::new(),
            records: Vec::new(),
            passed: Vec::new(),
        };
        assert_eq!(feed.next().await["kind"], "ready");
        feed
    }

    /// The next record (keep-alive comments skipped).
    async fn next(&mut self) -> Value {
        self.try_next().await.expect("a record in time")
    }

    /// The next record, or `None` when none arrives within `WAIT`.
    async fn try_next(&mut self) -> Option<Value> {
        loop {
            if !self.records.is_empty() {
                return Some(self.records.remove(0));
            }
            while let Some(end) = self.partial.find("\n\n") {
                let block: String = self.partial.drain(..end + 2).collect();
                for line in block.lines() {
                    if let Some(data) = line.strip_prefix("data: ") {
                        self.records.push(serde_json::from_str(data).unwrap());
                    }
                }
            }
            if !self.records.is_empty() {
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .ok()?
                .expect("the feed is open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.partial.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The first record of `kind` matching `pred`, among those passed over by earlier calls
    /// or arriving now (records go by in the server's order, which differs between kinds: a
    /// webhook's outcome comes when its receiver answers).
    async fn until(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self
            .passed
            .iter()
            .position(|r| r["kind"] == kind && pred(r))
        {
            return self.passed.remove(i);
        }
        for _ in 0..200 {
            let Some(r) = self.try_next().await else {
                break;
            };
            if r["kind"] == kind && pred(&r) {
                return r;
            }
            self.passed.push(r);
        }
        panic!("no {kind} record; passed over {:?}", self.passed);
    }
}

#[tokio::test]
async fn the_console_is_off_by_default_and_never_on_the_public_listener_unless_asked() {
    let plain = TestServer::default().await;
    assert!(plain.console_addr.is_none());
    assert_eq!(get(&plain.url("/console/"), &[]).await.status, 404);

    let own = TestServer::start(&console_config().toml()).await;
    assert_eq!(
        get(&own.url("/console/"), &[]).await.status,
        404,
        "not on the public listener"
    );
    let page = get(&console_url(&own, "/console/"), &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Resound debug console"), "{}", page.text);
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    for asset in ["/console/console.js", "/console/console.css"] {
        assert_eq!(get(&console_url(&own, asset), &[]).await.status, 200);
    }
    // The Pusher API is not served on the console's listener.
    let api = get(&console_url(&own, &format!("/apps/{APP_ID}/channels")), &[]).await;
    assert_eq!(api.status, 404);

    let main = TestServer::start(
        &console_config()
            .more("")
            .toml()
            .replace("[console]\n", "[console]\non_main_listener = true\n"),
    )
    .await;
    assert!(main.console_addr.is_none());
    let page = get(&main.url("/console/"), &[]).await;
    assert_eq!(page.status, 200, "asked for on the main listener");
}

#[tokio::test]
async fn the_feed_and_the_event_creator_need_the_token_or_the_apps_secret() {
    let server = TestServer::start(&console_config().toml()).await;
    let stream = console_url(&server, &format!("/console/apps/{APP_ID}/stream"));
    let create = console_url(&server, &format!("/console/apps/{APP_ID}/events"));
    let event = json!({"channel": "news", "name": "x", "data": "{}"}).to_string();

    assert_eq!(get(&stream, &[]).await.status, 401);
    assert_eq!(
        request_with("POST", &create, event.clone(), &[])
            .await
            .status,
        401
    );
    for wrong in ["Bearer nope", "Bearer other-secret"] {
        assert_eq!(
            get(&stream, &[("authorization", wrong)]).await.status,
            403,
            "{wrong}"
        );
    }
    assert_eq!(
        request_with(
            "POST",
            &create,
            event.clone(),
            &[("authorization", "Bearer nope")]
        )
        .await
        .status,
        403
    );
    let unknown = console_url(&server, "/console/apps/9999/stream");
    let admin = format!("Bearer {TOKEN}");
    assert_eq!(
        get(&unknown, &[("authorization", &admin)]).await.status,
        403
    );

    // The admin token and the app's own secret both open it.
    Feed::open(&stream, &admin).await;
    Feed::open(&stream, &format!("Bearer {SECRET}")).await;

    // Signing in sets a cookie for that app, which opens it and no other.
    let session = console_url(&server, "/console/session");
    let refused = request_with(
        "POST",
        &session,
        json!({"app_id": APP_ID, "token": "other-secret"}).to_string(),
        &[],
    )
    .await;
    assert_eq!(refused.status, 403);
    assert!(refused.headers.get("set-cookie").is_none());
    let signed = request_with(
        "POST",
        &session,
        json!({"app_id": APP_ID, "token": SECRET}).to_string(),
        &[],
    )
    .await;
    assert_eq!(signed.status, 204);
    let cookie = signed.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(
        !cookie.contains(SECRET),
        "the cookie never holds the secret"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let sent = request_with("POST", &create, event.clone(), &[("cookie", &pair)]).await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    let other = console_url(&server, "/console/apps/2002/stream");
    assert_eq!(get(&other, &[("cookie", &pair)]).await.status, 403);
}

/// A webhook receiver answering 200; returns its URL.
async fn receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req: hyper::Request<Incoming>| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/hooks")
}

#[tokio::test]
async fn the_feed_carries_connections_subscriptions_members_events_and_webhooks() {
    let hook = receiver().await;
    let server = TestServer::start(&console_config().webhook(&hook).toml()).await;
    let stream = console_url(&server, &format!("/console/apps/{APP_ID}/stream"));
    let mut feed = Feed::open(&stream, &format!("Bearer {TOKEN}")).await;

    let mut a = server.client().await;
    let sid = a.socket_id.clone();
    let opened = feed.until("connection_opened", |_| true).await;
    assert_eq!(opened["socket_id"], sid);
    assert_eq!(opened["transport"], "ws");

    a.subscribe_presence("presence-room", r#"{"user_id":"u1"}"#)
        .await;
    let sub = feed.until("subscribed", |_| true).await;
    assert_eq!(sub["channel"], "presence-room");
    assert_eq!(sub["socket_id"], sid);
    let member = feed.until("member_added", |_| true).await;
    assert_eq!(member["user_id"], "u1");

    let mut b = server.client().await;
    b.subscribe_presence("presence-room", r#"{"user_id":"u2"}"#)
        .await;
    a.send(json!({"event": "client-typing", "channel": "presence-room", "data": {"typing": true}}))
        .await;
    let client = feed.until("client_event", |_| true).await;
    assert_eq!(client["event"], "client-typing");
    assert_eq!(client["channel"], "presence-room");
    assert_eq!(client["socket_id"], sid);
    assert_eq!(client["user_id"], "u1");
    assert_eq!(client["data"], r#"{"typing":true}"#);

    let reply = server
        .api()
        .trigger(&["presence-room"], "from-api", "hello")
        .await;
    assert_eq!(reply.status, 200);
    let api = feed.until("api_event", |_| true).await;
    assert_eq!(api["event"], "from-api");
    assert_eq!(api["data"], "hello");
    assert_eq!(api["source"], "api");

    // The event creator publishes to subscribers, as the HTTP API does.
    let create = console_url(&server, &format!("/console/apps/{APP_ID}/events"));
    let sent = request_with(
        "POST",
        &create,
        json!({"channel": "presence-room", "name": "made-here", "data": "{\"n\":1}"}).to_string(),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text);
    let got = b.recv_event("made-here").await;
    assert_eq!(got["channel"], "presence-room");
    assert_eq!(got["data"], "{\"n\":1}");
    let made = feed.until("api_event", |r| r["event"] == "made-here").await;
    assert_eq!(made["source"], "console");

    let hooked = feed
        .until("webhook", |r| {
            r["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == "member_added:presence-room")
        })
        .await;
    assert_eq!(hooked["outcome"], "delivered");
    assert_eq!(hooked["status"], Value::Null);
    assert_eq!(hooked["attempts"], 1);

    drop(a);
    let gone = feed.until("member_removed", |_| true).await;
    assert_eq!(gone["user_id"], "u1");
    let closed = feed
        .until("connection_closed", |r| r["socket_id"] == sid)
        .await;
    assert!(closed["code"].as_u64().is_some());
    let told = b.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data_json(&told)["user_id"], "u1");
    b.assert_alive("the other member").await;
}

#[tokio::test]
async fn a_burst_is_sampled_and_the_feed_says_how_many_entries_it_skipped() {
    let server = TestServer::start(&console_config().toml().replace(
        "[console]\n",
        "[console]\nmax_entries_per_second = 20\nbuffer = 64\n",
    ))
    .await;
    let stream = console_url(&server, &format!("/console/apps/{APP_ID}/stream"));
    let mut feed = Feed::open(&stream, &format!("Bearer {TOKEN}")).await;
    // 3 × 100 channels: 300 entries at once, far above 20 a second.
    const BURST: u64 = 300;
    for round in 0..3 {
        let channels: Vec<String> = (0..100).map(|i| format!("burst-{round}-{i}")).collect();
        let names: Vec<&str> = channels.iter().map(String::as_str).collect();
        assert_eq!(server.api().trigger(&names, "tick", "x").await.status, 200);
    }
    let (mut shown, mut skipped) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while shown + skipped < BURST {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{shown} shown, {skipped} skipped"
        );
        let r = feed.next().await;
        match r["kind"].as_str() {
            Some("api_event") => shown += 1,
            Some("skipped") => skipped += r["count"].as_u64().unwrap(),
            other => panic!("unexpected record {other:?}: {r}"),
        }
    }
    assert_eq!(shown + skipped, BURST, "every entry shown or counted");
    assert!(skipped >= BURST - 64, "{skipped} skipped");
    assert!(shown >= 20, "the first second's entries are shown: {shown}");
    // The server is fine and the feed goes on.
    let mut c = server.client().await;
    c.subscribe("after-burst").await;
    feed.until("subscribed", |r| r["channel"] == "after-burst")
        .await;
}

#[tokio::test]
async fn on_the_main_listener_the_console_follows_the_route_prefix() {
    let server = TestServer::start(
        &console_config()
            .server_setting("path", "/reverb")
            .toml()
            .replace("[console]\n", "[console]\non_main_listener = true\n"),
    )
    .await;
    let bare = get(&server.url("/reverb/console"), &[]).await;
    assert_eq!(bare.status, 301);
    assert_eq!(bare.headers["location"], "/reverb/console/");
    assert_eq!(get(&server.url("/reverb/console/"), &[]).await.status, 200);
    let signed = request_with(
        "POST",
        &server.url("/reverb/console/session"),
        json!({"app_id": APP_ID, "token": TOKEN}).to_string(),
        &[],
    )
    .await;
    assert_eq!(signed.status, 204);
    let cookie = signed.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("Path=/reverb/console;"), "{cookie}");
    let stream = server.url(&format!("/reverb/console/apps/{APP_ID}/stream"));
    assert_eq!(get(&stream, &[]).await.status, 401);
    Feed::open(&stream, &format!("Bearer {TOKEN}")).await;
}
