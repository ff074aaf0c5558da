//! How a run is reported: a human-readable table on stdout and, on request, one JSON line with
//! the scenario, its parameters, its results, the target URL (and whether it was the
//! baseline) and a timestamp. Also the small
//! probes whose numbers end up in reports (server RSS from /proc).

use serde_json::{Map, Value};

use crate::stats::LatencySummary;
use std::time::{SystemTime, UNIX_EPOCH};

/// One run's report, built up field by field in the order the table shows them.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    /// The run was against the built-in baseline server.
    pub baseline: bool,
    pub timestamp: String,
    pub params: Vec<(String, Value)>,
    pub results: Vec<(String, Value)>,
}

impl Report {
    pub fn new(scenario: &str, target: &str, baseline: bool) -> Self {
        Self {
            scenario: scenario.to_string(),
            target: target.to_string(),
            baseline,
            timestamp: rfc3339_now(),
            params: Vec::new(),
            results: Vec::new(),
        }
    }

    pub fn param(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.params.push((key.to_string(), value.into()));
        self
    }

    pub fn result(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.results.push((key.to_string(), value.into()));
        self
    }

    pub fn get_result(&self, key: &str) -> Option<&Value> {
        self.results.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn to_json(&self) -> Value {
        let params: Map<String, Value> = self.params.iter().cloned().collect();
        let results: Map<String, Value> = self.results.iter().cloned().collect();
        serde_json::json!({
            "scenario": self.scenario,
            "params": params,
            "results": results,
            "target": self.target,
            "server": if self.baseline { "baseline" } else { "target" },
            "timestamp": self.timestamp,
        })
    }

    pub fn table(&self) -> String {
        let width = self
            .params
            .iter()
            .chain(&self.results)
            .map(|(k, _)| k.len())
            .max()
            .unwrap_or(0);
        let mut out = format!(
            "== {} against {}{} at {}\n",
            self.scenario,
            self.target,
            if self.baseline { " (baseline)" } else { "" },
            self.timestamp
        );
        out.push_str("-- parameters\n");
        for (k, v) in &self.params {
            out.push_str(&format!("  {k:<width$}  {}\n", show(v)));
        }
        out.push_str("-- results\n");
        for (k, v) in &self.results {
            out.push_str(&format!("  {k:<width$}  {}\n", show(v)));
        }
        out
    }

    /// Prints the table, and the JSON line when asked.
    pub fn print(&self, json: bool) {
        println!("{}", self.table());
        if json {
            println!("{}", self.to_json());
        }
    }
}

fn show(value: &Value) -> String {
    if let Some(p50) = value.get("p50_ms") {
        let f = |k: &str| {
            value
                .get(k)
                .map_or_else(|| "-".to_string(), Value::to_string)
        };
        return format!(
            "p50 {p50} · p95 {} · p99 {} · p99.9 {} · max {} ms  (n={})",
            f("p95_ms"),
            f("p99_ms"),
            f("p999_ms"),
            f("max_ms"),
            f("count")
        );
    }
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => {
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else if f.abs() >= 1.0 {
                    format!("{f:.2}")
                } else {
                    format!("{f:.4}")
                }
            }
            _ => n.to_string(),
        },
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// A latency summary as a JSON object in milliseconds.
pub fn latency_value(s: &LatencySummary) -> Value {
    serde_json::json!({
        "count": s.count,
        "mean_ms": round3(s.mean_us / 1_000.0),
        "p50_ms": round3(s.p50_us / 1_000.0),
        "p95_ms": round3(s.p95_us / 1_000.0),
        "p99_ms": round3(s.p99_us / 1_000.0),
        "p999_ms": round3(s.p999_us / 1_000.0),
        "max_ms": round3(s.max_us / 1_000.0),
    })
}

/// Rounds to three decimals for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `VmRSS` of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat` (clock ticks of 10 ms,
/// the Linux default).
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(std::time::Duration::from_millis((utime + stime) * 10))
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// UTC timestamp `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (civil-from-days, proleptic
/// Gregorian). Hand-written: the bench needs nothing else from a date library.
pub fn rfc3339(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let rem = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1353088179), "2012-11-16T17:49:39Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn json_line_has_the_documented_keys() {
        let mut r = Report::new("fanout", "http://127.0.0.1:8080", false);
        r.param("subscribers", 10).result("deliveries_per_s", 12.5);
        let v = r.to_json();
        assert_eq!(v["scenario"], "fanout");
        assert_eq!(v["params"]["subscribers"], 10);
        assert_eq!(v["results"]["deliveries_per_s"], 12.5);
        assert_eq!(v["target"], "http://127.0.0.1:8080");
        assert_eq!(v["server"], "target");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(r.table().contains("deliveries_per_s"));
    }

    #[test]
    fn rss_of_self_is_readable() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
