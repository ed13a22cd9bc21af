//! The fanout core: viewer sessions in, ring packets out to every viewer of the room.
//!
//! Each room a worker serves has one `RoomFeed`: a ring reader and a live cursor, so the worker reads each
//! live packet of the ring once and hands the same bytes to every viewer of that room.
//!
//! A viewer that joins (or switches to) a room whose ring holds a keyframe starts with a *replay*: its own
//! cursor walks the cached GOP from that keyframe up to the feed's live position, sending video in a burst
//! with compressed timestamps, and then it joins the live feed at exactly the packet where its replay ended:
//! nothing twice, nothing skipped. Without a cached keyframe it joins live at once and its video waits for the
//! next keyframe, which it asks for through the ring header.
//!
//! Per viewer, video follows one source (a publisher session, or the slate) and one codec at a time; a new
//! source is taken up only at one of its keyframes, so the decoder never sees a picture it cannot decode.
//!
//! [`Fanout`] never touches a socket or a clock itself; [`run`] is the loop around it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::env::{Env, Random};
use deadsfu_media::host::{Session, SessionHost, SessionKey};
use deadsfu_media::limits::{Refusals, SessionLimits};
use deadsfu_media::process::{self, Core, Endpoints, StartError};
use deadsfu_media::{codec, offer};
use deadsfu_runtime::config::Config;
use shm_proto::control::{
    ErrorKind, FanoutRequest, ProcessMetrics, ProcessStatus, Request, Response, Role, RoomStatus,
};
use shm_proto::ring::{CodecEntry, MediaKind, PacketMeta, RingCursor, RingReader};
use shm_proto::{paths, Owner, RoomName, SessionId};
use str0m::format::CodecConfig;
use str0m::media::{Mid, Pt};
use str0m::net::Transmit;
use str0m::rtp::{ExtensionValues, RtpWrite, VideoOrientation};
use str0m::{Candidate, Event, IceConnectionState, RtcConfig};

use crate::splice::{Pace, SourceId, Splicer};

/// How often a room without a ring file looks for one again.
const RING_RETRY: Duration = Duration::from_millis(100);
/// How often an open ring is checked for having been replaced, and told that someone reads it.
const RING_CHECK: Duration = Duration::from_millis(250);
/// Turn pace while a viewer's replay runs ([`replay_budget`] packets a turn).
const REPLAY_TURN: Duration = Duration::from_millis(1);
/// How often rings with viewers are polled besides: new packets come with a wake-up from ingest
/// ([`deadsfu_media::wake`]), so this only bounds the wait of a packet whose wake-up was lost.
const RING_POLL: Duration = Duration::from_millis(20);
/// How often viewers are checked for having gone silent.
const SILENCE_CHECK: Duration = Duration::from_secs(1);
/// Most packets read from one ring per loop turn, so one busy room cannot starve sockets and timers.
const READ_BUDGET: usize = 512;
/// Pace of a replay: a cached GOP goes out to a joining viewer at about 4000 packets a second, far above any
/// stream's rate so the viewer catches up in a fraction of a second, yet in bursts the socket buffers on both
/// ends absorb: [`REPLAY_BUDGET`] packets a turn of [`REPLAY_TURN`], more when a turn took longer (a busy
/// worker), up to [`REPLAY_BURST`]. Without the catch-up a replay on a busy worker would crawl at a few
/// packets per long turn, barely faster than live, and send twice the GOP before it joined.
const REPLAY_BUDGET: usize = 4;
const REPLAY_BURST: usize = 32;
/// Payloads read live that a room keeps for replays: those from its newest keyframe on (less
/// [`KEYFRAME_MARGIN`] positions), and at most this many: about 5 s of a 1.5 Mbit/s stream, ~1.5 MB.
const RECENT_PAYLOADS: usize = 1024;
const KEYFRAME_MARGIN: u64 = 16;
/// Retransmission memory per viewer video stream: the last 128 packets, none older than 1 s. A NACK comes one
/// round trip (plus a packet interval) after the packet left, and again each round trip after: 128 packets
/// are 0.85 s at 150 packets/s (1.3 Mbit/s of ~1100-byte packets), three tries at a 250 ms round trip; a live
/// viewer's jitter buffer holds well under a second, so an older packet would come too late to be played.
/// The payloads are shared with every other viewer of the room; a viewer's own cost is str0m's bookkeeping,
/// ~96 bytes a packet (12 KB; `vendor/str0m/DEADSFU-PATCH.md`, `fanout/examples/session_memory.rs`).
const RTX_CACHE_PACKETS: usize = 128;
const RTX_CACHE_AGE: Duration = Duration::from_secs(1);
/// Resends per viewer, in packets and payload bytes per second: a viewer on a lossy path needs a few
/// percent of a stream's 100-400 packets a second; a viewer that NACKs everything it can gets at most about
/// one stream's worth again, not its whole cache many times a second.
const RTX_BUDGET: (u32, u32) = (200, 256 * 1024);
/// A worker whose live feed of a room is this far behind the ring's writer (it was short of CPU) skips to the
/// newest keyframe: its viewers lose what lies between rather than watch ever older video.
const MAX_LAG: Duration = Duration::from_secs(1);
/// A viewer that sends nothing (no RTCP, no consent checks) for this long is gone. Browsers send receiver
/// reports about every second and consent checks every few seconds.
const VIEWER_TIMEOUT: Duration = Duration::from_secs(15);

/// One outgoing track of a viewer.
struct Track {
    mid: Mid,
    /// Where its numbering starts (drawn when the viewer joins): first sequence number and timestamp.
    first: (u16, u32),
    /// Made at its first packet, when the clock rate is known.
    splicer: Option<Splicer>,
}

impl Track {
    fn new(mid: Mid, random: &mut Random) -> Track {
        Track { mid, first: ((random.u32() % 16_384) as u16, random.u32()), splicer: None }
    }
}

/// Where a viewer's video stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VideoChoice {
    /// The source being forwarded.
    source: u32,
    /// The ring payload type of that source being forwarded (a slate may carry several codecs).
    ring_pt: u8,
}

/// A ring's codec table as a worker last read it.
#[derive(Debug)]
struct CodecTable {
    entries: Vec<CodecEntry>,
    /// The ring's codec version these entries are of: it changes with the table.
    version: u64,
}

impl CodecTable {
    /// A table not read yet.
    fn unread() -> CodecTable {
        CodecTable { entries: Vec::new(), version: u64::MAX }
    }

    fn get(&self, ring_pt: u8) -> Option<&CodecEntry> {
        self.entries.iter().find(|e| e.pt == ring_pt)
    }
}

/// A viewer's payload type for each of a codec table's: which of the room's codecs it negotiated, as what.
struct PtMap {
    negotiated: CodecConfig,
    map: HashMap<u8, Option<Pt>>,
    /// The table version the map was made for.
    version: u64,
}

impl PtMap {
    fn new(negotiated: CodecConfig) -> PtMap {
        PtMap { negotiated, map: HashMap::new(), version: u64::MAX }
    }

    /// The viewer's payload type for ring payload type `ring_pt` of `table`, if it negotiated that codec.
    fn get(&mut self, table: &CodecTable, ring_pt: u8) -> Option<Pt> {
        if self.version != table.version {
            self.map.clear();
            self.version = table.version;
        }
        let negotiated = &self.negotiated;
        *self.map.entry(ring_pt).or_insert_with(|| {
            let entry = table.get(ring_pt)?;
            negotiated.match_params(codec::params(entry)).map(|p| p.pt())
        })
    }
}

pub struct Viewer {
    id: SessionId,
    room: RoomName,
    connected: bool,
    audio: Option<Track>,
    video: Option<Track>,
    video_choice: Option<VideoChoice>,
    /// Replaying the cached GOP of its room up to the feed's live position.
    replay: Option<RingCursor>,
    pts: PtMap,
}

/// The payloads read live from a ring that a room keeps for replays, by ring position: a replay sends these
/// rather than a copy of its own, so viewers joining together share one copy of the GOP (in their RTX caches
/// too). Positions are contiguous.
#[derive(Default)]
struct RecentPayloads(VecDeque<(u64, Arc<[u8]>)>);

impl RecentPayloads {
    /// Keeps the payload read at `pos`: at most [`RECENT_PAYLOADS`].
    fn push(&mut self, pos: u64, payload: Arc<[u8]>) {
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
    fn get(&self, pos: u64) -> Option<Arc<[u8]>> {
        let first = self.0.front()?.0;
        let (at, payload) = self.0.get(usize::try_from(pos.checked_sub(first)?).ok()?)?;
        (*at == pos).then(|| payload.clone())
    }

    /// Forgets what lies before `pos`.
    fn keep_from(&mut self, pos: u64) {
        while self.0.front().is_some_and(|(at, _)| *at < pos) {
            self.0.pop_front();
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    /// Payload bytes kept (with each allocation's two reference counts).
    fn bytes(&self) -> usize {
        self.0.iter().map(|(_, p)| p.len() + 16).sum()
    }
}

/// The time of a pump turn, as delivery needs it.
#[derive(Clone, Copy, Debug)]
struct Moment {
    now: Instant,
    /// Nanoseconds since the worker started: the splicers' clock.
    ns: u64,
}

/// What one ring's live read did.
#[derive(Default)]
struct LiveRead {
    /// Packets written to viewers.
    delivered: u64,
    /// Times the feed was too far behind and skipped to the newest keyframe.
    lag_skips: u64,
    /// The read stopped at [`READ_BUDGET`] with more to read.
    backlog: bool,
}

/// A room as one worker sees it: the ring, the live cursor every viewer follows, and the viewers.
struct RoomFeed {
    path: PathBuf,
    reader: Option<RingReader>,
    cursor: RingCursor,
    codecs: CodecTable,
    viewers: Vec<SessionKey>,
    /// The viewers whose replay runs: a turn looks at these only, not at every viewer.
    replaying: Vec<SessionKey>,
    recent: RecentPayloads,
    next_open: Instant,
    /// Failed opens in a row: the retry waits 5 ms after the first, doubling up to [`RING_RETRY`], since a
    /// new room's ring appears only once signaling told ingest of the viewer it accepted.
    open_failures: u32,
    next_check: Instant,
    /// The worker index whose wake-up bit this feed set in the ring.
    wake_bit: Option<u32>,
}

impl Drop for RoomFeed {
    fn drop(&mut self) {
        if let (Some(reader), Some(index)) = (&self.reader, self.wake_bit) {
            reader.unwant_wake(index);
        }
    }
}

pub struct Fanout {
    index: u32,
    env: Env,
    limits: SessionLimits,
    refused: Refusals,
    runtime_dir: PathBuf,
    candidates: Vec<Candidate>,
    host: SessionHost<Viewer>,
    rooms: HashMap<RoomName, RoomFeed>,
    ids: HashMap<SessionId, SessionKey>,
    events: Vec<(SessionKey, Event)>,
    buf: Vec<u8>,
    /// Origin of the monotonic nanosecond clock the splicers use.
    t0: Instant,
    /// When the rings were last read: a replay's budget grows with the time since.
    last_pump: Instant,
    /// A replay is under way: turn every [`REPLAY_TURN`].
    replaying: bool,
    /// A ring had more than [`READ_BUDGET`] new packets: turn again at once.
    backlog: bool,
    next_silence_check: Instant,
    /// Stopping: no new viewers.
    draining: bool,
    /// RTP packets written to viewers: live, and replayed to joining ones.
    packets_live: u64,
    packets_replayed: u64,
    /// Times a live feed fell [`MAX_LAG`] behind and skipped to the newest keyframe.
    lag_skips: u64,
    /// Ingest plays the slate (see [`Fanout::with_slate`]).
    slate: bool,
}

impl Fanout {
    pub fn new(
        index: u32,
        runtime_dir: PathBuf,
        candidates: Vec<Candidate>,
        limits: SessionLimits,
        env: Env,
        now: Instant,
    ) -> Fanout {
        Fanout {
            index,
            env,
            limits,
            refused: Refusals::default(),
            runtime_dir,
            candidates,
            host: SessionHost::new(),
            rooms: HashMap::new(),
            ids: HashMap::new(),
            events: Vec::new(),
            buf: vec![0u8; 64 * 1024],
            t0: now,
            last_pump: now,
            replaying: false,
            backlog: false,
            next_silence_check: now + SILENCE_CHECK,
            draining: false,
            packets_live: 0,
            packets_replayed: 0,
            lag_skips: 0,
            slate: true,
        }
    }

    /// Whether ingest plays the slate into watched rooms without live video (`slate`, on by default): then
    /// every room has video for a viewer that asks for it, the slate's while no publisher's.
    pub fn with_slate(mut self, slate: bool) -> Fanout {
        self.slate = slate;
        self
    }

    /// Bytes of payload the rooms keep for replays (shared by their viewers), for memory accounting.
    pub fn replay_cache_bytes(&self) -> usize {
        self.rooms.values().map(|f| f.recent.bytes()).sum()
    }

    fn request(&mut self, now: Instant, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(self.status()),
            Request::Fanout(FanoutRequest::View { room, offer }) => self.view(now, room, &offer),
            Request::Fanout(FanoutRequest::Switch { session, room }) => self.switch(now, session, room),
            Request::Check { session } => match self.ids.contains_key(&session) {
                true => Response::Done,
                false => error(ErrorKind::UnknownSession, "no such viewer session"),
            },
            Request::Close { session } => match self.ids.get(&session) {
                Some(&key) => {
                    self.close(key);
                    Response::Closed
                }
                None => error(ErrorKind::UnknownSession, "no such viewer session"),
            },
            Request::Rooms => Response::Rooms { rooms: self.rooms_status() },
            // Answered by the process loop, which holds the counters and the subscriptions.
            Request::Metrics => error(ErrorKind::Internal, "metrics are answered by the process loop"),
            Request::Subscribe => error(ErrorKind::Internal, "subscriptions are served by the process loop"),
            Request::Ingest(_) => error(ErrorKind::WrongRole, "fanout workers take viewers, not publishers"),
        }
    }

    fn status(&self) -> ProcessStatus {
        ProcessStatus {
            role: Role::Fanout,
            index: self.index,
            pid: std::process::id(),
            sessions: self.host.len() as u32,
            accepting: !self.draining,
        }
    }

    fn rooms_status(&self) -> Vec<RoomStatus> {
        self.rooms
            .iter()
            .map(|(name, feed)| RoomStatus { viewers: feed.viewers.len() as u32, ..RoomStatus::new(name.clone()) })
            .collect()
    }

    fn view(&mut self, now: Instant, room: RoomName, offer_sdp: &str) -> Response {
        if self.draining {
            return error(ErrorKind::Unavailable, "this worker is stopping");
        }
        if let Err(refusal) = self.limits.admit(&self.host) {
            self.refused.count(refusal.limit);
            return error(ErrorKind::Unavailable, &refusal.message);
        }
        if let Err(reason) = self.limits.check_offer(offer_sdp) {
            return error(ErrorKind::BadOffer, &reason);
        }
        // Audio and video of a room are one stream at the viewer.
        let offer_sdp = offer::with_stream_id(offer_sdp, &format!("deadsfu-{room}"));
        let tune = |c: RtcConfig| c.set_extension_map(viewer_extensions());
        let mut accepted = match offer::accept(&offer_sdp, &self.candidates, now, tune) {
            Ok(a) => a,
            Err(e) => return error(ErrorKind::BadOffer, &e.to_string()),
        };
        let sections = offer::media_sections(&offer_sdp);
        let mids: Vec<Mid> = sections.iter().map(|(mid, _)| *mid).collect();
        let mut negotiated = codec::negotiated(&accepted.rtc, &mids);
        let slate = self.slate;
        let now_ms = self.env.unix_ms(now);
        let codecs = &self.feed(&room, now, now_ms).codecs.entries;
        match fit(&negotiated, codecs, &sections, slate) {
            Fit::Plays => {}
            Fit::Without(kinds) => {
                // The viewer gets nothing of these kinds (the publisher sends none, or none in a codec the viewer
                // offered): answer them inactive.
                let offer_sdp =
                    kinds.iter().fold(offer_sdp.clone(), |o, &kind| offer::with_inactive(&o, kind == MediaKind::Video));
                accepted = match offer::accept(&offer_sdp, &self.candidates, now, tune) {
                    Ok(a) => a,
                    Err(e) => {
                        self.drop_feed_if_unwatched(&room);
                        return error(ErrorKind::BadOffer, &e.to_string());
                    }
                };
                negotiated = codec::negotiated(&accepted.rtc, &mids);
            }
            Fit::Nothing(reason) => {
                self.drop_feed_if_unwatched(&room);
                return error(ErrorKind::NoCommonCodec, &reason);
            }
        }
        let id = SessionId::new(Owner::Worker(self.index), self.env.random.bytes());
        let mut viewer = Viewer {
            id,
            room: room.clone(),
            connected: false,
            audio: None,
            video: None,
            video_choice: None,
            replay: None,
            pts: PtMap::new(negotiated),
        };
        // The answer made the send streams; find them by the media sections of the offer.
        for (mid, is_video) in sections {
            let mut api = accepted.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else { continue };
            if is_video {
                tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, None);
                tx.set_rtx_budget(Some(RTX_BUDGET));
                if viewer.video.is_none() {
                    viewer.video = Some(Track::new(mid, &mut self.env.random));
                }
            } else if viewer.audio.is_none() {
                viewer.audio = Some(Track::new(mid, &mut self.env.random));
            }
        }
        if viewer.audio.is_none() && viewer.video.is_none() {
            self.drop_feed_if_unwatched(&room);
            return error(ErrorKind::BadOffer, "the offer asks to receive neither audio nor video");
        }
        let key = self.host.insert(accepted.rtc, accepted.ufrag, viewer, now);
        self.ids.insert(id, key);
        self.feed(&room, now, now_ms).viewers.push(key);
        tracing::debug!(session = %id, %room, "viewer joined");
        Response::Answer { session: id, answer: accepted.answer }
    }

    /// Forgets the feed of `room` if no viewer of this worker watches it, so a refused viewer leaves no reader
    /// heartbeating the ring (which would keep the room and its slate alive).
    fn drop_feed_if_unwatched(&mut self, room: &RoomName) {
        if self.rooms.get(room).is_some_and(|f| f.viewers.is_empty()) {
            self.rooms.remove(room);
        }
    }

    /// The feed of `room`, made (and its ring looked for) if this worker had none.
    fn feed(&mut self, room: &RoomName, now: Instant, now_ms: u64) -> &mut RoomFeed {
        feed(&mut self.rooms, &self.runtime_dir, self.index, room, now, now_ms)
    }

    fn switch(&mut self, now: Instant, session: SessionId, room: RoomName) -> Response {
        let Some(&key) = self.ids.get(&session) else {
            return error(ErrorKind::UnknownSession, "no such viewer session");
        };
        let old = self.host.get(key).expect("ids and host agree").app.room.clone();
        if old == room {
            return Response::Done;
        }
        let now_ms = self.env.unix_ms(now);
        let Fanout { host, rooms, runtime_dir, buf, index, .. } = self;
        let session = host.get_mut(key).expect("ids and host agree");
        if let Some(feed) = rooms.get_mut(&old) {
            feed.remove(key);
            if feed.viewers.is_empty() {
                rooms.remove(&old);
            }
        }
        let feed = feed(rooms, runtime_dir, *index, &room, now, now_ms);
        feed.viewers.push(key);
        session.app.room = room.clone();
        session.app.replay = None;
        // The next video packet forwarded must be a keyframe of the new room.
        session.app.video_choice = None;
        if session.app.connected {
            feed.start(key, &mut session.app, buf);
        }
        tracing::debug!(session = %session.app.id, from = %old, to = %room, "viewer switched rooms");
        Response::Done
    }

    /// Ends a viewer's session: detached from its room at once, gone from the host once its goodbye is out.
    fn close(&mut self, key: SessionKey) {
        let Some(s) = self.host.get(key) else { return };
        if self.ids.remove(&s.app.id).is_some() {
            tracing::debug!(session = %s.app.id, room = %s.app.room, "viewer left");
            if let Some(feed) = self.rooms.get_mut(&s.app.room) {
                feed.remove(key);
                if feed.viewers.is_empty() {
                    self.rooms.remove(&s.app.room);
                }
            }
        }
        self.host.close(key);
    }

    /// Reads what is new in every ring with viewers and writes it into their sessions: the replays of joining
    /// viewers first, then the live packets, read once for every viewer of the room.
    fn pump(&mut self, now: Instant) {
        let at = Moment { now, ns: now.duration_since(self.t0).as_nanos() as u64 };
        let now_ms = self.env.unix_ms(now);
        let stale_before = self.env.unix_ns(now).saturating_sub(MAX_LAG.as_nanos() as u64);
        let budget = replay_budget(now.saturating_duration_since(self.last_pump));
        self.last_pump = now;
        self.replaying = false;
        self.backlog = false;
        for feed in self.rooms.values_mut() {
            if !feed.open(now, now_ms, self.index) {
                continue;
            }
            self.packets_replayed += feed.replay(&mut self.host, &mut self.buf, at, budget);
            self.replaying |= !feed.replaying.is_empty();
            let read = feed.read_live(&mut self.host, &mut self.buf, at, stale_before);
            self.packets_live += read.delivered;
            self.lag_skips += read.lag_skips;
            self.backlog |= read.backlog;
        }
    }

    /// Drives the sessions and reacts to their events.
    fn drive(&mut self, now: Instant, send: &mut dyn FnMut(Transmit)) {
        let dead = self.host.poll(now, send, &mut self.events);
        let mut events = std::mem::take(&mut self.events);
        for (key, event) in events.drain(..) {
            match event {
                Event::Connected => {
                    let Fanout { host, rooms, buf, .. } = self;
                    let Some(s) = host.get_mut(key) else { continue };
                    s.app.connected = true;
                    tracing::debug!(session = %s.app.id, "viewer connected");
                    if let Some(feed) = rooms.get_mut(&s.app.room) {
                        feed.start(key, &mut s.app, buf);
                    }
                }
                Event::KeyframeRequest(_) => {
                    let Some(room) = self.host.get(key).map(|s| s.app.room.clone()) else { continue };
                    if let Some(reader) = self.rooms.get(&room).and_then(|f| f.reader.as_ref()) {
                        reader.request_keyframe();
                    }
                }
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => self.close(key),
                _ => {}
            }
        }
        self.events = events;
        for key in dead {
            self.close(key);
        }
        if now >= self.next_silence_check {
            self.next_silence_check = now + SILENCE_CHECK;
            for key in self.host.silent(now, VIEWER_TIMEOUT) {
                tracing::info!("viewer silent for {VIEWER_TIMEOUT:?}; closing");
                self.close(key);
            }
        }
    }
}

impl Core for Fanout {
    type App = Viewer;

    fn host(&self) -> &SessionHost<Viewer> {
        &self.host
    }

    fn host_and_events(&mut self) -> (&mut SessionHost<Viewer>, &mut Vec<(SessionKey, Event)>) {
        (&mut self.host, &mut self.events)
    }

    fn end_session(&mut self, key: SessionKey) {
        self.close(key);
    }

    fn stop_accepting(&mut self) {
        self.draining = true;
    }

    fn handle_request(&mut self, now: Instant, request: Request) -> Response {
        self.request(now, request)
    }

    fn poll(&mut self, now: Instant, send: &mut dyn FnMut(Transmit)) {
        self.pump(now);
        self.drive(now, send);
    }

    fn next_timeout(&mut self, now: Instant) -> Option<Instant> {
        let sessions = self.host.next_timeout();
        let poll = if self.replaying { REPLAY_TURN } else { RING_POLL };
        let rings = (!self.rooms.is_empty()).then_some(now + poll);
        match (sessions, rings) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn has_work(&self) -> bool {
        self.host.has_dirty() || self.backlog
    }

    fn status_snapshot(&self, _now: Instant) -> (ProcessStatus, Vec<RoomStatus>) {
        (self.status(), self.rooms_status())
    }

    fn metrics(&self, m: &mut ProcessMetrics) {
        m.sessions = self.host.len() as u32;
        m.viewer_packets_live = self.packets_live;
        m.viewer_packets_replayed = self.packets_replayed;
        m.lag_skips = self.lag_skips;
        m.refused = self.refused.to_metrics();
    }
}

/// Most packets a replay sends this turn, `since` the last: [`REPLAY_BUDGET`] per [`REPLAY_TURN`], at most
/// [`REPLAY_BURST`].
fn replay_budget(since: Duration) -> usize {
    let turns = (since.as_micros() / REPLAY_TURN.as_micros()).max(1);
    usize::try_from(turns).unwrap_or(usize::MAX).saturating_mul(REPLAY_BUDGET).min(REPLAY_BURST)
}

/// The feed of `room` in `rooms`, made (and its ring looked for) if there was none.
fn feed<'a>(
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
    fn open(&mut self, now: Instant, now_ms: u64, index: u32) -> bool {
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
    fn start(&mut self, key: SessionKey, viewer: &mut Viewer, buf: &mut [u8]) {
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
            let shm_proto::ring::ReadOutcome::Packet { meta, .. } = reader.read(pos, buf) else { continue };
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

    /// Detaches a viewer that leaves the room.
    fn remove(&mut self, key: SessionKey) {
        self.viewers.retain(|k| *k != key);
        self.replaying.retain(|k| *k != key);
    }

    /// The replays' turn: each replaying viewer gets up to `budget` packets of the cached GOP, walking towards
    /// the live position of this turn, which it soon reaches (it is far faster than any stream); then it
    /// joins live at exactly the next packet. Live packets are skipped for it meanwhile. Returns the packets
    /// written.
    fn replay(&mut self, host: &mut SessionHost<Viewer>, buf: &mut [u8], at: Moment, budget: usize) -> u64 {
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
                    if deliver(session, codecs, &meta, &payload, at, Pace::Replay) {
                        sent += 1;
                    }
                }
            };
            replayed += sent as u64;
            if !done {
                session.app.replay = Some(cursor);
            }
            if sent > 0 {
                host.touch(key);
            }
            !done
        });
        replayed
    }

    /// The live turn: reads what is new in the ring (at most [`READ_BUDGET`] packets) once and writes each
    /// packet into every viewer's session. A feed that fell [`MAX_LAG`] behind the writer (packets that
    /// arrived before `stale_before`, in Unix ns) skips to the newest keyframe.
    fn read_live(&mut self, host: &mut SessionHost<Viewer>, buf: &mut [u8], at: Moment, stale_before: u64) -> LiveRead {
        let reader = self.reader.as_ref().expect("live read on an open feed");
        let mut read = LiveRead::default();
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
            for &key in &self.viewers {
                let Some(session) = host.get_mut(key) else { continue };
                if deliver(session, &self.codecs, &meta, &payload, at, Pace::Live) {
                    host.touch(key);
                    read.delivered += 1;
                }
            }
        }
        // Replays start at the newest keyframe (of the viewer's codec: a slate's keyframes of its codecs are
        // written together, a few positions apart), so older payloads need not be kept.
        if let Some(keyframe) = reader.latest_keyframe() {
            self.recent.keep_from(keyframe.saturating_sub(KEYFRAME_MARGIN));
        }
        read
    }
}

/// Writes one ring packet into one viewer's session; true if something was written.
fn deliver(
    session: &mut Session<Viewer>,
    codecs: &CodecTable,
    meta: &PacketMeta,
    payload: &Arc<[u8]>,
    at: Moment,
    pace: Pace,
) -> bool {
    let (viewer, rtc) = (&mut session.app, &mut session.rtc);
    if !viewer.connected || (pace == Pace::Live && viewer.replay.is_some()) {
        return false;
    }
    let Some(pt) = viewer.pts.get(codecs, meta.pt) else { return false };
    if meta.kind == MediaKind::Video {
        let current = viewer.video_choice.filter(|c| c.source == meta.source);
        match current {
            Some(c) if c.ring_pt != meta.pt => return false,
            Some(_) => {}
            // A new source (or the first): taken up at one of its keyframes only.
            None if meta.keyframe => viewer.video_choice = Some(VideoChoice { source: meta.source, ring_pt: meta.pt }),
            None => return false,
        }
    }
    let (track, clock_rate) = match meta.kind {
        MediaKind::Video => (viewer.video.as_mut(), 90_000),
        MediaKind::Audio => (viewer.audio.as_mut(), codecs.get(meta.pt).map_or(48_000, |e| e.clock_rate)),
    };
    let Some(track) = track else { return false };
    let (first_seq, first_ts) = track.first;
    let splicer = track.splicer.get_or_insert_with(|| Splicer::new(clock_rate, first_seq, first_ts));
    let out = splicer.map(SourceId { source: meta.source, ssrc: meta.ssrc }, meta.seq, meta.timestamp, at.ns, pace);
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(track.mid, None) else { return false };
    let ext = ExtensionValues {
        audio_level: meta.audio_level,
        voice_activity: meta.voice_activity,
        video_orientation: meta.video_orientation.map(VideoOrientation::from),
        ..Default::default()
    };
    tx.write_rtp(
        RtpWrite::new(pt, out.seq.into(), out.timestamp, at.now, payload.clone())
            .marker(meta.marker)
            .ext_vals(ext)
            .nackable(meta.kind == MediaKind::Video),
    );
    true
}

/// The RTP header extensions offered to viewers: what a forwarder passes on (audio level, video orientation)
/// and the MID. Transport-wide sequence numbers and abs-send-time feed bandwidth estimation, which deadsfu
/// does not do yet: leaving them out spares every packet to every viewer their bookkeeping and bytes, and the
/// viewers their transport feedback.
fn viewer_extensions() -> str0m::rtp::ExtensionMap {
    use str0m::rtp::Extension;
    let mut map = str0m::rtp::ExtensionMap::empty();
    map.set(1, Extension::AudioLevel);
    map.set(4, Extension::RtpMid);
    map.set(13, Extension::VideoOrientation);
    map
}

/// What a viewer gets of a room whose ring carries `codecs`.
#[derive(Debug, PartialEq)]
enum Fit {
    /// Every kind it asked for, in a codec it negotiated; or a kind the room has no publisher for yet, which
    /// flows once one sends it.
    Plays,
    /// Some kinds, not these: the room's publisher does not send them, or only in codecs the viewer did not
    /// offer. They are answered inactive.
    Without(Vec<MediaKind>),
    /// Nothing: of every kind it asked for, the room has none or only codecs the viewer did not offer.
    Nothing(String),
}

/// Matches a viewer's offer (its negotiated codecs and its media sections, `true` for video) to a room's codec
/// table. A room without a publisher (no codecs, or only the slate's) fits every kind: the publisher to come
/// may send it. With the `slate` on, a room always has video: the slate plays while its publisher sends none.
fn fit(negotiated: &CodecConfig, codecs: &[CodecEntry], sections: &[(Mid, bool)], slate: bool) -> Fit {
    let published = codecs.iter().any(|e| !e.slate);
    let mut unplayable = Vec::new();
    let mut reasons = Vec::new();
    let mut asked = 0;
    for kind in [MediaKind::Video, MediaKind::Audio] {
        if !sections.iter().any(|(_, video)| *video == (kind == MediaKind::Video)) {
            continue;
        }
        asked += 1;
        let room: Vec<&CodecEntry> = codecs.iter().filter(|e| e.kind == kind).collect();
        let kind_name = if kind == MediaKind::Video { "video" } else { "audio" };
        if room.is_empty() {
            // The slate's codecs come into the table once the room is watched, after this viewer is taken.
            let slate_will_play = slate && kind == MediaKind::Video;
            if published && !slate_will_play {
                reasons.push(format!("no {kind_name}: the room's publisher sends none"));
                unplayable.push(kind);
            }
            continue;
        }
        if room.iter().any(|e| negotiated.match_params(codec::params(e)).is_some()) {
            continue;
        }
        let mut names: Vec<&str> = room.iter().map(|e| e.codec.name()).collect();
        names.dedup();
        reasons.push(format!("no {kind_name} codec of the room ({})", names.join(", ")));
        unplayable.push(kind);
    }
    match unplayable.len() {
        0 => Fit::Plays,
        n if n == asked => Fit::Nothing(format!("the offer gets nothing: {}", reasons.join("; "))),
        _ => Fit::Without(unplayable),
    }
}

fn error(kind: ErrorKind, message: &str) -> Response {
    Response::Error { kind, message: message.to_string() }
}

/// Runs worker `index` until SIGTERM or SIGINT.
pub fn run(cfg: &Config, index: u32) -> Result<(), StartError> {
    let runtime_dir = cfg.runtime_dir();
    let endpoints = Endpoints {
        name: format!("fanout-{index}"),
        runtime_dir: &runtime_dir,
        udp_port: if cfg.fanout_port == 0 { 0 } else { cfg.fanout_port.saturating_add(index as u16) },
        udp_port_setting: format!("worker {index}'s: fanout_port + {index}, --fanout-port"),
        ice_tcp: cfg.ice_tcp,
        advertise: cfg.ice_candidate_host,
        control_socket: paths::fanout_socket(&runtime_dir, index),
        wake_socket: Some(paths::fanout_wake_socket(&runtime_dir, index)),
    };
    let limits = SessionLimits::from_config(cfg);
    process::run(endpoints, |candidates, _waker, now| {
        Fanout::new(index, runtime_dir.clone(), candidates, limits, Env::system(), now).with_slate(cfg.slate)
    })
}

#[cfg(test)]
mod tests {
    use shm_proto::ring::{Codec, Geometry, RingWriter};
    use str0m::media::Direction;
    use str0m::Rtc;

    use super::*;

    fn opus() -> CodecEntry {
        CodecEntry::new(111, MediaKind::Audio, Codec::Opus, 48_000, 2, "minptime=10;useinbandfec=1")
    }

    fn h264() -> CodecEntry {
        let fmtp = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
        CodecEntry::new(102, MediaKind::Video, Codec::H264, 90_000, 0, fmtp)
    }

    fn vp8() -> CodecEntry {
        CodecEntry::new(96, MediaKind::Video, Codec::Vp8, 90_000, 0, "")
    }

    /// What a viewer that offered `entries` negotiated.
    fn viewer(entries: &[CodecEntry]) -> CodecConfig {
        CodecConfig::new_from_payload_params(entries.iter().map(codec::params).collect())
    }

    fn slate_vp8() -> CodecEntry {
        CodecEntry { slate: true, pt: 120, ..vp8() }
    }

    #[test]
    fn a_viewer_gets_the_kinds_it_shares_with_the_room() {
        let (audio, video) = ((Mid::from("a"), false), (Mid::from("v"), true));
        let room = [opus(), h264()];
        for slate in [true, false] {
            assert_eq!(fit(&viewer(&[h264()]), &room, &[video], slate), Fit::Plays, "video only");
            assert_eq!(fit(&viewer(&[opus()]), &room, &[audio], slate), Fit::Plays, "audio only");
            assert_eq!(fit(&viewer(&[opus(), h264()]), &room, &[audio, video], slate), Fit::Plays);
            let vp8_and_opus = fit(&viewer(&[opus(), vp8()]), &room, &[audio, video], slate);
            assert_eq!(vp8_and_opus, Fit::Without(vec![MediaKind::Video]));
            let Fit::Nothing(why) = fit(&viewer(&[vp8()]), &room, &[video], slate) else { panic!("VP8 fits H.264") };
            assert_eq!(why, "the offer gets nothing: no video codec of the room (H264)");
            // A room without a publisher fits every kind: no codecs, or only the slate's.
            assert_eq!(fit(&viewer(&[vp8()]), &[], &[video], slate), Fit::Plays);
            assert_eq!(fit(&viewer(&[opus(), vp8()]), &[slate_vp8()], &[audio, video], slate), Fit::Plays);
        }
        // A publisher without audio: an audio section is inactive, an audio-only viewer gets nothing.
        let video_only = [h264()];
        assert_eq!(
            fit(&viewer(&[opus(), h264()]), &video_only, &[audio, video], true),
            Fit::Without(vec![MediaKind::Audio])
        );
        let Fit::Nothing(why) = fit(&viewer(&[opus()]), &video_only, &[audio], true) else { panic!("audio fits") };
        assert_eq!(why, "the offer gets nothing: no audio: the room's publisher sends none");
        // A publisher without video: the slate plays in its place, unless it is off.
        let audio_only = [opus()];
        assert_eq!(fit(&viewer(&[opus(), vp8()]), &audio_only, &[audio, video], true), Fit::Plays);
        let no_slate = fit(&viewer(&[opus(), vp8()]), &audio_only, &[audio, video], false);
        assert_eq!(no_slate, Fit::Without(vec![MediaKind::Video]));
    }

    /// A fanout worker on a temporary runtime directory with room `room` carrying `codecs`.
    fn worker(name: &str, codecs: &[CodecEntry]) -> (Fanout, RingWriter, PathBuf) {
        let dir = std::env::temp_dir().join(format!("deadsfu-fanout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(paths::rings_dir(&dir)).unwrap();
        let room = RoomName::new("room").unwrap();
        let geometry = Geometry { slot_count: 16, slot_size: 256 };
        let mut ring = RingWriter::create(&paths::ring(&dir, &room), geometry, 1).unwrap();
        ring.set_codecs(codecs).unwrap();
        let candidates = offer::host_candidates(&["127.0.0.1:3478".parse().unwrap()], str0m::net::Protocol::Udp);
        let now = Instant::now();
        (
            Fanout::new(0, dir.clone(), candidates, SessionLimits::default(), Env::simulated(now, 1 << 60, 1), now),
            ring,
            dir,
        )
    }

    /// A str0m client's receive-only offer of these kinds (`true` for video), in order; `vp8_only` leaves out
    /// every other video codec.
    fn offer(kinds: &[bool], vp8_only: bool) -> String {
        let mut config = Rtc::builder();
        if vp8_only {
            config = config.enable_h264(false).enable_vp9(false).enable_av1(false).enable_h265(false);
        }
        let mut client = config.build(Instant::now());
        let mut change = client.sdp_api();
        for &video in kinds {
            let kind = if video { str0m::media::MediaKind::Video } else { str0m::media::MediaKind::Audio };
            change.add_media(kind, Direction::RecvOnly, None, None, None);
        }
        change.apply().unwrap().0.to_sdp_string()
    }

    fn view(fanout: &mut Fanout, offer: &str) -> Response {
        let room = RoomName::new("room").unwrap();
        fanout.handle_request(Instant::now(), FanoutRequest::View { room, offer: offer.to_string() }.into())
    }

    /// The direction lines of each media section of an answer, in order.
    fn directions(answer: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for line in answer.lines() {
            if let Some(m) = line.strip_prefix("m=") {
                out.push((m.split(' ').next().unwrap().to_string(), String::new()));
            } else if let ("a=sendonly" | "a=recvonly" | "a=sendrecv" | "a=inactive", Some(last)) =
                (line, out.last_mut())
            {
                last.1 = line[2..].to_string();
            }
        }
        out
    }

    #[test]
    fn partial_offers_are_answered_with_what_the_room_has_for_them() {
        let (mut fanout, _ring, dir) = worker("partial", &[opus(), h264()]);
        // Video only, audio only: served.
        for kinds in [&[true][..], &[false]] {
            let Response::Answer { answer, .. } = view(&mut fanout, &offer(kinds, false)) else { panic!("{kinds:?}") };
            assert!(directions(&answer).iter().all(|(_, d)| d == "sendonly"), "{answer}");
        }
        // VP8 video + audio in an H.264 room: the video section is answered inactive, audio flows.
        let Response::Answer { answer, session } = view(&mut fanout, &offer(&[false, true], true)) else {
            panic!("refused")
        };
        let dirs = directions(&answer);
        assert_eq!(dirs, [("audio".into(), "sendonly".into()), ("video".into(), "inactive".into())], "{answer}");
        let key = fanout.ids[&session];
        let app = &fanout.host.get(key).unwrap().app;
        assert!(app.audio.is_some() && app.video.is_none());
        // VP8 video alone: nothing to give it.
        let Response::Error { kind, message } = view(&mut fanout, &offer(&[true], true)) else { panic!("accepted") };
        assert_eq!(kind, ErrorKind::NoCommonCodec, "{message}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_viewer_session_names_its_worker_and_is_switched_checked_and_closed_by_id() {
        let (mut fanout, _ring, dir) = worker("dispatch", &[opus(), h264()]);
        let now = Instant::now();
        let Response::Answer { session, .. } = view(&mut fanout, &offer(&[false, true], false)) else { panic!() };
        assert_eq!(session.owner(), Owner::Worker(0));
        assert!(session.to_string().starts_with("w0-"), "{session}");
        let other = RoomName::new("other").unwrap();
        let switch = FanoutRequest::Switch { session, room: other.clone() };
        assert_eq!(fanout.handle_request(now, switch.into()), Response::Done);
        assert_eq!(fanout.host.get(fanout.ids[&session]).unwrap().app.room, other);
        assert_eq!(fanout.handle_request(now, Request::Check { session }), Response::Done);
        assert_eq!(fanout.handle_request(now, Request::Close { session }), Response::Closed);
        let gone = fanout.handle_request(now, Request::Check { session });
        assert!(matches!(gone, Response::Error { kind: ErrorKind::UnknownSession, .. }), "{gone:?}");
        let watch = shm_proto::control::IngestRequest::Watch { room: other };
        let wrong = fanout.handle_request(now, watch.into());
        assert!(matches!(wrong, Response::Error { kind: ErrorKind::WrongRole, .. }), "{wrong:?}");
        std::fs::remove_dir_all(dir).unwrap();
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
