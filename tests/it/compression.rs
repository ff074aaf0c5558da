//! `permessage-deflate` (protocol.md 1.5, D41) seen from the socket: a raw client that offers
//! the extension (or not) and reads every frame with its reserved bits, so the tests see what a
//! browser's WebSocket would hide — RSV1, the compressed bytes, the close codes.

use flate2::{Decompress, FlushDecompress};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const QUERY: &str = "protocol=7&client=js&version=8.4.0&flash=false";

/// A WebSocket client written by hand: the handshake with an optional extension offer, masked
/// frames out with any first byte, frames in with their reserved bits.
struct RawWs {
    tcp: TcpStream,
    /// The server's `Sec-WebSocket-Extensions` answer.
    extensions: Option<String>,
}

/// One frame from the server.
#[derive(Debug)]
struct Frame {
    first: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn rsv1(&self) -> bool {
        self.first & 0x40 != 0
    }
    fn opcode(&self) -> u8 {
        self.first & 0x0F
    }
}

impl RawWs {
    async fn connect(s: &TestServer, key: &str, offer: Option<&str>) -> RawWs {
        let mut tcp = TcpStream::connect(s.addr).await.expect("connect");
        let offer = offer.map_or(String::new(), |o| {
            format!("Sec-WebSocket-Extensions: {o}\r\n")
        });
        let req = format!(
            "GET /app/{key}?{QUERY} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
            s.addr
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        // The response head, byte by byte so nothing of the first frame is consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = tcp.read_u8().await.expect("response head");
            head.push(b);
        }
        let head = String::from_utf8(head).expect("ascii head");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_string())
        });
        RawWs { tcp, extensions }
    }

    /// Connects and reads `connection_established`.
    async fn established(s: &TestServer, offer: Option<&str>) -> RawWs {
        let mut ws = RawWs::connect(s, KEY, offer).await;
        let f = ws.frame().await;
        let ev: Value = serde_json::from_slice(&f.payload).expect("json");
        assert_eq!(ev["event"], "pusher:connection_established");
        ws
    }

    async fn frame(&mut self) -> Frame {
        tokio::time::timeout(WAIT, async {
            let first = self.tcp.read_u8().await.expect("frame");
            let len7 = self.tcp.read_u8().await.expect("frame") & 0x7F;
            let len = match len7 {
                126 => u64::from(self.tcp.read_u16().await.expect("len")),
                127 => self.tcp.read_u64().await.expect("len"),
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            self.tcp.read_exact(&mut payload).await.expect("payload");
            Frame { first, payload }
        })
        .await
        .expect("a frame within the wait")
    }

    /// The next text message as JSON, inflated when it came compressed; and whether it did.
    async fn message(&mut self) -> (Value, bool) {
        let f = self.frame().await;
        assert_eq!(f.opcode(), 1, "text frame: {f:?}");
        assert!(f.first & 0x80 != 0, "server messages are one final frame");
        let compressed = f.rsv1();
        let bytes = if compressed {
            inflate(&f.payload)
        } else {
            f.payload
        };
        (serde_json::from_slice(&bytes).expect("json"), compressed)
    }

    /// Sends one masked frame with the given first byte.
    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x11u8, 0x22, 0x33, 0x44];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.tcp.write_all(&out).await.expect("write");
    }

    async fn send_json(&mut self, v: &Value) {
        self.send_frame(0x81, v.to_string().as_bytes()).await;
    }

    /// Reads until the close frame; its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let f = self.frame().await;
            if f.opcode() == 8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        self.send_json(&json!({"event": "pusher:subscribe", "data": {"channel": channel}}))
            .await;
        let (ev, _) = self.message().await;
        assert_eq!(
            ev["event"], "pusher_internal:subscription_succeeded",
            "{ev}"
        );
    }

    /// A `pusher:ping` gets its `pusher:pong`: the connection is open and reading.
    async fn assert_alive(&mut self) {
        self.send_json(&json!({"event": "pusher:ping", "data": {}}))
            .await;
        let (ev, _) = self.message().await;
        assert_eq!(ev["event"], "pusher:pong", "{ev}");
    }
}

/// A compressed message's payload inflated (RFC 7692 7.2.2: the tail put back first).
fn inflate(z: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = z.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(z.len() * 20 + 1024);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("inflates");
    assert_eq!(d.total_in() as usize, input.len(), "output room was enough");
    out
}

/// `plain` compressed as a client would (raw deflate, sync flush, tail removed).
fn deflate(plain: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(plain.len() + 1024);
    c.compress_vec(plain, &mut out, flate2::FlushCompress::Sync)
        .expect("deflates");
    assert_eq!(c.total_in() as usize, plain.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Repetitive JSON of about `n` bytes, as dashboards publish.
fn dashboard(n: usize) -> String {
    let mut rows = Vec::new();
    let mut i = 0;
    while serde_json::to_string(&rows).expect("json").len() < n {
        rows.push(json!({"id": i, "symbol": format!("SYM{}", i % 20), "price": i * 7 % 1000}));
        i += 1;
    }
    serde_json::to_string(&rows).expect("json")
}

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[tokio::test]
async fn a_large_event_is_compressed_once_for_every_deflate_socket_and_plain_for_the_others() {
    let s = TestServer::default().await;
    let mut zipped = Vec::new();
    for offer in [
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate",
    ] {
        let ws = RawWs::established(&s, Some(offer)).await;
        assert_eq!(ws.extensions.as_deref(), Some(ANSWER));
        zipped.push(ws);
    }
    let mut plain = RawWs::established(&s, None).await;
    assert_eq!(plain.extensions, None, "no offer, no extension");
    for ws in zipped.iter_mut().chain([&mut plain]) {
        ws.subscribe("dashboard").await;
    }
    let data = dashboard(4096);
    assert_eq!(
        s.api()
            .trigger(&["dashboard"], "update", &data)
            .await
            .status,
        200
    );

    let (expected, compressed) = plain.message().await;
    assert!(!compressed);
    assert_eq!(expected["data"], data.as_str());
    let mut wire = Vec::new();
    for ws in &mut zipped {
        let f = ws.frame().await;
        assert_eq!(f.first, 0xC1, "FIN, RSV1, text: {:#x}", f.first);
        assert!(
            f.payload.len() * 3 < data.len(),
            "{} bytes",
            f.payload.len()
        );
        let got: Value = serde_json::from_slice(&inflate(&f.payload)).expect("json");
        assert_eq!(got, expected, "the same message as the plain socket's");
        wire.push(f.payload);
    }
    assert_eq!(wire[0], wire[1], "the same compressed bytes for both");
    let m = &s.state.metrics.compression;
    assert_eq!(m.frames.get(), 1, "compressed once for both sockets");
    assert_eq!(m.output_bytes.get(), wire[0].len() as u64);

    // Under the threshold: plain for everyone.
    s.api().trigger(&["dashboard"], "tick", "{}").await;
    for ws in zipped.iter_mut().chain([&mut plain]) {
        let (ev, compressed) = ws.message().await;
        assert_eq!(ev["event"], "tick");
        assert!(!compressed, "a small frame goes uncompressed");
    }
    assert_eq!(m.frames.get(), 1);
}

#[tokio::test]
async fn compressed_client_messages_are_inflated_whole_or_fragmented() {
    let s = TestServer::default().await;
    let mut ws = RawWs::established(&s, Some("permessage-deflate")).await;
    let ping = deflate(br#"{"event":"pusher:ping","data":{}}"#);
    ws.send_frame(0xC1, &ping).await;
    let (ev, _) = ws.message().await;
    assert_eq!(ev["event"], "pusher:pong");
    // Fragmented: RSV1 on the first frame only.
    let (a, b) = ping.split_at(ping.len() / 2);
    ws.send_frame(0x41, a).await;
    ws.send_frame(0x80, b).await;
    let (ev, _) = ws.message().await;
    assert_eq!(ev["event"], "pusher:pong");
    // RSV1 on a continuation frame is a protocol error.
    ws.send_frame(0x41, a).await;
    ws.send_frame(0xC0, b).await;
    assert_eq!(ws.close_code().await, 1002);
}

#[tokio::test]
async fn a_deflate_bomb_closes_1009() {
    let s = TestServer::start(&config("max_message_size = 10000", "")).await;
    let mut ws = RawWs::established(&s, Some("permessage-deflate")).await;
    let mut bomb = br#"{"event":"pusher:ping","data":""#.to_vec();
    bomb.resize(5_000_000, b' ');
    let z = deflate(&bomb);
    assert!(
        z.len() < 10_000,
        "the compressed bomb fits the limit: {}",
        z.len()
    );
    ws.send_frame(0xC1, &z).await;
    assert_eq!(ws.close_code().await, 1009);
}

#[tokio::test]
async fn compression_off_declines_the_offer_and_refuses_rsv1() {
    let s = TestServer::start(&config("compression = \"off\"", "")).await;
    let mut ws = RawWs::established(&s, Some("permessage-deflate")).await;
    assert_eq!(ws.extensions, None);
    ws.subscribe("dashboard").await;
    s.api()
        .trigger(&["dashboard"], "update", &dashboard(4096))
        .await;
    let (_, compressed) = ws.message().await;
    assert!(!compressed);
    ws.assert_alive().await;
    ws.send_frame(0xC1, &deflate(b"{}")).await;
    assert_eq!(ws.close_code().await, 1002);
}

#[tokio::test]
async fn an_unsatisfiable_offer_is_declined_and_the_next_one_accepted() {
    let s = TestServer::default().await;
    let ws = RawWs::established(&s, Some("permessage-deflate; server_max_window_bits=10")).await;
    assert_eq!(ws.extensions, None);
    let ws = RawWs::established(
        &s,
        Some("permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits"),
    )
    .await;
    assert_eq!(ws.extensions.as_deref(), Some(ANSWER));
}

#[tokio::test]
async fn a_frame_from_another_node_is_compressed_once_by_the_node_that_delivers_it() {
    use crate::cluster_support::{cluster_config, listening_pair, prefix, REDIS};
    let (a, b, mut plain) = listening_pair(&cluster_config(&prefix(), REDIS, "")).await;
    let mut zipped = RawWs::established(&b, Some("permessage-deflate")).await;
    zipped.subscribe("live").await;
    let data = dashboard(4096);
    assert_eq!(
        a.api().trigger(&["live"], "update", &data).await.status,
        200
    );
    assert_eq!(plain.recv_event("update").await["data"], data.as_str());
    let f = zipped.frame().await;
    assert_eq!(f.first, 0xC1, "FIN, RSV1, text: {:#x}", f.first);
    let got: Value = serde_json::from_slice(&inflate(&f.payload)).expect("json");
    assert_eq!(got["data"], data.as_str());
    assert_eq!(b.state.metrics.compression.frames.get(), 1);
    assert_eq!(
        a.state.metrics.compression.frames.get(),
        0,
        "the publishing node has no subscriber to compress for"
    );
}
