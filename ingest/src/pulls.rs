//! An edge's pulls: which rooms are pulled from the upstream, when a failed pull is tried again, when a pull
//! ends.
//!
//! A watched room without a publisher is pulled; a failed pull is retried with backoff (`retry_delay`)
//! while the slate stands in; a pull ends [`Pulls::grace`] after the room's last viewer left, or at once when
//! a publisher takes the room over. At most `max` rooms are pulled at once.
//!
//! This is the decision only: the pulls themselves (a WHEP client each, [`crate::upstream`]) are run by the
//! shell, which [`Pulls::take_commands`] tells what to start and stop and which hands back what they report
//! through [`Pulls::on_event`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use deadsfu_media::env::Random;
use deadsfu_media::limits::Refusals;
use shm_proto::control::{UpstreamMetrics, UpstreamState, UpstreamStatus};
use shm_proto::RoomName;

use crate::room::{Room, Source};
use crate::slate::Slate;
use crate::upstream::{FailureKind, PullEvent};

/// Wait before the first retry of a failed pull; it doubles with each failure in a row up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// What the shell must do about the pulls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullCommand {
    /// Start pulling `room`; its events are reported with `id`.
    Start { id: u64, room: RoomName },
    /// End pull `id` (its upstream session is deleted); nothing it reports after this counts.
    Stop { id: u64 },
    /// Ask the upstream of pull `id` for a keyframe.
    RequestKeyframe { id: u64 },
}

/// A running pull.
struct Active {
    id: u64,
    /// Its codecs are filled when the pull connects.
    source: Source,
    /// Media has arrived.
    receiving: bool,
}

/// A room's record of its pulls: the failures in a row that wait for a retry.
#[derive(Default)]
struct Record {
    failures: u32,
    last_error: Option<String>,
    retry_at: Option<Instant>,
    /// Failed attempts by kind since start.
    failure_counts: BTreeMap<FailureKind, u64>,
    /// When the room stopped being watched (its pull ends a grace period later).
    unwatched_since: Option<Instant>,
}

/// How long to wait before the next attempt after `failures` failures in a row.
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

/// An edge's pulls, by room.
pub struct Pulls {
    /// The upstream's base URL, for messages.
    upstream: String,
    /// How long a pull outlives the room's last viewer.
    pub grace: Duration,
    /// Pulls at once.
    max: usize,
    active: HashMap<RoomName, Active>,
    rooms_by_id: HashMap<u64, RoomName>,
    records: HashMap<RoomName, Record>,
    next_id: u64,
    commands: Vec<PullCommand>,
}

impl Pulls {
    pub fn new(upstream: String, grace: Duration, max: usize) -> Pulls {
        Pulls {
            upstream,
            grace,
            max,
            active: HashMap::new(),
            rooms_by_id: HashMap::new(),
            records: HashMap::new(),
            next_id: 1,
            commands: Vec::new(),
        }
    }

    /// Pulls running (connecting or receiving).
    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// True if `room` is being pulled.
    pub fn pulls(&self, room: &RoomName) -> bool {
        self.active.contains_key(room)
    }

    /// What the shell must do, in order.
    pub fn take_commands(&mut self) -> impl Iterator<Item = PullCommand> + '_ {
        self.commands.drain(..)
    }

    /// Asks `room`'s upstream for a keyframe if the pull delivers media; false if it does not.
    pub fn request_keyframe(&mut self, room: &RoomName) -> bool {
        match self.active.get(room) {
            Some(a) if a.receiving => {
                self.commands.push(PullCommand::RequestKeyframe { id: a.id });
                true
            }
            _ => false,
        }
    }

    /// True if `room`'s pull delivers media.
    pub fn receiving(&self, room: &RoomName) -> bool {
        self.active.get(room).is_some_and(|a| a.receiving)
    }

    /// Ends the room's pull, if it has one; true if it had one.
    pub fn end(&mut self, name: &RoomName, rooms: &mut HashMap<RoomName, Room>) -> bool {
        let Some(active) = self.active.remove(name) else { return false };
        self.rooms_by_id.remove(&active.id);
        self.commands.push(PullCommand::Stop { id: active.id });
        if let Some(room) = rooms.get_mut(name) {
            room.source_ended();
        }
        true
    }

    /// Ends every pull (ingest is stopping).
    pub fn end_all(&mut self, rooms: &mut HashMap<RoomName, Room>) {
        let names: Vec<RoomName> = self.active.keys().cloned().collect();
        for name in names {
            self.end(&name, rooms);
        }
    }

    /// The room is gone: so is its record.
    pub fn forget(&mut self, name: &RoomName) {
        self.records.remove(name);
    }

    /// A housekeeping turn: starts pulls for watched rooms nobody publishes to (when no retry is pending and
    /// fewer than `max` run), and ends pulls whose room has had no viewer for the grace period or got a
    /// publisher.
    pub fn manage(
        &mut self,
        now: Instant,
        now_ms: u64,
        rooms: &mut HashMap<RoomName, Room>,
        draining: bool,
        refused: &mut Refusals,
        random: &mut Random,
    ) {
        let mut ended = Vec::new();
        for (name, room) in rooms.iter() {
            let wanted = room.publisher.is_none() && room.watched(now, now_ms);
            let pulling = self.active.contains_key(name);
            if wanted {
                let record = self.records.entry(name.clone()).or_default();
                record.unwatched_since = None;
                if pulling || draining || record.retry_at.is_some_and(|t| now < t) {
                    continue;
                }
                if self.active.len() >= self.max {
                    let reason = format!("this edge pulls its limit of {} rooms at once", self.max);
                    if record.last_error.as_deref() != Some(reason.as_str()) {
                        refused.count("pulls");
                        tracing::warn!(room = %name, "{reason}; the room waits on the slate");
                        record.last_error = Some(reason);
                    }
                    continue;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.active
                    .insert(name.clone(), Active { id, source: Source::new(name.clone(), random), receiving: false });
                self.rooms_by_id.insert(id, name.clone());
                self.commands.push(PullCommand::Start { id, room: name.clone() });
                tracing::info!(room = %name, upstream = %self.upstream, attempt = record.failures + 1, "pulling the room from the upstream");
            } else if !pulling {
                // Nobody waits for this room any more: no retries, no status (the failure counts stay).
                if let Some(record) = self.records.get_mut(name) {
                    record.failures = 0;
                    record.last_error = None;
                    record.retry_at = None;
                }
            } else {
                let record = self.records.entry(name.clone()).or_default();
                if room.publisher.is_some()
                    || now.duration_since(*record.unwatched_since.get_or_insert(now)) >= self.grace
                {
                    ended.push(name.clone());
                }
            }
        }
        for name in ended {
            self.end(&name, rooms);
            tracing::info!(room = %name, grace = ?self.grace, "no viewers left; pull ended");
        }
    }

    /// What pull `id` reported: its media goes into the room's ring like a publisher's.
    pub fn on_event(
        &mut self,
        now: Instant,
        unix_ns: u64,
        id: u64,
        event: PullEvent,
        rooms: &mut HashMap<RoomName, Room>,
        slate: &Slate,
    ) {
        // Events of a pull that was ended already are dropped.
        let Some(name) = self.rooms_by_id.get(&id).cloned() else { return };
        let (Some(room), Some(active)) = (rooms.get_mut(&name), self.active.get_mut(&name)) else { return };
        match event {
            PullEvent::Connected { codecs } => {
                active.source.codecs = codecs.into_iter().map(|e| (e.pt, e)).collect();
                tracing::debug!(room = %name, "pull connected to the upstream");
            }
            PullEvent::Packet(pkt) => {
                if !active.receiving {
                    active.receiving = true;
                    let record = self.records.entry(name.clone()).or_default();
                    record.failures = 0;
                    record.last_error = None;
                    tracing::info!(room = %name, "media arrives from the upstream");
                }
                room.write_live(&mut active.source, &pkt, slate, now, unix_ns);
            }
            PullEvent::Failed(failure) => {
                let record = self.records.entry(name.clone()).or_default();
                record.failures += 1;
                *record.failure_counts.entry(failure.kind).or_default() += 1;
                let delay = retry_delay(record.failures);
                record.retry_at = Some(now + delay);
                record.last_error = Some(failure.message.clone());
                tracing::warn!(room = %name, reason = %failure.message, kind = failure.kind.label(), retry_in = ?delay, "pull from the upstream failed");
                self.end(&name, rooms);
            }
        }
    }

    /// How the room's pull stands, if it is pulled or failed to be.
    pub fn status(&self, name: &RoomName) -> Option<UpstreamStatus> {
        let record = self.records.get(name);
        let failures = record.map_or(0, |r| r.failures);
        let state = match self.active.get(name) {
            Some(p) if p.receiving => UpstreamState::Pulling,
            Some(_) => UpstreamState::Connecting,
            None if failures > 0 => UpstreamState::Retrying,
            None => return None,
        };
        Some(UpstreamStatus {
            state,
            error: (state != UpstreamState::Pulling).then(|| record.and_then(|r| r.last_error.clone())).flatten(),
            failures,
        })
    }

    /// The last error of a room waiting for its pull (a failure, or the limit).
    pub fn last_error(&self, name: &RoomName) -> Option<&str> {
        self.records.get(name).and_then(|r| r.last_error.as_deref())
    }

    /// Per room pulled or failed to be: whether media arrives, failures by kind.
    pub fn metrics(&self, rooms: impl Iterator<Item = RoomName>) -> Vec<UpstreamMetrics> {
        rooms
            .filter_map(|name| {
                let failures = self.records.get(&name).map(|r| &r.failure_counts);
                if !self.active.contains_key(&name) && failures.is_none_or(|f| f.is_empty()) {
                    return None;
                }
                Some(UpstreamMetrics {
                    pulling: self.receiving(&name),
                    failures: failures.into_iter().flatten().map(|(k, n)| (*k, *n)).collect(),
                    room: name,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_ceiling() {
        let delays: Vec<u64> = (1..=7).map(|n| retry_delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
