//! `SharedHistory` over Redis: one hash and one stream per channel with history
//! (`Keys::history`), written by the `RECORD` script once per event cluster-wide, read by
//! `READ` (protocol.md 11.2). Both keys expire `history_ttl` after the channel's last event.
//! The stream is trimmed to `history_max_events` exactly and by age; `history_max_bytes`
//! (a node's memory bound) does not apply to it.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::RedisBackend;
use crate::app::AppId;
use crate::cluster::{ClusterError, HistoryBounds, KeptEvent, SharedHistory, SharedLog, Stamp};
use crate::protocol::SocketId;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A new history's epoch: 16 hex digits, like one node's.
pub(super) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The events of `READ`'s flat answer (`offset, frame, skipped socket` each).
pub(super) fn events(flat: Vec<Vec<u8>>) -> Result<Vec<KeptEvent>, ClusterError> {
    let malformed = || ClusterError::Setup("a malformed shared history entry".into());
    let mut out = Vec::with_capacity(flat.len() / 3);
    let mut it = flat.into_iter();
    while let (Some(o), Some(f), Some(x)) = (it.next(), it.next(), it.next()) {
        let offset = std::str::from_utf8(&o)
            .ok()
            .and_then(|o| o.parse::<u64>().ok())
            .ok_or_else(malformed)?;
        let except = std::str::from_utf8(&x)
            .ok()
            .and_then(|x| x.parse::<SocketId>().ok());
        out.push(KeptEvent {
            offset,
            frame: Bytes::from(f),
            except,
        });
    }
    Ok(out)
}

#[async_trait]
impl SharedHistory for RedisBackend {
    async fn record(
        &self,
        app: &AppId,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        bounds: HistoryBounds,
    ) -> Result<Stamp, ClusterError> {
        self.check()?;
        let [hash, stream] = self.keys.history(app.as_str(), channel);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.record.prepare_invoke();
        inv.key(hash)
            .key(stream)
            .arg(new_epoch())
            .arg(frame.as_ref())
            .arg(except.map(|s| s.to_string()).unwrap_or_default())
            .arg(bounds.max_events.max(1))
            .arg(millis(bounds.ttl));
        let (epoch, offset): (String, u64) = inv.invoke_async(&mut conn).await?;
        Ok(Stamp { epoch, offset })
    }

    async fn read(
        &self,
        app: &AppId,
        channel: &str,
        after: Option<u64>,
        bounds: HistoryBounds,
    ) -> Result<SharedLog, ClusterError> {
        self.check()?;
        let [hash, stream] = self.keys.history(app.as_str(), channel);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.read.prepare_invoke();
        inv.key(hash)
            .key(stream)
            .arg(new_epoch())
            .arg(after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX)))
            .arg(millis(bounds.ttl));
        let (epoch, last, kept, flat): (String, u64, u64, Vec<Vec<u8>>) =
            inv.invoke_async(&mut conn).await?;
        Ok(SharedLog {
            epoch,
            last,
            oldest: (last + 1).saturating_sub(kept),
            events: events(flat)?,
        })
    }
}
