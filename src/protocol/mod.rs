//! The Pusher protocol v7, without IO.
//!
//! Owns: the wire vocabulary (messages in both directions, channel names and kinds, socket ids,
//! user ids, presence shapes), signatures, and the one table of wire error codes. Nothing here
//! touches tokio, hyper or sockets, so every rule of protocol.md is unit-testable with plain values.

pub mod auth;
pub mod channel;
pub mod codes;
pub mod message;
pub mod presence;
pub mod resume;
pub mod socket_id;

pub use channel::{ChannelKind, ChannelName, ChannelNameError};
pub use codes::ErrorKind;
pub use message::{ClientMessage, ParseError};
pub use presence::{MemberChange, PresenceMember, UserId};
pub use socket_id::SocketId;
