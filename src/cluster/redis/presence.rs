//! `PresenceStore` over Redis: rosters shared by every node (`P:p:{app}:{channel}:*`), joins
//! and leaves decided by the `JOIN` and `LEAVE` scripts, so a member's first and last
//! connection are decided once cluster-wide.

use std::sync::Arc;

use async_trait::async_trait;

use super::keys::Keys;
use super::{hold_args, RedisBackend};
use crate::app::AppId;
use crate::cluster::ClusterError;
use crate::presence::{Join, PresenceError, PresenceStore};
use crate::protocol::{ChannelName, PresenceMember, SocketId, UserId};
use crate::webhooks::RemovalHold;

/// The roster from `(user, user_info)` pairs (a hash read with `HGETALL`).
fn roster<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<PresenceMember> {
    let mut out = Vec::with_capacity(pairs.size_hint().0);
    for (user, info) in pairs {
        let Some(user_id) = UserId::new(user) else {
            continue;
        };
        let user_info = if info == "null" {
            None
        } else {
            serde_json::value::RawValue::from_string(info.to_string())
                .ok()
                .map(Arc::from)
        };
        out.push(PresenceMember { user_id, user_info });
    }
    out
}

impl RedisBackend {
    /// Adds one of this node's connections of `member` (see `PresenceStore::join`).
    pub(super) async fn join_member(
        &self,
        app: &str,
        channel: &str,
        member: &PresenceMember,
        max_members: usize,
    ) -> Result<Join, ClusterError> {
        self.check()?;
        let [m, n, o] = self.keys.presence(app, channel);
        let user = member.user_id.as_str();
        let info = member.user_info.as_ref().map_or("null", |i| i.get());
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.join.prepare_invoke();
        inv.key(&m)
            .key(&n)
            .key(&o)
            .key(self.keys.node(self.node, "p"))
            .key(self.keys.member_hold(app, channel, user))
            .arg(user)
            .arg(self.node)
            .arg(info)
            .arg(max_members.min(i64::MAX as usize))
            .arg(Keys::presence_entry(app, channel, user));
        // From a script the hash comes as a flat list (RESP2 inside Lua) on every protocol.
        let (first, flat, rejoined): (i64, Vec<String>, i64) = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        if first < 0 {
            return Ok(Join::Full);
        }
        Ok(Join::Joined {
            first: first == 1,
            rejoined: rejoined == 1,
            roster: roster(
                flat.chunks_exact(2)
                    .map(|pair| (pair[0].as_str(), pair[1].as_str())),
            ),
        })
    }

    /// Removes one of this node's connections of `user`; `true` when it was the user's last
    /// anywhere (see `PresenceStore::leave`).
    pub(super) async fn leave_member(
        &self,
        app: &str,
        channel: &str,
        user: &str,
        hold: Option<RemovalHold>,
    ) -> Result<bool, ClusterError> {
        self.check()?;
        let [m, n, o] = self.keys.presence(app, channel);
        let (token, ttl) = hold_args(hold);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.leave.prepare_invoke();
        inv.key(&m)
            .key(&n)
            .key(&o)
            .key(self.keys.node(self.node, "p"))
            .key(self.keys.member_hold(app, channel, user))
            .arg(user)
            .arg(self.node)
            .arg(Keys::presence_entry(app, channel, user))
            .arg(token)
            .arg(ttl);
        let last: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(last == 1)
    }

    /// The roster of a presence channel, cluster-wide.
    pub(super) async fn roster(
        &self,
        app: &str,
        channel: &str,
    ) -> Result<Vec<PresenceMember>, ClusterError> {
        self.check()?;
        let [m, _, _] = self.keys.presence(app, channel);
        let mut conn = self.conn.clone();
        // Pairs, not a flat list: a Redis Cluster connection speaks RESP3, where a hash is a map.
        let pairs: Vec<(String, String)> =
            redis::cmd("HGETALL").arg(&m).query_async(&mut conn).await?;
        Ok(roster(pairs.iter().map(|(u, i)| (u.as_str(), i.as_str()))))
    }
}

fn presence_err(e: ClusterError) -> PresenceError {
    PresenceError(e.to_string())
}

#[async_trait]
impl PresenceStore for RedisBackend {
    async fn join(
        &self,
        app: &AppId,
        channel: &ChannelName,
        member: &PresenceMember,
        _socket: SocketId,
        max_members: usize,
    ) -> Result<Join, PresenceError> {
        self.join_member(app.as_str(), channel.as_str(), member, max_members)
            .await
            .map_err(presence_err)
    }

    async fn leave(
        &self,
        app: &AppId,
        channel: &ChannelName,
        user: &UserId,
        _socket: SocketId,
        hold: Option<RemovalHold>,
    ) -> Result<bool, PresenceError> {
        self.leave_member(app.as_str(), channel.as_str(), user.as_str(), hold)
            .await
            .map_err(presence_err)
    }

    async fn members(
        &self,
        app: &AppId,
        channel: &str,
    ) -> Result<Vec<PresenceMember>, PresenceError> {
        self.roster(app.as_str(), channel)
            .await
            .map_err(presence_err)
    }
}
