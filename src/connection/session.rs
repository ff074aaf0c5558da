//! `Session`: what one connection is (its subscriptions, its signed-in user, its client-event
//! budget) and the handling of every client message, in the order the spec gives (2.2, 2.5,
//! 3.5, 4.1). Refusals become `pusher:error` here; nothing else formats wire errors.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use tracing::{debug, warn};

use crate::app::{App, ClientEventPolicy};
use crate::broadcast::target_of;
use crate::channels::Joined;
use crate::cluster::Target;
use crate::connection::handle::ConnRef;
use crate::presence::Join;
use crate::protocol::auth::{channel_string_to_sign, signin_string_to_sign, verify_token};
use crate::protocol::presence::{parse_channel_data, parse_user_data, roster_json, SignedInUser};
use crate::protocol::{
    message, ChannelKind, ChannelName, ClientMessage, ErrorKind, MemberChange, PresenceMember,
    UserId,
};
use crate::ratelimit::TokenBucket;
use crate::state::{AppHub, ServerState};
use crate::webhooks::WebhookEvent;

/// A refusal of one message; the connection stays open unless the kind closes it.
struct Refusal {
    kind: ErrorKind,
    channel: Option<String>,
    /// HTTP-like status for the optional Soketi-style `pusher:subscription_error`.
    subscription_status: Option<u16>,
}

impl Refusal {
    fn new(kind: ErrorKind) -> Self {
        Refusal {
            kind,
            channel: None,
            subscription_status: None,
        }
    }
    fn on(kind: ErrorKind, channel: &str) -> Self {
        Refusal {
            kind,
            channel: Some(channel.to_string()),
            subscription_status: None,
        }
    }
    fn subscription(kind: ErrorKind, channel: &str, status: u16) -> Self {
        Refusal {
            kind,
            channel: Some(channel.to_string()),
            subscription_status: Some(status),
        }
    }
}

/// A join in progress on this node (`ChannelRegistry::begin_join`): a presence roster or a
/// cache channel's shared event being read. Dropped unfinished (refused, or the connection
/// went away during the read), it ends the join so the registry stops keeping events for it.
struct PendingJoin {
    hub: Arc<AppHub>,
    channel: ChannelName,
    mark: Option<u64>,
}

impl PendingJoin {
    fn begin(hub: &Arc<AppHub>, channel: &ChannelName) -> PendingJoin {
        PendingJoin {
            hub: hub.clone(),
            channel: channel.clone(),
            mark: Some(hub.channels.begin_join(channel)),
        }
    }

    /// The join's mark, for the subscription that ends it.
    fn finish(mut self) -> u64 {
        self.mark.take().unwrap_or_default()
    }
}

impl Drop for PendingJoin {
    fn drop(&mut self) {
        if self.mark.take().is_some() {
            self.hub.channels.abandon_join(&self.channel);
        }
    }
}

struct Subscription {
    /// The member this connection is on a presence channel.
    member: Option<UserId>,
}

pub(super) struct Session {
    state: Arc<ServerState>,
    app: Arc<App>,
    hub: Arc<AppHub>,
    conn: ConnRef,
    subscriptions: HashMap<ChannelName, Subscription>,
    user: Option<SignedInUser>,
    client_events: TokenBucket,
    /// Subscribed to a private/presence channel (for authorized connections, spec 3.9).
    authorized_channel: bool,
}

impl Session {
    pub(super) fn new(
        state: Arc<ServerState>,
        app: Arc<App>,
        hub: Arc<AppHub>,
        conn: ConnRef,
    ) -> Self {
        let rate = app.settings.max_client_events_per_second;
        Session {
            state,
            app,
            hub,
            conn,
            subscriptions: HashMap::new(),
            user: None,
            client_events: TokenBucket::new(rate),
            authorized_channel: false,
        }
    }

    /// Signed in, or subscribed to a channel that needed a signature.
    pub(super) fn is_authorized(&self) -> bool {
        self.user.is_some() || self.authorized_channel
    }

    pub(super) async fn handle(&mut self, payload: &[u8]) {
        let msg = match ClientMessage::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "unreadable message");
                self.refuse(Refusal::new(e.kind()));
                return;
            }
        };
        let result = match msg {
            ClientMessage::Ping => {
                self.conn.deliver(&message::pong());
                Ok(())
            }
            ClientMessage::Pong => Ok(()),
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => {
                self.subscribe(&channel, auth.as_deref(), channel_data.as_deref())
                    .await
            }
            ClientMessage::Unsubscribe { channel } => {
                if let Ok(name) = ChannelName::parse(&channel, usize::MAX) {
                    self.unsubscribe(&name).await;
                }
                Ok(())
            }
            ClientMessage::Signin { auth, user_data } => self.signin(&auth, &user_data).await,
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => self.client_event(&event, &channel, data.as_deref()),
            ClientMessage::UnknownProtocolEvent(e) | ClientMessage::Unsupported(e) => {
                debug!(event = %e, "ignored event");
                Ok(())
            }
        };
        if let Err(r) = result {
            self.refuse(r);
        }
    }

    fn refuse(&self, r: Refusal) {
        if let (Some(status), Some(channel)) = (r.subscription_status, r.channel.as_deref()) {
            if self.app.settings.subscription_error_event {
                self.conn
                    .deliver(&message::subscription_error(&r.kind, channel, status));
            }
        }
        self.conn
            .deliver(&message::error(&r.kind, r.channel.as_deref()));
    }

    async fn subscribe(
        &mut self,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Result<(), Refusal> {
        let name = ChannelName::parse(channel, self.app.settings.max_channel_name_length)
            .map_err(|_| Refusal::on(ErrorKind::InvalidChannelName, channel))?;
        let kind = name.kind();
        if self.subscriptions.contains_key(&name) {
            // Reconnect races: answer again, no member events, no webhooks (spec 2.2 step 3).
            if kind.is_presence() {
                let members = self
                    .state
                    .presence
                    .members(&self.app.id, name.as_str())
                    .await
                    .unwrap_or_default();
                let frame =
                    message::presence_subscription_succeeded(name.as_str(), &roster_json(&members));
                self.hub
                    .channels
                    .resend_roster(&name, &self.conn, &frame, &members);
            } else {
                self.conn
                    .deliver(&message::subscription_succeeded(name.as_str()));
            }
            return Ok(());
        }

        // Authorise by kind (spec 3).
        let member = match kind {
            ChannelKind::ServerToUser => {
                let own = self.user.as_ref().map(|u| u.id.as_str());
                if own.is_none() || own != name.server_to_user_id() {
                    return Err(Refusal::subscription(
                        ErrorKind::ServerToUserForbidden,
                        channel,
                        401,
                    ));
                }
                None
            }
            _ if kind.is_presence() => Some(self.presence_member(&name, auth, channel_data)?),
            _ if kind.requires_signature() => {
                let to_sign = channel_string_to_sign(self.conn.socket_id, name.as_str(), None);
                if !self.verify(auth, &to_sign) {
                    return Err(Refusal::subscription(
                        ErrorKind::InvalidSignature,
                        channel,
                        401,
                    ));
                }
                None
            }
            _ => None,
        };

        // From here on, events published on any node reach this one. For presence, before
        // the roster is read (cluster-wide through the store), so every member event after the
        // read reaches it; the registry reconciles the roster with the events in flight
        // (`Joined`). Likewise for a cache channel's shared cached event.
        let pending =
            (member.is_some() || kind.is_cache()).then(|| PendingJoin::begin(&self.hub, &name));
        let target = target_of(&name);
        self.state.adapter.acquire(&self.app.id, &target).await;
        let mut roster = Vec::new();
        let mut first_member = false;
        let mut member_rejoined = false;
        if let Some(m) = &member {
            let result = self
                .state
                .presence
                .join(
                    &self.app.id,
                    &name,
                    m,
                    self.conn.socket_id,
                    self.app.settings.max_presence_members_per_channel,
                )
                .await;
            let refusal = match result {
                Ok(Join::Joined {
                    first,
                    rejoined: r_again,
                    roster: r,
                }) => {
                    first_member = first;
                    member_rejoined = r_again;
                    roster = r;
                    None
                }
                Ok(Join::Full) => Some(Refusal::subscription(
                    ErrorKind::PresenceFull,
                    channel,
                    4100,
                )),
                Err(e) => {
                    warn!(error = %e, "presence join failed");
                    Some(Refusal::subscription(
                        ErrorKind::PresenceUnavailable,
                        channel,
                        4302,
                    ))
                }
            };
            if let Some(refusal) = refusal {
                drop(pending);
                self.state.adapter.release(&self.app.id, &target).await;
                return Err(refusal);
            }
        }

        let succeeded = match &member {
            Some(_) => {
                message::presence_subscription_succeeded(name.as_str(), &roster_json(&roster))
            }
            None => message::subscription_succeeded(name.as_str()),
        };
        // The cluster's copy of a cache channel's last event (one node: none, the registry
        // holds it).
        let shared_cache = if kind.is_cache() {
            self.state
                .cluster
                .cached(&self.hub, name.as_str())
                .await
                .unwrap_or_else(|e| {
                    warn!(error = %e, "reading the shared cache failed");
                    None
                })
        } else {
            None
        };
        // In a cluster, counted before the client hears of it (see `SharedState::subscribe`).
        let joined = pending.map(|p| Joined {
            mark: p.finish(),
            presence: member.clone().map(|m| (m, roster.as_slice())),
        });
        let added = self
            .state
            .cluster
            .subscribe(&self.hub, name.as_str(), || {
                self.hub.channels.subscribe(
                    &name,
                    &self.conn,
                    &succeeded,
                    shared_cache.as_ref(),
                    joined,
                )
            })
            .await;
        let Some((sub, counted)) = added else {
            self.state.adapter.release(&self.app.id, &target).await;
            return Ok(());
        };
        if kind.requires_signature() {
            self.authorized_channel = true;
        }
        self.subscriptions.insert(
            name.clone(),
            Subscription {
                member: member.as_ref().map(|m| m.user_id.clone()),
            },
        );
        // Occupancy is decided cluster-wide: only the node that made the count 1 reports it.
        let (total, rejoined) = match counted {
            Ok(c) => (c.total, c.rejoined),
            Err(e) => {
                warn!(error = %e, "counting a subscription cluster-wide failed");
                (0, false)
            }
        };
        // Back while its `channel_vacated` was held cluster-wide: neither webhook goes.
        if total == 1 && !rejoined {
            self.state.webhook(
                &self.app,
                WebhookEvent::ChannelOccupied {
                    channel: name.to_string(),
                },
            );
        }
        if let Some(m) = &member {
            self.conn.add_presence_user(&m.user_id);
            if first_member {
                let frame = message::member_added(
                    name.as_str(),
                    m.user_id.as_str(),
                    m.user_info.as_deref(),
                );
                self.state.broadcaster.publish_member(
                    &self.hub,
                    &name,
                    MemberChange::Added(m.user_id.clone()),
                    frame,
                    Some(self.conn.socket_id),
                );
                // Back while their `member_removed` was held cluster-wide: neither webhook.
                if !member_rejoined {
                    self.state.webhook(
                        &self.app,
                        WebhookEvent::MemberAdded {
                            channel: name.to_string(),
                            user_id: m.user_id.to_string(),
                        },
                    );
                }
            }
        }
        if kind.is_cache() && !sub.cache_hit {
            self.conn.deliver(&message::cache_miss(name.as_str()));
            self.state.webhook(
                &self.app,
                WebhookEvent::CacheMiss {
                    channel: name.to_string(),
                },
            );
        }
        self.subscription_count_changed(&name, total);
        Ok(())
    }

    /// The member of a presence subscription: from verified `channel_data`, or from the
    /// signed-in user when `channel_data` is absent (spec 2.6).
    fn presence_member(
        &self,
        name: &ChannelName,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Result<PresenceMember, Refusal> {
        let channel = name.as_str();
        let member = match channel_data {
            Some(data) => {
                let to_sign = channel_string_to_sign(self.conn.socket_id, channel, Some(data));
                if !self.verify(auth, &to_sign) {
                    return Err(Refusal::subscription(
                        ErrorKind::InvalidSignature,
                        channel,
                        401,
                    ));
                }
                parse_channel_data(data).map_err(|_| {
                    Refusal::subscription(ErrorKind::PresenceWithoutUser, channel, 401)
                })?
            }
            None => {
                let Some(user) = &self.user else {
                    return Err(Refusal::subscription(
                        ErrorKind::PresenceWithoutUser,
                        channel,
                        401,
                    ));
                };
                let to_sign = channel_string_to_sign(self.conn.socket_id, channel, None);
                if !self.verify(auth, &to_sign) {
                    return Err(Refusal::subscription(
                        ErrorKind::InvalidSignature,
                        channel,
                        401,
                    ));
                }
                PresenceMember {
                    user_id: user.id.clone(),
                    user_info: user.user_info.clone(),
                }
            }
        };
        if member.info_len() > self.app.settings.max_presence_member_size {
            return Err(Refusal::subscription(
                ErrorKind::PresenceMemberTooLarge,
                channel,
                4301,
            ));
        }
        Ok(member)
    }

    fn verify(&self, auth: Option<&str>, to_sign: &str) -> bool {
        auth.is_some_and(|token| {
            verify_token(
                self.app.key.as_str(),
                self.app.secret.as_str(),
                to_sign,
                token,
            )
        })
    }

    async fn unsubscribe(&mut self, name: &ChannelName) {
        let Some(sub) = self.subscriptions.remove(name) else {
            return;
        };
        if let Some(u) = self.hub.channels.unsubscribe(name, self.conn.socket_id) {
            self.state
                .adapter
                .release(&self.app.id, &target_of(name))
                .await;
            let hold = self.app.removal_hold();
            match self
                .state
                .cluster
                .unsubscribed(&self.hub, name.as_str(), &u, hold)
                .await
            {
                Ok(0) => self.state.held_webhook(
                    &self.app,
                    WebhookEvent::ChannelVacated {
                        channel: name.to_string(),
                    },
                    hold,
                ),
                Ok(total) => self.subscription_count_changed(name, total),
                Err(e) => warn!(error = %e, "counting an unsubscription cluster-wide failed"),
            }
        }
        if let Some(user) = sub.member {
            if !self
                .subscriptions
                .values()
                .any(|s| s.member.as_ref() == Some(&user))
            {
                self.conn.remove_presence_user(&user);
            }
            let hold = self.app.removal_hold();
            let last = self
                .state
                .presence
                .leave(&self.app.id, name, &user, self.conn.socket_id, hold)
                .await;
            match last {
                Ok(true) => {
                    let frame = message::member_removed(name.as_str(), user.as_str());
                    self.state.broadcaster.publish_member(
                        &self.hub,
                        name,
                        MemberChange::Removed(user.clone()),
                        frame,
                        Some(self.conn.socket_id),
                    );
                    self.state.held_webhook(
                        &self.app,
                        WebhookEvent::MemberRemoved {
                            channel: name.to_string(),
                            user_id: user.to_string(),
                        },
                        hold,
                    );
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "presence leave failed"),
            }
        }
    }

    /// Implicit unsubscribe from everything when the connection ends (spec 2.5).
    pub(super) async fn leave_all(&mut self) {
        let names: Vec<ChannelName> = self.subscriptions.keys().cloned().collect();
        for name in names {
            self.unsubscribe(&name).await;
        }
        if let Some(user) = self.user.take() {
            self.hub.users.remove(&user.id, self.conn.socket_id);
            self.state
                .adapter
                .release(&self.app.id, &Target::User(user.id.to_string()))
                .await;
            match self
                .state
                .cluster
                .signed_in(&self.hub, user.id.as_str(), -1)
                .await
            {
                Ok(0) if self.app.settings.watchlist_events => {
                    self.state
                        .broadcaster
                        .publish_watch(&self.hub, user.id.as_str(), false);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "counting a sign-out cluster-wide failed"),
            }
            if self.app.settings.watchlist_events {
                for watched in &user.watchlist {
                    self.hub.watchers.remove(watched, self.conn.socket_id);
                    self.state
                        .adapter
                        .release(&self.app.id, &Target::Watchers(watched.to_string()))
                        .await;
                }
            }
        }
    }

    fn subscription_count_changed(&self, name: &ChannelName, count: u64) {
        if !self.app.settings.subscription_count_events || !name.kind().counts_subscriptions() {
            return;
        }
        if count == 0 || !self.hub.channels.take_count_event_slot(name) {
            return;
        }
        let frame = message::subscription_count(name.as_str(), count);
        self.state
            .broadcaster
            .publish_frame(&self.hub, name, frame, None, None);
        self.state.webhook(
            &self.app,
            WebhookEvent::SubscriptionCount {
                channel: name.to_string(),
                subscription_count: count,
            },
        );
    }

    async fn signin(&mut self, auth: &str, user_data: &str) -> Result<(), Refusal> {
        if !self.app.settings.user_authentication {
            return Err(Refusal::new(ErrorKind::SigninFailed));
        }
        let to_sign = signin_string_to_sign(self.conn.socket_id, user_data);
        if !self.verify(Some(auth), &to_sign) {
            return Err(Refusal::new(ErrorKind::SigninFailed));
        }
        let mut user =
            parse_user_data(user_data).map_err(|_| Refusal::new(ErrorKind::SigninFailed))?;
        if let Some(current) = &self.user {
            if current.id != user.id {
                return Err(Refusal::new(ErrorKind::SigninDifferentUser));
            }
        }
        let max_watch = self.app.settings.max_watchlist_size;
        let over_watchlist = user.watchlist.len() > max_watch;
        user.watchlist.truncate(max_watch);
        // A repeated sign-in with the same id only answers again.
        let first_signin = self.user.is_none();
        if first_signin {
            self.state
                .adapter
                .acquire(&self.app.id, &Target::User(user.id.to_string()))
                .await;
        }
        self.hub.users.add(&user.id, &self.conn);
        self.conn.set_signed_in_user(user.id.clone());
        if first_signin {
            match self
                .state
                .cluster
                .signed_in(&self.hub, user.id.as_str(), 1)
                .await
            {
                Ok(1) if self.app.settings.watchlist_events => {
                    self.state
                        .broadcaster
                        .publish_watch(&self.hub, user.id.as_str(), true);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "counting a sign-in cluster-wide failed"),
            }
        }
        self.conn.deliver(&message::signin_success(user_data));
        if over_watchlist {
            self.conn
                .deliver(&message::error(&ErrorKind::WatchlistLimit, None));
        }
        if self.app.settings.watchlist_events && first_signin && !user.watchlist.is_empty() {
            // Watch first, then read the status, so no transition in between is missed.
            for watched in &user.watchlist {
                self.hub.watchers.add(watched, &self.conn);
                self.state
                    .adapter
                    .acquire(&self.app.id, &Target::Watchers(watched.to_string()))
                    .await;
            }
            let ids: Vec<String> = user.watchlist.iter().map(|u| u.to_string()).collect();
            let status = self
                .state
                .cluster
                .online(&self.hub, &ids)
                .await
                .unwrap_or_else(|_| vec![false; ids.len()]);
            let mut online = Vec::new();
            let mut offline = Vec::new();
            for (id, on) in ids.into_iter().zip(status) {
                if on {
                    online.push(id);
                } else {
                    offline.push(id);
                }
            }
            let mut events = Vec::new();
            if !online.is_empty() {
                events.push(("online", online));
            }
            if !offline.is_empty() {
                events.push(("offline", offline));
            }
            self.conn.deliver(&message::watchlist_events(&events));
        }
        self.user = Some(user);
        Ok(())
    }

    fn client_event(
        &mut self,
        event: &str,
        channel: &str,
        data: Option<&RawValue>,
    ) -> Result<(), Refusal> {
        let settings = &self.app.settings;
        if settings.client_events == ClientEventPolicy::Disabled {
            return Err(Refusal::on(ErrorKind::ClientEventsDisabled, channel));
        }
        if event.len() > settings.max_event_name_length {
            return Err(Refusal::on(ErrorKind::EventNameTooLong, channel));
        }
        // A subscribed channel was validated when it was joined: reuse its name (no parse, no
        // allocation on the hot path); anything else is parsed for the right refusal.
        let name = match self.subscriptions.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => ChannelName::parse(channel, settings.max_channel_name_length)
                .map_err(|_| Refusal::on(ErrorKind::InvalidChannelName, channel))?,
        };
        let kind = name.kind();
        let public_allowed = settings.client_events == ClientEventPolicy::MembersIncludingPublic
            && matches!(kind, ChannelKind::Public | ChannelKind::PublicCache);
        if !kind.accepts_client_events() && !public_allowed {
            return Err(Refusal::on(ErrorKind::ClientEventChannelKind, channel));
        }
        let Some(sub) = self.subscriptions.get(&name) else {
            return Err(Refusal::on(
                ErrorKind::ClientEventNotSubscribed {
                    channel: channel.to_string(),
                },
                channel,
            ));
        };
        if data.map_or(0, |d| d.get().len()) > settings.max_event_payload_bytes {
            return Err(Refusal::on(ErrorKind::ClientEventTooLarge, channel));
        }
        if !self.client_events.try_take(1) {
            self.hub.metrics.client_events_rate_limited.inc();
            if settings.terminate_on_client_event_limit {
                self.conn.close(ErrorKind::ClientEventRateLimited);
                return Ok(());
            }
            return Err(Refusal::on(ErrorKind::ClientEventRateLimited, channel));
        }
        let user_id = if kind.is_presence() {
            sub.member.clone()
        } else {
            None
        };
        let frame =
            message::client_event(event, channel, data, user_id.as_ref().map(UserId::as_str));
        self.hub.metrics.client_events.inc();
        // Never echoed to the sender; never cached.
        self.state.broadcaster.publish_frame(
            &self.hub,
            &name,
            frame,
            Some(self.conn.socket_id),
            None,
        );
        if self.app.webhooks.is_some() {
            let data = match data {
                None => String::new(),
                Some(raw) if raw.get().starts_with('"') => {
                    serde_json::from_str::<String>(raw.get()).unwrap_or_default()
                }
                Some(raw) => raw.get().to_string(),
            };
            self.state.webhook(
                &self.app,
                WebhookEvent::ClientEvent {
                    channel: channel.to_string(),
                    event: event.to_string(),
                    data,
                    socket_id: self.conn.socket_id.to_string(),
                    user_id: user_id.map(|u| u.to_string()),
                },
            );
        }
        Ok(())
    }
}
