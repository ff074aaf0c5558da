//! `Session`: the handling of every client message, in the order protocol.md gives (2.2, 2.5,
//! 3.5, 4.1): parse, authorise (signatures, limits, the client-event budget), call, reply.
//! What the connection has joined, and the join and leave sequences with their rollbacks and
//! announcements, belong to `membership`. Refusals become `pusher:error` here; nothing else
//! formats wire errors.

mod membership;

use std::sync::Arc;

use serde_json::value::RawValue;
use tracing::debug;

use crate::app::{App, ClientEventPolicy};
use crate::connection::handle::ConnRef;
use crate::hub::AppHub;
use crate::protocol::auth::{channel_string_to_sign, signin_string_to_sign, verify_token};
use crate::protocol::presence::{parse_channel_data, parse_user_data};
use crate::protocol::resume::Resume;
use crate::protocol::{
    message, ChannelKind, ChannelName, ClientMessage, ErrorKind, PresenceMember, UserId,
};
use crate::ratelimit::TokenBucket;
use crate::state::ServerState;
use crate::tap::{self, Entry};
use crate::webhooks::WebhookEvent;
use membership::{JoinError, Membership, SignIn};

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

pub(super) struct Session {
    state: Arc<ServerState>,
    app: Arc<App>,
    hub: Arc<AppHub>,
    conn: ConnRef,
    membership: Membership,
    client_events: TokenBucket,
    /// Joins this connection may still start now (`max_subscribes_per_second`).
    subscribes: TokenBucket,
    /// Subscribed to a private/presence channel (for authorized connections, protocol.md 3.9).
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
        let subscribes = TokenBucket::with_burst(
            app.settings.max_subscribes_per_second,
            u32::try_from(app.settings.max_channels_per_connection).unwrap_or(u32::MAX),
        );
        Session {
            membership: Membership::new(state.clone(), app.clone(), hub.clone(), conn.clone()),
            state,
            app,
            hub,
            conn,
            client_events: TokenBucket::new(rate),
            subscribes,
            authorized_channel: false,
        }
    }

    /// Signed in, or subscribed to a channel that needed a signature.
    pub(super) fn is_authorized(&self) -> bool {
        self.membership.user().is_some() || self.authorized_channel
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
                resume,
            } => {
                self.subscribe(
                    &channel,
                    auth.as_deref(),
                    channel_data.as_deref(),
                    resume.as_ref(),
                )
                .await
            }
            ClientMessage::Unsubscribe { channel } => {
                if let Ok(name) = ChannelName::parse(&channel, usize::MAX) {
                    self.membership.leave(&name).await;
                }
                Ok(())
            }
            ClientMessage::Signin { auth, user_data } => self.signin(&auth, &user_data).await,
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => self.client_event(&event, &channel, data.as_deref()).await,
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
        resume: Option<&Resume>,
    ) -> Result<(), Refusal> {
        let name = ChannelName::parse(channel, self.app.settings.max_channel_name_length)
            .map_err(|_| Refusal::on(ErrorKind::InvalidChannelName, channel))?;
        let kind = name.kind();
        if self.membership.is_subscribed(&name) {
            // Answered without a join, before any check (protocol.md 2.2 step 3).
            self.membership.repeat(&name);
            return Ok(());
        }

        // Authorise by kind (protocol.md 3).
        let member = match kind {
            ChannelKind::ServerToUser => {
                let own = self.membership.user().map(|u| u.id.as_str());
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

        // Limits that protect the join itself (protocol.md 2.2 step 5): a duplicate or a refused
        // subscribe costs no more than any other small message, so only joins are counted.
        if self.membership.channel_count() >= self.app.settings.max_channels_per_connection {
            self.hub.metrics.channel_limited.inc();
            return Err(Refusal::subscription(
                ErrorKind::ChannelLimit,
                channel,
                4100,
            ));
        }
        if !self.subscribes.try_take(1) {
            self.hub.metrics.subscribes_rate_limited.inc();
            return Err(Refusal::subscription(
                ErrorKind::SubscribeRateLimited,
                channel,
                4301,
            ));
        }

        self.membership
            .join_resuming(&name, member, resume)
            .await
            .map_err(|e| match e {
                JoinError::PresenceFull => {
                    Refusal::subscription(ErrorKind::PresenceFull, channel, 4100)
                }
                JoinError::PresenceUnavailable => {
                    Refusal::subscription(ErrorKind::PresenceUnavailable, channel, 4302)
                }
            })?;
        if kind.requires_signature() {
            self.authorized_channel = true;
        }
        Ok(())
    }

    /// The member of a presence subscription: from verified `channel_data`, or from the
    /// signed-in user when `channel_data` is absent (protocol.md 2.6).
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
                let Some(user) = self.membership.user() else {
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

    /// Checks a channel or user authentication against the app as it is now, so a secret
    /// rotated by a reload applies to connections already open.
    fn verify(&self, auth: Option<&str>, to_sign: &str) -> bool {
        let app = self.hub.app();
        auth.is_some_and(|token| {
            app.secrets_at(std::time::SystemTime::now())
                .any(|secret| verify_token(app.key.as_str(), secret, to_sign, token))
        })
    }

    /// Implicit unsubscribe from everything when the connection ends (protocol.md 2.5).
    pub(super) async fn leave_all(&mut self) {
        self.membership.leave_all().await;
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
        if let Some(current) = self.membership.user() {
            if current.id != user.id {
                return Err(Refusal::new(ErrorKind::SigninDifferentUser));
            }
        }
        let max_watch = self.app.settings.max_watchlist_size;
        let over_watchlist = user.watchlist.len() > max_watch;
        user.watchlist.truncate(max_watch);
        let signed_in = self.membership.sign_in(user).await;
        self.conn.deliver(&message::signin_success(user_data));
        if signed_in == SignIn::First {
            if over_watchlist {
                self.conn
                    .deliver(&message::error(&ErrorKind::WatchlistLimit, None));
            }
            self.membership.watch().await;
        }
        Ok(())
    }

    async fn client_event(
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
        let name = match self.membership.subscription(channel) {
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
        let Some((_, sub)) = self.membership.subscription(name.as_str()) else {
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
        self.state
            .broadcaster
            .publish_frame(&self.hub, &name, frame, Some(self.conn.socket_id), None)
            .await;
        self.hub.tap.record(|| {
            // A string is shown as its text, anything else as its JSON.
            let text = match data {
                None => String::new(),
                Some(raw) => serde_json::from_str::<String>(raw.get())
                    .unwrap_or_else(|_| raw.get().to_string()),
            };
            let (data, data_truncated) = tap::clip(&text);
            Entry::ClientEvent {
                channel: channel.to_string(),
                event: event.to_string(),
                data,
                data_truncated,
                socket_id: self.conn.socket_id.to_string(),
                user_id: user_id.as_ref().map(ToString::to_string),
            }
        });
        if self.state.reports_client_events(&self.app, channel) {
            let data = match data {
                None => String::new(),
                Some(raw) if raw.get().starts_with('"') => {
                    serde_json::from_str::<String>(raw.get()).unwrap_or_default()
                }
                Some(raw) => raw.get().to_string(),
            };
            self.state.report(
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
