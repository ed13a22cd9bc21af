//! A room as ingest holds it: its ring, what is written into it, and when its source is asked for a keyframe.
//!
//! A room has at most one [`Source`] at a time (a publisher, or an edge's pull) and the slate standing in
//! while no source sends video. The rules decided here: a source's video is held back while the slate plays
//! until the source's next keyframe; keyframes are detected and indexed once per frame; the codec table is the
//! source's codecs plus the slate's while it plays; keyframe requests are throttled per room however many
//! readers ask.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use deadsfu_media::env::Random;
use deadsfu_media::host::SessionKey;
use shm_proto::ring::{Codec, CodecEntry, Geometry, LayerEntry, MediaKind, PacketMeta, RingError, RingWriter};
use shm_proto::{paths, RoomName};
use str0m::rtp::{RtpPacket, Ssrc};

use crate::layers::{Layers, Take};
use crate::slate::{Slate, SlatePlayer};
use crate::{keyframe, picture};

/// Live video missing this long hands the room to the slate.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// A ring whose readers have not heartbeaten for this long is not watched.
pub const WATCH_TIMEOUT_MS: u64 = 3_000;
/// Window of the bitrate figure.
const BITRATE_WINDOW: Duration = Duration::from_secs(2);

/// One source of a room's media: a publisher, or an edge's pull from the upstream.
pub struct Source {
    pub room: RoomName,
    /// Identifies this source's packets in the ring (so readers see a source change).
    pub id: u32,
    /// Payload type -> ring entry, from the negotiated parameters.
    pub codecs: HashMap<u8, CodecEntry>,
    pub video_ssrcs: Vec<Ssrc>,
    /// Per video SSRC, the timestamp of the last keyframe start: a keyframe (SPS, PPS, IDR fragments) spans
    /// several packets that may each look like a start, and only the first may be indexed.
    keyframe_ts: HashMap<Ssrc, u32>,
    /// A simulcast publisher's layers: the ring carries one of them (see [`Layers`]).
    pub layers: Option<Layers>,
    /// The source id of the video in the ring: [`Source::id`], moved on each time the ring moves to another
    /// simulcast layer, so readers take the new layer up at its keyframe as they would a new source.
    video_id: u32,
}

impl Source {
    pub fn new(room: RoomName, random: &mut Random) -> Source {
        let id = random.u32();
        Source {
            room,
            id,
            codecs: HashMap::new(),
            video_ssrcs: Vec::new(),
            keyframe_ts: HashMap::new(),
            layers: None,
            video_id: id,
        }
    }

    /// The video SSRCs a keyframe request for the ring of layer `rid` goes to: that layer's, or, from a
    /// publisher without simulcast (whose video the ring then carries), those of [`Source::keyframe_ssrcs`].
    pub fn layer_keyframe_ssrcs(&self, rid: &str) -> Vec<Ssrc> {
        match &self.layers {
            Some(layers) => layers.ssrc_of(rid).into_iter().collect(),
            None => self.keyframe_ssrcs(),
        }
    }

    /// The video SSRCs a keyframe request goes to: the simulcast layer the ring carries, or every one (also
    /// while no layer is carried yet).
    pub fn keyframe_ssrcs(&self) -> Vec<Ssrc> {
        match self.layers.as_ref().and_then(Layers::carried) {
            Some(carried) => vec![carried],
            None => self.video_ssrcs.clone(),
        }
    }
}

/// Why a room might want a keyframe from its source now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyframeNeed {
    /// A reader bumped the ring's request counter (a joining or switching viewer, or a viewer's PLI/FIR).
    pub asked: bool,
    /// The slate is standing in for a source that is still connected.
    pub waiting: bool,
    /// The slow periodic fallback is due and someone watches.
    pub fallback: bool,
}

impl KeyframeNeed {
    /// True if a PLI goes to the source now: some reason holds and the last request is at least `interval`
    /// old. Requests are throttled per room, however many viewers ask.
    pub fn request_now(self, last: Option<Instant>, now: Instant, interval: Duration) -> bool {
        (self.asked || self.waiting || self.fallback) && last.is_none_or(|t| now.duration_since(t) >= interval)
    }
}

/// A room's ring and what is written into it.
pub struct Room {
    pub ring: RingWriter,
    /// The publisher's session, while the room has one.
    pub publisher: Option<SessionKey>,
    /// The source's codec entries (empty without a source).
    pub live_codecs: Vec<CodecEntry>,
    last_live_video: Option<Instant>,
    pub slate: Option<SlatePlayer>,
    /// Per slate clip, its payload type in the ring while it plays, or `None` if that clip is not played.
    slate_pts: Vec<Option<u8>>,
    pub watched_until: Option<Instant>,
    /// Since when nobody publishes, watches or pulls the room.
    pub idle_since: Option<Instant>,
    seen_keyframe_requests: u64,
    last_keyframe_request: Option<Instant>,
    /// Bytes written in the current window, and the rate of the last full window.
    window_start: Instant,
    window_bytes: u64,
    pub bitrate_bps: u64,
    /// Packets were written since the readers were last woken.
    written: bool,
    /// The layer table last written to the ring.
    layers: Vec<LayerEntry>,
}

impl Room {
    /// Creates the ring of `name` in `runtime_dir` and the room around it.
    pub fn create(
        runtime_dir: &Path,
        name: &RoomName,
        geometry: Geometry,
        now: Instant,
        now_ms: u64,
    ) -> Result<Room, RingError> {
        let ring = RingWriter::create(&paths::ring(runtime_dir, name), geometry, now_ms)?;
        tracing::debug!(room = %name, epoch = ring.epoch(), "ring opened for writing");
        let seen = ring.keyframe_requests();
        Ok(Room {
            ring,
            publisher: None,
            live_codecs: Vec::new(),
            last_live_video: None,
            slate: None,
            slate_pts: Vec::new(),
            watched_until: None,
            idle_since: None,
            seen_keyframe_requests: seen,
            last_keyframe_request: None,
            window_start: now,
            window_bytes: 0,
            bitrate_bps: 0,
            written: false,
            layers: Vec::new(),
        })
    }

    /// Writes the room's simulcast layers into the ring's layer table, if they changed.
    pub fn set_layers(&mut self, layers: &[LayerEntry], name: &RoomName) {
        if self.layers == layers {
            return;
        }
        match self.ring.set_layers(layers) {
            Ok(()) => self.layers = layers.to_vec(),
            Err(e) => tracing::warn!(room = %name, error = %e, "cannot write the layer table"),
        }
    }

    pub fn watched(&self, now: Instant, now_ms: u64) -> bool {
        self.watched_until.is_some_and(|t| now < t)
            || now_ms.saturating_sub(self.ring.reader_heartbeat_unix_ms()) < WATCH_TIMEOUT_MS
    }

    /// Live video arrived lately (it is forgotten when a source goes).
    pub fn live(&self, now: Instant) -> bool {
        self.last_live_video.is_some_and(|t| now.duration_since(t) < LIVE_TIMEOUT)
    }

    /// A new source takes the room: it gets [`LIVE_TIMEOUT`] to send its first video before the slate stands
    /// in, and the keyframe requests readers made before it are not its business.
    pub fn source_started(&mut self, now: Instant) {
        self.last_live_video = Some(now);
        self.seen_keyframe_requests = self.ring.keyframe_requests();
    }

    /// The room's source went: its codecs and its video are forgotten.
    pub fn source_ended(&mut self) {
        self.live_codecs.clear();
        self.last_live_video = None;
    }

    /// True once since the last call if packets were written: the ring's readers want a wake-up.
    pub fn take_written(&mut self) -> bool {
        std::mem::take(&mut self.written)
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

    /// The source's codecs as negotiated: the codec table is written with them.
    pub fn set_live_codecs(&mut self, codecs: Vec<CodecEntry>, slate: &Slate, room: &RoomName) {
        self.live_codecs = codecs;
        self.write_codecs(slate, room);
    }

    /// Writes a packet of the room's source into the ring: video held back while the slate plays until a
    /// keyframe, keyframes detected and indexed. `unix_ns` is the time now.
    pub fn write_live(&mut self, source: &mut Source, pkt: &RtpPacket, slate: &Slate, now: Instant, unix_ns: u64) {
        let pt = *pkt.header.payload_type;
        let Some(entry) = source.codecs.get(&pt) else {
            tracing::trace!(pt, "packet of a payload type the ring does not carry");
            return;
        };
        let (codec, kind) = (entry.codec, entry.kind);
        if !self.live_codecs.iter().any(|e| e.pt == pt) {
            // A pull learns which of the negotiated codecs the upstream sends as they arrive.
            self.live_codecs.push(entry.clone());
            self.write_codecs(slate, &source.room);
        }
        let ssrc = pkt.header.ssrc;
        let is_keyframe = kind == MediaKind::Video
            && keyframe::is_keyframe(codec, &pkt.payload)
            && source.keyframe_ts.insert(ssrc, pkt.header.timestamp) != Some(pkt.header.timestamp);
        if kind == MediaKind::Video {
            if !source.video_ssrcs.contains(&ssrc) {
                source.video_ssrcs.push(ssrc);
            }
            if let Some(layers) = &mut source.layers {
                if let Some(size) = is_keyframe.then(|| picture::size(codec, &pkt.payload)).flatten() {
                    layers.note_size(ssrc, size);
                }
                match layers.on_video(ssrc, pkt.header.ext_vals.rid, pkt.payload.len(), is_keyframe, now) {
                    Take::No => return,
                    Take::Yes => {}
                    Take::Switch => {
                        source.video_id = source.video_id.wrapping_add(1);
                        let kbit_s = layers.rate(ssrc).map(|r| (r * 8.0 / 1000.0).round());
                        tracing::info!(room = %source.room, ssrc = *ssrc, ?kbit_s, "simulcast: the ring carries this layer");
                    }
                }
            }
            if self.slate.is_some() {
                if !is_keyframe {
                    // The slate holds the picture until live video can start clean.
                    return;
                }
                self.slate = None;
                self.write_codecs(slate, &source.room);
                tracing::info!(room = %source.room, "live video is back; slate stopped");
            }
            self.last_live_video = Some(now);
        }
        // How long ago the socket delivered it, so the ring records when it really arrived.
        let waited = now.saturating_duration_since(pkt.timestamp).as_nanos() as u64;
        let ext = &pkt.header.ext_vals;
        let meta = PacketMeta {
            arrival_unix_ns: unix_ns.saturating_sub(waited),
            seq: *pkt.seq_no,
            timestamp: pkt.header.timestamp,
            ssrc: *ssrc,
            source: if kind == MediaKind::Video { source.video_id } else { source.id },
            pt,
            kind,
            marker: pkt.header.marker,
            keyframe: is_keyframe,
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation.map(|o| o as u8),
        };
        self.push(&meta, &pkt.payload, &source.room);
    }

    /// Writes the slate frames that are due.
    pub fn play_slate(&mut self, slate: &Slate, now: Instant, unix_ns: u64, room: &RoomName) {
        let Some(player) = &mut self.slate else { return };
        let source = player.source;
        for d in player.poll(slate, now) {
            let Some(pt) = self.slate_pts.get(d.clip).copied().flatten() else { continue };
            let meta = PacketMeta {
                arrival_unix_ns: unix_ns,
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
            self.push(&meta, d.payload, room);
        }
    }

    /// Starts or stops the slate: it plays (`slate_on`) in a watched room without live video, and stops when
    /// nobody watches (live video stops it at its first keyframe, in [`Room::write_live`]).
    pub fn update_slate(
        &mut self,
        slate: &Slate,
        slate_on: bool,
        watched: bool,
        now: Instant,
        random: &mut Random,
        room: &RoomName,
    ) {
        let want = slate_on && watched && !self.live(now);
        match (&self.slate, want) {
            (None, true) => {
                self.slate = Some(SlatePlayer::new(slate, now, || random.u32()));
                self.write_codecs(slate, room);
                tracing::info!(%room, "no live video; slate playing");
            }
            (Some(_), false) if !watched => {
                self.slate = None;
                self.write_codecs(slate, room);
                tracing::debug!(%room, "nobody watches; slate stopped");
            }
            _ => {}
        }
    }

    /// A housekeeping turn's upkeep: a ring file truncated under ingest is made anew (its readers reopen it),
    /// the heartbeat, the bitrate window.
    pub fn upkeep(
        &mut self,
        runtime_dir: &Path,
        geometry: Geometry,
        slate: &Slate,
        now: Instant,
        now_ms: u64,
        room: &RoomName,
    ) {
        if self.ring.is_broken() {
            match RingWriter::create(&paths::ring(runtime_dir, room), geometry, now_ms) {
                Ok(ring) => {
                    tracing::warn!(%room, "ring file truncated under ingest; made a new one");
                    self.ring = ring;
                    self.write_codecs(slate, room);
                }
                Err(e) => tracing::warn!(%room, error = %e, "ring file truncated; cannot make a new one"),
            }
        }
        self.ring.heartbeat(now_ms);
        if now.duration_since(self.window_start) >= BITRATE_WINDOW {
            let secs = now.duration_since(self.window_start).as_secs_f64();
            self.bitrate_bps = (self.window_bytes as f64 * 8.0 / secs) as u64;
            self.window_bytes = 0;
            self.window_start = now;
        }
    }

    /// Whether the room's source is asked for a keyframe now, and why: readers asked through the ring, the
    /// slate stands in for the source, or the periodic `fallback` is due while someone watches. A request
    /// made is recorded, so the next waits `interval`.
    pub fn keyframe_due(
        &mut self,
        now: Instant,
        watched: bool,
        fallback: bool,
        interval: Duration,
    ) -> Option<KeyframeNeed> {
        let requests = self.ring.keyframe_requests();
        let why = KeyframeNeed {
            asked: requests != self.seen_keyframe_requests,
            // While the slate stands in for a source that is still there, keep asking for its keyframe.
            waiting: self.slate.is_some(),
            fallback: fallback && watched,
        };
        if !why.request_now(self.last_keyframe_request, now, interval) {
            return None;
        }
        self.seen_keyframe_requests = requests;
        self.last_keyframe_request = Some(now);
        Some(why)
    }

    /// Writes the codec table: the source's codecs, plus the slate's while it plays, on payload types the
    /// source does not use. Once the source's video codecs are known, the slate plays only in those, so a
    /// viewer is never admitted on the strength of a slate codec it could not watch live in.
    pub fn write_codecs(&mut self, slate: &Slate, room: &RoomName) {
        let mut entries = self.live_codecs.clone();
        self.slate_pts.clear();
        if self.slate.is_some() {
            let live_video: Vec<Codec> =
                self.live_codecs.iter().filter(|e| e.kind == MediaKind::Video).map(|e| e.codec).collect();
            let mut free = (96..=127u8).rev().chain(35..=63).filter(|pt| !self.live_codecs.iter().any(|e| e.pt == *pt));
            for entry in slate.entries(|_| free.next().expect("the source leaves payload types free")) {
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

/// Deletes a room's ring file; readers that map it keep their mapping until they notice it was replaced.
pub fn remove_ring(runtime_dir: &Path, room: &RoomName) {
    let path = paths::ring(runtime_dir, room);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a ring file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_flood_of_keyframe_requests_reaches_the_source_once_a_second() {
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
