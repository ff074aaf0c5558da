//! `UserRegistry`: connections signed in as each user (spec 3.5), for `#server-to-user-`
//! delivery and `terminate_connections`.

use bytes::Bytes;
use dashmap::DashMap;

use crate::connection::handle::{ConnRef, Delivery};
use crate::protocol::{ErrorKind, SocketId, UserId};

#[derive(Default)]
pub struct UserRegistry {
    users: DashMap<UserId, Vec<ConnRef>>,
}

impl UserRegistry {
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

    /// Delivers `frame` to every connection signed in as `user` (subscribed or not).
    pub fn deliver(&self, user: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        let Some(conns) = self.users.get(user) else {
            return 0;
        };
        conns
            .iter()
            .filter(|c| Some(c.socket_id) != except)
            .filter(|c| c.deliver(frame) == Delivery::Queued)
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
}
