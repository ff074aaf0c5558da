//! Connection-level resource bounds against hostile clients: partial messages held by the
//! reader, outbound bytes queued for clients that do not read, and liveness that a client
//! cannot fake.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use crate::support::*;

const CLIENT_QUERY: &str = "protocol=7&client=js&version=8.4.0&flash=false";

/// The header of a masked, final text frame declaring `len` payload bytes (mask of zeros, so the
/// payload goes as is).
fn text_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x81, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// Writes raw bytes under the WebSocket client (which never learns of them).
async fn write_raw(ws: &mut Ws, bytes: &[u8]) {
    match ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp.write_all(bytes).await.expect("write"),
        _ => unreachable!("plain test server"),
    }
}

/// Polls `f` until it holds, for at most 5 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}

#[tokio::test]
async fn stalled_frames_hold_what_arrived_and_the_server_stays_responsive() {
    let s = TestServer::start(&config("max_message_size = 1000000", "")).await;
    let url = s.ws_url(KEY, CLIENT_QUERY);
    // 200 sockets each declare a 1 MB message and send 10 bytes of it: 200 MB claimed.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut ws = Client::raw(&url).await;
        let mut bytes = text_header(1_000_000);
        bytes.extend_from_slice(b"{\"event\":\"");
        write_raw(&mut ws, &bytes).await;
        stalled.push(ws);
    }
    let budgets = &s.state.budgets;
    eventually("every stalled frame is read as far as it arrived", || {
        budgets.partial_message_bytes() == 200 * 4096
    })
    .await;
    // Each holds one first chunk, within its allowance: none of it is charged to the budget.
    assert_eq!(budgets.partial_message_charged(), 0);
    assert_eq!(
        sample(&s, "resound_partial_message_bytes").await,
        f64::from(200 * 4096)
    );

    // Everyone else is served as usual.
    let mut c = s.client().await;
    c.subscribe("news").await;
    assert_eq!(s.api().trigger(&["news"], "e", "{}").await.status, 200);
    assert_eq!(c.recv_event("e").await["channel"], "news");

    drop(stalled);
    eventually("released when the stalled sockets leave", || {
        budgets.partial_message_bytes() == 0
    })
    .await;
}

#[tokio::test]
async fn a_spent_partial_message_budget_closes_the_socket_that_needs_more_with_4100() {
    let s = TestServer::start(&config("max_message_size = 1000000", "").replace(
        "shutdown_grace_period = 2\n",
        "shutdown_grace_period = 2\npartial_message_node_bytes = 262144\n",
    ))
    .await;
    let url = s.ws_url(KEY, CLIENT_QUERY);
    let budgets = &s.state.budgets;
    // Each socket sends 100 KB of a 200 KB message: its buffer reaches 128 KiB, of which all
    // but the 4 KiB allowance is charged. The budget (256 KiB) has room for two.
    let per_socket = 131_072 - 4096;
    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut ws = Client::raw(&url).await;
        let mut bytes = text_header(200_000);
        bytes.extend(std::iter::repeat_n(b' ', 100_000));
        write_raw(&mut ws, &bytes).await;
        if i < 2 {
            eventually("the socket's bytes are read", || {
                budgets.partial_message_charged() == (i + 1) * per_socket
            })
            .await;
        }
        sockets.push(ws);
    }
    let app = format!("app_id=\"{APP_ID}\"");
    sample_reaches(
        &s,
        "resound_budget_disconnects_total{budget=\"partial_messages\"}",
        1.0,
    )
    .await;
    sample_reaches(
        &s,
        &format!("resound_new_disconnections_total{{{app},code=\"4100\"}}"),
        1.0,
    )
    .await;
    let third = sockets.pop().expect("third");
    let mut third = third;
    assert_eq!(closed_code(&mut third).await, Some(4100));
    assert_eq!(budgets.partial_message_charged(), 2 * per_socket);
    sample_reaches(&s, &format!("resound_connected{{{app}}}"), 2.0).await;

    // Ordinary messages need no budget: a new client is served while it is spent.
    let mut c = s.client().await;
    c.subscribe("news").await;
    c.assert_alive("served while the budget is spent").await;
    drop(sockets);
}

#[tokio::test]
async fn unsolicited_pong_frames_do_not_keep_a_silent_client_alive() {
    let s = TestServer::start(&config("activity_timeout = 1\npong_timeout = 1", "")).await;
    let mut c = s.client().await;
    // Pong frames every 200 ms for 3.5 s, reading nothing: well past ping + pong timeout.
    for _ in 0..17 {
        if c.ws.send(Message::Pong(Vec::new().into())).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Read through the server's metrics: once closed, our pongs may have been answered by a
    // reset that discards what the socket received.
    sample_reaches(
        &s,
        &format!("resound_new_disconnections_total{{app_id=\"{APP_ID}\",code=\"4201\"}}"),
        1.0,
    )
    .await;
}

/// A client whose socket advertises a small receive window, so what it does not read stays in
/// the server's queue instead of the kernel's buffers.
async fn small_window_client(s: &TestServer) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(s.addr).await.expect("connect");
    let (ws, _) =
        tokio_tungstenite::client_async(s.ws_url(KEY, CLIENT_QUERY), MaybeTlsStream::Plain(tcp))
            .await
            .expect("handshake");
    let mut c = Client {
        ws,
        socket_id: String::new(),
        established: serde_json::Value::Null,
    };
    let ev = c.recv().await;
    let data = data_json(&ev);
    c.socket_id = data["socket_id"].as_str().expect("socket_id").to_string();
    c.established = data;
    c
}

/// Polls a sample of the server's metrics until it equals `want`, for at most 10 s.
async fn sample_reaches(s: &TestServer, name: &str, want: f64) {
    let mut last = None;
    for _ in 0..200 {
        let text = raw_request("GET", &s.url("/metrics"), String::new())
            .await
            .text;
        last = text
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}: {last:?}, expected {want}");
}

#[tokio::test]
async fn members_that_never_read_are_cut_at_the_byte_bound_while_a_reader_gets_everything() {
    // Default queue bounds: 1024 frames, 1 MiB. 100 events of 100 KB (10 MB) stay far below
    // the frame bound and far above the byte bound (and the kernel's buffers).
    let s = TestServer::start(&config(
        "max_event_payload_bytes = 200000\nmax_http_body_bytes = 2000000",
        "",
    ))
    .await;
    let channel = "presence-room";
    let mut reader = s.client().await;
    reader
        .subscribe_presence(channel, r#"{"user_id":"reader"}"#)
        .await;
    let mut silent = Vec::new();
    for i in 0..3 {
        let mut c = small_window_client(&s).await;
        c.subscribe_presence(channel, &format!(r#"{{"user_id":"silent-{i}"}}"#))
            .await;
        silent.push(c);
    }

    let api = s.api();
    let publisher = tokio::spawn(async move {
        for i in 0..100 {
            let data = format!("{i:03}{}", "x".repeat(100_000));
            assert_eq!(api.trigger(&[channel], "big", &data).await.status, 200);
        }
    });
    for i in 0..100 {
        let ev = reader.recv_event("big").await;
        let data = ev["data"].as_str().expect("data");
        assert_eq!(&data[..3], format!("{i:03}"), "every event, in order");
        assert_eq!(data.len(), 100_003);
    }
    publisher.await.expect("publisher");

    let app = format!("app_id=\"{APP_ID}\"");
    sample_reaches(
        &s,
        &format!("resound_slow_consumer_disconnects_total{{{app}}}"),
        3.0,
    )
    .await;
    sample_reaches(
        &s,
        &format!("resound_new_disconnections_total{{{app},code=\"4100\"}}"),
        3.0,
    )
    .await;
    reader.assert_alive("the reader is kept").await;
    // What the silent members pinned is given back.
    let budgets = &s.state.budgets;
    eventually("no outbound budget left reserved", || {
        budgets.outbound_reserved_bytes() == 0
    })
    .await;
    drop(silent);
}

/// Opens a WebSocket to `s` as if a proxy had forwarded it for `client`.
async fn connect_forwarded(s: &TestServer, client: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = s
        .ws_url(KEY, CLIENT_QUERY)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "x-forwarded-for",
        format!("203.0.113.9, {client}").parse().expect("header"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("connect")
        .0
}

/// `server.max_connections_per_ip` counts open WebSockets per client address (the proxy's
/// last `X-Forwarded-For` entry with `client_ip_header`): one over it is refused 4100 while
/// other addresses connect, and a closed socket makes room again.
#[tokio::test]
async fn connections_per_client_address_are_capped() {
    let s = TestServer::start(
        &TestConfig::new()
            .server_setting("max_connections_per_ip", 2u32)
            .server_setting("client_ip_header", "x-forwarded-for")
            .toml(),
    )
    .await;
    let mut first = connect_forwarded(&s, "198.51.100.1").await;
    assert_eq!(
        next_json(&mut first).await.expect("established")["event"],
        "pusher:connection_established"
    );
    let mut second = connect_forwarded(&s, "198.51.100.1").await;
    assert_eq!(
        next_json(&mut second).await.expect("established")["event"],
        "pusher:connection_established"
    );
    let mut third = connect_forwarded(&s, "198.51.100.1").await;
    let refused = next_json(&mut third).await.expect("an error");
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(refused["data"]["code"], 4100);
    assert_eq!(closed_code(&mut third).await, Some(4100));
    let mut other = connect_forwarded(&s, "198.51.100.2").await;
    assert_eq!(
        next_json(&mut other).await.expect("established")["event"],
        "pusher:connection_established"
    );
    assert_eq!(
        sample(&s, "resound_admission_refused_total{limit=\"per_ip\"}").await,
        1.0
    );
    first.close(None).await.expect("close");
    drop(first);
    // The server notices the close, then the address has room again.
    let mut admitted = false;
    for _ in 0..50 {
        let mut again = connect_forwarded(&s, "198.51.100.1").await;
        if next_json(&mut again).await.expect("a message")["event"]
            == "pusher:connection_established"
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "a closed socket gives its address's slot back");
}

/// Above `server.max_memory_bytes` of resident memory, new WebSockets are refused with 4100
/// (the client backs off) and counted; the HTTP API keeps answering.
#[tokio::test]
async fn new_sockets_are_refused_above_the_memory_limit() {
    let s = TestServer::start(
        &TestConfig::new()
            .server_setting("max_memory_bytes", 1_048_576u64)
            .toml(),
    )
    .await;
    let mut ws = Client::raw(&s.ws_url(KEY, CLIENT_QUERY)).await;
    let refused = next_json(&mut ws).await.expect("an error");
    assert_eq!(refused["data"]["code"], 4100, "{refused}");
    assert_eq!(closed_code(&mut ws).await, Some(4100));
    assert_eq!(
        sample(&s, "resound_admission_refused_total{limit=\"memory\"}").await,
        1.0
    );
    assert!(sample(&s, "process_resident_memory_bytes").await > 1_048_576.0);
    assert_eq!(s.api().get("/channels", &[]).await.status, 200);
}
