//! The deployment files agree with the server: the Dockerfile's port, user, health check and
//! build; the Helm chart's probes, port and grace periods; the systemd unit's stop timeout; and
//! every metric the Grafana dashboard and the Prometheus alerts name exists in a real server's
//! `/metrics` (a cluster node: Redis must run on 127.0.0.1:6379, as for `cluster.rs`). What
//! needs Docker, Helm or Kubernetes is listed in docs/operations.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use resound::config::ServerConfig;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use crate::support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_docs(text: &str, what: &str) -> Vec<Yaml> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .collect()
}

fn values() -> Yaml {
    yaml_docs(&read("helm/resound/values.yaml"), "values.yaml")
        .pop()
        .expect("values.yaml has a document")
}

fn yaml_u64(v: &Yaml, path: &[&str]) -> u64 {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{} is not a number: {cur:?}", path.join(".")))
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One instruction: keyword (upper case) and its arguments, continuation lines joined.
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of each build stage (a stage starts at FROM). Heredoc bodies are skipped.
fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let text = read("Dockerfile");
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut full = trimmed.to_string();
        while full.ends_with('\\') {
            full.pop();
            // Comment and blank lines inside a continued instruction are skipped.
            match lines.find(|l| !l.trim().is_empty() && !l.trim().starts_with('#')) {
                Some(next) => {
                    full.push(' ');
                    full.push_str(next.trim());
                }
                None => break,
            }
        }
        if let Some(pos) = full.find("<<") {
            let delimiter: String = full[pos + 2..]
                .trim_start_matches('-')
                .chars()
                .filter(|c| *c != '\'' && *c != '"')
                .take_while(|c| !c.is_whitespace())
                .collect();
            for body in lines.by_ref() {
                if body.trim() == delimiter {
                    break;
                }
            }
        }
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        // ARGs before the first FROM belong to no stage.
        if let Some(stage) = stages.last_mut() {
            stage.push(instruction);
        }
    }
    stages
}

fn final_stage() -> Vec<Instruction> {
    dockerfile_stages().pop().expect("a build stage")
}

#[test]
fn dockerfile_builds_the_resound_binary_from_the_lock_file() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a build stage and a small final stage");
    let builds = stages[..stages.len() - 1].iter().flatten().any(|i| {
        i.keyword == "RUN"
            && i.args
                .contains("cargo build --release --locked --bin resound")
    });
    assert!(
        builds,
        "a build stage runs cargo build --release --locked --bin resound"
    );
    let copied = final_stage()
        .iter()
        .any(|i| i.keyword == "COPY" && i.args.contains("--from=") && i.args.contains("resound"));
    assert!(
        copied,
        "the final stage copies the binary from the build stage"
    );
}

#[test]
fn dockerfile_exposes_the_default_port() {
    let port = ServerConfig::default().port;
    let exposed: Vec<String> = final_stage()
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        exposed
            .iter()
            .any(|p| p.trim_end_matches("/tcp") == port.to_string()),
        "EXPOSE {exposed:?} includes the default port {port}"
    );
}

#[test]
fn dockerfile_runs_as_a_non_root_user() {
    let user = final_stage()
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .map(|i| i.args.clone())
        .expect("the final stage sets USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !name.is_empty() && name != "root" && name != "0",
        "USER {user} is not root"
    );
}

#[test]
fn dockerfile_health_check_is_the_binarys_own_probe() {
    let stage = final_stage();
    let check = stage
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .map(|i| i.args.clone())
        .expect("the final stage has a HEALTHCHECK");
    // Through the entrypoint, so the probe reads the same configuration file as the server
    // and follows its port and TLS setting.
    assert!(
        check.contains(r#"CMD ["/usr/local/bin/resound-entrypoint", "probe""#),
        "{check}"
    );
    let installs_curl = stage
        .iter()
        .any(|i| i.keyword == "RUN" && i.args.contains("curl"));
    assert!(!installs_curl, "the final image needs no curl");
}

#[test]
fn dockerfile_splits_the_debug_info_off_the_shipped_binary() {
    let stages = dockerfile_stages();
    let build = stages[..stages.len() - 1].iter().flatten();
    let splits = build.clone().any(|i| {
        i.keyword == "RUN"
            && i.args.contains("objcopy --only-keep-debug")
            && i.args.contains("--strip-debug")
    });
    assert!(splits, "the build stage splits the debug info off");
    let exported = stages.iter().any(|s| {
        s.first().is_some_and(|f| f.args.ends_with("AS debug-info"))
            && s.iter()
                .any(|i| i.keyword == "COPY" && i.args.contains("resound.debug"))
    });
    assert!(exported, "a debug-info stage exports resound.debug");
    let ships_debug = final_stage()
        .iter()
        .any(|i| i.keyword == "COPY" && i.args.contains("resound.debug"));
    assert!(
        !ships_debug,
        "the final image ships the stripped binary only"
    );
}

/// The image's entrypoint script (the heredoc of the Dockerfile), running the binary built here.
fn entrypoint_script(dir: &Path) -> PathBuf {
    let text = read("Dockerfile");
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("<<'EOF' /usr/local/bin/resound-entrypoint"))
        .skip(1)
        .take_while(|l| l.trim() != "EOF")
        .collect();
    assert!(
        body.len() > 5,
        "the Dockerfile writes the entrypoint with a heredoc"
    );
    let script = body.join("\n").replace(
        "resound=/usr/local/bin/resound",
        &format!("resound={}", env!("CARGO_BIN_EXE_resound")),
    );
    std::fs::create_dir_all(dir).expect("temp dir");
    let path = dir.join("resound-entrypoint");
    std::fs::write(&path, script).expect("write entrypoint");
    path
}

/// Runs the entrypoint with only `env` (and PATH) set.
async fn entrypoint(script: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .arg(script)
        .args(args)
        .envs(env.iter().copied());
    tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .expect("the entrypoint exits within 10 s")
        .expect("run sh")
}

#[tokio::test]
async fn image_entrypoint_refuses_to_serve_the_default_app_without_configuration() {
    let dir = std::env::temp_dir().join(format!("resound-entrypoint-{}", std::process::id()));
    let script = entrypoint_script(&dir);
    let out = entrypoint(&script, &[], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/etc/resound/resound.toml"), "{stderr}");

    let missing = dir.join("missing.toml").display().to_string();
    let out = entrypoint(&script, &[], &[("RESOUND_CONFIG_FILE", &missing)]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&missing));

    // A mounted file is passed on; so are Reverb's variables and the tools.
    let file = dir.join("resound.toml");
    std::fs::write(&file, "[server]\nport = 6001\n").expect("write config");
    let file = file.display().to_string();
    let out = entrypoint(
        &script,
        &["check-config"],
        &[("RESOUND_CONFIG_FILE", &file)],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("port = 6001"));
    let reverb = [
        ("REVERB_APP_ID", "1"),
        ("REVERB_APP_KEY", "k"),
        ("REVERB_APP_SECRET", "s"),
    ];
    let out = entrypoint(&script, &["check-config"], &reverb).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// YAML files, Helm chart, systemd unit

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            // Templates are Go templates, not YAML, until Helm renders them.
            if path.file_name().is_some_and(|n| n != "templates") {
                yaml_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_plain_yaml_file_parses() {
    let mut files = Vec::new();
    yaml_files(&root().join("helm"), &mut files);
    yaml_files(&root().join("examples/deploy"), &mut files);
    for required in [
        "helm/resound/Chart.yaml",
        "helm/resound/values.yaml",
        "examples/deploy/prometheus-alerts.yml",
    ] {
        assert!(
            files.contains(&root().join(required)),
            "{required} exists ({files:?})"
        );
    }
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let docs = yaml_docs(&text, &file.display().to_string());
        assert!(!docs.is_empty(), "{} has a document", file.display());
    }
    let chart = yaml_docs(&read("helm/resound/Chart.yaml"), "Chart.yaml");
    assert_eq!(chart[0]["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart[0]["name"].as_str(), Some("resound"));
}

/// The first `path:` at or after the line `key:` of a template.
fn probe_path(template: &str, key: &str) -> String {
    let mut lines = template
        .lines()
        .skip_while(|l| l.trim() != format!("{key}:"));
    assert!(lines.next().is_some(), "the template has {key}");
    lines
        .find_map(|l| l.trim().strip_prefix("path:").map(|p| p.trim().to_string()))
        .unwrap_or_else(|| panic!("{key} has an httpGet path"))
}

/// `{{ .Values.a.b }}` → the value at a.b of values.yaml.
fn values_reference(expr: &str, values: &Yaml) -> u64 {
    let inner = expr
        .trim()
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
        .map(str::trim)
        .and_then(|s| s.strip_prefix(".Values."))
        .unwrap_or_else(|| panic!("expected {{{{ .Values.x }}}}, got {expr}"));
    let path: Vec<&str> = inner.split('.').collect();
    yaml_u64(values, &path)
}

#[test]
fn deployment_probes_and_port_match_the_server() {
    let template = read("helm/resound/templates/deployment.yaml");
    assert_eq!(probe_path(&template, "livenessProbe"), "/up");
    let values = values();
    // Readiness follows values.yaml: /ready, tolerant enough that a short Redis blip (which
    // fails every pod at once) does not empty the Service.
    assert_eq!(
        probe_path(&template, "readinessProbe"),
        "{{ .Values.readinessProbe.path }}"
    );
    assert_eq!(
        values["readinessProbe"]["path"].as_str(),
        Some("/ready"),
        "values.yaml"
    );
    let tolerated = yaml_u64(&values, &["readinessProbe", "periodSeconds"])
        * yaml_u64(&values, &["readinessProbe", "failureThreshold"]);
    assert!(
        tolerated >= 30,
        "a Redis blip under 30 s leaves pods ready ({tolerated} s)"
    );

    // The container port named http (the probes use it by name) comes from values.yaml and is
    // the server's default port, which the Dockerfile exposes.
    let mut lines = template.lines().skip_while(|l| l.trim() != "- name: http");
    assert!(lines.next().is_some(), "a container port named http");
    let port_expr = lines
        .find_map(|l| l.trim().strip_prefix("containerPort:").map(str::to_string))
        .expect("containerPort of the http port");
    let port = values_reference(&port_expr, &values);
    assert_eq!(port, u64::from(ServerConfig::default().port));
    assert_eq!(yaml_u64(&values, &["service", "port"]), port);
    assert!(
        template.contains("port: http"),
        "probes target the http port"
    );
    // The chart passes the same port to the server, so a file or REVERB_SERVER_PORT cannot move it.
    assert!(template.contains("name: RESOUND_SERVER__PORT"));
    assert!(template.contains("value: {{ .Values.server.port | quote }}"));
}

#[test]
fn termination_grace_exceeds_the_shutdown_grace() {
    let values = values();
    let shutdown = yaml_u64(&values, &["server", "shutdownGracePeriod"]);
    let pre_stop = yaml_u64(&values, &["preStopSleepSeconds"]);
    let termination = yaml_u64(&values, &["terminationGracePeriodSeconds"]);
    // The server exits within the grace period plus at least one second of webhook flushing.
    assert!(
        termination > pre_stop + shutdown + 1,
        "terminationGracePeriodSeconds {termination} > preStop {pre_stop} + shutdown {shutdown} + 1"
    );
    let template = read("helm/resound/templates/deployment.yaml");
    assert!(template
        .contains("terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}"));
    assert!(template.contains("value: {{ .Values.server.shutdownGracePeriod | quote }}"));

    // The systemd unit runs the default configuration's grace period.
    let unit = read("examples/deploy/resound.service");
    let setting = |key: &str| {
        unit.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{key}="))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("resound.service sets {key}"))
    };
    let stop: u64 = setting("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(stop > ServerConfig::default().shutdown_grace_period + 1);
    assert_eq!(setting("KillSignal"), "SIGTERM");
    assert_eq!(setting("LimitNOFILE"), "1048576");
}

// ---------------------------------------------------------------------------------------------
// Metric names in the dashboard and the alerts

/// PromQL keywords and aggregation operators that look like metric names.
const NOT_METRICS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised label list.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Index just past the `close` that matches the `open` at `start`, skipping quoted strings.
fn skip_group(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression selects (Grafana's `$variables` allowed).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '}');
        } else if c == '[' {
            i = skip_group(&chars, i, ']');
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i, '}');
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations: 0.99, 1e3, 5m.
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = skip_group(&chars, next, ')');
                }
            } else if !call && !NOT_METRICS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Grafana's `label_values(metric_selector, label)`: only the selector names a metric.
fn grafana_variable_expr(query: &str) -> Option<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    inner
        .rsplit_once(',')
        .map(|(selector, _label)| selector.to_string())
}

/// Every PromQL expression of the dashboard: panel targets (rows included) and variables.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: Json =
        serde_json::from_str(&read("examples/deploy/grafana-dashboard.json")).expect("JSON");
    fn walk(panels: &Json, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(expr.to_string());
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = match &variable["query"] {
            Json::String(q) => q.clone(),
            Json::Object(o) => o
                .get("query")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        if variable["type"] == "query" {
            exprs.push(grafana_variable_expr(&query).unwrap_or(query));
        }
    }
    exprs
}

fn alert_exprs() -> Vec<String> {
    let doc = yaml_docs(&read("examples/deploy/prometheus-alerts.yml"), "alerts")
        .pop()
        .expect("a document");
    let mut exprs = Vec::new();
    for group in doc["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            exprs.push(
                rule["expr"]
                    .as_str()
                    .expect("every rule has an expr")
                    .to_string(),
            );
        }
    }
    exprs
}

#[test]
fn promql_names_are_found_without_labels_functions_or_variables() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (endpoint, le) (rate(resound_x_bucket{job=~"$job", a="b{c}"}[$__rate_interval]))) / on (i) group_left (k) resound_y offset 5m > bool 0.5 * 1e3 or vector(0)"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["resound_x_bucket", "resound_y"]
    );
    assert_eq!(
        grafana_variable_expr(r#"label_values(resound_connected{job=~"$job"}, instance)"#)
            .as_deref(),
        Some(r#"resound_connected{job=~"$job"}"#)
    );
}

/// `# TYPE name kind` lines of the exposition: every family that has a series.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Whether `name` is a series of one of the families.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    if families
        .get(name)
        .is_some_and(|kind| kind != "histogram" && kind != "summary")
    {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|kind| kind == "histogram" || (kind == "summary" && *suffix != "_bucket"))
    })
}

/// Series Prometheus itself writes for every scrape target.
const SCRAPE_SERIES: &[&str] = &["up"];

/// The Redis the cluster tests use (`.ci/run` starts it).
const REDIS_ADDR: &str = "127.0.0.1:6379";

/// PUBLISH over a raw connection; returns how many subscribers received it.
async fn redis_publish(channel: &str, payload: &str) -> i64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(REDIS_ADDR)
        .await
        .expect("Redis on 127.0.0.1:6379");
    let command = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
        channel.len(),
        payload.len()
    );
    stream.write_all(command.as_bytes()).await.expect("write");
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply).await.expect("read");
    let text = String::from_utf8_lossy(&reply[..n]);
    text.trim()
        .strip_prefix(':')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("PUBLISH reply {text:?}"))
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_metrics_the_server_exports() {
    // A cluster node with a webhook target, so the cluster and webhook families exist too.
    // Families with labels appear once a series exists: the webhook families from the first
    // event (the target refuses connections; retries do not matter here).
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hook_port = unused.local_addr().expect("addr").port();
    drop(unused);
    let prefix = format!("it-deploy-{}", resound::protocol::SocketId::random()).replace('.', "-");
    let s = TestServer::start(
        &TestConfig::new()
            .scaling(&prefix)
            .scaling_setting("redis_url", format!("redis://{REDIS_ADDR}/0"))
            .webhook(&format!("http://127.0.0.1:{hook_port}/hook"))
            .toml(),
    )
    .await;
    let mut subscriber = s.client().await;
    subscriber.subscribe("x").await;
    let r = s.api().trigger(&["x"], "e", "{}").await;
    assert_eq!(r.status, 200, "{}", r.text);
    subscriber.recv_event("e").await;
    let leaver = s.client().await;
    drop(leaver);
    // Something that is not a cluster message on the control channel every node subscribes
    // to: counted as dropped (reason "undecodable"), so that family exists as well.
    assert!(redis_publish(&format!("{prefix}#ctl"), "not a cluster message").await >= 1);

    let wanted = [
        "resound_new_disconnections_total",
        "resound_webhooks_sent_total",
        "resound_cluster_dropped_total",
    ];
    let deadline = Instant::now() + WAIT;
    let exposition = loop {
        let text = raw_request("GET", &s.url("/metrics"), String::new())
            .await
            .text;
        let fams = families(&text);
        if wanted.iter().all(|f| fams.contains_key(*f)) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let families = families(&exposition);

    let mut missing = Vec::new();
    let mut checked = BTreeSet::new();
    for (source, exprs) in [
        ("grafana-dashboard.json", dashboard_exprs()),
        ("prometheus-alerts.yml", alert_exprs()),
    ] {
        assert!(!exprs.is_empty(), "{source} has expressions");
        for expr in exprs {
            for name in metric_names(&expr) {
                if SCRAPE_SERIES.contains(&name.as_str()) {
                    continue;
                }
                if !exported(&name, &families) {
                    missing.push(format!("{source}: {name} (in {expr})"));
                }
                checked.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "names the server does not export:\n{}\nexported: {:?}",
        missing.join("\n"),
        families.keys().collect::<Vec<_>>()
    );
    for expected in [
        "resound_connected",
        "resound_http_request_duration_seconds_bucket",
        "resound_fanout_size_bucket",
        "resound_webhooks_failed_total",
        "resound_cluster_healthy",
        "resound_cluster_dropped_total",
    ] {
        assert!(
            checked.contains(expected),
            "{expected} is used: {checked:?}"
        );
    }
}

/// Runs the real binary with `args` and `env`, the inherited RESOUND_/REVERB_ variables removed.
async fn resound(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_resound"));
    for (k, _) in std::env::vars() {
        if ["RESOUND_", "REVERB_", "REDIS_", "SOKETI_", "PUSHER_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .expect("resound exits within 10 s")
        .expect("run resound")
}

/// A team moving from Soketi or Pusher keeps its environment: `check-config` shows the app
/// and the cluster settings its variables define, and names the variables it ignores.
#[tokio::test]
async fn check_config_reads_a_soketi_and_a_pusher_environment() {
    let out = resound(
        &["check-config"],
        &[
            ("SOKETI_DEFAULT_APP_ID", "1234"),
            ("SOKETI_DEFAULT_APP_KEY", "soketi-key"),
            ("SOKETI_DEFAULT_APP_SECRET", "soketi-secret"),
            ("SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true"),
            ("SOKETI_ADAPTER_DRIVER", "redis"),
            ("SOKETI_DB_REDIS_HOST", "redis.internal"),
            ("SOKETI_APP_MANAGER_DRIVER", "postgres"),
            ("PUSHER_APP_ID", "55"),
            ("PUSHER_APP_KEY", "pusher-key"),
            ("PUSHER_APP_SECRET", "pusher-secret"),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let effective: toml::Value = toml::from_str(&text).expect("check-config prints TOML");
    let apps = effective["apps"].as_array().expect("apps");
    let ids: Vec<&str> = apps.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["55", "1234"]);
    assert_eq!(apps[1]["enable_client_messages"].as_bool(), Some(true));
    assert_eq!(effective["scaling"]["enabled"].as_bool(), Some(true));
    assert_eq!(
        effective["scaling"]["redis_url"].as_str(),
        Some("redis://redis.internal:6379/0")
    );
    assert!(!text.contains("soketi-secret"), "secrets are masked");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SOKETI_APP_MANAGER_DRIVER"), "{stderr}");
}

#[tokio::test]
async fn probe_exits_0_while_the_server_answers_and_1_once_it_is_gone() {
    let mut s = TestServer::default().await;
    let port = s.addr.port().to_string();
    for path in ["/up", "/ready"] {
        let out = resound(
            &["probe", "--path", path],
            &[("RESOUND_HOST", "127.0.0.1"), ("RESOUND_PORT", &port)],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = resound(
        &[
            "probe",
            "--path",
            "/nothing-here",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "a 404 is unhealthy");
    s.stop().await;
    let out = resound(&["probe", "--host", "127.0.0.1", "--port", &port], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&port), "names the address: {stderr}");
}

#[tokio::test]
async fn probe_speaks_tls_when_the_server_does() {
    let dir = std::env::temp_dir().join(format!("resound-probe-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ck = rcgen::generate_simple_self_signed(vec!["resound.example".to_string()])
        .expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let tls = format!(
        "shutdown_grace_period = 2\n\n[server.tls]\ncert = {:?}\nkey = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let toml = config("", "").replace("shutdown_grace_period = 2", &tls);
    let path = dir.join("resound.toml");
    std::fs::write(&path, &toml).expect("write config");
    let mut s = TestServer::start(&toml).await;
    let port = s.addr.port().to_string();
    let config_arg = path.display().to_string();
    let out = resound(&["--config", &config_arg, "probe", "--port", &port], &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}

#[tokio::test]
async fn host_port_and_log_format_come_from_flags_or_the_environment() {
    let effective = |out: &std::process::Output| -> ServerConfig {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        #[derive(Deserialize)]
        struct Effective {
            server: ServerConfig,
        }
        let text = String::from_utf8_lossy(&out.stdout);
        toml::from_str::<Effective>(&text)
            .expect("check-config prints TOML")
            .server
    };
    let out = resound(
        &["check-config"],
        &[
            ("RESOUND_HOST", "127.0.0.9"),
            ("RESOUND_PORT", "6001"),
            ("REVERB_SERVER_PORT", "7001"),
            ("RESOUND_LOG_FORMAT", "json"),
        ],
    )
    .await;
    let s = effective(&out);
    assert_eq!((s.host.as_str(), s.port), ("127.0.0.9", 6001));
    let out = resound(
        &["check-config", "--port", "6002"],
        &[("RESOUND_PORT", "6001"), ("RESOUND_SERVER__PORT", "7002")],
    )
    .await;
    assert_eq!(effective(&out).port, 6002, "the flag wins");
    let out = resound(&["check-config"], &[("RESOUND_LOG_FORMAT", "yaml")]).await;
    assert!(!out.status.success(), "an unknown log format is refused");
    // What Kubernetes sets for a Service named resound is refused with a hint, and the chart
    // turns those variables off.
    let out = resound(
        &["check-config"],
        &[("RESOUND_PORT", "tcp://10.96.0.12:8080")],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("enableServiceLinks"));
    assert!(read("helm/resound/templates/deployment.yaml").contains("enableServiceLinks: false"));
}

#[test]
fn chart_names_stay_within_63_characters() {
    // Kubernetes refuses longer names; a suffix appended to the full name (itself up to 63)
    // would overflow, so second objects are named through resound.componentName.
    let dir = root().join("helm/resound/templates");
    for entry in std::fs::read_dir(&dir).expect("templates") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read template");
        for (n, line) in text.lines().enumerate() {
            let appended = line.contains("include \"resound.fullname\"")
                && (line.contains("}}-") || line.contains("\"%s-"))
                && !line.contains("| trunc $room");
            assert!(
                !appended,
                "{}:{}: a suffix after the full name can pass 63 characters: {line}",
                path.display(),
                n + 1
            );
        }
    }
    let helpers = read("helm/resound/templates/_helpers.tpl");
    assert!(helpers.contains("define \"resound.componentName\""));
    assert!(helpers.contains("sub 62 (len .suffix)"));
}

#[test]
fn chart_refuses_unknown_scaling_modes() {
    let helpers = read("helm/resound/templates/_helpers.tpl");
    assert!(helpers.contains("fail (printf \"scaling.enabled must be auto, true or false"));
    let schema: Json =
        serde_json::from_str(&read("helm/resound/values.schema.json")).expect("schema is JSON");
    let allowed = &schema["properties"]["scaling"]["properties"]["enabled"];
    assert_eq!(
        allowed["oneOf"][1]["enum"],
        serde_json::json!(["auto", "true", "false"])
    );
}

#[test]
fn chart_alerts_are_the_example_alerts_and_select_the_chart_job() {
    assert_eq!(
        read("helm/resound/files/prometheus-alerts.yml"),
        read("examples/deploy/prometheus-alerts.yml"),
        "helm/resound/files/prometheus-alerts.yml is a copy of examples/deploy/prometheus-alerts.yml"
    );
    // The ServiceMonitor names the job after app.kubernetes.io/name, which the Services carry
    // and the rule template substitutes for the alerts' job matcher.
    let monitor = read("helm/resound/templates/servicemonitor.yaml");
    assert!(monitor.contains("jobLabel: app.kubernetes.io/name"));
    let rule = read("helm/resound/templates/prometheusrule.yaml");
    assert!(
        rule.contains("replace \"job=~\\\"resound.*\\\"\" $job"),
        "{rule}"
    );
    let alerts = read("examples/deploy/prometheus-alerts.yml");
    let exprs = alert_exprs();
    assert!(!exprs.is_empty());
    for expr in exprs.iter().filter(|e| e.contains("job")) {
        assert!(
            expr.contains("job=~\"resound.*\""),
            "every job matcher is the one the chart rewrites: {expr}"
        );
    }
    assert!(
        alerts.contains("jobLabel"),
        "the alerts file says where the job label comes from"
    );
}

#[test]
fn declared_rust_version_is_what_the_lock_file_needs() {
    // Cargo.toml's rust-version must be the highest rust-version of any locked dependency
    // built on Linux: Debian's or an older toolchain then fails with a clear message instead
    // of a compile error deep in a dependency.
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
            "--manifest-path",
        ])
        .arg(root().join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Json = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let version = |v: &str| -> (u64, u64) {
        let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    let resolved: BTreeSet<&str> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let packages = meta["packages"].as_array().expect("packages");
    let ours = packages
        .iter()
        .find(|p| p["name"] == "resound")
        .and_then(|p| p["rust_version"].as_str())
        .map(version)
        .expect("Cargo.toml declares rust-version");
    let needed = packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| resolved.contains(id)))
        .filter(|p| p["name"] != "resound")
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?)))
        .max()
        .expect("dependencies declare rust-version");
    assert_eq!(
        ours, needed.0,
        "Cargo.toml's rust-version; {} needs {:?}",
        needed.1, needed.0
    );
    for doc in ["README.md", "docs/operations.md"] {
        let text = read(doc);
        let stated = format!("Rust {}.{}", ours.0, ours.1);
        assert!(text.contains(&stated), "{doc} states {stated}");
    }
}
