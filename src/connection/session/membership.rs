//! `Membership`: what one connection has joined on this node (its channels, the identity it
//! signed in as, the users it watches) and the use cases that change it: join a channel
//! (protocol.md 2.2 steps 6–10), leave it (2.5), leave everything when the connection ends, sign in
//! and watch (3.5, 3.8).
//!
//! What a join or a sign-in takes is held by a guard until the matching leave gives it back:
//! the node's interest in a target's cross-node traffic (`Interest`), a join in progress in
//! the registry (`PendingJoin`), a subscription counted cluster-wide before the registry took
//! it (`CountedSlot`). A refusal part-way gives back what was taken so far; a leave releases
//! what the subscription or sign-in holds, never what a later message asked for.
//!
//! It makes the announcements joins and leaves cause (`member_added`/`member_removed`,
//! `subscription_count`, watchlist online/offline, the webhooks) and enqueues the
//! `subscription_succeeded` a join owes (under the registry's lock, see `ChannelRegistry`).
//! It renders no wire error and checks no signature or limit: the session authorises, calls,
//! and answers a `JoinError`.

use std::sync::Arc;

use tracing::warn;

use crate::app::{App, AppId};
use crate::broadcast::target_of;
use crate::channels::{Joined, Resuming};
use crate::cluster::{Adapter, ClusterError, Counted, Stamp, Target};
use crate::connection::handle::ConnRef;
use crate::history::{replay_shared, Failure, Replay};
use crate::hub::AppHub;
use crate::presence::Join;
use crate::protocol::presence::{roster_json, SignedInUser};
use crate::protocol::resume::Resume;
use crate::protocol::{message, ChannelName, MemberChange, PresenceMember, UserId};
use crate::shared_state::SharedState;
use crate::state::ServerState;
use crate::tap::Entry;
use crate::webhooks::WebhookEvent;

mod subscriptions;
use subscriptions::Subscriptions;

/// How long a resume waits for the shared history (then: `history_unavailable`).
const RESUME_READ: std::time::Duration = std::time::Duration::from_secs(3);

/// Why a join was refused after it was authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JoinError {
    /// A new distinct user beyond the channel's member limit.
    PresenceFull,
    /// The presence store could not be reached.
    PresenceUnavailable,
}

/// What a sign-in did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SignIn {
    /// The connection is now signed in; `watch` follows the answer.
    First,
    /// Already signed in as this user: nothing changed (protocol.md 3.5 step 6).
    Repeated,
}

/// One channel this connection is subscribed to.
pub(super) struct Subscription {
    /// The member this connection is on a presence channel.
    pub(super) member: Option<UserId>,
    interest: Interest,
}

/// The identity this connection signed in as, with what it holds for it.
struct SignedIn {
    user: SignedInUser,
    /// Interest in the user's own traffic (`#server-to-user-`, terminations).
    own: Interest,
    /// The watched users with their interests (empty until `watch`, or without watchlist
    /// events).
    watching: Vec<(UserId, Interest)>,
}

pub(super) struct Membership {
    state: Arc<ServerState>,
    app: Arc<App>,
    hub: Arc<AppHub>,
    conn: ConnRef,
    channels: Subscriptions<Subscription>,
    signed_in: Option<SignedIn>,
}

impl Membership {
    pub(super) fn new(
        state: Arc<ServerState>,
        app: Arc<App>,
        hub: Arc<AppHub>,
        conn: ConnRef,
    ) -> Self {
        Membership {
            state,
            app,
            hub,
            conn,
            channels: Subscriptions::new(),
            signed_in: None,
        }
    }

    /// The user this connection signed in as.
    pub(super) fn user(&self) -> Option<&SignedInUser> {
        self.signed_in.as_ref().map(|s| &s.user)
    }

    /// The subscription to `channel`, with the channel's validated name.
    pub(super) fn subscription(&self, channel: &str) -> Option<(&ChannelName, &Subscription)> {
        self.channels.get_key_value(channel)
    }

    pub(super) fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.channels.contains_key(channel)
    }

    /// Channels this connection is subscribed to.
    pub(super) fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Answers a subscribe to a channel this connection is already subscribed to: no member
    /// events, no webhooks (protocol.md 2.2 step 3). A non-presence channel answers
    /// `subscription_succeeded` again. A presence channel answers nothing: the client already
    /// holds the roster and every change since, and sending it again would turn each small
    /// message into one as large as the roster (100 members of 1 KiB `user_info` make
    /// ~200 KB). pusher-js and the other official clients never send a duplicate.
    pub(super) fn repeat(&self, name: &ChannelName) {
        if !name.kind().is_presence() {
            self.conn
                .deliver(&message::subscription_succeeded(name.as_str()));
        }
    }

    /// `join_resuming` without a resume.
    #[cfg(test)]
    pub(super) async fn join(
        &mut self,
        name: &ChannelName,
        member: Option<PresenceMember>,
    ) -> Result<(), JoinError> {
        self.join_resuming(name, member, None).await
    }

    /// Joins an authorised channel (as `member` on a presence channel): takes this node's
    /// interest in it, the presence membership and the cluster-wide count, then adds the
    /// subscription to the registry, which enqueues `subscription_succeeded` (and a cache
    /// channel's cached event, and with `resume` the events the client missed and
    /// `resound:recovery`, protocol.md 11.2); then announces the join. On a refusal,
    /// everything taken is given back and nothing was sent.
    pub(super) async fn join_resuming(
        &mut self,
        name: &ChannelName,
        member: Option<PresenceMember>,
        resume: Option<&Resume>,
    ) -> Result<(), JoinError> {
        let kind = name.kind();
        // From here on, events published on any node reach this one. For presence, before
        // the roster is read (cluster-wide through the store), so every member event after the
        // read reaches it; the registry reconciles the roster with the events in flight
        // (`Joined`). Likewise for a cache channel's shared cached event.
        let pending =
            (member.is_some() || kind.is_cache()).then(|| PendingJoin::begin(&self.hub, name));
        let interest = Interest::acquire(&self.state.adapter, &self.app.id, target_of(name)).await;
        let mut presence = None;
        if let Some(m) = &member {
            let result = self
                .state
                .presence
                .join(
                    &self.app.id,
                    name,
                    m,
                    self.conn.socket_id,
                    self.app.settings.max_presence_members_per_channel,
                )
                .await;
            let refusal = match result {
                Ok(Join::Joined {
                    first,
                    rejoined,
                    roster,
                }) => {
                    presence = Some((first, rejoined, roster));
                    None
                }
                Ok(Join::Full) => Some(JoinError::PresenceFull),
                Err(e) => {
                    warn!(error = %e, "presence join failed");
                    Some(JoinError::PresenceUnavailable)
                }
            };
            if let Some(refusal) = refusal {
                drop(pending);
                interest.release().await;
                return Err(refusal);
            }
        }
        let roster: &[PresenceMember] = presence.as_ref().map_or(&[], |(_, _, r)| r.as_slice());

        let succeeded = match &member {
            Some(_) => {
                message::presence_subscription_succeeded(name.as_str(), &roster_json(roster))
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
        // A cluster's shared history, read after the interest was taken (every event the
        // read misses reaches this node) and while the channel's events are held for it.
        let shared = match resume {
            Some(from) => self.read_shared_history(name, from).await,
            None => {
                self.anchor_shared_history(name).await;
                None
            }
        };
        if let Some((
            _,
            Ok(Replay {
                position: Some(p), ..
            }),
        )) = &shared
        {
            self.hub.channels.anchor(
                name,
                &Stamp {
                    epoch: p.epoch.clone(),
                    offset: p.offset,
                },
                self.hub.deflate.as_ref(),
            );
        }
        // In a cluster, counted before the client hears of it (see `SharedState::subscribing`).
        let slot = CountedSlot::take(&self.state, &self.hub, name).await;
        let joined = pending.map(|p| Joined {
            mark: p.finish(),
            presence: member.clone().map(|m| (m, roster)),
        });
        let resuming = resume.map(|from| Resuming {
            history: self.hub.history.as_ref(),
            from,
            shared: shared.map(|(pending, found)| (pending.finish(), found)),
        });
        let Some(sub) = self.hub.channels.subscribe_with(
            name,
            &self.conn,
            &succeeded,
            shared_cache.as_ref(),
            joined,
            resuming,
        ) else {
            slot.undo().await;
            interest.release().await;
            return Ok(());
        };
        let counted = slot.keep();
        if let Some(outcome) = sub.resumed {
            self.state
                .metrics
                .history_resumes
                .with_label_values(&[outcome])
                .inc();
        }
        self.hub.tap.record(|| Entry::Subscribed {
            channel: name.to_string(),
            socket_id: self.conn.socket_id.to_string(),
        });
        self.channels.insert(
            name.clone(),
            Subscription {
                member: member.as_ref().map(|m| m.user_id.clone()),
                interest,
            },
        );
        // Occupancy is decided cluster-wide: only the node that made the count 1 reports it.
        let (total, rejoined) = match SharedState::counted(&sub, counted) {
            Ok(c) => (c.total, c.rejoined),
            Err(e) => {
                warn!(error = %e, "counting a subscription cluster-wide failed");
                (0, false)
            }
        };
        // Back while its `channel_vacated` was held cluster-wide: neither webhook goes.
        if total == 1 && !rejoined {
            self.state.report(
                &self.app,
                WebhookEvent::ChannelOccupied {
                    channel: name.to_string(),
                },
            );
        }
        if let (Some(m), Some((first, member_rejoined, _))) = (&member, &presence) {
            self.conn.add_presence_user(&m.user_id);
            if *first {
                self.hub.tap.record(|| Entry::MemberAdded {
                    channel: name.to_string(),
                    user_id: m.user_id.to_string(),
                });
                let frame = message::member_added(
                    name.as_str(),
                    m.user_id.as_str(),
                    m.user_info.as_deref(),
                );
                self.state.broadcaster.publish_member(
                    &self.hub,
                    name,
                    MemberChange::Added(m.user_id.clone()),
                    frame,
                    Some(self.conn.socket_id),
                );
                // Back while their `member_removed` was held cluster-wide: neither webhook.
                if !member_rejoined {
                    self.state.report(
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
            self.state.report(
                &self.app,
                WebhookEvent::CacheMiss {
                    channel: name.to_string(),
                },
            );
        }
        self.subscription_count_changed(name, total).await;
        Ok(())
    }

    /// In a cluster, for a resume of a channel with history: holds the channel's events and
    /// reads what the client missed from the shared history (`RESUME_READ` at most). `None`
    /// on a single node, or for a channel without history.
    async fn read_shared_history(
        &self,
        name: &ChannelName,
        from: &Resume,
    ) -> Option<(PendingResume, Result<Replay, Failure>)> {
        let settings = self
            .hub
            .shared_history
            .as_ref()
            .filter(|h| h.covers(name.as_str()))?;
        let store = self.state.cluster.history()?;
        let pending = PendingResume::begin(&self.hub, name);
        let after = from.position.as_ref().map(|p| p.offset);
        let read = tokio::time::timeout(
            RESUME_READ,
            store.read(&self.app.id, name.as_str(), after, settings.bounds()),
        )
        .await;
        let found = match read {
            Ok(Ok(log)) => Ok(replay_shared(&log, from)),
            Ok(Err(e)) => {
                warn!(error = %e, channel = %name, "reading the shared history failed");
                Err(Failure::Unavailable)
            }
            Err(_) => {
                warn!(channel = %name, "reading the shared history timed out");
                Err(Failure::Unavailable)
            }
        };
        Some((pending, found))
    }

    /// In a cluster, for a plain subscribe to a channel with history whose events have no
    /// order on this node yet: reads the channel's position in the shared history to start it
    /// (`ChannelRegistry::anchor`). Nothing when that read fails: the first event starts it.
    async fn anchor_shared_history(&self, name: &ChannelName) {
        let Some(settings) = self
            .hub
            .shared_history
            .as_ref()
            .filter(|h| h.covers(name.as_str()))
        else {
            return;
        };
        let Some(store) = self.state.cluster.history() else {
            return;
        };
        if self.hub.channels.is_sequenced(name) {
            return;
        }
        let read = tokio::time::timeout(
            RESUME_READ,
            store.read(&self.app.id, name.as_str(), None, settings.bounds()),
        )
        .await;
        if let Ok(Ok(log)) = read {
            self.hub.channels.anchor(
                name,
                &Stamp {
                    epoch: log.epoch,
                    offset: log.last,
                },
                self.hub.deflate.as_ref(),
            );
        }
    }

    /// Leaves `name` (nothing when not subscribed): gives back what the subscription holds and
    /// announces the departure (protocol.md 2.5).
    pub(super) async fn leave(&mut self, name: &ChannelName) {
        let Some(sub) = self.channels.remove(name) else {
            return;
        };
        self.hub.tap.record(|| Entry::Unsubscribed {
            channel: name.to_string(),
            socket_id: self.conn.socket_id.to_string(),
        });
        let removed = self.hub.channels.unsubscribe(name, self.conn.socket_id);
        sub.interest.release().await;
        if let Some(u) = removed {
            let hold = self.app.removal_hold();
            match self
                .state
                .cluster
                .unsubscribed(&self.hub, name.as_str(), &u, hold)
                .await
            {
                Ok(0) => self.state.report_held(
                    &self.app,
                    WebhookEvent::ChannelVacated {
                        channel: name.to_string(),
                    },
                    hold,
                ),
                Ok(total) => self.subscription_count_changed(name, total).await,
                Err(e) => warn!(error = %e, "counting an unsubscription cluster-wide failed"),
            }
        }
        if let Some(user) = sub.member {
            if !self
                .channels
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
                    self.hub.tap.record(|| Entry::MemberRemoved {
                        channel: name.to_string(),
                        user_id: user.to_string(),
                    });
                    let frame = message::member_removed(name.as_str(), user.as_str());
                    self.state.broadcaster.publish_member(
                        &self.hub,
                        name,
                        MemberChange::Removed(user.clone()),
                        frame,
                        Some(self.conn.socket_id),
                    );
                    self.state.report_held(
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

    /// Leaves every channel and signs out: the connection ended (protocol.md 2.5).
    pub(super) async fn leave_all(&mut self) {
        let names = self.channels.names();
        for name in names {
            self.leave(&name).await;
        }
        let Some(SignedIn {
            user,
            own,
            watching,
        }) = self.signed_in.take()
        else {
            return;
        };
        self.hub.users.remove(&user.id, self.conn.socket_id);
        own.release().await;
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
        for (watched, interest) in watching {
            self.hub.watchers.remove(&watched, self.conn.socket_id);
            interest.release().await;
        }
    }

    /// Signs the connection in as `user` (already verified; a different id was refused by the
    /// caller). A repeated sign-in changes nothing: the first identity, with its watchlist,
    /// stays, so what a later sign-out releases is what was taken.
    pub(super) async fn sign_in(&mut self, user: SignedInUser) -> SignIn {
        if self.signed_in.is_some() {
            return SignIn::Repeated;
        }
        let own = Interest::acquire(
            &self.state.adapter,
            &self.app.id,
            Target::User(user.id.to_string()),
        )
        .await;
        self.hub.users.add(&user.id, &self.conn);
        self.conn.set_signed_in_user(user.id.clone());
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
        self.signed_in = Some(SignedIn {
            user,
            own,
            watching: Vec::new(),
        });
        SignIn::First
    }

    /// After the first sign-in was answered: watches its watchlist and sends the watched
    /// users' current status (protocol.md 3.8). Nothing without watchlist events or a watchlist, or
    /// when already watching.
    pub(super) async fn watch(&mut self) {
        if !self.app.settings.watchlist_events {
            return;
        }
        let Some(signed_in) = self.signed_in.as_mut() else {
            return;
        };
        if signed_in.user.watchlist.is_empty() || !signed_in.watching.is_empty() {
            return;
        }
        // Watch first, then read the status, so no transition in between is missed.
        for watched in &signed_in.user.watchlist {
            self.hub.watchers.add(watched, &self.conn);
            let interest = Interest::acquire(
                &self.state.adapter,
                &self.app.id,
                Target::Watchers(watched.to_string()),
            )
            .await;
            signed_in.watching.push((watched.clone(), interest));
        }
        let ids: Vec<String> = signed_in
            .user
            .watchlist
            .iter()
            .map(|u| u.to_string())
            .collect();
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

    async fn subscription_count_changed(&self, name: &ChannelName, count: u64) {
        if !self.app.settings.subscription_count_events || !name.kind().counts_subscriptions() {
            return;
        }
        if count == 0 || !self.hub.channels.take_count_event_slot(name) {
            return;
        }
        let frame = message::subscription_count(name.as_str(), count);
        self.state
            .broadcaster
            .publish_frame(&self.hub, name, frame, None, None)
            .await;
        self.state.report(
            &self.app,
            WebhookEvent::SubscriptionCount {
                channel: name.to_string(),
                subscription_count: count,
            },
        );
    }
}

/// This node's interest in one target's cross-node traffic (`Adapter::acquire`), given back
/// exactly once: by `release`, or, when dropped unreleased (its task was cancelled), on a
/// spawned task.
struct Interest {
    adapter: Arc<dyn Adapter>,
    app: AppId,
    target: Option<Target>,
}

impl Interest {
    /// Returns once the adapter confirmed the interest (events from every node now arrive).
    async fn acquire(adapter: &Arc<dyn Adapter>, app: &AppId, target: Target) -> Interest {
        adapter.acquire(app, &target).await;
        Interest {
            adapter: adapter.clone(),
            app: app.clone(),
            target: Some(target),
        }
    }

    async fn release(mut self) {
        if let Some(target) = self.target.take() {
            self.adapter.release(&self.app, &target).await;
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        let (adapter, app) = (self.adapter.clone(), self.app.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { adapter.release(&app, &target).await });
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

/// A resume reading the shared history (`ChannelRegistry::begin_resume`): the channel's
/// events are held for it. Dropped unfinished (refused, or the connection went away during
/// the read), it ends the resume so the registry stops holding events for it.
struct PendingResume {
    hub: Arc<AppHub>,
    channel: ChannelName,
    mark: Option<u64>,
}

impl PendingResume {
    fn begin(hub: &Arc<AppHub>, channel: &ChannelName) -> PendingResume {
        PendingResume {
            hub: hub.clone(),
            channel: channel.clone(),
            mark: Some(hub.channels.begin_resume(channel)),
        }
    }

    /// The resume's mark, for the subscription that ends it.
    fn finish(mut self) -> u64 {
        self.mark.take().unwrap_or_default()
    }
}

impl Drop for PendingResume {
    fn drop(&mut self) {
        if self.mark.take().is_some() {
            self.hub.channels.abandon_resume(&self.channel);
        }
    }
}

/// A subscription counted cluster-wide (`SharedState::subscribing`) before the registry
/// took it. `keep` once the registry has it; otherwise the count is taken back, by `undo` or,
/// when dropped (its task was cancelled), on a spawned task.
struct CountedSlot {
    state: Arc<ServerState>,
    hub: Arc<AppHub>,
    channel: ChannelName,
    /// `Some(Some(Ok(_)))`: a shared store counted it, to be taken back unless kept.
    counted: Option<Option<Result<Counted, ClusterError>>>,
}

impl CountedSlot {
    async fn take(state: &Arc<ServerState>, hub: &Arc<AppHub>, channel: &ChannelName) -> Self {
        let counted = state.cluster.subscribing(hub, channel.as_str()).await;
        CountedSlot {
            state: state.clone(),
            hub: hub.clone(),
            channel: channel.clone(),
            counted: Some(counted),
        }
    }

    /// What was counted (`None`: one node, the registry's count is the one).
    fn keep(mut self) -> Option<Result<Counted, ClusterError>> {
        self.counted.take().flatten()
    }

    async fn undo(mut self) {
        if let Some(Some(Ok(_))) = self.counted.take() {
            self.state
                .cluster
                .uncount(&self.hub, self.channel.as_str())
                .await;
        }
    }
}

impl Drop for CountedSlot {
    fn drop(&mut self) {
        if let Some(Some(Ok(_))) = self.counted.take() {
            let (state, hub, channel) =
                (self.state.clone(), self.hub.clone(), self.channel.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    state.cluster.uncount(&hub, channel.as_str()).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
