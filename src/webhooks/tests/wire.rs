//! The wire format against real HTTP receivers on 127.0.0.1, and the official Node SDK's
//! validator as a receiver.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

// ---------------------------------------------------------------------------------------
// Wire format against a real receiver

#[tokio::test]
async fn real_receiver_gets_every_kind_with_the_right_fields_and_headers() {
    let mut receiver = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let registry = Registry::new();
    let webhooks = Webhooks::start(
        DispatcherSettings::default(),
        &registry,
        "resound_webhooks",
        None,
    )
    .unwrap();
    let mut hook = target(&receiver.url);
    hook.headers = vec![
        ("X-Custom".into(), "yes".into()),
        ("X-Pusher-Key".into(), "forged".into()),
        ("content-type".into(), "text/plain".into()),
    ];
    let app = Arc::new(AppWebhooks {
        removal_delay: Duration::ZERO,
        ..app(vec![hook])
    });

    let expected = one_of_each();
    for event in &expected {
        webhooks.emit(&app, event.clone());
    }

    let mut received = Vec::new();
    for _ in 0..expected.len() {
        let request = receiver.next().await;
        assert_eq!(request.uri.path(), "/hooks");
        assert_eq!(request.uri.query(), Some("token=abc"));
        assert_eq!(request.headers["x-custom"], "yes");
        let events = check_signed(&request);
        assert_eq!(events.len(), 1, "batching is off: one event per request");
        received.extend(events);
        // The raw JSON carries user_id only where protocol.md 6.2 lists it.
        let raw: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let event = &raw["events"][0];
        let has_user = event.get("user_id").is_some();
        match event["name"].as_str().unwrap() {
            "member_added" | "member_removed" => assert!(has_user),
            "client_event" => {
                assert!(event["data"].is_string());
                assert_eq!(has_user, event["channel"] == "presence-room");
            }
            _ => assert!(!has_user),
        }
    }
    assert_eq!(sorted(received), sorted(expected.clone()));
    receiver.assert_quiet(Duration::from_millis(100)).await;

    let sent = counter(
        &registry,
        "resound_webhooks_sent_total",
        &[("app_id", APP_ID)],
    );
    assert_eq!(sent, expected.len() as f64);
    webhooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn each_url_gets_only_its_own_events_signed_as_received() {
    let mut chat = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let mut orders = Receiver::start(Vec::new(), Reply::Status(204)).await;
    let webhooks =
        Webhooks::start(DispatcherSettings::default(), &Registry::new(), "w", None).unwrap();
    let chat_target = WebhookTarget {
        event_types: vec![WebhookKind::ClientEvent],
        channel_prefix: Some("private-".into()),
        ..target(&chat.url)
    };
    let orders_target = WebhookTarget {
        event_types: vec![WebhookKind::ChannelOccupied],
        channel_suffix: Some("-orders".into()),
        ..target(&orders.url)
    };
    let app = Arc::new(AppWebhooks {
        batching: true,
        removal_delay: Duration::ZERO,
        ..app(vec![chat_target, orders_target])
    });
    let wanted_by_chat = [
        client_event("private-a", "1", None),
        client_event("private-a", "2", None),
    ];
    let noise = [
        client_event("presence-a", "3", Some("9")),
        occupied("private-a"),
        occupied("eu-carts"),
        vacated("eu-orders"),
    ];
    webhooks.emit(&app, wanted_by_chat[0].clone());
    for event in &noise {
        webhooks.emit(&app, event.clone());
    }
    webhooks.emit(&app, occupied("eu-orders"));
    webhooks.emit(&app, wanted_by_chat[1].clone());

    // Same channel, same lane, inside one 50 ms window: one request with both.
    let request = chat.next().await;
    assert_eq!(check_signed(&request), wanted_by_chat);
    let request = orders.next().await;
    assert_eq!(check_signed(&request), [occupied("eu-orders")]);
    chat.assert_quiet(Duration::from_millis(150)).await;
    orders.assert_quiet(Duration::ZERO).await;
}

#[tokio::test]
async fn delayed_vacate_is_cancelled_by_a_quick_reoccupy_and_sent_otherwise() {
    let mut receiver = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let webhooks =
        Webhooks::start(DispatcherSettings::default(), &Registry::new(), "w", None).unwrap();
    let delay = Duration::from_millis(300);
    let app = Arc::new(AppWebhooks {
        removal_delay: delay,
        ..app(vec![target(&receiver.url)])
    });

    webhooks.emit(&app, vacated("a"));
    webhooks.emit(&app, removed("presence-a", "1"));
    webhooks.emit(&app, added("presence-a", "1"));
    webhooks.emit(&app, occupied("a"));
    receiver.assert_quiet(delay * 2).await;

    let start = Instant::now();
    webhooks.emit(&app, vacated("a"));
    let request = receiver.next().await;
    assert!(start.elapsed() >= delay, "sent after {:?}", start.elapsed());
    assert_eq!(check_signed(&request), [vacated("a")]);
    receiver.assert_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_batch_answered_500_500_200_arrives_exactly_three_times() {
    let script = vec![Reply::Status(500), Reply::Status(500), Reply::Status(200)];
    let mut receiver = Receiver::start(script, Reply::Status(200)).await;
    let registry = Registry::new();
    let webhooks = Webhooks::start(fast_retries(), &registry, "w", None).unwrap();
    let app = Arc::new(AppWebhooks {
        batching: true,
        ..app(vec![target(&receiver.url)])
    });
    let batch = vec![
        client_event("private-a", "1", None),
        client_event("private-a", "2", None),
        client_event("private-a", "3", None),
    ];
    for event in &batch {
        webhooks.emit(&app, event.clone());
    }
    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    for request in [&first, &second, &third] {
        assert_eq!(check_signed(request), batch);
        // Retries resend the signed bytes unchanged.
        assert_eq!(request.body, first.body);
        assert_eq!(
            request.headers["x-pusher-signature"],
            first.headers["x-pusher-signature"]
        );
    }
    receiver.assert_quiet(Duration::from_millis(400)).await;
    let labels = [("app_id", APP_ID)];
    assert_eq!(counter(&registry, "w_sent_total", &labels), 1.0);
    assert_eq!(counter(&registry, "w_retried_total", &labels), 2.0);
    assert_eq!(counter(&registry, "w_failed_total", &labels), 0.0);
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let mut receiver = Receiver::start(vec![Reply::Status(400)], Reply::Status(200)).await;
    let registry = Registry::new();
    let webhooks = Webhooks::start(fast_retries(), &registry, "w", None).unwrap();
    let app = Arc::new(app(vec![target(&receiver.url)]));
    webhooks.emit(&app, occupied("a"));
    assert_eq!(check_signed(&receiver.next().await), [occupied("a")]);
    receiver.assert_quiet(Duration::from_millis(400)).await;
    let labels = [("app_id", APP_ID)];
    assert_eq!(counter(&registry, "w_failed_total", &labels), 1.0);
    assert_eq!(counter(&registry, "w_retried_total", &labels), 0.0);
    assert_eq!(counter(&registry, "w_sent_total", &labels), 0.0);
}

#[tokio::test]
async fn a_burst_to_a_refused_receiver_never_waits_and_overflow_is_counted() {
    // A port that was just free: connections to it are refused.
    let refused_url = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/hooks", listener.local_addr().unwrap())
    };
    let mut healthy = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let registry = Registry::new();
    let settings = DispatcherSettings {
        queue_capacity: 100,
        ..DispatcherSettings::default()
    };
    let webhooks = Webhooks::start(settings, &registry, "w", None).unwrap();
    let dead_app = Arc::new(app(vec![target(&refused_url)]));
    let healthy_app = Arc::new(AppWebhooks::new(
        "other",
        KEY,
        SECRET,
        vec![target(&healthy.url)],
    ));

    // emit is synchronous and this test runs on one thread, so the dispatcher cannot run
    // during the loop: exactly the queue's capacity is accepted and the rest dropped.
    for i in 0..1000 {
        webhooks.emit(&dead_app, client_event("private-a", &i.to_string(), None));
    }
    let dead = [("app_id", APP_ID)];
    assert_eq!(counter(&registry, "w_queue_depth", &dead), 100.0);
    assert_eq!(
        counter(
            &registry,
            "w_dropped_total",
            &[("app_id", APP_ID), ("reason", "queue_full")]
        ),
        900.0
    );

    // Another app is not held up by the dead receiver's retries.
    webhooks.emit(&healthy_app, occupied("b"));
    assert_eq!(check_signed(&healthy.next().await), [occupied("b")]);

    // Shutdown is bounded by its grace even though 100 requests are retrying.
    let start = Instant::now();
    webhooks.shutdown(Duration::from_millis(200)).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(counter(&registry, "w_queue_depth", &dead), 0.0);
    webhooks.emit(&dead_app, occupied("c"));
    webhooks.emit(&healthy_app, occupied("c"));
    let shutdown_drops = counter(&registry, "w_dropped_total", &[("reason", "shutdown")]);
    assert_eq!(shutdown_drops, 2.0);
}

#[tokio::test]
async fn a_hanging_receiver_does_not_hold_up_the_other_target() {
    let hanging = Receiver::start(Vec::new(), Reply::Hang).await;
    let mut healthy = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let registry = Registry::new();
    let webhooks = Webhooks::start(DispatcherSettings::default(), &registry, "w", None).unwrap();
    let app = Arc::new(AppWebhooks {
        batching: true,
        ..app(vec![target(&hanging.url), target(&healthy.url)])
    });
    for i in 0..1000 {
        webhooks.emit(&app, client_event("private-a", &i.to_string(), None));
    }
    assert_eq!(
        counter(&registry, "w_queue_depth", &[("app_id", APP_ID)]),
        1000.0
    );
    let mut delivered = 0;
    while delivered < 1000 {
        let events = check_signed(&healthy.next().await);
        assert!(events.len() <= DEFAULT_BATCH_MAX_EVENTS);
        delivered += events.len();
    }
    assert_eq!(delivered, 1000);
    assert_eq!(counter(&registry, "w_dropped_total", &[]), 0.0);
    drop(hanging);
}

// ---------------------------------------------------------------------------------------
// The official Node SDK as the receiver

#[tokio::test]
#[ignore = "needs node, `npm ci` in tests/webhook-validator/, and WEBHOOK_NODE_VALIDATOR=<path to validate.mjs>"]
async fn node_sdk_validates_every_webhook() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    // Run by scripts/test, which installs the validator and sets the variable.
    let script = std::env::var("WEBHOOK_NODE_VALIDATOR")
        .expect("WEBHOOK_NODE_VALIDATOR must point at tests/webhook-validator/validate.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .args(["0", APP_ID, KEY, SECRET])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
        .await
        .expect("validator ready within 20 s")
        .unwrap()
        .expect("validator printed its address");
    let address = ready.strip_prefix("listening on ").expect("listening line");
    let url = format!("http://{address}/webhooks");

    let webhooks =
        Webhooks::start(DispatcherSettings::default(), &Registry::new(), "w", None).unwrap();
    let single = Arc::new(AppWebhooks {
        removal_delay: Duration::ZERO,
        ..app(vec![target(&url)])
    });
    let batched = Arc::new(AppWebhooks {
        app_id: "3-batched".into(),
        batching: true,
        removal_delay: Duration::ZERO,
        ..app(vec![target(&url)])
    });
    let events = one_of_each();
    let batch: Vec<_> = (0..20)
        .map(|i| {
            client_event(
                "presence-room",
                &format!(r#"{{"n":{i},"s":"ünï \"q\""}}"#),
                Some("7"),
            )
        })
        .collect();
    for event in &events {
        webhooks.emit(&single, event.clone());
    }
    for event in &batch {
        webhooks.emit(&batched, event.clone());
    }

    let mut seen = Vec::new();
    let mut requests = 0;
    let expected_total = events.len() + batch.len();
    while seen.len() < expected_total {
        let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
            .await
            .expect("validator output within 20 s")
            .unwrap()
            .expect("validator still running");
        let verdict: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(verdict["valid"], true, "{line}");
        assert_eq!(verdict["fresh"], true, "{line}");
        assert_eq!(verdict["content_type"], "application/json", "{line}");
        let batch_events: Vec<WebhookEvent> =
            serde_json::from_value(verdict["events"].clone()).unwrap();
        seen.extend(batch_events);
        requests += 1;
    }
    assert_eq!(
        sorted(seen),
        sorted(events.iter().chain(&batch).cloned().collect())
    );
    assert!(requests < expected_total, "the batched app shared requests");

    // The validator is not a rubber stamp: a charset in Content-Type, or a body changed
    // after signing, is refused.
    let (endpoint, _) = endpoint::Endpoint::prepare(&target(&url)).unwrap();
    let good = payload::build_request(
        &endpoint,
        KEY,
        SECRET,
        payload::unix_time_ms(),
        &events[..1],
    )
    .unwrap();
    let mut charset = good.clone();
    charset.headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let mut tampered = good.clone();
    tampered.body = Bytes::from(
        String::from_utf8(good.body.to_vec())
            .unwrap()
            .replace("ch-", "xx-"),
    );
    let transport = transport::HyperTransport::new(1, None).unwrap();
    for request in [&charset, &tampered] {
        let status = transport.post(request).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let line = stdout.next_line().await.unwrap().unwrap();
        let verdict: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(verdict["valid"], false, "{line}");
    }
    eprintln!("node validator accepted {requests} requests carrying {expected_total} events");
    webhooks.shutdown(Duration::from_secs(1)).await;
    let _ = child.kill().await;
}
