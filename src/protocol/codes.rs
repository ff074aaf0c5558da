//! The one table of wire error codes (protocol.md 1.7, 1.8, 2.4, 4.1).
//!
//! Every `pusher:error` the server sends and every close code it uses comes from `ErrorKind`.
//! A code is chosen for the client action it causes: 4000–4099 and ≥ 4300 stop pusher-js for
//! good, 41xx make it back off, 42xx make it reconnect at once.

use std::borrow::Cow;

/// Everything the server can refuse or end, with its code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    TlsOnly,
    AppNotFound,
    AppDisabled,
    OverQuota {
        close_code: u16,
    },
    InvalidVersionFormat,
    UnsupportedProtocol,
    OriginNotAllowed,
    OverCapacity,
    ShuttingDown,
    InvalidMessageFormat,
    PongTimeout,
    InvalidChannelName,
    InvalidSignature,
    PresenceFull,
    /// The presence store cannot be reached (a cluster whose backend is down).
    PresenceUnavailable,
    PresenceMemberTooLarge,
    PresenceWithoutUser,
    ServerToUserForbidden,
    ClientEventsDisabled,
    EventNameTooLong,
    ClientEventChannelKind,
    ClientEventNotSubscribed {
        channel: String,
    },
    ClientEventTooLarge,
    ClientEventRateLimited,
    /// A subscribe beyond the app's `max_channels_per_connection`.
    ChannelLimit,
    /// A subscribe beyond the app's `max_subscribes_per_second` (and its burst).
    SubscribeRateLimited,
    WatchlistLimit,
    SigninFailed,
    SigninDifferentUser,
    AuthorizationTimeout,
    Terminated,
    /// The outbound queue of a connection that stopped reading filled up.
    SlowConsumer,
    /// WebSocket-level: an inbound message above `max_message_size` (RFC 6455 1009).
    MessageTooBig,
    /// WebSocket-level protocol violation (RFC 6455 1002).
    WebSocketProtocol,
    /// A text message that is not valid UTF-8 (RFC 6455 1007).
    InvalidPayload,
}

impl ErrorKind {
    /// The code carried in `pusher:error` and, for closing kinds, in the close frame.
    pub fn code(&self) -> u16 {
        match self {
            ErrorKind::TlsOnly => 4000,
            ErrorKind::AppNotFound => 4001,
            ErrorKind::AppDisabled => 4003,
            ErrorKind::OverQuota { close_code } => *close_code,
            ErrorKind::InvalidVersionFormat => 4006,
            ErrorKind::UnsupportedProtocol => 4007,
            ErrorKind::OriginNotAllowed
            | ErrorKind::InvalidChannelName
            | ErrorKind::InvalidSignature
            | ErrorKind::PresenceWithoutUser
            | ErrorKind::ServerToUserForbidden
            | ErrorKind::ClientEventChannelKind
            | ErrorKind::ClientEventNotSubscribed { .. }
            | ErrorKind::SigninFailed
            | ErrorKind::SigninDifferentUser
            | ErrorKind::AuthorizationTimeout
            | ErrorKind::Terminated => 4009,
            ErrorKind::OverCapacity
            | ErrorKind::PresenceFull
            | ErrorKind::ChannelLimit
            | ErrorKind::SlowConsumer => 4100,
            ErrorKind::ShuttingDown | ErrorKind::InvalidMessageFormat => 4200,
            ErrorKind::PongTimeout => 4201,
            ErrorKind::PresenceMemberTooLarge
            | ErrorKind::ClientEventsDisabled
            | ErrorKind::EventNameTooLong
            | ErrorKind::ClientEventTooLarge
            | ErrorKind::ClientEventRateLimited
            | ErrorKind::SubscribeRateLimited => 4301,
            ErrorKind::WatchlistLimit | ErrorKind::PresenceUnavailable => 4302,
            ErrorKind::MessageTooBig => 1009,
            ErrorKind::WebSocketProtocol => 1002,
            ErrorKind::InvalidPayload => 1007,
        }
    }

    /// Human-readable message (≤ 123 bytes so it also fits a close reason).
    pub fn message(&self) -> Cow<'static, str> {
        let s: &'static str = match self {
            ErrorKind::TlsOnly => {
                "Application only accepts SSL connections, reconnect using wss://"
            }
            ErrorKind::AppNotFound => "Application does not exist",
            ErrorKind::AppDisabled => "Application disabled",
            ErrorKind::OverQuota { .. } => "Application is over connection quota",
            ErrorKind::InvalidVersionFormat => "Invalid version string format",
            ErrorKind::UnsupportedProtocol => "Unsupported protocol version",
            ErrorKind::OriginNotAllowed => "Origin not allowed",
            ErrorKind::OverCapacity => "Over capacity",
            ErrorKind::ShuttingDown => "Server is shutting down, reconnect",
            ErrorKind::InvalidMessageFormat => "Invalid message format",
            ErrorKind::PongTimeout => "Pong reply not received",
            ErrorKind::InvalidChannelName => "Invalid channel name",
            ErrorKind::InvalidSignature => "Invalid signature",
            ErrorKind::PresenceFull => "Presence channel member limit reached",
            ErrorKind::PresenceUnavailable => {
                "Presence is unavailable right now; try again shortly"
            }
            ErrorKind::PresenceMemberTooLarge => "Presence user_info too large",
            ErrorKind::PresenceWithoutUser => {
                "Presence subscription needs channel_data or a signed-in user"
            }
            ErrorKind::ServerToUserForbidden => {
                "Only the connection signed in as this user may subscribe"
            }
            ErrorKind::ClientEventsDisabled => "The app does not have client messaging enabled.",
            ErrorKind::EventNameTooLong => "Event name is too long",
            ErrorKind::ClientEventChannelKind => {
                "Client events are only supported on private and presence channels"
            }
            ErrorKind::ClientEventNotSubscribed { channel } => {
                return Cow::Owned(format!(
                    "Cannot broadcast client event (connection not subscribed to channel {channel})"
                ))
            }
            ErrorKind::ClientEventTooLarge => "The event data should be less than 10 KB.",
            ErrorKind::ClientEventRateLimited => "Client event rejected due to rate limit",
            ErrorKind::ChannelLimit => "Channel limit per connection reached",
            ErrorKind::SubscribeRateLimited => "Subscription rejected due to rate limit",
            ErrorKind::WatchlistLimit => {
                "Watchlist limit exceeded. Only the first 100 user IDs are accepted."
            }
            ErrorKind::SigninFailed => "Invalid signature",
            ErrorKind::SigninDifferentUser => "Connection is already signed in as another user",
            ErrorKind::AuthorizationTimeout => "Connection not authorized within timeout.",
            ErrorKind::Terminated => "You got disconnected by the app.",
            ErrorKind::SlowConsumer => "Connection too slow: outbound queue full",
            ErrorKind::MessageTooBig => "Message too big",
            ErrorKind::WebSocketProtocol => "WebSocket protocol error",
            ErrorKind::InvalidPayload => "Invalid UTF-8 in text message",
        };
        Cow::Borrowed(s)
    }

    /// Whether a `pusher:error` event precedes the close frame. WebSocket-level closes (1xxx)
    /// carry only the close frame.
    pub fn sends_error_event(&self) -> bool {
        self.code() >= 4000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_cause_the_intended_client_action() {
        // 4000-4099: pusher-js stops; 4100-4199 back off; 4200-4299 reconnect now.
        assert_eq!(ErrorKind::AppNotFound.code(), 4001);
        assert_eq!(ErrorKind::AppDisabled.code(), 4003);
        assert_eq!(ErrorKind::OverQuota { close_code: 4004 }.code(), 4004);
        assert_eq!(ErrorKind::OriginNotAllowed.code(), 4009);
        assert_eq!(ErrorKind::Terminated.code(), 4009);
        assert_eq!(ErrorKind::SlowConsumer.code() / 100, 41);
        assert_eq!(ErrorKind::ShuttingDown.code(), 4200);
        assert_eq!(ErrorKind::PongTimeout.code(), 4201);
        assert_eq!(ErrorKind::MessageTooBig.code(), 1009);
    }

    #[test]
    fn messages_fit_a_close_reason() {
        let kinds = [
            ErrorKind::TlsOnly,
            ErrorKind::ClientEventNotSubscribed {
                channel: "x".repeat(20),
            },
            ErrorKind::WatchlistLimit,
            ErrorKind::PresenceWithoutUser,
        ];
        for k in kinds {
            assert!(k.message().len() <= 123, "{k:?}");
        }
    }
}
