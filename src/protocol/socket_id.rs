//! `SocketId`: the server-assigned connection id, `^\d+\.\d+$` (protocol.md 1.3).
//!
//! Both halves are random (never sequential), so a leaked auth token cannot be replayed on a
//! fresh connection by guessing its id.

use std::fmt;
use std::str::FromStr;

/// A connection's id. Stored as two `u32` halves packed in one `u64` so it is `Copy` and cheap to
/// hash; displayed as `"{hi}.{lo}"`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(u64);

impl SocketId {
    /// A fresh id from the thread-local CSPRNG.
    pub fn random() -> Self {
        SocketId(rand::random::<u64>())
    }

    pub fn from_parts(hi: u32, lo: u32) -> Self {
        SocketId((u64::from(hi) << 32) | u64::from(lo))
    }

    pub fn hi(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn lo(self) -> u32 {
        (self.0 & 0xffff_ffff) as u32
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.hi(), self.lo())
    }
}

impl fmt::Debug for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SocketId({self})")
    }
}

/// A string that is not of the form `digits.digits`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid socket_id: expected two decimal integers joined by a dot")]
pub struct InvalidSocketId;

/// Checks the shape the SDKs check (`^\d+\.\d+$`) without requiring that the id was issued by us.
pub fn is_valid_socket_id(s: &str) -> bool {
    match s.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

impl FromStr for SocketId {
    type Err = InvalidSocketId;

    /// Parses an id this server could have issued. Well-formed ids whose halves do not fit in
    /// `u32` are valid on the wire but can never match a local connection.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !is_valid_socket_id(s) {
            return Err(InvalidSocketId);
        }
        let (a, b) = s.split_once('.').ok_or(InvalidSocketId)?;
        let hi = a.parse::<u32>().map_err(|_| InvalidSocketId)?;
        let lo = b.parse::<u32>().map_err(|_| InvalidSocketId)?;
        Ok(SocketId::from_parts(hi, lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn display_matches_the_sdk_regex() {
        for _ in 0..1000 {
            let id = SocketId::random().to_string();
            assert!(is_valid_socket_id(&id), "{id}");
            assert!(!id.starts_with('-'));
        }
    }

    #[test]
    fn round_trips() {
        let id = SocketId::from_parts(1234, 5678);
        assert_eq!(id.to_string(), "1234.5678");
        assert_eq!("1234.5678".parse::<SocketId>(), Ok(id));
    }

    #[test]
    fn ids_are_unique_over_many_connections() {
        let ids: HashSet<SocketId> = (0..100_000).map(|_| SocketId::random()).collect();
        assert_eq!(ids.len(), 100_000);
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in ["", "1", "1.", ".1", "1.2.3", "a.b", "-1.2", "1.2 ", "1,2"] {
            assert!(!is_valid_socket_id(bad), "{bad:?}");
        }
        assert!(is_valid_socket_id("99999999999.1"));
        assert!("99999999999.1".parse::<SocketId>().is_err());
    }
}
