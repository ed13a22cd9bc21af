//! The slate: a short "no signal" clip that ingest loops into rooms that have viewers and no live video.
//!
//! The clip comes in H.264 (Annex B, an access unit delimiter before each frame) and in VP8 (IVF), so every
//! viewer gets it in a codec it negotiated; both play at once as two tracks of one source and each viewer's
//! worker forwards the one it can use. Frames are packetized here once, at load: H.264 as single NAL units or
//! FU-A fragments (RFC 6184, packetization mode 1), VP8 with the minimal payload descriptor (RFC 7741).
//!
//! [`SlatePlayer`] is sans-IO: asked with the current time, it says which packets are due.

use std::time::{Duration, Instant};

use shm_proto::ring::{Codec, CodecEntry, MediaKind};

/// The default clips, made by `scripts/make-slate`.
const DEFAULT_H264: &[u8] = include_bytes!("../slate/slate.h264");
const DEFAULT_VP8: &[u8] = include_bytes!("../slate/slate.ivf");
const DEFAULT_H264_FPS: u32 = 10;

/// Largest RTP payload the packetizer makes (leaves room for RTP, SRTP and header extensions in a 1200-byte
/// datagram).
const MAX_PAYLOAD: usize = 1100;
const VIDEO_CLOCK: u32 = 90_000;

/// One frame of a clip, packetized.
#[derive(Clone, Debug)]
pub struct Frame {
    pub packets: Vec<Vec<u8>>,
    pub keyframe: bool,
}

/// A packetized clip of one codec.
#[derive(Clone, Debug)]
pub struct Clip {
    pub codec: Codec,
    pub frames: Vec<Frame>,
    /// RTP ticks (90 kHz) per frame.
    pub frame_ticks: u32,
}

/// Why a slate clip could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SlateError {
    #[error("cannot read slate clip {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("slate clip is not an IVF file")]
    NotIvf,
    #[error("slate clip is not VP8 (IVF fourcc {0:?})")]
    NotVp8(String),
    #[error("slate clip is truncated")]
    Truncated,
    #[error("slate clip has no frames")]
    Empty,
    #[error("slate clip does not start with a keyframe")]
    NoKeyframe,
    #[error("slate frame rate must be between 1 and 120")]
    BadFrameRate,
}

/// The slate of this process: one clip per codec.
#[derive(Clone, Debug)]
pub struct Slate {
    pub clips: Vec<Clip>,
}

impl Slate {
    /// The built-in slate.
    pub fn default_clips() -> Slate {
        let h264 = h264_annex_b(DEFAULT_H264, DEFAULT_H264_FPS).expect("the built-in H.264 slate is valid");
        let vp8 = vp8_ivf(DEFAULT_VP8).expect("the built-in VP8 slate is valid");
        Slate { clips: vec![h264, vp8] }
    }

    /// The built-in slate with the configured clips in place of the defaults.
    pub fn load(
        h264: Option<&std::path::Path>,
        vp8: Option<&std::path::Path>,
        h264_fps: u32,
    ) -> Result<Slate, SlateError> {
        let mut slate = Slate::default_clips();
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| SlateError::Read { path: p.display().to_string(), source })
        };
        if let Some(p) = h264 {
            slate.clips[0] = h264_annex_b(&read(p)?, h264_fps)?;
        }
        if let Some(p) = vp8 {
            slate.clips[1] = vp8_ivf(&read(p)?)?;
        }
        Ok(slate)
    }

    /// Codec table entries for the clips, with payload types chosen by `pt_for`.
    pub fn entries(&self, mut pt_for: impl FnMut(usize) -> u8) -> Vec<CodecEntry> {
        self.clips
            .iter()
            .enumerate()
            .map(|(i, clip)| CodecEntry {
                pt: pt_for(i),
                kind: MediaKind::Video,
                codec: clip.codec,
                clock_rate: VIDEO_CLOCK,
                channels: 0,
                fmtp: match clip.codec {
                    Codec::H264 => "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".into(),
                    _ => String::new(),
                },
                slate: true,
            })
            .collect()
    }
}

/// Splits an Annex B H.264 stream at access unit delimiters and packetizes each frame.
pub fn h264_annex_b(bytes: &[u8], fps: u32) -> Result<Clip, SlateError> {
    if fps == 0 || fps > 120 {
        return Err(SlateError::BadFrameRate);
    }
    let mut frames: Vec<Frame> = Vec::new();
    let mut current: Option<Frame> = None;
    for nal in annex_b_nal_units(bytes) {
        let Some(&header) = nal.first() else { continue };
        let nal_type = header & 0x1f;
        if nal_type == 9 {
            // Access unit delimiter: a new frame starts; the delimiter itself is not sent.
            frames.extend(current.take());
            current = Some(Frame { packets: Vec::new(), keyframe: false });
            continue;
        }
        let frame = current.get_or_insert_with(|| Frame { packets: Vec::new(), keyframe: false });
        frame.keyframe |= nal_type == 5 || nal_type == 7;
        frame.packets.extend(h264_packetize(nal));
    }
    frames.extend(current);
    frames.retain(|f| !f.packets.is_empty());
    finish(Codec::H264, frames, VIDEO_CLOCK / fps)
}

/// The NAL units of an Annex B byte stream (without start codes).
fn annex_b_nal_units(bytes: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= bytes.len() {
        if bytes[i] == 0 && bytes[i + 1] == 0 && bytes[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (n, &start) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(bytes.len(), |next| next - 3);
        // A four-byte start code leaves a zero at the end of the previous unit.
        while end > start && bytes[end - 1] == 0 {
            end -= 1;
        }
        out.push(&bytes[start..end]);
    }
    out
}

/// RTP payloads for one NAL unit: itself when it fits, else FU-A fragments.
fn h264_packetize(nal: &[u8]) -> Vec<Vec<u8>> {
    if nal.len() <= MAX_PAYLOAD {
        return vec![nal.to_vec()];
    }
    let (header, body) = (nal[0], &nal[1..]);
    let indicator = (header & 0xe0) | 28;
    let chunks: Vec<&[u8]> = body.chunks(MAX_PAYLOAD - 2).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut fu = (header & 0x1f) | if i == 0 { 0x80 } else { 0 };
            if i == last {
                fu |= 0x40;
            }
            let mut p = Vec::with_capacity(chunk.len() + 2);
            p.extend_from_slice(&[indicator, fu]);
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}

/// Reads VP8 frames from an IVF file and packetizes them.
pub fn vp8_ivf(bytes: &[u8]) -> Result<Clip, SlateError> {
    if bytes.len() < 32 || &bytes[0..4] != b"DKIF" {
        return Err(SlateError::NotIvf);
    }
    let fourcc = &bytes[8..12];
    if fourcc != b"VP80" {
        return Err(SlateError::NotVp8(String::from_utf8_lossy(fourcc).into_owned()));
    }
    let header_len = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
    let rate = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let scale = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    if rate == 0 || scale == 0 || rate / scale == 0 || rate / scale > 120 {
        return Err(SlateError::BadFrameRate);
    }
    let frame_ticks = (VIDEO_CLOCK as u64 * scale as u64 / rate as u64) as u32;
    let mut frames = Vec::new();
    let mut at = header_len.max(32);
    while at < bytes.len() {
        let header = bytes.get(at..at + 12).ok_or(SlateError::Truncated)?;
        let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let data = bytes.get(at + 12..at + 12 + size).ok_or(SlateError::Truncated)?;
        at += 12 + size;
        let Some(&first) = data.first() else { continue };
        let keyframe = first & 0x01 == 0;
        let chunks: Vec<&[u8]> = data.chunks(MAX_PAYLOAD - 1).collect();
        let packets = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                // Payload descriptor: S (start of partition) on the first packet, partition 0.
                let mut p = Vec::with_capacity(chunk.len() + 1);
                p.push(if i == 0 { 0x10 } else { 0x00 });
                p.extend_from_slice(chunk);
                p
            })
            .collect();
        frames.push(Frame { packets, keyframe });
    }
    finish(Codec::Vp8, frames, frame_ticks)
}

fn finish(codec: Codec, frames: Vec<Frame>, frame_ticks: u32) -> Result<Clip, SlateError> {
    match frames.first() {
        None => Err(SlateError::Empty),
        Some(f) if !f.keyframe => Err(SlateError::NoKeyframe),
        Some(_) => Ok(Clip { codec, frames, frame_ticks }),
    }
}

/// One packet the player wants written now.
#[derive(Debug, PartialEq, Eq)]
pub struct Due<'a> {
    /// Index of the clip (and of its codec entry).
    pub clip: usize,
    pub ssrc: u32,
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// First packet of a keyframe.
    pub keyframe: bool,
    pub payload: &'a [u8],
}

/// Plays a [`Slate`] in a loop, frame by frame, each clip at its own frame rate.
#[derive(Debug)]
pub struct SlatePlayer {
    /// The ring's source id of this playing; a new one each time the slate starts.
    pub source: u32,
    start: Instant,
    tracks: Vec<TrackState>,
}

#[derive(Debug)]
struct TrackState {
    ssrc: u32,
    next_seq: u64,
    ts_base: u32,
    /// Frames played so far.
    played: u64,
}

impl SlatePlayer {
    /// A player starting now. `random` supplies ids (source, SSRCs, initial numbers).
    pub fn new(slate: &Slate, now: Instant, mut random: impl FnMut() -> u32) -> SlatePlayer {
        let source = random();
        let tracks = slate
            .clips
            .iter()
            .map(|_| TrackState { ssrc: random(), next_seq: (random() % 16_384) as u64, ts_base: random(), played: 0 })
            .collect();
        SlatePlayer { source, start: now, tracks }
    }

    /// When the next frame is due.
    pub fn next_due(&self, slate: &Slate) -> Instant {
        self.tracks
            .iter()
            .zip(&slate.clips)
            .map(|(t, c)| self.start + frame_time(t.played, c.frame_ticks))
            .min()
            .unwrap_or(self.start)
    }

    /// The packets of every frame due by `now`, in order.
    pub fn poll<'a>(&mut self, slate: &'a Slate, now: Instant) -> Vec<Due<'a>> {
        let mut out = Vec::new();
        for (i, (track, clip)) in self.tracks.iter_mut().zip(&slate.clips).enumerate() {
            while self.start + frame_time(track.played, clip.frame_ticks) <= now {
                let frame = &clip.frames[(track.played % clip.frames.len() as u64) as usize];
                let timestamp = track.ts_base.wrapping_add((track.played * clip.frame_ticks as u64) as u32);
                let last = frame.packets.len() - 1;
                for (n, payload) in frame.packets.iter().enumerate() {
                    out.push(Due {
                        clip: i,
                        ssrc: track.ssrc,
                        seq: track.next_seq,
                        timestamp,
                        marker: n == last,
                        keyframe: n == 0 && frame.keyframe,
                        payload,
                    });
                    track.next_seq += 1;
                }
                track.played += 1;
            }
        }
        out
    }
}

fn frame_time(frames: u64, frame_ticks: u32) -> Duration {
    Duration::from_nanos(frames * frame_ticks as u64 * 1_000_000_000 / VIDEO_CLOCK as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_clips_load_and_start_with_keyframes() {
        let slate = Slate::default_clips();
        assert_eq!(slate.clips.len(), 2);
        for clip in &slate.clips {
            assert!(clip.frames.len() >= 10, "{:?}: {} frames", clip.codec, clip.frames.len());
            assert!(clip.frames[0].keyframe);
            assert_eq!(clip.frame_ticks, 9000, "10 fps");
            let keyframes = clip.frames.iter().filter(|f| f.keyframe).count();
            assert!(keyframes >= 2, "{:?}: a keyframe every second", clip.codec);
            assert!(clip.frames.iter().flat_map(|f| &f.packets).all(|p| p.len() <= MAX_PAYLOAD));
        }
    }

    #[test]
    fn h264_packets_are_detected_as_keyframes_where_the_frame_is_one() {
        let slate = Slate::default_clips();
        for clip in &slate.clips {
            for frame in &clip.frames {
                assert_eq!(
                    crate::keyframe::is_keyframe(clip.codec, &frame.packets[0]),
                    frame.keyframe,
                    "{:?}",
                    clip.codec
                );
            }
        }
    }

    #[test]
    fn fu_a_fragments_reassemble() {
        let nal: Vec<u8> = std::iter::once(0x65).chain((0..3000u32).map(|i| i as u8)).collect();
        let packets = h264_packetize(&nal);
        assert!(packets.len() >= 3);
        assert_eq!(packets[0][1] & 0xc0, 0x80, "start bit on the first");
        assert_eq!(packets.last().unwrap()[1] & 0xc0, 0x40, "end bit on the last");
        let mut back = vec![(packets[0][0] & 0xe0) | (packets[0][1] & 0x1f)];
        for p in &packets {
            back.extend_from_slice(&p[2..]);
        }
        assert_eq!(back, nal);
    }

    #[test]
    fn a_configured_clip_replaces_the_default() {
        // A custom VP8 clip: the default's first 10 frames, as its own IVF file.
        let mut at = 32;
        for _ in 0..10 {
            let size = u32::from_le_bytes(DEFAULT_VP8[at..at + 4].try_into().unwrap()) as usize;
            at += 12 + size;
        }
        let dir = std::env::temp_dir().join(format!("deadsfu-slate-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("custom.ivf");
        std::fs::write(&path, &DEFAULT_VP8[..at]).unwrap();
        let slate = Slate::load(None, Some(&path), 10).unwrap();
        assert_eq!(slate.clips[1].frames.len(), 10);
        assert_eq!(slate.clips[0].frames.len(), Slate::default_clips().clips[0].frames.len(), "H.264 stays default");
        let missing = Slate::load(Some(&dir.join("nope.h264")), None, 10).unwrap_err().to_string();
        assert!(missing.contains("nope.h264"), "{missing}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_clips_are_refused() {
        assert!(matches!(vp8_ivf(b"nope"), Err(SlateError::NotIvf)));
        let mut ivf = DEFAULT_VP8.to_vec();
        ivf.truncate(40);
        assert!(matches!(vp8_ivf(&ivf), Err(SlateError::Truncated)));
        assert!(matches!(h264_annex_b(b"\x00\x00\x01\x09\xf0", 10), Err(SlateError::Empty)));
        assert!(matches!(h264_annex_b(DEFAULT_H264, 0), Err(SlateError::BadFrameRate)));
    }

    #[test]
    fn player_paces_frames_and_keeps_numbers_contiguous() {
        let slate = Slate::default_clips();
        let t0 = Instant::now();
        let mut n = 0;
        let mut player = SlatePlayer::new(&slate, t0, || {
            n += 1;
            n * 1000
        });
        let first = player.poll(&slate, t0);
        assert!(first.iter().any(|d| d.clip == 0 && d.keyframe) && first.iter().any(|d| d.clip == 1 && d.keyframe));
        assert!(player.poll(&slate, t0 + Duration::from_millis(50)).is_empty(), "nothing due before 100 ms");
        // Three seconds later: 30 more frames per clip, looping past the clip's end without a gap.
        let later = player.poll(&slate, t0 + Duration::from_secs(3));
        for clip in 0..2 {
            let seqs: Vec<u64> = first.iter().chain(&later).filter(|d| d.clip == clip).map(|d| d.seq).collect();
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "clip {clip} sequence contiguous");
            let frames = first.iter().chain(&later).filter(|d| d.clip == clip && d.marker).count();
            assert_eq!(frames, 31, "clip {clip}");
            let ts: Vec<u32> =
                first.iter().chain(&later).filter(|d| d.clip == clip && d.marker).map(|d| d.timestamp).collect();
            assert!(ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 9000));
        }
        assert!(player.next_due(&slate) > t0 + Duration::from_secs(3));
    }
}
