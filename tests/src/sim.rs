//! deadsfu's media path in memory: str0m publishers -> [`Ingest`] -> rings in a temporary directory ->
//! [`Fanout`] workers -> str0m viewers, on a simulated clock, in one test process.
//!
//! The cores run exactly as in their processes (the same requests, datagrams and timers, ICE, DTLS and SRTP
//! included); what the processes' shells do is done here: datagrams are handed from peer to core and back,
//! ingest's wake-ups turn the workers they name, and time advances in steps of [`STEP`] as fast as the
//! machine runs it. So a test of media semantics (splicing, GOP replay, slate, switching, keyframe requests,
//! NACKs) takes milliseconds and sees the same packets on every run.
//!
//! Publishers send VP8 (or a codec of their choice) and Opus in RTP mode: each video frame is
//! `packets_per_frame` packets whose payloads say which publisher, frame and packet they are
//! ([`Payload`]), so a viewer's packets can be checked one by one. Viewers record every RTP packet they get.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadsfu_fanout::fanout::Fanout;
pub use deadsfu_fanout::Estimation;
use deadsfu_ingest::ingest::{Action, Ingest, Settings};
use deadsfu_ingest::slate::Slate;
use deadsfu_media::env::Env;
use deadsfu_media::limits::SessionLimits;
use deadsfu_media::offer;
use deadsfu_media::outbox::{Outbox, Path};
use deadsfu_media::process::Core;
use shm_proto::control::{FanoutRequest, IngestRequest, ProcessMetrics, Request, Response};
use shm_proto::ring::Geometry;
use shm_proto::{paths, RoomName, SessionId};
use str0m::change::SdpPendingOffer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::rtcp::SenderInfo;
use str0m::rtp::{ExtensionValues, RtpWrite, VideoOrientation};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// How far the clock moves in one step, unless [`Options::step`] says otherwise.
pub const STEP: Duration = Duration::from_millis(1);
/// Ingest's address.
pub const INGEST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 10_000);

/// Worker `k`'s address.
pub fn worker_addr(k: usize) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 1, k as u8)), 20_000)
}

/// A datagram on the simulated wire.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

impl Datagram {
    /// The RTP header's payload type, sequence number and SSRC, if this is (S)RTP and not RTCP: SRTP
    /// leaves the header in the clear.
    pub fn rtp(&self) -> Option<(u8, u16, u32)> {
        let d = &self.data;
        if d.len() < 12 || !(128..=191).contains(&d[0]) || (192..=223).contains(&d[1]) {
            return None;
        }
        Some((d[1] & 0x7f, u16::from_be_bytes([d[2], d[3]]), u32::from_be_bytes([d[8], d[9], d[10], d[11]])))
    }

    /// The type of the first packet of an (S)RTCP compound packet (200 a sender report, 201 a receiver
    /// report, ...), if this is RTCP: SRTCP leaves the first header in the clear.
    pub fn rtcp_type(&self) -> Option<u8> {
        let d = &self.data;
        (d.len() >= 8 && (128..=191).contains(&d[0]) && (192..=223).contains(&d[1])).then_some(d[1])
    }
}

/// Marks a test publisher's payloads (the slate's are not).
const MAGIC: &[u8; 2] = b"ds";
/// The VP8 payload descriptor's length in a test publisher's payloads: its first byte, the X byte, a 15-bit
/// PictureID.
const VP8_DESCRIPTOR: usize = 4;

/// What a test's synthetic video payload says about itself: which publisher (its tag), frame and packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Payload {
    pub tag: u8,
    pub frame: u64,
    pub packet: u16,
    pub keyframe: bool,
}

impl Payload {
    /// A VP8 payload of `size` bytes (RFC 7741): the payload descriptor (S=1 on a frame's first packet, and the
    /// frame's 15-bit PictureID), the VP8 header's P bit (0 on a keyframe), then what the packet is.
    fn vp8(self, picture_id: u16, size: usize) -> Vec<u8> {
        let mut p = vec![0u8; size.max(VP8_DESCRIPTOR + 16)];
        p[0] = if self.packet == 0 { 0x90 } else { 0x80 };
        p[1] = 0x80;
        p[2..4].copy_from_slice(&(0x8000 | picture_id).to_be_bytes());
        p[VP8_DESCRIPTOR] = if self.keyframe { 0x00 } else { 0x01 };
        self.write(&mut p[VP8_DESCRIPTOR + 1..]);
        p
    }

    fn write(self, p: &mut [u8]) {
        p[0] = self.tag;
        p[1..9].copy_from_slice(&self.frame.to_be_bytes());
        p[9..11].copy_from_slice(&self.packet.to_be_bytes());
        p[11] = self.keyframe as u8;
        p[12..14].copy_from_slice(MAGIC);
    }

    /// The payload a [`Payload::vp8`] made, from its bytes.
    pub fn parse(payload: &[u8]) -> Option<Payload> {
        let p = payload.get(VP8_DESCRIPTOR + 1..VP8_DESCRIPTOR + 15)?;
        if &p[12..14] != MAGIC {
            return None;
        }
        Some(Payload {
            tag: p[0],
            frame: u64::from_be_bytes(p[1..9].try_into().ok()?),
            packet: u16::from_be_bytes(p[9..11].try_into().ok()?),
            keyframe: p[11] == 1,
        })
    }
}

/// A publisher's video: `fps` frames a second of `packets_per_frame` packets, a keyframe every `gop` frames
/// and whenever one is asked for.
#[derive(Clone, Debug)]
pub struct VideoSpec {
    pub fps: u32,
    pub gop: u64,
    pub packets_per_frame: u16,
    pub packet_size: usize,
}

impl Default for VideoSpec {
    fn default() -> Self {
        VideoSpec { fps: 30, gop: 60, packets_per_frame: 4, packet_size: 1000 }
    }
}

struct VideoOut {
    mid: Mid,
    /// The simulcast layer it is, if the publisher sends layers.
    rid: Option<Rid>,
    pt: Pt,
    spec: VideoSpec,
    seq: u64,
    ts: u32,
    frame: u64,
    /// The next frame's PictureID: each layer numbers from its own start, as a browser's encoders do.
    picture_id: u16,
    next_at: Instant,
    keyframe_asked: bool,
}

struct AudioOut {
    mid: Mid,
    pt: Pt,
    seq: u64,
    ts: u32,
    next_at: Instant,
}

/// An RTP packet a viewer got.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub video: bool,
    pub ssrc: u32,
    /// Extended sequence number.
    pub seq: u64,
    pub timestamp: u32,
    pub pt: u8,
    pub marker: bool,
    pub payload: Vec<u8>,
    /// Header extensions: the audio level and voice activity, the video orientation, the MID.
    pub audio_level: Option<(i8, bool)>,
    pub video_orientation: Option<VideoOrientation>,
    pub mid: Option<Mid>,
    /// The transport-wide sequence number (transport-cc), if the packet carried one.
    pub transport_seq: Option<u16>,
}

impl Received {
    /// What the packet is, if it is a test publisher's video.
    pub fn what(&self) -> Option<Payload> {
        self.video.then(|| Payload::parse(&self.payload)).flatten()
    }

    /// The PictureID of a test publisher's video packet, as the viewer got it.
    pub fn picture_id(&self) -> Option<u16> {
        self.what()?;
        Some(u16::from_be_bytes([self.payload[2], self.payload[3]]) & 0x7fff)
    }

    /// The audio level and voice activity a test publisher sent this audio packet with.
    pub fn audio_level_of(&self) -> Option<(i8, bool)> {
        let n = *self.payload.get(1).filter(|_| !self.video)?;
        Some((-(n as i8), n % 2 == 0))
    }
}

/// A str0m peer: a publisher (with its media) or a viewer.
pub struct Peer {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    /// Where its session is: ingest, or worker k.
    pub server: SocketAddr,
    pub session: SessionId,
    pub connected: bool,
    /// A viewer's RTP packets, in order of arrival.
    pub received: Vec<Received>,
    /// Sender reports a viewer got: how many packets it had received when it got each, and what it said.
    pub sender_reports: Vec<(usize, SenderInfo)>,
    /// A publisher's keyframe requests (PLI/FIR) received.
    pub keyframe_requests: u32,
    /// The publisher's tag, in its video payloads.
    pub tag: u8,
    /// A publisher's media (a video stream per simulcast layer); it sends once connected, while `sending` (and
    /// answers keyframe requests only then).
    video: Vec<VideoOut>,
    audio: Option<AudioOut>,
    pub sending: bool,
    /// The peer closed: it sends and takes nothing more.
    pub gone: bool,
}

impl Peer {
    /// The video packets received, as what they are.
    pub fn video(&self) -> Vec<(&Received, Payload)> {
        self.received.iter().filter_map(|r| r.what().map(|w| (r, w))).collect()
    }

    pub fn audio(&self) -> Vec<&Received> {
        self.received.iter().filter(|r| !r.video).collect()
    }
}

/// How a world is made.
#[derive(Clone, Debug)]
pub struct Options {
    pub workers: usize,
    pub slate: bool,
    pub geometry: Geometry,
    pub keyframe_request_interval: Duration,
    pub seed: u64,
    /// The workers' replay pace (`replay_rate_percent`); their default if `None`.
    pub replay_rate_percent: Option<u32>,
    /// Which viewers get transport-cc and a bandwidth estimate (`bandwidth_estimation`; none unless set).
    pub estimation: Estimation,
    /// How far the clock moves in one step: finer for tests of what str0m paces within a millisecond (a
    /// bandwidth probe's packets go a millisecond or two apart).
    pub step: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 1,
            slate: true,
            geometry: Geometry { slot_count: 4096, slot_size: 2048 },
            keyframe_request_interval: Duration::from_millis(500),
            seed: 1,
            replay_rate_percent: None,
            estimation: Estimation::Off,
            step: STEP,
        }
    }
}

/// Index of a peer in [`World::peers`].
pub type PeerId = usize;

/// The media path in memory.
pub struct World {
    pub now: Instant,
    step: Duration,
    pub ingest: Ingest,
    pub workers: Vec<Fanout>,
    pub peers: Vec<Peer>,
    /// Decides which datagrams the wire loses (true: lost); none by default.
    pub loss: Box<dyn FnMut(&Datagram) -> bool>,
    /// Datagrams lost so far.
    pub lost: u64,
    /// Narrow links in front of peers, by the peer's address (see [`World::narrow`]).
    links: HashMap<SocketAddr, Link>,
    /// Datagrams queued on the narrow links, with when they arrive, in the order they do.
    queued: std::collections::BTreeMap<(Instant, u64), (PeerId, Datagram)>,
    queued_count: u64,
    dir: PathBuf,
    wire: VecDeque<Datagram>,
    /// Per worker: stalled (not turned, its datagrams held) until then, as a worker short of CPU.
    stalled_until: Vec<Option<Instant>>,
    held: Vec<Vec<Datagram>>,
    woken: Vec<bool>,
    worker_due: Vec<Instant>,
    ingest_due: Instant,
    by_addr: HashMap<SocketAddr, PeerId>,
    /// While `Some`, each worker turn's outbox calls in order, one string per turn: `w` a datagram written in
    /// place (media), `t` a session's own datagram, `f` a flush.
    pub turn_calls: Option<Vec<String>>,
}

/// A worker's outbox in the simulation: its datagrams go on the wire, and its calls are noted in `calls`.
struct Wire<'a> {
    out: &'a mut Vec<Datagram>,
    calls: String,
}

impl Outbox for Wire<'_> {
    fn transmit(&mut self, t: Transmit) {
        self.calls.push('t');
        self.out.push(datagram(t));
    }

    fn write(&mut self, write: &mut dyn FnMut(&mut Vec<u8>) -> Option<Path>) {
        let mut buf = Vec::new();
        if let Some((_, from, to)) = write(&mut buf) {
            self.calls.push('w');
            self.out.push(Datagram { from, to, data: buf });
        }
    }

    fn flush(&mut self) {
        self.calls.push('f');
    }
}

impl World {
    pub fn new(options: Options) -> World {
        static WORLDS: AtomicU64 = AtomicU64::new(0);
        let n = WORLDS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("deadsfu-sim-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        paths::prepare(&dir).expect("a runtime directory");
        let now = Instant::now();
        let unix_ns = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos() as u64;
        let env = |k: u64| Env::simulated(now, unix_ns, options.seed.wrapping_mul(1000).wrapping_add(k));
        let settings = Settings {
            runtime_dir: dir.clone(),
            geometry: options.geometry,
            keyframe_request_interval: options.keyframe_request_interval,
            keyframe_fallback_interval: None,
            upstream: None,
            upstream_grace: Duration::from_secs(10),
            refuse_publishers: false,
            slate: options.slate,
            sessions: SessionLimits::default(),
            max_rooms: 64,
            room_grace: Duration::from_secs(10),
            max_pulls: 1,
        };
        let candidates = |addr| offer::host_candidates(&[addr], Protocol::Udp);
        let slate = Slate::load(None, None, 10).expect("the built-in slate");
        let ingest = Ingest::new(settings, slate, candidates(INGEST), env(0), now);
        let workers = (0..options.workers)
            .map(|k| {
                let limits = SessionLimits::default();
                let worker =
                    Fanout::new(k as u32, dir.clone(), candidates(worker_addr(k)), limits, env(1 + k as u64), now)
                        .with_slate(options.slate)
                        .with_estimation(options.estimation);
                match options.replay_rate_percent {
                    Some(percent) => worker.with_replay_rate(percent),
                    None => worker,
                }
            })
            .collect();
        World {
            step: options.step,
            now,
            ingest,
            workers,
            peers: Vec::new(),
            loss: Box::new(|_| false),
            lost: 0,
            links: HashMap::new(),
            queued: std::collections::BTreeMap::new(),
            queued_count: 0,
            dir,
            wire: VecDeque::new(),
            stalled_until: vec![None; options.workers],
            held: vec![Vec::new(); options.workers],
            woken: vec![false; options.workers],
            worker_due: vec![now; options.workers],
            ingest_due: now,
            by_addr: HashMap::new(),
            turn_calls: None,
        }
    }

    /// Puts `peer` behind a link of `bytes_per_s`, as `tc`'s tbf with a 4 KB burst and a queue of `latency`: a
    /// datagram to the peer (counted with its UDP and IPv4 headers) passes at once while the bucket holds
    /// enough, else waits in the queue until it does, and is lost if it would wait longer than `latency`. So a
    /// burst reaches the peer spread out at the link's rate, and the delay grows as the queue fills.
    pub fn narrow(&mut self, peer: PeerId, bytes_per_s: u64, latency: Duration) {
        let link = Link { bytes_per_s, latency, tokens: LINK_BURST as f64, at: self.now, dropped: 0 };
        self.links.insert(self.peers[peer].addr, link);
    }

    /// Takes the link away from in front of `peer` (what it holds still arrives).
    pub fn widen(&mut self, peer: PeerId) {
        self.links.remove(&self.peers[peer].addr);
    }

    /// Datagrams the link in front of `peer` dropped.
    pub fn link_drops(&self, peer: PeerId) -> u64 {
        self.links.get(&self.peers[peer].addr).map_or(0, |l| l.dropped)
    }

    fn new_peer(&mut self, rtc: Rtc, addr: SocketAddr, server: SocketAddr, session: SessionId) -> PeerId {
        let id = self.peers.len();
        self.by_addr.insert(addr, id);
        self.peers.push(Peer {
            rtc,
            addr,
            server,
            session,
            connected: false,
            received: Vec::new(),
            sender_reports: Vec::new(),
            keyframe_requests: 0,
            tag: 0,
            video: Vec::new(),
            audio: None,
            sending: true,
            gone: false,
        });
        id
    }

    fn peer_addr(&self) -> SocketAddr {
        let n = self.peers.len() as u32 + 1;
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a02_0000 + n)), 5000)
    }

    /// A publisher to `room` sending VP8 video as `video` says (with its payloads tagged `tag`) and Opus
    /// audio at 50 packets a second; `None` if ingest refused it (the response says why).
    pub fn publish(&mut self, room: &str, video: VideoSpec, tag: u8) -> Result<PeerId, Response> {
        let config = Rtc::builder().clear_codecs().enable_vp8(true).enable_opus(true, false);
        self.publish_with(room, config, Some(video), true, tag)
    }

    /// A publisher with the codecs of `config`, sending the kinds asked for.
    pub fn publish_with(
        &mut self,
        room: &str,
        config: RtcConfig,
        video: Option<VideoSpec>,
        audio: bool,
        tag: u8,
    ) -> Result<PeerId, Response> {
        let layers: Vec<(Option<&str>, VideoSpec)> = video.into_iter().map(|v| (None, v)).collect();
        self.publish_layers(room, config, &layers, audio, tag)
    }

    /// A VP8 + Opus publisher sending simulcast: one video stream per `(rid, spec)`, offered in that order
    /// (`a=simulcast:send`), each with its own sequence numbers and keyframes.
    pub fn publish_simulcast(&mut self, room: &str, layers: &[(&str, VideoSpec)], tag: u8) -> Result<PeerId, Response> {
        let config = Rtc::builder().clear_codecs().enable_vp8(true).enable_opus(true, false);
        let layers: Vec<(Option<&str>, VideoSpec)> = layers.iter().map(|(rid, v)| (Some(*rid), v.clone())).collect();
        self.publish_layers(room, config, &layers, true, tag)
    }

    fn publish_layers(
        &mut self,
        room: &str,
        config: RtcConfig,
        layers: &[(Option<&str>, VideoSpec)],
        audio: bool,
        tag: u8,
    ) -> Result<PeerId, Response> {
        let addr = self.peer_addr();
        let mut rtc = config.set_rtp_mode(true).build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a host candidate"));
        let mut change = rtc.sdp_api();
        let simulcast = layers.iter().all(|(rid, _)| rid.is_some()).then(|| {
            let mut s = Simulcast::new();
            for (rid, _) in layers {
                s.add_send_layer(SimulcastLayer::new(rid.expect("a rid")));
            }
            s
        });
        let video_mid = (!layers.is_empty())
            .then(|| change.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast));
        let audio_mid = audio.then(|| change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        let (offer, pending) = change.apply().expect("an offer");
        let request = IngestRequest::Publish { room: room_name(room), offer: offer.to_sdp_string() };
        let response = self.ingest.handle_request(self.now, request.into());
        self.act();
        let Response::Answer { session, answer } = response else { return Err(response) };
        accept_answer(&mut rtc, pending, &answer);
        let pt_of = |rtc: &Rtc, video: bool| {
            let params = rtc.codec_config().params();
            params.iter().find(|p| p.spec().codec.is_video() == video && p.spec().codec != Codec::Rtx).map(|p| p.pt())
        };
        let id = self.new_peer(rtc, addr, INGEST, session);
        let now = self.now;
        let peer = &mut self.peers[id];
        peer.tag = tag;
        if let Some(mid) = video_mid {
            let pt = pt_of(&peer.rtc, true).expect("a video codec");
            for (k, (rid, spec)) in layers.iter().enumerate() {
                peer.video.push(VideoOut {
                    mid,
                    rid: rid.map(Rid::from),
                    pt,
                    spec: spec.clone(),
                    seq: 1000 * tag as u64 + 20_000 * k as u64,
                    ts: 90_000 * tag as u32,
                    frame: 0,
                    picture_id: ((7919 * u32::from(tag) + 12_289 * k as u32) & 0x7fff) as u16,
                    next_at: now,
                    keyframe_asked: false,
                });
            }
        }
        if let Some(mid) = audio_mid {
            let pt = pt_of(&peer.rtc, false).expect("an audio codec");
            peer.audio = Some(AudioOut { mid, pt, seq: 0, ts: 0, next_at: now });
        }
        Ok(id)
    }

    /// A simulcast publisher stops sending layer `rid` (as a browser does with its top layers when its uplink
    /// narrows); the others go on.
    pub fn stop_layer(&mut self, publisher: PeerId, rid: &str) {
        self.peers[publisher].video.retain(|v| v.rid != Some(Rid::from(rid)));
    }

    /// A viewer of `room` on worker `worker` offering audio and video with str0m's default codecs.
    pub fn view(&mut self, room: &str, worker: usize) -> Result<PeerId, Response> {
        self.view_with(room, worker, Rtc::builder())
    }

    /// A viewer with the codecs of `config`, as signaling makes one: ingest is told to watch the room, the
    /// worker takes the offer.
    pub fn view_with(&mut self, room: &str, worker: usize, config: RtcConfig) -> Result<PeerId, Response> {
        let addr = self.peer_addr();
        let mut rtc = config.set_rtp_mode(true).build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a host candidate"));
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().expect("an offer");
        let watched = self.ingest.handle_request(self.now, IngestRequest::Watch { room: room_name(room) }.into());
        if watched != Response::Done {
            return Err(watched);
        }
        let request = FanoutRequest::View { room: room_name(room), offer: offer.to_sdp_string() };
        let response = self.workers[worker].handle_request(self.now, request.into());
        let Response::Answer { session, answer } = response else { return Err(response) };
        accept_answer(&mut rtc, pending, &answer);
        Ok(self.new_peer(rtc, addr, worker_addr(worker), session))
    }

    /// Moves a viewer to `room`, as signaling does: ingest watches the room, the worker switches.
    pub fn switch(&mut self, viewer: PeerId, room: &str) -> Response {
        let watched = self.ingest.handle_request(self.now, IngestRequest::Watch { room: room_name(room) }.into());
        if watched != Response::Done {
            return watched;
        }
        let (worker, session) = self.owner(viewer);
        let request = FanoutRequest::Switch { session, room: room_name(room) };
        self.workers[worker.expect("a viewer")].handle_request(self.now, request.into())
    }

    /// Ends a peer's session at its server (a DELETE); the peer sends nothing more.
    pub fn close(&mut self, peer: PeerId) -> Response {
        let (worker, session) = self.owner(peer);
        self.peers[peer].gone = true;
        let request = Request::Close { session };
        let response = match worker {
            Some(k) => self.workers[k].handle_request(self.now, request),
            None => self.ingest.handle_request(self.now, request),
        };
        self.act();
        response
    }

    fn owner(&self, peer: PeerId) -> (Option<usize>, SessionId) {
        let p = &self.peers[peer];
        let worker = (0..self.workers.len()).find(|&k| worker_addr(k) == p.server);
        (worker, p.session)
    }

    /// Room `room`'s ring, as a reader sees it.
    pub fn ring(&self, room: &str) -> shm_proto::ring::RingReader {
        shm_proto::ring::RingReader::open(&paths::ring(&self.dir, &room_name(room))).expect("the room's ring")
    }

    /// Whether the ring of `room` (or a layer's, `ROOM~RID`) exists.
    pub fn ring_exists(&self, room: &str) -> bool {
        paths::ring(&self.dir, &room_name(room)).exists()
    }

    /// Worker `k` gets no turn for `d` (its datagrams wait), as a worker short of CPU.
    pub fn stall(&mut self, k: usize, d: Duration) {
        self.stalled_until[k] = Some(self.now + d);
    }

    /// What worker `k` counts.
    pub fn worker_metrics(&self, k: usize) -> ProcessMetrics {
        let mut m = ProcessMetrics::default();
        self.workers[k].metrics(&mut m);
        m
    }

    /// What ingest counts.
    pub fn ingest_metrics(&self) -> ProcessMetrics {
        let mut m = ProcessMetrics::default();
        self.ingest.metrics(&mut m);
        m
    }

    /// A viewer asks for a keyframe (a PLI on its video stream), as a decoder that lost its picture does.
    pub fn request_keyframe(&mut self, viewer: PeerId) {
        let peer = &mut self.peers[viewer];
        let ssrc = peer.received.iter().rev().find(|r| r.video).expect("video received").ssrc;
        let mut api = peer.rtc.direct_api();
        let rx = api.stream_rx(&ssrc.into()).expect("the video receive stream");
        rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
    }

    /// Runs the world for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Runs until `done` holds, for at most `limit` of simulated time; panics naming `what` if it never does.
    pub fn run_until(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&World) -> bool) {
        let end = self.now + limit;
        while !done(self) {
            assert!(self.now < end, "{what}: not within {limit:?} of simulated time");
            self.step();
        }
    }

    /// Connected: every peer not gone.
    pub fn all_connected(&self) -> bool {
        self.peers.iter().all(|p| p.gone || p.connected)
    }

    /// One step: publishers send what is due, then datagrams, timers and ring reads go round until the wire
    /// is empty, then the clock moves on.
    pub fn step(&mut self) {
        let now = self.now;
        for peer in &mut self.peers {
            if !peer.gone && peer.connected && peer.sending {
                send_media(peer, now);
            }
        }
        for _round in 0..100 {
            for id in 0..self.peers.len() {
                if !self.peers[id].gone {
                    self.peers[id].rtc.handle_input(Input::Timeout(now)).expect("a peer takes time");
                    self.drain_peer(id);
                }
            }
            let mut busy = !self.wire.is_empty();
            while let Some(entry) = self.queued.first_entry().filter(|e| e.key().0 <= now) {
                let (id, d) = entry.remove();
                self.hand_to_peer(id, d);
                busy = true;
            }
            while let Some(d) = self.wire.pop_front() {
                self.deliver(d);
            }
            if now >= self.ingest_due || self.ingest.has_work() {
                let mut out = Vec::new();
                self.ingest.poll(now, &mut |t| out.push(datagram(t)));
                self.ingest_due = self.ingest.next_timeout(now).unwrap_or(now + Duration::from_millis(100));
                busy |= !out.is_empty();
                self.wire.extend(out);
                self.act();
            }
            for k in 0..self.workers.len() {
                if self.stalled_until[k].is_some_and(|t| now < t) {
                    continue;
                }
                if self.stalled_until[k].take().is_some() {
                    busy = true;
                    for d in std::mem::take(&mut self.held[k]) {
                        self.deliver(d);
                    }
                }
                let worker = &mut self.workers[k];
                if std::mem::take(&mut self.woken[k]) || now >= self.worker_due[k] || worker.has_work() {
                    let mut out = Vec::new();
                    let mut wire = Wire { out: &mut out, calls: String::new() };
                    worker.poll(now, &mut wire);
                    if let Some(turns) = &mut self.turn_calls {
                        turns.push(wire.calls);
                    }
                    self.worker_due[k] = worker.next_timeout(now).unwrap_or(now + Duration::from_millis(100));
                    busy |= !out.is_empty();
                    self.wire.extend(out);
                }
            }
            if !busy {
                break;
            }
        }
        self.now += self.step;
    }

    /// Does what ingest asks its shell for: wake-ups turn the workers named.
    fn act(&mut self) {
        while let Some(action) = self.ingest.poll_action() {
            if let Action::Wake(mask) = action {
                for (k, woken) in self.woken.iter_mut().enumerate() {
                    *woken |= mask & (1 << (k % 64)) != 0;
                }
            }
        }
    }

    fn drain_peer(&mut self, id: PeerId) {
        let now = self.now;
        let peer = &mut self.peers[id];
        if peer.gone {
            return;
        }
        loop {
            match peer.rtc.poll_output().expect("a peer's output") {
                Output::Timeout(_) => break,
                Output::Transmit(t) => self.wire.push_back(datagram(t)),
                Output::Event(Event::Connected) => peer.connected = true,
                Output::Event(Event::KeyframeRequest(r)) => {
                    peer.keyframe_requests += 1;
                    // A publisher that is not sending has no encoder running to answer.
                    for v in peer.video.iter_mut().filter(|v| v.rid.is_none() || v.rid == r.rid) {
                        v.keyframe_asked |= peer.sending;
                    }
                }
                Output::Event(Event::RtpPacket(pkt)) => {
                    let pt = *pkt.header.payload_type;
                    let video =
                        peer.rtc.codec_config().params().iter().any(|p| *p.pt() == pt && p.spec().codec.is_video());
                    peer.received.push(Received {
                        at: now,
                        video,
                        ssrc: *pkt.header.ssrc,
                        seq: *pkt.seq_no,
                        timestamp: pkt.header.timestamp,
                        pt,
                        marker: pkt.header.marker,
                        payload: pkt.payload.to_vec(),
                        audio_level: pkt.header.ext_vals.audio_level.zip(pkt.header.ext_vals.voice_activity),
                        video_orientation: pkt.header.ext_vals.video_orientation,
                        mid: pkt.header.ext_vals.mid,
                        transport_seq: pkt.header.ext_vals.transport_cc,
                    });
                }
                Output::Event(Event::SenderFeedback(report)) => {
                    peer.sender_reports.push((peer.received.len(), report.sender_info));
                }
                Output::Event(_) => {}
            }
        }
    }

    fn deliver(&mut self, d: Datagram) {
        if (self.loss)(&d) {
            self.lost += 1;
            return;
        }
        let now = self.now;
        let mut out = Vec::new();
        if d.to == INGEST {
            self.ingest.handle_packet(now, Protocol::Udp, d.from, d.to, &d.data, &mut |t| out.push(datagram(t)));
        } else if let Some(k) = (0..self.workers.len()).find(|&k| worker_addr(k) == d.to) {
            if self.stalled_until[k].is_some_and(|t| now < t) {
                self.held[k].push(d);
                return;
            }
            self.workers[k].handle_packet(now, Protocol::Udp, d.from, d.to, &d.data, &mut |t| out.push(datagram(t)));
        } else if let Some(&id) = self.by_addr.get(&d.to) {
            match self.links.get_mut(&d.to).map(|link| link.admit(now, d.data.len() + 28)) {
                None => self.hand_to_peer(id, d),
                Some(None) => {}
                Some(Some(at)) if at <= now => self.hand_to_peer(id, d),
                Some(Some(at)) => {
                    self.queued_count += 1;
                    self.queued.insert((at, self.queued_count), (id, d));
                }
            }
        }
        self.wire.extend(out);
    }

    fn hand_to_peer(&mut self, id: PeerId, d: Datagram) {
        let now = self.now;
        let peer = &mut self.peers[id];
        if !peer.gone {
            let receive = Receive::new(Protocol::Udp, d.from, d.to, &d.data).expect("a datagram");
            peer.rtc.handle_input(Input::Receive(now, receive)).expect("a peer takes a datagram");
            // str0m wants its output drained after every input.
            self.drain_peer(id);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Bytes a narrow link passes back to back (tbf's burst).
const LINK_BURST: u64 = 4096;

/// A tbf in front of a peer (see [`World::narrow`]).
struct Link {
    bytes_per_s: u64,
    latency: Duration,
    /// The bucket's tokens at `at`, the time the last datagram admitted leaves (or the last look, if later).
    tokens: f64,
    at: Instant,
    dropped: u64,
}

impl Link {
    /// When a datagram of `size` bytes arriving at `now` leaves the link; `None` if it is dropped.
    fn admit(&mut self, now: Instant, size: usize) -> Option<Instant> {
        // First in, first out: it leaves no sooner than the one before it.
        let from = self.at.max(now);
        let rate = self.bytes_per_s as f64;
        let tokens =
            (self.tokens + from.saturating_duration_since(self.at).as_secs_f64() * rate).min(LINK_BURST as f64);
        let wait = Duration::from_secs_f64(((size as f64 - tokens) / rate).max(0.0));
        let leaves = from + wait;
        if leaves.saturating_duration_since(now) > self.latency {
            self.dropped += 1;
            return None;
        }
        self.tokens = tokens + wait.as_secs_f64() * rate - size as f64;
        self.at = leaves;
        Some(leaves)
    }
}

/// A room name the tests know to be valid (signaling checks names before any core sees them).
/// A room's name, or a simulcast layer's ring's (`ROOM~RID`), as the processes pass them to each other.
fn room_name(room: &str) -> RoomName {
    RoomName::try_from(room.to_string()).expect("a valid room name")
}

fn datagram(t: Transmit) -> Datagram {
    Datagram { from: t.source, to: t.destination, data: t.contents.to_vec() }
}

fn accept_answer(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &str) {
    let answer = str0m::change::SdpAnswer::from_sdp_string(answer).expect("an SDP answer");
    rtc.sdp_api().accept_answer(pending, answer).expect("the answer is accepted");
}

/// Writes the publisher's frames and audio packets that are due.
/// A publisher that did not send for a while (`sending` off) makes nothing of that time: its media clocks
/// jump to `now` (the RTP clock with them), as a real one's do, rather than catching up in a burst.
fn skip_pause(next_at: &mut Instant, ts: &mut u32, interval: Duration, ticks: u32, now: Instant) {
    if now.saturating_duration_since(*next_at) > 5 * interval {
        let missed = (now - *next_at).as_nanos() / interval.as_nanos();
        *ts = ts.wrapping_add((missed as u32).wrapping_mul(ticks));
        *next_at += interval * missed as u32;
    }
}

fn send_media(peer: &mut Peer, now: Instant) {
    let tag = peer.tag;
    for v in &mut peer.video {
        skip_pause(&mut v.next_at, &mut v.ts, Duration::from_secs(1) / v.spec.fps, 90_000 / v.spec.fps, now);
        while v.next_at <= now {
            let keyframe = v.frame % v.spec.gop == 0 || std::mem::take(&mut v.keyframe_asked);
            let mut api = peer.rtc.direct_api();
            let tx = api.stream_tx_by_mid(v.mid, v.rid).expect("the video send stream");
            for packet in 0..v.spec.packets_per_frame {
                let payload = Payload { tag, frame: v.frame, packet, keyframe }.vp8(v.picture_id, v.spec.packet_size);
                let last = packet + 1 == v.spec.packets_per_frame;
                let ext = ExtensionValues { video_orientation: Some(VideoOrientation::Deg90), ..Default::default() };
                tx.write_rtp(RtpWrite::new(v.pt, v.seq.into(), v.ts, now, payload).marker(last).ext_vals(ext));
                v.seq += 1;
            }
            v.frame += 1;
            v.picture_id = (v.picture_id + 1) & 0x7fff;
            v.ts = v.ts.wrapping_add(90_000 / v.spec.fps);
            v.next_at += Duration::from_secs(1) / v.spec.fps;
        }
    }
    if let Some(a) = &mut peer.audio {
        skip_pause(&mut a.next_at, &mut a.ts, Duration::from_millis(20), 960, now);
        while a.next_at <= now {
            let mut api = peer.rtc.direct_api();
            let tx = api.stream_tx_by_mid(a.mid, None).expect("the audio send stream");
            let mut payload = vec![0xf8u8; 80];
            payload[0] = tag;
            // A level that varies, told by the payload's second byte: see `audio_level_of`.
            payload[1] = (a.seq % 128) as u8;
            let ext = ExtensionValues {
                audio_level: Some(-((a.seq % 128) as i8)),
                voice_activity: Some(a.seq % 2 == 0),
                ..Default::default()
            };
            tx.write_rtp(RtpWrite::new(a.pt, a.seq.into(), a.ts, now, payload).ext_vals(ext));
            a.seq += 1;
            a.ts = a.ts.wrapping_add(960);
            a.next_at += Duration::from_millis(20);
        }
    }
}
