//! Cross-node fan-out over pub/sub (`Adapter`): the publisher task batches queued messages
//! into `PUBLISH`es (or `SPUBLISH`es on a Redis Cluster), and the receiving side keeps this
//! node subscribed to the topics of its local interests in each topology: one pub/sub
//! connection to a standalone or Sentinel-managed master (`subscriber`, following
//! `endpoint.rs`), or sharded subscriptions on a Redis Cluster (`shard_reader` and
//! `resubscriber`, over `shards.rs`). Received messages are decoded (`wire.rs`) and handed to
//! the server as `Inbound` values.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::{PushInfo, PushKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::endpoint::COMMAND_TIMEOUT;
use super::{now_ms, quiet, Interest, Queued, RedisBackend};
use crate::app::AppId;
use crate::cluster::wire::{self, Received, WireMessage};
use crate::cluster::{Adapter, Inbound, RemoteEvent, Target};

/// How long a `SUBSCRIBE` or `UNSUBSCRIBE` is waited for while the backend is known to be
/// unreachable: the command stays queued on the connection (a Redis that hangs answers it
/// when it resumes; a new connection subscribes every wanted topic anyway), so a join does not
/// wait for a Redis that cannot answer.
const SUBSCRIBE_WAIT_WHILE_DOWN: Duration = Duration::from_millis(50);

impl RedisBackend {
    /// Queues a message for the publisher. The queue is bounded in messages and in bytes
    /// (`backlog_limit`); beyond either, the message is dropped and counted
    /// (`dropped_total{reason="publish_queue_full"}` / `{reason="publish_backlog_full"}`).
    pub(super) fn enqueue(&self, topic: String, payload: Bytes) {
        let queued = Queued {
            topic,
            payload,
            queued: Instant::now(),
        };
        let size = queued.size();
        // Reserved before queueing, so the backlog never holds more than the limit.
        let before = self.backlog.fetch_add(size, Ordering::AcqRel);
        if before.saturating_add(size) > self.backlog_limit {
            self.backlog.fetch_sub(size, Ordering::AcqRel);
            self.metrics
                .dropped
                .with_label_values(&["publish_backlog_full"])
                .inc();
            return;
        }
        // The gauge follows the counter that enforces the bound (never below zero, even when
        // the publisher is done with a message before this line).
        self.metrics
            .publish_backlog
            .set(gauge(before.saturating_add(size)));
        match self.publish_tx.try_send(queued) {
            Ok(()) => self.metrics.publish_queue.inc(),
            Err(_) => {
                self.published(size);
                self.metrics
                    .dropped
                    .with_label_values(&["publish_queue_full"])
                    .inc();
            }
        }
    }

    /// Gives back the backlog bytes of messages the publisher is done with.
    fn published(&self, size: usize) {
        let before = self.backlog.fetch_sub(size, Ordering::AcqRel);
        self.metrics
            .publish_backlog
            .set(gauge(before.saturating_sub(size)));
    }

    /// Publishes a message for other nodes, unless none of them subscribes to its topic
    /// (then it is held until a sync shows nobody is owed it; `quiet.rs`).
    fn send(&self, topic: String, payload: Bytes) {
        let Some(quiet) = &self.quiet else {
            return self.enqueue(topic, payload);
        };
        let mut q = quiet.lock();
        if self.send_version() < wire::QUIET_VERSION {
            // An older node is live: it does not announce its subscriptions.
            if !q.is_empty() {
                self.flush(&mut q, true);
            }
            drop(q);
            return self.enqueue(topic, payload);
        }
        // Under the lock: an announcement handled meanwhile publishes what was held before
        // anything newer is queued.
        let (offer, wake) = q.offer(&topic, payload, Instant::now());
        match offer {
            quiet::Offer::Held => {}
            quiet::Offer::Publish(m) => self.enqueue(topic, m),
            quiet::Offer::Flush(held) => {
                for m in held {
                    self.enqueue(topic.clone(), m);
                }
                self.metrics.quiet_topics.set(gauge(q.sizes().0));
            }
        }
        drop(q);
        if wake.ask {
            self.asks.notify_one();
        }
        if wake.sync {
            self.syncs.notify_one();
        }
    }

    /// Someone subscribed to `topic` (or this node's own subscription to it changes): it is
    /// published to again, starting with what was held for it.
    fn hear(&self, topic: &str) {
        let Some(quiet) = &self.quiet else {
            return;
        };
        let mut q = quiet.lock();
        for m in q.heard(topic) {
            self.enqueue(topic.to_string(), m);
        }
        self.metrics.quiet_topics.set(gauge(q.sizes().0));
    }

    /// Every node that subscribes to something announces it (rules 2 of `quiet.rs`): after
    /// Redis confirmed the `SUBSCRIBE` and before the caller answers `subscription_succeeded`.
    /// An empty topic says "every topic of mine" (after a reconnect).
    async fn announce(&self, topic: &str) {
        if self.shards.is_some() {
            return;
        }
        let payload = wire::encode_interest(self.node, topic, now_ms());
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.keys.control_topic()).arg(payload.as_ref());
        let call = cmd.query_async::<i64>(&mut conn);
        match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(%topic, error = %e, "announcing a subscription failed"),
            Err(_) => debug!(%topic, "announcing a subscription timed out"),
        }
    }

    /// Ends every quiet topic, publishing what they held (`up`: whether the pub/sub
    /// connection is still subscribed).
    fn hear_all(&self, up: bool) {
        let Some(quiet) = &self.quiet else {
            return;
        };
        self.flush(&mut quiet.lock(), up);
    }

    /// Ends every quiet topic of `q` and publishes what they held, each topic's oldest first.
    fn flush(&self, q: &mut quiet::Quiet, up: bool) {
        for (t, held) in q.clear(up) {
            for m in held {
                self.enqueue(t.clone(), m);
            }
        }
        self.metrics.quiet_topics.set(0);
    }

    /// Takes a local reference on `target`; the first one subscribes (and waits for Redis to
    /// confirm, so a `subscription_succeeded` sent after it means cluster events will arrive).
    async fn acquire_topic(&self, app: &AppId, target: &Target) {
        let topic = self.keys.topic(app, target);
        let gate = {
            let mut i = self.interests.lock();
            let interest = i.topics.entry(topic.clone()).or_insert_with(Interest::new);
            interest.refs += 1;
            interest.gate.clone()
        };
        self.settle_topic(&topic, &gate).await;
    }

    /// Drops a local reference on `target`; the last one unsubscribes. One map operation
    /// and at most one round trip, whatever the number of topics.
    async fn release_topic(&self, app: &AppId, target: &Target) {
        let topic = self.keys.topic(app, target);
        let gate = {
            let mut i = self.interests.lock();
            let Some(interest) = i.topics.get_mut(&topic) else {
                return;
            };
            interest.refs = interest.refs.saturating_sub(1);
            interest.gate.clone()
        };
        self.settle_topic(&topic, &gate).await;
    }

    /// Brings Redis's subscription to `topic` in line with its local references: subscribes
    /// when it has some and is not subscribed, unsubscribes when it has none and is. The
    /// topic's gate orders its round trips, so one topic's `SUBSCRIBE` and `UNSUBSCRIBE` never
    /// overtake each other and whoever holds the gate last sees the final count; other topics
    /// never wait for them (no node-wide lock is held across a round trip). A round trip is
    /// waited for at most `COMMAND_TIMEOUT`, and only `SUBSCRIBE_WAIT_WHILE_DOWN` while the
    /// backend is known to be unreachable.
    async fn settle_topic(&self, topic: &str, gate: &Arc<tokio::sync::Mutex<bool>>) {
        let mut subscribed = gate.lock().await;
        let (wanted, sink) = {
            let i = self.interests.lock();
            let wanted = i.topics.get(topic).is_some_and(|t| t.refs > 0);
            (wanted, i.sink.clone())
        };
        if wanted != *subscribed {
            // An answer about this topic that is out while it changes is void (`quiet.rs`).
            self.hear(topic);
            let healthy = self.healthy.load(Ordering::Acquire);
            if let Some(shards) = &self.shards {
                match shards.subscribe(topic, wanted).await {
                    Err(e) if wanted => {
                        warn!(%topic, error = %e, "subscribing failed; it is retried after the connection is replaced");
                    }
                    _ => {}
                }
            } else if let Some(mut sink) = sink {
                let wait = if healthy {
                    COMMAND_TIMEOUT
                } else {
                    SUBSCRIBE_WAIT_WHILE_DOWN
                };
                let call = async {
                    if wanted {
                        sink.subscribe(topic).await
                    } else {
                        sink.unsubscribe(topic).await
                    }
                };
                match tokio::time::timeout(wait, call).await {
                    Ok(Ok(())) => {
                        if wanted {
                            self.announce(topic).await;
                        }
                    }
                    Ok(Err(e)) => {
                        debug!(%topic, error = %e, "(un)subscribing failed; the reconnect loop subscribes again");
                    }
                    Err(_) if healthy => {
                        warn!(%topic, "(UN)SUBSCRIBE not confirmed in time; it stays queued on the connection");
                        if wanted {
                            self.announce(topic).await;
                        }
                    }
                    Err(_) => {}
                }
            }
            // Without a connection, the next one subscribes every wanted topic.
            *subscribed = wanted;
            self.hear(topic);
        }
        if !wanted {
            let mut i = self.interests.lock();
            if i.topics
                .get(topic)
                .is_some_and(|t| t.refs == 0 && Arc::ptr_eq(&t.gate, gate))
            {
                i.topics.remove(topic);
            }
        }
    }

    fn handle(&self, payload: &[u8]) {
        self.metrics.receives.inc();
        // The publishing node already applied its own messages: skipped before any copy.
        if wire::origin(payload) == Some(self.node) {
            if let (Some(n), Some(quiet)) = (wire::sync_of(payload), &self.quiet) {
                let gone = quiet.lock().synced(n);
                self.metrics.unheard.inc_by(gone as u64);
            }
            return;
        }
        let Received {
            sent_at, message, ..
        } = match wire::decode(&Bytes::copy_from_slice(payload)) {
            Ok(m) => m,
            Err(e) => {
                self.metrics
                    .dropped
                    .with_label_values(&["undecodable"])
                    .inc();
                warn!(error = %e, "ignoring a cluster message");
                return;
            }
        };
        let inbound = match message {
            WireMessage::Event(event) => {
                if let Some(sent) = sent_at {
                    // Another host's clock: only as good as the clocks' synchronization.
                    let lag_ms = now_ms().saturating_sub(sent);
                    self.metrics.receive_lag.observe(lag_ms as f64 / 1000.0);
                }
                Inbound::Event(event)
            }
            WireMessage::Terminate {
                app,
                user,
                presence,
            } => Inbound::Terminate {
                app,
                user,
                presence,
            },
            WireMessage::Interest { topic } if topic.is_empty() => {
                self.hear_all(true);
                return;
            }
            WireMessage::Interest { topic } => {
                self.hear(&topic);
                return;
            }
            WireMessage::Sync { .. } => return,
        };
        if self.inbound.try_send(inbound).is_err() {
            self.metrics
                .dropped
                .with_label_values(&["inbound_queue_full"])
                .inc();
        }
    }
}

/// A byte count as a gauge value.
fn gauge(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

pub(super) async fn publisher(cluster: Arc<RedisBackend>, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(128);
    while rx.recv_many(&mut batch, 128).await > 0 {
        cluster.metrics.publish_queue.sub(batch.len() as i64);
        // The batch stays in the backlog until it is sent or dropped.
        let size: usize = batch.iter().map(Queued::size).sum();
        if !cluster.healthy.load(Ordering::Acquire) {
            cluster
                .metrics
                .dropped
                .with_label_values(&["backend_down"])
                .inc_by(batch.len() as u64);
            batch.clear();
            cluster.published(size);
            continue;
        }
        let sent = match &cluster.shards {
            Some(shards) => {
                let messages = batch.iter().map(|q| (q.topic.as_str(), q.payload.as_ref()));
                shards.publish(messages).await
            }
            None => {
                let mut pipe = redis::pipe();
                for q in &batch {
                    pipe.cmd("PUBLISH")
                        .arg(&q.topic)
                        .arg(q.payload.as_ref())
                        .ignore();
                }
                let mut conn = cluster.conn.clone();
                pipe.query_async::<()>(&mut conn).await
            }
        };
        match sent {
            Ok(()) => {
                cluster.metrics.publishes.inc_by(batch.len() as u64);
                for q in &batch {
                    cluster
                        .metrics
                        .publish_lag
                        .observe(q.queued.elapsed().as_secs_f64());
                }
            }
            Err(e) => {
                warn!(error = %e, lost = batch.len(), "publishing to the cluster failed");
                cluster
                    .metrics
                    .dropped
                    .with_label_values(&["publish_failed"])
                    .inc_by(batch.len() as u64);
            }
        }
        batch.clear();
        cluster.published(size);
    }
}

/// How long after a message is held its sync is sent: one sync covers what is held
/// meanwhile.
const SYNC_EVERY: Duration = Duration::from_millis(20);
/// While messages are held, a sync is sent again this often (the last may have been lost).
const SYNC_AGAIN: Duration = Duration::from_millis(500);
/// How long a failed question waits before the next.
const ASK_BACKOFF: Duration = Duration::from_millis(500);

/// Asks Redis who hears the topics this node publishes to (`PUBSUB NUMSUB`, up to
/// `ASK_BATCH` topics per command, one command at a time) and tells `quiet.rs`.
pub(super) async fn asker(cluster: Arc<RedisBackend>) {
    let Some(quiet) = &cluster.quiet else {
        return;
    };
    loop {
        cluster.asks.notified().await;
        loop {
            let Some((link, topics)) = quiet.lock().questions(Instant::now()) else {
                break;
            };
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("NUMSUB").arg(&topics);
            let mut conn = cluster.conn.clone();
            let call = cmd.query_async::<HashMap<String, i64>>(&mut conn);
            let counts = match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
                Ok(Ok(counts)) => counts,
                failed => {
                    quiet.lock().unanswered();
                    if let Ok(Err(e)) = failed {
                        debug!(error = %e, "PUBSUB NUMSUB failed");
                    }
                    tokio::time::sleep(ASK_BACKOFF).await;
                    break;
                }
            };
            // This node's own subscription, read after the answer: one that is changing
            // (its gate held) counts as someone else; one that changed since the question
            // was asked voids the answer (`Quiet::heard`).
            let answers: Vec<(String, bool)> = {
                let interests = cluster.interests.lock();
                topics
                    .into_iter()
                    .map(|t| {
                        let own = match interests.topics.get(&t) {
                            None => Some(false),
                            Some(i) => i.gate.try_lock().ok().map(|subscribed| *subscribed),
                        };
                        let n = counts.get(&t).copied().unwrap_or(0);
                        let heard = own.is_none_or(|own| n > i64::from(own));
                        (t, heard)
                    })
                    .collect()
            };
            let mut q = quiet.lock();
            q.answered(link, answers, Instant::now());
            cluster.metrics.quiet_topics.set(gauge(q.sizes().0));
        }
    }
}

/// Sends this node's syncs to itself (`quiet.rs`, rule 3): `SYNC_EVERY` after a message is
/// held, and again every `SYNC_AGAIN` while messages are held.
pub(super) async fn syncer(cluster: Arc<RedisBackend>) {
    let Some(quiet) = &cluster.quiet else {
        return;
    };
    let topic = cluster.keys.node_topic(cluster.node);
    loop {
        let again = tokio::time::timeout(SYNC_AGAIN, cluster.syncs.notified())
            .await
            .is_err();
        if !again {
            tokio::time::sleep(SYNC_EVERY).await;
        }
        // Taken after the messages it covers were held, so queued after them too.
        let Some(n) = quiet.lock().sync(again) else {
            continue;
        };
        cluster.enqueue(topic.clone(), wire::encode_sync(cluster.node, n, now_ms()));
    }
}

/// On a Redis Cluster: delivers the sharded messages the connection pushes (`shards.rs`).
pub(super) async fn shard_reader(cluster: Arc<RedisBackend>, mut pushes: mpsc::Receiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                // [topic, payload]
                if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                    cluster.handle(payload);
                }
            }
            PushKind::Disconnection => {
                // A shard's connection closed (its master died, or the link dropped): what
                // was published meanwhile is lost and its subscriptions are gone.
                cluster.metrics.reconnects.inc();
                cluster.resubscribe.notify_one();
            }
            _ => {}
        }
    }
}

/// How long subscriptions are renewed after they first all succeeded following a lost shard.
const RESUBSCRIBE_SETTLE: Duration = Duration::from_secs(10);

/// On a Redis Cluster: after a shard's connection closed or the connection was replaced,
/// subscribes to every wanted topic again, one command per topic so each goes to the shard
/// owning its slot, until all succeed (a failed master's slots answer only once a replica is
/// promoted; failures meanwhile make `Shards` replace the connection). One task, so a
/// replacement that comes while it works is never missed: the watch and the `Notify` both
/// remember it and the loop runs again. The crate's own re-subscription cannot be relied on:
/// it sends the topics of several slots in one command.
pub(super) async fn resubscriber(
    cluster: Arc<RedisBackend>,
    mut moved: tokio::sync::watch::Receiver<u64>,
) {
    let Some(shards) = cluster.shards.clone() else {
        return;
    };
    loop {
        tokio::select! {
            changed = moved.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = cluster.resubscribe.notified() => {}
        }
        // The new connection has no subscriptions, and changes may have been lost.
        cluster.dirty.store(true, Ordering::Release);
        let mut delay = Duration::from_millis(250);
        // Subscribing succeeds as soon as the crate has a node connection for the slot, but
        // while a failover settles the crate may still replace that connection, losing what
        // was subscribed on it: keep subscribing (idempotent on one connection) until a
        // quiet spell has passed.
        let mut settled_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(delay).await;
            moved.mark_unchanged();
            let mut topics = cluster.interests.lock().wanted();
            topics.push(cluster.keys.control_topic());
            let attempts = topics.iter().map(|topic| shards.subscribe(topic, true));
            let failed = futures_util::future::join_all(attempts)
                .await
                .iter()
                .filter(|r| r.is_err())
                .count();
            if failed > 0 {
                debug!(failed, "subscribing again on the Redis Cluster; retrying");
                settled_at = None;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
            let now = tokio::time::Instant::now();
            let since = *settled_at.get_or_insert(now);
            if now.duration_since(since) >= RESUBSCRIBE_SETTLE {
                info!(
                    topics = topics.len(),
                    "subscribed again on the Redis Cluster after a lost connection"
                );
                break;
            }
            delay = Duration::from_secs(1);
        }
    }
}

/// Keeps one pub/sub connection, resubscribing every wanted topic after each reconnect.
/// `ready` is told when the first subscription is in place.
pub(super) async fn subscriber(cluster: Arc<RedisBackend>, ready: oneshot::Sender<()>) {
    let Some(endpoint) = cluster.endpoint.clone() else {
        return;
    };
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    let mut moved = endpoint.moved();
    loop {
        moved.mark_unchanged();
        match endpoint.pubsub().await {
            Ok(pubsub) => {
                let (mut sink, mut stream) = pubsub.split();
                let mut topics = cluster.interests.lock().wanted();
                topics.push(cluster.keys.control_topic());
                topics.push(cluster.keys.node_topic(cluster.node));
                let mut ok = sink.subscribe(&topics).await.is_ok();
                if ok {
                    // Topics wanted while we were subscribing: from the moment the sink is
                    // in place, `acquire` subscribes on it; before, they are caught here.
                    let missing: Vec<String> = {
                        let mut i = cluster.interests.lock();
                        i.sink = Some(sink.clone());
                        let before: HashSet<&String> = topics.iter().collect();
                        i.wanted()
                            .into_iter()
                            .filter(|t| !before.contains(t))
                            .collect()
                    };
                    if !missing.is_empty() {
                        ok = sink.subscribe(&missing).await.is_ok();
                    }
                }
                if ok {
                    if let Some(quiet) = &cluster.quiet {
                        quiet.lock().connected();
                    }
                    if !first {
                        cluster.metrics.reconnects.inc();
                        info!("cluster pub/sub reconnected and resubscribed");
                        // Changes made while Redis was unreachable were not recorded.
                        cluster.request_resync(false);
                        // Others may have found this node's topics quiet meanwhile.
                        cluster.announce("").await;
                    }
                    first = false;
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    backoff = Duration::from_millis(100);
                    cluster.set_pubsub_up(true);
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => cluster.handle(msg.get_payload_bytes()),
                                None => {
                                    warn!("cluster pub/sub connection lost");
                                    break;
                                }
                            },
                            // A failover: the old master may still accept the connection
                            // (demoted to a replica) but no longer carries every publish.
                            _ = moved.changed() => {
                                info!("the Redis master moved; moving the pub/sub connection");
                                break;
                            }
                        }
                    }
                }
                cluster.interests.lock().sink = None;
                cluster.set_pubsub_up(false);
                // Announcements may have been lost with the connection.
                cluster.hear_all(false);
            }
            Err(e) => {
                cluster.set_pubsub_up(false);
                cluster.hear_all(false);
                warn!(error = %e, "cannot reach the cluster backend");
            }
        }
        // A failover found the new master: no need to wait.
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = moved.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[async_trait]
impl Adapter for RedisBackend {
    fn publish(&self, event: RemoteEvent) {
        let topic = self.keys.topic(&event.app, &event.publication.target);
        self.send(
            topic,
            wire::encode_event(self.node, &event, self.send_version(), now_ms()),
        );
    }

    async fn acquire(&self, app: &AppId, target: &Target) {
        self.acquire_topic(app, target).await;
    }

    async fn release(&self, app: &AppId, target: &Target) {
        self.release_topic(app, target).await;
    }

    fn terminate(&self, app: &AppId, user: &str, presence: bool) {
        self.enqueue(
            self.keys.control_topic(),
            wire::encode_terminate(
                self.node,
                app,
                user,
                presence,
                self.send_version(),
                now_ms(),
            ),
        );
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

/// Topic bookkeeping against the real Redis at 127.0.0.1:6379, under a prefix of its own.
#[cfg(test)]
mod tests {
    use prometheus::Registry;

    use super::*;
    use crate::cluster::InboundQueues;
    use crate::config::ScalingConfig;

    /// `n` nodes of one new cluster, with their inbound queues.
    async fn cluster(n: usize) -> Vec<(Arc<RedisBackend>, InboundQueues)> {
        let scaling = ScalingConfig {
            enabled: true,
            channel: format!("resound-pubsub-{:016x}", rand::random::<u64>()),
            ..ScalingConfig::default()
        };
        let mut nodes = Vec::new();
        for _ in 0..n {
            let node = RedisBackend::connect(&scaling, &Registry::new(), "t")
                .await
                .expect("a Redis at 127.0.0.1:6379");
            nodes.push(node);
        }
        nodes
    }

    async fn backend() -> Arc<RedisBackend> {
        let mut nodes = cluster(1).await;
        nodes.remove(0).0
    }

    /// A channel event `n` for `room` of app `a`.
    fn event(n: u32) -> RemoteEvent {
        RemoteEvent {
            app: AppId("a".into()),
            publication: crate::cluster::Publication {
                target: Target::Channel("room".into()),
                kind: crate::cluster::Kind::Event,
                frame: Bytes::from(n.to_string()),
                except: None,
                stamp: None,
            },
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A node holds what no other node hears until its sync comes back; a node that
    /// subscribes first (its announcement read before the sync) gets every held message, in
    /// order. Here the sync never comes back, so nothing is let go before the newcomer
    /// subscribes, however slow the machine.
    #[tokio::test]
    async fn what_is_held_reaches_a_node_that_subscribes_before_it_is_let_go_in_order() {
        let mut nodes = cluster(2).await;
        let (b, mut b_queues) = nodes.remove(1);
        let (a, _a_queues) = nodes.remove(0);
        let quiet = |n: &RedisBackend| n.quiet.as_ref().expect("skip_unheard").lock().sizes();
        // The first publish asks who hears `room`: nobody.
        a.publish(event(0));
        until("`room` is quiet on a", || quiet(&a).0 == 1).await;
        let mut sink = a.interests.lock().sink.clone().expect("a pub/sub sink");
        sink.unsubscribe(a.keys.node_topic(a.node))
            .await
            .expect("UNSUBSCRIBE");
        for n in 1..=5 {
            a.publish(event(n));
        }
        let one = wire::encode_event(a.node, &event(1), a.send_version(), 0).len();
        assert_eq!(quiet(&a), (1, 5 * one), "five messages held");

        b.acquire_topic(&AppId("a".into()), &Target::Channel("room".into()))
            .await;
        for n in 1..=5u32 {
            let got = tokio::time::timeout(Duration::from_secs(3), b_queues.events.recv())
                .await
                .expect("a held message reaches b")
                .expect("queue open");
            let Inbound::Event(e) = got else {
                panic!("not an event")
            };
            assert_eq!(e.publication.frame, Bytes::from(n.to_string()));
        }
        assert_eq!(quiet(&a), (0, 0));
        // From now on published at once.
        a.publish(event(6));
        let got = tokio::time::timeout(Duration::from_secs(3), b_queues.events.recv())
            .await
            .expect("published")
            .expect("queue open");
        assert!(matches!(got, Inbound::Event(e) if e.publication.frame == "6"));
        a.leave().await;
        b.leave().await;
    }

    fn topics(backend: &RedisBackend) -> usize {
        backend.interests.lock().topics.len()
    }

    /// Taking and dropping references is one map operation each, whatever the number of
    /// topics: 20,000 topics (one socket's channels) are released at once, and each topic's
    /// entry goes with its last reference. (The topics are not subscribed in Redis here: the
    /// pub/sub connection is set aside, so only the bookkeeping is timed.)
    #[tokio::test]
    async fn twenty_thousand_topics_are_released_at_once() {
        let backend = backend().await;
        let sink = backend.interests.lock().sink.take();
        let app = AppId("a".into());
        let targets: Vec<Target> = (0..20_000)
            .map(|i| Target::Channel(format!("c-{i}")))
            .collect();
        for t in &targets {
            backend.acquire_topic(&app, t).await;
        }
        backend.acquire_topic(&app, &targets[0]).await;
        assert_eq!(topics(&backend), 20_000);
        let started = Instant::now();
        for t in &targets {
            backend.release_topic(&app, t).await;
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
        // The one with a second reference stays.
        assert_eq!(backend.interests.lock().wanted().len(), 1);
        backend.release_topic(&app, &targets[0]).await;
        assert_eq!(topics(&backend), 0);
        backend.interests.lock().sink = sink;
        backend.leave().await;
    }

    /// A topic's `SUBSCRIBE` and `UNSUBSCRIBE` go out in the order of its references, and a
    /// topic stuck in a round trip does not hold up another topic.
    #[tokio::test]
    async fn one_topic_never_waits_for_another() {
        let backend = backend().await;
        let app = AppId("a".into());
        let stuck = Target::Channel("stuck".into());
        let topic = backend.keys.topic(&app, &stuck);
        let gate = {
            let mut i = backend.interests.lock();
            let interest = i.topics.entry(topic).or_insert_with(Interest::new);
            interest.gate.clone()
        };
        // Another task is in the middle of `stuck`'s round trip.
        let held = gate.lock().await;
        let waiting = {
            let backend = backend.clone();
            let (app, stuck) = (app.clone(), stuck.clone());
            tokio::spawn(async move { backend.acquire_topic(&app, &stuck).await })
        };
        let other = Target::Channel("other".into());
        tokio::time::timeout(Duration::from_secs(1), backend.acquire_topic(&app, &other))
            .await
            .expect("another topic is subscribed meanwhile");
        assert!(!waiting.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("the stuck topic is subscribed once its gate is free")
            .expect("task");
        assert_eq!(backend.interests.lock().wanted().len(), 2);
        backend.release_topic(&app, &stuck).await;
        backend.release_topic(&app, &other).await;
        assert_eq!(topics(&backend), 0);
        backend.leave().await;
    }
}
