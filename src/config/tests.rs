use std::io::Write;

use super::*;
use crate::app::ClientEventPolicy;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn temp_file(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("resound-config-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
    f.write_all(body.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

fn load_ok(s: &Sources<'_>) -> Config {
    load(s).unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(s: &Sources<'_>) -> String {
    match load(s) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn nothing_configured_serves_the_embedded_app() {
    let c = load_ok(&Sources::default());
    assert_eq!(c.server.host, "0.0.0.0");
    assert_eq!(c.server.port, 8080);
    assert_eq!(c.apps.len(), 1);
    let a = &c.apps[0];
    assert_eq!(
        (a.id.as_str(), a.key.as_str(), a.secret.as_str()),
        ("app-id", "app-key", "app-secret")
    );
    assert_eq!(a.settings.client_events, ClientEventPolicy::Members);
    assert_eq!(a.settings.activity_timeout, Duration::from_secs(120));
}

#[test]
fn file_apps_with_app_id_alias_and_defaults() {
    let p = temp_file(
        "a.toml",
        r#"
[server]
port = 9000
path = "/reverb"
[[apps]]
app_id = "42"
key = "k"
secret = "s"
allowed_origins = ["laravel.test"]
"#,
    );
    let c = load_ok(&Sources {
        config_file: Some(&p),
        ..Sources::default()
    });
    assert_eq!(c.server.port, 9000);
    assert_eq!(c.server.path, "/reverb");
    assert_eq!(c.apps[0].id.as_str(), "42");
    assert_eq!(
        c.apps[0].settings.client_events,
        ClientEventPolicy::Disabled
    );
    assert_eq!(
        c.apps[0].settings.allowed_origins.as_deref(),
        Some(&["laravel.test".to_string()][..])
    );
    assert_eq!(c.effective.apps[0].secret, "***");
}

#[test]
fn unknown_keys_name_the_key_and_source() {
    let p = temp_file("b.toml", "[server]\nprot = 1\n");
    let e = load_err(&Sources {
        config_file: Some(&p),
        ..Sources::default()
    });
    assert!(e.contains("prot"), "{e}");
    assert!(e.contains("b.toml"), "{e}");
    let e = load_err(&Sources {
        process_env: env(&[("RESOUND_SERVER__PROT", "1")]),
        ..Sources::default()
    });
    assert!(e.contains("prot"), "{e}");
}

#[test]
fn bad_values_name_the_key_and_source() {
    let e = load_err(&Sources {
        process_env: env(&[("RESOUND_SERVER__PORT", "eighty")]),
        ..Sources::default()
    });
    assert!(e.to_lowercase().contains("port"), "{e}");
    assert!(
        e.contains("RESOUND_SERVER__PORT") || e.contains("environment"),
        "{e}"
    );
    let e = load_err(&Sources {
        process_env: env(&[("REVERB_SERVER_PORT", "x")]),
        ..Sources::default()
    });
    assert!(
        e.contains("REVERB_SERVER_PORT") || e.contains("Reverb"),
        "{e}"
    );
    let e = load_err(&Sources {
        process_env: env(&[
            ("REVERB_APP_ID", "1"),
            ("REVERB_APP_KEY", "k"),
            ("REVERB_APP_SECRET", "s"),
            ("REVERB_APP_ACTIVITY_TIMEOUT", "soon"),
        ]),
        ..Sources::default()
    });
    assert!(e.contains("REVERB_APP_ACTIVITY_TIMEOUT"), "{e}");
    for setting in ["activity_timeout", "pong_timeout"] {
        let p = temp_file(
            &format!("{setting}.toml"),
            &format!("[[apps]]\nid='1'\nkey='k'\nsecret='s'\n{setting}=0\n"),
        );
        let e = load_err(&Sources {
            config_file: Some(&p),
            ..Sources::default()
        });
        assert!(e.contains(setting), "{e}");
    }
}

#[test]
fn missing_config_file_is_an_error() {
    let p = std::path::Path::new("/nonexistent/resound.toml");
    assert!(load_err(&Sources {
        config_file: Some(p),
        ..Sources::default()
    })
    .contains("does not exist"));
}

#[test]
fn resound_env_overrides_the_file() {
    let p = temp_file("d.toml", "[server]\nport = 9000\n");
    let c = load_ok(&Sources {
        config_file: Some(&p),
        process_env: env(&[
            ("RESOUND_SERVER__PORT", "9100"),
            ("RESOUND_LOG", "debug"),
            ("RESOUND_BIN", "x"),
        ]),
        ..Sources::default()
    });
    assert_eq!(c.server.port, 9100);
}

#[test]
fn laravel_env_file_works_as_is() {
    let p = temp_file(
        ".env",
        "APP_NAME=Laravel\nREVERB_APP_ID=123456\nREVERB_APP_KEY=\"laravel-key\"\nREVERB_APP_SECRET=laravel-secret\nREVERB_HOST=\"localhost\"\nREVERB_PORT=8080\nREVERB_SCHEME=http\nREVERB_SERVER_PORT=6001\nREVERB_SERVER_PATH=/ws\nREVERB_SCALING_ENABLED=true\nREDIS_HOST=127.0.0.1\nREDIS_PASSWORD=null\nREDIS_PORT=6379\n",
    );
    let c = load_ok(&Sources {
        env_file: Some(&p),
        ..Sources::default()
    });
    assert_eq!(c.server.port, 6001);
    assert_eq!(c.server.path, "/ws");
    assert!(c.scaling.enabled);
    assert_eq!(c.scaling.redis_url, "redis://127.0.0.1:6379/0");
    assert_eq!(c.apps.len(), 1, "the Reverb app replaces the embedded one");
    let a = &c.apps[0];
    assert_eq!(a.key.as_str(), "laravel-key");
    assert_eq!(a.settings.client_events, ClientEventPolicy::Members);
    assert_eq!(a.settings.activity_timeout, Duration::from_secs(30));
    assert_eq!(a.settings.max_message_size, 10_000);
    // The process environment wins over the file.
    let c = load_ok(&Sources {
        env_file: Some(&p),
        process_env: env(&[("REVERB_SERVER_PORT", "7000")]),
        ..Sources::default()
    });
    assert_eq!(c.server.port, 7000);
}

#[test]
fn redis_password_is_masked() {
    assert_eq!(
        mask_url_password("redis://u:pw@h:6379/0"),
        "redis://u:***@h:6379/0"
    );
    assert_eq!(mask_url_password("redis://h:6379/0"), "redis://h:6379/0");
}

#[test]
fn env_file_parsing() {
    let vars = parse_env_file("# c\nexport A=1\nB=\"two words\"\nC='x' \nD=v # comment\nbad\n");
    assert_eq!(
        vars,
        env(&[("A", "1"), ("B", "two words"), ("C", "x"), ("D", "v")])
    );
}

#[test]
fn env_file_quoted_values_end_at_their_closing_quote() {
    let vars = parse_env_file(concat!(
        "A=\"v\" # comment\n",
        "B='a b' # c\n",
        "C=a#b\n",
        "D=\"say \\\"hi\\\" # not a comment\"\n",
        "E='\\n stays'\n",
        "F=\"x\\ny\"\n",
        "G=\n",
        "H=\"unclosed # c\n",
    ));
    assert_eq!(
        vars,
        env(&[
            ("A", "v"),
            ("B", "a b"),
            ("C", "a#b"),
            ("D", "say \"hi\" # not a comment"),
            ("E", "\\n stays"),
            ("F", "x\ny"),
            ("G", ""),
            ("H", "\"unclosed # c"),
        ])
    );
}

#[test]
fn laravel_env_with_a_quoted_commented_key_serves_that_key() {
    let p = temp_file(
        "quoted.env",
        "REVERB_APP_ID=1\nREVERB_APP_KEY=\"my-key\" # from the dashboard\nREVERB_APP_SECRET='s'\n",
    );
    let c = load_ok(&Sources {
        env_file: Some(&p),
        ..Sources::default()
    });
    assert_eq!(c.apps[0].key.as_str(), "my-key");
}

#[test]
fn example_config_is_valid() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/resound.example.toml");
    let c = load_ok(&Sources {
        config_file: Some(&p),
        ..Sources::default()
    });
    assert!(!c.apps.is_empty());
}

#[test]
fn reverb_variables_overlay_a_configured_app_with_the_same_id() {
    let p = temp_file(
        "e.toml",
        "[[apps]]\nid = \"123456\"\nkey = \"old\"\nsecret = \"old\"\nenable_client_messages = true\n\n[[apps.webhooks]]\nurl = \"http://127.0.0.1:3000/hooks\"\n",
    );
    let c = load_ok(&Sources {
        config_file: Some(&p),
        process_env: env(&[
            ("REVERB_APP_ID", "123456"),
            ("REVERB_APP_KEY", "new-key"),
            ("REVERB_APP_SECRET", "new-secret"),
            ("REVERB_APP_ACTIVITY_TIMEOUT", "45"),
        ]),
        ..Sources::default()
    });
    assert_eq!(c.apps.len(), 1);
    let a = &c.apps[0];
    assert_eq!(a.key.as_str(), "new-key");
    assert_eq!(a.secret.as_str(), "new-secret");
    assert_eq!(a.settings.activity_timeout, Duration::from_secs(45));
    assert!(a.webhooks.is_some(), "the file's webhooks stay");
    assert_eq!(a.settings.client_events, ClientEventPolicy::Members);
}

#[test]
fn a_file_app_joined_by_reverb_variables_keeps_reverb_defaults() {
    // A Laravel user adds a TOML file for webhooks only: the app stays a Reverb app
    // (activity timeout 30 s, whispers accepted from members).
    let p = temp_file(
        "w.toml",
        "[[apps]]\nid = \"123456\"\nkey = \"k\"\nsecret = \"s\"\n\n[[apps.webhooks]]\nurl = \"http://127.0.0.1:3000/hooks\"\n",
    );
    let reverb = env(&[
        ("REVERB_APP_ID", "123456"),
        ("REVERB_APP_KEY", "k"),
        ("REVERB_APP_SECRET", "s"),
    ]);
    let c = load_ok(&Sources {
        config_file: Some(&p),
        process_env: reverb.clone(),
        ..Sources::default()
    });
    assert_eq!(c.apps.len(), 1);
    let a = &c.apps[0];
    assert_eq!(a.settings.activity_timeout, Duration::from_secs(30));
    assert_eq!(a.settings.ping_interval, Duration::from_secs(60));
    assert_eq!(a.settings.max_message_size, 10_000);
    assert_eq!(a.settings.client_events, ClientEventPolicy::Members);
    assert!(a.webhooks.is_some());

    // What the file says explicitly still wins over Reverb's defaults.
    let p = temp_file(
        "w2.toml",
        "[[apps]]\nid = \"123456\"\nkey = \"k\"\nsecret = \"s\"\nactivity_timeout = 90\nenable_client_messages = false\n",
    );
    let c = load_ok(&Sources {
        config_file: Some(&p),
        process_env: reverb,
        ..Sources::default()
    });
    let a = &c.apps[0];
    assert_eq!(a.settings.activity_timeout, Duration::from_secs(90));
    assert_eq!(a.settings.client_events, ClientEventPolicy::Disabled);
}

#[test]
fn files_the_configuration_names_must_be_readable() {
    let cert = temp_file("cert.pem", "not checked here");
    let cases = [
        (
            format!(
                "[server.tls]\ncert = {:?}\nkey = \"/nonexistent/key.pem\"\n",
                cert.display().to_string()
            ),
            "server.tls.key",
        ),
        (
            "[scaling]\nredis_url = \"rediss://h:6379/0\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n"
                .to_string(),
            "scaling.tls_ca_file",
        ),
        (
            "[webhooks]\nca_file = \"/nonexistent/hooks-ca.pem\"\n".to_string(),
            "webhooks.ca_file",
        ),
    ];
    for (i, (body, key)) in cases.iter().enumerate() {
        let p = temp_file(&format!("files{i}.toml"), body);
        let e = load_err(&Sources {
            config_file: Some(&p),
            ..Sources::default()
        });
        assert!(e.contains(key) && e.contains("/nonexistent/"), "{e}");
    }
}

#[test]
fn sentinels_come_from_the_file_or_the_environment() {
    let ca = temp_file("sentinel-ca.pem", "");
    let p = temp_file(
        "sentinel.toml",
        &format!("[scaling]\nenabled = true\nredis_url = \"rediss://:pw@ignored/2\"\nsentinels = [\"redis://:spw@10.0.0.1:26379\", \"redis://10.0.0.2:26379\"]\nsentinel_master = \"mymaster\"\ntls_ca_file = {:?}\n", ca.display().to_string()),
    );
    let c = load_ok(&Sources {
        config_file: Some(&p),
        ..Sources::default()
    });
    assert_eq!(c.scaling.sentinels.len(), 2);
    assert_eq!(c.scaling.sentinel_master.as_deref(), Some("mymaster"));
    assert_eq!(c.scaling.tls_ca_file.as_deref(), Some(ca.as_path()));
    // `check-config` shows no password.
    assert_eq!(
        c.effective.scaling.sentinels[0],
        "redis://:***@10.0.0.1:26379"
    );
    assert_eq!(c.effective.scaling.redis_url, "rediss://:***@ignored/2");

    let c = load_ok(&Sources {
        process_env: env(&[
            (
                "RESOUND_SCALING__SENTINELS",
                r#"["redis://a:26379","redis://b:26379"]"#,
            ),
            ("RESOUND_SCALING__SENTINEL_MASTER", "primary"),
        ]),
        ..Sources::default()
    });
    assert_eq!(
        c.scaling.sentinels,
        vec!["redis://a:26379".to_string(), "redis://b:26379".to_string()]
    );
    assert_eq!(c.scaling.sentinel_master.as_deref(), Some("primary"));
}

#[test]
fn inconsistent_redis_settings_are_refused() {
    let e = load_err(&Sources {
        process_env: env(&[("RESOUND_SCALING__SENTINELS", r#"["redis://a:26379"]"#)]),
        ..Sources::default()
    });
    assert!(e.contains("sentinel_master"), "{e}");
    let e = load_err(&Sources {
        process_env: env(&[("RESOUND_SCALING__SENTINEL_MASTER", "m")]),
        ..Sources::default()
    });
    assert!(e.contains("needs scaling.sentinels"), "{e}");
    let e = load_err(&Sources {
        process_env: env(&[(
            "RESOUND_SCALING__REDIS_URL",
            "rediss://:secret@redis:6380/0#insecure",
        )]),
        ..Sources::default()
    });
    assert!(e.contains("tls_ca_file") && !e.contains("secret"), "{e}");
    let e = load_err(&Sources {
        process_env: env(&[("RESOUND_SCALING__REDIS_URL", "http://redis")]),
        ..Sources::default()
    });
    assert!(e.contains("redis://"), "{e}");
    let e = load_err(&Sources {
        process_env: env(&[("RESOUND_SCALING__TLS_CA_FILE", "/etc/ca.pem")]),
        ..Sources::default()
    });
    assert!(e.contains("rediss://"), "{e}");
    let e = load_err(&Sources {
        process_env: env(&[
            ("RESOUND_SCALING__CLUSTER_NODES", r#"["redis://a:6379"]"#),
            ("RESOUND_SCALING__SENTINELS", r#"["redis://a:26379"]"#),
            ("RESOUND_SCALING__SENTINEL_MASTER", "m"),
        ]),
        ..Sources::default()
    });
    assert!(e.contains("cannot be combined"), "{e}");
    let e = load_err(&Sources {
        process_env: env(&[(
            "RESOUND_SCALING__CLUSTER_NODES",
            r#"["redis://:pw@a:6379", "tcp://b:6379"]"#,
        )]),
        ..Sources::default()
    });
    assert!(e.contains("tcp://b:6379") && e.contains("redis://"), "{e}");
}

#[test]
fn printed_configuration_and_errors_do_not_show_webhook_credentials() {
    let p = temp_file(
        "redact.toml",
        r#"
[[apps]]
id = "1"
key = "k"
secret = "s"

[[apps.webhooks]]
url = "https://hooks.example.com/in?token=hunter2"
headers = { Authorization = "Bearer hunter2", "X-Api-Key" = "hunter2" }
"#,
    );
    let c = load_ok(&Sources {
        config_file: Some(&p),
        ..Sources::default()
    });
    let printed = toml::to_string_pretty(&c.effective).unwrap_or_else(|e| panic!("{e}"));
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("https://hooks.example.com/in?***"),
        "{printed}"
    );
    assert!(
        printed.contains("Authorization"),
        "the names stay: {printed}"
    );
    // What is delivered is what was configured.
    let webhooks = c.apps[0]
        .webhooks
        .as_ref()
        .unwrap_or_else(|| panic!("webhooks"));
    assert_eq!(
        webhooks.targets[0].url,
        "https://hooks.example.com/in?token=hunter2"
    );

    // A refused URL is named without its password.
    let p = temp_file(
        "redact-err.toml",
        r#"
[[apps]]
id = "1"
key = "k"
secret = "s"

[[apps.webhooks]]
url = "https://user:hunter2@hooks.example.com/in"
"#,
    );
    let err = load_err(&Sources {
        config_file: Some(&p),
        ..Sources::default()
    });
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("https://***@hooks.example.com/in"), "{err}");
}

#[test]
fn redacted_urls_keep_scheme_host_and_path() {
    for (url, shown) in [
        ("https://h.example/p", "https://h.example/p"),
        (
            "https://u:pw@h.example:8443/p",
            "https://***@h.example:8443/p",
        ),
        ("https://u:p/w?@h.example/p", "https://***@h.example/p"),
        ("http://h.example/p?a=1&b=2", "http://h.example/p?***"),
        ("h.example/p?t=1", "h.example/p?***"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
}

#[test]
fn per_connection_subscription_limits_have_defaults_and_refuse_zero() {
    let c = load_ok(&Sources::default());
    let a = &c.apps[0].settings;
    assert_eq!(
        (a.max_channels_per_connection, a.max_subscribes_per_second),
        (100, 10)
    );
    assert_eq!(a.max_channels_listed, 10_000);
    let p = temp_file(
        "subscription-limits.toml",
        "[[apps]]\nid='1'\nkey='k'\nsecret='s'\nmax_channels_per_connection = 500\nmax_subscribes_per_second = 50\n",
    );
    let c = load_ok(&Sources {
        config_file: Some(&p),
        ..Sources::default()
    });
    let a = &c.apps[0].settings;
    assert_eq!(
        (a.max_channels_per_connection, a.max_subscribes_per_second),
        (500, 50)
    );
    for setting in [
        "max_channels_per_connection",
        "max_subscribes_per_second",
        "max_channels_listed",
    ] {
        let p = temp_file(
            &format!("{setting}.toml"),
            &format!("[[apps]]\nid='1'\nkey='k'\nsecret='s'\n{setting}=0\n"),
        );
        let e = load_err(&Sources {
            config_file: Some(&p),
            ..Sources::default()
        });
        assert!(e.contains(setting), "{e}");
    }
}

#[test]
fn an_env_value_with_a_backslash_after_a_non_ascii_character_is_text() {
    // figment's own parser panicked on the quoted ones; found by `fuzz/` (`config`).
    for raw in [r#""/ˣ\x""#, r#"["redis://h.ˣ\"]"#, r"/é\n", r#""\u00e9ˣ""#] {
        assert_eq!(env_value(raw), Value::from(raw.to_string()), "{raw}");
        // The path must start with '/': only the unquoted one loads, and as written.
        let loaded = load(&Sources {
            process_env: env(&[("RESOUND_SERVER__PATH", raw)]),
            ..Default::default()
        });
        match loaded {
            Ok(c) => assert_eq!(c.server.path, raw),
            Err(e) => assert!(e.to_string().contains("server.path"), "{e}"),
        }
    }
    // ASCII values are still read as figment reads them.
    assert_eq!(env_value(r#""/a\tb""#), Value::from("/a\tb".to_string()));
    assert_eq!(env_value("true"), Value::from(true));
}

#[test]
fn compression_is_on_by_default_and_each_app_may_override_the_server() {
    let c = load_ok(&Sources::default());
    assert_eq!(c.apps[0].settings.deflate_threshold, Some(512));
    let path = temp_file(
        "compression.toml",
        "[server]\ncompression = \"off\"\ncompression_threshold = 1024\n\
         [[apps]]\nid = \"1\"\nkey = \"a\"\nsecret = \"s\"\n\
         [[apps]]\nid = \"2\"\nkey = \"b\"\nsecret = \"s\"\ncompression = \"on\"\n\
         [[apps]]\nid = \"3\"\nkey = \"c\"\nsecret = \"s\"\ncompression = \"on\"\ncompression_threshold = 0\n",
    );
    let c = load_ok(&Sources {
        config_file: Some(&path),
        ..Sources::default()
    });
    let thresholds: Vec<_> = c
        .apps
        .iter()
        .map(|a| a.settings.deflate_threshold)
        .collect();
    assert_eq!(thresholds, [None, Some(1024), Some(0)]);
    let c = load_ok(&Sources {
        process_env: env(&[("RESOUND_SERVER__COMPRESSION", "off")]),
        ..Sources::default()
    });
    assert_eq!(c.apps[0].settings.deflate_threshold, None);
    let path = temp_file("compression-bad.toml", "[server]\ncompression = \"gzip\"\n");
    let err = load_err(&Sources {
        config_file: Some(&path),
        ..Sources::default()
    });
    assert!(err.contains("compression"), "{err}");
}

#[test]
fn deeply_nested_environment_values_and_names_are_refused_not_recursed_into() {
    // figment's value parser recurses once per bracket: 200,000 of them ran a fuzzer's process
    // out of stack. Such a value is text, which the setting then refuses by name.
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let e = load_err(&Sources {
        process_env: env(&[("RESOUND_SERVER__PORT", &deep)]),
        ..Default::default()
    });
    assert!(
        e.to_lowercase().contains("server__port") || e.contains("server.port"),
        "{e}"
    );
    let e = load_err(&Sources {
        process_env: env(&[("RESOUND_SERVER__HEADER_TIMEOUT", &"{".repeat(100_000))]),
        ..Default::default()
    });
    assert!(e.to_lowercase().contains("header_timeout"), "{e}");
    // A name with thousands of levels is refused before it is turned into nested tables.
    let name = format!("RESOUND_SERVER{}", "__X".repeat(50_000));
    let e = load_err(&Sources {
        process_env: env(&[(name.as_str(), "1")]),
        ..Default::default()
    });
    assert!(e.contains("nested more than"), "{e}");
    // Ordinary nesting still reads as before.
    let c = load_ok(&Sources {
        process_env: env(&[("RESOUND_SERVER__PORT", "7001")]),
        ..Default::default()
    });
    assert_eq!(c.server.port, 7001);
}
