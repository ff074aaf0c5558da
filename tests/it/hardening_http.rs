//! The HTTP edge against hostile or broken clients: sockets that never send a request, unsigned
//! requests that declare a large body, a crowd of connections that never upgrade, and a
//! backend whose errors must not reach HTTP clients.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Whether the server closes `s` within `within` (EOF or a reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// The first response line the server sends on `s` (fails after `within`).
async fn status_line(s: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within {within:?}"));
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn idle_and_slow_header_sockets_are_closed_after_the_header_timeout() {
    let server = TestServer::start(&config("", "").replace(
        "shutdown_grace_period = 2",
        "shutdown_grace_period = 2\nheader_timeout = 1",
    ))
    .await;
    let mut idle = open(server.addr, 50).await;
    let mut slow = open(server.addr, 50).await;
    for s in &mut slow {
        // A request line and one header, never finished.
        s.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
    }
    let started = Instant::now();
    for s in idle.iter_mut().chain(slow.iter_mut()) {
        assert!(
            closed_within(s, Duration::from_secs(4)).await,
            "a socket that sent no complete request stayed open"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    // A prompt request still gets its answer.
    let up = raw_request("GET", &server.url("/up"), String::new()).await;
    assert_eq!(up.status, 200);
}

#[tokio::test]
async fn an_unsigned_post_with_a_large_declared_body_is_refused_before_the_body_is_read() {
    let server = TestServer::default().await;
    let queries = [
        String::new(),
        format!(
            "?auth_key={KEY}&auth_timestamp={}&auth_version=1.0&body_md5=00000000000000000000000000000000&auth_signature=00",
            now()
        ),
    ];
    for q in queries {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /apps/{APP_ID}/events{q} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 262000\r\n\r\n{{\"name\":"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // The rest of the body never comes: the answer must not wait for it.
        let line = status_line(&mut s, Duration::from_secs(2)).await;
        assert!(line.starts_with("HTTP/1.1 401"), "{q}: {line}");
    }
}

#[tokio::test]
async fn a_signed_post_whose_body_stalls_gets_408_after_the_body_timeout() {
    let server = TestServer::start(&config("", "").replace(
        "shutdown_grace_period = 2",
        "shutdown_grace_period = 2\nbody_timeout = 1",
    ))
    .await;
    let body = r#"{"name":"e","channels":["c"],"data":"{}"}"#;
    let path = format!("/apps/{APP_ID}/events");
    let q = resound::protocol::auth::signed_query(
        KEY,
        SECRET,
        "POST",
        &path,
        now(),
        Some(body.as_bytes()),
        &[],
    );
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST {path}?{q} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..5]
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let line = status_line(&mut s, Duration::from_secs(4)).await;
    assert!(line.starts_with("HTTP/1.1 408"), "{line}");
}

fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_pending_cap_sheds_the_oldest_and_up_still_answers() {
    let server = TestServer::start(&config("", "").replace(
        "shutdown_grace_period = 2",
        "shutdown_grace_period = 2\nmax_pending_connections = 20",
    ))
    .await;
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
        // In order, so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = Instant::now();
    let up = raw_request("GET", &server.url("/up"), String::new()).await;
    assert_eq!(up.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // A real client still gets in.
    let mut c = server.client().await;
    c.subscribe("still-served").await;
    let m = raw_request("GET", &server.url("/metrics"), String::new())
        .await
        .text;
    assert!(
        metric(&m, "resound_http_pending_connections ") <= 20.0,
        "{}",
        metric(&m, "resound_http_pending_connections ")
    );
    assert!(metric(&m, "resound_http_pending_shed_total{reason=\"cap\"}") >= 40.0);
    // The oldest were closed; the newest are still open.
    let mut closed = 0;
    for s in &mut idle[..40] {
        if closed_within(s, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 40, "the oldest pending sockets are shed");
    assert!(!closed_within(&mut idle[59], Duration::from_millis(200)).await);
}
struct RedisProc(Child);

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn service_unavailable_bodies_carry_a_fixed_message() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("resound-redis-http-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = RedisProc(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let prefix = format!("it-http-{}", std::process::id());
    let server = TestServer::start(&config("", "").replace(
        "shutdown_grace_period = 2",
        &format!(
            "shutdown_grace_period = 2\n\n[scaling]\nenabled = true\nchannel = \"{prefix}\"\nredis_url = \"redis://127.0.0.1:{port}/0\""
        ),
    ))
    .await;
    assert_eq!(server.api().get("/channels", &[]).await.status, 200);
    drop(redis);
    let deadline = Instant::now() + Duration::from_secs(10);
    for rest in ["/channels", "/channels/c", "/connections"] {
        loop {
            let r = server.api().get(rest, &[]).await;
            if r.status == 503 {
                assert_eq!(
                    r.body,
                    serde_json::json!({"error": "Service unavailable: the cluster backend did not answer", "code": 503}),
                    "{rest}: {}",
                    r.text
                );
                break;
            }
            assert!(Instant::now() < deadline, "{rest}: no 503 ({})", r.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_drain_closes_http_connections_and_ends_when_every_connection_task_did() {
    let mut server = TestServer::start(
        &config("", "").replace("shutdown_grace_period = 2", "shutdown_grace_period = 5"),
    )
    .await;
    let mut ws = server.client().await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut kept_alive = TcpStream::connect(server.addr).await.unwrap();
    kept_alive
        .write_all(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let line = status_line(&mut kept_alive, Duration::from_secs(2)).await;
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let started = Instant::now();
    let stop = tokio::spawn(async move {
        server.stop().await;
    });
    assert_eq!(ws.recv().await["data"]["code"], 4200);
    assert_eq!(ws.closed().await, Some(4200));
    for s in [&mut idle, &mut kept_alive] {
        assert!(
            closed_within(s, Duration::from_secs(2)).await,
            "an HTTP connection outlived the drain"
        );
    }
    tokio::time::timeout(Duration::from_secs(3), stop)
        .await
        .expect("the drain ended once the connections were gone")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Runs out of file descriptors in a real server process (its limit lowered with `prlimit`):
/// the listener sheds the oldest pending connections and `/up` still answers.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn out_of_file_descriptors_the_oldest_pending_are_shed_and_up_answers() {
    let dir = std::env::temp_dir().join(format!("resound-it-fds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resound.toml");
    // A long header timeout, so only the shedding can free descriptors.
    std::fs::write(
        &path,
        config("", "").replace(
            "shutdown_grace_period = 2",
            "shutdown_grace_period = 2\nheader_timeout = 60",
        ),
    )
    .unwrap();
    let server = ServerProcess::start(&path).await;
    let pid = server.child.id();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open_fds + 40;
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit (util-linux) must be installed");
    assert!(status.success());
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let _idle = open(addr, 120).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let up = tokio::time::timeout(
        Duration::from_secs(3),
        raw_request("GET", &format!("http://{addr}/up"), String::new()),
    )
    .await
    .expect("/up answers while descriptors run out");
    assert_eq!(up.status, 200);
    assert!(started.elapsed() < Duration::from_secs(3));
    let m = raw_request("GET", &format!("http://{addr}/metrics"), String::new())
        .await
        .text;
    assert!(
        metric(
            &m,
            "resound_http_pending_shed_total{reason=\"fd_exhausted\"}"
        ) > 0.0
    );
}
