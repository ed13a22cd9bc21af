//! The ingest core: publisher sessions in, ring writes out, and the slate for rooms nobody publishes to.
//!
//! A room is a ring and what ingest writes into it. The rules, decided here and nowhere else (ingest is the
//! rings' only writer):
//! - a room is *watched* while a fanout worker heartbeats its ring, or for a few seconds after signaling
//!   announced a viewer for it (`Watch`), so the slate can start before the viewer's worker opens the ring;
//! - a watched room without live video (no publisher, or none of its video for [`LIVE_TIMEOUT`]) plays the
//!   slate; live video takes over again at its first keyframe, and until then its other video packets are
//!   held back, so no viewer ever gets a picture it cannot decode;
//! - keyframe requests that readers leave in the ring reach the publisher as PLI, at most one per
//!   `keyframe_request_interval_ms`, plus one every `keyframe_fallback_interval_s` while the room is watched;
//! - a publisher silent for [`PUBLISHER_TIMEOUT`] is gone, and its room is free;
//! - on an edge (an upstream configured), a watched room without a publisher is pulled from the upstream
//!   ([`crate::upstream`]) and written like a publisher's media; a failed pull is retried with backoff while
//!   the slate stands in, and a pull ends `upstream_grace` after the room's last viewer left. An edge refuses
//!   publishers unless told otherwise; an accepted one takes the room over from the pull.
//!
//! [`Ingest`] is fed with control requests, datagrams and time, and never touches a socket itself; [`run`] is
//! the loop around it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use deadsfu_media::host::{SessionHost, SessionKey};
use deadsfu_media::limits::{Refusals, SessionLimits};
use deadsfu_media::process::{self, Core, Endpoints, StartError};
use deadsfu_media::wake::WakeSender;
use deadsfu_media::{codec, offer};
use mio::Waker;
use shm_proto::config::Config;
use shm_proto::control::{
    ErrorKind, IngestRequest, ProcessMetrics, ProcessStatus, Request, Response, RingMetrics, Role, RoomStatus,
    UpstreamMetrics, UpstreamState, UpstreamStatus,
};
use shm_proto::ring::{Codec, CodecEntry, Geometry, MediaKind, PacketMeta, RingReader, RingWriter};
use shm_proto::{paths, Owner, RoomName, SessionId};
use str0m::media::{KeyframeRequestKind, Mid};
use str0m::net::Transmit;
use str0m::rtp::{RtpPacket, Ssrc};
use str0m::{Candidate, Event, IceConnectionState};

use crate::keyframe;
use crate::slate::{Slate, SlatePlayer};
use crate::upstream::{FailureKind, Pull, PullEvent, Upstream};

/// How often rings get a heartbeat, and rooms and publishers are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// Live video missing this long hands the room to the slate.
const LIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// A publisher that sends nothing for this long is gone.
const PUBLISHER_TIMEOUT: Duration = Duration::from_secs(3);
/// A ring whose readers have not heartbeaten for this long is not watched.
const WATCH_TIMEOUT_MS: u64 = 3_000;
/// After a `Watch`, the room counts as watched this long even before a reader heartbeats.
const WATCH_GRACE: Duration = Duration::from_secs(5);
/// How often the rings directory is scanned for watched rings ingest does not hold (after a restart).
const ADOPT_SCAN: Duration = Duration::from_secs(1);
/// Window of the bitrate figure.
const BITRATE_WINDOW: Duration = Duration::from_secs(2);
/// Wait before the first retry of a failed pull; it doubles with each failure in a row up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// What ingest is told at start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub runtime_dir: PathBuf,
    pub geometry: Geometry,
    pub keyframe_request_interval: Duration,
    /// `None`: no unprompted keyframe requests.
    pub keyframe_fallback_interval: Option<Duration>,
    /// The upstream this edge pulls rooms from; `None` on an origin.
    pub upstream: Option<Arc<Upstream>>,
    /// How long a pull outlives the room's last viewer.
    pub upstream_grace: Duration,
    /// Publishers are refused (an edge not told to take them).
    pub refuse_publishers: bool,
    /// The slate plays in watched rooms without live video.
    pub slate: bool,
    /// Publisher sessions held at once, and those still connecting.
    pub sessions: SessionLimits,
    /// Rooms held at once.
    pub max_rooms: usize,
    /// How long a room with no publisher, no viewer and no pull is kept before it and its ring file go.
    pub room_grace: Duration,
    /// On an edge: pulls at once.
    pub max_pulls: usize,
}

/// Why a room might want a keyframe from its publisher now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KeyframeNeed {
    /// A reader bumped the ring's request counter (a joining or switching viewer, or a viewer's PLI/FIR).
    asked: bool,
    /// The slate is standing in for a publisher that is still connected.
    waiting: bool,
    /// The slow periodic fallback is due and someone watches.
    fallback: bool,
}

impl KeyframeNeed {
    /// True if a PLI goes to the publisher now: some reason holds and the last request is at least
    /// `interval` old. Requests are throttled per room, however many viewers ask.
    fn request_now(self, last: Option<Instant>, now: Instant, interval: Duration) -> bool {
        (self.asked || self.waiting || self.fallback) && last.is_none_or(|t| now.duration_since(t) >= interval)
    }
}

/// One source of a room's media: a publisher, or an edge's pull from the upstream.
struct Feed {
    room: RoomName,
    /// Identifies this source's packets in the ring (so readers see a source change).
    source: u32,
    /// Payload type -> ring entry, from the negotiated parameters.
    codecs: HashMap<u8, CodecEntry>,
    video_ssrcs: Vec<Ssrc>,
    /// Per video SSRC, the timestamp of the last keyframe start: a keyframe (SPS, PPS, IDR fragments) spans
    /// several packets that may each look like a start, and only the first may be indexed.
    keyframe_ts: HashMap<Ssrc, u32>,
}

impl Feed {
    fn new(room: RoomName) -> Feed {
        Feed {
            room,
            source: process::random_u32(),
            codecs: HashMap::new(),
            video_ssrcs: Vec::new(),
            keyframe_ts: HashMap::new(),
        }
    }
}

/// A publisher session.
pub struct Publisher {
    id: SessionId,
    /// The audio and video media sections of the offer.
    mids: Vec<Mid>,
    /// Its codecs are filled at the first packet.
    feed: Feed,
}

/// An edge's running pull of a room.
struct ActivePull {
    pull: Pull,
    /// Its codecs are filled when the pull connects.
    feed: Feed,
    /// Media has arrived.
    receiving: bool,
}

/// An edge room's record of its pulls: the failures in a row that wait for a retry.
#[derive(Default)]
struct UpstreamRecord {
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

/// A room's ring and what is written into it.
struct Room {
    ring: RingWriter,
    publisher: Option<SessionKey>,
    /// The publisher's codec entries (empty without a publisher).
    live_codecs: Vec<CodecEntry>,
    last_live_video: Option<Instant>,
    slate: Option<SlatePlayer>,
    /// Per slate clip, its payload type in the ring while it plays, or `None` if that clip is not played.
    slate_pts: Vec<Option<u8>>,
    watched_until: Option<Instant>,
    /// Since when nobody publishes, watches or pulls the room: it is removed [`Settings::room_grace`] later.
    idle_since: Option<Instant>,
    upstream: UpstreamRecord,
    seen_keyframe_requests: u64,
    last_keyframe_request: Option<Instant>,
    /// Bytes written in the current window, and the rate of the last full window.
    window_start: Instant,
    window_bytes: u64,
    bitrate_bps: u64,
    /// Packets were written this loop turn: its readers get a wake-up.
    written: bool,
}

impl Room {
    fn new(ring: RingWriter, now: Instant) -> Room {
        let seen = ring.keyframe_requests();
        Room {
            ring,
            publisher: None,
            live_codecs: Vec::new(),
            last_live_video: None,
            slate: None,
            slate_pts: Vec::new(),
            watched_until: None,
            idle_since: None,
            upstream: UpstreamRecord::default(),
            seen_keyframe_requests: seen,
            last_keyframe_request: None,
            window_start: now,
            window_bytes: 0,
            bitrate_bps: 0,
            written: false,
        }
    }

    fn watched(&self, now: Instant, now_ms: u64) -> bool {
        self.watched_until.is_some_and(|t| now < t)
            || now_ms.saturating_sub(self.ring.reader_heartbeat_unix_ms()) < WATCH_TIMEOUT_MS
    }

    /// Live video arrived lately (`last_live_video` is cleared when a source goes).
    fn live(&self, now: Instant) -> bool {
        self.last_live_video.is_some_and(|t| now.duration_since(t) < LIVE_TIMEOUT)
    }

    fn push(&mut self, meta: &PacketMeta, payload: &[u8], room: &RoomName) {
        match self.ring.push(meta, payload) {
            Ok(_) => {
                self.window_bytes += payload.len() as u64;
                self.written = true;
            }
            Err(e) => tracing::warn!(error = %e, %room, "packet not written"),
        }
    }

    /// Writes a packet of the room's source into the ring: video held back while the slate plays until a
    /// keyframe, keyframes detected and indexed.
    fn write_live(&mut self, feed: &mut Feed, pkt: &RtpPacket, slate: &Slate, now: Instant) {
        let pt = *pkt.header.payload_type;
        let Some(entry) = feed.codecs.get(&pt) else {
            tracing::trace!(pt, "packet of a payload type the ring does not carry");
            return;
        };
        let (codec, kind) = (entry.codec, entry.kind);
        if !self.live_codecs.iter().any(|e| e.pt == pt) {
            // A pull learns which of the negotiated codecs the upstream sends as they arrive.
            self.live_codecs.push(entry.clone());
            self.write_codecs(slate, &feed.room);
        }
        let ssrc = pkt.header.ssrc;
        let is_keyframe = kind == MediaKind::Video
            && keyframe::is_keyframe(codec, &pkt.payload)
            && feed.keyframe_ts.insert(ssrc, pkt.header.timestamp) != Some(pkt.header.timestamp);
        if kind == MediaKind::Video {
            if !feed.video_ssrcs.contains(&ssrc) {
                feed.video_ssrcs.push(ssrc);
            }
            if self.slate.is_some() {
                if !is_keyframe {
                    // The slate holds the picture until live video can start clean.
                    return;
                }
                self.slate = None;
                self.write_codecs(slate, &feed.room);
                tracing::info!(room = %feed.room, "live video is back; slate stopped");
            }
            self.last_live_video = Some(now);
        }
        // How long ago the socket delivered it, so the ring records when it really arrived.
        let waited = now.saturating_duration_since(pkt.timestamp).as_nanos() as u64;
        let ext = &pkt.header.ext_vals;
        let meta = PacketMeta {
            arrival_unix_ns: process::unix_ns().saturating_sub(waited),
            seq: *pkt.seq_no,
            timestamp: pkt.header.timestamp,
            ssrc: *ssrc,
            source: feed.source,
            pt,
            kind,
            marker: pkt.header.marker,
            keyframe: is_keyframe,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation.map(|o| o as u8),
        };
        self.push(&meta, &pkt.payload, &feed.room);
    }

    /// Writes the codec table: the publisher's codecs, plus the slate's while it plays, on payload types the
    /// publisher does not use. Once the source's video codecs are known, the slate plays only in those, so a
    /// viewer is never admitted on the strength of a slate codec it could not watch live in.
    fn write_codecs(&mut self, slate: &Slate, room: &RoomName) {
        let mut entries = self.live_codecs.clone();
        self.slate_pts.clear();
        if self.slate.is_some() {
            let live_video: Vec<Codec> =
                self.live_codecs.iter().filter(|e| e.kind == MediaKind::Video).map(|e| e.codec).collect();
            let mut free = (96..=127u8).rev().chain(35..=63).filter(|pt| !self.live_codecs.iter().any(|e| e.pt == *pt));
            for entry in slate.entries(|_| free.next().expect("the publisher leaves payload types free")) {
                let fits = live_video.is_empty() || live_video.contains(&entry.codec);
                self.slate_pts.push(fits.then_some(entry.pt));
                if fits {
                    entries.push(entry);
                }
            }
        }
        if let Err(e) = self.ring.set_codecs(&entries) {
            tracing::warn!(error = %e, %room, "cannot write codec table");
        }
    }
}

pub struct Ingest {
    settings: Settings,
    candidates: Vec<Candidate>,
    slate: Slate,
    host: SessionHost<Publisher>,
    rooms: HashMap<RoomName, Room>,
    ids: HashMap<SessionId, SessionKey>,
    events: Vec<(SessionKey, Event)>,
    next_housekeeping: Instant,
    next_adopt_scan: Instant,
    next_fallback: Instant,
    /// Stopping: no new publishers.
    draining: bool,
    /// PLIs sent to publishers since start.
    keyframe_requests_sent: u64,
    /// An edge's running pulls, by room; their events arrive on `pull_events`, tagged with the pull's id.
    pulls: HashMap<RoomName, ActivePull>,
    pull_rooms: HashMap<u64, RoomName>,
    pull_sender: Sender<(u64, PullEvent)>,
    pull_events: Receiver<(u64, PullEvent)>,
    next_pull_id: u64,
    /// Threads of ended pulls still saying goodbye to the upstream.
    ending_pulls: Vec<JoinHandle<()>>,
    waker: Arc<Waker>,
    wakes: WakeSender,
    refused: Refusals,
}

impl Ingest {
    pub fn new(
        settings: Settings,
        slate: Slate,
        candidates: Vec<Candidate>,
        waker: Arc<Waker>,
        now: Instant,
    ) -> Ingest {
        let (pull_sender, pull_events) = mpsc::channel();
        let wakes = WakeSender::new(&settings.runtime_dir);
        let next_fallback = now + settings.keyframe_fallback_interval.unwrap_or(Duration::MAX / 4);
        Ingest {
            settings,
            candidates,
            slate,
            host: SessionHost::new(),
            rooms: HashMap::new(),
            ids: HashMap::new(),
            events: Vec::new(),
            next_housekeeping: now,
            next_adopt_scan: now,
            next_fallback,
            draining: false,
            keyframe_requests_sent: 0,
            pulls: HashMap::new(),
            pull_rooms: HashMap::new(),
            pull_sender,
            pull_events,
            next_pull_id: 1,
            ending_pulls: Vec::new(),
            waker,
            wakes,
            refused: Refusals::default(),
        }
    }

    fn request(&mut self, now: Instant, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(ProcessStatus {
                role: Role::Ingest,
                index: 0,
                pid: std::process::id(),
                sessions: self.host.len() as u32,
                accepting: !self.draining,
            }),
            Request::Ingest(IngestRequest::Publish { room, offer }) => self.publish(now, room, &offer),
            Request::Ingest(IngestRequest::Watch { room }) => match self.room(&room, now) {
                Ok(r) => {
                    r.watched_until = Some(now + WATCH_GRACE);
                    Response::Done
                }
                Err(resp) => resp,
            },
            Request::Check { session } => match self.ids.contains_key(&session) {
                true => Response::Done,
                false => error(ErrorKind::UnknownSession, "no such publisher session"),
            },
            Request::Close { session } => match self.ids.get(&session) {
                Some(&key) => {
                    self.close(key);
                    Response::Closed
                }
                None => error(ErrorKind::UnknownSession, "no such publisher session"),
            },
            Request::Rooms => Response::Rooms { rooms: self.rooms_status(now) },
            // Answered by the process loop, which holds the counters.
            Request::Metrics => error(ErrorKind::Internal, "metrics are answered by the process loop"),
            Request::Fanout(_) => error(ErrorKind::WrongRole, "ingest takes publishers, not viewers"),
        }
    }

    fn rooms_status(&self, now: Instant) -> Vec<RoomStatus> {
        let now_ms = process::unix_ms();
        self.rooms
            .iter()
            .filter(|(name, r)| r.publisher.is_some() || r.watched(now, now_ms) || self.pulls.contains_key(*name))
            .map(|(name, r)| {
                let mut codecs: Vec<String> = r.live_codecs.iter().map(|e| e.codec.name().to_string()).collect();
                codecs.dedup();
                RoomStatus {
                    name: name.clone(),
                    live: r.live(now),
                    slate: r.slate.is_some(),
                    codecs,
                    bitrate_bps: r.bitrate_bps,
                    viewers: 0,
                    upstream: self.upstream_status(name, r),
                }
            })
            .collect()
    }

    /// How the room's pull stands, on an edge that pulls it or failed to.
    fn upstream_status(&self, name: &RoomName, room: &Room) -> Option<UpstreamStatus> {
        let record = &room.upstream;
        let state = match self.pulls.get(name) {
            Some(p) if p.receiving => UpstreamState::Pulling,
            Some(_) => UpstreamState::Connecting,
            None if record.failures > 0 => UpstreamState::Retrying,
            None => return None,
        };
        Some(UpstreamStatus {
            state,
            error: (state != UpstreamState::Pulling).then(|| record.last_error.clone()).flatten(),
            failures: record.failures,
        })
    }

    /// The room, its ring opened (created if need be) if ingest did not hold it yet and holds fewer than
    /// [`Settings::max_rooms`].
    fn room(&mut self, room: &RoomName, now: Instant) -> Result<&mut Room, Response> {
        if !self.rooms.contains_key(room) {
            if self.rooms.len() >= self.settings.max_rooms {
                self.refused.count("rooms");
                let max = self.settings.max_rooms;
                return Err(error(ErrorKind::Unavailable, &format!("this server holds its limit of {max} rooms")));
            }
            let path = paths::ring(&self.settings.runtime_dir, room);
            let ring = RingWriter::create(&path, self.settings.geometry, process::unix_ms())
                .map_err(|e| error(ErrorKind::Internal, &format!("cannot open ring for room {room}: {e}")))?;
            tracing::debug!(%room, epoch = ring.epoch(), "ring opened for writing");
            self.rooms.insert(room.clone(), Room::new(ring, now));
        }
        Ok(self.rooms.get_mut(room).expect("inserted above"))
    }

    fn publish(&mut self, now: Instant, room: RoomName, offer_sdp: &str) -> Response {
        if self.draining {
            return error(ErrorKind::Unavailable, "ingest is stopping");
        }
        if self.settings.refuse_publishers {
            let upstream = self.settings.upstream.as_ref().map_or("an upstream", |u| u.base());
            return error(
                ErrorKind::Forbidden,
                &format!("this host is an edge of {upstream} and takes no publishers: publish there (or start this host with --edge-publish true)"),
            );
        }
        if self.rooms.get(&room).is_some_and(|r| r.publisher.is_some()) {
            return error(ErrorKind::RoomBusy, &format!("room {room} already has a publisher"));
        }
        if let Err(refusal) = self.settings.sessions.admit(&self.host) {
            self.refused.count(refusal.limit);
            return error(ErrorKind::Unavailable, &refusal.message);
        }
        if let Err(reason) = self.settings.sessions.check_offer(offer_sdp) {
            return error(ErrorKind::BadOffer, &reason);
        }
        let accepted = match offer::accept(offer_sdp, &self.candidates, now, |c| c) {
            Ok(a) => a,
            Err(e) => return error(ErrorKind::BadOffer, &e.to_string()),
        };
        if let Err(resp) = self.room(&room, now) {
            return resp;
        }
        let id = SessionId::new(Owner::Ingest, process::random_token());
        let publisher = Publisher {
            id,
            mids: offer::media_sections(offer_sdp).into_iter().map(|(mid, _)| mid).collect(),
            feed: Feed::new(room.clone()),
        };
        if self.end_pull(&room) {
            tracing::info!(%room, "a publisher takes the room over from the upstream pull");
        }
        let key = self.host.insert(accepted.rtc, accepted.ufrag, publisher, now);
        let r = self.rooms.get_mut(&room).expect("room made above");
        r.publisher = Some(key);
        // A publisher gets LIVE_TIMEOUT to send its first video before the slate stands in for it.
        r.last_live_video = Some(now);
        r.seen_keyframe_requests = r.ring.keyframe_requests();
        self.ids.insert(id, key);
        tracing::info!(session = %id, %room, "publisher joined");
        Response::Answer { session: id, answer: accepted.answer }
    }

    /// Ends a publisher's session: its room is free at once, the session gone once its goodbye is out.
    fn close(&mut self, key: SessionKey) {
        let Some(s) = self.host.get(key) else { return };
        if self.ids.remove(&s.app.id).is_some() {
            tracing::info!(session = %s.app.id, room = %s.app.feed.room, "publisher left");
            if let Some(room) = self.rooms.get_mut(&s.app.feed.room) {
                if room.publisher == Some(key) {
                    room.publisher = None;
                    room.live_codecs.clear();
                    room.last_live_video = None;
                }
            }
        }
        self.host.close(key);
    }

    /// Ends the room's pull, if it has one (its thread deletes the upstream session); true if it had one.
    fn end_pull(&mut self, name: &RoomName) -> bool {
        let Some(active) = self.pulls.remove(name) else { return false };
        self.pull_rooms.remove(&active.pull.id());
        self.ending_pulls.extend(active.pull.stop());
        if let Some(room) = self.rooms.get_mut(name) {
            room.live_codecs.clear();
            room.last_live_video = None;
        }
        true
    }

    /// On an edge: starts pulls for watched rooms nobody publishes to (when no retry is pending), and ends
    /// pulls whose room has had no viewer for the grace period or got a publisher.
    fn manage_pulls(&mut self, now: Instant, now_ms: u64) {
        let Some(upstream) = self.settings.upstream.clone() else { return };
        self.ending_pulls.retain(|t| !t.is_finished());
        let mut ended = Vec::new();
        for (name, room) in &mut self.rooms {
            let wanted = room.publisher.is_none() && room.watched(now, now_ms);
            let record = &mut room.upstream;
            let pulling = self.pulls.contains_key(name);
            if wanted {
                record.unwatched_since = None;
                if !pulling && !self.draining && record.retry_at.is_none_or(|t| now >= t) {
                    if self.pulls.len() >= self.settings.max_pulls {
                        let reason = format!("this edge pulls its limit of {} rooms at once", self.settings.max_pulls);
                        if record.last_error.as_deref() != Some(reason.as_str()) {
                            self.refused.count("pulls");
                            tracing::warn!(room = %name, "{reason}; the room waits on the slate");
                            record.last_error = Some(reason);
                        }
                        continue;
                    }
                    let id = self.next_pull_id;
                    self.next_pull_id += 1;
                    let pull =
                        Pull::start(upstream.clone(), name.clone(), id, self.pull_sender.clone(), self.waker.clone());
                    self.pulls
                        .insert(name.clone(), ActivePull { pull, feed: Feed::new(name.clone()), receiving: false });
                    self.pull_rooms.insert(id, name.clone());
                    tracing::info!(room = %name, upstream = upstream.base(), attempt = record.failures + 1, "pulling the room from the upstream");
                }
            } else if !pulling {
                // Nobody waits for this room any more: no retries, no status.
                record.failures = 0;
                record.last_error = None;
                record.retry_at = None;
            } else if room.publisher.is_some()
                || now.duration_since(*record.unwatched_since.get_or_insert(now)) >= self.settings.upstream_grace
            {
                ended.push(name.clone());
            }
        }
        for name in ended {
            self.end_pull(&name);
            tracing::info!(room = %name, grace = ?self.settings.upstream_grace, "no viewers left; pull ended");
        }
    }

    /// Takes in what the pulls sent: their media goes into the rings like a publisher's.
    fn drain_pulls(&mut self, now: Instant) {
        while let Ok((id, event)) = self.pull_events.try_recv() {
            // Events of a pull that was ended already are dropped.
            let Some(name) = self.pull_rooms.get(&id).cloned() else { continue };
            let (Some(room), Some(active)) = (self.rooms.get_mut(&name), self.pulls.get_mut(&name)) else { continue };
            match event {
                PullEvent::Connected { codecs } => {
                    active.feed.codecs = codecs.into_iter().map(|e| (e.pt, e)).collect();
                    tracing::debug!(room = %name, "pull connected to the upstream");
                }
                PullEvent::Packet(pkt) => {
                    if !active.receiving {
                        active.receiving = true;
                        room.upstream.failures = 0;
                        room.upstream.last_error = None;
                        tracing::info!(room = %name, "media arrives from the upstream");
                    }
                    room.write_live(&mut active.feed, &pkt, &self.slate, now);
                }
                PullEvent::Failed(failure) => {
                    let record = &mut room.upstream;
                    record.failures += 1;
                    *record.failure_counts.entry(failure.kind).or_default() += 1;
                    let delay = retry_delay(record.failures);
                    record.retry_at = Some(now + delay);
                    record.last_error = Some(failure.message.clone());
                    tracing::warn!(room = %name, reason = %failure.message, kind = failure.kind.label(), retry_in = ?delay, "pull from the upstream failed");
                    self.end_pull(&name);
                }
            }
        }
    }

    /// Drives the sessions and writes what publishers sent into the rings.
    fn drive(&mut self, now: Instant, send: &mut dyn FnMut(Transmit)) {
        let dead = self.host.poll(now, send, &mut self.events);
        let mut events = std::mem::take(&mut self.events);
        for (key, event) in events.drain(..) {
            match event {
                Event::RtpPacket(pkt) => self.on_rtp(key, pkt, now),
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => self.close(key),
                Event::Connected => {
                    if let Some(s) = self.host.get(key) {
                        tracing::debug!(session = %s.app.id, "publisher connected");
                    }
                }
                _ => {}
            }
        }
        self.events = events;
        for key in dead {
            self.close(key);
        }
    }

    fn on_rtp(&mut self, key: SessionKey, pkt: RtpPacket, now: Instant) {
        let Some(session) = self.host.get_mut(key) else { return };
        let publisher = &mut session.app;
        let Some(room) = self.rooms.get_mut(&publisher.feed.room) else { return };
        if publisher.feed.codecs.is_empty() {
            let negotiated = codec::negotiated(&session.rtc, &publisher.mids);
            room.live_codecs = negotiated.params().iter().filter_map(codec::entry).collect();
            publisher.feed.codecs = room.live_codecs.iter().map(|e| (e.pt, e.clone())).collect();
            room.write_codecs(&self.slate, &publisher.feed.room);
        }
        room.write_live(&mut publisher.feed, &pkt, &self.slate, now);
    }

    /// Heartbeats, the slate, keyframe requests, silent publishers, bitrate windows.
    fn housekeeping(&mut self, now: Instant) {
        let now_ms = process::unix_ms();
        for key in self.host.silent(now, PUBLISHER_TIMEOUT) {
            tracing::info!("publisher silent for {PUBLISHER_TIMEOUT:?}; closing");
            self.close(key);
        }
        self.manage_pulls(now, now_ms);
        if now >= self.next_adopt_scan {
            self.next_adopt_scan = now + ADOPT_SCAN;
            self.adopt_watched_rings(now, now_ms);
        }
        let fallback = now >= self.next_fallback;
        if fallback {
            self.next_fallback = now + self.settings.keyframe_fallback_interval.unwrap_or(Duration::MAX / 4);
        }
        self.drop_idle_rooms(now, now_ms);
        for (name, room) in &mut self.rooms {
            if room.ring.is_broken() {
                // Someone truncated the file: write a new one at the path, which readers reopen.
                let path = paths::ring(&self.settings.runtime_dir, name);
                match RingWriter::create(&path, self.settings.geometry, now_ms) {
                    Ok(ring) => {
                        tracing::warn!(room = %name, "ring file truncated under ingest; made a new one");
                        room.ring = ring;
                        room.write_codecs(&self.slate, name);
                    }
                    Err(e) => tracing::warn!(room = %name, error = %e, "ring file truncated; cannot make a new one"),
                }
            }
            room.ring.heartbeat(now_ms);
            if now.duration_since(room.window_start) >= BITRATE_WINDOW {
                let secs = now.duration_since(room.window_start).as_secs_f64();
                room.bitrate_bps = (room.window_bytes as f64 * 8.0 / secs) as u64;
                room.window_bytes = 0;
                room.window_start = now;
            }
            let watched = room.watched(now, now_ms);
            let want_slate = self.settings.slate && watched && !room.live(now);
            match (&room.slate, want_slate) {
                (None, true) => {
                    room.slate = Some(SlatePlayer::new(&self.slate, now, process::random_u32));
                    room.write_codecs(&self.slate, name);
                    tracing::info!(room = %name, "no live video; slate playing");
                }
                (Some(_), false) if !watched => {
                    room.slate = None;
                    room.write_codecs(&self.slate, name);
                    tracing::debug!(room = %name, "nobody watches; slate stopped");
                }
                _ => {}
            }
            let pull = self.pulls.get(name).filter(|p| p.receiving);
            if room.publisher.is_none() && pull.is_none() {
                continue;
            }
            let requests = room.ring.keyframe_requests();
            let why = KeyframeNeed {
                asked: requests != room.seen_keyframe_requests,
                // While the slate stands in for a publisher that is still there, keep asking for its keyframe.
                waiting: room.slate.is_some(),
                fallback: fallback && watched,
            };
            if !why.request_now(room.last_keyframe_request, now, self.settings.keyframe_request_interval) {
                continue;
            }
            room.seen_keyframe_requests = requests;
            room.last_keyframe_request = Some(now);
            self.keyframe_requests_sent += 1;
            if let Some(pull) = pull {
                pull.pull.request_keyframe();
                tracing::debug!(room = %name, ?why, "keyframe requested from the upstream");
                continue;
            }
            let Some(session) = room.publisher.and_then(|key| self.host.get_mut(key)) else { continue };
            let mut api = session.rtc.direct_api();
            for ssrc in &session.app.feed.video_ssrcs {
                if let Some(rx) = api.stream_rx(ssrc) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                }
            }
            tracing::debug!(session = %session.app.id, ?why, "keyframe requested from publisher");
            let key = room.publisher.expect("the session was found by it");
            self.host.touch(key);
        }
    }

    /// Removes the rooms nobody has published, watched or pulled for [`Settings::room_grace`], and their ring
    /// files: a room exists only while someone uses it.
    fn drop_idle_rooms(&mut self, now: Instant, now_ms: u64) {
        let grace = self.settings.room_grace;
        let mut idle = Vec::new();
        for (name, room) in &mut self.rooms {
            if room.publisher.is_some() || room.watched(now, now_ms) || self.pulls.contains_key(name) {
                room.idle_since = None;
            } else if now.saturating_duration_since(*room.idle_since.get_or_insert(now)) >= grace {
                idle.push(name.clone());
            }
        }
        for name in idle {
            self.rooms.remove(&name);
            remove_ring(&self.settings.runtime_dir, &name);
            tracing::debug!(room = %name, ?grace, "room unused; removed with its ring");
        }
    }

    /// Takes over rings that readers watch but no ingest writes (ingest restarted while viewers stayed), so
    /// their viewers get the slate until a publisher returns; removes ring files nobody writes or reads.
    fn adopt_watched_rings(&mut self, now: Instant, now_ms: u64) {
        let Ok(dir) = std::fs::read_dir(paths::rings_dir(&self.settings.runtime_dir)) else { return };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(room) = name.to_str().and_then(|n| n.strip_suffix(".ring")).and_then(|n| RoomName::new(n).ok())
            else {
                continue;
            };
            if self.rooms.contains_key(&room) {
                continue;
            }
            let Ok(reader) = RingReader::open(&entry.path()) else { continue };
            let unused_ms = self.settings.room_grace.as_millis() as u64 + WATCH_TIMEOUT_MS;
            if now_ms.saturating_sub(reader.reader_heartbeat_unix_ms()) < WATCH_TIMEOUT_MS {
                drop(reader);
                if self.room(&room, now).is_ok() {
                    tracing::info!(%room, "took over a watched ring");
                }
            } else if now_ms.saturating_sub(reader.reader_heartbeat_unix_ms().max(reader.heartbeat_unix_ms()))
                >= unused_ms
            {
                drop(reader);
                remove_ring(&self.settings.runtime_dir, &room);
                tracing::info!(%room, "removed a ring file nobody writes or reads");
            }
        }
    }

    /// Writes the slate frames that are due.
    fn play_slates(&mut self, now: Instant) {
        for (name, room) in &mut self.rooms {
            let Some(player) = &mut room.slate else { continue };
            let source = player.source;
            let due = player.poll(&self.slate, now);
            let arrival = process::unix_ns();
            for d in due {
                let Some(pt) = room.slate_pts.get(d.clip).copied().flatten() else { continue };
                let meta = PacketMeta {
                    arrival_unix_ns: arrival,
                    seq: d.seq,
                    timestamp: d.timestamp,
                    ssrc: d.ssrc,
                    source,
                    pt,
                    kind: MediaKind::Video,
                    marker: d.marker,
                    keyframe: d.keyframe,
                    audio_level: None,
                    voice_activity: None,
                    video_orientation: None,
                };
                match room.ring.push(&meta, d.payload) {
                    Ok(_) => {
                        room.window_bytes += d.payload.len() as u64;
                        room.written = true;
                    }
                    Err(e) => tracing::warn!(error = %e, room = %name, "slate packet not written"),
                }
            }
        }
    }

    /// Wakes the workers that read a ring written this turn.
    fn wake_readers(&mut self) {
        let mut mask = 0;
        for room in self.rooms.values_mut().filter(|r| r.written) {
            room.written = false;
            mask |= room.ring.wake_mask();
        }
        if mask != 0 {
            self.wakes.wake(mask);
        }
    }

    fn next_slate_frame(&self) -> Option<Instant> {
        self.rooms.values().filter_map(|r| r.slate.as_ref()).map(|p| p.next_due(&self.slate)).min()
    }
}

impl Core for Ingest {
    type App = Publisher;

    fn host(&self) -> &SessionHost<Publisher> {
        &self.host
    }

    fn host_and_events(&mut self) -> (&mut SessionHost<Publisher>, &mut Vec<(SessionKey, Event)>) {
        (&mut self.host, &mut self.events)
    }

    fn end_session(&mut self, key: SessionKey) {
        self.close(key);
    }

    fn stop_accepting(&mut self) {
        self.draining = true;
        let names: Vec<RoomName> = self.pulls.keys().cloned().collect();
        for name in names {
            self.end_pull(&name);
        }
    }

    fn is_drained(&self) -> bool {
        self.host.is_empty() && self.ending_pulls.iter().all(|t| t.is_finished())
    }

    fn handle_request(&mut self, now: Instant, request: Request) -> Response {
        self.request(now, request)
    }

    fn poll(&mut self, now: Instant, send: &mut dyn FnMut(Transmit)) {
        self.drain_pulls(now);
        self.drive(now, send);
        if now >= self.next_housekeeping {
            self.housekeeping(now);
            self.next_housekeeping = now + HOUSEKEEPING;
        }
        self.play_slates(now);
        self.wake_readers();
    }

    fn next_timeout(&mut self, _now: Instant) -> Option<Instant> {
        let mut t = self.next_housekeeping;
        for other in [self.host.next_timeout(), self.next_slate_frame()].into_iter().flatten() {
            t = t.min(other);
        }
        Some(t)
    }

    fn metrics(&self, m: &mut ProcessMetrics) {
        m.sessions = self.host.len() as u32;
        m.keyframe_requests_sent = self.keyframe_requests_sent;
        m.refused = self.refused.to_metrics();
        m.rings = self
            .rooms
            .iter()
            .map(|(name, room)| {
                let stats = room.ring.stats();
                RingMetrics {
                    room: name.clone(),
                    head: room.ring.head(),
                    epoch: room.ring.epoch(),
                    packets: stats.packets,
                    bytes: stats.bytes,
                    laps: stats.laps,
                    keyframe_requests: stats.keyframe_requests,
                }
            })
            .collect();
        m.upstream = self
            .rooms
            .iter()
            .filter(|(name, room)| self.pulls.contains_key(*name) || !room.upstream.failure_counts.is_empty())
            .map(|(name, room)| UpstreamMetrics {
                room: name.clone(),
                pulling: self.pulls.get(name).is_some_and(|p| p.receiving),
                failures: room.upstream.failure_counts.iter().map(|(k, n)| (*k, *n)).collect(),
            })
            .collect();
    }

    fn has_work(&self) -> bool {
        self.host.has_dirty() || !self.events.is_empty()
    }
}

/// Deletes a room's ring file; readers that map it keep their mapping until they notice it was replaced.
fn remove_ring(runtime_dir: &std::path::Path, room: &RoomName) {
    let path = paths::ring(runtime_dir, room);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a ring file");
        }
    }
}

fn error(kind: ErrorKind, message: &str) -> Response {
    Response::Error { kind, message: message.to_string() }
}

/// Runs ingest until SIGTERM or SIGINT.
pub fn run(cfg: &Config) -> Result<(), RunError> {
    let runtime_dir = cfg.runtime_dir();
    let settings = Settings {
        runtime_dir: runtime_dir.clone(),
        geometry: Geometry { slot_count: cfg.ring_slots, slot_size: cfg.ring_slot_size },
        keyframe_request_interval: Duration::from_millis(cfg.keyframe_request_interval_ms),
        keyframe_fallback_interval: (cfg.keyframe_fallback_interval_s > 0)
            .then(|| Duration::from_secs(cfg.keyframe_fallback_interval_s)),
        upstream: match cfg.dial_upstream.as_deref() {
            Some(url) => Some(Arc::new(Upstream::new(url, cfg.upstream_token.clone(), cfg.upstream_ca.as_deref())?)),
            None => None,
        },
        upstream_grace: Duration::from_secs(cfg.upstream_grace_s),
        refuse_publishers: cfg.refuses_publishers(),
        slate: cfg.slate,
        sessions: SessionLimits::from_config(cfg),
        max_rooms: cfg.max_rooms,
        room_grace: Duration::from_secs(cfg.room_grace_s),
        max_pulls: cfg.max_pulls,
    };
    let slate = Slate::load(cfg.slate_h264.as_deref(), cfg.slate_vp8.as_deref(), cfg.slate_fps)?;
    let endpoints = Endpoints {
        name: "ingest".into(),
        runtime_dir: &runtime_dir,
        udp_port: cfg.ingest_port,
        udp_port_setting: "ingest_port, --ingest-port".into(),
        ice_tcp: cfg.ice_tcp,
        advertise: cfg.ice_candidate_host,
        control_socket: paths::ingest_socket(&runtime_dir),
        wake_socket: None,
    };
    process::run(endpoints, |candidates, waker, now| Ingest::new(settings, slate, candidates, waker, now))?;
    Ok(())
}

/// Why ingest stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("slate: {0}")]
    Slate(#[from] crate::slate::SlateError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::CaError),
    #[error(transparent)]
    Start(#[from] StartError),
}

#[cfg(test)]
mod tests {
    use shm_proto::control::FanoutRequest;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn ingest(dir: &std::path::Path, max_rooms: usize, now: Instant) -> (Ingest, mio::Poll) {
        edge(dir, max_rooms, None, now)
    }

    fn edge(dir: &std::path::Path, max_rooms: usize, upstream: Option<&str>, now: Instant) -> (Ingest, mio::Poll) {
        let poll = mio::Poll::new().expect("a poll instance");
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).expect("a waker"));
        let settings = Settings {
            runtime_dir: dir.to_path_buf(),
            geometry: Geometry { slot_count: 64, slot_size: 2048 },
            keyframe_request_interval: SECOND,
            keyframe_fallback_interval: None,
            upstream: upstream.map(|u| Arc::new(Upstream::new(u, None, None).expect("an upstream"))),
            upstream_grace: SECOND,
            refuse_publishers: false,
            slate: true,
            sessions: SessionLimits::default(),
            max_rooms,
            room_grace: 2 * SECOND,
            max_pulls: 1,
        };
        let slate = Slate::load(None, None, 10).expect("the built-in slate");
        (
            Ingest::new(
                settings,
                slate,
                offer::host_candidates(&["127.0.0.1:9".parse().unwrap()], str0m::net::Protocol::Udp),
                waker,
                now,
            ),
            poll,
        )
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("deadsfu-ingest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        paths::prepare(&dir).unwrap();
        dir
    }

    fn watch(ingest: &mut Ingest, room: &str, now: Instant) -> Response {
        let room = RoomName::new(room).expect("a valid room name");
        ingest.handle_request(now, IngestRequest::Watch { room }.into())
    }

    #[test]
    fn an_unused_room_and_its_ring_file_go_after_the_grace() {
        let dir = temp_dir("gc");
        let t0 = Instant::now();
        let (mut ingest, _poll) = ingest(&dir, 10, t0);
        assert_eq!(watch(&mut ingest, "lobby", t0), Response::Done);
        let ring = paths::ring(&dir, &RoomName::new("lobby").unwrap());
        assert!(ring.exists());
        // Watched for WATCH_GRACE, then idle for the room grace (2 s).
        ingest.housekeeping(t0 + WATCH_GRACE - SECOND);
        assert!(ring.exists());
        ingest.housekeeping(t0 + WATCH_GRACE + SECOND);
        assert!(ring.exists(), "removed before its grace");
        ingest.housekeeping(t0 + WATCH_GRACE + 3 * SECOND + Duration::from_millis(100));
        assert!(!ring.exists(), "an unused room's ring is still there");
        assert!(ingest.rooms.is_empty());
        // Watched again: made again.
        assert_eq!(watch(&mut ingest, "lobby", t0 + 10 * SECOND), Response::Done);
        assert!(ring.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_edge_pulls_at_most_max_pulls_rooms_at_once() {
        let dir = temp_dir("pulls");
        let t0 = Instant::now();
        // Nothing listens on port 1: a pull fails (later, on its thread); what counts is how many start.
        let (mut ingest, _poll) = edge(&dir, 10, Some("http://127.0.0.1:1"), t0);
        assert_eq!(watch(&mut ingest, "a", t0), Response::Done);
        assert_eq!(watch(&mut ingest, "b", t0), Response::Done);
        ingest.housekeeping(t0);
        assert_eq!(ingest.pulls.len(), 1, "max_pulls is 1");
        let waiting: Vec<_> = ingest
            .rooms
            .iter()
            .filter(|(name, _)| !ingest.pulls.contains_key(*name))
            .map(|(_, r)| r.upstream.last_error.clone().unwrap_or_default())
            .collect();
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].contains("limit of 1 rooms"), "{waiting:?}");
        assert_eq!(ingest.refused.get("pulls"), 1);
        // Asked again, the waiting room is counted once, not at every turn.
        ingest.housekeeping(t0 + Duration::from_millis(60));
        assert_eq!(ingest.refused.get("pulls"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rooms_past_the_limit_are_refused_and_make_no_ring() {
        let dir = temp_dir("limit");
        let t0 = Instant::now();
        let (mut ingest, _poll) = ingest(&dir, 2, t0);
        assert_eq!(watch(&mut ingest, "a", t0), Response::Done);
        assert_eq!(watch(&mut ingest, "b", t0), Response::Done);
        match watch(&mut ingest, "c", t0) {
            Response::Error { kind: ErrorKind::Unavailable, message } => assert!(message.contains("limit of 2 rooms")),
            other => panic!("{other:?}"),
        }
        assert!(!paths::ring(&dir, &RoomName::new("c").unwrap()).exists());
        // A room already held is not refused.
        assert_eq!(watch(&mut ingest, "a", t0), Response::Done);
        assert_eq!(ingest.refused.get("rooms"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn viewer_calls_and_sessions_ingest_does_not_hold_are_refused() {
        let dir = temp_dir("dispatch");
        let t0 = Instant::now();
        let (mut ingest, _poll) = ingest(&dir, 2, t0);
        let room = RoomName::new("a").unwrap();
        let view = FanoutRequest::View { room, offer: "v=0".into() };
        assert!(matches!(ingest.handle_request(t0, view.into()), Response::Error { kind: ErrorKind::WrongRole, .. }));
        for owner in [Owner::Ingest, Owner::Worker(0)] {
            let session = SessionId::new(owner, [1; shm_proto::TOKEN_LEN]);
            for request in [Request::Check { session }, Request::Close { session }] {
                assert!(matches!(
                    ingest.handle_request(t0, request),
                    Response::Error { kind: ErrorKind::UnknownSession, .. }
                ));
            }
        }
        assert!(ingest.rooms.is_empty(), "no room made");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flood_of_keyframe_requests_reaches_the_publisher_once_a_second() {
        let asked = KeyframeNeed { asked: true, ..Default::default() };
        let t0 = Instant::now();
        let mut last = None;
        let mut sent = 0;
        // Viewers ask every 50 ms (each housekeeping turn) for 3 s.
        for i in 0..60 {
            let now = t0 + Duration::from_millis(50 * i);
            if asked.request_now(last, now, SECOND) {
                last = Some(now);
                sent += 1;
            }
        }
        assert_eq!(sent, 3);
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        let delays: Vec<u64> = (1..=7).map(|n| retry_delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn no_reason_no_request() {
        let t0 = Instant::now();
        assert!(!KeyframeNeed::default().request_now(None, t0, SECOND));
        for need in [
            KeyframeNeed { waiting: true, ..Default::default() },
            KeyframeNeed { fallback: true, ..Default::default() },
        ] {
            assert!(need.request_now(None, t0, SECOND), "{need:?}");
            assert!(!need.request_now(Some(t0), t0 + SECOND / 2, SECOND), "{need:?} throttled");
            assert!(need.request_now(Some(t0), t0 + SECOND, SECOND), "{need:?} after the interval");
        }
    }
}
