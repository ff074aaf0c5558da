//! Spec 10.2 "Connection": handshake checks, connection_established, ping/pong, bad input.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn extra_apps() -> String {
    r#"
[[apps]]
id = "2"
key = "disabled-key"
secret = "s2"
enabled = false

[[apps]]
id = "3"
key = "quota-key"
secret = "s3"
max_connections = 1

[[apps]]
id = "4"
key = "origin-key"
secret = "s4"
allowed_origins = ["allowed.example", "*.laravel.test"]
"#
    .to_string()
}

async fn refused(url: &str) -> (serde_json::Value, Option<u16>) {
    let mut ws = Client::raw(url).await;
    let first = next_json(&mut ws)
        .await
        .expect("an error event before the close");
    (first, closed_code(&mut ws).await)
}

#[tokio::test]
async fn handshake_refusals_send_error_then_close_with_the_same_code() {
    let s = TestServer::start(&config("", &extra_apps())).await;
    let cases = [
        ("nope", "protocol=7", 4001),
        ("disabled-key", "protocol=7", 4003),
        (KEY, "protocol=abc", 4006),
        (KEY, "protocol=3", 4007),
        (KEY, "protocol=8", 4007),
    ];
    for (key, q, code) in cases {
        let (first, close) = refused(&s.ws_url(key, q)).await;
        assert_eq!(
            first["event"], "pusher:error",
            "{key} {q}: first message must be pusher:error"
        );
        assert_eq!(first["data"]["code"], code, "{key} {q}: error code");
        assert_eq!(
            close,
            Some(code),
            "{key} {q}: close code must equal the error code"
        );
    }
    let metrics = raw_request("GET", &s.url("/metrics"), String::new())
        .await
        .text;
    assert!(
        metrics.contains("resound_connections_refused_total{code=\"4001\"} 1"),
        "refusals are counted by code"
    );
    assert!(metrics.contains("resound_connections_refused_total{code=\"4007\"} 2"));
}

#[tokio::test]
async fn protocol_5_and_missing_protocol_are_accepted() {
    let s = TestServer::default().await;
    for q in ["protocol=5&client=java-client", "", "protocol=7"] {
        let c = Client::connect(&s.ws_url(KEY, q)).await;
        assert!(!c.socket_id.is_empty(), "{q}");
    }
}

#[tokio::test]
async fn connection_established_has_string_data_and_a_valid_socket_id() {
    let s = TestServer::start(&config("activity_timeout = 45", "")).await;
    let c = s.client().await;
    let (a, b) = c.socket_id.split_once('.').expect("dot");
    assert!(a.chars().all(|c| c.is_ascii_digit()) && b.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(c.established["activity_timeout"], 45);
    let c2 = s.client().await;
    assert_ne!(c.socket_id, c2.socket_id);
}

#[tokio::test]
async fn over_quota_is_4004_and_the_slot_frees_on_disconnect() {
    let s = TestServer::start(&config("", &extra_apps())).await;
    let first = Client::connect(&s.ws_url("quota-key", "protocol=7")).await;
    let (err, close) = refused(&s.ws_url("quota-key", "protocol=7")).await;
    assert_eq!(err["data"]["code"], 4004);
    assert_eq!(close, Some(4004));
    drop(first);
    // The server frees the slot when it sees the close, a moment after the drop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut ws = Client::raw(&s.ws_url("quota-key", "protocol=7")).await;
        let first = next_json(&mut ws).await.expect("an event");
        if first["event"] == "pusher:connection_established" {
            break;
        }
        assert_eq!(first["data"]["code"], 4004, "{first}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot must be released when a socket closes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn origin_check_uses_the_host_of_the_origin_header() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = TestServer::start(&config("", &extra_apps())).await;
    let attempt = |origin: Option<&'static str>| {
        let url = s.ws_url("origin-key", "protocol=7");
        async move {
            let mut req = url.into_client_request().expect("request");
            if let Some(o) = origin {
                req.headers_mut()
                    .insert("origin", o.parse().expect("header"));
            }
            let (mut ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .expect("connect");
            next_json(&mut ws).await.expect("first message")
        }
    };
    assert_eq!(
        attempt(Some("https://allowed.example")).await["event"],
        "pusher:connection_established"
    );
    assert_eq!(
        attempt(Some("http://app.laravel.test:8000")).await["event"],
        "pusher:connection_established"
    );
    let refused = attempt(Some("https://evil.example")).await;
    assert_eq!(
        refused["data"]["code"], 4009,
        "foreign origin must get 4009"
    );
    assert_eq!(
        attempt(None).await["data"]["code"],
        4009,
        "missing origin must get 4009"
    );
}

#[tokio::test]
async fn ping_in_every_form_gets_pong() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    for p in [
        json!({"event":"pusher:ping"}),
        json!({"event":"pusher:ping","data":{}}),
        json!({"event":"pusher:ping","data":"{}"}),
    ] {
        c.send(p.clone()).await;
        let pong = c.recv().await;
        assert_eq!(pong["event"], "pusher:pong", "{p}");
        assert_eq!(pong["data"], "{}");
    }
}

#[tokio::test]
async fn websocket_ping_frames_get_pong_frames() {
    use futures_util::StreamExt;
    let s = TestServer::default().await;
    let mut c = s.client().await;
    c.ws.send(Message::Ping(b"hi".to_vec().into()))
        .await
        .expect("ping");
    let got = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = c.ws.next().await {
            if let Message::Pong(p) = m {
                return Some(p);
            }
        }
        None
    })
    .await
    .expect("pong in time");
    assert_eq!(got.as_deref(), Some(&b"hi"[..]));
}

#[tokio::test]
async fn malformed_and_binary_messages_get_4200_and_the_socket_stays_open() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    for bad in [
        "not json",
        "[1,2]",
        r#"{"data":{}}"#,
        r#"{"event":"pusher:subscribe","data":{}}"#,
    ] {
        c.send_text(bad).await;
        let e = c.recv().await;
        assert_eq!(e["event"], "pusher:error", "{bad}");
        assert_eq!(e["data"]["code"], 4200, "{bad}");
    }
    c.ws.send(Message::Binary(b"{}".to_vec().into()))
        .await
        .expect("binary");
    let e = c.recv().await;
    assert_eq!(e["data"]["code"], 4200, "binary frame");
    // Still serving.
    let ok = c.subscribe("still-open").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
}

#[tokio::test]
async fn unknown_events_are_ignored() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    c.send(json!({"event":"pusher:future_extension","data":{}}))
        .await;
    c.send(json!({"event":"hello","data":{}})).await;
    c.expect_silence(Duration::from_millis(300), "unknown events")
        .await;
}

#[tokio::test]
async fn a_message_over_max_message_size_closes_with_1009() {
    let s = TestServer::start(&config("max_message_size = 1000", "")).await;
    let mut c = s.client().await;
    let big = format!(r#"{{"event":"pusher:ping","data":"{}"}}"#, "x".repeat(2000));
    c.send_text(&big).await;
    assert_eq!(c.closed().await, Some(1009));
    // Other clients keep their service.
    let mut other = s.client().await;
    assert_eq!(
        other.subscribe("x").await["event"],
        "pusher_internal:subscription_succeeded"
    );
}

#[tokio::test]
async fn fragmented_messages_are_capped_by_their_total_size() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    let s = TestServer::start(&config("max_message_size = 1000", "")).await;
    // A fragmented message within the limit is assembled and understood.
    let mut c = s.client().await;
    let parts: [&[u8]; 2] = [br#"{"event":"pusher:"#, br#"ping"}"#];
    for (i, p) in parts.iter().enumerate() {
        let header = FrameHeader {
            is_final: i == 1,
            opcode: if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            },
            ..FrameHeader::default()
        };
        c.ws.send(Message::Frame(Frame::from_payload(
            header,
            p.to_vec().into(),
        )))
        .await
        .expect("frame");
    }
    assert_eq!(c.recv().await["event"], "pusher:pong");
    // Fragments each under the limit but over it in total: 1009.
    let mut c = s.client().await;
    let chunk = vec![b'x'; 600];
    for i in 0..3 {
        let header = FrameHeader {
            is_final: i == 2,
            opcode: if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            },
            ..FrameHeader::default()
        };
        let _ =
            c.ws.send(Message::Frame(Frame::from_payload(
                header,
                chunk.clone().into(),
            )))
            .await;
    }
    assert_eq!(c.closed().await, Some(1009));
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    let s = TestServer::default().await;
    let mut c = s.client().await;
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    c.ws.send(Message::Frame(Frame::from_payload(
        header,
        vec![0xff, 0xfe, b'{'].into(),
    )))
    .await
    .expect("frame");
    assert_eq!(c.closed().await, Some(1007));
}

#[tokio::test]
async fn silent_clients_are_pinged_then_closed_with_4201() {
    let s = TestServer::start(&config("activity_timeout = 1\npong_timeout = 1", "")).await;
    // Before the handshake, so the server's clock for this socket starts later than this one.
    let started = std::time::Instant::now();
    let mut c = s.client().await;
    let ping = c.recv().await;
    assert_eq!(ping["event"], "pusher:ping", "server pings a silent client");
    let err = c.recv().await;
    assert_eq!(err["data"]["code"], 4201);
    assert_eq!(c.closed().await, Some(4201));
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "never before activity_timeout + pong_timeout"
    );
}

#[tokio::test]
async fn answering_the_ping_keeps_the_connection() {
    let s = TestServer::start(&config("activity_timeout = 1\npong_timeout = 1", "")).await;
    let mut c = s.client().await;
    for _ in 0..3 {
        let ping = c.recv().await;
        assert_eq!(ping["event"], "pusher:ping");
        c.send(json!({"event":"pusher:pong","data":{}})).await;
    }
}

#[tokio::test]
async fn plain_get_on_the_websocket_route_is_not_a_crash() {
    let s = TestServer::default().await;
    let r = raw_request("GET", &s.url("/app/it-key"), String::new()).await;
    assert_eq!(r.status, 426);
    let r = raw_request(
        "GET",
        &s.url("/pusher/app/it-key/xhr_streaming"),
        String::new(),
    )
    .await;
    assert_eq!(r.status, 404);
}

/// Many sockets reading and writing at once on a server with worker threads (where a socket
/// can become readable while its task is busy on another thread): every one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socket_of_a_crowd_is_answered() {
    let s = TestServer::default().await;
    let url = s.ws_url(KEY, "protocol=7&client=js&version=8.4.0&flash=false");
    let mut crowd = tokio::task::JoinSet::new();
    for i in 0..600 {
        let url = url.clone();
        crowd.spawn(async move {
            let mut c = Client::connect(&url).await;
            let channel = format!("crowd-{}", i % 50);
            let ok = c.subscribe(&channel).await;
            assert_eq!(ok["channel"], channel.as_str());
            for _ in 0..20 {
                c.send(json!({"event": "pusher:ping", "data": {}})).await;
                assert_eq!(c.recv().await["event"], "pusher:pong");
            }
            c
        });
    }
    let mut clients = Vec::new();
    while let Some(c) = crowd.join_next().await {
        clients.push(c.expect("every client of the crowd was answered in time"));
    }
    assert_eq!(clients.len(), 600);
}
