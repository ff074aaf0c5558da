//! `UserRegistry`: connections signed in as each user (protocol.md 3.5), for `#server-to-user-`
//! delivery and `terminate_connections`.

use bytes::Bytes;
use dashmap::DashMap;

use crate::connection::deflate::SharedFrame;
use crate::connection::handle::{ConnRef, Delivery};
use crate::protocol::{ErrorKind, SocketId, UserId};

#[derive(Default)]
pub struct UserRegistry {
    users: DashMap<UserId, Vec<ConnRef>>,
}

impl UserRegistry {
    /// Gives back the table once most users are gone (`hub::shrink_sparse`).
    pub fn shrink(&self) {
        crate::hub::shrink_sparse(&self.users);
    }

    /// Returns `true` when this is the user's first signed-in connection on this node.
    pub fn add(&self, user: &UserId, conn: &ConnRef) -> bool {
        let mut entry = self.users.entry(user.clone()).or_default();
        let first = entry.is_empty();
        if !entry.iter().any(|c| c.socket_id == conn.socket_id) {
            entry.push(conn.clone());
        }
        first
    }

    /// Returns `true` when that was the user's last connection on this node.
    pub fn remove(&self, user: &UserId, socket_id: SocketId) -> bool {
        let Some(mut entry) = self.users.get_mut(user) else {
            return false;
        };
        entry.retain(|c| c.socket_id != socket_id);
        let last = entry.is_empty();
        drop(entry);
        if last {
            self.users.remove_if(user, |_, v| v.is_empty());
        }
        last
    }

    /// Delivers `frame` to every connection signed in as `user` (subscribed or not),
    /// compressed for those that negotiated `permessage-deflate` when it is large enough.
    pub fn deliver(&self, user: &str, frame: &SharedFrame<'_>, except: Option<SocketId>) -> usize {
        let Some(conns) = self.users.get(user) else {
            return 0;
        };
        conns
            .iter()
            .filter(|c| Some(c.socket_id) != except)
            .filter(|c| c.deliver_shared(frame) == Delivery::Queued)
            .count()
    }

    /// Closes every connection signed in as `user` with 4009; returns how many.
    pub fn terminate(&self, user: &str) -> usize {
        let conns: Vec<ConnRef> = self
            .users
            .get(user)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        for c in &conns {
            c.close(ErrorKind::Terminated);
        }
        conns.len()
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|c| !c.is_empty())
    }

    /// This node's signed-in connections of `user`.
    pub fn count(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |c| c.len())
    }
}

/// Connections watching each user (watchlist events, protocol.md 3.8).
#[derive(Default)]
pub struct WatcherRegistry {
    watchers: DashMap<UserId, Vec<ConnRef>>,
}

impl WatcherRegistry {
    /// Gives back the table once most watched users are gone (`hub::shrink_sparse`).
    pub fn shrink(&self) {
        crate::hub::shrink_sparse(&self.watchers);
    }

    pub fn add(&self, watched: &UserId, conn: &ConnRef) {
        let mut entry = self.watchers.entry(watched.clone()).or_default();
        if !entry.iter().any(|c| c.socket_id == conn.socket_id) {
            entry.push(conn.clone());
        }
    }

    pub fn remove(&self, watched: &UserId, socket_id: SocketId) {
        if let Some(mut entry) = self.watchers.get_mut(watched) {
            entry.retain(|c| c.socket_id != socket_id);
        }
        self.watchers.remove_if(watched, |_, v| v.is_empty());
    }

    /// Delivers `frame` to every local watcher of `user`.
    pub fn deliver(&self, user: &str, frame: &Bytes) -> usize {
        self.watchers.get(user).map_or(0, |conns| {
            conns
                .iter()
                .filter(|c| c.deliver(frame) == Delivery::Queued)
                .count()
        })
    }
}
