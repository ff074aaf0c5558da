//! `SharedKeys` over Redis: one string per idempotency key (`Keys::idempotency`), claimed by
//! the `CLAIM` script, overwritten with the answer when the request is done, freed by
//! `RELEASE` when it failed. The value says which: `p\n{fingerprint}` while a node handles
//! the request, `d\n{fingerprint}\n{answer}` after it.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::RedisBackend;
use crate::app::AppId;
use crate::cluster::{Claim, ClusterError, SharedKeys, PENDING};

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// What a stored value says to a request with `fingerprint`.
fn read(value: &[u8], fingerprint: &str) -> Claim {
    let mut parts = value.splitn(3, |b| *b == b'\n');
    let state = parts.next().unwrap_or_default();
    let stored = parts.next().unwrap_or_default();
    if stored != fingerprint.as_bytes() {
        return Claim::Mismatch;
    }
    match (state, parts.next()) {
        (b"d", Some(answer)) => Claim::Done(Bytes::copy_from_slice(answer)),
        _ => Claim::InProgress,
    }
}

#[async_trait]
impl SharedKeys for RedisBackend {
    async fn claim_key(
        &self,
        app: &AppId,
        key: &str,
        fingerprint: &str,
    ) -> Result<Claim, ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.key(self.keys.idempotency(app.as_str(), key))
            .arg(format!("p\n{fingerprint}"))
            .arg(millis(PENDING));
        let (held, value): (i64, Vec<u8>) = inv.invoke_async(&mut conn).await?;
        Ok(if held == 0 {
            Claim::New
        } else {
            read(&value, fingerprint)
        })
    }

    async fn complete_key(
        &self,
        app: &AppId,
        key: &str,
        fingerprint: &str,
        answer: &Bytes,
        window: Duration,
    ) -> Result<(), ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let mut value = Vec::with_capacity(fingerprint.len() + answer.len() + 3);
        value.extend_from_slice(b"d\n");
        value.extend_from_slice(fingerprint.as_bytes());
        value.push(b'\n');
        value.extend_from_slice(answer);
        let _: () = redis::cmd("SET")
            .arg(self.keys.idempotency(app.as_str(), key))
            .arg(value)
            .arg("PX")
            .arg(millis(window))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn release_key(
        &self,
        app: &AppId,
        key: &str,
        fingerprint: &str,
    ) -> Result<(), ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(self.keys.idempotency(app.as_str(), key))
            .arg(format!("p\n{fingerprint}"));
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_read_back_for_the_same_request_only() {
        assert_eq!(read(b"p\nabc", "abc"), Claim::InProgress);
        assert_eq!(
            read(b"d\nabc\n{\"x\":\n1}", "abc"),
            Claim::Done(Bytes::from_static(b"{\"x\":\n1}"))
        );
        assert_eq!(read(b"d\nabc\n{}", "abd"), Claim::Mismatch);
        assert_eq!(read(b"", "abc"), Claim::Mismatch);
    }
}
