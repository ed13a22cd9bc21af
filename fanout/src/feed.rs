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
use shm_proto::ring::{CodecEntry, LayerEntry, MediaKind, ReadOutcome, RingCursor, RingReader};
use shm_proto::{paths, RoomName};
use str0m::bwe::Bitrate;

use crate::prefetch::prefetch;
use crate::splice::Pace;
use crate::viewer::{deliver, owes_report, Replay, RingPacket, Viewer};

/// How often a room without a ring file looks for one again.
pub(crate) const RING_RETRY: Duration = Duration::from_millis(100);
/// How often an open ring is checked for having been replaced, and told that someone reads it.
pub(crate) const RING_CHECK: Duration = Duration::from_millis(250);
/// Most packets read from one ring per loop turn, so one busy room cannot starve sockets and timers.
pub(crate) const READ_BUDGET: usize = 512;
/// Turn pace while a viewer's replay runs ([`replay_budget`] packets a turn).
pub(crate) const REPLAY_TURN: Duration = Duration::from_millis(1);
/// Most packets a replay sends: [`REPLAY_BUDGET`] a turn of [`REPLAY_TURN`] (4000 a second), more when a turn
/// took longer (a busy worker), up to [`REPLAY_BURST`], and within its [`ReplayCredit`] (its pace in bytes,
/// a multiple of the room's bitrate). Without the catch-up a replay on a busy worker would crawl at a few
/// packets per long turn, barely faster than live, and send twice the GOP before it joined.
pub(crate) const REPLAY_BUDGET: usize = 4;
pub(crate) const REPLAY_BURST: usize = 32;
/// What a replay may send, as a multiple of the room's bitrate: [`DEFAULT_REPLAY_RATE_PERCENT`] unless configured
/// (`replay_rate_percent`). A joining viewer's link carries the replay and live audio until the viewer reaches
/// live video, so about this much of the link is what the fast start needs: at 200% a 1 Mbit/s room's replay
/// fits a 3 Mbit/s link with its audio and packet overheads and a margin. It catches up at `rate - 1` seconds
/// of stream a second: a viewer joining 3 s into a GOP is live 3 s later (its first frame comes at once).
pub const DEFAULT_REPLAY_RATE_PERCENT: u32 = 200;
/// What a replay counts for a packet besides its payload: RTP header and extensions, SRTP tag, UDP and IP.
pub(crate) const PACKET_OVERHEAD: u64 = 70;
/// The most a replay sends back to back: its credit holds this much of its rate (and one packet at least), or
/// what the time since its last turn earned when that was longer, up to [`REPLAY_CREDIT_GAP`].
pub(crate) const REPLAY_CREDIT_TIME: Duration = Duration::from_millis(5);
/// A busy worker's turns come further apart than [`REPLAY_CREDIT_TIME`]; a replay spends what the gap earned, or
/// it would fall below its rate (at 200% on a worker turning every 10 ms, to the stream's own rate: it would
/// never reach live). Beyond this gap (a stalled worker) the rest is forgone rather than sent in one burst.
pub(crate) const REPLAY_CREDIT_GAP: Duration = Duration::from_millis(50);
/// The slowest a replay goes, whatever the room's bitrate reads (nothing, while its publisher pauses): 256 kbit/s.
pub(crate) const REPLAY_MIN_RATE: u64 = 32_000;
/// A viewer's bandwidth estimate before it has joined a room with a known bitrate.
pub(crate) const INITIAL_ESTIMATE: Bitrate = Bitrate::kbps(1000);
/// The room's bitrate is measured over windows this long.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(2);

/// A room's bitrate as one worker reads it live, in bytes a second counted as [`ReplayCredit`] counts them:
/// the mean of the last two [`RATE_WINDOW`]s (a GOP's keyframe falls in one of them or the other).
#[derive(Default)]
pub(crate) struct StreamRate {
    window_start: Option<Instant>,
    bytes: u64,
    last: Option<u64>,
    previous: Option<u64>,
    /// Until a window closes: the rate of the GOP in the ring, read once by the first replay (see [`gop_rate`]).
    seed: Option<u64>,
}

impl StreamRate {
    /// Counts a packet of `payload` bytes read at `now`.
    pub(crate) fn add(&mut self, now: Instant, payload: usize) {
        self.window_start.get_or_insert(now);
        self.bytes += payload as u64 + PACKET_OVERHEAD;
    }

    /// Closes the window if it is over at `now`.
    pub(crate) fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else { return };
        let span = now.saturating_duration_since(start);
        if span >= RATE_WINDOW {
            self.previous = self.last;
            self.last = Some((self.bytes as u128 * 1_000_000 / span.as_micros()) as u64);
            self.bytes = 0;
            self.window_start = Some(now);
        }
    }

    /// Bytes a second, once a window closed or a seed was given.
    pub(crate) fn bytes_per_s(&self) -> Option<u64> {
        match (self.last, self.previous) {
            (Some(a), Some(b)) => Some((a + b) / 2),
            (Some(a), None) => Some(a),
            _ => self.seed,
        }
    }

    /// Forgets what it measured (a reopened ring).
    pub(crate) fn clear(&mut self) {
        *self = StreamRate::default();
    }
}

/// A replay's pace in a room of `stream` bytes a second: `percent` of it, [`REPLAY_MIN_RATE`] at least.
fn replay_rate(stream: u64, percent: u32) -> u64 {
    (stream.saturating_mul(u64::from(percent)) / 100).max(REPLAY_MIN_RATE)
}

/// Share of a viewer's estimated link (percent) its replay may take: the rest is for the live audio, the
/// estimate's error and the viewer's other traffic.
const REPLAY_LINK_SHARE: u64 = 85;
/// The slowest a replay goes against the stream (percent), whatever the estimate: a replay no faster than the
/// stream would never reach live. A link that does not carry this much does not carry the stream either.
const REPLAY_OVER_STREAM: u64 = 110;

/// A replay's pace (bytes a second): `rate` (the configured multiple of the `stream`), or less where the viewer's
/// `estimate` (bits a second) says its link carries less, but never below [`REPLAY_OVER_STREAM`] of the stream.
pub(crate) fn replay_pace(rate: u64, stream: u64, estimate: Option<u64>) -> u64 {
    let Some(estimate) = estimate else { return rate };
    let link = estimate / 8 * REPLAY_LINK_SHARE / 100;
    rate.min(link.max(stream * REPLAY_OVER_STREAM / 100)).max(REPLAY_MIN_RATE)
}

/// A replay's token bucket: bytes (payload and [`PACKET_OVERHEAD`]) it may send, filled at its rate and holding
/// at most [`REPLAY_CREDIT_TIME`] of it. A packet goes while the credit is positive, and may take it below zero.
pub(crate) struct ReplayCredit {
    bytes_per_s: u64,
    credit: i64,
    at: Instant,
}

impl ReplayCredit {
    /// Full at `now`: the replay's first packets go at once.
    pub(crate) fn new(bytes_per_s: u64, now: Instant) -> ReplayCredit {
        let mut credit = ReplayCredit { bytes_per_s, credit: 0, at: now };
        credit.credit = credit.cap();
        credit
    }

    /// Bytes the rate earns in `d`.
    fn earned(&self, d: Duration) -> i64 {
        (self.bytes_per_s as u128 * d.as_micros() / 1_000_000).min(i64::MAX as u128) as i64
    }

    fn cap(&self) -> i64 {
        self.earned(REPLAY_CREDIT_TIME).max(1500)
    }

    /// Adds what the time since the last refill earned.
    pub(crate) fn refill(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.at);
        let cap = self.cap().max(self.earned(gap.min(REPLAY_CREDIT_GAP)));
        self.credit = self.credit.saturating_add(self.earned(gap)).min(cap);
        self.at = now;
    }

    pub(crate) fn may_send(&self) -> bool {
        self.credit > 0
    }

    pub(crate) fn spend(&mut self, payload: usize) {
        self.credit -= payload as i64 + PACKET_OVERHEAD as i64;
    }

    /// From now on fills at `bytes_per_s` (the room's bitrate measured anew).
    pub(crate) fn set_rate(&mut self, bytes_per_s: u64) {
        self.bytes_per_s = bytes_per_s;
    }
}

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
    /// The room's bitrate, measured from what is read live: a replay's pace is `replay_rate_percent` of it.
    pub(crate) rate: StreamRate,
    pub(crate) replay_rate_percent: u32,
    /// The packets of a live turn, read before they are sent (kept for its allocation).
    pub(crate) turn: Vec<RingPacket>,
    pub(crate) next_open: Instant,
    /// Failed opens in a row: the retry waits 5 ms after the first, doubling up to [`RING_RETRY`], since a
    /// new room's ring appears only once signaling told ingest of the viewer it accepted.
    pub(crate) open_failures: u32,
    pub(crate) next_check: Instant,
    /// The worker index whose wake-up bit this feed set in the ring.
    pub(crate) wake_bit: Option<u32>,
    /// The room's simulcast layers, as the ring's layer table last said, and that table's version.
    pub(crate) layers: Vec<LayerEntry>,
    layers_version: u64,
}

impl Drop for RoomFeed {
    fn drop(&mut self) {
        if let (Some(reader), Some(index)) = (&self.reader, self.wake_bit) {
            reader.unwant_wake(index);
        }
    }
}

/// The bitrate of the ring's packets from `from` up to `to` (the GOP a replay starts in), in bytes a second as a
/// replay counts them: for a replay that starts before its feed has measured the room. Over 100 ms at least: a
/// GOP that has barely begun (its keyframe, a burst) reads high, which only makes its short replay quicker.
fn gop_rate(reader: &RingReader, from: u64, to: u64, buf: &mut [u8]) -> u64 {
    let (mut bytes, mut first, mut last) = (0u64, None, 0u64);
    for pos in from..to {
        if let ReadOutcome::Packet { meta, len } = reader.read(pos, buf) {
            bytes += len as u64 + PACKET_OVERHEAD;
            first.get_or_insert(meta.arrival_unix_ns);
            last = meta.arrival_unix_ns;
        }
    }
    let span_ns = last.saturating_sub(first.unwrap_or(last)).max(100_000_000);
    (u128::from(bytes) * 1_000_000_000 / u128::from(span_ns)) as u64
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
    replay_rate_percent: u32,
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
        rate: StreamRate::default(),
        replay_rate_percent,
        turn: Vec::new(),
        next_open: now,
        open_failures: 0,
        next_check: now,
        wake_bit: None,
        layers: Vec::new(),
        layers_version: 0,
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
                    if reader.layers_version() != self.layers_version {
                        self.layers_version = reader.layers_version();
                        self.layers = reader.layers();
                    }
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
                    self.rate.clear();
                    self.codecs = CodecTable::unread();
                    self.layers_version = reader.layers_version();
                    self.layers = reader.layers();
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
    pub(crate) fn start(&mut self, key: SessionKey, viewer: &mut Viewer, buf: &mut [u8], now: Instant) {
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
                // Read from the ring once per feed, not per joining viewer, until a window closes.
                let stream = match self.rate.bytes_per_s() {
                    Some(b) => b,
                    None => *self.rate.seed.insert(gop_rate(reader, pos, live_pos, buf)),
                };
                let credit = ReplayCredit::new(self.replay_rate(stream), now);
                viewer.replay = Some(Replay { cursor: RingCursor::at(pos), credit });
                self.replaying.push(key);
            }
            None => reader.request_keyframe(),
        }
    }

    /// Asks the room's source for a keyframe (through the ring's request counter).
    pub(crate) fn request_keyframe(&self) {
        if let Some(reader) = &self.reader {
            reader.request_keyframe();
        }
    }

    /// The packet at ring position `pos`, for a resend, if the ring still holds it: the payload kept for
    /// replays, or a copy read from the ring.
    pub(crate) fn packet_at(&self, pos: u64, buf: &mut [u8]) -> Option<RingPacket> {
        let ReadOutcome::Packet { meta, len } = self.reader.as_ref()?.read(pos, buf) else { return None };
        let payload = self.recent.get(pos).unwrap_or_else(|| Arc::from(&buf[..len]));
        Some(RingPacket::new(pos, meta, payload, &self.codecs))
    }

    /// A replay's pace in a room of `stream` bytes a second before the viewer's link is known (see
    /// [`replay_rate`]).
    fn replay_rate(&self, stream: u64) -> u64 {
        replay_rate(stream, self.replay_rate_percent)
    }

    /// The link a joining viewer would use: enough for its replay at the configured pace (of which
    /// [`replay_pace`] takes [`REPLAY_LINK_SHARE`]), [`INITIAL_ESTIMATE`] in a room whose bitrate is not known
    /// yet. Its bandwidth estimate probes for that much.
    pub(crate) fn replay_target(&self) -> Bitrate {
        let link = |b| Bitrate::bps(self.replay_rate(b) * 8 * 100 / REPLAY_LINK_SHARE);
        self.rate.bytes_per_s().map_or(INITIAL_ESTIMATE, link)
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
        let measured = self.rate.bytes_per_s();
        let percent = self.replay_rate_percent;
        let mut replayed = 0u64;
        self.replaying.retain(|&key| {
            let Some(session) = host.get_mut(key) else { return false };
            let Some(Replay { mut cursor, mut credit }) = session.app.replay.take() else { return false };
            credit.refill(at.now);
            if let Some(stream) = measured {
                credit.set_rate(replay_pace(replay_rate(stream, percent), stream, session.app.estimate.link()));
            }
            let mut sent = 0;
            let done = loop {
                if sent == budget || !credit.may_send() {
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
                    if deliver(session, codecs, &RingPacket::new(pos, meta, payload, codecs), at, Pace::Replay, out) {
                        sent += 1;
                        credit.spend(len);
                    }
                }
            };
            replayed += sent as u64;
            if !done {
                session.app.replay = Some(Replay { cursor, credit });
            } else if let Some(stream) = measured {
                // Live now: its estimate (if it has one) need look for no more of its link than the stream takes.
                session.rtc.bwe().set_bitrate(Bitrate::ZERO, Bitrate::bps(stream * 8));
                session.app.layer.desired_bps = stream * 8;
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
        self.rate.roll(at.now);
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
            self.rate.add(at.now, len);
            self.recent.push(pos, payload.clone());
            turn.push(RingPacket::new(pos, meta, payload, &self.codecs));
        }
        if !turn.is_empty() {
            for (k, &key) in self.viewers.iter().enumerate() {
                // The next viewer's state comes into the cache while this one's packets are sealed and sent.
                if let Some(next) = self.viewers.get(k + 1).and_then(|&next| host.get(next)) {
                    prefetch(&next.app);
                }
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
mod pace_tests {
    use super::*;

    #[test]
    fn a_replay_is_paced_within_the_estimated_link_but_faster_than_the_stream() {
        let (stream, rate) = (125_000, 250_000); // 1 Mbit/s, replayed at 200%
                                                 // No estimate: the configured pace.
        assert_eq!(replay_pace(rate, stream, None), rate);
        // A wide link: the configured pace still.
        assert_eq!(replay_pace(rate, stream, Some(10_000_000)), rate);
        // 2 Mbit/s: 85% of it.
        assert_eq!(replay_pace(rate, stream, Some(2_000_000)), 212_500);
        // Narrower than the stream: 110% of the stream, or the replay would never reach live.
        assert_eq!(replay_pace(rate, stream, Some(500_000)), 137_500);
        // A silent room's stream: the least pace.
        assert_eq!(replay_pace(REPLAY_MIN_RATE, 0, Some(100_000)), REPLAY_MIN_RATE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_sends_at_its_rate_in_bursts_of_a_few_milliseconds() {
        let start = Instant::now();
        // 250 KB/s (2 Mbit/s): a 1000-byte payload counts 1070.
        let mut credit = ReplayCredit::new(250_000, start);
        let mut sent = 0usize;
        let mut burst = 0;
        // One second of 1 ms turns, each sending while there is credit.
        for ms in 0..1000u64 {
            credit.refill(start + Duration::from_millis(ms));
            let mut this_turn = 0;
            while credit.may_send() {
                credit.spend(1000);
                sent += 1000 + PACKET_OVERHEAD as usize;
                this_turn += 1;
            }
            burst = burst.max(this_turn);
        }
        // The full credit at start (5 ms of the rate) and the second's worth, within a packet.
        let expected = 250_000 + 250_000 * 5 / 1000;
        assert!(sent.abs_diff(expected) <= 1070 * 2, "sent {sent} bytes in 1 s, expected about {expected}");
        assert!(burst <= 2, "{burst} packets back to back");
        // A turn after a stall spends at most REPLAY_CREDIT_GAP's worth (12.5 KB).
        credit.refill(start + Duration::from_secs(10));
        let mut late = 0;
        while credit.may_send() {
            credit.spend(1000);
            late += 1;
        }
        assert!((11..=13).contains(&late), "{late} packets after a 9 s gap");
        // On a busy worker, turns 10 ms apart: the replay keeps its rate.
        let t = start + Duration::from_secs(20);
        let mut busy = ReplayCredit::new(250_000, t);
        let mut sent = 0usize;
        for turn in 1..=100u64 {
            busy.refill(t + Duration::from_millis(10 * turn));
            while busy.may_send() {
                busy.spend(1000);
                sent += 1000 + PACKET_OVERHEAD as usize;
            }
        }
        assert!(sent.abs_diff(250_000) <= 1070 * 3, "sent {sent} bytes in 1 s of 10 ms turns, expected about 250000");
        // A slow stream still gets a packet at a time.
        let mut slow = ReplayCredit::new(1_000, start);
        let mut first = 0;
        while slow.may_send() {
            slow.spend(1200);
            first += 1;
        }
        assert_eq!(first, 2, "a full credit (1500 bytes) lets two packets go");
        slow.refill(start + Duration::from_secs(2));
        assert!(slow.may_send());
    }

    #[test]
    fn the_room_rate_is_the_mean_of_two_windows() {
        let start = Instant::now();
        let mut rate = StreamRate::default();
        assert_eq!(rate.bytes_per_s(), None);
        // A seed (the GOP's rate read from the ring) stands in until a window closes.
        rate.seed = Some(7);
        assert_eq!(rate.bytes_per_s(), Some(7));
        // 100 packets of 930 bytes (1000 counted) a second: 100 KB/s; a 50 KB keyframe in the second window.
        let mut at = start;
        for ms in (0..4000u64).step_by(10) {
            at = start + Duration::from_millis(ms);
            rate.roll(at);
            rate.add(at, 930);
            if ms == 2500 {
                rate.add(at, 50_000 - PACKET_OVERHEAD as usize);
            }
        }
        rate.roll(at + Duration::from_millis(10));
        let b = rate.bytes_per_s().expect("two windows");
        assert!(b.abs_diff(112_500) < 2_000, "{b} bytes a second");
        rate.clear();
        assert_eq!(rate.bytes_per_s(), None);
    }

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
