//! The fanout core: viewer sessions in, ring packets out to every viewer of the room.
//!
//! Each room a worker serves has one feed (`feed.rs`): a ring reader and a live cursor, so the worker reads
//! each live packet of the ring once and hands the same bytes to every viewer of that room; each viewer
//! (`viewer.rs`) maps the room's payload types to its own and numbers its tracks across sources.
//!
//! A viewer that joins (or switches to) a room whose ring holds a keyframe starts with a *replay*: its own
//! cursor walks the cached GOP from that keyframe up to the feed's live position, sending video faster than
//! real time, each frame stamped with the time it goes out (see [`crate::splice::Pace::Replay`]), and then it
//! joins the live feed at exactly the packet where its replay ended:
//! nothing twice, nothing skipped. Without a cached keyframe it joins live at once and its video waits for the
//! next keyframe, which it asks for through the ring header.
//!
//! Per viewer, video follows one source (a publisher session, or the slate) and one codec at a time; a new
//! source is taken up only at one of its keyframes, so the decoder never sees a picture it cannot decode.
//!
//! A viewer's send streams make sender reports while they send (every second for video, every five for
//! audio, str0m's intervals) and none while they send nothing (RFC 3550 6.4: a receiver-only participant has
//! nothing to report): viewers waiting for a room to go live cost the worker only what they send it. Packets
//! go out without a poll of the session (`viewer::deliver`), so the first after a pause has the session polled
//! for the report it makes due (`viewer::owes_report`).
//!
//! A viewer's packets are written past its str0m session (`egress`): the worker keeps per viewer the few
//! things a packet needs (the SRTP key, the path, each track's SSRC and header extensions), so a packet sent to
//! many viewers touches a few cache lines of each rather than the whole session. The host runs `egress::sync`
//! around everything str0m does for a session, so the session knows what was sent before it makes a sender
//! report or reads a NACK, and the worker learns what changed (a new path, an acknowledged SSRC).
//!
//! With bandwidth estimation, a viewer of a simulcast room that chose no layer is moved between the room's
//! layers' rings by its estimate (`layers.rs`), a switch of rings like any other.
//!
//! [`Fanout`] (requests, joins, switches, the turn) never touches a socket or a clock itself; [`run`] is the
//! loop around it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use deadsfu_media::env::Env;
use deadsfu_media::host::{SessionHost, SessionKey};
use deadsfu_media::limits::{Refusals, SessionLimits};
use deadsfu_media::outbox::Outbox;
use deadsfu_media::process::{self, Core, Endpoints, StartError};
use deadsfu_media::{codec, offer};
use deadsfu_runtime::config::{Config, Estimation};
use shm_proto::control::{
    ErrorKind, FanoutRequest, ProcessMetrics, ProcessStatus, Request, Response, Role, RoomStatus,
};
use shm_proto::ring::{MediaKind, RingReader};
use shm_proto::{paths, Owner, RoomName, SessionId};
use str0m::bwe::{Bitrate, BweKind};
use str0m::media::Mid;
use str0m::{Candidate, Event, IceConnectionState, RtcConfig};

use crate::egress;
use crate::feed::{
    feed, replay_budget, Moment, RoomFeed, DEFAULT_REPLAY_RATE_PERCENT, INITIAL_ESTIMATE, MAX_LAG, REPLAY_TURN,
};
use crate::layers::{is_simulcast, LayerChoice};
use crate::viewer::{fit, owes_report, resend, viewer_extensions, Fit, LinkEstimate, PtMap, Track, Viewer, SENT_LOG};

/// How often rings with viewers are polled besides: new packets come with a wake-up from ingest
/// ([`deadsfu_media::wake`]), so this only bounds the wait of a packet whose wake-up was lost.
const RING_POLL: Duration = Duration::from_millis(20);
/// How often viewers are checked for having gone silent.
const SILENCE_CHECK: Duration = Duration::from_secs(1);
/// How often the viewers on Auto of rooms with simulcast layers are looked at (with estimation).
const LAYER_CHECK: Duration = Duration::from_millis(250);
/// Sent packets a viewer's session remembers for transport-wide feedback: ~1.3 s of a 1.5 Mbit/s stream with its
/// audio, ~22 KB a viewer (str0m's default, 1000, is ~90 KB).
const TWCC_SEND_HISTORY: usize = 255;
/// Resends: a viewer's video track remembers the last [`SENT_LOG`] packets it sent (their ring positions,
/// `viewer::SentLog`), and a NACKed one is read from the ring again and resent if it was sent to the viewer
/// no more than this long ago (a packet of a GOP replay may have arrived seconds before). A NACK comes one round trip (plus a packet interval) after the packet left, and again each
/// round trip after; a live viewer's jitter buffer holds well under a second, so an older packet would come
/// too late to be played. The payloads are the room's, not copies per viewer (str0m's own RTX cache, which
/// kept ~96 bytes per packet per viewer and cost each a cache write per packet, is off:
/// `vendor/str0m/DEADSFU-PATCH.md` 10).
const RESEND_AGE: Duration = Duration::from_secs(1);
/// Resends per viewer, in packets and payload bytes per second: a viewer on a lossy path needs a few
/// percent of a stream's 100-400 packets a second; a viewer that NACKs everything it can gets at most about
/// one stream's worth again, not its whole cache many times a second. The budget is not held to the viewer's
/// bandwidth estimate: the estimate reads random loss as a narrow link, and resends held to it (or to what it
/// leaves beyond the stream) left lost packets unrepaired where unheld ones repaired them, on links with room
/// and on links barely wider than the stream alike (`tests/tests/media.rs`,
/// `with_estimation_a_lossy_viewer_is_repaired_in_full`).
const RTX_BUDGET: (u32, u32) = (200, 256 * 1024);
/// A viewer that sends nothing (no RTCP, no consent checks) for this long is gone. Browsers send receiver
/// reports about every second and consent checks every few seconds.
const VIEWER_TIMEOUT: Duration = Duration::from_secs(15);
/// A worker that has written no media for this long, runs no replay and has no viewer mid-handshake is quiet:
/// what its viewers still send (receiver reports, consent checks, about two or three datagrams a second each)
/// waits up to [`QUIET_GATHER`] and is handled in one turn with what came meanwhile, rather than each datagram
/// waking the worker on its own. Its answers are that much later, which no peer notices: a consent check has
/// seconds, and no report times anything while no media flows; so are a new viewer's answer and the first
/// packets of a publisher that starts (then media flows and the worker is no longer quiet).
const QUIET_AFTER: Duration = Duration::from_secs(1);
const QUIET_GATHER: Duration = Duration::from_millis(50);
/// While media flows and no viewer is mid-handshake, what viewers send (receiver reports, NACKs, consent checks,
/// transport-wide feedback) does not wake the worker: it is read on the worker's next turn, which the next
/// packet of a room brings (a few milliseconds at most for a stream with audio), and at the latest this long
/// after the last read, the rings' own [`RING_POLL`]. A worker sending a stream to a hundred viewers otherwise
/// woke for a good part of their reports on their own (2282 context switches in 8 s against 1872 at 100 viewers,
/// BENCHMARKS.md). A resend then leaves a few milliseconds later, which a jitter buffer that waits a round trip
/// for it does not notice; a joining viewer's handshake is answered at once. A turn reads what came after it has
/// sent its media: at 1000 viewers reading and handling it took 108-143 µs a turn (a timer around the read, in a
/// run of `scripts/bench --viewers 1000 --pin`), which every packet of the turn waited for while it came first.
/// What those datagrams raise (a NACK's resend, a keyframe request) is acted on at the next turn. A turn of their
/// own at once turned a worker with estimation after every transport-wide feedback and changed how its
/// viewers' probes were paced (`with_estimation_each_viewer_gets_the_best_layer_its_link_carries` failed in four
/// runs of six: 48 packets dropped on the narrowed link against 807 passed, where it allows 1%).
const INPUT_WAIT: Duration = RING_POLL;

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
    /// When a media packet was last written to a viewer.
    last_media: Instant,
    /// A ring had more than [`READ_BUDGET`](crate::feed::READ_BUDGET) new packets: turn again at once.
    backlog: bool,
    next_silence_check: Instant,
    /// Stopping: no new viewers.
    draining: bool,
    /// RTP packets written to viewers: live, and replayed to joining ones.
    packets_live: u64,
    packets_replayed: u64,
    /// Packets resent on viewers' NACKs.
    packets_resent: u64,
    /// Times a live feed fell [`MAX_LAG`] behind and skipped to the newest keyframe.
    lag_skips: u64,
    /// Bandwidth estimates the viewers' sessions gave.
    estimates: u64,
    /// Ingest plays the slate (see [`Fanout::with_slate`]).
    slate: bool,
    /// A replay's pace, in percent of its room's bitrate (see [`Fanout::with_replay_rate`]).
    replay_rate_percent: u32,
    /// Which viewers get transport-cc and a bandwidth estimate (see [`Fanout::with_estimation`]).
    estimation: Estimation,
    next_layer_check: Instant,
    /// Viewers on Auto moved from one simulcast layer of their room to another by their estimates.
    layer_moves: u64,
    /// Viewers whose ICE and DTLS have not completed yet.
    handshaking: usize,
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
            host: SessionHost::new().with_sync(egress::sync),
            rooms: HashMap::new(),
            ids: HashMap::new(),
            events: Vec::new(),
            buf: vec![0u8; 64 * 1024],
            t0: now,
            last_pump: now,
            replaying: false,
            last_media: now,
            backlog: false,
            next_silence_check: now + SILENCE_CHECK,
            draining: false,
            packets_live: 0,
            packets_replayed: 0,
            packets_resent: 0,
            lag_skips: 0,
            estimates: 0,
            slate: true,
            replay_rate_percent: DEFAULT_REPLAY_RATE_PERCENT,
            estimation: Estimation::Off,
            next_layer_check: now,
            layer_moves: 0,
            handshaking: 0,
        }
    }

    /// Which viewers are offered transport-wide congestion control feedback and get a send-side bandwidth
    /// estimate each (none by default), which paces a viewer's GOP replay within its link and chooses its
    /// simulcast layer.
    pub fn with_estimation(mut self, estimation: Estimation) -> Fanout {
        self.estimation = estimation;
        self
    }

    /// How fast a joining viewer's replay of the cached GOP goes, in percent of the room's bitrate (see
    /// [`DEFAULT_REPLAY_RATE_PERCENT`]): the share of the viewer's link it takes until the viewer is live.
    pub fn with_replay_rate(mut self, percent: u32) -> Fanout {
        self.replay_rate_percent = percent;
        self
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
            Request::Fanout(FanoutRequest::Where { session }) => match self.ids.get(&session) {
                Some(&key) => Response::Room { room: self.host.get(key).expect("ids and host agree").app.room.clone() },
                None => error(ErrorKind::UnknownSession, "no such viewer session"),
            },
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
        let estimation = self.estimation.applies(|| self.layered(&room));
        let tune = |c: RtcConfig| {
            let c = c.set_extension_map(viewer_extensions(estimation));
            if estimation {
                c.enable_bwe(Some(INITIAL_ESTIMATE)).set_bwe_lean(true).set_twcc_send_history(TWCC_SEND_HISTORY)
            } else {
                c
            }
        };
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
            estimate: LinkEstimate::default(),
            layer: LayerChoice::default(),
            pts: PtMap::new(negotiated),
            egress: None,
            may_owe_report: false,
            estimated: estimation,
        };
        // The answer made the send streams; find them by the media sections of the offer.
        for (mid, is_video) in sections {
            let mut api = accepted.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else { continue };
            // A viewer waiting for a room to go live is sent nothing, not a sender report a second.
            tx.set_reports_when_idle(false);
            if is_video {
                // The cache stays empty (resends are ours); its size bounds the sequence numbers one
                // NACK can ask for.
                tx.set_rtx_cache(SENT_LOG, RESEND_AGE, None);
                tx.set_app_resends(true);
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
        self.handshaking += 1;
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

    /// Whether `room` has simulcast layers, as this worker's feed of it says, or else its ring (read and let go:
    /// nothing is kept for a viewer who may yet be refused).
    fn layered(&self, room: &RoomName) -> bool {
        match self.rooms.get(room) {
            Some(feed) => is_simulcast(&feed.layers),
            None => RingReader::open(&paths::ring(&self.runtime_dir, room)).is_ok_and(|r| is_simulcast(&r.layers())),
        }
    }

    /// The feed of `room`, made (and its ring looked for) if this worker had none.
    fn feed(&mut self, room: &RoomName, now: Instant, now_ms: u64) -> &mut RoomFeed {
        feed(&mut self.rooms, &self.runtime_dir, self.index, room, self.replay_rate_percent, now, now_ms)
    }

    fn switch(&mut self, now: Instant, session: SessionId, room: RoomName) -> Response {
        let Some(&key) = self.ids.get(&session) else {
            return error(ErrorKind::UnknownSession, "no such viewer session");
        };
        let viewer = &mut self.host.get_mut(key).expect("ids and host agree").app;
        // A layer the viewer chose stays its layer; its room's own ring is Auto.
        let unpinned = viewer.layer.pinned && room.rid().is_none();
        viewer.layer.pinned = room.rid().is_some();
        if unpinned {
            // Its estimate measured only what its chosen layer sends: a dip then says nothing of the link's room
            // for the others. Back on Auto it starts as a viewer that joins, on the room's own ring with its link
            // not known until the estimate comes down.
            viewer.estimate = LinkEstimate::default();
        }
        self.move_viewer(now, key, room);
        Response::Done
    }

    /// Moves a viewer to the ring of `room` (another room's, or a simulcast layer's of its room).
    fn move_viewer(&mut self, now: Instant, key: SessionKey, room: RoomName) {
        let old = self.host.get(key).expect("a viewer of this worker").app.room.clone();
        if old == room {
            return;
        }
        let now_ms = self.env.unix_ms(now);
        let Fanout { host, rooms, runtime_dir, buf, index, replay_rate_percent, .. } = self;
        let session = host.get_mut(key).expect("a viewer of this worker");
        if let Some(feed) = rooms.get_mut(&old) {
            feed.remove(key);
            if feed.viewers.is_empty() {
                rooms.remove(&old);
            }
        }
        let feed = feed(rooms, runtime_dir, *index, &room, *replay_rate_percent, now, now_ms);
        feed.viewers.push(key);
        session.app.room = room.clone();
        session.app.replay = None;
        // What the viewer's link lost of the old ring's packets says nothing of the new one's; its layer choice
        // starts afresh from the move.
        session.rtc.bwe().count_loss_from(now);
        session.app.layer.moved(now);
        // The next video packet forwarded must be a keyframe of the new room.
        session.app.video_choice = None;
        // What was sent is in the old ring, at positions that are other packets in the new one: a NACK for it
        // is not answered from there.
        if let Some(video) = session.app.video.as_mut() {
            video.sent = None;
        }
        if old.base() == room.base() {
            // Another simulcast layer of the same room: the picture goes on from the layer's next keyframe,
            // asked for now, rather than going back to the layer's cached one and catching up.
            feed.request_keyframe();
        } else if session.app.connected {
            feed.start(key, &mut session.app, buf, now);
        }
        tracing::debug!(session = %session.app.id, from = %old, to = %room, "viewer switched rooms");
    }

    /// Moves each viewer on Auto of a room with simulcast layers to the layer its link carries
    /// ([`LayerChoice::decide`]), and asks ingest for the layers' rings while such viewers watch.
    fn choose_layers(&mut self, now: Instant) {
        if self.estimation == Estimation::Off || now < self.next_layer_check {
            return;
        }
        self.next_layer_check = now + LAYER_CHECK;
        let now_ms = self.env.unix_ms(now);
        let mut moves = Vec::new();
        let Fanout { host, rooms, runtime_dir, .. } = self;
        for (name, feed) in rooms.iter() {
            let current = match name.rid() {
                Some(rid) => Some(rid),
                None => feed.layers.iter().find(|l| l.carried).map(|l| l.rid.as_str()),
            };
            let (Some(current), true) = (current, is_simulcast(&feed.layers)) else { continue };
            let base = name.base();
            let mut auto = false;
            for &key in &feed.viewers {
                let Some(s) = host.get_mut(key) else { continue };
                if s.app.layer.pinned || !s.app.connected || !s.app.estimated {
                    continue;
                }
                auto = true;
                s.app.layer.note_loss(s.rtc.bwe().take_loss_count());
                let (reported, lost) = (s.app.layer.reported, s.app.layer.lost);
                let decision = s.app.layer.decide(&feed.layers, current, s.app.estimate.link(), now);
                // A replay's estimate looks for the replay's rate until it ends.
                if s.app.replay.is_none() && decision.desired_bps != s.app.layer.desired_bps {
                    s.app.layer.desired_bps = decision.desired_bps;
                    s.rtc.bwe().set_bitrate(Bitrate::ZERO, Bitrate::bps(decision.desired_bps));
                }
                let Some(rid) = decision.to else { continue };
                let carried = feed.layers.iter().any(|l| l.rid == rid && l.carried);
                let to = match carried {
                    true => base.clone(),
                    false => match base.layer(&rid) {
                        Ok(to) => to,
                        Err(_) => continue,
                    },
                };
                // A layer's ring comes a moment after it was first wanted: until then the viewer stays, and its choice
                // is as it was (`LayerChoice::moved` is for a move made).
                if to != *name && paths::ring(runtime_dir, &to).exists() {
                    let table: Vec<String> =
                        feed.layers.iter().map(|l| format!("{}:{}", l.rid, l.bitrate_bps / 1000)).collect();
                    tracing::debug!(session = %s.app.id, from = %name, %to, link = ?s.app.estimate.link(),
                        reported, lost, kbit_s = ?table, "viewer moved to the layer its link carries");
                    moves.push((key, to));
                }
            }
            if let (true, Some(reader)) = (auto, &feed.reader) {
                reader.want_layers(now_ms);
            }
        }
        for (key, to) in moves {
            self.move_viewer(now, key, to);
            self.layer_moves += 1;
        }
    }

    /// Ends a viewer's session: detached from its room at once, gone from the host once its goodbye is out.
    fn close(&mut self, key: SessionKey) {
        let Some(s) = self.host.get(key) else { return };
        if self.ids.remove(&s.app.id).is_some() {
            tracing::debug!(session = %s.app.id, room = %s.app.room, "viewer left");
            if !s.app.connected {
                self.handshaking -= 1;
            }
            if let Some(feed) = self.rooms.get_mut(&s.app.room) {
                feed.remove(key);
                if feed.viewers.is_empty() {
                    self.rooms.remove(&s.app.room);
                }
            }
        }
        self.host.close(key);
    }

    /// Reads what is new in every ring with viewers and sends it to them: the replays of joining
    /// viewers first, then the live packets, read once for every viewer of the room.
    fn pump(&mut self, now: Instant, out: &mut dyn Outbox) {
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
            let replayed = feed.replay(&mut self.host, &mut self.buf, at, budget, out);
            self.packets_replayed += replayed;
            self.replaying |= !feed.replaying.is_empty();
            let read = feed.read_live(&mut self.host, &mut self.buf, at, stale_before, out);
            if replayed + read.delivered > 0 {
                self.last_media = now;
            }
            self.packets_live += read.delivered;
            self.lag_skips += read.lag_skips;
            self.backlog |= read.backlog;
        }
    }

    /// Resends the packets a viewer NACKed (`seqs`, its video track's sequence numbers) that it still
    /// remembers and the ring still holds.
    fn resend(&mut self, now: Instant, key: SessionKey, seqs: &[str0m::rtp::SeqNo], out: &mut dyn Outbox) {
        let Fanout { host, rooms, buf, t0, .. } = self;
        let Some(session) = host.get_mut(key) else { return };
        let Some(feed) = rooms.get(&session.app.room) else { return };
        let at = Moment { now, ns: now.duration_since(*t0).as_nanos() as u64 };
        for &seq in seqs {
            let log = session.app.video.as_ref().and_then(|t| t.sent.as_ref());
            let Some(sent) = log.and_then(|l| l.get(*seq, feed.cursor.position())) else { continue };
            if u128::from(sent.age_ms(at)) > RESEND_AGE.as_millis() {
                continue;
            }
            let Some(packet) = feed.packet_at(sent.pos, buf) else { continue };
            if resend(session, &feed.codecs, sent, &packet, at, out) {
                self.packets_resent += 1;
            }
        }
        if owes_report(session, now) {
            host.touch(key);
        }
    }

    /// Drives the sessions and reacts to their events.
    fn drive(&mut self, now: Instant, out: &mut dyn Outbox) {
        let dead = self.host.poll(now, &mut |t| out.transmit(t), &mut self.events);
        let mut events = std::mem::take(&mut self.events);
        for (key, event) in events.drain(..) {
            match event {
                Event::Connected => {
                    let Fanout { host, rooms, buf, handshaking, ids, .. } = self;
                    let Some(s) = host.get_mut(key) else { continue };
                    // A viewer closed mid-handshake was counted out when it closed.
                    if !s.app.connected && ids.contains_key(&s.app.id) {
                        *handshaking -= 1;
                    }
                    s.app.connected = true;
                    tracing::debug!(session = %s.app.id, "viewer connected");
                    if let Some(feed) = rooms.get_mut(&s.app.room) {
                        feed.start(key, &mut s.app, buf, now);
                        if s.app.estimated {
                            // What the viewer would take: probing looks for that much of its link.
                            s.rtc.bwe().set_bitrate(Bitrate::ZERO, feed.replay_target());
                        }
                    }
                }
                Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                    let Some(s) = self.host.get_mut(key) else { continue };
                    s.app.estimate.note(estimate.as_u64());
                    self.estimates += 1;
                }
                Event::KeyframeRequest(_) => {
                    let Some(room) = self.host.get(key).map(|s| s.app.room.clone()) else { continue };
                    if let Some(reader) = self.rooms.get(&room).and_then(|f| f.reader.as_ref()) {
                        reader.request_keyframe();
                    }
                }
                Event::ResendRequest(request) => self.resend(now, key, &request.seq_nos, out),
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

    fn poll(&mut self, now: Instant, out: &mut dyn Outbox) {
        self.pump(now, out);
        // The media leaves now, not at the turn's end: the sessions' turn and the viewers' datagrams the process
        // reads after it would hold the pass's last partial batch (the sockets send by 64). At 200 viewers that
        // read took 80-96 µs p50, 300-359 p99 on the turns that had any (a timer around it, BENCHMARKS.md).
        out.flush();
        self.drive(now, out);
        self.choose_layers(now);
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

    fn coalesce(&self, now: Instant) -> Option<Duration> {
        let quiet = !self.replaying && now.saturating_duration_since(self.last_media) >= QUIET_AFTER;
        (quiet && self.handshaking == 0).then_some(QUIET_GATHER)
    }

    fn defer_input(&self, now: Instant) -> Option<Duration> {
        let flowing = self.replaying || now.saturating_duration_since(self.last_media) < QUIET_AFTER;
        (flowing && self.handshaking == 0).then_some(INPUT_WAIT)
    }

    fn status_snapshot(&self, _now: Instant) -> (ProcessStatus, Vec<RoomStatus>) {
        (self.status(), self.rooms_status())
    }

    fn metrics(&self, m: &mut ProcessMetrics) {
        m.sessions = self.host.len() as u32;
        m.viewer_packets_live = self.packets_live;
        m.viewer_packets_replayed = self.packets_replayed;
        m.viewer_packets_resent = self.packets_resent;
        m.lag_skips = self.lag_skips;
        m.viewer_estimates = self.estimates;
        m.viewer_layer_moves = self.layer_moves;
        m.refused = self.refused.to_metrics();
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
        Fanout::new(index, runtime_dir.clone(), candidates, limits, Env::system(), now)
            .with_slate(cfg.slate)
            .with_replay_rate(cfg.replay_rate_percent)
            .with_estimation(cfg.bandwidth_estimation)
    })
}

#[cfg(test)]
mod tests {
    use shm_proto::ring::{Codec, CodecEntry, Geometry, RingWriter};
    use str0m::format::CodecConfig;
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
    fn only_a_quiet_worker_gathers_input() {
        let (mut fanout, _ring, dir) = worker("quiet", &[opus(), h264()]);
        let start = fanout.t0;
        assert_eq!(fanout.coalesce(start), None, "a worker that just started");
        let later = start + QUIET_AFTER;
        assert_eq!(fanout.coalesce(later), Some(QUIET_GATHER));
        // A viewer mid-handshake: its checks and flights are answered at once.
        let Response::Answer { session, .. } = view(&mut fanout, &offer(&[false, true], false)) else { panic!() };
        assert_eq!(fanout.coalesce(later), None);
        assert_eq!(fanout.handle_request(later, Request::Close { session }), Response::Closed);
        assert_eq!(fanout.coalesce(later), Some(QUIET_GATHER), "left mid-handshake");
        // Media written in the last QUIET_AFTER, or a replay under way.
        fanout.last_media = later - QUIET_AFTER / 2;
        assert_eq!(fanout.coalesce(later), None);
        assert_eq!(fanout.coalesce(later + QUIET_AFTER / 2), Some(QUIET_GATHER));
        fanout.replaying = true;
        assert_eq!(fanout.coalesce(later + QUIET_AFTER), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn input_waits_for_a_turn_only_while_media_flows_and_no_viewer_is_mid_handshake() {
        let (mut fanout, _ring, dir) = worker("defer", &[opus(), h264()]);
        let start = fanout.t0;
        assert_eq!(fanout.defer_input(start), Some(INPUT_WAIT), "media written just now (the worker's start)");
        assert_eq!(fanout.defer_input(start + QUIET_AFTER), None, "quiet: each datagram wakes the worker");
        fanout.replaying = true;
        assert_eq!(fanout.defer_input(start + QUIET_AFTER), Some(INPUT_WAIT), "a replay under way");
        fanout.replaying = false;
        // A viewer mid-handshake: its checks and flights are read at once, until it connects or leaves.
        let Response::Answer { session, .. } = view(&mut fanout, &offer(&[false, true], false)) else { panic!() };
        assert_eq!(fanout.defer_input(start), None);
        let key = fanout.ids[&session];
        fanout.events.push((key, Event::Connected));
        fanout.drive(start, &mut |_: str0m::net::Transmit| {});
        assert_eq!(fanout.defer_input(start), Some(INPUT_WAIT), "connected");
        let Response::Answer { session, .. } = view(&mut fanout, &offer(&[false, true], false)) else { panic!() };
        assert_eq!(fanout.defer_input(start), None);
        assert_eq!(fanout.handle_request(start, Request::Close { session }), Response::Closed);
        assert_eq!(fanout.defer_input(start), Some(INPUT_WAIT), "left mid-handshake");
        // Its session's own Connected, were it to come after, counts nothing twice.
        fanout.events.push((fanout.host.keys().last().unwrap(), Event::Connected));
        fanout.drive(start, &mut |_: str0m::net::Transmit| {});
        assert_eq!(fanout.handshaking, 0);
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
        let layer = other.layer("l").unwrap();
        let switch = FanoutRequest::Switch { session, room: layer.clone() };
        assert_eq!(fanout.handle_request(now, switch.into()), Response::Done);
        let at = fanout.handle_request(now, FanoutRequest::Where { session }.into());
        assert_eq!(at, Response::Room { room: layer }, "the ring it reads");
        assert_eq!(fanout.handle_request(now, Request::Check { session }), Response::Done);
        assert_eq!(fanout.handle_request(now, Request::Close { session }), Response::Closed);
        let gone = fanout.handle_request(now, Request::Check { session });
        assert!(matches!(gone, Response::Error { kind: ErrorKind::UnknownSession, .. }), "{gone:?}");
        let nowhere = fanout.handle_request(now, FanoutRequest::Where { session }.into());
        assert!(matches!(nowhere, Response::Error { kind: ErrorKind::UnknownSession, .. }), "{nowhere:?}");
        let watch = shm_proto::control::IngestRequest::Watch { room: other };
        let wrong = fanout.handle_request(now, watch.into());
        assert!(matches!(wrong, Response::Error { kind: ErrorKind::WrongRole, .. }), "{wrong:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_viewer_back_on_auto_from_a_layer_it_chose_starts_with_its_link_not_known() {
        let (mut fanout, _ring, dir) = worker("unpin", &[vp8()]);
        let now = Instant::now();
        let Response::Answer { session, .. } = view(&mut fanout, &offer(&[true], false)) else { panic!() };
        let room = RoomName::new("room").unwrap();
        let to = |fanout: &mut Fanout, room: &RoomName| {
            let switch = FanoutRequest::Switch { session, room: room.clone() };
            assert_eq!(fanout.handle_request(now, switch.into()), Response::Done);
            let s = &mut fanout.host.get_mut(fanout.ids[&session]).unwrap().app;
            let link = s.estimate.link();
            // What the estimate said next: it came down to 250 kbit/s.
            s.estimate.note(300_000);
            s.estimate.note(250_000);
            link
        };
        // On a layer it chose, its estimate came down while it got that layer alone.
        assert_eq!(to(&mut fanout, &room.layer("l").unwrap()), None);
        assert_eq!(to(&mut fanout, &room.layer("m").unwrap()), Some(250_000), "from one chosen layer to another");
        assert_eq!(to(&mut fanout, &room), None, "back on Auto: the link is not known");
        assert_eq!(to(&mut fanout, &RoomName::new("other").unwrap()), Some(250_000), "Auto to Auto: the same link");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
