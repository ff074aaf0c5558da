//! Channel names and kinds (protocol.md 2.1). The kind is decided once, when a name is parsed; nothing
//! else in the server looks at prefixes.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";
/// Longest user id accepted in a `#server-to-user-` name (protocol.md 2.10).
pub const MAX_USER_ID_LEN: usize = 200;

/// What a channel is, from its prefix. Matched in the order of protocol.md 2.1; the first match wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Public,
    PublicCache,
    Private,
    PrivateCache,
    PrivateEncrypted,
    PrivateEncryptedCache,
    Presence,
    PresenceCache,
    /// `#server-to-user-{id}`: only the connection signed in as `id` may subscribe.
    ServerToUser,
}

impl ChannelKind {
    fn of(name: &str) -> ChannelKind {
        const PREFIXES: [(&str, ChannelKind); 8] = [
            (
                "private-encrypted-cache-",
                ChannelKind::PrivateEncryptedCache,
            ),
            ("private-encrypted-", ChannelKind::PrivateEncrypted),
            ("private-cache-", ChannelKind::PrivateCache),
            ("private-", ChannelKind::Private),
            ("presence-cache-", ChannelKind::PresenceCache),
            ("presence-", ChannelKind::Presence),
            ("cache-", ChannelKind::PublicCache),
            (SERVER_TO_USER_PREFIX, ChannelKind::ServerToUser),
        ];
        PREFIXES
            .iter()
            .find(|(p, _)| name.starts_with(p))
            .map_or(ChannelKind::Public, |(_, k)| *k)
    }

    /// Private, encrypted and presence channels need a signed token to subscribe.
    pub fn requires_signature(self) -> bool {
        !matches!(
            self,
            ChannelKind::Public | ChannelKind::PublicCache | ChannelKind::ServerToUser
        )
    }

    pub fn is_presence(self) -> bool {
        matches!(self, ChannelKind::Presence | ChannelKind::PresenceCache)
    }

    pub fn is_cache(self) -> bool {
        matches!(
            self,
            ChannelKind::PublicCache
                | ChannelKind::PrivateCache
                | ChannelKind::PrivateEncryptedCache
                | ChannelKind::PresenceCache
        )
    }

    pub fn is_encrypted(self) -> bool {
        matches!(
            self,
            ChannelKind::PrivateEncrypted | ChannelKind::PrivateEncryptedCache
        )
    }

    /// Client events are a private/presence feature (protocol.md 4.1 rule 4); encrypted channels are
    /// private channels to the server.
    pub fn accepts_client_events(self) -> bool {
        self.requires_signature()
    }

    /// Whether `subscription_count` events apply (every kind but presence, protocol.md 2.9).
    pub fn counts_subscriptions(self) -> bool {
        !self.is_presence() && self != ChannelKind::ServerToUser
    }

    /// A short stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            ChannelKind::Public => "public",
            ChannelKind::PublicCache => "cache",
            ChannelKind::Private => "private",
            ChannelKind::PrivateCache => "private_cache",
            ChannelKind::PrivateEncrypted => "encrypted",
            ChannelKind::PrivateEncryptedCache => "encrypted_cache",
            ChannelKind::Presence => "presence",
            ChannelKind::PresenceCache => "presence_cache",
            ChannelKind::ServerToUser => "server_to_user",
        }
    }

    pub const ALL: [ChannelKind; 9] = [
        ChannelKind::Public,
        ChannelKind::PublicCache,
        ChannelKind::Private,
        ChannelKind::PrivateCache,
        ChannelKind::PrivateEncrypted,
        ChannelKind::PrivateEncryptedCache,
        ChannelKind::Presence,
        ChannelKind::PresenceCache,
        ChannelKind::ServerToUser,
    ];
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {0} characters")]
    TooLong(usize),
    #[error("channel name contains characters outside [A-Za-z0-9_-=@,.;]")]
    InvalidCharacter,
}

/// A validated channel name with its kind. Cheap to clone (shared string).
#[derive(Clone)]
pub struct ChannelName {
    name: Arc<str>,
    kind: ChannelKind,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

impl ChannelName {
    /// Validates `name` (protocol.md 2.1, 2.10) against `max_len` characters.
    pub fn parse(name: &str, max_len: usize) -> Result<ChannelName, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        let kind = ChannelKind::of(name);
        if kind == ChannelKind::ServerToUser {
            // Any user id the app signs in, bounded by the user id limit rather than `max_len`.
            let user = &name[SERVER_TO_USER_PREFIX.len()..];
            if user.is_empty()
                || user.chars().count() > MAX_USER_ID_LEN
                || user.chars().any(char::is_control)
            {
                return Err(ChannelNameError::InvalidCharacter);
            }
        } else if name.len() > max_len {
            return Err(ChannelNameError::TooLong(max_len));
        } else if !name.bytes().all(is_name_byte) {
            return Err(ChannelNameError::InvalidCharacter);
        }
        Ok(ChannelName {
            name: Arc::from(name),
            kind,
        })
    }

    /// The `#server-to-user-` channel of `user_id`.
    pub fn server_to_user(user_id: &str) -> Result<ChannelName, ChannelNameError> {
        // The name length limit does not apply to this family; the user id limit does.
        ChannelName::parse(&format!("{SERVER_TO_USER_PREFIX}{user_id}"), 0)
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// The user id of a `#server-to-user-` channel.
    pub fn server_to_user_id(&self) -> Option<&str> {
        match self.kind {
            ChannelKind::ServerToUser => Some(&self.name[SERVER_TO_USER_PREFIX.len()..]),
            _ => None,
        }
    }
}

impl PartialEq for ChannelName {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for ChannelName {}
impl Hash for ChannelName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}
impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.name
    }
}
impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(n: &str) -> ChannelKind {
        ChannelName::parse(n, 200)
            .map(|c| c.kind())
            .unwrap_or_else(|e| panic!("{n}: {e}"))
    }

    #[test]
    fn kinds_follow_the_prefix_table_in_order() {
        assert_eq!(kind("my-channel"), ChannelKind::Public);
        assert_eq!(kind("cache-prices"), ChannelKind::PublicCache);
        assert_eq!(kind("private-foo"), ChannelKind::Private);
        assert_eq!(kind("private-cache-foo"), ChannelKind::PrivateCache);
        assert_eq!(kind("private-encrypted-foo"), ChannelKind::PrivateEncrypted);
        assert_eq!(
            kind("private-encrypted-cache-foo"),
            ChannelKind::PrivateEncryptedCache
        );
        assert_eq!(kind("presence-room"), ChannelKind::Presence);
        assert_eq!(kind("presence-cache-room"), ChannelKind::PresenceCache);
        assert_eq!(kind("#server-to-user-42"), ChannelKind::ServerToUser);
        // Reverb's prefix-without-hyphen rule is not ours.
        assert_eq!(kind("privatefoo"), ChannelKind::Public);
        assert_eq!(kind("presencefoo"), ChannelKind::Public);
    }

    #[test]
    fn validates_names() {
        for bad in ["", "a b", "é", "#foo", "chan/nel", "#server-to-user-"] {
            assert!(ChannelName::parse(bad, 200).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(201);
        assert_eq!(
            ChannelName::parse(&long, 200),
            Err(ChannelNameError::TooLong(200))
        );
        assert!(ChannelName::parse(&"a".repeat(200), 200).is_ok());
        assert!(ChannelName::parse("private-App.Models.User.1", 200).is_ok());
        assert!(ChannelName::parse("a_b-c=d@e,f.g;h", 200).is_ok());
    }

    #[test]
    fn server_to_user_ids() {
        let c = ChannelName::parse("#server-to-user-user@example.com", 200).ok();
        assert_eq!(
            c.as_ref().and_then(|c| c.server_to_user_id()),
            Some("user@example.com")
        );
        assert!(ChannelName::server_to_user("12345").is_ok());
        // User ids up to 200 characters, whatever the channel name limit (protocol.md 2.10).
        let long = format!("#server-to-user-{}", "é".repeat(200));
        assert!(ChannelName::parse(&long, 200).is_ok());
        let longer = format!("#server-to-user-{}", "u".repeat(201));
        assert!(ChannelName::parse(&longer, 200).is_err());
        assert!(ChannelName::parse(&"a".repeat(201), 200).is_err());
    }

    #[test]
    fn client_events_only_on_signed_channels() {
        assert!(!ChannelKind::Public.accepts_client_events());
        assert!(!ChannelKind::PublicCache.accepts_client_events());
        assert!(!ChannelKind::ServerToUser.accepts_client_events());
        assert!(ChannelKind::Private.accepts_client_events());
        assert!(ChannelKind::Presence.accepts_client_events());
        assert!(ChannelKind::PrivateEncrypted.accepts_client_events());
    }
}
