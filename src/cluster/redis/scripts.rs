//! The Lua scripts of the backend: every change that must be decided atomically
//! cluster-wide (a first join, a last leave, a count crossing 0, a connection slot under a
//! maximum, a hold settled) is one script. Keys are built by `keys.rs`; each script's
//! contract (its `KEYS`, `ARGV` and answer) is written above it. Tested against a real Redis
//! below.

use redis::Script;

/// Adds a connection of a presence member. KEYS: `m`, `n`, `o` (see `Keys::presence`), the
/// node's `p` set, the member's hold key. ARGV: user, node, user_info, max members, `p` entry.
/// Returns `{first, roster (flat HGETALL of m), rejoined}`; `{-1, {}, 0}` when a new user
/// would go beyond the maximum.
const JOIN: &str = r"
local total = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if total == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {-1, {}, 0} end
redis.call('HINCRBY', KEYS[3], ARGV[2] .. '|' .. ARGV[1], 1)
total = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('SADD', KEYS[4], ARGV[5])
local first = 0
local rejoined = 0
if total == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]); first = 1
  rejoined = redis.call('DEL', KEYS[5])
end
return {first, redis.call('HGETALL', KEYS[1]), rejoined}
";

/// Removes a connection of a presence member. KEYS as `JOIN`. ARGV: user, node, `p` entry,
/// hold token (`""`: none), hold lifetime (ms). Returns 1 when it was the user's last
/// connection cluster-wide (the member left; the hold is set), else 0.
const LEAVE: &str = r"
local field = ARGV[2] .. '|' .. ARGV[1]
local c = redis.call('HINCRBY', KEYS[3], field, -1)
if c < 0 then redis.call('HDEL', KEYS[3], field); return 0 end
if c == 0 then redis.call('HDEL', KEYS[3], field); redis.call('SREM', KEYS[4], ARGV[3]) end
local t = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if t <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1]); redis.call('HDEL', KEYS[1], ARGV[1])
  if ARGV[4] ~= '' then redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[5]) end
  return 1
end
return 0
";

/// Settles held removals falling due: for each hold key, 1 (and the hold is removed) when it
/// still holds the token given, 0 when a re-add took it away (or a newer hold replaced it).
const SETTLE: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then redis.call('DEL', k); out[i] = 1 else out[i] = 0 end
end
return out
";

/// Reaps one dead node's connections of one presence member. KEYS: `m`, `n`, `o`. ARGV: node,
/// user. Returns 1 when the user left the channel (no other node has them), else 0.
const REAP_MEMBER: &str = r"
local field = ARGV[1] .. '|' .. ARGV[2]
local c = tonumber(redis.call('HGET', KEYS[3], field) or '0')
redis.call('HDEL', KEYS[3], field)
if c <= 0 then return 0 end
local t = redis.call('HINCRBY', KEYS[2], ARGV[2], -c)
if t <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]); redis.call('HDEL', KEYS[1], ARGV[2]); return 1 end
return 0
";

/// Records the wire version this node reads and returns the oldest one a live node reads
/// (a node that records none reads only version 1).
const WIRE: &str = r"
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local oldest = tonumber(ARGV[3])
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local v = tonumber(redis.call('HGET', KEYS[2], n) or '1')
  if v < oldest then oldest = v end
end
return oldest
";

/// Adds `delta` (ARGV[3]) to a node's share and to the cluster-wide total; returns
/// `{total, rejoined}`. With a hold key (KEYS[3], a channel's subscriptions): the total going to
/// 0 holds the channel's `channel_vacated` (KEYS[3] set to the token ARGV[4] for ARGV[5] ms,
/// when given); going up from 0 takes the hold away (`rejoined` 1), cancelling both webhooks.
const COUNT: &str = r"
local n = redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3])
if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
local g = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[3])
local delta = tonumber(ARGV[3])
if g <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if KEYS[3] and delta < 0 and ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) end
  return {0, 0}
end
local rejoined = 0
if KEYS[3] and delta > 0 and g == delta then rejoined = redis.call('DEL', KEYS[3]) end
return {g, rejoined}
";

/// Sets a node's shares to the counts given, moving each total by the difference (a resync).
/// KEYS: pairs of (total hash, node share hash). ARGV: per pair, the total's field, the share's
/// field and the count (0: the share is removed). Returns how many shares changed.
const SET_SHARES: &str = r"
local changed = 0
for i = 1, #KEYS, 2 do
  local j = (i - 1) / 2 * 3
  local want = tonumber(ARGV[j + 3])
  local had = tonumber(redis.call('HGET', KEYS[i + 1], ARGV[j + 2]) or '0')
  if want ~= had then
    changed = changed + 1
    if want > 0 then
      redis.call('HSET', KEYS[i + 1], ARGV[j + 2], want)
    else
      redis.call('HDEL', KEYS[i + 1], ARGV[j + 2])
    end
    if redis.call('HINCRBY', KEYS[i], ARGV[j + 1], want - had) <= 0 then
      redis.call('HDEL', KEYS[i], ARGV[j + 1])
    end
  end
end
return changed
";

/// Reserves a connection under a cluster-wide maximum (ARGV[4], 0 = none); -1 when full.
const OPEN: &str = r"
local g = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local max = tonumber(ARGV[4])
if max > 0 and g >= max then return -1 end
redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3])
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[3])
";

/// Claims an idempotency key. KEYS: the key (`Keys::idempotency`). ARGV: the pending value
/// (`p\n{fingerprint}`), its lifetime (ms). Returns `{0, ""}` when the key was free (now held),
/// else `{1, value}` with what holds it.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0, ''}
";

/// Frees a claimed idempotency key if it still holds this request's pending value (ARGV[1]).
/// Returns 1 when it was freed.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Appends an event to a channel's shared history. KEYS: the history's hash and stream
/// (`Keys::history`). ARGV: an epoch for a new history, the frame, the socket it skips (`""`:
/// none), the most events kept, the time kept (ms). A missing hash starts a new history (its
/// stream, if any is left, goes with it). The stream entry's id is Redis's clock, so the time
/// bound is one `MINID` on one clock whatever the nodes' clocks say; the offsets of the kept
/// entries are consecutive (entries leave from the oldest only). Returns `{epoch, offset}`.
const RECORD: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  redis.call('DEL', KEYS[2])
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '*', 'o', offset, 'f', ARGV[2], 'x', ARGV[3])
redis.call('XTRIM', KEYS[2], 'MINID', now - tonumber(ARGV[5]))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {epoch, offset}
";

/// Reads a channel's shared history. KEYS as `RECORD`. ARGV: an epoch for a new history, the
/// offset to read after (-1: none, only the position), the time kept (ms). A missing hash
/// starts a new, empty history that lives for the time kept. Events older than the time kept
/// are trimmed first. Returns `{epoch, last offset, kept, events}`, `events` being every kept
/// event after the offset, oldest first, flat (`offset, frame, skipped socket` each), or none
/// when some of them are no longer kept.
const READ: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  redis.call('DEL', KEYS[2])
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local last = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[2], 'MINID', now - tonumber(ARGV[3]))
local kept = redis.call('XLEN', KEYS[2])
local after = tonumber(ARGV[2])
local events = {}
if after >= 0 and after < last and last - after <= kept then
  local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', last - after)
  for i = #entries, 1, -1 do
    local f = entries[i][2]
    events[#events + 1] = f[2]
    events[#events + 1] = f[4]
    events[#events + 1] = f[6]
  end
end
return {epoch, last, kept, events}
";

/// The scripts, loaded once (by hash, then by source when Redis does not know them).
pub(super) struct Scripts {
    pub wire: Script,
    pub join: Script,
    pub leave: Script,
    pub reap_member: Script,
    pub count: Script,
    pub set_shares: Script,
    pub settle: Script,
    pub open: Script,
    pub adopt: Script,
    pub claim: Script,
    pub release: Script,
    pub record: Script,
    pub read: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            wire: Script::new(WIRE),
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            reap_member: Script::new(REAP_MEMBER),
            count: Script::new(COUNT),
            set_shares: Script::new(SET_SHARES),
            settle: Script::new(SETTLE),
            open: Script::new(OPEN),
            adopt: Script::new(super::journal::ADOPT),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
            record: Script::new(RECORD),
            read: Script::new(READ),
        }
    }
}

/// Each script against the real Redis at 127.0.0.1:6379, under a prefix of its own (so
/// parallel runs never meet), with every key deleted at the end.
#[cfg(test)]
mod tests {
    use redis::aio::MultiplexedConnection;
    use redis::AsyncCommands;

    use super::super::keys::{Keys, Tally};
    use super::*;

    struct Fixture {
        conn: MultiplexedConnection,
        prefix: String,
        keys: Keys,
        scripts: Scripts,
    }

    async fn fixture() -> Fixture {
        let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("redis url");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("a Redis at 127.0.0.1:6379");
        let prefix = format!("resound-scripts-{:016x}", rand::random::<u64>());
        let keys = Keys::new(&prefix, &prefix);
        Fixture {
            conn,
            prefix,
            keys,
            scripts: Scripts::new(),
        }
    }

    impl Fixture {
        async fn cleanup(mut self) {
            let found: Vec<String> = self
                .conn
                .keys(format!("{}:*", self.prefix))
                .await
                .expect("KEYS");
            if !found.is_empty() {
                let _: i64 = self.conn.del(found).await.expect("DEL");
            }
            let left: Vec<String> = self
                .conn
                .keys(format!("{}:*", self.prefix))
                .await
                .expect("KEYS");
            assert!(left.is_empty());
        }

        /// `JOIN` of `user` on `node` with `max` members: `(first, roster users, rejoined)`.
        async fn join(&mut self, node: u64, user: &str, max: usize) -> (i64, Vec<String>, i64) {
            let [m, n, o] = self.keys.presence("app", "presence-x");
            let mut inv = self.scripts.join.prepare_invoke();
            inv.key(&m)
                .key(&n)
                .key(&o)
                .key(self.keys.node(node, "p"))
                .key(self.keys.member_hold("app", "presence-x", user))
                .arg(user)
                .arg(node)
                .arg(format!("{{\"name\":\"{user}\"}}"))
                .arg(max)
                .arg(Keys::presence_entry("app", "presence-x", user));
            let (first, flat, rejoined): (i64, Vec<String>, i64) =
                inv.invoke_async(&mut self.conn).await.expect("JOIN");
            let users = flat.chunks_exact(2).map(|p| p[0].clone()).collect();
            (first, users, rejoined)
        }

        async fn leave(&mut self, node: u64, user: &str, hold: Option<(&str, u64)>) -> i64 {
            let [m, n, o] = self.keys.presence("app", "presence-x");
            let (token, ttl) = hold.unwrap_or(("", 0));
            let mut inv = self.scripts.leave.prepare_invoke();
            inv.key(&m)
                .key(&n)
                .key(&o)
                .key(self.keys.node(node, "p"))
                .key(self.keys.member_hold("app", "presence-x", user))
                .arg(user)
                .arg(node)
                .arg(Keys::presence_entry("app", "presence-x", user))
                .arg(token)
                .arg(ttl);
            inv.invoke_async(&mut self.conn).await.expect("LEAVE")
        }

        /// `COUNT` of a channel's subscriptions on `node`, with the hold key when `held`.
        async fn count(&mut self, node: u64, delta: i64, held: bool, token: &str) -> (i64, i64) {
            let k = self.keys.tally(Tally::Subscriptions, node, "app", "ch");
            let mut inv = self.scripts.count.prepare_invoke();
            inv.key(k.total)
                .key(k.node)
                .arg(k.field)
                .arg(k.node_field)
                .arg(delta);
            if held {
                inv.key(self.keys.vacated_hold("app", "ch"))
                    .arg(token)
                    .arg(60_000);
            }
            inv.invoke_async(&mut self.conn).await.expect("COUNT")
        }

        async fn open(&mut self, node: u64, max: u64) -> i64 {
            let mut inv = self.scripts.open.prepare_invoke();
            inv.key(self.keys.connections())
                .key(self.keys.node(node, "c"))
                .arg("app")
                .arg("app")
                .arg(1)
                .arg(max);
            inv.invoke_async(&mut self.conn).await.expect("OPEN")
        }

        async fn reap(&mut self, node: u64, user: &str) -> i64 {
            let [m, n, o] = self.keys.presence("app", "presence-x");
            let mut inv = self.scripts.reap_member.prepare_invoke();
            inv.key(&m).key(&n).key(&o).arg(node).arg(user);
            inv.invoke_async(&mut self.conn).await.expect("REAP_MEMBER")
        }

        async fn wire(&mut self, now: u64, node: u64, version: u8) -> u8 {
            let mut inv = self.scripts.wire.prepare_invoke();
            inv.key(self.keys.nodes())
                .key(self.keys.wire())
                .arg(now)
                .arg(node)
                .arg(version);
            inv.invoke_async(&mut self.conn).await.expect("WIRE")
        }

        /// `ADOPT` of node 7's journal by node 1.
        async fn adopt(&mut self, now: u64, chunk: usize) -> Vec<String> {
            let mut inv = self.scripts.adopt.prepare_invoke();
            inv.key(self.keys.nodes())
                .key(self.keys.journal(7))
                .key(self.keys.journal(1))
                .key(self.keys.journals())
                .arg(7)
                .arg(now)
                .arg(chunk)
                .arg(1000);
            inv.invoke_async(&mut self.conn).await.expect("ADOPT")
        }

        async fn get(&mut self, key: &str) -> Option<String> {
            self.conn.get(key).await.expect("GET")
        }
    }

    /// `SET_SHARES` moves each total by the difference of the node's share.
    #[tokio::test]
    async fn set_shares_moves_totals_by_the_difference() {
        let mut f = fixture().await;
        f.count(1, 3, false, "").await;
        f.count(2, 2, false, "").await;
        let k = f.keys.tally(Tally::Subscriptions, 1, "app", "ch");
        let k2 = f.keys.tally(Tally::Subscriptions, 1, "app", "other");
        let mut inv = f.scripts.set_shares.prepare_invoke();
        inv.key(&k.total)
            .key(&k.node)
            .arg(&k.field)
            .arg(&k.node_field)
            .arg(1)
            .key(&k2.total)
            .key(&k2.node)
            .arg(&k2.field)
            .arg(&k2.node_field)
            .arg(4);
        let changed: i64 = inv.invoke_async(&mut f.conn).await.expect("SET_SHARES");
        assert_eq!(changed, 2);
        let total: i64 = f.conn.hget(&k.total, &k.field).await.expect("HGET");
        assert_eq!(total, 3, "node 2's share stays, node 1's is now 1");
        let other: i64 = f.conn.hget(&k2.total, &k2.field).await.expect("HGET");
        assert_eq!(other, 4);
        // Down to 0: the share and an empty total are removed.
        let mut inv = f.scripts.set_shares.prepare_invoke();
        inv.key(&k2.total)
            .key(&k2.node)
            .arg(&k2.field)
            .arg(&k2.node_field)
            .arg(0);
        let _: i64 = inv.invoke_async(&mut f.conn).await.expect("SET_SHARES");
        let gone: Option<i64> = f.conn.hget(&k2.total, &k2.field).await.expect("HGET");
        let share: Option<i64> = f.conn.hget(&k2.node, &k2.node_field).await.expect("HGET");
        assert_eq!((gone, share), (None, None));
        f.cleanup().await;
    }

    #[tokio::test]
    async fn join_reports_the_first_connection_and_refuses_a_new_user_when_full() {
        let mut f = fixture().await;
        assert_eq!(f.join(1, "a", 2).await, (1, vec!["a".into()], 0));
        // Another connection of a member: not first, accepted even at the limit.
        assert_eq!(f.join(2, "a", 1).await.0, 0);
        assert_eq!(f.join(1, "b", 2).await.0, 1);
        // A new user beyond the limit: refused, nothing recorded.
        assert_eq!(f.join(1, "c", 2).await, (-1, vec![], 0));
        let [m, n, o] = f.keys.presence("app", "presence-x");
        let members: Vec<String> = f.conn.hkeys(&m).await.expect("HKEYS");
        assert_eq!(members.len(), 2);
        let a: i64 = f.conn.hget(&n, "a").await.expect("HGET");
        assert_eq!(a, 2);
        let on_node_2: i64 = f.conn.hget(&o, "2|a").await.expect("HGET");
        assert_eq!(on_node_2, 1);
        let entries: Vec<String> = f
            .conn
            .smembers(f.keys.node(1, "p"))
            .await
            .expect("SMEMBERS");
        assert_eq!(entries.len(), 2);
        f.cleanup().await;
    }

    #[tokio::test]
    async fn leave_reports_the_last_connection_and_holds_the_removal() {
        let mut f = fixture().await;
        f.join(1, "a", 10).await;
        f.join(2, "a", 10).await;
        assert_eq!(f.leave(1, "a", Some(("t1", 60_000))).await, 0);
        let hold = f.keys.member_hold("app", "presence-x", "a");
        assert_eq!(f.get(&hold).await, None, "no hold while connections remain");
        // Node 1 holds no more connections of "a": its entry is gone, a second leave is a no-op.
        let entries: Vec<String> = f
            .conn
            .smembers(f.keys.node(1, "p"))
            .await
            .expect("SMEMBERS");
        assert!(entries.is_empty());
        assert_eq!(f.leave(1, "a", None).await, 0);
        assert_eq!(f.leave(2, "a", Some(("t2", 60_000))).await, 1);
        assert_eq!(f.get(&hold).await.as_deref(), Some("t2"));
        let [m, n, _] = f.keys.presence("app", "presence-x");
        let members: Vec<String> = f.conn.hkeys(&m).await.expect("HKEYS");
        assert!(members.is_empty());
        let counts: Vec<String> = f.conn.hkeys(&n).await.expect("HKEYS");
        assert!(counts.is_empty());
        // Back while held: a first join that takes the hold away.
        assert_eq!(f.join(1, "a", 10).await, (1, vec!["a".into()], 1));
        assert_eq!(f.get(&hold).await, None);
        // Without a hold token, the last leave sets none.
        assert_eq!(f.leave(1, "a", None).await, 1);
        assert_eq!(f.get(&hold).await, None);
        assert_eq!(f.join(1, "a", 10).await.2, 0);
        f.cleanup().await;
    }

    #[tokio::test]
    async fn count_keeps_shares_and_totals_with_and_without_a_hold() {
        let mut f = fixture().await;
        // Without a hold key (connections, users, resync): plain totals.
        assert_eq!(f.count(1, 1, false, "").await, (1, 0));
        assert_eq!(f.count(2, 2, false, "").await, (3, 0));
        let k = f.keys.tally(Tally::Subscriptions, 1, "app", "ch");
        let share: i64 = f.conn.hget(&k.node, &k.node_field).await.expect("HGET");
        assert_eq!(share, 1);
        assert_eq!(f.count(2, -2, false, "").await, (1, 0));
        let k2 = f.keys.tally(Tally::Subscriptions, 2, "app", "ch");
        let gone: Option<i64> = f.conn.hget(&k2.node, &k2.node_field).await.expect("HGET");
        assert_eq!(gone, None, "a share at 0 is removed");
        // With a hold key: going to 0 holds `channel_vacated` under the token...
        assert_eq!(f.count(1, -1, true, "tok").await, (0, 0));
        let total: Option<i64> = f.conn.hget(&k.total, &k.field).await.expect("HGET");
        assert_eq!(total, None, "a total at 0 is removed");
        let hold = f.keys.vacated_hold("app", "ch");
        assert_eq!(f.get(&hold).await.as_deref(), Some("tok"));
        // ...and coming back from 0 takes it away (rejoined).
        assert_eq!(f.count(2, 1, true, "").await, (1, 1));
        assert_eq!(f.get(&hold).await, None);
        // Up again from 1: no hold to take.
        assert_eq!(f.count(1, 1, true, "").await, (2, 0));
        // Down to 0 without a token: no hold.
        f.count(1, -1, true, "").await;
        assert_eq!(f.count(2, -1, true, "").await, (0, 0));
        assert_eq!(f.get(&hold).await, None);
        f.cleanup().await;
    }

    #[tokio::test]
    async fn open_reserves_connection_slots_under_a_maximum() {
        let mut f = fixture().await;
        for (node, expected) in [(1, 1), (2, 2), (1, -1), (2, -1)] {
            assert_eq!(f.open(node, 2).await, expected);
        }
        let share: i64 = f.conn.hget(f.keys.node(1, "c"), "app").await.expect("HGET");
        assert_eq!(share, 1, "a refused slot is not counted");
        // No maximum (0).
        assert_eq!(f.open(1, 0).await, 3);
        f.cleanup().await;
    }

    #[tokio::test]
    async fn reap_member_removes_a_dead_node_s_connections() {
        let mut f = fixture().await;
        f.join(1, "a", 10).await;
        f.join(1, "a", 10).await;
        f.join(2, "a", 10).await;
        let [m, n, _] = f.keys.presence("app", "presence-x");
        assert_eq!(f.reap(1, "a").await, 0, "node 2 still has the user");
        let count: i64 = f.conn.hget(&n, "a").await.expect("HGET");
        assert_eq!(count, 1);
        // Reaping again (nothing left of node 1) changes nothing.
        assert_eq!(f.reap(1, "a").await, 0);
        assert_eq!(f.reap(2, "a").await, 1, "the user's last node is gone");
        let members: Vec<String> = f.conn.hkeys(&m).await.expect("HKEYS");
        assert!(members.is_empty());
        f.cleanup().await;
    }

    #[tokio::test]
    async fn settle_keeps_only_holds_still_carrying_their_token() {
        let mut f = fixture().await;
        let kept = f.keys.vacated_hold("app", "kept");
        let taken = f.keys.vacated_hold("app", "taken");
        let replaced = f.keys.member_hold("app", "ch", "u");
        let _: () = f.conn.set(&kept, "1").await.expect("SET");
        let _: () = f.conn.set(&replaced, "9").await.expect("SET");
        let mut inv = f.scripts.settle.prepare_invoke();
        inv.key(&kept)
            .arg("1")
            .key(&taken)
            .arg("2")
            .key(&replaced)
            .arg("3");
        let out: Vec<i64> = inv.invoke_async(&mut f.conn).await.expect("SETTLE");
        assert_eq!(out, vec![1, 0, 0]);
        assert_eq!(f.get(&kept).await, None, "a settled hold is removed");
        assert_eq!(f.get(&replaced).await.as_deref(), Some("9"));
        f.cleanup().await;
    }

    #[tokio::test]
    async fn wire_answers_the_oldest_version_a_live_node_reads() {
        let mut f = fixture().await;
        let now = 1_000_000u64;
        let nodes = f.keys.nodes();
        // Node 1 is alive and has recorded nothing: it reads version 1 only.
        let _: i64 = f.conn.zadd(&nodes, 1, now + 10_000).await.expect("ZADD");
        let _: i64 = f.conn.zadd(&nodes, 2, now + 10_000).await.expect("ZADD");
        assert_eq!(f.wire(now, 2, 3).await, 1);
        assert_eq!(f.wire(now, 1, 2).await, 2);
        // Node 1's lease expired: only live nodes count.
        let _: i64 = f.conn.zadd(&nodes, 1, now - 1).await.expect("ZADD");
        assert_eq!(f.wire(now, 2, 3).await, 3);
        f.cleanup().await;
    }

    #[tokio::test]
    async fn adopt_moves_a_dead_node_s_journal_in_order_and_spares_a_live_one() {
        let mut f = fixture().await;
        let now = 1_000_000u64;
        let nodes = f.keys.nodes();
        for json in ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"] {
            let _: String = f
                .conn
                .xadd(f.keys.journal(7), "*", &[("j", json)])
                .await
                .expect("XADD");
        }
        let _: i64 = f.conn.sadd(f.keys.journals(), 7).await.expect("SADD");
        // The owner's lease is alive: refused.
        let _: i64 = f.conn.zadd(&nodes, 7, now + 5_000).await.expect("ZADD");
        assert!(f.adopt(now, 2).await.is_empty());
        let _: i64 = f.conn.zrem(&nodes, 7).await.expect("ZREM");
        let first = f.adopt(now, 2).await;
        let second = f.adopt(now, 2).await;
        let jsons: Vec<&str> = first
            .chunks_exact(2)
            .chain(second.chunks_exact(2))
            .map(|p| p[1].as_str())
            .collect();
        assert_eq!(jsons, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
        let moved: usize = f.conn.xlen(f.keys.journal(1)).await.expect("XLEN");
        assert_eq!(moved, 3, "adopted entries live on in the adopter's journal");
        // Nothing left: the dead journal and its set entry go.
        assert!(f.adopt(now, 2).await.is_empty());
        let exists: bool = f.conn.exists(f.keys.journal(7)).await.expect("EXISTS");
        assert!(!exists);
        let owners: Vec<u64> = f.conn.smembers(f.keys.journals()).await.expect("SMEMBERS");
        assert!(owners.is_empty());
        f.cleanup().await;
    }

    #[tokio::test]
    async fn an_idempotency_key_is_claimed_once_and_released_only_by_its_claimer() {
        let f = fixture().await;
        let key = f.keys.idempotency("app", "k");
        let claim = |value: &'static str| {
            let mut inv = f.scripts.claim.prepare_invoke();
            inv.key(&key).arg(value).arg(30_000);
            inv
        };
        let (held, _): (i64, Vec<u8>) = claim("p\nf1")
            .invoke_async(&mut f.conn.clone())
            .await
            .expect("CLAIM");
        assert_eq!(held, 0, "a free key is taken");
        let (held, value): (i64, Vec<u8>) = claim("p\nf2")
            .invoke_async(&mut f.conn.clone())
            .await
            .expect("CLAIM");
        assert_eq!((held, value.as_slice()), (1, b"p\nf1".as_slice()));
        let release = |value: &'static str| {
            let mut inv = f.scripts.release.prepare_invoke();
            inv.key(&key).arg(value);
            inv
        };
        let freed: i64 = release("p\nf2")
            .invoke_async(&mut f.conn.clone())
            .await
            .expect("RELEASE");
        assert_eq!(freed, 0, "another request's claim stays");
        let freed: i64 = release("p\nf1")
            .invoke_async(&mut f.conn.clone())
            .await
            .expect("RELEASE");
        assert_eq!(freed, 1);
        f.cleanup().await;
    }

    /// `RECORD` of `frame` skipping `except` on `chat-1`, keeping `max` events for `ttl` ms:
    /// `(epoch, offset)`.
    async fn record(f: &Fixture, frame: &str, except: &str, max: usize, ttl: u64) -> (String, u64) {
        let [h, st] = f.keys.history("app", "chat-1");
        let mut inv = f.scripts.record.prepare_invoke();
        inv.key(&h)
            .key(&st)
            .arg("e1e1e1e1e1e1e1e1")
            .arg(frame)
            .arg(except)
            .arg(max)
            .arg(ttl);
        inv.invoke_async(&mut f.conn.clone()).await.expect("RECORD")
    }

    /// `READ` of `chat-1` after `after` (-1: none): `(epoch, last, kept, flat events)`.
    async fn read(
        f: &Fixture,
        epoch: &str,
        after: i64,
        ttl: u64,
    ) -> (String, u64, u64, Vec<String>) {
        let [h, st] = f.keys.history("app", "chat-1");
        let mut inv = f.scripts.read.prepare_invoke();
        inv.key(&h).key(&st).arg(epoch).arg(after).arg(ttl);
        inv.invoke_async(&mut f.conn.clone()).await.expect("READ")
    }

    #[tokio::test]
    async fn record_gives_consecutive_positions_and_keeps_exactly_the_most_events() {
        let f = fixture().await;
        // No history yet: reading starts an empty one with the epoch given.
        let (epoch, last, kept, events) = read(&f, "0123456789abcdef", -1, 60_000).await;
        assert_eq!((epoch.as_str(), last, kept), ("0123456789abcdef", 0, 0));
        assert!(events.is_empty());
        for n in 1..=5 {
            let except = if n == 2 { "1.2" } else { "" };
            let at = record(&f, &format!("f{n}"), except, 3, 60_000).await;
            assert_eq!(at, ("0123456789abcdef".to_string(), n), "the epoch stays");
        }
        let (_, last, kept, events) = read(&f, "x", 2, 60_000).await;
        assert_eq!((last, kept), (5, 3), "trimmed to exactly 3");
        assert_eq!(events, ["3", "f3", "", "4", "f4", "", "5", "f5", ""]);
        let (_, _, _, events) = read(&f, "x", 4, 60_000).await;
        assert_eq!(events, ["5", "f5", ""]);
        // Offset 2 is no longer kept: nothing is returned (the caller sees the window).
        let (_, _, _, events) = read(&f, "x", 1, 60_000).await;
        assert!(events.is_empty());
        // At the end, or beyond it: nothing.
        assert!(read(&f, "x", 5, 60_000).await.3.is_empty());
        assert!(read(&f, "x", 9, 60_000).await.3.is_empty());
        // Both keys expire with the history's time.
        let [h, st] = f.keys.history("app", "chat-1");
        for key in [&h, &st] {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut f.conn.clone())
                .await
                .expect("PTTL");
            assert!(ttl > 50_000 && ttl <= 60_000, "{key}: {ttl}");
        }
        f.cleanup().await;
    }

    #[tokio::test]
    async fn old_events_leave_by_age_and_a_lost_history_starts_with_a_new_epoch() {
        let f = fixture().await;
        record(&f, "a", "1.2", 100, 60_000).await;
        let (epoch, _) = record(&f, "b", "", 100, 60_000).await;
        let (_, _, _, events) = read(&f, "x", 0, 60_000).await;
        assert_eq!(events, ["1", "a", "1.2", "2", "b", ""]);
        // Read with a time kept of 1 ms: both are older than that now.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let (e, last, kept, events) = read(&f, "x", 0, 1).await;
        assert_eq!((e.as_str(), last, kept), (epoch.as_str(), 2, 0));
        assert!(events.is_empty());
        // The hash is lost (expired or evicted): the stream goes with it, a new epoch starts.
        let [h, _] = f.keys.history("app", "chat-1");
        let _: i64 = f.conn.clone().del(&h).await.expect("DEL");
        let [h, st] = f.keys.history("app", "chat-1");
        let mut inv = f.scripts.record.prepare_invoke();
        inv.key(&h)
            .key(&st)
            .arg("fresh")
            .arg("c")
            .arg("")
            .arg(100)
            .arg(60_000);
        let at: (String, u64) = inv.invoke_async(&mut f.conn.clone()).await.expect("RECORD");
        assert_eq!(at, ("fresh".to_string(), 1));
        let (_, _, kept, events) = read(&f, "x", 0, 60_000).await;
        assert_eq!(
            (kept, events),
            (1, vec!["1".to_string(), "c".into(), "".into()])
        );
        f.cleanup().await;
    }
}
