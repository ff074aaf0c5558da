//! The webhook event vocabulary of protocol.md 6.2: [`WebhookKind`] (the names a target subscribes
//! to) and [`WebhookEvent`] (one event, serialised exactly as protocol.md's shapes).
//!
//! This file owns the wire shape of a single event. It does not decide when an event is
//! sent (that is `gate.rs`) nor how events are wrapped into a request body (`payload.rs`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::WebhookError;

/// A webhook event type, as named on the wire and in configuration (`event_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    /// `channel_occupied`: a channel went from 0 to 1 subscriber.
    ChannelOccupied,
    /// `channel_vacated`: a channel went from 1 to 0 subscribers (delayed, protocol.md 6.4).
    ChannelVacated,
    /// `member_added`: a presence channel gained a distinct user.
    MemberAdded,
    /// `member_removed`: a presence channel lost the last connection of a user (delayed).
    MemberRemoved,
    /// `client_event`: a client event was accepted and relayed.
    ClientEvent,
    /// `cache_miss`: a cache channel subscription found nothing cached (de-duplicated).
    CacheMiss,
    /// `subscription_count`: the subscriber count of a non-presence channel changed.
    SubscriptionCount,
}

impl WebhookKind {
    /// Every kind, in the order of protocol.md 6.2.
    pub const ALL: [WebhookKind; 7] = [
        WebhookKind::ChannelOccupied,
        WebhookKind::ChannelVacated,
        WebhookKind::MemberAdded,
        WebhookKind::MemberRemoved,
        WebhookKind::ClientEvent,
        WebhookKind::CacheMiss,
        WebhookKind::SubscriptionCount,
    ];

    /// The wire name (`"channel_occupied"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            WebhookKind::ChannelOccupied => "channel_occupied",
            WebhookKind::ChannelVacated => "channel_vacated",
            WebhookKind::MemberAdded => "member_added",
            WebhookKind::MemberRemoved => "member_removed",
            WebhookKind::ClientEvent => "client_event",
            WebhookKind::CacheMiss => "cache_miss",
            WebhookKind::SubscriptionCount => "subscription_count",
        }
    }

    /// The kind that cancels, or is cancelled by, this one under the removal delay
    /// (protocol.md 6.4): occupied/vacated and member added/removed come in pairs.
    pub const fn paired(self) -> Option<WebhookKind> {
        match self {
            WebhookKind::ChannelOccupied => Some(WebhookKind::ChannelVacated),
            WebhookKind::ChannelVacated => Some(WebhookKind::ChannelOccupied),
            WebhookKind::MemberAdded => Some(WebhookKind::MemberRemoved),
            WebhookKind::MemberRemoved => Some(WebhookKind::MemberAdded),
            WebhookKind::ClientEvent | WebhookKind::CacheMiss | WebhookKind::SubscriptionCount => {
                None
            }
        }
    }
}

impl fmt::Display for WebhookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WebhookKind {
    type Err = WebhookError;

    /// Parses the wire name exactly (`"member_added"`); anything else is an error so that a
    /// misspelt `event_types` entry is reported rather than silently matching nothing.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        WebhookKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| WebhookError::UnknownKind(name.to_owned()))
    }
}

/// One webhook event. Serialises to exactly the shapes of protocol.md 6.2, fields in that order:
/// `{"name":"member_added","channel":"presence-room","user_id":"42"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum WebhookEvent {
    /// The channel went from 0 to 1 subscriber.
    ChannelOccupied {
        /// Channel name.
        channel: String,
    },
    /// The channel went from 1 to 0 subscribers.
    ChannelVacated {
        /// Channel name.
        channel: String,
    },
    /// A presence channel gained a distinct user (first connection of that user).
    MemberAdded {
        /// Channel name.
        channel: String,
        /// The user's canonical string id.
        user_id: String,
    },
    /// A presence channel lost the last connection of a user.
    MemberRemoved {
        /// Channel name.
        channel: String,
        /// The user's canonical string id.
        user_id: String,
    },
    /// A client event was accepted and relayed.
    ClientEvent {
        /// Channel name.
        channel: String,
        /// Event name (`client-...`).
        event: String,
        /// The event data as a string: what the client sent if it sent a string, otherwise
        /// its compact JSON serialisation (protocol.md 6.2 [REC]). Always a JSON string on the wire.
        data: String,
        /// The sender's socket id.
        socket_id: String,
        /// The sender's user id; only on presence channels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    /// A subscription to a cache channel found nothing cached.
    CacheMiss {
        /// Channel name.
        channel: String,
    },
    /// The subscriber count of a non-presence channel changed.
    SubscriptionCount {
        /// Channel name.
        channel: String,
        /// The new subscriber count.
        subscription_count: u64,
    },
}

impl WebhookEvent {
    /// The event's type.
    pub fn kind(&self) -> WebhookKind {
        match self {
            WebhookEvent::ChannelOccupied { .. } => WebhookKind::ChannelOccupied,
            WebhookEvent::ChannelVacated { .. } => WebhookKind::ChannelVacated,
            WebhookEvent::MemberAdded { .. } => WebhookKind::MemberAdded,
            WebhookEvent::MemberRemoved { .. } => WebhookKind::MemberRemoved,
            WebhookEvent::ClientEvent { .. } => WebhookKind::ClientEvent,
            WebhookEvent::CacheMiss { .. } => WebhookKind::CacheMiss,
            WebhookEvent::SubscriptionCount { .. } => WebhookKind::SubscriptionCount,
        }
    }

    /// The channel the event is about (every kind has one).
    pub fn channel(&self) -> &str {
        match self {
            WebhookEvent::ChannelOccupied { channel }
            | WebhookEvent::ChannelVacated { channel }
            | WebhookEvent::MemberAdded { channel, .. }
            | WebhookEvent::MemberRemoved { channel, .. }
            | WebhookEvent::ClientEvent { channel, .. }
            | WebhookEvent::CacheMiss { channel }
            | WebhookEvent::SubscriptionCount { channel, .. } => channel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print_their_wire_names() {
        for kind in WebhookKind::ALL {
            assert_eq!(kind.as_str().parse::<WebhookKind>().ok(), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
            let json = serde_json::to_string(&kind).ok();
            assert_eq!(json, Some(format!("\"{}\"", kind.as_str())));
            let back: Option<WebhookKind> = serde_json::from_str(&format!("\"{kind}\"")).ok();
            assert_eq!(back, Some(kind));
        }
        assert!(matches!(
            "Channel_Occupied".parse::<WebhookKind>(),
            Err(WebhookError::UnknownKind(name)) if name == "Channel_Occupied"
        ));
        assert!("".parse::<WebhookKind>().is_err());
    }

    #[test]
    fn pairs_are_symmetric() {
        for kind in WebhookKind::ALL {
            if let Some(other) = kind.paired() {
                assert_eq!(other.paired(), Some(kind));
            }
        }
        assert_eq!(WebhookKind::ClientEvent.paired(), None);
    }

    #[test]
    fn every_event_reports_its_kind_and_channel() {
        let events = [
            WebhookEvent::ChannelOccupied {
                channel: "a".into(),
            },
            WebhookEvent::ChannelVacated {
                channel: "a".into(),
            },
            WebhookEvent::MemberAdded {
                channel: "a".into(),
                user_id: "1".into(),
            },
            WebhookEvent::MemberRemoved {
                channel: "a".into(),
                user_id: "1".into(),
            },
            WebhookEvent::ClientEvent {
                channel: "a".into(),
                event: "client-x".into(),
                data: "{}".into(),
                socket_id: "1.2".into(),
                user_id: None,
            },
            WebhookEvent::CacheMiss {
                channel: "a".into(),
            },
            WebhookEvent::SubscriptionCount {
                channel: "a".into(),
                subscription_count: 1,
            },
        ];
        for (event, kind) in events.iter().zip(WebhookKind::ALL) {
            assert_eq!(event.kind(), kind);
            assert_eq!(event.channel(), "a");
        }
    }
}
