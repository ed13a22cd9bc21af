//! A room as one worker sees it: the ring, the live cursor every viewer of the room follows, and the
//! payloads kept for replays.
//!
//! A turn of a worker reads each ring with viewers in two parts: [`RoomFeed::replay`] walks the viewers
//! that joined or switched through the cached GOP, and [`RoomFeed::read_live`] reads what is new once and
//! sends it to every viewer, skipping to the newest keyframe when the worker fell [`MAX_LAG`] behind. A packet
//! goes from the ring into the socket's send buffer in one pass per viewer ([`deliver`]): numbered, protected
//! with the viewer's session key and written in place, with no queue, no poll of the session and no allocation.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::host::SessionHost;
use deadsfu_media::host::SessionKey;
use deadsfu_media::outbox::Outbox;
use shm_proto::ring::{CodecEntry, MediaKind, ReadOutcome, RingCursor, RingReader};
use shm_proto::{paths, RoomName};

use crate::splice::Pace;
use crate::viewer::{deliver, owes_report, RingPacket, Viewer};

/// How often a room without a ring file looks for one again.
pub(crate) const RING_RETRY: Duration = Duration::from_millis(100);
/// How often an open ring is checked for having been replaced, and told that someone reads it.
pub(crate) const RING_CHECK: Duration = Duration::from_millis(250);
/// Most packets read from one ring per loop turn, so one busy room cannot starve sockets and timers.
pub(crate) const READ_BUDGET: usize = 512;
/// Turn pace while a viewer's replay runs ([`replay_budget`] packets a turn).
pub(crate) const REPLAY_TURN: Duration = Duration::from_millis(1);
/// Pace of a replay: a cached GOP goes out to a joining viewer at about 4000 packets a second, far above any
/// stream's rate so the viewer catches up in a fraction of a second, yet in bursts the socket buffers on both
/// ends absorb: [`REPLAY_BUDGET`] packets a turn of [`REPLAY_TURN`], more when a turn took longer (a busy
/// worker), up to [`REPLAY_BURST`]. Without the catch-up a replay on a busy worker would crawl at a few
/// packets per long turn, barely faster than live, and send twice the GOP before it joined.
pub(crate) const REPLAY_BUDGET: usize = 4;
pub(crate) const REPLAY_BURST: usize = 32;
/// Payloads read live that a room keeps for replays: those from its newest keyframe on (less
/// [`KEYFRAME_MARGIN`] positions), and at most this many: about 5 s of a 1.5 Mbit/s stream, ~1.5 MB.
pub(crate) const RECENT_PAYLOADS: usize = 1024;
pub(crate) const KEYFRAME_MARGIN: u64 = 16;
/// A worker whose live feed of a room is this far behind the ring's writer (it was short of CPU) skips to the
/// newest keyframe: its viewers lose what lies between rather than watch ever older video.
pub(crate) const MAX_LAG: Duration = Duration::from_secs(1);

/// A ring's codec table as a worker last read it.
#[derive(Debug)]
pub(crate) struct CodecTable {
    pub(crate) entries: Vec<CodecEntry>,
    /// The ring's codec version these entries are of: it changes with the table.
    pub(crate) version: u64,
}

impl CodecTable {
    /// A table not read yet.
    pub(crate) fn unread() -> CodecTable {
        CodecTable { entries: Vec::new(), version: u64::MAX }
    }

    pub(crate) fn get(&self, ring_pt: u8) -> Option<&CodecEntry> {
        self.entries.iter().find(|e| e.pt == ring_pt)
    }
}

/// The payloads read live from a ring that a room keeps for replays, by ring position: a replay sends these
/// rather than a copy of its own, so viewers joining together share one copy of the GOP (in their RTX caches
/// too). Positions are contiguous.
#[derive(Default)]
pub(crate) struct RecentPayloads(VecDeque<(u64, Arc<[u8]>)>);

impl RecentPayloads {
    /// Keeps the payload read at `pos`: at most [`RECENT_PAYLOADS`].
    pub(crate) fn push(&mut self, pos: u64, payload: Arc<[u8]>) {
        if self.0.back().is_some_and(|(last, _)| *last + 1 != pos) {
            // Lapped and resynced: keep the positions contiguous.
            self.0.clear();
        }
        if self.0.len() == RECENT_PAYLOADS {
            self.0.pop_front();
        }
        self.0.push_back((pos, payload));
    }

    /// The payload read live at ring position `pos`, if it is still kept.
    pub(crate) fn get(&self, pos: u64) -> Option<Arc<[u8]>> {
        let first = self.0.front()?.0;
        let (at, payload) = self.0.get(usize::try_from(pos.checked_sub(first)?).ok()?)?;
        (*at == pos).then(|| payload.clone())
    }

    /// Forgets what lies before `pos`.
    pub(crate) fn keep_from(&mut self, pos: u64) {
        while self.0.front().is_some_and(|(at, _)| *at < pos) {
            self.0.pop_front();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// Payload bytes kept (with each allocation's two reference counts).
    pub(crate) fn bytes(&self) -> usize {
        self.0.iter().map(|(_, p)| p.len() + 16).sum()
    }
}

/// The time of a pump turn, as delivery needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Moment {
    pub(crate) now: Instant,
    /// Nanoseconds since the worker started: the splicers' clock.
    pub(crate) ns: u64,
}

impl Moment {
    /// Milliseconds since the worker started, wrapping (every 49 days): for ages of a few seconds.
    pub(crate) fn ms(&self) -> u32 {
        (self.ns / 1_000_000) as u32
    }
}

/// What one ring's live read did.
#[derive(Default)]
pub(crate) struct LiveRead {
    /// Packets written to viewers.
    pub(crate) delivered: u64,
    /// Times the feed was too far behind and skipped to the newest keyframe.
    pub(crate) lag_skips: u64,
    /// The read stopped at [`READ_BUDGET`] with more to read.
    pub(crate) backlog: bool,
}

/// A room as one worker sees it: the ring, the live cursor every viewer follows, and the viewers.
pub(crate) struct RoomFeed {
    pub(crate) path: PathBuf,
    pub(crate) reader: Option<RingReader>,
    pub(crate) cursor: RingCursor,
    pub(crate) codecs: CodecTable,
    pub(crate) viewers: Vec<SessionKey>,
    /// The viewers whose replay runs: a turn looks at these only, not at every viewer.
    pub(crate) replaying: Vec<SessionKey>,
    pub(crate) recent: RecentPayloads,
    /// The packets of a live turn, read before they are sent (kept for its allocation).
    pub(crate) turn: Vec<RingPacket>,
    pub(crate) next_open: Instant,
    /// Failed opens in a row: the retry waits 5 ms after the first, doubling up to [`RING_RETRY`], since a
    /// new room's ring appears only once signaling told ingest of the viewer it accepted.
    pub(crate) open_failures: u32,
    pub(crate) next_check: Instant,
    /// The worker index whose wake-up bit this feed set in the ring.
    pub(crate) wake_bit: Option<u32>,
}

impl Drop for RoomFeed {
    fn drop(&mut self) {
        if let (Some(reader), Some(index)) = (&self.reader, self.wake_bit) {
            reader.unwant_wake(index);
        }
    }
}

/// Most packets a replay sends this turn, `since` the last: [`REPLAY_BUDGET`] per [`REPLAY_TURN`], at most
/// [`REPLAY_BURST`].
pub(crate) fn replay_budget(since: Duration) -> usize {
    let turns = (since.as_micros() / REPLAY_TURN.as_micros()).max(1);
    usize::try_from(turns).unwrap_or(usize::MAX).saturating_mul(REPLAY_BUDGET).min(REPLAY_BURST)
}

/// The feed of `room` in `rooms`, made (and its ring looked for) if there was none.
pub(crate) fn feed<'a>(
    rooms: &'a mut HashMap<RoomName, RoomFeed>,
    runtime_dir: &std::path::Path,
    index: u32,
    room: &RoomName,
    now: Instant,
    now_ms: u64,
) -> &'a mut RoomFeed {
    let feed = rooms.entry(room.clone()).or_insert_with(|| RoomFeed {
        path: paths::ring(runtime_dir, room),
        reader: None,
        cursor: RingCursor::at(0),
        codecs: CodecTable::unread(),
        viewers: Vec::new(),
        replaying: Vec::new(),
        recent: RecentPayloads::default(),
        turn: Vec::new(),
        next_open: now,
        open_failures: 0,
        next_check: now,
        wake_bit: None,
    });
    feed.open(now, now_ms, index);
    feed
}

impl RoomFeed {
    /// Makes sure the ring is open and current, and that worker `index` is woken when it gets packets; false
    /// while the room has no ring yet.
    pub(crate) fn open(&mut self, now: Instant, now_ms: u64, index: u32) -> bool {
        if now >= self.next_check {
            self.next_check = now + RING_CHECK;
            if let Some(reader) = &self.reader {
                if reader.is_replaced() {
                    tracing::debug!(path = %self.path.display(), "ring replaced; reopening");
                    self.reader = None;
                } else {
                    reader.heartbeat(now_ms);
                    // Again and again: another worker sharing the bit (index + 64) may have cleared it.
                    reader.want_wake(index);
                }
            }
        }
        if self.reader.is_none() {
            if now < self.next_open {
                return false;
            }
            let backoff = Duration::from_millis(5).saturating_mul(1 << self.open_failures.min(5));
            self.next_open = now + backoff.min(RING_RETRY);
            match RingReader::open(&self.path) {
                Ok(reader) => {
                    self.open_failures = 0;
                    tracing::debug!(path = %self.path.display(), "ring opened");
                    self.cursor = RingCursor::at(reader.head());
                    self.recent.clear();
                    self.codecs = CodecTable::unread();
                    reader.heartbeat(now_ms);
                    reader.want_wake(index);
                    self.wake_bit = Some(index);
                    // Viewers waiting for this room want a keyframe now.
                    reader.request_keyframe();
                    self.reader = Some(reader);
                }
                Err(e) => {
                    self.open_failures = self.open_failures.saturating_add(1);
                    tracing::trace!(error = %e, path = %self.path.display(), "ring not available");
                    return false;
                }
            }
        }
        let reader = self.reader.as_ref().expect("opened above");
        let version = reader.codecs_version();
        if version != self.codecs.version {
            self.codecs = CodecTable { entries: reader.codecs(), version };
        }
        true
    }

    /// Starts a viewer that just connected or arrived: a replay from the newest cached keyframe it can
    /// decode, or, without one, live from the next packet with a keyframe requested.
    pub(crate) fn start(&mut self, key: SessionKey, viewer: &mut Viewer, buf: &mut [u8]) {
        viewer.replay = None;
        self.replaying.retain(|k| *k != key);
        let Some(reader) = &self.reader else { return };
        let live_pos = self.cursor.position();
        // The viewer's favourite video codec of the room: the first of the codec table it negotiated. A slate
        // carries several, and its keyframes of all of them share a moment; replay starts in the favourite.
        let table = &self.codecs;
        let video: Vec<u8> = table.entries.iter().filter(|e| e.kind == MediaKind::Video).map(|e| e.pt).collect();
        let favourite = video.into_iter().find(|pt| viewer.pts.get(table, *pt).is_some());
        let mut fallback = None;
        for pos in reader.keyframes().into_iter().rev().filter(|&p| p < live_pos) {
            let ReadOutcome::Packet { meta, .. } = reader.read(pos, buf) else { continue };
            if Some(meta.pt) == favourite {
                fallback = Some(pos);
                break;
            }
            if fallback.is_none() && viewer.pts.get(table, meta.pt).is_some() {
                fallback = Some(pos);
            }
        }
        match fallback {
            Some(pos) => {
                viewer.replay = Some(RingCursor::at(pos));
                self.replaying.push(key);
            }
            None => reader.request_keyframe(),
        }
    }

    /// The packet at ring position `pos`, for a resend, if the ring still holds it: the payload kept for
    /// replays, or a copy read from the ring.
    pub(crate) fn packet_at(&self, pos: u64, buf: &mut [u8]) -> Option<RingPacket> {
        let ReadOutcome::Packet { meta, len } = self.reader.as_ref()?.read(pos, buf) else { return None };
        let payload = self.recent.get(pos).unwrap_or_else(|| Arc::from(&buf[..len]));
        Some(RingPacket { pos, meta, payload })
    }

    /// Detaches a viewer that leaves the room.
    pub(crate) fn remove(&mut self, key: SessionKey) {
        self.viewers.retain(|k| *k != key);
        self.replaying.retain(|k| *k != key);
    }

    /// The replays' turn: each replaying viewer gets up to `budget` packets of the cached GOP, walking towards
    /// the live position of this turn, which it soon reaches (it is far faster than any stream); then it
    /// joins live at exactly the next packet. Live packets are skipped for it meanwhile. Returns the packets
    /// written.
    pub(crate) fn replay(
        &mut self,
        host: &mut SessionHost<Viewer>,
        buf: &mut [u8],
        at: Moment,
        budget: usize,
        out: &mut dyn Outbox,
    ) -> u64 {
        let reader = self.reader.as_ref().expect("replay on an open feed");
        let live_pos = self.cursor.position();
        let (codecs, recent) = (&self.codecs, &self.recent);
        let mut replayed = 0u64;
        self.replaying.retain(|&key| {
            let Some(session) = host.get_mut(key) else { return false };
            let Some(mut cursor) = session.app.replay.take() else { return false };
            let mut sent = 0;
            let done = loop {
                if sent == budget {
                    break false;
                }
                if cursor.position() >= live_pos {
                    break true;
                }
                let Some((meta, len)) = cursor.next(reader, buf) else {
                    // The ring lost the packets: join live and wait for a keyframe.
                    session.app.video_choice = None;
                    break true;
                };
                let pos = cursor.last_position().expect("a packet was just read");
                if pos >= live_pos {
                    // Lapped and resynced past the live position: live delivers from here.
                    session.app.video_choice = None;
                    break true;
                }
                if meta.kind == MediaKind::Video {
                    let payload = recent.get(pos).unwrap_or_else(|| Arc::from(&buf[..len]));
                    if deliver(session, codecs, &RingPacket { pos, meta, payload }, at, Pace::Replay, out) {
                        sent += 1;
                    }
                }
            };
            replayed += sent as u64;
            if !done {
                session.app.replay = Some(cursor);
            }
            if owes_report(session, at.now) {
                host.touch(key);
            }
            !done
        });
        replayed
    }

    /// The live turn: reads what is new in the ring (at most [`READ_BUDGET`] packets) once, then sends it to
    /// every viewer, viewer by viewer: the packets of a frame that arrived together leave for one viewer back
    /// to back, which the sockets send as one GSO message. A feed that fell [`MAX_LAG`] behind the writer
    /// (packets that arrived before `stale_before`, in Unix ns) skips to the newest keyframe.
    pub(crate) fn read_live(
        &mut self,
        host: &mut SessionHost<Viewer>,
        buf: &mut [u8],
        at: Moment,
        stale_before: u64,
        out: &mut dyn Outbox,
    ) -> LiveRead {
        let reader = self.reader.as_ref().expect("live read on an open feed");
        let mut read = LiveRead::default();
        let mut turn = std::mem::take(&mut self.turn);
        for n in 0..=READ_BUDGET {
            if n == READ_BUDGET {
                read.backlog = true;
                break;
            }
            let Some((meta, len)) = self.cursor.next(reader, buf) else { break };
            let pos = self.cursor.last_position().expect("a packet was just read");
            if meta.arrival_unix_ns < stale_before {
                if let Some(keyframe) = reader.latest_keyframe().filter(|&k| k > pos) {
                    tracing::warn!(ring = %self.path.display(), skipped = keyframe - pos, "fell over {MAX_LAG:?} \
                        behind the ring (short of CPU?); skipping to the newest keyframe");
                    self.cursor.skip_to(keyframe);
                    read.lag_skips += 1;
                    continue;
                }
            }
            let payload: Arc<[u8]> = Arc::from(&buf[..len]);
            self.recent.push(pos, payload.clone());
            turn.push(RingPacket { pos, meta, payload });
        }
        if !turn.is_empty() {
            for &key in &self.viewers {
                let Some(session) = host.get_mut(key) else { continue };
                for packet in &turn {
                    if deliver(session, &self.codecs, packet, at, Pace::Live, out) {
                        read.delivered += 1;
                    }
                }
                if owes_report(session, at.now) {
                    host.touch(key);
                }
            }
        }
        turn.clear();
        self.turn = turn;
        // Replays start at the newest keyframe (of the viewer's codec: a slate's keyframes of its codecs are
        // written together, a few positions apart), so older payloads need not be kept.
        if let Some(keyframe) = reader.latest_keyframe() {
            self.recent.keep_from(keyframe.saturating_sub(KEYFRAME_MARGIN));
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_keeps_its_pace_on_a_busy_worker() {
        assert_eq!(replay_budget(Duration::ZERO), REPLAY_BUDGET);
        assert_eq!(replay_budget(REPLAY_TURN), REPLAY_BUDGET);
        assert_eq!(replay_budget(REPLAY_TURN * 3), 3 * REPLAY_BUDGET);
        assert_eq!(replay_budget(Duration::from_millis(30)), REPLAY_BURST);
        assert_eq!(replay_budget(Duration::from_secs(3600)), REPLAY_BURST);
    }

    #[test]
    fn replays_find_the_payloads_read_live_by_position() {
        let mut recent = RecentPayloads::default();
        assert!(recent.get(5).is_none());
        for pos in 10..20u64 {
            recent.push(pos, Arc::from(&[pos as u8][..]));
        }
        let p = recent.get(13).expect("kept");
        assert_eq!(&*p, &[13u8]);
        assert!(Arc::ptr_eq(&p, &recent.get(13).unwrap()), "the same allocation, not a copy");
        assert!(recent.get(9).is_none(), "older than kept");
        assert!(recent.get(20).is_none(), "not read yet");
        recent.keep_from(15);
        assert!(recent.get(14).is_none() && recent.get(15).is_some());
        // A gap in positions (the feed lapped and resynced) starts over.
        recent.push(30, Arc::from(&[30u8][..]));
        assert!(recent.get(19).is_none() && recent.get(30).is_some());
    }
}
