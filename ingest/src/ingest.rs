//! The ingest core: publisher sessions in, ring writes out, and the slate for rooms nobody publishes to.
//!
//! Ingest is the rings' only writer. It holds the [rooms](crate::room) (a ring each, and what is written into
//! it), the publisher sessions, and on an edge the [pulls](crate::pulls). The rules of a room's life, decided
//! here:
//! - a room is *watched* while a fanout worker heartbeats its ring, or for a few seconds after signaling
//!   announced a viewer for it (`Watch`), so the slate can start before the viewer's worker opens the ring;
//! - a watched room without live video (no publisher, or none of its video for [`crate::room::LIVE_TIMEOUT`]) plays
//!   the slate; live video takes over again at its first keyframe;
//! - keyframe requests that readers leave in the ring reach the publisher as PLI, at most one per
//!   `keyframe_request_interval_ms`, plus one every `keyframe_fallback_interval_s` while the room is watched;
//! - a publisher silent for `PUBLISHER_TIMEOUT` (3 s) is gone, and its room is free;
//! - a room nobody publishes to, watches or pulls for `room_grace` is removed with its ring file;
//! - on an edge (an upstream configured), a watched room without a publisher is pulled from the upstream
//!   and written like a publisher's media. An edge refuses publishers unless told otherwise; an accepted one
//!   takes the room over from the pull.
//!
//! [`Ingest`] is sans-IO but for the ring files: it is given control requests, packets and time (monotonic
//! with each call, Unix time and randomness through its [`Env`]), and says what the shell must do through
//! [`Ingest::poll_action`]: wake the workers that read rings written this turn, start and stop pulls.
//! [`crate::shell`] is the process around it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use deadsfu_media::env::Env;
use deadsfu_media::host::{SessionHost, SessionKey};
use deadsfu_media::limits::{Refusals, SessionLimits};
use deadsfu_media::outbox::Outbox;
use deadsfu_media::process::Core;
use deadsfu_media::{codec, offer};
use shm_proto::control::{
    ErrorKind, IngestRequest, ProcessMetrics, ProcessStatus, Request, Response, RingMetrics, Role, RoomStatus,
};
use shm_proto::ring::{Geometry, LayerEntry, MediaKind as RingKind, RingError, RingReader, MAX_LAYERS};
use shm_proto::{paths, Owner, RoomName, SessionId};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::net::Transmit;
use str0m::rtp::{RtpPacket, Ssrc};
use str0m::{Candidate, Event, IceConnectionState};

use crate::layers::Layers;
use crate::pulls::{PullCommand, Pulls};
use crate::room::{remove_ring, Room, Source, WATCH_TIMEOUT_MS};
use crate::slate::Slate;
use crate::upstream::PullEvent;

/// How often rings get a heartbeat, and rooms and publishers are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// A publisher that sends nothing for this long is gone.
const PUBLISHER_TIMEOUT: Duration = Duration::from_secs(3);
/// After a `Watch`, the room counts as watched this long even before a reader heartbeats.
const WATCH_GRACE: Duration = Duration::from_secs(5);
/// How often the rings directory is scanned for watched rings ingest does not hold (after a restart).
const ADOPT_SCAN: Duration = Duration::from_secs(1);

/// What ingest is told at start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub runtime_dir: PathBuf,
    pub geometry: Geometry,
    pub keyframe_request_interval: Duration,
    /// `None`: no unprompted keyframe requests.
    pub keyframe_fallback_interval: Option<Duration>,
    /// The base URL of the upstream this edge pulls rooms from; `None` on an origin.
    pub upstream: Option<String>,
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

/// A publisher session.
pub struct Publisher {
    id: SessionId,
    /// The audio and video media sections of the offer.
    mids: Vec<Mid>,
    /// Its codecs are filled at the first packet.
    source: Source,
    /// A simulcast publisher's layers that have a ring of their own (a viewer asked for one): per layer its
    /// rid, the source writing the layer's ring (its room name `ROOM~RID`), and the layer's SSRC once known.
    layer_rings: Vec<(String, Source, Option<Ssrc>)>,
}

/// What the shell must do for the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Wake the fanout workers whose bits are set: rings they read were written.
    Wake(u64),
    Pull(PullCommand),
}

pub struct Ingest {
    settings: Settings,
    env: Env,
    candidates: Vec<Candidate>,
    slate: Slate,
    host: SessionHost<Publisher>,
    rooms: HashMap<RoomName, Room>,
    ids: HashMap<SessionId, SessionKey>,
    events: Vec<(SessionKey, Event)>,
    /// An edge's pulls; `None` on an origin.
    pulls: Option<Pulls>,
    next_housekeeping: Instant,
    next_adopt_scan: Instant,
    next_fallback: Instant,
    /// Stopping: no new publishers.
    draining: bool,
    /// PLIs sent to publishers since start.
    keyframe_requests_sent: u64,
    /// Moves of a room's ring from one simulcast layer of its publisher to another.
    layer_moves: u64,
    /// Workers to wake: the bits of the rings written since the last [`Action::Wake`].
    wake_mask: u64,
    refused: Refusals,
}

impl Ingest {
    pub fn new(settings: Settings, slate: Slate, candidates: Vec<Candidate>, env: Env, now: Instant) -> Ingest {
        let next_fallback = now + settings.keyframe_fallback_interval.unwrap_or(Duration::MAX / 4);
        let pulls = settings.upstream.clone().map(|base| Pulls::new(base, settings.upstream_grace, settings.max_pulls));
        Ingest {
            settings,
            env,
            candidates,
            slate,
            host: SessionHost::new(),
            rooms: HashMap::new(),
            ids: HashMap::new(),
            events: Vec::new(),
            pulls,
            next_housekeeping: now,
            next_adopt_scan: now,
            next_fallback,
            draining: false,
            keyframe_requests_sent: 0,
            layer_moves: 0,
            wake_mask: 0,
            refused: Refusals::default(),
        }
    }

    /// The next thing the shell must do, until `None`: call after each [`Core::poll`] and
    /// [`Core::handle_request`].
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(command) = self.pulls.as_mut().and_then(|p| p.take_commands().next()) {
            return Some(Action::Pull(command));
        }
        if self.wake_mask != 0 {
            return Some(Action::Wake(std::mem::take(&mut self.wake_mask)));
        }
        None
    }

    /// What pull `id` reported.
    pub fn handle_pull_event(&mut self, now: Instant, id: u64, event: PullEvent) {
        let Some(pulls) = &mut self.pulls else { return };
        let unix_ns = self.env.unix_ns(now);
        pulls.on_event(now, unix_ns, id, event, &mut self.rooms, &self.slate);
        self.collect_wakes();
    }

    fn request(&mut self, now: Instant, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(self.status()),
            Request::Ingest(IngestRequest::Publish { room, offer }) => self.publish(now, room, &offer),
            Request::Ingest(IngestRequest::Watch { room }) => {
                if let Err(refused) = self.check_layer(&room) {
                    return refused;
                }
                match self.room(&room, now) {
                    Ok(r) => {
                        r.watched_until = Some(now + WATCH_GRACE);
                        self.attach_layer_rings(now);
                        Response::Done
                    }
                    Err(resp) => resp,
                }
            }
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
            // Answered by the process loop, which holds the counters and the subscriptions.
            Request::Metrics => error(ErrorKind::Internal, "metrics are answered by the process loop"),
            Request::Subscribe => error(ErrorKind::Internal, "subscriptions are served by the process loop"),
            Request::Fanout(_) => error(ErrorKind::WrongRole, "ingest takes publishers, not viewers"),
        }
    }

    fn status(&self) -> ProcessStatus {
        ProcessStatus {
            role: Role::Ingest,
            index: 0,
            pid: std::process::id(),
            sessions: self.host.len() as u32,
            accepting: !self.draining,
        }
    }

    fn pulled(&self, name: &RoomName) -> bool {
        self.pulls.as_ref().is_some_and(|p| p.pulls(name))
    }

    fn rooms_status(&self, now: Instant) -> Vec<RoomStatus> {
        let now_ms = self.env.unix_ms(now);
        self.rooms
            .iter()
            // A layer's ring is part of its room, whose status lists the layers.
            .filter(|(name, _)| name.rid().is_none())
            .filter(|(name, r)| r.publisher.is_some() || r.watched(now, now_ms) || self.pulled(name))
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
                    upstream: self.pulls.as_ref().and_then(|p| p.status(name)),
                    layers: r
                        .publisher
                        .and_then(|key| self.host.get(key))
                        .and_then(|s| s.app.source.layers.as_ref())
                        .map_or_else(Vec::new, |l| l.status(now)),
                }
            })
            .collect()
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
            let made =
                Room::create(&self.settings.runtime_dir, room, self.settings.geometry, now, self.env.unix_ms(now))
                    .map_err(|e| {
                        let kind = match e {
                            RingError::NoSpace { .. } => ErrorKind::Unavailable,
                            _ => ErrorKind::Internal,
                        };
                        error(kind, &format!("cannot open ring for room {room}: {e}"))
                    })?;
            self.rooms.insert(room.clone(), made);
        }
        Ok(self.rooms.get_mut(room).expect("inserted above"))
    }

    fn publish(&mut self, now: Instant, room: RoomName, offer_sdp: &str) -> Response {
        if self.draining {
            return error(ErrorKind::Unavailable, "ingest is stopping");
        }
        if self.settings.refuse_publishers {
            let upstream = self.settings.upstream.as_deref().unwrap_or("an upstream");
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
        let id = SessionId::new(Owner::Ingest, self.env.random.bytes());
        let publisher = Publisher {
            id,
            mids: offer::media_sections(offer_sdp).into_iter().map(|(mid, _)| mid).collect(),
            source: Source::new(room.clone(), &mut self.env.random),
            layer_rings: Vec::new(),
        };
        if self.pulls.as_mut().is_some_and(|p| p.end(&room, &mut self.rooms)) {
            tracing::info!(%room, "a publisher takes the room over from the upstream pull");
        }
        let key = self.host.insert(accepted.rtc, accepted.ufrag, publisher, now);
        let r = self.rooms.get_mut(&room).expect("room made above");
        r.publisher = Some(key);
        r.source_started(now);
        self.ids.insert(id, key);
        tracing::info!(session = %id, %room, "publisher joined");
        Response::Answer { session: id, answer: accepted.answer }
    }

    /// Ends a publisher's session: its room is free at once, the session gone once its goodbye is out.
    fn close(&mut self, key: SessionKey) {
        let Some(s) = self.host.get(key) else { return };
        if self.ids.remove(&s.app.id).is_some() {
            tracing::info!(session = %s.app.id, room = %s.app.source.room, "publisher left");
            if let Some(room) = self.rooms.get_mut(&s.app.source.room) {
                if room.publisher == Some(key) {
                    room.publisher = None;
                    room.source_ended();
                }
            }
            for (_, layer, _) in &s.app.layer_rings {
                if let Some(room) = self.rooms.get_mut(&layer.room) {
                    room.source_ended();
                }
            }
        }
        self.host.close(key);
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
                Event::MediaAdded(m) if m.kind == MediaKind::Video => {
                    if let (Some(s), Some(simulcast)) = (self.host.get_mut(key), m.simulcast) {
                        let rids: Vec<String> = simulcast.recv.iter().map(|l| l.rid.to_string()).collect();
                        tracing::info!(session = %s.app.id, ?rids, "publisher sends simulcast");
                        s.app.source.layers.get_or_insert_with(Layers::default);
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
        let Some(room) = self.rooms.get_mut(&publisher.source.room) else { return };
        if publisher.source.codecs.is_empty() {
            let negotiated = codec::negotiated(&session.rtc, &publisher.mids);
            let codecs: Vec<_> = negotiated.params().iter().filter_map(codec::entry).collect();
            publisher.source.codecs = codecs.iter().map(|e| (e.pt, e.clone())).collect();
            room.set_live_codecs(codecs, &self.slate, &publisher.source.room);
        }
        let moves = publisher.source.layers.as_ref().map_or(0, Layers::switches);
        let unix_ns = self.env.unix_ns(now);
        room.write_live(&mut publisher.source, &pkt, &self.slate, now, unix_ns);
        self.layer_moves += publisher.source.layers.as_ref().map_or(0, Layers::switches) - moves;
        // The layers with rings of their own: each gets its layer's video and all the audio. A publisher that
        // sends no simulcast has its one video written to them all (viewers left on a layer of the publisher
        // before it keep a picture).
        let simulcast = publisher.source.layers.is_some();
        let video = !publisher.layer_rings.is_empty()
            && publisher.source.codecs.get(&*pkt.header.payload_type).is_some_and(|e| e.kind == RingKind::Video);
        for (rid, source, ssrc) in &mut publisher.layer_rings {
            if ssrc.is_none() {
                *ssrc = publisher.source.layers.as_ref().and_then(|l| l.ssrc_of(rid));
            }
            if video && simulcast && *ssrc != Some(pkt.header.ssrc) {
                continue;
            }
            if let Some(layer_room) = self.rooms.get_mut(&source.room) {
                layer_room.write_live(source, &pkt, &self.slate, now, unix_ns);
            }
        }
        // A simulcast layer the ring is to move to: its keyframe is asked for at once.
        if let Some(ssrc) = publisher.source.layers.as_mut().and_then(|l| l.keyframe_wanted(now)) {
            if let Some(rx) = session.rtc.direct_api().stream_rx(&ssrc) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
        }
    }

    /// A `Watch` of a layer's ring (`ROOM~RID`) is for a layer the room's publisher sends, or for a ring that is
    /// there already (its viewers stayed while ingest restarted): no ring is made for a layer that does not flow.
    fn check_layer(&self, room: &RoomName) -> Result<(), Response> {
        let Some(rid) = room.rid() else { return Ok(()) };
        if self.rooms.contains_key(room) {
            return Ok(());
        }
        let base = room.base();
        let sends = self
            .rooms
            .get(&base)
            .and_then(|r| r.publisher)
            .and_then(|key| self.host.get(key))
            .is_some_and(|s| s.app.source.layers.as_ref().is_some_and(|l| l.ssrc_of(rid).is_some()));
        if sends {
            Ok(())
        } else {
            Err(error(ErrorKind::UnknownLayer, &format!("room {base} has no simulcast layer {rid}")))
        }
    }

    /// Gives each layer's ring held here a source in its room's simulcast publisher, if it has none yet and the
    /// publisher sends that layer: from then on the ring gets the layer's video and the room's audio.
    fn attach_layer_rings(&mut self, now: Instant) {
        let Ingest { rooms, host, env, slate, keyframe_requests_sent, .. } = self;
        let layer_rooms: Vec<RoomName> = rooms.keys().filter(|n| n.rid().is_some()).cloned().collect();
        for name in layer_rooms {
            let rid = name.rid().expect("a layer's name");
            let Some(key) = rooms.get(&name.base()).and_then(|r| r.publisher) else { continue };
            let Some(session) = host.get_mut(key) else { continue };
            let publisher = &mut session.app;
            // A ring already there (a viewer chose the layer of an earlier publisher) also gets the video of a
            // publisher that sends no simulcast.
            let sends = publisher.source.layers.as_ref().is_none_or(|l| l.ssrc_of(rid).is_some());
            if !sends || publisher.source.codecs.is_empty() || publisher.layer_rings.iter().any(|(r, _, _)| r == rid) {
                continue;
            }
            let mut source = Source::new(name.clone(), &mut env.random);
            source.codecs = publisher.source.codecs.clone();
            let Some(room) = rooms.get_mut(&name) else { continue };
            let mut codecs: Vec<_> = source.codecs.values().cloned().collect();
            codecs.sort_by_key(|e| e.pt);
            room.set_live_codecs(codecs, slate, &name);
            room.source_started(now);
            // The ring starts with no keyframe of this source: its readers need one.
            let ssrcs = publisher.source.layer_keyframe_ssrcs(rid);
            let mut api = session.rtc.direct_api();
            for ssrc in &ssrcs {
                if let Some(rx) = api.stream_rx(ssrc) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                    *keyframe_requests_sent += 1;
                }
            }
            tracing::info!(room = %name.base(), rid, "a simulcast layer's ring is written");
            session.app.layer_rings.push((rid.to_string(), source, None));
        }
    }

    /// Heartbeats, the slate, keyframe requests, silent publishers, pulls, idle rooms.
    fn housekeeping(&mut self, now: Instant) {
        let now_ms = self.env.unix_ms(now);
        for key in self.host.silent(now, PUBLISHER_TIMEOUT) {
            tracing::info!("publisher silent for {PUBLISHER_TIMEOUT:?}; closing");
            self.close(key);
        }
        if let Some(pulls) = &mut self.pulls {
            pulls.manage(now, now_ms, &mut self.rooms, self.draining, &mut self.refused, &mut self.env.random);
        }
        if now >= self.next_adopt_scan {
            self.next_adopt_scan = now + ADOPT_SCAN;
            self.adopt_watched_rings(now, now_ms);
        }
        let fallback = now >= self.next_fallback;
        if fallback {
            self.next_fallback = now + self.settings.keyframe_fallback_interval.unwrap_or(Duration::MAX / 4);
        }
        self.drop_idle_rooms(now, now_ms);
        self.publish_layers(now, now_ms);
        self.attach_layer_rings(now);
        // The publisher of each room with a layer's ring, for the keyframe requests of those rings.
        let layered = self.rooms.keys().any(|n| n.rid().is_some());
        let publishers: HashMap<RoomName, SessionKey> = match layered {
            true => self.rooms.iter().filter_map(|(name, r)| Some((name.clone(), r.publisher?))).collect(),
            false => HashMap::new(),
        };
        let Settings { runtime_dir, geometry, slate: slate_on, keyframe_request_interval, .. } = &self.settings;
        for (name, room) in &mut self.rooms {
            room.upkeep(runtime_dir, *geometry, &self.slate, now, now_ms, name);
            let watched = room.watched(now, now_ms);
            room.update_slate(&self.slate, *slate_on, watched, now, &mut self.env.random, name);
            let pulled = self.pulls.as_ref().is_some_and(|p| p.receiving(name));
            if let Some(rid) = name.rid() {
                // A layer's ring: its keyframes come from that layer of the room's publisher.
                let Some(&key) = publishers.get(&name.base()) else { continue };
                let Some(session) = self.host.get_mut(key) else { continue };
                let ssrcs = session.app.source.layer_keyframe_ssrcs(rid);
                let Some(why) = room.keyframe_due(now, watched, fallback, *keyframe_request_interval) else { continue };
                let mut api = session.rtc.direct_api();
                for ssrc in &ssrcs {
                    if let Some(rx) = api.stream_rx(ssrc) {
                        rx.request_keyframe(KeyframeRequestKind::Pli);
                        self.keyframe_requests_sent += 1;
                    }
                }
                tracing::debug!(session = %session.app.id, rid, ?why, "keyframe requested for a layer's ring");
                continue;
            }
            if room.publisher.is_none() && !pulled {
                continue;
            }
            let Some(why) = room.keyframe_due(now, watched, fallback, *keyframe_request_interval) else { continue };
            self.keyframe_requests_sent += 1;
            if pulled {
                self.pulls.as_mut().expect("pulled").request_keyframe(name);
                tracing::debug!(room = %name, ?why, "keyframe requested from the upstream");
                continue;
            }
            let Some(key) = room.publisher else { continue };
            let Some(session) = self.host.get_mut(key) else { continue };
            let mut api = session.rtc.direct_api();
            for ssrc in &session.app.source.keyframe_ssrcs() {
                if let Some(rx) = api.stream_rx(ssrc) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                }
            }
            tracing::debug!(session = %session.app.id, ?why, "keyframe requested from publisher");
            self.host.touch(key);
        }
    }

    /// Writes each room's simulcast layers into the layer tables of its ring and its layers' rings, and gives
    /// every layer that flows a ring of its own while a reader of any of them wants that (a worker choosing its
    /// viewers' layers by their links: [`RingReader::want_layers`]), as a `Watch` of each would.
    fn publish_layers(&mut self, now: Instant, now_ms: u64) {
        let mut tables: HashMap<RoomName, Vec<LayerEntry>> = HashMap::new();
        let mut wanted: HashMap<RoomName, u64> = HashMap::new();
        for (name, room) in &self.rooms {
            let want = wanted.entry(name.base()).or_default();
            *want = (*want).max(room.ring.layers_wanted_unix_ms());
            if name.rid().is_some() {
                continue;
            }
            let layers = room.publisher.and_then(|key| self.host.get(key)).and_then(|s| s.app.source.layers.as_ref());
            let table = layers.map_or_else(Vec::new, |l| {
                l.status(now)
                    .into_iter()
                    // A layer known only by its SSRC so far cannot be asked for by name.
                    .filter(|s| l.ssrc_of(&s.rid).is_some() && name.layer(&s.rid).is_ok())
                    .take(MAX_LAYERS)
                    .map(|s| LayerEntry {
                        bitrate_bps: s.bitrate_bps,
                        width: s.width.unwrap_or(0),
                        height: s.height.unwrap_or(0),
                        carried: s.carried,
                        rid: s.rid,
                    })
                    .collect()
            });
            tables.insert(name.clone(), table);
        }
        for (base, table) in &tables {
            let want = wanted.get(base).copied().unwrap_or(0);
            if table.len() < 2 || now_ms.saturating_sub(want) >= WATCH_TIMEOUT_MS {
                continue;
            }
            for layer in table {
                let Ok(name) = base.layer(&layer.rid) else { continue };
                // Not counted as a refusal: nobody asked, and the room's own ring still serves its viewers.
                if !self.rooms.contains_key(&name) && self.rooms.len() >= self.settings.max_rooms {
                    continue;
                }
                if let Ok(room) = self.room(&name, now) {
                    room.watched_until = Some(now + WATCH_GRACE);
                }
            }
        }
        for (name, room) in &mut self.rooms {
            let table = tables.get(&name.base()).map_or(&[][..], Vec::as_slice);
            room.set_layers(table, name);
        }
    }

    /// Removes the rooms nobody has published, watched or pulled for [`Settings::room_grace`], and their ring
    /// files: a room exists only while someone uses it.
    fn drop_idle_rooms(&mut self, now: Instant, now_ms: u64) {
        let grace = self.settings.room_grace;
        let mut idle = Vec::new();
        for (name, room) in &mut self.rooms {
            let pulled = self.pulls.as_ref().is_some_and(|p| p.pulls(name));
            if room.publisher.is_some() || room.watched(now, now_ms) || pulled {
                room.idle_since = None;
            } else if now.saturating_duration_since(*room.idle_since.get_or_insert(now)) >= grace {
                idle.push(name.clone());
            }
        }
        for name in idle {
            self.rooms.remove(&name);
            if let Some(pulls) = &mut self.pulls {
                pulls.forget(&name);
            }
            // A layer's ring nobody reads: its room's publisher stops writing it (until a viewer asks again).
            if let Some(rid) = name.rid() {
                let publisher = self.rooms.get(&name.base()).and_then(|r| r.publisher);
                if let Some(session) = publisher.and_then(|key| self.host.get_mut(key)) {
                    session.app.layer_rings.retain(|(r, _, _)| r != rid);
                }
            }
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
            let Some(room) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".ring"))
                .and_then(|n| RoomName::try_from(n.to_string()).ok())
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

    /// Notes the readers of rings written since the last call, to be woken.
    fn collect_wakes(&mut self) {
        for room in self.rooms.values_mut() {
            if room.take_written() {
                self.wake_mask |= room.ring.wake_mask();
            }
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
        if let Some(pulls) = &mut self.pulls {
            pulls.end_all(&mut self.rooms);
        }
    }

    fn handle_request(&mut self, now: Instant, request: Request) -> Response {
        self.request(now, request)
    }

    fn poll(&mut self, now: Instant, out: &mut dyn Outbox) {
        self.drive(now, &mut |t| out.transmit(t));
        if now >= self.next_housekeeping {
            self.housekeeping(now);
            self.next_housekeeping = now + HOUSEKEEPING;
        }
        let unix_ns = self.env.unix_ns(now);
        for (name, room) in &mut self.rooms {
            room.play_slate(&self.slate, now, unix_ns, name);
        }
        self.collect_wakes();
    }

    fn next_timeout(&mut self, _now: Instant) -> Option<Instant> {
        let mut t = self.next_housekeeping;
        for other in [self.host.next_timeout(), self.next_slate_frame()].into_iter().flatten() {
            t = t.min(other);
        }
        Some(t)
    }

    fn status_snapshot(&self, now: Instant) -> (ProcessStatus, Vec<RoomStatus>) {
        (self.status(), self.rooms_status(now))
    }

    fn metrics(&self, m: &mut ProcessMetrics) {
        m.sessions = self.host.len() as u32;
        m.keyframe_requests_sent = self.keyframe_requests_sent;
        m.layer_moves = self.layer_moves;
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
        if let Some(pulls) = &self.pulls {
            m.upstream = pulls.metrics(self.rooms.keys().cloned());
        }
    }

    fn has_work(&self) -> bool {
        self.host.has_dirty() || !self.events.is_empty()
    }
}

fn error(kind: ErrorKind, message: &str) -> Response {
    Response::Error { kind, message: message.to_string() }
}

#[cfg(test)]
mod tests {
    use shm_proto::control::FanoutRequest;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn ingest(dir: &std::path::Path, max_rooms: usize, now: Instant) -> Ingest {
        edge(dir, max_rooms, None, now)
    }

    fn edge(dir: &std::path::Path, max_rooms: usize, upstream: Option<&str>, now: Instant) -> Ingest {
        let settings = Settings {
            runtime_dir: dir.to_path_buf(),
            geometry: Geometry { slot_count: 64, slot_size: 2048 },
            keyframe_request_interval: SECOND,
            keyframe_fallback_interval: None,
            upstream: upstream.map(str::to_string),
            upstream_grace: SECOND,
            refuse_publishers: false,
            slate: true,
            sessions: SessionLimits::default(),
            max_rooms,
            room_grace: 2 * SECOND,
            max_pulls: 1,
        };
        let slate = Slate::load(None, None, 10).expect("the built-in slate");
        let candidates = offer::host_candidates(&["127.0.0.1:9".parse().unwrap()], str0m::net::Protocol::Udp);
        Ingest::new(settings, slate, candidates, Env::simulated(now, 1_000_000_000_000_000, 1), now)
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
        let mut ingest = ingest(&dir, 10, t0);
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
        let mut ingest = edge(&dir, 10, Some("http://127.0.0.1:1"), t0);
        assert_eq!(watch(&mut ingest, "a", t0), Response::Done);
        assert_eq!(watch(&mut ingest, "b", t0), Response::Done);
        ingest.housekeeping(t0);
        let pulls = ingest.pulls.as_ref().expect("an edge");
        assert_eq!(pulls.len(), 1, "max_pulls is 1");
        let waiting: Vec<_> =
            ingest.rooms.keys().filter(|name| !pulls.pulls(name)).map(|name| pulls.last_error(name)).collect();
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].is_some_and(|e| e.contains("limit of 1 rooms")), "{waiting:?}");
        // The shell is told to start the one pull.
        let started: Vec<Action> = std::iter::from_fn(|| ingest.poll_action()).collect();
        assert!(matches!(started[..], [Action::Pull(PullCommand::Start { id: 1, .. })]), "{started:?}");
        assert_eq!(ingest.refused.get("pulls"), 1);
        // Asked again, the waiting room is counted once, not at every turn.
        ingest.housekeeping(t0 + Duration::from_millis(60));
        assert_eq!(ingest.refused.get("pulls"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn viewer_calls_and_sessions_ingest_does_not_hold_are_refused() {
        let dir = temp_dir("dispatch");
        let t0 = Instant::now();
        let mut ingest = ingest(&dir, 2, t0);
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
    fn a_room_whose_ring_the_runtime_directory_cannot_hold_is_refused_and_leaves_nothing() {
        // On tmpfs, as the runtime directory is: a ring larger than the whole file system is refused before
        // anything is allocated.
        let dir = std::path::Path::new("/dev/shm").join(format!("deadsfu-ingest-nospace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        paths::prepare(&dir).unwrap();
        let Some(fs_bytes) = paths::file_system_bytes(&dir) else { return };
        let larger = (8..=20)
            .flat_map(|c| (11..=16).map(move |s| Geometry { slot_count: 1 << c, slot_size: 1 << s }))
            .find(|g| g.file_len() as u64 > fs_bytes);
        let Some(geometry) = larger else { return };
        let t0 = Instant::now();
        let mut ingest = ingest(&dir, 10, t0);
        ingest.settings.geometry = geometry;
        match watch(&mut ingest, "big", t0) {
            Response::Error { kind: ErrorKind::Unavailable, message } => {
                assert!(message.contains("room big") && message.contains("ring_slots"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(ingest.rooms.is_empty(), "no room made");
        let left: Vec<_> = std::fs::read_dir(paths::rings_dir(&dir)).map(|d| d.collect()).unwrap_or_default();
        assert!(left.is_empty(), "files left behind: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rooms_past_the_limit_are_refused_and_make_no_ring() {
        let dir = temp_dir("limit");
        let t0 = Instant::now();
        let mut ingest = ingest(&dir, 2, t0);
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
}
