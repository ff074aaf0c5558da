//! Live reload: apps added, changed (secret rotation), disabled and removed by reloading the
//! configuration file, with the sockets already open staying connected; and SIGHUP on the real
//! binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use resound::protocol::auth::{channel_string_to_sign, sign_token};
use serde_json::json;

use crate::support::*;

const HEAD: &str = "[server]\nhost = \"127.0.0.1\"\nport = 0\nshutdown_grace_period = 2\n";

fn app(id: &str, key: &str, secret: &str, extra: &str) -> String {
    format!(
        "\n[[apps]]\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"{secret}\"\nenable_client_messages = true\n{extra}\n"
    )
}

/// A client of the app `key` on `server`.
async fn client_of(server: &TestServer, key: &str) -> Client {
    Client::connect(&server.ws_url(key, "protocol=7&client=js&version=8.4.0&flash=false")).await
}

async fn subscribe_signed(c: &mut Client, key: &str, secret: &str, channel: &str) -> String {
    let auth = sign_token(key, secret, &channel_string_to_sign(c.sid(), channel, None));
    c.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":channel}}))
        .await;
    c.recv().await["event"].as_str().unwrap_or("").to_string()
}

fn api(server: &TestServer, id: &str, key: &str, secret: &str) -> Api {
    Api {
        base: format!("http://{}", server.addr),
        app_id: id.into(),
        key: key.into(),
        secret: secret.into(),
    }
}

/// A secret rotated by a reload applies to sockets already open (channel auth) and to the
/// HTTP API, the previous secret is accepted until its deadline, an added app serves at once,
/// a removed app's sockets close with 4001 and a disabled app's with 4003; other sockets stay.
#[tokio::test]
async fn a_reload_changes_apps_without_dropping_sockets() {
    let before = format!(
        "{HEAD}{}{}{}",
        app(APP_ID, KEY, SECRET, ""),
        app("2002", "gone-key", "gone-secret", ""),
        app("3003", "off-key", "off-secret", "")
    );
    let mut server = TestServer::start(&before).await;
    let mut kept = server.client().await;
    assert_eq!(
        subscribe_signed(&mut kept, KEY, SECRET, "private-a").await,
        "pusher_internal:subscription_succeeded"
    );
    let mut gone = client_of(&server, "gone-key").await;
    let mut off = client_of(&server, "off-key").await;
    assert_eq!(
        Client::try_connect_code(&server.ws_url("new-key", "protocol=7")).await,
        Some(4001),
        "unknown before the reload"
    );

    let until = "2099-01-01T00:00:00Z";
    let after = format!(
        "{HEAD}{}{}{}",
        app(
            APP_ID,
            KEY,
            "rotated-secret",
            &format!("previous_secret = \"{SECRET}\"\nprevious_secret_until = \"{until}\"")
        ),
        app("3003", "off-key", "off-secret", "enabled = false"),
        app("4004", "new-key", "new-secret", "")
    );
    std::fs::write(&server.config_path, after).expect("write config");
    let done = server.reloader.reload().expect("reload");
    let ids = |apps: &[std::sync::Arc<resound::app::App>]| {
        apps.iter()
            .map(|a| a.id.as_str().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&done.apps.added), ["4004"]);
    let mut changed = ids(&done.apps.changed);
    changed.sort();
    assert_eq!(changed, [APP_ID, "3003"]);
    assert_eq!(ids(&done.apps.removed), ["2002"]);
    assert!(done.need_restart.is_empty(), "{:?}", done.need_restart);

    assert_eq!(gone.closed().await, Some(4001), "removed app");
    assert_eq!(off.closed().await, Some(4003), "disabled app");
    kept.assert_alive("the changed app's socket").await;
    // The same socket: the new secret and, within its grace period, the previous one.
    assert_eq!(
        subscribe_signed(&mut kept, KEY, "rotated-secret", "private-b").await,
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        subscribe_signed(&mut kept, KEY, SECRET, "private-c").await,
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        subscribe_signed(&mut kept, KEY, "wrong", "private-d").await,
        "pusher:error"
    );
    // The HTTP API with either secret reaches the socket.
    for secret in ["rotated-secret", SECRET] {
        let reply = api(&server, APP_ID, KEY, secret)
            .post(
                "/events",
                &json!({"name":"ev","channel":"private-b","data":secret}),
            )
            .await;
        assert_eq!(reply.status, 200, "{secret}: {}", reply.text);
        let ev = kept.recv_event("ev").await;
        assert_eq!(ev["data"], secret);
    }
    // The added app serves; the removed one is unknown.
    let mut fresh = client_of(&server, "new-key").await;
    fresh.subscribe("public").await;
    let reply = api(&server, "4004", "new-key", "new-secret")
        .post(
            "/events",
            &json!({"name":"hi","channel":"public","data":"{}"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    fresh.recv_event("hi").await;
    assert_eq!(
        api(&server, "2002", "gone-key", "gone-secret")
            .get("/channels", &[])
            .await
            .status,
        404
    );

    // A setting outside the apps is named and not applied.
    let moved = format!(
        "{}\n",
        std::fs::read_to_string(&server.config_path)
            .expect("read")
            .replace("port = 0", "port = 1")
    );
    std::fs::write(&server.config_path, moved).expect("write config");
    let done = server.reloader.reload().expect("reload");
    assert_eq!(done.need_restart, ["server.port"]);
    assert!(done.apps.changed.is_empty() && done.apps.added.is_empty());
    // A configuration that does not load changes nothing.
    std::fs::write(&server.config_path, "[[apps]]\nid = 1\n").expect("write config");
    assert!(server.reloader.reload().is_err());
    kept.assert_alive("after a failed reload").await;
    server.stop().await;
}

/// How a test makes the running binary read its configuration file again.
#[derive(Clone, Copy)]
enum Trigger {
    Sighup,
    /// `server.watch_config_ms`: the edit alone.
    Watch,
}

/// The real binary reloads its configuration file (on SIGHUP, or by itself when it watches
/// the file): an app added to the file accepts connections, and the socket open before stays
/// connected.
async fn the_binary_reloads(trigger: Trigger) {
    let dir = std::env::temp_dir().join(format!(
        "resound-reload-{}-{}",
        std::process::id(),
        resound::protocol::SocketId::random()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("resound.toml");
    let head = match trigger {
        Trigger::Sighup => HEAD.to_string(),
        Trigger::Watch => format!("{HEAD}watch_config_ms = 100\n"),
    };
    std::fs::write(&path, format!("{head}{}", app(APP_ID, KEY, SECRET, ""))).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_resound"))
        .arg("--config")
        .arg(&path)
        .env("RESOUND_LOG_FORMAT", "json")
        .env("RESOUND_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn resound");
    let pid = child.id();
    // The address it listens on, from its log.
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("listening") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server logs where it listens");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json log");
    let addr = v["fields"]["addr"].as_str().expect("addr").to_string();
    let ws = |key: &str| format!("ws://{addr}/app/{key}?protocol=7&client=js&version=8.4.0");

    let mut kept = Client::connect(&ws(KEY)).await;
    assert_eq!(Client::try_connect_code(&ws("late-key")).await, Some(4001));
    if let Trigger::Watch = trigger {
        // Nothing changed yet: a watching server must not reload on its own.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(Client::try_connect_code(&ws("late-key")).await, Some(4001));
    }
    std::fs::write(
        &path,
        format!(
            "{head}{}{}",
            app(APP_ID, KEY, SECRET, ""),
            app("5005", "late-key", "late-secret", "")
        ),
    )
    .expect("write");
    if let Trigger::Sighup = trigger {
        let hup = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill -HUP");
        assert!(hup.success());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Client::try_connect_code(&ws("late-key")).await {
            None => break,
            Some(code) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still refused with {code} after the reload"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    kept.assert_alive("the socket open before the reload").await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP to the real binary reloads its configuration file.
#[tokio::test]
async fn sighup_reloads_the_binary_without_dropping_sockets() {
    the_binary_reloads(Trigger::Sighup).await;
}

/// With `server.watch_config_ms`, saving the configuration file is enough.
#[tokio::test]
async fn an_edited_configuration_file_reloads_a_watching_binary() {
    the_binary_reloads(Trigger::Watch).await;
}
