//! The fanout core: viewer sessions in, ring packets out to every viewer of the room.
//!
//! Each room a worker serves has one [`RoomFeed`]: a ring reader and a cursor, so the worker reads each packet
//! of the ring once and hands the same bytes to every viewer of that room. A viewer starts live: audio at once,
//! video at the next keyframe, which it asks the publisher for through the ring header.
//!
//! [`Fanout`] never touches a socket or a clock itself; [`run`] is the loop around it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_media::host::{SessionHost, SessionKey};
use deadsfu_media::process::{self, Core, Endpoints, StartError};
use deadsfu_media::{codec, offer};
use shm_proto::config::Config;
use shm_proto::control::{ErrorKind, ProcessStatus, Request, Response, Role};
use shm_proto::ring::{CodecEntry, MediaKind, PacketMeta, RingCursor, RingReader};
use shm_proto::{paths, RoomName};
use str0m::media::{Mid, Pt};
use str0m::net::Transmit;
use str0m::rtp::{ExtensionValues, RtpWrite, VideoOrientation};
use str0m::{Event, IceConnectionState};

use crate::splice::{SourceId, Splicer};

/// How often a room without a ring file looks for one again.
const RING_RETRY: Duration = Duration::from_millis(100);
/// How long the loop sleeps at most while viewers wait on rings (the ring has no wake-up yet).
const RING_POLL: Duration = Duration::from_millis(1);
/// Most packets read from one ring per loop turn, so one busy room cannot starve sockets and timers.
const READ_BUDGET: usize = 512;
/// Retransmission memory per viewer video stream, in packets (about 2 s at 1.5 Mbit/s).
const RTX_CACHE_PACKETS: usize = 256;

/// One outgoing track of a viewer.
struct Track {
    mid: Mid,
    splicer: Option<Splicer>,
}

struct Viewer {
    id: String,
    room: RoomName,
    connected: bool,
    audio: Option<Track>,
    video: Option<Track>,
    /// Video is held back until a keyframe, so the decoder starts clean.
    video_started: bool,
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
    next_open: Instant,
}

pub struct Fanout {
    index: u32,
    runtime_dir: PathBuf,
    candidates: Vec<SocketAddr>,
    host: SessionHost<Viewer>,
    rooms: HashMap<RoomName, RoomFeed>,
    ids: HashMap<String, SessionKey>,
    events: Vec<(SessionKey, Event)>,
    buf: Vec<u8>,
    /// Origin of the monotonic nanosecond clock the splicers use.
    t0: Instant,
}

impl Fanout {
    pub fn new(index: u32, runtime_dir: PathBuf, candidates: Vec<SocketAddr>, now: Instant) -> Fanout {
        Fanout {
            index,
            runtime_dir,
            candidates,
            host: SessionHost::new(),
            rooms: HashMap::new(),
            ids: HashMap::new(),
            events: Vec::new(),
            buf: vec![0u8; 64 * 1024],
            t0: now,
        }
    }

    fn request(&mut self, now: Instant, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(ProcessStatus {
                role: Role::Fanout,
                index: self.index,
                pid: std::process::id(),
                sessions: self.host.len() as u32,
                accepting: true,
            }),
            Request::View { room, offer } => self.view(now, &room, &offer),
            Request::Publish { .. } => error(ErrorKind::WrongRole, "fanout workers take viewers, not publishers"),
            Request::Close { session } => match self.ids.get(&session) {
                Some(&key) => {
                    self.close(key);
                    Response::Closed
                }
                None => error(ErrorKind::UnknownSession, "no such viewer session"),
            },
        }
    }

    fn view(&mut self, now: Instant, room: &str, offer_sdp: &str) -> Response {
        let room = match RoomName::new(room) {
            Ok(room) => room,
            Err(e) => return error(ErrorKind::BadRequest, &e.to_string()),
        };
        let mut accepted = match offer::accept(offer_sdp, &self.candidates, now, |c| c) {
            Ok(a) => a,
            Err(e) => return error(ErrorKind::BadOffer, &e.to_string()),
        };
        let id = format!("w{}-{}", self.index, process::random_hex(12));
        let mut viewer = Viewer {
            id: id.clone(),
            room: room.clone(),
            connected: false,
            audio: None,
            video: None,
            video_started: false,
            pt_map: HashMap::new(),
            pt_map_version: u64::MAX,
        };
        // The answer made the send streams; find them by the media sections of the offer.
        let mids: Vec<(Mid, bool)> = offer_media(offer_sdp);
        for (mid, is_video) in mids {
            let mut api = accepted.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else { continue };
            if is_video {
                tx.set_rtx_cache(RTX_CACHE_PACKETS, Duration::from_secs(3), None);
                viewer.video.get_or_insert(Track { mid, splicer: None });
            } else {
                viewer.audio.get_or_insert(Track { mid, splicer: None });
            }
        }
        if viewer.audio.is_none() && viewer.video.is_none() {
            return error(ErrorKind::BadOffer, "the offer asks to receive neither audio nor video");
        }
        let key = self.host.insert(accepted.rtc, accepted.ufrag, viewer);
        self.ids.insert(id.clone(), key);
        let feed = self.rooms.entry(room.clone()).or_insert_with(|| RoomFeed {
            path: paths::ring(&self.runtime_dir, &room),
            reader: None,
            cursor: RingCursor::at(0),
            codecs: Vec::new(),
            codecs_version: u64::MAX,
            viewers: Vec::new(),
            next_open: now,
        });
        feed.viewers.push(key);
        tracing::info!(session = %id, %room, "viewer joined");
        Response::Answer { session: id, answer: accepted.answer }
    }

    fn close(&mut self, key: SessionKey) {
        let Some(mut s) = self.host.remove(key) else { return };
        s.rtc.disconnect();
        self.ids.remove(&s.app.id);
        if let Some(feed) = self.rooms.get_mut(&s.app.room) {
            feed.viewers.retain(|k| *k != key);
            if feed.viewers.is_empty() {
                self.rooms.remove(&s.app.room);
            }
        }
        tracing::info!(session = %s.app.id, room = %s.app.room, "viewer left");
    }

    /// Reads what is new in every ring with viewers and writes it into their sessions.
    fn pump(&mut self, now: Instant) {
        let now_ns = now.duration_since(self.t0).as_nanos() as u64;
        for feed in self.rooms.values_mut() {
            if !feed.open(now) {
                continue;
            }
            let reader = feed.reader.as_ref().expect("open() returned true");
            for _ in 0..READ_BUDGET {
                let Some((meta, len)) = feed.cursor.next(reader, &mut self.buf) else { break };
                let payload: Arc<[u8]> = Arc::from(&self.buf[..len]);
                for &key in &feed.viewers {
                    let Some(session) = self.host.get_mut(key) else { continue };
                    if deliver(session, &feed.codecs, feed.codecs_version, &meta, &payload, now, now_ns) {
                        session.touch();
                    }
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
                    let Some(s) = self.host.get_mut(key) else { continue };
                    s.app.connected = true;
                    tracing::debug!(session = %s.app.id, "viewer connected");
                    let room = s.app.room.clone();
                    self.request_keyframe(&room);
                }
                Event::KeyframeRequest(_) => {
                    let Some(room) = self.host.get(key).map(|s| s.app.room.clone()) else { continue };
                    self.request_keyframe(&room);
                }
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => self.close(key),
                _ => {}
            }
        }
        self.events = events;
        for key in dead {
            self.close(key);
        }
    }

    fn request_keyframe(&self, room: &RoomName) {
        if let Some(reader) = self.rooms.get(room).and_then(|f| f.reader.as_ref()) {
            reader.request_keyframe();
        }
    }
}

impl Core for Fanout {
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
        self.pump(now);
        self.drive(now, send);
    }

    fn next_timeout(&self, now: Instant) -> Option<Instant> {
        let sessions = self.host.next_timeout();
        let rings = (!self.rooms.is_empty()).then_some(now + RING_POLL);
        match (sessions, rings) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn has_work(&self) -> bool {
        self.host.has_dirty()
    }
}

impl RoomFeed {
    /// Makes sure the ring is open and current; false while the room has no ring yet.
    fn open(&mut self, now: Instant) -> bool {
        if let Some(reader) = &self.reader {
            if reader.is_replaced() {
                self.reader = None;
            }
        }
        if self.reader.is_none() {
            if now < self.next_open {
                return false;
            }
            self.next_open = now + RING_RETRY;
            match RingReader::open(&self.path) {
                Ok(reader) => {
                    tracing::debug!(path = %self.path.display(), "ring opened");
                    self.cursor = RingCursor::at(reader.head());
                    self.codecs_version = u64::MAX;
                    // Viewers waiting for this room want a keyframe now.
                    reader.request_keyframe();
                    self.reader = Some(reader);
                }
                Err(e) => {
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
}

/// Writes one ring packet into one viewer's session; true if something was written.
fn deliver(
    session: &mut deadsfu_media::host::Session<Viewer>,
    codecs: &[CodecEntry],
    codecs_version: u64,
    meta: &PacketMeta,
    payload: &Arc<[u8]>,
    now: Instant,
    now_ns: u64,
) -> bool {
    let viewer = &mut session.app;
    if !viewer.connected {
        return false;
    }
    if meta.kind == MediaKind::Video && !viewer.video_started {
        if !meta.keyframe {
            return false;
        }
        viewer.video_started = true;
    }
    if viewer.pt_map_version != codecs_version {
        viewer.pt_map.clear();
        viewer.pt_map_version = codecs_version;
    }
    let rtc = &mut session.rtc;
    let pt = *viewer.pt_map.entry(meta.pt).or_insert_with(|| {
        let entry = codecs.iter().find(|e| e.pt == meta.pt)?;
        rtc.codec_config().match_params(codec::params(entry)).map(|p| p.pt())
    });
    let Some(pt) = pt else { return false };
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
    let out = splicer.map(SourceId { source: meta.source, ssrc: meta.ssrc }, meta.seq, meta.timestamp, now_ns);
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

/// The audio and video media sections of an offer: (mid, is_video), in order.
fn offer_media(sdp: &str) -> Vec<(Mid, bool)> {
    let mut out = Vec::new();
    let mut current: Option<bool> = None;
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            current = match rest.split(' ').next() {
                Some("video") => Some(true),
                Some("audio") => Some(false),
                _ => None,
            };
        } else if let (Some(is_video), Some(mid)) = (current, line.strip_prefix("a=mid:")) {
            out.push((Mid::from(mid.trim()), is_video));
        }
    }
    out
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
        advertise: cfg.ice_candidate_host,
        control_socket: paths::fanout_socket(&runtime_dir, index),
    };
    process::run(endpoints, |candidates, now| Fanout::new(index, runtime_dir.clone(), candidates, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_media_sections() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        assert_eq!(offer_media(sdp), vec![(Mid::from("0"), false), (Mid::from("1"), true)]);
    }
}
