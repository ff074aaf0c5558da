//! The timing rules (removal delay, batching windows, retries, journal, shutdown) through a
//! scripted transport under paused tokio time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

// ---------------------------------------------------------------------------------------
// Timing rules under paused time

#[tokio::test(start_paused = true)]
async fn removal_delay_cancels_pairs_and_sends_lone_removals_when_due() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));

    h.webhooks.emit(&app, occupied("a"));
    h.webhooks.emit(&app, added("presence-a", "1"));
    let sent = h.take_sent().await;
    let first: Vec<_> = sent.iter().flat_map(|s| s.events.clone()).collect();
    assert_eq!(
        sorted(first),
        sorted(vec![occupied("a"), added("presence-a", "1")])
    );

    // Leave and come back within 3 s: the receiver hears nothing at all.
    h.webhooks.emit(&app, removed("presence-a", "1"));
    h.webhooks.emit(&app, vacated("a"));
    tokio::time::sleep(Duration::from_millis(2900)).await;
    h.webhooks.emit(&app, occupied("a"));
    h.webhooks.emit(&app, added("presence-a", "1"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(h.take_sent().await.is_empty());

    // Leave for good: both removals arrive 3 s later, member first.
    let left = Instant::now();
    h.webhooks.emit(&app, removed("presence-a", "1"));
    h.webhooks.emit(&app, vacated("a"));
    tokio::time::sleep(Duration::from_millis(2999)).await;
    assert!(h.take_sent().await.is_empty());
    tokio::time::sleep(Duration::from_millis(1)).await;
    let sent = h.take_sent().await;
    let events: Vec<_> = sent.iter().flat_map(|s| s.events.clone()).collect();
    assert_eq!(
        sorted(events),
        sorted(vec![removed("presence-a", "1"), vacated("a")])
    );
    for request in &sent {
        assert_eq!(request.at.duration_since(left), Duration::from_secs(3));
    }
}

#[tokio::test(start_paused = true)]
async fn zero_removal_delay_sends_removals_at_once() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let app = Arc::new(AppWebhooks {
        removal_delay: Duration::ZERO,
        ..app(vec![target("http://127.0.0.1:9/hooks")])
    });
    let start = Instant::now();
    h.webhooks.emit(&app, vacated("a"));
    h.webhooks.emit(&app, occupied("a"));
    let sent = h.take_sent().await;
    let events: Vec<_> = sent.iter().flat_map(|s| s.events.clone()).collect();
    assert_eq!(
        events,
        [vacated("a"), occupied("a")],
        "same channel keeps its order"
    );
    assert!(sent.iter().all(|s| s.at == start));
}

#[tokio::test(start_paused = true)]
async fn cache_misses_are_deduplicated_per_channel() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    let miss = |channel: &str| WebhookEvent::CacheMiss {
        channel: channel.into(),
    };
    for _ in 0..5 {
        h.webhooks.emit(&app, miss("cache-a"));
    }
    h.webhooks.emit(&app, miss("cache-b"));
    let events: Vec<_> = h
        .take_sent()
        .await
        .into_iter()
        .flat_map(|s| s.events)
        .collect();
    assert_eq!(
        sorted(events),
        sorted(vec![miss("cache-a"), miss("cache-b")])
    );
    tokio::time::sleep(CACHE_MISS_WINDOW).await;
    h.webhooks.emit(&app, miss("cache-a"));
    let events: Vec<_> = h
        .take_sent()
        .await
        .into_iter()
        .flat_map(|s| s.events)
        .collect();
    assert_eq!(events, [miss("cache-a")]);
}

#[tokio::test(start_paused = true)]
async fn batches_close_when_full_or_when_the_window_ends_and_never_mix_apps() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let url = "http://127.0.0.1:9/hooks";
    let first = Arc::new(AppWebhooks {
        batching: true,
        ..app(vec![target(url)])
    });
    let second = Arc::new(AppWebhooks {
        batching: true,
        ..AppWebhooks::new("4", "other-key", "other-secret", vec![target(url)])
    });
    let start = Instant::now();
    for i in 0..250 {
        h.webhooks
            .emit(&first, client_event("private-a", &i.to_string(), None));
        h.webhooks
            .emit(&second, client_event("private-a", &i.to_string(), None));
    }
    let full = h.take_sent().await;
    assert_eq!(full.len(), 4, "two full batches per app at once");
    assert!(full.iter().all(|s| s.events.len() == 100 && s.at == start));

    tokio::time::sleep(DEFAULT_BATCH_WINDOW).await;
    let rest = h.take_sent().await;
    assert_eq!(rest.len(), 2);
    assert!(rest
        .iter()
        .all(|s| s.events.len() == 50 && s.at == start + DEFAULT_BATCH_WINDOW));

    for request in full.iter().chain(&rest) {
        let secret = if request.key == KEY {
            SECRET
        } else {
            "other-secret"
        };
        assert_eq!(request.signature, sign(secret, &request.body).unwrap());
    }
    let by_key = |key: &str| -> Vec<WebhookEvent> {
        full.iter()
            .chain(&rest)
            .filter(|s| s.key == key)
            .flat_map(|s| s.events.clone())
            .collect()
    };
    let expected: Vec<_> = (0..250)
        .map(|i| client_event("private-a", &i.to_string(), None))
        .collect();
    assert_eq!(by_key(KEY), expected, "one app's events, in order");
    assert_eq!(by_key("other-key"), expected);
}

#[tokio::test(start_paused = true)]
async fn one_window_of_events_on_many_channels_makes_one_request_per_target() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let chat_only = WebhookTarget {
        event_types: vec![WebhookKind::ClientEvent],
        ..target("http://127.0.0.1:9/chat")
    };
    let app = Arc::new(AppWebhooks {
        batching: true,
        removal_delay: Duration::ZERO,
        ..app(vec![target("http://127.0.0.1:9/all"), chat_only])
    });
    let events: Vec<_> = (0..10)
        .flat_map(|i| {
            let channel = format!("private-{i}");
            [
                occupied(&channel),
                client_event(&channel, "1", None),
                vacated(&channel),
            ]
        })
        .collect();
    for event in &events {
        h.webhooks.emit(&app, event.clone());
    }
    tokio::time::sleep(DEFAULT_BATCH_WINDOW).await;
    let sent = h.take_sent().await;
    assert_eq!(sent.len(), 2, "one request per target");
    let all = sent.iter().find(|s| s.uri.path() == "/all").unwrap();
    assert_eq!(all.events, events, "every event, in emit order");
    let chat = sent.iter().find(|s| s.uri.path() == "/chat").unwrap();
    let chat_events: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == WebhookKind::ClientEvent)
        .cloned()
        .collect();
    assert_eq!(chat.events, chat_events);
}

#[tokio::test(start_paused = true)]
async fn a_full_lane_backlog_drops_newest_and_counts_them() {
    let mut h = Harness::start(DispatcherSettings::default(), Vec::new(), Answer::Never);
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    for i in 0..1000 {
        h.webhooks
            .emit(&app, client_event("private-a", &i.to_string(), None));
    }
    let metrics = h.app_metrics(APP_ID);
    assert_eq!(metrics.queue_depth.get(), 1000);
    let _ = h.take_sent().await;
    assert_eq!(metrics.queue_depth.get(), 0);
    // One request is stuck in flight, 2 × LANE_BACKLOG wait behind it (taken by the lane,
    // and in its queue), the rest are dropped.
    let dropped = metrics.dropped(DropReason::BacklogFull).get();
    let kept = 1000 - 1 - 2 * LANE_BACKLOG as u64;
    assert!(dropped == kept || dropped == kept + 1, "dropped {dropped}");
    assert_eq!(metrics.dropped(DropReason::QueueFull).get(), 0);
}

#[tokio::test(start_paused = true)]
async fn requests_waiting_behind_a_stuck_one_are_journaled_in_order() {
    let mut h = Harness::journaled(Answer::Never);
    let journal = h.journal.clone().unwrap();
    let url = "http://127.0.0.1:9/hooks";
    let app = Arc::new(app(vec![target(url)]));
    let events = vec![
        occupied("private-a"),
        client_event("private-a", "1", None),
        client_event("private-a", "2", None),
    ];
    for event in &events {
        h.webhooks.emit(&app, event.clone());
    }
    assert_eq!(h.take_sent().await.len(), 1, "one request in flight");
    let expected: Vec<JournalEntry> = events
        .iter()
        .map(|event| JournalEntry {
            app_id: APP_ID.into(),
            url: url.into(),
            events: vec![event.clone()],
        })
        .collect();
    assert_eq!(journal.pending(), expected);
    // Shutting down abandons them, and they stay journaled for another node.
    h.webhooks.shutdown(Duration::from_secs(1)).await;
    assert_eq!(journal.pending(), expected);
}

#[tokio::test(start_paused = true)]
async fn finished_requests_are_forgotten_delivered_or_given_up() {
    let mut h = Harness::journaled(Answer::Status(200));
    let journal = h.journal.clone().unwrap();
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    h.webhooks.emit(&app, occupied("a"));
    h.webhooks.emit(&app, occupied("b"));
    assert_eq!(h.take_sent().await.len(), 2);
    let _ = h.take_sent().await;
    assert!(journal.pending().is_empty(), "{:?}", journal.pending());
    let metrics = h.app_metrics(APP_ID);
    assert_eq!(metrics.journal(JournalOp::Recorded).get(), 2);

    // A 400 is given up at once: forgotten too.
    let mut h = Harness::journaled(Answer::Status(400));
    let journal = h.journal.clone().unwrap();
    h.webhooks.emit(&app, occupied("c"));
    assert_eq!(h.take_sent().await.len(), 1);
    let _ = h.take_sent().await;
    assert!(journal.pending().is_empty());
}

#[tokio::test(start_paused = true)]
async fn replays_wait_for_room_in_a_full_queue_instead_of_being_dropped() {
    let settings = DispatcherSettings {
        queue_capacity: 2,
        ..DispatcherSettings::default()
    };
    let mut h = Harness::journaled_with(settings, Answer::Status(200));
    let journal = h.journal.clone().unwrap();
    let url = "http://127.0.0.1:9/hooks";
    let app = Arc::new(app(vec![target(url)]));
    // An adopted journal of 40 requests arrives at once, with events emitted in between:
    // the dispatcher cannot run during the loop, so the queue (2) is full almost at once.
    let mut expected = Vec::new();
    for i in 0..40 {
        let entry = JournalEntry {
            app_id: APP_ID.into(),
            url: url.into(),
            events: vec![occupied(&format!("replayed-{i}"))],
        };
        expected.push(occupied(&format!("replayed-{i}")));
        let id = journal.record(&entry).await.unwrap();
        h.webhooks.replay(Some(&app), Replay { id, entry });
        h.webhooks
            .emit(&app, client_event("private-live", &i.to_string(), None));
    }
    let metrics = h.app_metrics(APP_ID);
    let mut replayed = Vec::new();
    for _ in 0..20 {
        replayed.extend(
            h.take_sent()
                .await
                .into_iter()
                .flat_map(|sent| sent.events)
                .filter(|e| matches!(e, WebhookEvent::ChannelOccupied { .. })),
        );
        if replayed.len() == expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sorted(replayed),
        sorted(expected),
        "every replay is delivered"
    );
    assert!(journal.pending().is_empty(), "and forgotten once delivered");
    assert_eq!(metrics.journal(JournalOp::Replayed).get(), 40);
    // Live events still follow the queue's policy: newest dropped when full.
    assert!(metrics.dropped(DropReason::QueueFull).get() > 0);
    assert_eq!(metrics.dropped(DropReason::ReplayBacklogFull).get(), 0);
    assert_eq!(metrics.queue_depth.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn replays_go_to_their_target_once_and_are_forgotten() {
    let mut h = Harness::journaled(Answer::Status(200));
    let journal = h.journal.clone().unwrap();
    let url = "http://127.0.0.1:9/hooks";
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/other"), target(url)]));
    let entry = JournalEntry {
        app_id: APP_ID.into(),
        url: url.into(),
        events: vec![vacated("a"), removed("presence-b", "7")],
    };
    let id = journal.record(&entry).await.unwrap();
    h.webhooks.replay(Some(&app), Replay { id, entry });
    let sent = h.take_sent().await;
    assert_eq!(sent.len(), 1, "only the recorded URL gets it");
    assert_eq!(sent[0].uri.path(), "/hooks");
    assert_eq!(
        sent[0].events,
        vec![vacated("a"), removed("presence-b", "7")]
    );
    assert_eq!(
        sent[0].signature,
        sign(SECRET, &sent[0].body).unwrap(),
        "signed with the app's secret as configured here"
    );
    let _ = h.take_sent().await;
    assert!(journal.pending().is_empty(), "forgotten once delivered");
    let metrics = h.app_metrics(APP_ID);
    assert_eq!(
        metrics.journal(JournalOp::Recorded).get(),
        0,
        "not journaled twice"
    );
    assert_eq!(metrics.journal(JournalOp::Replayed).get(), 1);

    // A URL no longer configured, or an app without webhooks here: dropped and forgotten.
    let gone = JournalEntry {
        app_id: APP_ID.into(),
        url: "http://127.0.0.1:9/removed".into(),
        events: vec![occupied("x")],
    };
    let id = journal.record(&gone).await.unwrap();
    h.webhooks.replay(
        Some(&app),
        Replay {
            id,
            entry: gone.clone(),
        },
    );
    let id = journal.record(&gone).await.unwrap();
    h.webhooks.replay(None, Replay { id, entry: gone });
    assert!(h.take_sent().await.is_empty());
    assert!(journal.pending().is_empty());
    assert_eq!(metrics.dropped(DropReason::InvalidTarget).get(), 2);
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_backoff_schedule_and_give_up_after_the_window() {
    let script = vec![
        Answer::Status(503),
        Answer::Status(503),
        Answer::Status(200),
    ];
    let mut h = Harness::start(DispatcherSettings::default(), script, Answer::Status(503));
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    let start = Instant::now();
    h.webhooks.emit(&app, occupied("a"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = h.take_sent().await;
    let offsets: Vec<_> = sent
        .iter()
        .map(|s| s.at.duration_since(start).as_secs())
        .collect();
    assert_eq!(offsets, [0, 1, 3]);
    assert!(sent.iter().all(|s| s.body == sent[0].body));

    // From now on every answer is 503: ten attempts over 243 s, then it gives up.
    let start = Instant::now();
    h.webhooks.emit(&app, occupied("b"));
    tokio::time::sleep(Duration::from_secs(400)).await;
    let sent = h.take_sent().await;
    let offsets: Vec<_> = sent
        .iter()
        .map(|s| s.at.duration_since(start).as_secs())
        .collect();
    assert_eq!(offsets, [0, 1, 3, 7, 15, 31, 63, 123, 183, 243]);
    let metrics = h.app_metrics(APP_ID);
    assert_eq!(
        (
            metrics.sent.get(),
            metrics.failed.get(),
            metrics.retried.get()
        ),
        (1, 1, 11)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_held_removals_and_open_batches_then_refuses_events() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let app = Arc::new(AppWebhooks {
        batching: true,
        batch_window: Duration::from_secs(60),
        ..app(vec![target("http://127.0.0.1:9/hooks")])
    });
    h.webhooks.emit(&app, vacated("a"));
    h.webhooks.emit(&app, client_event("private-b", "1", None));
    assert!(h.take_sent().await.is_empty());
    let start = Instant::now();
    h.webhooks.shutdown(Duration::from_secs(5)).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "nothing to wait for");
    let events: Vec<_> = h
        .take_sent()
        .await
        .into_iter()
        .flat_map(|s| s.events)
        .collect();
    assert_eq!(
        sorted(events),
        sorted(vec![vacated("a"), client_event("private-b", "1", None)])
    );

    h.webhooks.emit(&app, occupied("c"));
    assert_eq!(h.app_metrics(APP_ID).dropped(DropReason::Shutdown).get(), 1);
    assert!(h.take_sent().await.is_empty());
    h.webhooks.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_what_cannot_finish_within_grace() {
    let mut h = Harness::start(DispatcherSettings::default(), Vec::new(), Answer::Never);
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    h.webhooks.emit(&app, occupied("a"));
    assert_eq!(h.take_sent().await.len(), 1);
    let start = Instant::now();
    h.webhooks.shutdown(Duration::from_secs(2)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_new_configuration_takes_effect_with_the_events_emitted_under_it() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let old = Arc::new(app(vec![target("http://127.0.0.1:9/old")]));
    h.webhooks.emit(&old, occupied("a"));
    let new = Arc::new(app(vec![WebhookTarget {
        event_types: vec![WebhookKind::ClientEvent],
        ..target("http://127.0.0.1:9/new")
    }]));
    h.webhooks.emit(&new, occupied("b"));
    h.webhooks.emit(&new, client_event("private-c", "1", None));
    let sent = h.take_sent().await;
    let paths: Vec<_> = sent
        .iter()
        .map(|s| (s.uri.path().to_owned(), s.events.clone()))
        .collect();
    assert_eq!(
        paths,
        [
            ("/old".to_owned(), vec![occupied("a")]),
            (
                "/new".to_owned(),
                vec![client_event("private-c", "1", None)]
            ),
        ]
    );
}

#[tokio::test]
async fn apps_without_interested_targets_cost_nothing() {
    let registry = Registry::new();
    let webhooks = Webhooks::start(DispatcherSettings::default(), &registry, "w", None).unwrap();
    let nobody = Arc::new(app(Vec::new()));
    let only_members = Arc::new(app(vec![WebhookTarget {
        event_types: vec![WebhookKind::MemberAdded],
        ..target("http://127.0.0.1:9/hooks")
    }]));
    webhooks.emit(&nobody, occupied("a"));
    webhooks.emit(&only_members, occupied("a"));
    webhooks.emit(&only_members, client_event("private-a", "1", None));
    assert_eq!(counter(&registry, "w_queue_depth", &[]), 0.0);
    assert!(format!("{webhooks:?}").contains("apps: 0"));
}

#[test]
fn start_needs_a_runtime_and_sane_settings() {
    let registry = Registry::new();
    assert!(matches!(
        Webhooks::start(DispatcherSettings::default(), &registry, "a", None),
        Err(WebhookError::NoRuntime)
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let bad = DispatcherSettings {
        queue_capacity: 0,
        ..DispatcherSettings::default()
    };
    assert!(matches!(
        Webhooks::start(bad, &registry, "b", None),
        Err(WebhookError::InvalidSettings(_))
    ));
    assert!(Webhooks::start(DispatcherSettings::default(), &registry, "c", None).is_ok());
    assert!(matches!(
        Webhooks::start(DispatcherSettings::default(), &registry, "c", None),
        Err(WebhookError::Metrics(_))
    ));
}

#[test]
fn emit_works_from_a_thread_outside_the_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (webhooks, mut receiver) = runtime.block_on(async {
        let receiver = Receiver::start(Vec::new(), Reply::Status(200)).await;
        let webhooks =
            Webhooks::start(DispatcherSettings::default(), &Registry::new(), "w", None).unwrap();
        (webhooks, receiver)
    });
    let app = Arc::new(app(vec![target(&receiver.url)]));
    let emitter = webhooks.clone();
    std::thread::spawn(move || emitter.emit(&app, occupied("a")))
        .join()
        .unwrap();
    let request = runtime.block_on(receiver.next());
    assert_eq!(check_signed(&request), [occupied("a")]);
}
