//! Unit tests of the join sequence with in-memory collaborators: an adapter that records
//! every interest, presence stores that fail or report a held removal, a loopback webhook
//! receiver.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;
use crate::app::AppSettings;
use crate::cluster::{Publication, RemoteEvent, Target};
use crate::config::ServerConfig;
use crate::connection::handle::{ConnHandle, Outbound};
use crate::presence::{MemoryPresence, PresenceError, PresenceStore};
use crate::protocol::{SocketId, UserId};
use crate::webhooks::{AppWebhooks, RemovalHold, WebhookTarget};

/// An adapter that records every `acquire` and `release`, in order.
#[derive(Default)]
struct Interests {
    log: Mutex<Vec<(bool, Target)>>,
}

impl Interests {
    /// Targets still held, failing on any release of a target not held.
    fn held(&self) -> Vec<Target> {
        let mut held: HashMap<Target, i64> = HashMap::new();
        for (acquire, target) in self.log.lock().iter() {
            let n = held.entry(target.clone()).or_default();
            *n += if *acquire { 1 } else { -1 };
            assert!(*n >= 0, "{target:?} released more often than acquired");
        }
        let mut out: Vec<Target> = held
            .into_iter()
            .flat_map(|(t, n)| std::iter::repeat_n(t, n as usize))
            .collect();
        out.sort_by_key(|t| format!("{t:?}"));
        out
    }

    fn releases(&self) -> usize {
        self.log.lock().iter().filter(|(a, _)| !a).count()
    }
}

#[async_trait]
impl Adapter for Interests {
    fn publish(&self, _event: RemoteEvent) {}
    async fn acquire(&self, _app: &AppId, target: &Target) {
        self.log.lock().push((true, target.clone()));
    }
    async fn release(&self, _app: &AppId, target: &Target) {
        self.log.lock().push((false, target.clone()));
    }
    fn terminate(&self, _app: &AppId, _user: &str, _presence: bool) {}
    fn is_healthy(&self) -> bool {
        true
    }
}

/// A shared presence store that cannot be reached.
struct Unreachable;

#[async_trait]
impl PresenceStore for Unreachable {
    async fn join(
        &self,
        _app: &AppId,
        _channel: &ChannelName,
        _member: &PresenceMember,
        _socket: SocketId,
        _max_members: usize,
    ) -> Result<Join, PresenceError> {
        Err(PresenceError("connection refused".into()))
    }
    async fn leave(
        &self,
        _app: &AppId,
        _channel: &ChannelName,
        _user: &UserId,
        _socket: SocketId,
        _hold: Option<RemovalHold>,
    ) -> Result<bool, PresenceError> {
        Err(PresenceError("connection refused".into()))
    }
    async fn members(
        &self,
        _app: &AppId,
        _channel: &str,
    ) -> Result<Vec<PresenceMember>, PresenceError> {
        Err(PresenceError("connection refused".into()))
    }
}

/// A shared store that says every user came back while their `member_removed` was held.
#[derive(Default)]
struct Returning(MemoryPresence);

#[async_trait]
impl PresenceStore for Returning {
    async fn join(
        &self,
        app: &AppId,
        channel: &ChannelName,
        member: &PresenceMember,
        socket: SocketId,
        max_members: usize,
    ) -> Result<Join, PresenceError> {
        match self
            .0
            .join(app, channel, member, socket, max_members)
            .await?
        {
            Join::Joined { first, roster, .. } => Ok(Join::Joined {
                first,
                rejoined: true,
                roster,
            }),
            Join::Full => Ok(Join::Full),
        }
    }
    async fn leave(
        &self,
        app: &AppId,
        channel: &ChannelName,
        user: &UserId,
        socket: SocketId,
        hold: Option<RemovalHold>,
    ) -> Result<bool, PresenceError> {
        self.0.leave(app, channel, user, socket, hold).await
    }
    async fn members(
        &self,
        app: &AppId,
        channel: &str,
    ) -> Result<Vec<PresenceMember>, PresenceError> {
        self.0.members(app, channel).await
    }
}

struct World {
    state: Arc<ServerState>,
    app: Arc<App>,
    hub: Arc<AppHub>,
    interests: Arc<Interests>,
    next_socket: u32,
}

impl World {
    fn new(presence: Arc<dyn PresenceStore>, settings: AppSettings) -> World {
        World::with_webhooks(presence, settings, None)
    }

    fn with_webhooks(
        presence: Arc<dyn PresenceStore>,
        settings: AppSettings,
        webhooks: Option<AppWebhooks>,
    ) -> World {
        let interests = Arc::new(Interests::default());
        let (state, app, hub) = crate::state::test_node(
            ServerConfig::default(),
            presence,
            interests.clone(),
            settings,
            webhooks,
        );
        World {
            state,
            app,
            hub,
            interests,
            next_socket: 0,
        }
    }

    /// A connection's membership, and the connection.
    fn member(&mut self) -> (Membership, ConnRef) {
        self.next_socket += 1;
        let conn = ConnHandle::new(SocketId::from_parts(self.next_socket, 1), 64);
        let m = Membership::new(
            self.state.clone(),
            self.app.clone(),
            self.hub.clone(),
            conn.clone(),
        );
        (m, conn)
    }
}

fn name(s: &str) -> ChannelName {
    ChannelName::parse(s, 200).unwrap_or_else(|e| panic!("{e}"))
}

fn user(id: &str) -> PresenceMember {
    PresenceMember {
        user_id: UserId::new(id).unwrap_or_else(|| panic!("user id")),
        user_info: None,
    }
}

fn signed_in(id: &str, watchlist: &[&str]) -> SignedInUser {
    SignedInUser {
        id: UserId::new(id).unwrap_or_else(|| panic!("user id")),
        user_info: None,
        watchlist: watchlist
            .iter()
            .map(|w| UserId::new(w).unwrap_or_else(|| panic!("user id")))
            .collect(),
    }
}

/// The events queued for `conn`, in order.
fn events(conn: &ConnRef) -> Vec<Value> {
    conn.take_queued()
        .into_iter()
        .map(|o| match o {
            Outbound::Text(b) => serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{e}")),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn channel(s: &str) -> Target {
    Target::Channel(s.to_string())
}

#[tokio::test]
async fn a_full_presence_channel_refuses_and_gives_back_what_the_join_took() {
    let settings = AppSettings {
        max_presence_members_per_channel: 1,
        ..AppSettings::default()
    };
    let mut w = World::new(Arc::new(MemoryPresence::default()), settings);
    let room = name("presence-room");
    let (mut a, a_conn) = w.member();
    let (mut b, b_conn) = w.member();
    assert_eq!(a.join(&room, Some(user("a"))).await, Ok(()));
    let _ = events(&a_conn);
    assert_eq!(
        b.join(&room, Some(user("b"))).await,
        Err(JoinError::PresenceFull)
    );
    assert!(events(&b_conn).is_empty(), "a refused join sends nothing");
    assert!(
        events(&a_conn).is_empty(),
        "nobody is told of a refused join"
    );
    assert!(!b.is_subscribed(&room));
    assert_eq!(w.hub.channels.subscription_count(room.as_str()), 1);
    assert_eq!(w.interests.held(), vec![channel("presence-room")]);
    // The refused member's connection is no member anywhere.
    assert!(!b_conn.is_present_as("b"));
}

#[tokio::test]
async fn a_presence_backend_error_refuses_and_leaves_no_trace() {
    let mut w = World::new(Arc::new(Unreachable), AppSettings::default());
    let room = name("presence-room");
    let (mut a, a_conn) = w.member();
    assert_eq!(
        a.join(&room, Some(user("a"))).await,
        Err(JoinError::PresenceUnavailable)
    );
    assert!(events(&a_conn).is_empty());
    assert!(!a.is_subscribed(&room));
    assert!(w.hub.channels.occupied("").is_empty());
    assert!(w.interests.held().is_empty());
    assert_eq!(w.interests.releases(), 1, "released once");
    // A join that began and was refused keeps nothing for later joins: another channel
    // kind still joins normally.
    assert_eq!(a.join(&name("news"), None).await, Ok(()));
    assert_eq!(
        names(&events(&a_conn)),
        ["pusher_internal:subscription_succeeded"]
    );
}

#[tokio::test]
async fn a_duplicate_subscribe_takes_nothing_and_sends_no_roster() {
    let mut w = World::new(Arc::new(MemoryPresence::default()), AppSettings::default());
    let room = name("presence-room");
    let (mut a, a_conn) = w.member();
    let (mut b, b_conn) = w.member();
    a.join(&room, Some(user("a")))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    b.join(&room, Some(user("b")))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let _ = (events(&a_conn), events(&b_conn));
    assert!(b.is_subscribed(&room));
    b.repeat(&room);
    assert!(events(&b_conn).is_empty(), "no roster for a duplicate");
    assert!(
        events(&a_conn).is_empty(),
        "no member event for a duplicate"
    );
    assert_eq!(w.interests.held().len(), 2, "no second interest");
    let news = name("news");
    b.join(&news, None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let _ = events(&b_conn);
    b.repeat(&news);
    assert_eq!(
        names(&events(&b_conn)),
        ["pusher_internal:subscription_succeeded"]
    );
    assert_eq!(w.interests.held().len(), 3);
}

#[tokio::test]
async fn a_cache_channel_sends_cache_miss_after_success_or_the_cached_event() {
    let mut w = World::new(Arc::new(MemoryPresence::default()), AppSettings::default());
    let prices = name("cache-prices");
    let (mut a, a_conn) = w.member();
    a.join(&prices, None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let got = events(&a_conn);
    assert_eq!(
        names(&got),
        [
            "pusher_internal:subscription_succeeded",
            "pusher:cache_miss"
        ]
    );
    assert_eq!(got[1]["channel"], "cache-prices");
    let frame = Bytes::from_static(br#"{"event":"tick","channel":"cache-prices","data":"1"}"#);
    let cached = crate::channels::CachedEvent {
        frame: frame.clone(),
        data: Arc::from("1"),
        expires: std::time::Instant::now() + Duration::from_secs(60),
    };
    let p = Publication::event(Target::Channel(prices.to_string()), frame, None);
    w.hub.channels.publish(&p, None, Some((&prices, cached)));
    let (mut b, b_conn) = w.member();
    b.join(&prices, None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        names(&events(&b_conn)),
        ["pusher_internal:subscription_succeeded", "tick"]
    );
}

/// Receives webhook requests on a loopback port; yields each request's events.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}/hooks",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let body_start = head_end + 4;
                    while buf.len() < body_start + len {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Value = serde_json::from_slice(&buf[body_start..body_start + len])
                        .unwrap_or_default();
                    for event in body["events"].as_array().cloned().unwrap_or_default() {
                        let _ = tx.send(event);
                    }
                    buf.drain(..body_start + len);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

/// Webhook events of `kind` that arrive until one for `until_channel` does.
async fn webhooks_until(
    rx: &mut mpsc::UnboundedReceiver<Value>,
    until_channel: &str,
) -> Vec<Value> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = rx.recv().await {
            let done = e["channel"] == until_channel;
            got.push(e);
            if done {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no webhook for {until_channel}: {got:?}"));
    // Requests travel on parallel lanes: let any straggler arrive.
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        got.push(e);
    }
    got
}

#[tokio::test]
async fn a_member_back_during_a_held_removal_is_announced_to_sockets_but_not_by_webhook() {
    let (url, mut hooks) = receiver().await;
    let webhooks = AppWebhooks::new("1", "key", "secret", vec![WebhookTarget::new(url)]);
    let mut w = World::with_webhooks(
        Arc::new(Returning::default()),
        AppSettings::default(),
        Some(webhooks),
    );
    let room = name("presence-room");
    let (mut a, a_conn) = w.member();
    let (mut b, _b_conn) = w.member();
    a.join(&room, Some(user("a")))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let _ = events(&a_conn);
    b.join(&room, Some(user("b")))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    // The sockets are told: their `member_removed` went out when the user left.
    assert_eq!(names(&events(&a_conn)), ["pusher_internal:member_added"]);
    let (mut marker, _) = w.member();
    marker
        .join(&name("marker"), None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let got = webhooks_until(&mut hooks, "marker").await;
    let kinds: Vec<&str> = got.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(
        !kinds.contains(&"member_added"),
        "a member back while their removal was held is not announced again: {got:?}"
    );
    assert!(kinds.contains(&"channel_occupied"), "{got:?}");
}

#[tokio::test]
async fn leaving_gives_back_every_interest_exactly_once() {
    let settings = AppSettings {
        watchlist_events: true,
        ..AppSettings::default()
    };
    let mut w = World::new(Arc::new(MemoryPresence::default()), settings);
    let (mut m, conn) = w.member();
    for (ch, member) in [
        ("news", None),
        ("private-orders", None),
        ("cache-prices", None),
        ("presence-room", Some(user("me"))),
    ] {
        m.join(&name(ch), member)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    assert_eq!(m.sign_in(signed_in("me", &["x", "y"])).await, SignIn::First);
    m.watch().await;
    // Signed in again as the same user with another watchlist: nothing changes.
    assert_eq!(m.sign_in(signed_in("me", &["z"])).await, SignIn::Repeated);
    m.watch().await;
    let _ = events(&conn);
    assert_eq!(w.interests.held().len(), 7);

    m.leave(&name("news")).await;
    assert!(!w.interests.held().contains(&channel("news")));
    m.leave(&name("news")).await;
    assert_eq!(w.interests.releases(), 1, "a second leave releases nothing");

    m.leave_all().await;
    assert!(w.interests.held().is_empty(), "{:?}", w.interests.held());
    assert_eq!(w.interests.releases(), 7);
    assert!(w.hub.channels.occupied("").is_empty());
    assert_eq!(w.hub.users.count("me"), 0);
    assert!(!conn.is_present_as("me"));
    let members = w
        .state
        .presence
        .members(&w.app.id, "presence-room")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(members.is_empty());
    // A second leave_all (nothing left) releases nothing.
    m.leave_all().await;
    assert_eq!(w.interests.releases(), 7);
}
