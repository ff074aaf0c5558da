//! Delivers one signed request: a timeout per attempt, exponential back-off between
//! attempts, and the verdict on each answer (protocol.md 6.5 [REC]).
//!
//! [`DeliveryPolicy`] and [`classify`] are pure; [`deliver`] is the async loop that applies
//! them over a [`Transport`] and keeps the sent / retried / failed counters. The same bytes
//! and signature go out on every attempt. It does not queue, order or batch anything.

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::config::DispatcherSettings;
use super::error::AttemptError;
use super::metrics::AppMetrics;
use super::payload::OutgoingRequest;
use super::transport::Transport;

/// Timeout and back-off of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeliveryPolicy {
    pub(crate) request_timeout: Duration,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    /// No attempt starts later than this after the first attempt started.
    pub(crate) retry_window: Duration,
}

impl DeliveryPolicy {
    pub(crate) fn from_settings(settings: &DispatcherSettings) -> Self {
        DeliveryPolicy {
            request_timeout: settings.request_timeout,
            initial_backoff: settings.initial_backoff,
            max_backoff: settings.max_backoff,
            retry_window: settings.retry_window,
        }
    }

    /// Wait before retry number `retry` (0-based): `initial * 2^retry`, capped at `max`.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What an HTTP status means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Delivered,
    Retry,
    GiveUp,
}

/// 2xx delivers; 5xx, 408, 409, 425 and 429 are retried; every other status gives up.
pub(crate) fn classify(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        408 | 409 | 425 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::GiveUp,
    }
}

/// How a delivery ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered {
        attempts: u32,
    },
    /// A status that is not worth repeating the request for.
    Rejected {
        status: StatusCode,
        attempts: u32,
    },
    /// Retryable failures until the retry window was used up.
    Exhausted {
        last_failure: String,
        attempts: u32,
    },
}

/// Sends `request` until it is delivered, rejected, or the retry window is used up.
/// Counts `sent` or `failed` once per request and `retried` once per repeated attempt.
/// Cancel safe: dropping the future abandons the request.
pub(crate) async fn deliver(
    transport: &dyn Transport,
    request: &OutgoingRequest,
    policy: &DeliveryPolicy,
    metrics: &AppMetrics,
) -> Outcome {
    let started = Instant::now();
    let mut attempts: u32 = 0;
    loop {
        attempts = attempts.saturating_add(1);
        let result = tokio::time::timeout(policy.request_timeout, transport.post(request)).await;
        let failure = match result {
            Ok(Ok(status)) => match classify(status) {
                Verdict::Delivered => {
                    metrics.sent.inc();
                    return Outcome::Delivered { attempts };
                }
                Verdict::GiveUp => {
                    metrics.failed.inc();
                    return Outcome::Rejected { status, attempts };
                }
                Verdict::Retry => format!("status {}", status.as_u16()),
            },
            Ok(Err(err)) => err.summary(),
            Err(_) => AttemptError::Timeout(policy.request_timeout).summary(),
        };
        let wait = policy.backoff(attempts - 1);
        if started.elapsed().saturating_add(wait) > policy.retry_window {
            metrics.failed.inc();
            return Outcome::Exhausted {
                last_failure: failure,
                attempts,
            };
        }
        metrics.retried.inc();
        tracing::debug!(attempts, failure = %failure, wait_ms = wait.as_millis() as u64, "webhook attempt failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::webhooks::metrics::WebhookMetrics;
    use crate::webhooks::transport::Attempt;
    use bytes::Bytes;
    use http::HeaderMap;
    use parking_lot::Mutex;
    use std::collections::VecDeque;

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy::from_settings(&DispatcherSettings::default())
    }

    #[test]
    fn backoff_doubles_from_one_second_to_a_sixty_second_cap() {
        let policy = policy();
        let waits: Vec<u64> = (0..10).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(policy.backoff(31), Duration::from_secs(60));
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn statuses_are_classified_as_in_the_spec() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap()),
                Verdict::Delivered
            );
        }
        for code in [408, 409, 425, 429, 500, 502, 503, 504, 599] {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap()),
                Verdict::Retry,
                "{code}"
            );
        }
        for code in [100, 301, 304, 400, 401, 403, 404, 405, 410, 413, 422] {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap()),
                Verdict::GiveUp,
                "{code}"
            );
        }
    }

    /// Answers from a script, recording when each attempt started.
    struct Scripted {
        answers: Mutex<VecDeque<Option<u16>>>,
        attempts: Mutex<Vec<Instant>>,
    }

    impl Scripted {
        fn new(answers: impl IntoIterator<Item = Option<u16>>) -> Self {
            Scripted {
                answers: Mutex::new(answers.into_iter().collect()),
                attempts: Mutex::new(Vec::new()),
            }
        }
    }

    impl Transport for Scripted {
        fn post<'a>(&'a self, _request: &'a OutgoingRequest) -> Attempt<'a> {
            self.attempts.lock().push(Instant::now());
            let answer = self.answers.lock().pop_front().unwrap_or(Some(500));
            Box::pin(async move {
                match answer {
                    Some(code) => Ok(StatusCode::from_u16(code).unwrap()),
                    None => Err(AttemptError::Refused),
                }
            })
        }
    }

    fn request() -> OutgoingRequest {
        OutgoingRequest {
            uri: "http://127.0.0.1:1/".parse().unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
            events: 1,
        }
    }

    fn metrics() -> AppMetrics {
        WebhookMetrics::register(&prometheus::Registry::new(), "t")
            .unwrap()
            .for_app("1")
    }

    fn offsets(transport: &Scripted, start: Instant) -> Vec<u64> {
        transport
            .attempts
            .lock()
            .iter()
            .map(|at| at.duration_since(start).as_secs())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_with_doubling_waits() {
        let transport = Scripted::new([Some(500), None, Some(429), Some(204)]);
        let metrics = metrics();
        let start = Instant::now();
        let outcome = deliver(&transport, &request(), &policy(), &metrics).await;
        assert_eq!(outcome, Outcome::Delivered { attempts: 4 });
        assert_eq!(offsets(&transport, start), [0, 1, 3, 7]);
        assert_eq!(
            (
                metrics.sent.get(),
                metrics.retried.get(),
                metrics.failed.get()
            ),
            (1, 3, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_400_is_not_retried() {
        let transport = Scripted::new([Some(400)]);
        let metrics = metrics();
        let outcome = deliver(&transport, &request(), &policy(), &metrics).await;
        assert_eq!(
            outcome,
            Outcome::Rejected {
                status: StatusCode::BAD_REQUEST,
                attempts: 1
            }
        );
        assert_eq!(
            (
                metrics.sent.get(),
                metrics.retried.get(),
                metrics.failed.get()
            ),
            (0, 0, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_retry_window_is_used_up() {
        let transport = Scripted::new(std::iter::repeat_n(Some(503), 100));
        let metrics = metrics();
        let start = Instant::now();
        let outcome = deliver(&transport, &request(), &policy(), &metrics).await;
        assert!(
            matches!(outcome, Outcome::Exhausted { attempts: 10, .. }),
            "{outcome:?}"
        );
        // 0, +1, +2, +4, +8, +16, +32, +60, +60, +60; the next would start at 303 s > 300 s.
        assert_eq!(
            offsets(&transport, start),
            [0, 1, 3, 7, 15, 31, 63, 123, 183, 243]
        );
        assert_eq!(
            (
                metrics.sent.get(),
                metrics.retried.get(),
                metrics.failed.get()
            ),
            (0, 9, 1)
        );
    }

    /// Never answers.
    struct Silent;

    impl Transport for Silent {
        fn post<'a>(&'a self, _request: &'a OutgoingRequest) -> Attempt<'a> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_count_as_retryable_failures() {
        let metrics = metrics();
        let short = DeliveryPolicy {
            retry_window: Duration::from_secs(30),
            ..policy()
        };
        let start = Instant::now();
        let outcome = deliver(&Silent, &request(), &short, &metrics).await;
        // Attempts start at 0, 11 and 23 s; the third times out at 33 s and a fourth would
        // start at 37 s, past the 30 s window.
        assert!(
            matches!(&outcome, Outcome::Exhausted { attempts: 3, last_failure } if last_failure.contains("timeout")),
            "{outcome:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(33));
        assert_eq!(metrics.retried.get(), 2);
    }
}
