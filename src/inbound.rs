//! Applies what the cluster hands this node, as the owner of its state: events and terminate
//! requests from other nodes (`Inbound`, a bounded queue), and the backend's repairs and
//! departures (`Control`, a queue that never drops, served first). Member departures are
//! encoded here and published through the one delivery path (`Broadcaster`), like local ones.

use std::sync::Arc;

use tracing::warn;

use crate::app::AppId;
use crate::cluster::{Control, Inbound, InboundQueues, Resynced};
use crate::hub::AppHub;
use crate::protocol::{message, ChannelName, MemberChange, UserId};
use crate::shared_state::snapshot;
use crate::state::ServerState;
use crate::webhooks::WebhookEvent;

/// Serves both queues until both are closed; control messages first.
pub async fn apply(state: Arc<ServerState>, queues: InboundQueues) {
    let InboundQueues {
        mut events,
        mut control,
    } = queues;
    let (mut events_open, mut control_open) = (true, true);
    while events_open || control_open {
        tokio::select! {
            biased;
            c = control.recv(), if control_open => match c {
                Some(c) => apply_control(&state, c).await,
                None => control_open = false,
            },
            e = events.recv(), if events_open => match e {
                Some(e) => apply_event(&state, e),
                None => events_open = false,
            },
        }
    }
}

fn hub_of(state: &ServerState, app: &AppId) -> Option<Arc<AppHub>> {
    state
        .apps
        .find_by_id(app.as_str())
        .map(|app| state.hub(&app))
}

fn apply_event(state: &ServerState, msg: Inbound) {
    match msg {
        Inbound::Event(e) => {
            if let Some(hub) = hub_of(state, &e.app) {
                state.broadcaster.deliver_local(&hub, &e.publication, None);
            }
        }
        Inbound::Terminate {
            app,
            user,
            presence,
        } => {
            if let Some(hub) = hub_of(state, &app) {
                hub.terminate_user(&user, presence);
            }
        }
    }
}

async fn apply_control(state: &ServerState, msg: Control) {
    match msg {
        Control::MemberGone { app, channel, user } => member_gone(state, &app, channel, user),
        Control::UserGone { app, user } => {
            let Some(hub) = hub_of(state, &app) else {
                return;
            };
            if hub.app().settings.watchlist_events {
                state.broadcaster.publish_watch(&hub, &user, false);
            }
        }
        Control::ChannelGone { app, channel } => {
            if let Some(hub) = hub_of(state, &app) {
                state.report(&hub.app(), WebhookEvent::ChannelVacated { channel });
            }
        }
        Control::Replay(replays) => {
            for replay in replays {
                let app = state.apps.find_by_id(&replay.entry.app_id);
                let webhooks = app.as_ref().and_then(|app| app.webhooks.as_ref());
                state.webhooks.replay(webhooks, replay);
            }
        }
        Control::Resync { announce } => {
            let Some(store) = state.cluster.store() else {
                return;
            };
            match store.resync(&snapshot(&state.hubs()), announce).await {
                Ok(found) => announce_resynced(state, found),
                Err(e) => warn!(error = %e, "publishing this node's state again failed"),
            }
        }
    }
}

/// A member left a presence channel cluster-wide without a node of theirs saying so (their
/// node died, or its departure could not be recorded): everyone hears `member_removed`, and
/// this node, which found it, sends the webhook.
fn member_gone(state: &ServerState, app: &AppId, channel: String, user: String) {
    let Some(hub) = hub_of(state, app) else {
        return;
    };
    // Names and ids the store holds were valid when recorded.
    if let (Ok(name), Some(id)) = (ChannelName::parse(&channel, usize::MAX), UserId::new(&user)) {
        let frame = message::member_removed(&channel, &user);
        state
            .broadcaster
            .publish_member(&hub, &name, MemberChange::Removed(id), frame, None);
    }
    state.report(
        &hub.app(),
        WebhookEvent::MemberRemoved {
            channel,
            user_id: user,
        },
    );
}

/// Members back after other nodes saw them leave hear of each other again (`member_added`,
/// not to the member's own connection); members gone meanwhile are announced as gone.
fn announce_resynced(state: &ServerState, found: Resynced) {
    for (app, m) in found.back {
        let Some(hub) = hub_of(state, &app) else {
            continue;
        };
        let Ok(name) = ChannelName::parse(&m.channel, usize::MAX) else {
            continue;
        };
        let frame = message::member_added(
            &m.channel,
            m.member.user_id.as_str(),
            m.member.user_info.as_deref(),
        );
        let change = MemberChange::Added(m.member.user_id.clone());
        state
            .broadcaster
            .publish_member(&hub, &name, change, frame, Some(m.socket));
    }
    for g in found.gone {
        member_gone(state, &g.app, g.channel, g.user);
    }
}
