//! The ingest core: publisher sessions in, ring writes out.
//!
//! [`Ingest`] is fed with control requests, datagrams and time, and never touches a socket itself; [`run`] is
//! the loop around it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use deadsfu_media::host::{SessionHost, SessionKey};
use deadsfu_media::process::{self, Core, Endpoints, StartError};
use deadsfu_media::{codec, offer};
use shm_proto::config::Config;
use shm_proto::control::{ErrorKind, ProcessStatus, Request, Response, Role};
use shm_proto::ring::{Codec, Geometry, MediaKind, PacketMeta, RingWriter};
use shm_proto::{paths, RoomName};
use str0m::media::KeyframeRequestKind;
use str0m::net::Transmit;
use str0m::rtp::{RtpPacket, Ssrc};
use str0m::{Event, IceConnectionState};

use crate::keyframe;

/// How often rings get a heartbeat and keyframe requests from readers are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// At most one keyframe request to a publisher this often.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// A publisher session.
struct Publisher {
    id: String,
    room: RoomName,
    /// Identifies this session's packets in the ring (so readers see a source change).
    source: u32,
    /// Payload type -> codec, from the negotiated parameters; filled at the first packet.
    codecs: HashMap<u8, (Codec, MediaKind)>,
    video_ssrcs: Vec<Ssrc>,
}

/// A room's ring and who publishes into it.
struct Room {
    ring: RingWriter,
    publisher: Option<SessionKey>,
    seen_keyframe_requests: u64,
    last_keyframe_request: Option<Instant>,
}

pub struct Ingest {
    runtime_dir: PathBuf,
    geometry: Geometry,
    candidates: Vec<SocketAddr>,
    host: SessionHost<Publisher>,
    rooms: HashMap<RoomName, Room>,
    ids: HashMap<String, SessionKey>,
    events: Vec<(SessionKey, Event)>,
    next_housekeeping: Instant,
}

impl Ingest {
    pub fn new(runtime_dir: PathBuf, geometry: Geometry, candidates: Vec<SocketAddr>, now: Instant) -> Ingest {
        Ingest {
            runtime_dir,
            geometry,
            candidates,
            host: SessionHost::new(),
            rooms: HashMap::new(),
            ids: HashMap::new(),
            events: Vec::new(),
            next_housekeeping: now,
        }
    }

    fn request(&mut self, now: Instant, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(ProcessStatus {
                role: Role::Ingest,
                index: 0,
                pid: std::process::id(),
                sessions: self.host.len() as u32,
                accepting: true,
            }),
            Request::Publish { room, offer } => self.publish(now, &room, &offer),
            Request::View { .. } => error(ErrorKind::WrongRole, "ingest takes publishers, not viewers"),
            Request::Close { session } => match self.ids.get(&session) {
                Some(&key) => {
                    self.close(key);
                    Response::Closed
                }
                None => error(ErrorKind::UnknownSession, "no such publisher session"),
            },
        }
    }

    fn publish(&mut self, now: Instant, room: &str, offer_sdp: &str) -> Response {
        let room = match RoomName::new(room) {
            Ok(room) => room,
            Err(e) => return error(ErrorKind::BadRequest, &e.to_string()),
        };
        if self.rooms.get(&room).is_some_and(|r| r.publisher.is_some()) {
            return error(ErrorKind::RoomBusy, &format!("room {room} already has a publisher"));
        }
        let accepted = match offer::accept(offer_sdp, &self.candidates, now, |c| c) {
            Ok(a) => a,
            Err(e) => return error(ErrorKind::BadOffer, &e.to_string()),
        };
        if !self.rooms.contains_key(&room) {
            let path = paths::ring(&self.runtime_dir, &room);
            match RingWriter::create(&path, self.geometry, process::unix_ms()) {
                Ok(ring) => {
                    self.rooms.insert(
                        room.clone(),
                        Room { ring, publisher: None, seen_keyframe_requests: 0, last_keyframe_request: None },
                    );
                }
                Err(e) => return error(ErrorKind::Internal, &format!("cannot open ring for room {room}: {e}")),
            }
        }
        let id = format!("i-{}", process::random_hex(12));
        let publisher = Publisher {
            id: id.clone(),
            room: room.clone(),
            source: process::random_u32(),
            codecs: HashMap::new(),
            video_ssrcs: Vec::new(),
        };
        let key = self.host.insert(accepted.rtc, accepted.ufrag, publisher);
        let r = self.rooms.get_mut(&room).expect("room inserted above");
        r.publisher = Some(key);
        r.seen_keyframe_requests = r.ring.keyframe_requests();
        self.ids.insert(id.clone(), key);
        tracing::info!(session = %id, %room, "publisher joined");
        Response::Answer { session: id, answer: accepted.answer }
    }

    fn close(&mut self, key: SessionKey) {
        let Some(mut s) = self.host.remove(key) else { return };
        s.rtc.disconnect();
        self.ids.remove(&s.app.id);
        if let Some(room) = self.rooms.get_mut(&s.app.room) {
            if room.publisher == Some(key) {
                room.publisher = None;
            }
        }
        tracing::info!(session = %s.app.id, room = %s.app.room, "publisher left");
    }

    /// Drives the sessions and writes what publishers sent into the rings.
    fn drive(&mut self, now: Instant, send: &mut dyn FnMut(Transmit)) {
        let dead = self.host.poll(now, send, &mut self.events);
        let mut events = std::mem::take(&mut self.events);
        for (key, event) in events.drain(..) {
            match event {
                Event::RtpPacket(pkt) => self.on_rtp(key, pkt),
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

    fn on_rtp(&mut self, key: SessionKey, pkt: RtpPacket) {
        let Some(session) = self.host.get_mut(key) else { return };
        let publisher = &mut session.app;
        let Some(room) = self.rooms.get_mut(&publisher.room) else { return };
        if publisher.codecs.is_empty() {
            let entries: Vec<_> = session.rtc.codec_config().params().iter().filter_map(codec::entry).collect();
            publisher.codecs = entries.iter().map(|e| (e.pt, (e.codec, e.kind))).collect();
            if let Err(e) = room.ring.set_codecs(&entries) {
                tracing::warn!(error = %e, room = %publisher.room, "cannot write codec table");
            }
        }
        let pt = *pkt.header.payload_type;
        let Some(&(codec, kind)) = publisher.codecs.get(&pt) else {
            tracing::trace!(pt, "packet of a payload type the ring does not carry");
            return;
        };
        if kind == MediaKind::Video && !publisher.video_ssrcs.contains(&pkt.header.ssrc) {
            publisher.video_ssrcs.push(pkt.header.ssrc);
        }
        let ext = &pkt.header.ext_vals;
        let meta = PacketMeta {
            arrival_unix_ns: process::unix_ns(),
            seq: *pkt.seq_no,
            timestamp: pkt.header.timestamp,
            ssrc: *pkt.header.ssrc,
            source: publisher.source,
            pt,
            kind,
            marker: pkt.header.marker,
            keyframe: kind == MediaKind::Video && keyframe::is_keyframe(codec, &pkt.payload),
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation.map(|o| o as u8),
        };
        if let Err(e) = room.ring.push(&meta, &pkt.payload) {
            tracing::warn!(error = %e, room = %publisher.room, "packet not written");
        }
    }

    /// Heartbeats the rings and forwards keyframe requests that readers left in them.
    fn housekeeping(&mut self, now: Instant) {
        let now_ms = process::unix_ms();
        for room in self.rooms.values_mut() {
            room.ring.heartbeat(now_ms);
            let requests = room.ring.keyframe_requests();
            if requests == room.seen_keyframe_requests {
                continue;
            }
            let Some(key) = room.publisher else { continue };
            if room.last_keyframe_request.is_some_and(|t| now.duration_since(t) < KEYFRAME_REQUEST_INTERVAL) {
                continue;
            }
            room.seen_keyframe_requests = requests;
            room.last_keyframe_request = Some(now);
            let Some(session) = self.host.get_mut(key) else { continue };
            let ssrcs = session.app.video_ssrcs.clone();
            let mut api = session.rtc.direct_api();
            for ssrc in ssrcs {
                if let Some(rx) = api.stream_rx(&ssrc) {
                    rx.request_keyframe(KeyframeRequestKind::Pli);
                }
            }
            session.touch();
            tracing::debug!(id = %session.app.id, "keyframe requested from publisher");
        }
    }
}

impl Core for Ingest {
    fn handle_request(&mut self, now: Instant, request: Request) -> Response {
        self.request(now, request)
    }

    fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        buf: &[u8],
        send: &mut dyn FnMut(Transmit),
    ) {
        self.host.handle_datagram(now, source, destination, buf, send, &mut self.events);
    }

    fn poll(&mut self, now: Instant, send: &mut dyn FnMut(Transmit)) {
        self.drive(now, send);
        if now >= self.next_housekeeping {
            self.housekeeping(now);
            self.next_housekeeping = now + HOUSEKEEPING;
        }
    }

    fn next_timeout(&self, _now: Instant) -> Option<Instant> {
        Some(self.host.next_timeout().map_or(self.next_housekeeping, |t| t.min(self.next_housekeeping)))
    }

    fn has_work(&self) -> bool {
        self.host.has_dirty()
    }
}

fn error(kind: ErrorKind, message: &str) -> Response {
    Response::Error { kind, message: message.to_string() }
}

/// Runs ingest until SIGTERM or SIGINT.
pub fn run(cfg: &Config) -> Result<(), StartError> {
    let runtime_dir = cfg.runtime_dir();
    let geometry = Geometry { slot_count: cfg.ring_slots, slot_size: cfg.ring_slot_size };
    let endpoints = Endpoints {
        name: "ingest".into(),
        runtime_dir: &runtime_dir,
        udp_port: cfg.ingest_port,
        advertise: cfg.ice_candidate_host,
        control_socket: paths::ingest_socket(&runtime_dir),
    };
    process::run(endpoints, |candidates, now| Ingest::new(runtime_dir.clone(), geometry, candidates, now))
}
