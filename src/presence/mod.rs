//! `PresenceStore`: who is in each presence channel, per user (protocol.md 2.6). Membership is per
//! user, not per connection: a user's first connection makes them a member, their last one
//! leaving removes them. The memory store serves one node; a shared store serves a cluster.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use indexmap::IndexMap;

use crate::app::AppId;
use crate::protocol::{ChannelName, PresenceMember, SocketId, UserId};
use crate::webhooks::RemovalHold;

/// What a join did.
#[derive(Debug, Clone)]
pub enum Join {
    /// Joined; `first` when this was the user's first connection (send `member_added`), with the
    /// roster after the join (including the joiner).
    Joined {
        first: bool,
        /// The user came back while their `member_removed` webhook was held cluster-wide:
        /// neither it nor `member_added` is sent (see `RemovalHold`). Only a shared store says so.
        rejoined: bool,
        roster: Vec<PresenceMember>,
    },
    /// A new distinct user beyond the channel's member limit.
    Full,
}

/// A presence store failure (a shared store that cannot be reached).
#[derive(Debug, thiserror::Error)]
#[error("presence store unavailable: {0}")]
pub struct PresenceError(pub String);

#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Adds `socket` as a connection of `member.user_id`. Another connection of an existing
    /// member is always accepted; a new user only below `max_members`.
    async fn join(
        &self,
        app: &AppId,
        channel: &ChannelName,
        member: &PresenceMember,
        socket: SocketId,
        max_members: usize,
    ) -> Result<Join, PresenceError>;

    /// Removes `socket`; `true` when it was the user's last connection (send `member_removed`).
    /// A shared store then holds the `member_removed` webhook under `hold`, if given.
    async fn leave(
        &self,
        app: &AppId,
        channel: &ChannelName,
        user: &UserId,
        socket: SocketId,
        hold: Option<RemovalHold>,
    ) -> Result<bool, PresenceError>;

    /// The members, one per distinct user, in join order.
    async fn members(
        &self,
        app: &AppId,
        channel: &str,
    ) -> Result<Vec<PresenceMember>, PresenceError>;
}

struct MemberState {
    member: PresenceMember,
    sockets: Vec<SocketId>,
}

/// The single-node store.
#[derive(Default)]
pub struct MemoryPresence {
    channels: DashMap<(AppId, Arc<str>), IndexMap<UserId, MemberState>>,
}

impl MemoryPresence {
    fn key(app: &AppId, channel: &str) -> (AppId, Arc<str>) {
        (app.clone(), Arc::from(channel))
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn join(
        &self,
        app: &AppId,
        channel: &ChannelName,
        member: &PresenceMember,
        socket: SocketId,
        max_members: usize,
    ) -> Result<Join, PresenceError> {
        let mut members = self
            .channels
            .entry(Self::key(app, channel.as_str()))
            .or_default();
        let first = match members.get_mut(&member.user_id) {
            Some(state) => {
                if !state.sockets.contains(&socket) {
                    state.sockets.push(socket);
                }
                false
            }
            None => {
                if members.len() >= max_members {
                    let empty = members.is_empty();
                    drop(members);
                    if empty {
                        self.channels
                            .remove_if(&Self::key(app, channel.as_str()), |_, m| m.is_empty());
                    }
                    return Ok(Join::Full);
                }
                members.insert(
                    member.user_id.clone(),
                    MemberState {
                        member: member.clone(),
                        sockets: vec![socket],
                    },
                );
                true
            }
        };
        let roster = members.values().map(|s| s.member.clone()).collect();
        Ok(Join::Joined {
            first,
            rejoined: false,
            roster,
        })
    }

    async fn leave(
        &self,
        app: &AppId,
        channel: &ChannelName,
        user: &UserId,
        socket: SocketId,
        _hold: Option<RemovalHold>,
    ) -> Result<bool, PresenceError> {
        let key = Self::key(app, channel.as_str());
        let Some(mut members) = self.channels.get_mut(&key) else {
            return Ok(false);
        };
        let Some(state) = members.get_mut(user) else {
            return Ok(false);
        };
        let before = state.sockets.len();
        state.sockets.retain(|s| *s != socket);
        let last = before > 0 && state.sockets.is_empty();
        if last {
            // Keep join order for the others.
            members.shift_remove(user);
        }
        let empty = members.is_empty();
        drop(members);
        if empty {
            self.channels.remove_if(&key, |_, m| m.is_empty());
        }
        Ok(last)
    }

    async fn members(
        &self,
        app: &AppId,
        channel: &str,
    ) -> Result<Vec<PresenceMember>, PresenceError> {
        Ok(self
            .channels
            .get(&Self::key(app, channel))
            .map(|m| m.values().map(|s| s.member.clone()).collect())
            .unwrap_or_default())
    }
}

/// Distinct user counts of several channels at once (for `info=user_count`).
pub async fn user_counts(
    store: &dyn PresenceStore,
    app: &AppId,
    channels: &[&str],
) -> Result<HashMap<String, usize>, PresenceError> {
    let mut out = HashMap::new();
    for c in channels {
        out.insert((*c).to_string(), store.members(app, c).await?.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::presence::parse_channel_data;

    fn member(id: &str) -> PresenceMember {
        parse_channel_data(&format!(r#"{{"user_id":"{id}"}}"#)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn membership_is_per_user() {
        let store = MemoryPresence::default();
        let app = AppId("a".into());
        let ch = ChannelName::parse("presence-room", 200).unwrap_or_else(|e| panic!("{e}"));
        let (s1, s2, s3) = (
            SocketId::from_parts(1, 1),
            SocketId::from_parts(2, 2),
            SocketId::from_parts(3, 3),
        );
        let first = |j: Join| matches!(j, Join::Joined { first: true, .. });
        assert!(first(
            store
                .join(&app, &ch, &member("10"), s1, 100)
                .await
                .unwrap_or(Join::Full)
        ));
        assert!(!first(
            store
                .join(&app, &ch, &member("10"), s2, 100)
                .await
                .unwrap_or(Join::Full)
        ));
        assert!(first(
            store
                .join(&app, &ch, &member("11"), s3, 100)
                .await
                .unwrap_or(Join::Full)
        ));
        assert_eq!(
            store
                .members(&app, "presence-room")
                .await
                .map(|m| m.len())
                .unwrap_or(0),
            2
        );
        let u10 = UserId::new("10").unwrap_or_else(|| panic!("id"));
        assert!(!store.leave(&app, &ch, &u10, s1, None).await.unwrap_or(true));
        assert!(store
            .leave(&app, &ch, &u10, s2, None)
            .await
            .unwrap_or(false));
        assert!(
            !store.leave(&app, &ch, &u10, s2, None).await.unwrap_or(true),
            "second leave is a no-op"
        );
        assert_eq!(
            store
                .members(&app, "presence-room")
                .await
                .map(|m| m.len())
                .unwrap_or(0),
            1
        );
    }

    #[tokio::test]
    async fn member_limit_counts_distinct_users() {
        let store = MemoryPresence::default();
        let app = AppId("a".into());
        let ch = ChannelName::parse("presence-room", 200).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..3u32 {
            let j = store
                .join(
                    &app,
                    &ch,
                    &member(&i.to_string()),
                    SocketId::from_parts(i, i),
                    3,
                )
                .await;
            assert!(matches!(j, Ok(Join::Joined { .. })));
        }
        let j = store
            .join(&app, &ch, &member("99"), SocketId::from_parts(9, 9), 3)
            .await;
        assert!(matches!(j, Ok(Join::Full)));
        // Another tab of an existing member is always accepted.
        let j = store
            .join(&app, &ch, &member("1"), SocketId::from_parts(8, 8), 3)
            .await;
        assert!(matches!(j, Ok(Join::Joined { first: false, .. })));
    }
}
