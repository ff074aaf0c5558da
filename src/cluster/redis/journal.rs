//! The webhook journal in Redis (`webhooks::Journal`): one stream per node.
//!
//! Keys (`P` is the prefix): `P:node:{id}:wh` is node `id`'s journal, a stream of entries
//! with one field `j` (a `JournalEntry` as JSON), capped near [`JOURNAL_MAXLEN`] entries;
//! `P:wh` is the set of node ids that have journaled.
//!
//! A node appends (`XADD`) before a request's first attempt and deletes (`XDEL`) the entry
//! when the request is finished. When a node's lease is gone, the node that reaps it adopts
//! its journal: [`ADOPT`] moves a chunk of entries into the adopter's own stream (so they
//! survive the adopter too) and returns them, in order, for replay. The script refuses while
//! the owner's lease is alive, so the orphan sweep (every heartbeat, over `P:wh`) can never
//! take a live node's journal; it picks up journals whose reaper died mid-way.

use async_trait::async_trait;
use tracing::{debug, warn};

use super::{now_ms, RedisBackend};
use crate::cluster::{ClusterError, Control};
use crate::webhooks::{Journal, JournalEntry, JournalId, Replay, WebhookEvent};

/// Entries a journal keeps at most (approximately; the oldest go first). Far above what
/// a node's lanes can hold, so only a runaway would reach it.
const JOURNAL_MAXLEN: usize = 100_000;
/// Entries moved per script call, so adopting a long journal never blocks Redis for long.
const ADOPT_CHUNK: usize = 200;

/// KEYS: nodes zset, dead journal, own journal, journals set.
/// ARGV: dead node id, now (ms), chunk size, maxlen.
/// Returns `[id1, json1, id2, json2, ...]` (ids in the adopter's stream); `{}` when the owner
/// is alive or nothing is left (then the dead journal and its set entry are removed).
pub(super) const ADOPT: &str = r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return {} end
local entries = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', ARGV[3])
if #entries == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[4], ARGV[1])
  return {}
end
local out = {}
for _, e in ipairs(entries) do
  local fields = e[2]
  local json = ''
  for i = 1, #fields, 2 do
    if fields[i] == 'j' then json = fields[i + 1] end
  end
  local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'j', json)
  redis.call('XDEL', KEYS[2], e[1])
  out[#out + 1] = id
  out[#out + 1] = json
end
return out
";

impl RedisBackend {
    /// Takes over `dead`'s journal (unless its lease is alive) and hands the requests to the
    /// server to deliver, in order. Returns how many were taken.
    pub(super) async fn adopt_journal(&self, dead: u64) -> Result<usize, ClusterError> {
        let mut conn = self.conn.clone();
        let mut adopted = 0;
        loop {
            let mut invocation = self.scripts.adopt.prepare_invoke();
            invocation
                .key(self.keys.nodes())
                .key(self.keys.journal(dead))
                .key(self.keys.journal(self.node))
                .key(self.keys.journals())
                .arg(dead)
                .arg(now_ms())
                .arg(ADOPT_CHUNK)
                .arg(JOURNAL_MAXLEN);
            let flat: Vec<String> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(ClusterError::Command)?;
            if flat.is_empty() {
                break;
            }
            let mut replays = Vec::with_capacity(flat.len() / 2);
            let mut pairs = flat.chunks_exact(2);
            for pair in &mut pairs {
                let [id, json] = pair else { continue };
                let id = JournalId(id.clone());
                match JournalEntry::decode(json) {
                    Ok(entry) => replays.push(Replay { id, entry }),
                    Err(e) => {
                        warn!(dead, error = %e, "unreadable webhook journal entry dropped");
                        self.forget(&id).await;
                    }
                }
            }
            adopted += replays.len();
            let chunk = flat.len() / 2;
            if !replays.is_empty() {
                // Fails only when the owner is gone (shutdown): the requests stay in this
                // node's journal, adopted again once this node's lease is gone.
                let _ = self.control.send(Control::Replay(replays));
            }
            if chunk < ADOPT_CHUNK {
                break;
            }
        }
        if adopted > 0 {
            warn!(
                dead,
                requests = adopted,
                "took over the webhook journal of a node that is gone"
            );
        }
        Ok(adopted)
    }

    /// Adopts the journals of nodes that are gone but whose journal nobody took (their
    /// reaper died first, or reaped them before journals existed).
    pub(super) async fn adopt_orphans(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let owners: Vec<u64> = redis::cmd("SMEMBERS")
            .arg(self.keys.journals())
            .query_async(&mut conn)
            .await
            .map_err(ClusterError::Command)?;
        for owner in owners.into_iter().filter(|owner| *owner != self.node) {
            self.adopt_journal(owner).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Journal for RedisBackend {
    async fn record(&self, entry: &JournalEntry) -> Option<JournalId> {
        if !self.healthy.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let json = entry.encode().ok()?;
        let mut conn = self.conn.clone();
        let (id, _): (String, i64) = redis::pipe()
            .cmd("XADD")
            .arg(self.keys.journal(self.node))
            .arg("MAXLEN")
            .arg("~")
            .arg(JOURNAL_MAXLEN)
            .arg("*")
            .arg("j")
            .arg(json)
            .cmd("SADD")
            .arg(self.keys.journals())
            .arg(self.node)
            .query_async(&mut conn)
            .await
            .map_err(|e| debug!(error = %e, "webhook journal write failed"))
            .ok()?;
        Some(JournalId(id))
    }

    async fn forget(&self, id: &JournalId) {
        let mut conn = self.conn.clone();
        let result: Result<i64, _> = redis::cmd("XDEL")
            .arg(self.keys.journal(self.node))
            .arg(&id.0)
            .query_async(&mut conn)
            .await;
        if let Err(e) = result {
            debug!(error = %e, "webhook journal delete failed; the request may be delivered twice");
        }
    }

    async fn settle(&self, app_id: &str, due: &[(&WebhookEvent, u64)]) -> Vec<bool> {
        let keys: Vec<Option<String>> = due
            .iter()
            .map(|(event, _)| match event {
                WebhookEvent::ChannelVacated { channel } => {
                    Some(self.keys.vacated_hold(app_id, channel))
                }
                WebhookEvent::MemberRemoved { channel, user_id } => {
                    Some(self.keys.member_hold(app_id, channel, user_id))
                }
                _ => None,
            })
            .collect();
        let mut invocation = self.scripts.settle.prepare_invoke();
        for ((_, token), key) in due.iter().zip(&keys) {
            if let Some(key) = key {
                invocation.key(key).arg(token.to_string());
            }
        }
        let mut conn = self.conn.clone();
        // Unreachable Redis: nobody could have taken a hold either, so the removals stand.
        let kept: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "settling held webhook removals failed; sending them");
                vec![1; keys.iter().flatten().count()]
            });
        let mut kept = kept.into_iter();
        keys.iter()
            .map(|key| key.is_none() || kept.next().unwrap_or(1) == 1)
            .collect()
    }
}
