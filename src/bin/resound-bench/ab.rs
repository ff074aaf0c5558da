//! A/B runs: the server under test and the built-in baseline interleaved in one session (each
//! round runs the target, then the baseline), so whatever else the machine is doing weighs on
//! both; scenarios report target/baseline ratios of their headline figures.

use anyhow::Result;
use std::future::Future;
use std::time::Duration;

use crate::baseline::BaselineChild;
use crate::cli::CommonArgs;
use crate::report::{round3, Report};
use crate::run::Setup;

/// Runs `once` against the target and then a baseline started for the purpose, `rounds` times,
/// printing each report as it finishes; returns the (target, baseline) pairs in order.
pub async fn interleave<F, Fut>(
    common: &CommonArgs,
    rounds: usize,
    mut once: F,
) -> Result<Vec<(Report, Report)>>
where
    F: FnMut(Setup) -> Fut,
    Fut: Future<Output = Result<Report>>,
{
    let target = common.setup(None)?;
    let baseline = BaselineChild::start().await?;
    let mut base = common.setup(Some(baseline.port))?;
    base.server_pid = baseline.pid;
    let mut pairs = Vec::new();
    let result: Result<()> = async {
        for _ in 0..rounds.max(1) {
            let a = once(target.clone()).await?;
            a.print(common.json);
            settle().await;
            let b = once(base.clone()).await?;
            b.print(common.json);
            settle().await;
            pairs.push((a, b));
        }
        Ok(())
    }
    .await;
    baseline.stop().await;
    result?;
    Ok(pairs)
}

/// Lets the server finish closing the previous run's sockets before the next run starts.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// A number from a report's results, by a path of keys (`["latency", "p99_ms"]`).
pub fn number(report: &Report, path: &[&str]) -> Option<f64> {
    let (first, rest) = path.split_first()?;
    let mut v = report.get_result(first)?;
    for key in rest {
        v = v.get(key)?;
    }
    v.as_f64()
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The geometric mean of the positive values (ratios), 0 when there are none.
pub fn geometric_mean(values: &[f64]) -> f64 {
    let positive: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
    if positive.is_empty() {
        return 0.0;
    }
    (positive.iter().map(|v| v.ln()).sum::<f64>() / positive.len() as f64).exp()
}

/// `[min, max]` of the per-round ratios: a wide range means the machine was noisy and more
/// rounds are needed.
pub fn spread(values: &[f64]) -> serde_json::Value {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::json!([round3(min), round3(max)])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_means() {
        assert_eq!(ratio(2.0, 4.0), 0.5);
        assert_eq!(ratio(1.0, 0.0), 0.0);
        assert!((geometric_mean(&[0.5, 2.0]) - 1.0).abs() < 1e-9);
        assert_eq!(geometric_mean(&[]), 0.0);
        assert_eq!(spread(&[1.5, 0.5, 1.0]), serde_json::json!([0.5, 1.5]));
        assert!(spread(&[]).is_null());
    }

    #[test]
    fn numbers_by_path() {
        let mut r = Report::new("x", "http://127.0.0.1:1", false);
        r.result("latency", serde_json::json!({"p99_ms": 1.5}))
            .result("n", 3);
        assert_eq!(number(&r, &["latency", "p99_ms"]), Some(1.5));
        assert_eq!(number(&r, &["n"]), Some(3.0));
        assert_eq!(number(&r, &["latency", "p50_ms"]), None);
        assert_eq!(number(&r, &[]), None);
    }
}
