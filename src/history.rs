//! `ChannelHistory`: one app's recent events on the channels it keeps a history for
//! (`history_channels`), on a single node, so that a client that lost its connection can
//! resume where it was (protocol.md 11.2). Each kept channel has a log: a random `epoch`
//! (a new one whenever the log starts anew, so a position from a lost log is recognised) and
//! positions (`offset`s) that increase by one per event.
//!
//! Bounds: `history_max_events` per channel and `history_ttl` per event (the oldest go
//! first), `history_max_bytes` for all of the app's logs (overflow policy: the app's oldest
//! event is dropped). A log without events stays until `history_ttl` after its last event
//! (or its creation by a resuming client), so that an idle channel still resumes.
//!
//! In a cluster the log is kept once, in the shared store (`cluster::SharedHistory`);
//! `replay_shared` decides there what a resume gets from what the store read, with the same
//! rules as `ChannelHistory::replay`.
//!
//! The registry calls it under the channel's lock (`ChannelRegistry::publish_recorded`,
//! `subscribe_with`): recording an event, delivering it and replaying to a resuming
//! subscriber are one step for that channel, so a replay and the live events after it
//! neither overlap nor leave a gap. Lock order: registry shard, then this.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::app::HistorySettings;
use crate::cluster::SharedLog;
use crate::protocol::resume::{with_position, Position, Resume};
use crate::protocol::SocketId;

/// Why a resume could not give every missed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Events after the client's position are no longer kept.
    WindowExceeded,
    /// The log the position belongs to is gone (another epoch, or an unknown position).
    HistoryLost,
    /// The channel keeps no history.
    NoHistory,
    /// A cluster's shared history could not be read in time.
    Unavailable,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::WindowExceeded => "window_exceeded",
            Failure::HistoryLost => "history_lost",
            Failure::NoHistory => "no_history",
            Failure::Unavailable => "history_unavailable",
        }
    }
}

/// What a resume found: the frames to replay (in order) and the outcome, with the
/// position the client is at once it has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub frames: Vec<Bytes>,
    pub outcome: Result<usize, Failure>,
    pub position: Option<Position>,
}

struct Kept {
    offset: u64,
    /// Unique among the app's kept events (what `Logs::order` names).
    seq: u64,
    frame: Bytes,
    except: Option<SocketId>,
    at: Instant,
}

struct Log {
    epoch: String,
    /// The last offset given (0: none yet).
    last: u64,
    events: VecDeque<Kept>,
    touched: Instant,
}

/// Bytes a log costs besides its events (name, epoch, bookkeeping).
const LOG_OVERHEAD: usize = 128;

#[derive(Default)]
struct Logs {
    channels: HashMap<String, Log>,
    /// Every kept event, oldest first: `(channel, seq)` (entries already dropped from
    /// their log are skipped).
    order: VecDeque<(String, u64)>,
    bytes: usize,
    next_seq: u64,
}

/// One app's histories (see the module docs).
pub struct ChannelHistory {
    settings: HistorySettings,
    logs: Mutex<Logs>,
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl ChannelHistory {
    pub fn new(settings: HistorySettings) -> ChannelHistory {
        ChannelHistory {
            settings,
            logs: Mutex::new(Logs::default()),
        }
    }

    /// Whether `channel` keeps a history.
    pub fn covers(&self, channel: &str) -> bool {
        self.settings.covers(channel)
    }

    /// Gives `frame` (an encoded channel event skipping `except`) the channel's next
    /// position and keeps it; returns the frame with its position, the one to deliver.
    pub fn record(
        &self,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        now: Instant,
    ) -> Bytes {
        let mut logs = self.logs.lock();
        self.expire(&mut logs, now);
        if !logs.channels.contains_key(channel) {
            logs.bytes += LOG_OVERHEAD + channel.len();
        }
        let log = logs
            .channels
            .entry(channel.to_string())
            .or_insert_with(|| Log {
                epoch: new_epoch(),
                last: 0,
                events: VecDeque::new(),
                touched: now,
            });
        log.last += 1;
        log.touched = now;
        let offset = log.last;
        let positioned = with_position(frame, &log.epoch, offset);
        logs.next_seq += 1;
        let seq = logs.next_seq;
        let Some(log) = logs.channels.get_mut(channel) else {
            return positioned;
        };
        log.events.push_back(Kept {
            offset,
            seq,
            frame: positioned.clone(),
            except,
            at: now,
        });
        let mut dropped = 0;
        while log.events.len() > self.settings.max_events {
            if let Some(k) = log.events.pop_front() {
                dropped += k.frame.len();
            }
        }
        logs.bytes = (logs.bytes + positioned.len()).saturating_sub(dropped);
        logs.order.push_back((channel.to_string(), seq));
        while logs.bytes > self.settings.max_bytes {
            if !logs.drop_oldest() {
                break;
            }
        }
        positioned
    }

    /// The events after `from` on `channel`, for a subscriber that resumes there, and the
    /// position it is at after them. A client without a position (or on a channel without
    /// events yet) gets the current position, the log being started for it when needed.
    pub fn replay(&self, channel: &str, from: &Resume, now: Instant) -> Replay {
        let mut logs = self.logs.lock();
        self.expire(&mut logs, now);
        if !logs.channels.contains_key(channel) {
            let cost = LOG_OVERHEAD + channel.len();
            if logs.bytes + cost > self.settings.max_bytes {
                return Replay {
                    frames: Vec::new(),
                    outcome: Err(Failure::HistoryLost),
                    position: None,
                };
            }
            logs.bytes += cost;
            logs.channels.insert(
                channel.to_string(),
                Log {
                    epoch: new_epoch(),
                    last: 0,
                    events: VecDeque::new(),
                    touched: now,
                },
            );
        }
        let Some(log) = logs.channels.get(channel) else {
            return Replay {
                frames: Vec::new(),
                outcome: Err(Failure::HistoryLost),
                position: None,
            };
        };
        let current = Position {
            epoch: log.epoch.clone(),
            offset: log.last,
        };
        let p = match resume_point(from, &current) {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        // The first event the client lacks must still be kept.
        let oldest = log.events.front().map_or(log.last + 1, |k| k.offset);
        if p.offset + 1 < oldest {
            return Replay::failed(Failure::WindowExceeded, current);
        }
        let mut frames = Vec::new();
        for k in log.events.iter().filter(|k| k.offset > p.offset) {
            if from.socket_id.is_none() || k.except != from.socket_id {
                frames.push(k.frame.clone());
            }
        }
        let n = frames.len();
        Replay {
            frames,
            outcome: Ok(n),
            position: Some(current),
        }
    }

    /// Bytes the app's logs hold now.
    pub fn bytes(&self) -> usize {
        self.logs.lock().bytes
    }

    /// Drops events older than the TTL, and logs left empty and untouched for as long.
    fn expire(&self, logs: &mut Logs, now: Instant) {
        let ttl = self.settings.ttl;
        while let Some((channel, seq)) = logs.order.front() {
            let Some(log) = logs.channels.get_mut(channel) else {
                logs.order.pop_front();
                continue;
            };
            match log.events.front() {
                Some(k) if k.seq == *seq => {
                    if now.duration_since(k.at) < ttl {
                        break;
                    }
                    let size = k.frame.len();
                    log.events.pop_front();
                    logs.bytes = logs.bytes.saturating_sub(size);
                    logs.order.pop_front();
                }
                // Already dropped by the count bound.
                _ => {
                    logs.order.pop_front();
                }
            }
        }
        let before = logs.channels.len();
        let mut freed = 0;
        logs.channels.retain(|name, log| {
            let keep = !log.events.is_empty() || now.duration_since(log.touched) < ttl;
            if !keep {
                freed += LOG_OVERHEAD + name.len();
            }
            keep
        });
        if logs.channels.len() != before {
            logs.bytes = logs.bytes.saturating_sub(freed);
        }
    }
}

/// The checks every resume starts with, against a history now at `current`: the client's
/// position when it belongs to this history, or the answer it gets at once (no position yet:
/// nothing to replay; another epoch or an offset never given: `history_lost`).
fn resume_point<'a>(from: &'a Resume, current: &Position) -> Result<&'a Position, Replay> {
    let Some(p) = &from.position else {
        return Err(Replay {
            frames: Vec::new(),
            outcome: Ok(0),
            position: Some(current.clone()),
        });
    };
    if p.epoch != current.epoch || p.offset > current.offset {
        return Err(Replay::failed(Failure::HistoryLost, current.clone()));
    }
    Ok(p)
}

impl Replay {
    /// A failed resume; the client goes on from `current`.
    fn failed(failure: Failure, current: Position) -> Replay {
        Replay {
            frames: Vec::new(),
            outcome: Err(failure),
            position: Some(current),
        }
    }
}

/// What a resume from `from` gets from a channel's shared history, read (by
/// `SharedHistory::read`) after the client's offset: the same rules as
/// `ChannelHistory::replay`, the frames given their positions.
pub fn replay_shared(log: &SharedLog, from: &Resume) -> Replay {
    let current = Position {
        epoch: log.epoch.clone(),
        offset: log.last,
    };
    let p = match resume_point(from, &current) {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let missed = log.last - p.offset;
    let after: Vec<_> = log.events.iter().filter(|k| k.offset > p.offset).collect();
    // Every event the client lacks must still be kept, and be there.
    if p.offset + 1 < log.oldest || u64::try_from(after.len()).unwrap_or(u64::MAX) != missed {
        return Replay::failed(Failure::WindowExceeded, current);
    }
    let frames: Vec<Bytes> = after
        .into_iter()
        .filter(|k| from.socket_id.is_none() || k.except != from.socket_id)
        .map(|k| with_position(&k.frame, &log.epoch, k.offset))
        .collect();
    let n = frames.len();
    Replay {
        frames,
        outcome: Ok(n),
        position: Some(current),
    }
}

impl Logs {
    /// Drops the app's oldest kept event; `false` when none is left.
    fn drop_oldest(&mut self) -> bool {
        while let Some((channel, seq)) = self.order.pop_front() {
            let Some(log) = self.channels.get_mut(&channel) else {
                continue;
            };
            if log.events.front().is_some_and(|k| k.seq == seq) {
                if let Some(k) = log.events.pop_front() {
                    self.bytes = self.bytes.saturating_sub(k.frame.len());
                }
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn history(max_events: usize, ttl: u64, max_bytes: usize) -> ChannelHistory {
        ChannelHistory::new(HistorySettings {
            channels: vec!["chat-*".into()],
            max_events,
            ttl: Duration::from_secs(ttl),
            max_bytes,
        })
    }

    use crate::protocol::message;

    fn frame(n: u32) -> Bytes {
        message::channel_event("e", "chat-1", &n.to_string())
    }

    fn from(p: &Position) -> Resume {
        Resume {
            position: Some(p.clone()),
            socket_id: None,
        }
    }

    #[test]
    fn positions_increase_and_a_resume_gets_what_it_missed_in_order() {
        let h = history(100, 120, 1 << 20);
        let t = Instant::now();
        assert!(h.covers("chat-1") && !h.covers("news"));
        let start = h.replay(
            "chat-1",
            &Resume {
                position: None,
                socket_id: None,
            },
            t,
        );
        assert_eq!(start.outcome, Ok(0));
        let at0 = start.position.unwrap_or_else(|| panic!("a position"));
        assert_eq!(at0.offset, 0);
        let f1 = h.record("chat-1", &frame(1), None, t);
        let text = std::str::from_utf8(&f1).unwrap_or_default();
        assert!(
            text.ends_with(&format!(
                ",\"resound_position\":{{\"epoch\":\"{}\",\"offset\":1}}}}",
                at0.epoch
            )),
            "{text}"
        );
        let f2 = h.record("chat-1", &frame(2), None, t);
        let r = h.replay("chat-1", &from(&at0), t);
        assert_eq!(r.frames, vec![f1, f2.clone()]);
        assert_eq!(r.outcome, Ok(2));
        assert_eq!(r.position.as_ref().map(|p| p.offset), Some(2));
        let at1 = Position {
            epoch: at0.epoch.clone(),
            offset: 1,
        };
        assert_eq!(h.replay("chat-1", &from(&at1), t).frames, vec![f2]);
    }

    #[test]
    fn a_resume_beyond_the_window_or_from_another_epoch_fails() {
        let h = history(2, 120, 1 << 20);
        let t = Instant::now();
        for n in 1..=3 {
            h.record("chat-1", &frame(n), None, t);
        }
        let epoch = h
            .replay(
                "chat-1",
                &Resume {
                    position: None,
                    socket_id: None,
                },
                t,
            )
            .position
            .map(|p| p.epoch)
            .unwrap_or_default();
        let at = |offset| Position {
            epoch: epoch.clone(),
            offset,
        };
        assert_eq!(
            h.replay("chat-1", &from(&at(0)), t).outcome,
            Err(Failure::WindowExceeded)
        );
        assert_eq!(h.replay("chat-1", &from(&at(1)), t).outcome, Ok(2));
        assert_eq!(
            h.replay("chat-1", &from(&at(9)), t).outcome,
            Err(Failure::HistoryLost)
        );
        let other = Position {
            epoch: "x".into(),
            offset: 1,
        };
        assert_eq!(
            h.replay("chat-1", &from(&other), t).outcome,
            Err(Failure::HistoryLost)
        );
        // Past the TTL every event is gone, and so is the idle log: its epoch is unknown.
        let later = t + Duration::from_secs(121);
        assert_eq!(
            h.replay("chat-1", &from(&at(1)), later).outcome,
            Err(Failure::HistoryLost)
        );
    }

    #[test]
    fn events_that_skipped_the_previous_connection_are_not_replayed_to_it() {
        let h = history(10, 120, 1 << 20);
        let t = Instant::now();
        let me = SocketId::random();
        let at0 = h
            .replay(
                "chat-1",
                &Resume {
                    position: None,
                    socket_id: None,
                },
                t,
            )
            .position
            .unwrap_or_else(|| panic!("a position"));
        h.record("chat-1", &frame(1), Some(me), t);
        let f2 = h.record("chat-1", &frame(2), None, t);
        let r = h.replay(
            "chat-1",
            &Resume {
                position: Some(at0),
                socket_id: Some(me),
            },
            t,
        );
        assert_eq!((r.frames, r.outcome), (vec![f2], Ok(1)));
    }

    #[test]
    fn the_app_bound_drops_its_oldest_events_first() {
        let h = history(100, 120, 1000);
        let t = Instant::now();
        for n in 0..50 {
            h.record(
                if n % 2 == 0 { "chat-1" } else { "chat-2" },
                &frame(n),
                None,
                t,
            );
        }
        assert!(h.bytes() <= 1000, "{}", h.bytes());
        let at = h
            .replay(
                "chat-2",
                &Resume {
                    position: None,
                    socket_id: None,
                },
                t,
            )
            .position
            .unwrap_or_else(|| panic!("a position"));
        // The newest event of chat-2 is still there.
        let before = Position {
            epoch: at.epoch,
            offset: at.offset - 1,
        };
        assert_eq!(h.replay("chat-2", &from(&before), t).outcome, Ok(1));
    }

    #[test]
    fn a_shared_history_resumes_by_the_same_rules() {
        use crate::cluster::KeptEvent;
        let me = SocketId::random();
        let log = SharedLog {
            epoch: "ab".into(),
            last: 4,
            oldest: 2,
            events: vec![
                KeptEvent {
                    offset: 3,
                    frame: frame(3),
                    except: Some(me),
                },
                KeptEvent {
                    offset: 4,
                    frame: frame(4),
                    except: None,
                },
            ],
        };
        let at = |offset| Position {
            epoch: "ab".into(),
            offset,
        };
        let r = replay_shared(&log, &from(&at(2)));
        assert_eq!(r.outcome, Ok(2));
        assert_eq!(r.frames[1], with_position(&frame(4), "ab", 4));
        assert_eq!(r.position, Some(at(4)));
        let mine = Resume {
            position: Some(at(2)),
            socket_id: Some(me),
        };
        assert_eq!(replay_shared(&log, &mine).outcome, Ok(1));
        assert_eq!(
            replay_shared(&log, &from(&at(0))).outcome,
            Err(Failure::WindowExceeded)
        );
        // The read found fewer events than were missed (trimmed meanwhile).
        let short = SharedLog {
            events: log.events[1..].to_vec(),
            ..log.clone()
        };
        assert_eq!(
            replay_shared(&short, &from(&at(2))).outcome,
            Err(Failure::WindowExceeded)
        );
        assert_eq!(
            replay_shared(&log, &from(&at(5))).outcome,
            Err(Failure::HistoryLost)
        );
        let other = Position {
            epoch: "cd".into(),
            offset: 1,
        };
        assert_eq!(
            replay_shared(&log, &from(&other)).outcome,
            Err(Failure::HistoryLost)
        );
        assert_eq!(replay_shared(&log, &from(&at(4))).outcome, Ok(0));
    }
}
