//! Webhooks (spec 6). Placeholder interface: the dispatcher lands in the next change.

use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
}

#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub event_types: Vec<WebhookKind>,
    pub headers: Vec<(String, String)>,
    pub channel_prefix: Option<String>,
    pub channel_suffix: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AppWebhooks {
    pub app_id: String,
    pub key: String,
    pub secret: String,
    pub targets: Vec<WebhookTarget>,
    pub batching: bool,
    pub batch_window: Duration,
    pub batch_max_events: usize,
    pub removal_delay: Duration,
}

#[derive(Debug, Clone)]
pub enum WebhookEvent {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        user_id: Option<String>,
    },
    CacheMiss {
        channel: String,
    },
    SubscriptionCount {
        channel: String,
        subscription_count: u64,
    },
}

#[derive(Clone, Default)]
pub struct Webhooks;

impl Webhooks {
    pub fn emit(&self, _app: &Arc<AppWebhooks>, _event: WebhookEvent) {}
}
