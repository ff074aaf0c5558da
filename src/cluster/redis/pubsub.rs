//! Cross-node fan-out over pub/sub (`Adapter`): the publisher task batches queued messages
//! into `PUBLISH`es (or `SPUBLISH`es on a Redis Cluster), and the receiving side keeps this
//! node subscribed to the topics of its local interests in each topology: one pub/sub
//! connection to a standalone or Sentinel-managed master (`subscriber`, following
//! `endpoint.rs`), or sharded subscriptions on a Redis Cluster (`shard_reader` and
//! `resubscriber`, over `shards.rs`). Received messages are decoded (`wire.rs`) and handed to
//! the server as `Inbound` values.

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
use super::{now_ms, Queued, RedisBackend};
use crate::app::AppId;
use crate::cluster::wire::{self, Received, WireMessage};
use crate::cluster::{Adapter, Inbound, RemoteEvent, Target};

impl RedisBackend {
    pub(super) fn enqueue(&self, topic: String, payload: Bytes) {
        let queued = Queued {
            topic,
            payload,
            queued: Instant::now(),
        };
        match self.publish_tx.try_send(queued) {
            Ok(()) => self.metrics.publish_queue.inc(),
            Err(_) => self
                .metrics
                .dropped
                .with_label_values(&["publish_queue_full"])
                .inc(),
        }
    }

    /// Takes a local reference on `target`; the first one subscribes (and waits for Redis to
    /// confirm, so a `subscription_succeeded` sent after it means cluster events will arrive).
    async fn acquire_topic(&self, app: &AppId, target: &Target) {
        let topic = self.keys.topic(app, target);
        let mut i = self.interests.lock().await;
        let count = i.counts.entry(topic.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.wanted.lock().push(topic.clone());
            if let Some(shards) = &self.shards {
                if let Err(e) = shards.subscribe(&topic, true).await {
                    warn!(%topic, error = %e, "subscribing failed; it is retried after the connection is replaced");
                }
            } else if let Some(sink) = i.sink.as_mut() {
                if tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(&topic))
                    .await
                    .is_err()
                {
                    warn!(%topic, "SUBSCRIBE timed out; the reconnect loop will retry");
                }
            }
        }
    }

    /// Drops a local reference on `target`; the last one unsubscribes.
    async fn release_topic(&self, app: &AppId, target: &Target) {
        let topic = self.keys.topic(app, target);
        let mut i = self.interests.lock().await;
        let Some(count) = i.counts.get_mut(&topic) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            i.counts.remove(&topic);
            self.wanted.lock().retain(|t| t != &topic);
            if let Some(shards) = &self.shards {
                let _ = shards.subscribe(&topic, false).await;
            } else if let Some(sink) = i.sink.as_mut() {
                let _ = tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&topic)).await;
            }
        }
    }

    fn handle(&self, payload: &[u8]) {
        self.metrics.receives.inc();
        // The publishing node already applied its own messages: skipped before any copy.
        if wire::origin(payload) == Some(self.node) {
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
        };
        if self.inbound.try_send(inbound).is_err() {
            self.metrics
                .dropped
                .with_label_values(&["inbound_queue_full"])
                .inc();
        }
    }
}

pub(super) async fn publisher(cluster: Arc<RedisBackend>, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(128);
    while rx.recv_many(&mut batch, 128).await > 0 {
        cluster.metrics.publish_queue.sub(batch.len() as i64);
        if !cluster.healthy.load(Ordering::Acquire) {
            cluster
                .metrics
                .dropped
                .with_label_values(&["backend_down"])
                .inc_by(batch.len() as u64);
            batch.clear();
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
            let mut topics = cluster.wanted.lock().clone();
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
                let mut topics = cluster.wanted.lock().clone();
                topics.push(cluster.keys.control_topic());
                let mut ok = sink.subscribe(&topics).await.is_ok();
                if ok {
                    // Topics wanted while we were subscribing are caught by `acquire`, which
                    // waits for this lock.
                    let mut i = cluster.interests.lock().await;
                    let now: Vec<String> = cluster.wanted.lock().clone();
                    let missing: Vec<&String> =
                        now.iter().filter(|t| !topics.contains(t)).collect();
                    if !missing.is_empty() {
                        ok = sink.subscribe(&missing).await.is_ok();
                    }
                    i.sink = Some(sink);
                }
                if ok {
                    if !first {
                        cluster.metrics.reconnects.inc();
                        info!("cluster pub/sub reconnected and resubscribed");
                        // Changes made while Redis was unreachable were not recorded.
                        cluster.request_resync(false);
                    }
                    first = false;
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    backoff = Duration::from_millis(100);
                    cluster.set_healthy(true);
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
                cluster.interests.lock().await.sink = None;
                cluster.set_healthy(false);
            }
            Err(e) => {
                cluster.set_healthy(false);
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
        self.enqueue(
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
