//! pusher-js's HTTP transports (protocol.md 9): `xhr_polling` and `xhr_streaming` sessions
//! driven the way pusher-js drives them, next to WebSocket clients on the same channels.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use resound::protocol::auth::{channel_string_to_sign, sign_token, signin_string_to_sign};
use resound::protocol::SocketId;
use serde_json::{json, Value};

use crate::support::{TestConfig, TestServer, KEY, SECRET, WAIT};

type Http = HttpClient<HttpConnector, Full<Bytes>>;

fn http() -> Http {
    HttpClient::builder(TokioExecutor::new()).build_http()
}

async fn post(
    client: &Http,
    url: &str,
    body: &str,
    origin: Option<&str>,
) -> http::Response<Incoming> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(url)
        .header("content-type", "application/json");
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("answer in time")
        .expect("request")
}

/// One frame of the fallback framing.
#[derive(Debug, PartialEq)]
enum Frame {
    Open,
    Heartbeat,
    Messages(Vec<Value>),
    Close(u16, String),
}

fn parse_lines(text: &str) -> Vec<Frame> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| match &l[..1] {
            "o" => Frame::Open,
            "h" => Frame::Heartbeat,
            "a" => {
                let arr: Vec<String> = serde_json::from_str(&l[1..]).unwrap();
                Frame::Messages(
                    arr.iter()
                        .map(|m| serde_json::from_str(m).unwrap())
                        .collect(),
                )
            }
            "c" => {
                let v: Value = serde_json::from_str(&l[1..]).unwrap();
                Frame::Close(
                    v[0].as_u64().unwrap() as u16,
                    v[1].as_str().unwrap().to_string(),
                )
            }
            other => panic!("unknown frame {other:?} in {l:?}"),
        })
        .collect()
}

/// A session as pusher-js holds one: `{base}/{server}/{session}/{op}`.
struct Session {
    client: Http,
    base: String,
    origin: Option<String>,
    socket_id: String,
    /// Messages received and not read yet.
    inbox: Vec<Value>,
    /// The open stream of a streaming session, and what arrived of its current line.
    stream: Option<(Incoming, String)>,
}

impl Session {
    fn new(server: &TestServer, key: &str) -> Session {
        Session {
            client: http(),
            base: server.url(&format!("/pusher/app/{key}/{}", session_id())),
            origin: None,
            socket_id: String::new(),
            inbox: Vec::new(),
            stream: None,
        }
    }

    fn url(&self, op: &str) -> String {
        format!("{}/{op}?protocol=7&client=js&version=8.6.0", self.base)
    }

    async fn poll_frames(&mut self) -> (http::StatusCode, Vec<Frame>) {
        let resp = post(&self.client, &self.url("xhr"), "", self.origin.as_deref()).await;
        let status = resp.status();
        let body = tokio::time::timeout(Duration::from_secs(40), resp.into_body().collect())
            .await
            .expect("poll answered")
            .unwrap()
            .to_bytes();
        (status, parse_lines(std::str::from_utf8(&body).unwrap()))
    }

    /// A polling session, connected: `o`, then `connection_established`.
    async fn polling(server: &TestServer) -> Session {
        let mut s = Session::new(server, KEY);
        assert_eq!(s.poll_frames().await.1, [Frame::Open]);
        let ev = s.poll_event().await;
        assert_eq!(ev["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(ev["data"].as_str().unwrap()).unwrap();
        s.socket_id = data["socket_id"].as_str().unwrap().to_string();
        s
    }

    /// A streaming session, connected: the prelude, `o`, then `connection_established`.
    async fn streaming(server: &TestServer) -> Session {
        let mut s = Session::new(server, KEY);
        let (first, _) = s.open_stream().await;
        assert_eq!(first, [Frame::Heartbeat, Frame::Open]);
        let ev = s.stream_event().await;
        assert_eq!(ev["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(ev["data"].as_str().unwrap()).unwrap();
        s.socket_id = data["socket_id"].as_str().unwrap().to_string();
        s
    }

    /// Opens the stream and returns its first frames.
    async fn open_stream(&mut self) -> (Vec<Frame>, http::HeaderMap) {
        let resp = post(
            &self.client,
            &self.url("xhr_streaming"),
            "",
            self.origin.as_deref(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let headers = resp.headers().clone();
        self.stream = Some((resp.into_body(), String::new()));
        (self.stream_frames().await, headers)
    }

    /// The complete frames the stream delivers next.
    async fn stream_frames(&mut self) -> Vec<Frame> {
        let (body, partial) = self.stream.as_mut().expect("stream open");
        loop {
            if let Some(end) = partial.rfind('\n') {
                let complete: String = partial.drain(..=end).collect();
                return parse_lines(&complete);
            }
            let frame = tokio::time::timeout(Duration::from_secs(40), body.frame())
                .await
                .expect("stream frame in time");
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        partial.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
                _ => return Vec::new(),
            }
        }
    }

    fn take_messages(&mut self, frames: Vec<Frame>) -> Option<Frame> {
        for f in frames {
            match f {
                Frame::Messages(m) => self.inbox.extend(m),
                Frame::Heartbeat | Frame::Open => {}
                close @ Frame::Close(..) => return Some(close),
            }
        }
        None
    }

    async fn poll_event(&mut self) -> Value {
        for _ in 0..10 {
            if !self.inbox.is_empty() {
                return self.inbox.remove(0);
            }
            let (_, frames) = self.poll_frames().await;
            if let Some(c) = self.take_messages(frames) {
                panic!("closed: {c:?}");
            }
        }
        panic!("no message");
    }

    async fn stream_event(&mut self) -> Value {
        for _ in 0..10 {
            if !self.inbox.is_empty() {
                return self.inbox.remove(0);
            }
            let frames = self.stream_frames().await;
            if let Some(c) = self.take_messages(frames) {
                panic!("closed: {c:?}");
            }
        }
        panic!("no message");
    }

    async fn event(&mut self) -> Value {
        if self.stream.is_some() {
            self.stream_event().await
        } else {
            self.poll_event().await
        }
    }

    /// Reads until the close frame (streaming: from the stream; polling: from polls).
    async fn close_frame(&mut self) -> (u16, String) {
        for _ in 0..10 {
            let frames = if self.stream.is_some() {
                self.stream_frames().await
            } else {
                self.poll_frames().await.1
            };
            if let Some(Frame::Close(code, reason)) = self.take_messages(frames) {
                return (code, reason);
            }
        }
        panic!("no close frame");
    }

    async fn send_raw(&self, body: &str) -> http::StatusCode {
        post(
            &self.client,
            &format!("{}/xhr_send?t=1&n=2", self.base),
            body,
            self.origin.as_deref(),
        )
        .await
        .status()
    }

    async fn send(&self, msg: Value) {
        let body = serde_json::to_string(&[msg.to_string()]).unwrap();
        assert_eq!(self.send_raw(&body).await, 204);
    }

    fn sid(&self) -> SocketId {
        self.socket_id.parse().unwrap()
    }

    async fn subscribe(&mut self, channel: &str) {
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel}}))
            .await;
        let ev = self.event().await;
        assert_eq!(
            ev["event"], "pusher_internal:subscription_succeeded",
            "{ev}"
        );
    }

    async fn subscribe_presence(&mut self, channel: &str, channel_data: &str) -> Value {
        let auth = sign_token(
            KEY,
            SECRET,
            &channel_string_to_sign(self.sid(), channel, Some(channel_data)),
        );
        self.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":channel,"channel_data":channel_data}})).await;
        let ev = self.event().await;
        assert_eq!(
            ev["event"], "pusher_internal:subscription_succeeded",
            "{ev}"
        );
        ev
    }

    async fn assert_alive(&mut self) {
        self.send(json!({"event":"pusher:ping","data":{}})).await;
        assert_eq!(self.event().await["event"], "pusher:pong");
    }
}

fn session_id() -> String {
    let n = SocketId::random().to_string();
    let (a, b) = n.split_once('.').unwrap();
    format!("{}/{}", &a[..a.len().min(3)], &b[..b.len().min(8)])
}

fn config() -> TestConfig {
    TestConfig::new()
        .server_setting("fallback.disconnect_delay", 1)
        .server_setting("fallback.heartbeat_interval", 1)
}

#[tokio::test]
async fn a_polling_session_subscribes_and_receives_a_burst_of_events_in_order() {
    let server = TestServer::start(&config().toml()).await;
    let mut s = Session::polling(&server).await;
    assert!(s.socket_id.contains('.'));
    s.subscribe("news").await;
    for i in 0..30 {
        assert_eq!(
            server
                .api()
                .trigger(&["news"], "tick", &i.to_string())
                .await
                .status,
            200
        );
    }
    for i in 0..30 {
        let ev = s.event().await;
        assert_eq!(ev["event"], "tick");
        assert_eq!(ev["data"], i.to_string());
    }
    // Nothing queued: a poll is answered with a heartbeat after the interval.
    let (status, frames) = s.poll_frames().await;
    assert_eq!((status.as_u16(), frames), (200, vec![Frame::Heartbeat]));
    assert_eq!(server.state.metrics.transport_connections("xhr_polling"), 1);
}

#[tokio::test]
async fn a_streaming_session_gets_the_prelude_open_frame_events_and_heartbeats() {
    let server = TestServer::start(&config().toml()).await;
    let mut s = Session::streaming(&server).await;
    s.subscribe("news").await;
    for i in 0..20 {
        server
            .api()
            .trigger(&["news"], "tick", &i.to_string())
            .await;
    }
    for i in 0..20 {
        assert_eq!(s.event().await["data"], i.to_string());
    }
    // Idle: heartbeats keep the stream alive.
    assert_eq!(s.stream_frames().await, [Frame::Heartbeat]);
    s.assert_alive().await;
    assert_eq!(
        server.state.metrics.transport_connections("xhr_streaming"),
        1
    );
}

#[tokio::test]
async fn a_reopened_stream_continues_the_session_without_a_new_open_frame() {
    let server = TestServer::start(&config().toml()).await;
    let mut s = Session::streaming(&server).await;
    s.subscribe("news").await;
    // pusher-js closes its stream past 256 KiB and opens another for the same session.
    s.stream = None;
    let (frames, _) = s.open_stream().await;
    assert_eq!(frames, [Frame::Heartbeat], "prelude only, no `o`");
    server.api().trigger(&["news"], "after", "1").await;
    assert_eq!(s.event().await["event"], "after");
}

#[tokio::test]
async fn handshake_refusals_arrive_as_the_websocket_close_codes() {
    let toml = TestConfig::new()
        .app_lines("allowed_origins = [\"good.example\"]")
        .more("[[apps]]\nid = \"1002\"\nkey = \"off-key\"\nsecret = \"s\"\nenabled = false")
        .toml();
    let server = TestServer::start(&toml).await;
    let client = http();
    let cases = [
        ("nope", "protocol=7", None, 4001),
        ("off-key", "protocol=7", None, 4003),
        (KEY, "protocol=x", None, 4006),
        (KEY, "protocol=99", None, 4007),
        (KEY, "protocol=7", Some("https://evil.example"), 4009),
    ];
    for (key, query, origin, code) in cases {
        for op in ["xhr", "xhr_streaming"] {
            let url = server.url(&format!("/pusher/app/{key}/1/abcd/{op}?{query}"));
            let resp = post(&client, &url, "", origin).await;
            assert_eq!(resp.status(), 200);
            if let Some(o) = origin {
                assert_eq!(
                    resp.headers()["access-control-allow-origin"],
                    o,
                    "the page can read the refusal"
                );
            }
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let frames = parse_lines(std::str::from_utf8(&body).unwrap());
            let n = frames.len();
            assert!(n >= 3, "{op} {key} {query}: {frames:?}");
            assert_eq!(frames[n - 3], Frame::Open);
            let Frame::Messages(m) = &frames[n - 2] else {
                panic!("{frames:?}")
            };
            assert_eq!(m[0]["event"], "pusher:error");
            assert_eq!(m[0]["data"]["code"], code);
            assert!(matches!(frames[n - 1], Frame::Close(c, _) if c == code));
        }
    }
    // The allowed origin connects, and reads the CORS headers that let it.
    let mut s = Session::new(&server, KEY);
    s.origin = Some("https://good.example".into());
    let (frames, headers) = s.open_stream().await;
    assert_eq!(frames, [Frame::Heartbeat, Frame::Open]);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://good.example"
    );
    assert_eq!(
        s.stream_event().await["event"],
        "pusher:connection_established"
    );
    // A preflight is answered.
    let req = http::Request::builder()
        .method("OPTIONS")
        .uri(format!("{}/xhr_send", s.base))
        .header("origin", "https://good.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        resp.headers()["access-control-allow-headers"],
        "content-type"
    );
    // Another origin cannot post into the session.
    let mut other = Session::new(&server, KEY);
    other.base = s.base.clone();
    other.origin = Some("https://evil.example".into());
    assert_eq!(other.send_raw("[]").await, 403);
}

#[tokio::test]
async fn presence_over_http_with_a_websocket_peer_and_member_removed_when_it_leaves() {
    let server = TestServer::start(&config().toml()).await;
    let mut ws = server.client().await;
    ws.subscribe_presence("presence-room", r#"{"user_id":"ws-user"}"#)
        .await;
    let mut s = Session::polling(&server).await;
    let ok = s
        .subscribe_presence("presence-room", r#"{"user_id":"http-user"}"#)
        .await;
    let roster: Value = serde_json::from_str(ok["data"].as_str().unwrap()).unwrap();
    assert_eq!(roster["presence"]["count"], 2);
    let added = ws.recv_event("pusher_internal:member_added").await;
    assert!(added["data"].as_str().unwrap().contains("http-user"));

    // Client events both ways, with the sender's user_id, never echoed.
    s.send(json!({"event":"client-hi","channel":"presence-room","data":{"from":"http"}}))
        .await;
    let got = ws.recv_event("client-hi").await;
    assert_eq!(got["user_id"], "http-user");
    assert_eq!(got["data"]["from"], "http");
    ws.send(json!({"event":"client-hi","channel":"presence-room","data":{"from":"ws"}}))
        .await;
    let got = s.event().await;
    assert_eq!(got["event"], "client-hi");
    assert_eq!(got["user_id"], "ws-user");
    assert_eq!(got["data"]["from"], "ws");
    s.assert_alive().await;

    // The client stops polling: after the disconnect delay, it is a departed socket.
    let removed = ws
        .await_event("pusher_internal:member_removed", Duration::from_secs(5))
        .await;
    assert!(removed["data"].as_str().unwrap().contains("http-user"));
    assert_eq!(server.state.metrics.transport_connections("xhr_polling"), 0);
    // A late poll of the ended session starts a new one (`o`): pusher-js, already open,
    // takes it as a lost session and reconnects.
    assert_eq!(s.poll_frames().await.1, [Frame::Open]);
}

#[tokio::test]
async fn a_closed_stream_ends_the_session_as_a_closed_socket() {
    let server = TestServer::start(&config().toml()).await;
    let mut ws = server.client().await;
    ws.subscribe_presence("presence-room", r#"{"user_id":"ws-user"}"#)
        .await;
    let mut s = Session::streaming(&server).await;
    s.subscribe_presence("presence-room", r#"{"user_id":"http-user"}"#)
        .await;
    ws.recv_event("pusher_internal:member_added").await;
    drop(s);
    let removed = ws
        .await_event("pusher_internal:member_removed", Duration::from_secs(5))
        .await;
    assert!(removed["data"].as_str().unwrap().contains("http-user"));
    assert!(server.state.fallback.is_empty());
}

#[tokio::test]
async fn terminate_connections_closes_an_http_session_with_4009() {
    let server = TestServer::start(&config().app_setting("user_authentication", true).toml()).await;
    let mut s = Session::streaming(&server).await;
    let user_data = r#"{"id":"u-term"}"#;
    let auth = sign_token(KEY, SECRET, &signin_string_to_sign(s.sid(), user_data));
    s.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}))
        .await;
    assert_eq!(s.event().await["event"], "pusher:signin_success");
    let r = server
        .api()
        .post("/users/u-term/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.close_frame().await.0, 4009);
}

#[tokio::test]
async fn bad_send_bodies_are_refused_and_the_session_goes_on() {
    let server = TestServer::start(
        &config()
            .server_setting("fallback.max_send_bytes", 1000)
            .toml(),
    )
    .await;
    let mut s = Session::polling(&server).await;
    assert_eq!(s.send_raw("not json").await, 400);
    assert_eq!(s.send_raw(r#"[{"event":"x"}]"#).await, 400);
    assert_eq!(
        s.send_raw(&format!("[\"{}\"]", "x".repeat(2000))).await,
        413
    );
    assert_eq!(s.send_raw("[]").await, 204, "pusher-js's heartbeat");
    s.assert_alive().await;
    // A session this node does not hold.
    let mut stranger = Session::new(&server, KEY);
    stranger.base = server.url("/pusher/app/it-key/1/unknown");
    assert_eq!(stranger.send_raw("[]").await, 404);
}

#[tokio::test]
async fn http_sessions_per_app_are_capped() {
    let server = TestServer::start(
        &config()
            .server_setting("fallback.max_sessions_per_app", 1)
            .toml(),
    )
    .await;
    let mut first = Session::polling(&server).await;
    let mut second = Session::new(&server, KEY);
    let (_, frames) = second.poll_frames().await;
    assert!(
        matches!(frames.last(), Some(Frame::Close(4100, _))),
        "{frames:?}"
    );
    first.assert_alive().await;
    // WebSockets are not HTTP sessions.
    let _ws = server.client().await;
}

#[tokio::test]
async fn a_poller_that_lets_its_queue_grow_past_the_bound_is_closed_as_a_slow_consumer() {
    let server = TestServer::start(
        &TestConfig::new()
            .server_setting("fallback.max_poll_queue_bytes", 2000)
            .toml(),
    )
    .await;
    let mut s = Session::polling(&server).await;
    s.subscribe("news").await;
    let big = "x".repeat(500);
    for _ in 0..6 {
        server.api().trigger(&["news"], "big", &big).await;
    }
    assert_eq!(s.close_frame().await.0, 4100);
}

#[tokio::test]
async fn the_transports_can_be_switched_off() {
    let server =
        TestServer::start(&config().server_setting("fallback.enabled", false).toml()).await;
    let s = Session::new(&server, KEY);
    let resp = post(&s.client, &s.url("xhr"), "", None).await;
    assert_eq!(resp.status(), 404);
}

/// An EventSource-style reader: `event:`/`data:` records from a `text/event-stream` body.
struct EventStream {
    body: Incoming,
    partial: String,
    records: Vec<(String, Value, Option<String>)>,
}

impl EventStream {
    async fn open(server: &TestServer, session: &str, query: &str) -> EventStream {
        EventStream::open_with(server, session, query, &[]).await
    }

    async fn open_with(
        server: &TestServer,
        session: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> EventStream {
        let url = server.url(&format!("/pusher/app/{KEY}/{session}/eventsource?{query}"));
        let mut req = http::Request::builder()
            .method("GET")
            .uri(url)
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        let resp = http().request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        EventStream {
            body: resp.into_body(),
            partial: String::new(),
            records: Vec::new(),
        }
    }

    /// The next record: (event, data parsed as JSON).
    async fn next(&mut self) -> (String, Value) {
        let (event, data, _) = self.next_with_id().await;
        (event, data)
    }

    /// The next record with its `id:`, if it has one.
    async fn next_with_id(&mut self) -> (String, Value, Option<String>) {
        loop {
            if !self.records.is_empty() {
                return self.records.remove(0);
            }
            while let Some(end) = self.partial.find("\n\n") {
                let block: String = self.partial.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                let mut id = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !data.is_empty() {
                    self.records
                        .push((event, serde_json::from_str(&data).unwrap(), id));
                }
            }
            if !self.records.is_empty() {
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("record in time")
                .expect("stream open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.partial.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    async fn next_named(&mut self, name: &str) -> Value {
        loop {
            let (event, data) = self.next().await;
            if event == name {
                return data;
            }
        }
    }
}

#[tokio::test]
async fn an_event_stream_receives_public_and_private_channel_events() {
    let server = TestServer::start(&config().toml()).await;
    let session = session_id();
    let mut es = EventStream::open(&server, &session, "channels=news,sport").await;
    let (event, est) = es.next().await;
    assert_eq!(event, "pusher:connection_established");
    let sid: SocketId = serde_json::from_str::<Value>(est["data"].as_str().unwrap()).unwrap()
        ["socket_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for _ in 0..2 {
        es.next_named("pusher_internal:subscription_succeeded")
            .await;
    }
    server.api().trigger(&["news"], "tick", r#"{"n":1}"#).await;
    let tick = es.next_named("tick").await;
    assert_eq!(tick["channel"], "news");
    assert_eq!(tick["data"], r#"{"n":1}"#);

    // A private channel: the signature from the app's backend, for this stream's socket id.
    let subscribe = server.url(&format!("/pusher/app/{KEY}/{session}/subscribe"));
    let client = http();
    let bad = json!({"channel": "private-mine", "auth": format!("{KEY}:{}", "0".repeat(64))});
    let resp = post(&client, &subscribe, &bad.to_string(), None).await;
    assert_eq!(resp.status(), 401, "a bad signature is refused");
    let none = json!({"channel": "private-mine"});
    assert_eq!(
        post(&client, &subscribe, &none.to_string(), None)
            .await
            .status(),
        401
    );
    let auth = sign_token(
        KEY,
        SECRET,
        &channel_string_to_sign(sid, "private-mine", None),
    );
    let good = json!({"channel": "private-mine", "auth": auth});
    assert_eq!(
        post(&client, &subscribe, &good.to_string(), None)
            .await
            .status(),
        204
    );
    let ok = es
        .next_named("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(ok["channel"], "private-mine");
    // A public channel needs no signature.
    let public = json!({"channel": "later"});
    assert_eq!(
        post(&client, &subscribe, &public.to_string(), None)
            .await
            .status(),
        204
    );
    let ok = es
        .next_named("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(ok["channel"], "later");
    server.api().trigger(&["private-mine"], "secret", "s").await;
    assert_eq!(es.next_named("secret").await["data"], "s");
    assert_eq!(server.state.metrics.transport_connections("sse"), 1);

    // The stream closed: the session ends with it.
    drop(es);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.state.metrics.transport_connections("sse") != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session outlived its stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.state.fallback.is_empty());
}

#[tokio::test]
async fn a_raw_http_client_reads_the_event_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&config().toml()).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET /pusher/app/{KEY}/0/rawclient/eventsource?channels=news HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    for needle in [
        "event: pusher_internal:subscription_succeeded",
        "event: hello",
    ] {
        while !got.contains(needle) {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .expect("bytes in time")
                .unwrap();
            assert!(n > 0, "stream ended: {got}");
            got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        if needle.ends_with("succeeded") {
            server.api().trigger(&["news"], "hello", "world").await;
        }
    }
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("content-type: text/event-stream"), "{got}");
    assert!(
        got.contains(r#"data: {"event":"hello","channel":"news","data":"world"}"#),
        "{got}"
    );
}

#[tokio::test]
async fn an_event_stream_for_an_unknown_key_is_refused_with_a_4xx() {
    let server = TestServer::start(&config().toml()).await;
    let url = server.url("/pusher/app/nope/0/abc/eventsource?channels=news");
    let req = http::Request::builder()
        .method("GET")
        .uri(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = http().request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(std::str::from_utf8(&body).unwrap().contains("4001"));
}

#[tokio::test]
async fn http_sessions_count_against_the_apps_connection_quota() {
    let server = TestServer::start(&config().app_setting("max_connections", 1).toml()).await;
    let mut first = Session::streaming(&server).await;
    let mut second = Session::new(&server, KEY);
    let (_, frames) = second.poll_frames().await;
    assert!(
        matches!(frames.last(), Some(Frame::Close(4004, _))),
        "{frames:?}"
    );
    first.assert_alive().await;
    // The session's departure gives its slot back.
    first.stream = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut third = Session::new(&server, KEY);
        if third.poll_frames().await.1 == [Frame::Open] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was not given back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_draining_server_closes_streams_with_4200() {
    let mut server = TestServer::start(&config().toml()).await;
    let mut s = Session::streaming(&server).await;
    let stop = tokio::spawn(async move {
        server.stop().await;
    });
    assert_eq!(s.close_frame().await.0, 4200);
    stop.await.unwrap();
}

#[tokio::test]
async fn an_event_stream_resumes_its_history_channels_from_last_event_id() {
    let server = TestServer::start(
        &config()
            .app_setting("history_channels", vec!["chat-*"])
            .toml(),
    )
    .await;
    let mut es = EventStream::open(&server, &session_id(), "channels=chat-1,news").await;
    for _ in 0..2 {
        es.next_named("pusher_internal:subscription_succeeded")
            .await;
    }
    let api = server.api();
    api.trigger(&["news"], "plain", "p").await;
    let (event, _, id) = es.next_with_id().await;
    assert_eq!((event.as_str(), id), ("plain", None), "no history, no id");
    let mut last_id = None;
    for n in 1..=2 {
        api.trigger(&["chat-1"], "msg", &n.to_string()).await;
        let (event, data, id) = es.next_with_id().await;
        assert_eq!(event, "msg");
        let id = id.expect("a history event carries an id");
        let ids: Value = serde_json::from_str(&id).unwrap();
        assert_eq!(
            ids["positions"]["chat-1"], data["resound_position"],
            "the id carries the event's position"
        );
        last_id = Some(id);
    }
    drop(es);
    // Missed while no stream was open.
    for n in 3..=4 {
        api.trigger(&["chat-1"], "msg", &n.to_string()).await;
    }
    let last_id = last_id.unwrap();
    let mut es = EventStream::open_with(
        &server,
        &session_id(),
        "channels=chat-1,news",
        &[("last-event-id", &last_id)],
    )
    .await;
    let mut chat = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while chat.last().map(|(e, _): &(String, Value)| e.as_str()) != Some("resound:recovery") {
        assert!(tokio::time::Instant::now() < deadline, "{chat:?}");
        let (event, data) = es.next().await;
        if data["channel"] == "chat-1" {
            chat.push((event, data));
        }
    }
    let names: Vec<&str> = chat.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "pusher_internal:subscription_succeeded",
            "msg",
            "msg",
            "resound:recovery"
        ]
    );
    assert_eq!(chat[1].1["data"], "3");
    assert_eq!(chat[2].1["data"], "4");
    let recovery: Value = serde_json::from_str(chat[3].1["data"].as_str().unwrap()).unwrap();
    assert_eq!(recovery["status"], "recovered");
    assert_eq!(recovery["recovered"], 2);
    // Live events go on, with ids that carry the position on.
    api.trigger(&["chat-1"], "msg", "5").await;
    let (data, id) = loop {
        let (event, data, id) = es.next_with_id().await;
        if event == "msg" {
            break (data, id);
        }
    };
    assert_eq!(data["data"], "5");
    let ids: Value = serde_json::from_str(&id.expect("an id")).unwrap();
    assert_eq!(ids["positions"]["chat-1"], data["resound_position"]);
}
