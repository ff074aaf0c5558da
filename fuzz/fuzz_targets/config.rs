//! The config loader (`config/mod.rs`: TOML text and environment → validated `Config`) on
//! arbitrary input: the TOML file, then optionally `\n%%env\n` and `.env`-style lines read as the
//! process environment (`RESOUND_*`, Reverb's `REVERB_*`). Invariants: no panic, whatever the
//! text; an error renders as a message; a loaded config prints (`check-config`) and what it
//! prints shows no app secret (current or previous), webhook header value or Redis password.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use resound::config::{load, parse_env_file, Sources};

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("resound-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = text.split_once("\n%%env\n").unwrap_or((text, ""));
    let path = scratch();
    let mut f = std::fs::File::create(path).expect("scratch file");
    f.write_all(toml.as_bytes()).expect("scratch write");
    drop(f);
    let sources = Sources {
        config_file: Some(path),
        env_file: None,
        process_env: parse_env_file(env),
    };
    match load(&sources) {
        Ok(cfg) => {
            // What `check-config` prints must print, and show no credential.
            let printed = toml::to_string_pretty(&cfg.effective);
            assert!(
                printed.is_ok(),
                "a loaded config does not print: {printed:?}"
            );
            for app in &cfg.effective.apps {
                assert_eq!(app.secret, "***", "an app secret in the printable config");
                assert!(
                    app.previous_secret.as_deref().is_none_or(|p| p == "***"),
                    "a previous secret in the printable config"
                );
                for w in &app.webhooks {
                    assert!(
                        w.headers.values().all(|v| v == "***"),
                        "a webhook header value in the printable config"
                    );
                }
            }
            let url = &cfg.scaling.redis_url;
            if let Some((_, rest)) = url.split_once("://") {
                if let Some((creds, _)) = rest.rsplit_once('@') {
                    if let Some((_, password)) = creds.split_once(':') {
                        let shown = &cfg.effective.scaling.redis_url;
                        assert!(
                            password.len() < 4 || !shown.contains(&format!(":{password}@")),
                            "the Redis password in the printable config: {shown}"
                        );
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
