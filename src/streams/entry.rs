//! [`StreamEvent`]: one event a sink may write, and its stream fields — the webhook's names
//! (`name`, `channel`, `event`, `data`, `socket_id`, `user_id`, `subscription_count`) plus
//! `time` (milliseconds since the Unix epoch), each a plain string so that a consumer reads
//! them without parsing JSON. A field that does not apply to the event is left out.

use crate::webhooks::WebhookEvent;

use super::config::StreamKind;

/// One event for the stream sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A transition or client event, as webhooks report it.
    Webhook(WebhookEvent),
    /// An event published through the HTTP API.
    Api {
        channel: String,
        event: String,
        /// The `data` string as published.
        data: String,
        /// The socket the publisher excluded, if any.
        socket_id: Option<String>,
    },
}

impl StreamEvent {
    pub fn kind(&self) -> StreamKind {
        match self {
            StreamEvent::Webhook(e) => StreamKind::Webhook(e.kind()),
            StreamEvent::Api { .. } => StreamKind::ApiEvent,
        }
    }

    pub fn channel(&self) -> &str {
        match self {
            StreamEvent::Webhook(e) => e.channel(),
            StreamEvent::Api { channel, .. } => channel,
        }
    }

    /// Roughly what the event holds, charged to the app's queue bound.
    pub(super) fn size(&self) -> usize {
        const OVERHEAD: usize = 128;
        OVERHEAD
            + match self {
                StreamEvent::Webhook(WebhookEvent::ClientEvent {
                    channel,
                    event,
                    data,
                    socket_id,
                    user_id,
                }) => {
                    channel.len()
                        + event.len()
                        + data.len()
                        + socket_id.len()
                        + user_id.as_ref().map_or(0, String::len)
                }
                StreamEvent::Webhook(WebhookEvent::MemberAdded { channel, user_id })
                | StreamEvent::Webhook(WebhookEvent::MemberRemoved { channel, user_id }) => {
                    channel.len() + user_id.len()
                }
                StreamEvent::Webhook(e) => e.channel().len(),
                StreamEvent::Api {
                    channel,
                    event,
                    data,
                    socket_id,
                } => {
                    channel.len()
                        + event.len()
                        + data.len()
                        + socket_id.as_ref().map_or(0, String::len)
                }
            }
    }

    /// The entry's fields, in this order: `name`, `channel`, then those that apply of
    /// `event`, `data`, `socket_id`, `user_id`, `subscription_count`, and `time`.
    pub(super) fn fields(&self, time_ms: u64) -> Vec<(&'static str, String)> {
        let mut f = Vec::with_capacity(7);
        f.push(("name", self.kind().as_str().to_string()));
        f.push(("channel", self.channel().to_string()));
        match self {
            StreamEvent::Webhook(WebhookEvent::ClientEvent {
                event,
                data,
                socket_id,
                user_id,
                ..
            }) => {
                f.push(("event", event.clone()));
                f.push(("data", data.clone()));
                f.push(("socket_id", socket_id.clone()));
                if let Some(user) = user_id {
                    f.push(("user_id", user.clone()));
                }
            }
            StreamEvent::Webhook(WebhookEvent::MemberAdded { user_id, .. })
            | StreamEvent::Webhook(WebhookEvent::MemberRemoved { user_id, .. }) => {
                f.push(("user_id", user_id.clone()));
            }
            StreamEvent::Webhook(WebhookEvent::SubscriptionCount {
                subscription_count, ..
            }) => f.push(("subscription_count", subscription_count.to_string())),
            StreamEvent::Webhook(_) => {}
            StreamEvent::Api {
                event,
                data,
                socket_id,
                ..
            } => {
                f.push(("event", event.clone()));
                f.push(("data", data.clone()));
                if let Some(s) = socket_id {
                    f.push(("socket_id", s.clone()));
                }
            }
        }
        f.push(("time", time_ms.to_string()));
        f
    }
}

impl From<WebhookEvent> for StreamEvent {
    fn from(e: WebhookEvent) -> Self {
        StreamEvent::Webhook(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_the_webhook_names_as_plain_strings() {
        let e = StreamEvent::Webhook(WebhookEvent::ClientEvent {
            channel: "presence-chat".into(),
            event: "client-typing".into(),
            data: r#"{"text":"hi"}"#.into(),
            socket_id: "1.2".into(),
            user_id: Some("7".into()),
        });
        let fields = e.fields(1_700_000_000_000);
        let names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "name",
                "channel",
                "event",
                "data",
                "socket_id",
                "user_id",
                "time"
            ]
        );
        assert_eq!(fields[0].1, "client_event");
        assert_eq!(fields[3].1, r#"{"text":"hi"}"#);
        assert_eq!(fields[6].1, "1700000000000");

        let count = StreamEvent::Webhook(WebhookEvent::SubscriptionCount {
            channel: "c".into(),
            subscription_count: 3,
        });
        assert!(count
            .fields(1)
            .contains(&("subscription_count", "3".into())));
        let api = StreamEvent::Api {
            channel: "c".into(),
            event: "e".into(),
            data: "d".into(),
            socket_id: None,
        };
        let names: Vec<&str> = api.fields(1).iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["name", "channel", "event", "data", "time"]);
        assert_eq!(api.fields(1)[0].1, "api_event");
    }
}
