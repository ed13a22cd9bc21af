//! The fanout core: viewer sessions in, ring packets out to every viewer of the room.
//!
//! Each room a worker serves has one [`RoomFeed`]: a ring reader and a live cursor, so the worker reads each
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

use deadsfu_media::host::{Session, SessionHost, SessionKey};
use deadsfu_media::limits::{Refusals, SessionLimits};
use deadsfu_media::process::{self, Core, Endpoints, StartError};
use deadsfu_media::{codec, offer};
use shm_proto::config::Config;
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
/// ~96 bytes a packet (12 KB; `vendor/str0m/DEADSFU-PATCH.md`, `media/examples/session_memory.rs`).
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
    splicer: Option<Splicer>,
}

/// Where a viewer's video stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VideoChoice {
    /// The source being forwarded.
    source: u32,
    /// The ring payload type of that source being forwarded (a slate may carry several codecs).
    ring_pt: u8,
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
    /// What the viewer negotiated.
    negotiated: CodecConfig,
    /// Ring payload type -> this viewer's payload type, for the ring's current codec table.
    pt_map: HashMap<u8, Option<Pt>>,
    pt_map_version: u64,
}

/// A room as one worker sees it.
struct RoomFeed {
    path: PathBuf,
    reader: Option<RingReader>,
    cursor: RingCursor,
    codecs: Vec<CodecEntry>,
    codecs_version: u64,
    viewers: Vec<SessionKey>,
    /// The viewers whose replay runs: a turn looks at these only, not at every viewer.
    replaying: Vec<SessionKey>,
    /// The payloads of the newest packets read live, by ring position: a replay sends these rather than a
    /// copy of its own, so viewers joining together share one copy of the GOP (in their RTX caches too).
    recent: VecDeque<(u64, Arc<[u8]>)>,
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
        now: Instant,
    ) -> Fanout {
        Fanout {
            index,
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

    fn request(&mut self, now: Instant, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(ProcessStatus {
                role: Role::Fanout,
                index: self.index,
                pid: std::process::id(),
                sessions: self.host.len() as u32,
                accepting: !self.draining,
            }),
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
            Request::Rooms => Response::Rooms {
                rooms: self
                    .rooms
                    .iter()
                    .map(|(name, feed)| RoomStatus {
                        viewers: feed.viewers.len() as u32,
                        ..RoomStatus::new(name.clone())
                    })
                    .collect(),
            },
            // Answered by the process loop, which holds the counters.
            Request::Metrics => error(ErrorKind::Internal, "metrics are answered by the process loop"),
            Request::Ingest(_) => error(ErrorKind::WrongRole, "fanout workers take viewers, not publishers"),
        }
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
        let codecs = &self.feed(&room, now).codecs;
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
        let id = SessionId::new(Owner::Worker(self.index), process::random_token());
        let mut viewer = Viewer {
            id,
            room: room.clone(),
            connected: false,
            audio: None,
            video: None,
            video_choice: None,
            replay: None,
            negotiated,
            pt_map: HashMap::new(),
            pt_map_version: u64::MAX,
        };
        // The answer made the send streams; find them by the media sections of the offer.
        for (mid, is_video) in sections {
            let mut api = accepted.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else { continue };
            if is_video {
                tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, None);
                tx.set_rtx_budget(Some(RTX_BUDGET));
                viewer.video.get_or_insert(Track { mid, splicer: None });
            } else {
                viewer.audio.get_or_insert(Track { mid, splicer: None });
            }
        }
        if viewer.audio.is_none() && viewer.video.is_none() {
            self.drop_feed_if_unwatched(&room);
            return error(ErrorKind::BadOffer, "the offer asks to receive neither audio nor video");
        }
        let key = self.host.insert(accepted.rtc, accepted.ufrag, viewer, now);
        self.ids.insert(id, key);
        self.feed(&room, now).viewers.push(key);
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
    fn feed(&mut self, room: &RoomName, now: Instant) -> &mut RoomFeed {
        feed(&mut self.rooms, &self.runtime_dir, self.index, room, now)
    }

    fn switch(&mut self, now: Instant, session: SessionId, room: RoomName) -> Response {
        let Some(&key) = self.ids.get(&session) else {
            return error(ErrorKind::UnknownSession, "no such viewer session");
        };
        let old = self.host.get(key).expect("ids and host agree").app.room.clone();
        if old == room {
            return Response::Done;
        }
        let Fanout { host, rooms, runtime_dir, buf, index, .. } = self;
        let session = host.get_mut(key).expect("ids and host agree");
        if let Some(feed) = rooms.get_mut(&old) {
            feed.remove(key);
            if feed.viewers.is_empty() {
                rooms.remove(&old);
            }
        }
        let feed = feed(rooms, runtime_dir, *index, &room, now);
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

    /// Reads what is new in every ring with viewers and writes it into their sessions.
    fn pump(&mut self, now: Instant) {
        let now_ns = now.duration_since(self.t0).as_nanos() as u64;
        let stale_before = process::unix_ns().saturating_sub(MAX_LAG.as_nanos() as u64);
        let replay_budget = replay_budget(now.saturating_duration_since(self.last_pump));
        self.last_pump = now;
        self.replaying = false;
        self.backlog = false;
        for feed in self.rooms.values_mut() {
            if !feed.open(now, self.index) {
                continue;
            }
            let reader = feed.reader.as_ref().expect("open() returned true");
            let live_pos = feed.cursor.position();
            // Replays first, up to where the live feed stands. A replay goes out at most replay_budget packets a
            // turn and skips live packets meanwhile; each turn it walks on to the live position of that turn,
            // which it soon reaches (it is far faster than any stream), and then it joins live at exactly the
            // next packet.
            let mut replaying = std::mem::take(&mut feed.replaying);
            let mut replayed = 0;
            replaying.retain(|&key| {
                let Some(session) = self.host.get_mut(key) else { return false };
                let Some(mut cursor) = session.app.replay.take() else { return false };
                let mut wrote = false;
                let mut sent = 0;
                let mut done = false;
                while sent < replay_budget {
                    if cursor.position() >= live_pos {
                        done = true;
                        break;
                    }
                    let Some((meta, len)) = cursor.next(reader, &mut self.buf) else {
                        // The ring lost the packets: join live and wait for a keyframe.
                        session.app.video_choice = None;
                        done = true;
                        break;
                    };
                    if cursor.last_position().is_some_and(|p| p >= live_pos) {
                        // Lapped and resynced past the live position: live delivers from here.
                        session.app.video_choice = None;
                        done = true;
                        break;
                    }
                    if meta.kind == MediaKind::Video {
                        let pos = cursor.last_position().expect("a packet was just read");
                        let payload = shared_payload(&feed.recent, pos).unwrap_or_else(|| Arc::from(&self.buf[..len]));
                        let pace = Pace::Replay;
                        if deliver(session, &feed.codecs, feed.codecs_version, &meta, &payload, now, now_ns, pace) {
                            wrote = true;
                            sent += 1;
                        }
                    }
                }
                replayed += sent;
                if !done {
                    session.app.replay = Some(cursor);
                    self.replaying = true;
                }
                if wrote {
                    self.host.touch(key);
                }
                !done
            });
            feed.replaying = replaying;
            self.packets_replayed += replayed as u64;
            for n in 0..=READ_BUDGET {
                if n == READ_BUDGET {
                    self.backlog = true;
                    break;
                }
                let Some((meta, len)) = feed.cursor.next(reader, &mut self.buf) else { break };
                let pos = feed.cursor.last_position().expect("a packet was just read");
                if meta.arrival_unix_ns < stale_before {
                    if let Some(keyframe) = reader.latest_keyframe().filter(|&k| k > pos) {
                        tracing::warn!(ring = %feed.path.display(), skipped = keyframe - pos, "fell over {MAX_LAG:?} \
                            behind the ring (short of CPU?); skipping to the newest keyframe");
                        feed.cursor.skip_to(keyframe);
                        self.lag_skips += 1;
                        continue;
                    }
                }
                let payload: Arc<[u8]> = Arc::from(&self.buf[..len]);
                if feed.recent.back().is_some_and(|(last, _)| *last + 1 != pos) {
                    // Lapped and resynced: keep the positions contiguous.
                    feed.recent.clear();
                }
                if feed.recent.len() == RECENT_PAYLOADS {
                    feed.recent.pop_front();
                }
                feed.recent.push_back((pos, payload.clone()));
                for &key in &feed.viewers {
                    let Some(session) = self.host.get_mut(key) else { continue };
                    if deliver(session, &feed.codecs, feed.codecs_version, &meta, &payload, now, now_ns, Pace::Live) {
                        self.host.touch(key);
                        self.packets_live += 1;
                    }
                }
            }
            // Replays start at the newest keyframe (of the viewer's codec: a slate's keyframes of its codecs
            // are written together, a few positions apart), so older payloads need not be kept.
            if let Some(keyframe) = reader.latest_keyframe() {
                let keep_from = keyframe.saturating_sub(KEYFRAME_MARGIN);
                while feed.recent.front().is_some_and(|(pos, _)| *pos < keep_from) {
                    feed.recent.pop_front();
                }
            }
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
) -> &'a mut RoomFeed {
    let feed = rooms.entry(room.clone()).or_insert_with(|| RoomFeed {
        path: paths::ring(runtime_dir, room),
        reader: None,
        cursor: RingCursor::at(0),
        codecs: Vec::new(),
        codecs_version: u64::MAX,
        viewers: Vec::new(),
        replaying: Vec::new(),
        recent: VecDeque::new(),
        next_open: now,
        open_failures: 0,
        next_check: now,
        wake_bit: None,
    });
    feed.open(now, index);
    feed
}

impl RoomFeed {
    /// Makes sure the ring is open and current, and that worker `index` is woken when it gets packets; false
    /// while the room has no ring yet.
    fn open(&mut self, now: Instant, index: u32) -> bool {
        if now >= self.next_check {
            self.next_check = now + RING_CHECK;
            if let Some(reader) = &self.reader {
                if reader.is_replaced() {
                    tracing::debug!(path = %self.path.display(), "ring replaced; reopening");
                    self.reader = None;
                } else {
                    reader.heartbeat(process::unix_ms());
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
                    self.codecs_version = u64::MAX;
                    reader.heartbeat(process::unix_ms());
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
        if version != self.codecs_version {
            self.codecs = reader.codecs();
            self.codecs_version = version;
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
        let video: Vec<u8> = self.codecs.iter().filter(|e| e.kind == MediaKind::Video).map(|e| e.pt).collect();
        let favourite =
            video.into_iter().find(|pt| viewer_pt(viewer, &self.codecs, self.codecs_version, *pt).is_some());
        let mut fallback = None;
        for pos in reader.keyframes().into_iter().rev().filter(|&p| p < live_pos) {
            let shm_proto::ring::ReadOutcome::Packet { meta, .. } = reader.read(pos, buf) else { continue };
            if Some(meta.pt) == favourite {
                fallback = Some(pos);
                break;
            }
            if fallback.is_none() && viewer_pt(viewer, &self.codecs, self.codecs_version, meta.pt).is_some() {
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
}

/// The payload read live at ring position `pos`, if it is still kept.
fn shared_payload(recent: &VecDeque<(u64, Arc<[u8]>)>, pos: u64) -> Option<Arc<[u8]>> {
    let first = recent.front()?.0;
    let (at, payload) = recent.get(usize::try_from(pos.checked_sub(first)?).ok()?)?;
    (*at == pos).then(|| payload.clone())
}

/// The viewer's payload type for a ring payload type, if it negotiated that codec.
fn viewer_pt(viewer: &mut Viewer, codecs: &[CodecEntry], codecs_version: u64, ring_pt: u8) -> Option<Pt> {
    if viewer.pt_map_version != codecs_version {
        viewer.pt_map.clear();
        viewer.pt_map_version = codecs_version;
    }
    let negotiated = &viewer.negotiated;
    *viewer.pt_map.entry(ring_pt).or_insert_with(|| {
        let entry = codecs.iter().find(|e| e.pt == ring_pt)?;
        negotiated.match_params(codec::params(entry)).map(|p| p.pt())
    })
}

/// Writes one ring packet into one viewer's session; true if something was written.
#[allow(clippy::too_many_arguments)]
fn deliver(
    session: &mut Session<Viewer>,
    codecs: &[CodecEntry],
    codecs_version: u64,
    meta: &PacketMeta,
    payload: &Arc<[u8]>,
    now: Instant,
    now_ns: u64,
    pace: Pace,
) -> bool {
    let (viewer, rtc) = (&mut session.app, &mut session.rtc);
    if !viewer.connected || (pace == Pace::Live && viewer.replay.is_some()) {
        return false;
    }
    let Some(pt) = viewer_pt(viewer, codecs, codecs_version, meta.pt) else { return false };
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
        MediaKind::Audio => {
            let clock = codecs.iter().find(|e| e.pt == meta.pt).map_or(48_000, |e| e.clock_rate);
            (viewer.audio.as_mut(), clock)
        }
    };
    let Some(track) = track else { return false };
    let splicer = track.splicer.get_or_insert_with(|| {
        let first_seq = (process::random_u32() % 16_384) as u16;
        Splicer::new(clock_rate, first_seq, process::random_u32())
    });
    let out = splicer.map(SourceId { source: meta.source, ssrc: meta.ssrc }, meta.seq, meta.timestamp, now_ns, pace);
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(track.mid, None) else { return false };
    let ext = ExtensionValues {
        audio_level: meta.audio_level,
        voice_activity: meta.voice_activity,
        video_orientation: meta.video_orientation.map(VideoOrientation::from),
        ..Default::default()
    };
    tx.write_rtp(
        RtpWrite::new(pt, out.seq.into(), out.timestamp, now, payload.clone())
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
        Fanout::new(index, runtime_dir.clone(), candidates, limits, now).with_slate(cfg.slate)
    })
}

#[cfg(test)]
mod tests {
    use shm_proto::ring::{Codec, Geometry, RingWriter};
    use str0m::media::Direction;
    use str0m::Rtc;

    use super::*;

    fn entry(pt: u8, kind: MediaKind, codec: Codec, clock_rate: u32, channels: u8, fmtp: &str) -> CodecEntry {
        CodecEntry { pt, kind, codec, clock_rate, channels, fmtp: fmtp.to_string(), slate: false }
    }

    fn opus() -> CodecEntry {
        entry(111, MediaKind::Audio, Codec::Opus, 48_000, 2, "minptime=10;useinbandfec=1")
    }

    fn h264() -> CodecEntry {
        let fmtp = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
        entry(102, MediaKind::Video, Codec::H264, 90_000, 0, fmtp)
    }

    fn vp8() -> CodecEntry {
        entry(96, MediaKind::Video, Codec::Vp8, 90_000, 0, "")
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
        (Fanout::new(0, dir.clone(), candidates, SessionLimits::default(), Instant::now()), ring, dir)
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
        let mut recent: VecDeque<(u64, Arc<[u8]>)> = VecDeque::new();
        assert!(shared_payload(&recent, 5).is_none());
        for pos in 10..20u64 {
            recent.push_back((pos, Arc::from(&[pos as u8][..])));
        }
        let p = shared_payload(&recent, 13).expect("kept");
        assert_eq!(&*p, &[13u8]);
        assert!(Arc::ptr_eq(&p, &recent[3].1), "the same allocation, not a copy");
        assert!(shared_payload(&recent, 9).is_none(), "older than kept");
        assert!(shared_payload(&recent, 20).is_none(), "not read yet");
    }
}
