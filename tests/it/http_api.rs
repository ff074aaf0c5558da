//! Spec 10.2 "HTTP API": signing, every endpoint, status codes and body shapes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;
use resound::protocol::auth::{md5_hex, signed_query};

#[tokio::test]
async fn trigger_reaches_subscribers_with_data_untouched_and_replies_empty_object() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    c.subscribe("project-3").await;
    let r = s
        .api()
        .post(
            "/events",
            &json!({"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}),
        )
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, "{}"));
    assert_eq!(
        c.recv().await,
        json!({"event":"foo","channel":"project-3","data":"{\"some\":\"data\"}"})
    );
    // PHP's single-channel shape.
    let r = s.api().post("/events", &json!({"name":"App\\Events\\Shipped","data":"{\"order\":{\"id\":1}}","channel":"project-3"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(c.recv().await["event"], "App\\Events\\Shipped");
}

#[tokio::test]
async fn socket_id_exclusion() {
    let s = TestServer::default().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    let r = s
        .api()
        .post(
            "/events",
            &json!({"name":"e","channels":["room"],"data":"{}","socket_id":a.socket_id}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(b.recv().await["event"], "e");
    a.expect_silence(
        Duration::from_millis(200),
        "excluded socket received the event",
    )
    .await;
    let r = s
        .api()
        .post(
            "/events",
            &json!({"name":"e","channels":["room"],"data":"{}","socket_id":"abc"}),
        )
        .await;
    assert_eq!(r.status, 400, "invalid socket_id");
}

#[tokio::test]
async fn validation_limits() {
    let s = TestServer::default().await;
    let api = s.api();
    let hundred: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    let r = api
        .post(
            "/events",
            &json!({"name":"e","channels":hundred,"data":"{}"}),
        )
        .await;
    assert_eq!(r.status, 200, "100 channels");
    let more: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    assert_eq!(
        api.post("/events", &json!({"name":"e","channels":more,"data":"{}"}))
            .await
            .status,
        400
    );
    let ok = "x".repeat(10_240);
    assert_eq!(
        api.post("/events", &json!({"name":"e","channel":"c","data":ok}))
            .await
            .status,
        200
    );
    let big = "x".repeat(10_241);
    assert_eq!(
        api.post("/events", &json!({"name":"e","channel":"c","data":big}))
            .await
            .status,
        413
    );
    for bad in [
        json!({"channel":"c","data":"{}"}),
        json!({"name":"e","data":"{}"}),
        json!({"name":"e","channel":"c"}),
        json!({"name":"e","channel":"a b","data":"{}"}),
        json!({"name":"pusher_internal:x","channel":"c","data":"{}"}),
        json!({"name":"e","channels":["private-encrypted-a","b"],"data":"{}"}),
        json!([1]),
    ] {
        let r = api.post("/events", &bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert!(r.body["error"].is_string(), "error body has a message");
    }
}

#[tokio::test]
async fn info_on_trigger() {
    let s = TestServer::default().await;
    let mut a = s.client().await;
    a.subscribe_presence("presence-foobar", r#"{"user_id":"1"}"#)
        .await;
    let r = s.api().post("/events", &json!({"name":"foo","data":"{}","channels":["presence-foobar","another"],"info":"user_count,subscription_count"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"channels":{"presence-foobar":{"user_count":1,"subscription_count":1},"another":{"subscription_count":0}}})
    );
}

#[tokio::test]
async fn batch_events() {
    let s = TestServer::default().await;
    let mut c = s.client().await;
    c.subscribe("b1").await;
    let api = s.api();
    let items: Vec<Value> = (0..10)
        .map(|i| json!({"channel":"b1","name":format!("e{i}"),"data":"{}"}))
        .collect();
    let r = api.post("/batch_events", &json!({"batch": items})).await;
    assert_eq!((r.status, r.text.as_str()), (200, "{}"));
    for i in 0..10 {
        assert_eq!(c.recv().await["event"], format!("e{i}"));
    }
    let eleven: Vec<Value> = (0..11)
        .map(|_| json!({"channel":"b1","name":"e","data":"{}"}))
        .collect();
    assert_eq!(
        api.post("/batch_events", &json!({"batch": eleven}))
            .await
            .status,
        400
    );
    // All or nothing: one bad item publishes none.
    let r = api.post("/batch_events", &json!({"batch":[{"channel":"b1","name":"good","data":"{}"},{"channel":"b1","data":"{}"}]})).await;
    assert_eq!(r.status, 400);
    c.expect_silence(
        Duration::from_millis(200),
        "a rejected batch published an event",
    )
    .await;
    let r = api.post("/batch_events", &json!({"batch":[{"channel":"b1","name":"a","data":"{}","info":"subscription_count"},{"channel":"b2","name":"b","data":"{}"}]})).await;
    assert_eq!(r.body, json!({"batch":[{"subscription_count":1},{}]}));
    assert_eq!(
        api.post("/batch_events", &json!({"nope":[]})).await.status,
        400
    );
}

#[tokio::test]
async fn channel_queries() {
    let s = TestServer::default().await;
    let api = s.api();
    let r = api.get("/channels", &[]).await;
    assert_eq!(r.text, r#"{"channels":{}}"#, "empty result is an object");
    let mut a = s.client().await;
    a.subscribe("public-1").await;
    a.subscribe_presence("presence-foobar", r#"{"user_id":"1"}"#)
        .await;
    let mut b = s.client().await;
    b.subscribe_presence("presence-foobar", r#"{"user_id":"2"}"#)
        .await;
    let r = api.get("/channels", &[]).await;
    assert_eq!(
        r.body,
        json!({"channels":{"presence-foobar":{},"public-1":{}}})
    );
    let r = api
        .get(
            "/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .await;
    assert_eq!(
        r.body,
        json!({"channels":{"presence-foobar":{"user_count":2}}})
    );
    assert_eq!(
        api.get("/channels", &[("info", "user_count")]).await.status,
        400
    );

    let r = api
        .get(
            "/channels/presence-foobar",
            &[("info", "user_count,subscription_count")],
        )
        .await;
    assert_eq!(
        r.body,
        json!({"occupied":true,"user_count":2,"subscription_count":2})
    );
    let r = api
        .get("/channels/nobody-here", &[("info", "subscription_count")])
        .await;
    assert_eq!(r.body, json!({"occupied":false,"subscription_count":0}));
    assert_eq!(
        api.get("/channels/public-1", &[("info", "user_count")])
            .await
            .status,
        400
    );
    assert_eq!(api.get("/channels/public-1/users", &[]).await.status, 400);
    assert_eq!(
        api.get("/channels/presence-empty/users", &[]).await.body,
        json!({"users":[]})
    );
    let users = api.get("/channels/presence-foobar/users", &[]).await;
    assert_eq!(users.body, json!({"users":[{"id":"1"},{"id":"2"}]}));
    assert_eq!(
        api.get("/connections", &[]).await.body,
        json!({"connections":2})
    );
}

#[tokio::test]
async fn signature_failures_are_401_and_unknown_apps_404() {
    let s = TestServer::default().await;
    let body = r#"{"name":"e","channel":"c","data":"{}"}"#;
    let path = format!("/apps/{APP_ID}/events");
    // Wrong secret.
    let q = signed_query(
        KEY,
        "wrong",
        "POST",
        &path,
        now(),
        Some(body.as_bytes()),
        &[],
    );
    let r = raw_request("POST", &s.url(&format!("{path}?{q}")), body.into()).await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"].as_str().unwrap_or("").contains("signature"));
    // Expired timestamp (601 s).
    let q = signed_query(
        KEY,
        SECRET,
        "POST",
        &path,
        now() - 601,
        Some(body.as_bytes()),
        &[],
    );
    assert_eq!(
        raw_request("POST", &s.url(&format!("{path}?{q}")), body.into())
            .await
            .status,
        401
    );
    // Body changed after signing (N4).
    let q = signed_query(
        KEY,
        SECRET,
        "POST",
        &path,
        now(),
        Some(body.as_bytes()),
        &[],
    );
    assert_eq!(
        raw_request("POST", &s.url(&format!("{path}?{q}")), format!("{body} "))
            .await
            .status,
        401
    );
    // Wrong key.
    let q = signed_query(
        "other",
        SECRET,
        "POST",
        &path,
        now(),
        Some(body.as_bytes()),
        &[],
    );
    assert_eq!(
        raw_request("POST", &s.url(&format!("{path}?{q}")), body.into())
            .await
            .status,
        401
    );
    // Unknown app.
    let p2 = "/apps/999/events";
    let q = signed_query(KEY, SECRET, "POST", p2, now(), Some(body.as_bytes()), &[]);
    assert_eq!(
        raw_request("POST", &s.url(&format!("{p2}?{q}")), body.into())
            .await
            .status,
        404
    );
    // No auth at all.
    assert_eq!(
        raw_request("POST", &s.url(&path), body.into()).await.status,
        401
    );
    // Wrong method.
    assert_eq!(
        raw_request("GET", &s.url(&path), String::new())
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn python_sdk_shapes_body_md5_on_get_and_bare_terminate_path() {
    let s = TestServer::default().await;
    let path = format!("/apps/{APP_ID}/channels");
    // pusher-http-python signs body_md5 of the empty body on GET (H8).
    let md5 = md5_hex(b"");
    let q = signed_query(
        KEY,
        SECRET,
        "GET",
        &path,
        now(),
        None,
        &[
            ("body_md5", &md5),
            ("filter_by_prefix", "presence-"),
            ("info", "user_count"),
        ],
    );
    let r = raw_request("GET", &s.url(&format!("{path}?{q}")), String::new()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let tpath = "/users/5/terminate_connections";
    let q = signed_query(KEY, SECRET, "POST", tpath, now(), Some(b"{}"), &[]);
    let r = raw_request("POST", &s.url(&format!("{tpath}?{q}")), "{}".into()).await;
    assert_eq!((r.status, r.text.as_str()), (200, "{}"));
}

#[tokio::test]
async fn php_encoded_query_values_are_signed_decoded() {
    let s = TestServer::default().await;
    let path = format!("/apps/{APP_ID}/channels/presence-foobar");
    let ts = now().to_string();
    let canonical = format!(
        "auth_key={KEY}&auth_timestamp={ts}&auth_version=1.0&info=user_count,subscription_count"
    );
    let sig = resound::protocol::auth::api_signature(SECRET, "GET", &path, &canonical);
    let url = format!("{path}?auth_key={KEY}&auth_timestamp={ts}&auth_version=1.0&info=user_count%2Csubscription_count&auth_signature={sig}");
    let r = raw_request("GET", &s.url(&url), String::new()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"occupied":false,"user_count":0,"subscription_count":0})
    );
}

#[tokio::test]
async fn routes_work_under_the_configured_prefix() {
    let toml = TestConfig::new().server_setting("path", "/reverb").toml();
    let s = TestServer::start(&toml).await;
    let mut c = Client::connect(&format!("ws://{}/reverb/app/{KEY}?protocol=7", s.addr)).await;
    c.subscribe("pre").await;
    let body = r#"{"name":"e","channel":"pre","data":"{}"}"#;
    // PHP signs the path without the prefix.
    let signed_path = format!("/apps/{APP_ID}/events");
    let q = signed_query(
        KEY,
        SECRET,
        "POST",
        &signed_path,
        now(),
        Some(body.as_bytes()),
        &[],
    );
    let r = raw_request(
        "POST",
        &s.url(&format!("/reverb{signed_path}?{q}")),
        body.into(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(c.recv().await["event"], "e");
    assert_eq!(
        raw_request("GET", &s.url("/reverb/up"), String::new())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn backend_and_read_quotas_answer_429() {
    let s = TestServer::start(&config(
        "max_backend_events_per_second = 2\nmax_read_requests_per_second = 1",
        "",
    ))
    .await;
    let api = s.api();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(api.trigger(&["q"], "e", "{}").await.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(api.get("/channels", &[]).await.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn health_and_metrics() {
    let s = TestServer::default().await;
    let up = raw_request("GET", &s.url("/up"), String::new()).await;
    assert_eq!(up.body, json!({"health":"OK"}));
    let ready = raw_request("GET", &s.url("/ready"), String::new()).await;
    assert_eq!(ready.status, 200);
    let mut c = s.client().await;
    c.subscribe("m").await;
    s.api().trigger(&["m"], "e", "{}").await;
    c.recv().await;
    let m = raw_request("GET", &s.url("/metrics"), String::new()).await;
    assert_eq!(m.status, 200);
    let value = |name: &str| -> f64 {
        m.text
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for line in m
        .text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, v) = line.rsplit_once(' ').expect("name value");
        assert!(v.parse::<f64>().is_ok(), "unparsable sample {line}");
        // Ours carry the prefix; the process collector's use the names every exporter uses.
        assert!(
            name.starts_with("resound_") || name.starts_with("process_"),
            "{name}"
        );
    }
    assert!(value("resound_connected") >= 1.0);
    assert!(value("resound_new_connections_total") >= 1.0);
    assert!(value("resound_ws_messages_sent_total") >= 3.0);
    assert!(value("resound_api_events_total") >= 1.0);
    assert!(value("resound_http_calls_received_total") >= 1.0);
    assert!(m.text.contains("resound_fanout_size_bucket"));
}

#[tokio::test]
async fn terminating_a_presence_member_spares_sockets_that_left_the_channel() {
    let s = TestServer::start(&config("terminate_presence_members = true", "")).await;
    let (ch, five) = ("presence-t", r#"{"user_id":"5"}"#);
    let mut present = s.client().await;
    present.subscribe_presence(ch, five).await;
    let mut left = s.client().await;
    left.subscribe_presence(ch, five).await;
    left.send(json!({"event":"pusher:unsubscribe","data":{"channel":ch}}))
        .await;
    left.assert_alive("the unsubscribe is handled").await;
    let r = s
        .api()
        .post("/users/5/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(present.closed().await, Some(4009));
    left.assert_alive("a socket no longer present as the user stays")
        .await;
}

/// Secret rotation: with `previous_secret` and a deadline in the future, API requests and
/// channel tokens signed with the old secret are accepted beside the new one; once the
/// deadline has passed, only the new secret works.
#[tokio::test]
async fn a_previous_secret_works_until_its_deadline() {
    for (until, accepted) in [
        ("2999-01-01T00:00:00Z", true),
        ("2001-01-01T00:00:00Z", false),
    ] {
        let s = TestServer::start(
            &TestConfig::new()
                .app_setting("previous_secret", "old-secret")
                .app_setting("previous_secret_until", until)
                .toml(),
        )
        .await;
        let old = Api {
            secret: "old-secret".into(),
            ..s.api()
        };
        let r = old.trigger(&["rotation"], "e", "{}").await;
        assert_eq!(
            r.status == 200,
            accepted,
            "until {until}: {} {}",
            r.status,
            r.text
        );
        assert_eq!(s.api().trigger(&["rotation"], "e", "{}").await.status, 200);
        let mut c = s.client().await;
        let channel = "private-rotation";
        let auth = resound::protocol::auth::sign_token(
            KEY,
            "old-secret",
            &resound::protocol::auth::channel_string_to_sign(c.sid(), channel, None),
        );
        c.send(json!({"event":"pusher:subscribe","data":{"auth":auth,"channel":channel}}))
            .await;
        let answer = c.recv().await;
        let expected = if accepted {
            "pusher_internal:subscription_succeeded"
        } else {
            "pusher:error"
        };
        assert_eq!(answer["event"], expected, "until {until}: {answer}");
    }
}
