//! Presence and user shapes (protocol.md 2.6, 3.5): `channel_data`, sign-in `user_data`, canonical user
//! ids, and the roster carried by `subscription_succeeded`.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::channel::MAX_USER_ID_LEN;

/// A canonical user id: a JSON string stays as is, a JSON number becomes its literal text
/// (`10` → `"10"`). Used for membership, rosters, `user_id` on client events, the users API and
/// webhooks, so every client sees strings.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn new(id: &str) -> Option<UserId> {
        if id.is_empty() || id.chars().count() > MAX_USER_ID_LEN || id.chars().any(char::is_control)
        {
            return None;
        }
        Some(UserId(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Canonicalises a raw JSON value that must be a non-empty string or a number.
    fn from_raw(raw: &RawValue) -> Option<UserId> {
        let text = raw.get();
        match text.as_bytes().first()? {
            b'"' => {
                let s: String = serde_json::from_str(text).ok()?;
                UserId::new(&s)
            }
            b'-' | b'0'..=b'9' => UserId::new(text),
            _ => None,
        }
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", &*self.0)
    }
}
impl Borrow<str> for UserId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A presence member: who, and the `user_info` shown to the others (raw JSON, kept verbatim).
#[derive(Debug, Clone)]
pub struct PresenceMember {
    pub user_id: UserId,
    pub user_info: Option<Arc<RawValue>>,
}

impl PresenceMember {
    /// Size of the serialised `user_info` (the limit of protocol.md 2.6).
    pub fn info_len(&self) -> usize {
        self.user_info.as_ref().map_or(0, |i| i.get().len())
    }
}

/// Why `channel_data` or `user_data` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("user id missing, empty, too long or not a string/number")]
    BadUserId,
    #[error("watchlist is not an array of user ids")]
    BadWatchlist,
}

#[derive(Deserialize)]
struct ChannelDataShape<'a> {
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_info: Option<&'a RawValue>,
}

fn raw_to_arc(raw: &RawValue) -> Option<Arc<RawValue>> {
    if raw.get() == "null" {
        return None;
    }
    let boxed: Box<RawValue> = raw.to_owned();
    Some(Arc::from(boxed))
}

/// Parses presence `channel_data` (the exact string the client sent; it was already verified).
pub fn parse_channel_data(channel_data: &str) -> Result<PresenceMember, MemberError> {
    let shape: ChannelDataShape<'_> =
        serde_json::from_str(channel_data).map_err(|_| MemberError::NotAnObject)?;
    let user_id = shape
        .user_id
        .and_then(UserId::from_raw)
        .ok_or(MemberError::BadUserId)?;
    Ok(PresenceMember {
        user_id,
        user_info: shape.user_info.and_then(raw_to_arc),
    })
}

/// A membership change, as a `pusher_internal:member_added` / `member_removed` frame announces
/// it (protocol.md 2.6); it travels beside the frame (`cluster::Kind`), never read back from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    Added(UserId),
    Removed(UserId),
}

impl MemberChange {
    pub fn user(&self) -> &UserId {
        match self {
            MemberChange::Added(u) | MemberChange::Removed(u) => u,
        }
    }
}

/// A signed-in user (protocol.md 3.5).
#[derive(Debug, Clone)]
pub struct SignedInUser {
    pub id: UserId,
    pub user_info: Option<Arc<RawValue>>,
    pub watchlist: Vec<UserId>,
}

#[derive(Deserialize)]
struct UserDataShape<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_info: Option<&'a RawValue>,
    #[serde(borrow)]
    watchlist: Option<&'a RawValue>,
}

/// Parses sign-in `user_data`. A numeric `id` is canonicalised like presence ids.
pub fn parse_user_data(user_data: &str) -> Result<SignedInUser, MemberError> {
    let shape: UserDataShape<'_> =
        serde_json::from_str(user_data).map_err(|_| MemberError::NotAnObject)?;
    let id = shape
        .id
        .and_then(UserId::from_raw)
        .ok_or(MemberError::BadUserId)?;
    let watchlist = match shape.watchlist {
        None => Vec::new(),
        Some(raw) => {
            let items: Vec<&RawValue> =
                serde_json::from_str(raw.get()).map_err(|_| MemberError::BadWatchlist)?;
            items
                .into_iter()
                .map(UserId::from_raw)
                .collect::<Option<Vec<_>>>()
                .ok_or(MemberError::BadWatchlist)?
        }
    };
    Ok(SignedInUser {
        id,
        user_info: shape.user_info.and_then(raw_to_arc),
        watchlist,
    })
}

/// The inner JSON of a presence `subscription_succeeded` (before string-encoding):
/// `{"presence":{"ids":[..],"hash":{..},"count":n}}`. Ids are strings; `hash` values are the
/// members' `user_info` or `null`.
pub fn roster_json<'a>(members: impl IntoIterator<Item = &'a PresenceMember>) -> String {
    let mut ids = String::from("[");
    let mut hash = String::from("{");
    let mut count = 0usize;
    for m in members {
        if count > 0 {
            ids.push(',');
            hash.push(',');
        }
        let id = json_string(m.user_id.as_str());
        ids.push_str(&id);
        hash.push_str(&id);
        hash.push(':');
        hash.push_str(m.user_info.as_ref().map_or("null", |i| i.get()));
        count += 1;
    }
    ids.push(']');
    hash.push('}');
    format!(r#"{{"presence":{{"ids":{ids},"hash":{hash},"count":{count}}}}}"#)
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    // Serialising a `str` cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_user_ids_become_strings() {
        let m = parse_channel_data(r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#);
        let m = m.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.user_id.as_str(), "10");
        assert_eq!(
            m.user_info.as_ref().map(|i| i.get()),
            Some(r#"{"name":"Mr. Pusher"}"#)
        );
    }

    #[test]
    fn python_shaped_channel_data_is_accepted() {
        let m = parse_channel_data(r#"{"user_id": "42", "user_info": {"name": "Zo\u00eb"}}"#);
        let m = m.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.user_id.as_str(), "42");
        // user_info kept exactly as sent.
        assert_eq!(
            m.user_info.map(|i| i.get().to_string()),
            Some(r#"{"name": "Zo\u00eb"}"#.into())
        );
    }

    #[test]
    fn bad_user_ids_are_refused() {
        for bad in [
            r#"{}"#,
            r#"{"user_id":""}"#,
            r#"{"user_id":null}"#,
            r#"{"user_id":{}}"#,
            "[]",
            "x",
        ] {
            assert!(parse_channel_data(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roster_has_string_ids_and_null_for_missing_info() {
        let a = parse_channel_data(r#"{"user_id":11,"user_info":{"name":"Ada"}}"#);
        let b = parse_channel_data(r#"{"user_id":"10"}"#);
        let (Ok(a), Ok(b)) = (a, b) else {
            panic!("parse")
        };
        let json = roster_json([&a, &b]);
        assert_eq!(
            json,
            r#"{"presence":{"ids":["11","10"],"hash":{"11":{"name":"Ada"},"10":null},"count":2}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(v["presence"]["count"], 2);
    }

    #[test]
    fn user_data_with_watchlist() {
        let u = parse_user_data(r#"{"id":"7","user_info":{"name":"Ada"},"watchlist":["8","9"]}"#);
        let u = u.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.id.as_str(), "7");
        assert_eq!(u.watchlist.len(), 2);
        assert_eq!(
            parse_user_data(r#"{"id":12345}"#).map(|u| u.id.to_string()),
            Ok("12345".into())
        );
        assert!(parse_user_data(r#"{"id":""}"#).is_err());
    }
}
