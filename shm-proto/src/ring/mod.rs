//! The shared-memory media ring: one file per room, one writer (ingest), any number of readers (fanout
//! workers, tools), in any processes.
//!
//! The writer never waits for a reader. Readers never block the writer and never see a torn packet: each slot
//! is a seqlock, and a reader that was overtaken ("lapped") finds out before it uses what it copied, then
//! resyncs at the newest keyframe still in the ring. The file lives on tmpfs (the runtime directory), so
//! "shared memory" and "file" are the same thing here.
//!
//! # Layout (version 1.3)
//!
//! All fields are little-endian and every field sits inside one naturally aligned 64-bit word: the file is only
//! accessed through `AtomicU64` loads and stores, never `memcpy`. Offsets are named in [`layout`].
//!
//! ```text
//!  0x0000 +--------------------------------------------------------------+  line 0: identity
//!         | MAGIC u64 "DSFURING"                                         |  (frozen for every
//!  0x0008 | LAYOUT_MAJOR u16 | LAYOUT_MINOR u16 | HEADER_LEN u32         |   major version)
//!  0x0010 | SLOT_COUNT u32              | SLOT_SIZE u32                  |
//!  0x0018 | REPLACED u64                                                 |
//!  0x0020 | CREATED_UNIX_MS u64                                          |
//!  0x0028 | reserved                                                     |
//!  0x0040 +--------------------------------------------------------------+  line 1: writer
//!         | EPOCH u64 | WRITER_STATE u64 | WRITER_PID u64 | HEARTBEAT_UNIX_MS u64 | reserved
//!  0x0080 +--------------------------------------------------------------+  line 2
//!         | HEAD u64 (next position to write)                  | reserved|
//!  0x00C0 +--------------------------------------------------------------+  line 3
//!         | KEYFRAME_REQUESTS u64 (readers fetch_add)          | reserved|
//!  0x0100 +--------------------------------------------------------------+  line 4: writer stats
//!         | PACKETS u64 | BYTES u64                            | reserved|
//!  0x0140 +--------------------------------------------------------------+  line 5: reader stats
//!         | LAPS u64 | READER_HEARTBEAT_UNIX_MS u64 (fetch_max) | WAKE_MASK u64 (fetch_or/and) | reserved |
//!  0x0180 +--------------------------------------------------------------+  line 6
//!         | GOP_COUNT u64 (keyframes ever indexed)             | reserved|
//!  0x01C0 +--------------------------------------------------------------+  lines 7-8
//!         | GOP_INDEX [u64; GOP_INDEX_LEN + 1]: keyframe i at entry      |
//!         |   i % (GOP_INDEX_LEN + 1)                          | reserved|
//!  0x0240 +--------------------------------------------------------------+  line 9
//!         | CODECS_VERSION u64 (seqlock) | CODECS_COUNT u64    | reserved|
//!  0x0280 +--------------------------------------------------------------+
//!         | CODEC_TABLE [entry; MAX_CODECS], 0x100 bytes each:           |
//!         |   +0x00 PT u8 | KIND u8 | CODEC u8 | CHANNELS u8 | CLOCK_RATE u32
//!         |   +0x08 FMTP_LEN u16 | reserved                              |
//!         |   +0x10 FMTP [u8; FMTP_MAX] (UTF-8) | reserved               |
//!  0x1280 +--------------------------------------------------------------+  minor 3: layer table
//!         | LAYERS_VERSION u64 (seqlock) | LAYERS_COUNT u64    | reserved|
//!  0x12C0 | LAYERS_WANTED_UNIX_MS u64 (readers fetch_max)      | reserved|
//!  0x1300 | LAYER_TABLE [entry; MAX_LAYERS], 0x20 bytes each:           |
//!         |   +0x00 BITRATE_BPS u64                                      |
//!         |   +0x08 WIDTH u16 | HEIGHT u16 | FLAGS u8 | RID_LEN u8 | reserved
//!         |   +0x10 RID [u8; MAX_RID_LEN] (ASCII)                        |
//!  0x1400 | reserved                                                     |
//!  0x2000 +==============================================================+  HEADER_LEN
//!         | slot 0 | slot 1 | ... | slot SLOT_COUNT-1   (SLOT_SIZE each) |
//!         +--------------------------------------------------------------+
//!
//!  slot:
//!  +0x00 SEQ u64: 2*pos+1 while position pos is written, 2*pos+2 once complete
//!  +0x08 ARRIVAL_UNIX_NS u64
//!  +0x10 RTP_SEQ u64 (extended)
//!  +0x18 TIMESTAMP u32 | SSRC u32
//!  +0x20 SOURCE u32 | PAYLOAD_LEN u32
//!  +0x28 PT u8 | KIND u8 | FLAGS u8 | AUDIO_LEVEL i8 | VIDEO_ORIENTATION u8 | reserved
//!  +0x40 PAYLOAD [u8; SLOT_SIZE - 0x40], zero-padded to a whole word
//! ```
//!
//! Positions are `u64`, counted from 0 when the file is created and never reused; position `pos` lives in slot
//! `pos & (SLOT_COUNT - 1)`. A file is `HEADER_LEN + SLOT_COUNT * SLOT_SIZE` bytes.
//!
//! # Versioning
//! [`MAGIC`] and the version sit in line 0, whose fields keep their offsets in every major version. A minor
//! version only adds fields in reserved space, so readers accept any minor of their major (and take slot 0 at
//! the file's `HEADER_LEN`). [`RingReader::open`] refuses another major with
//! [`RingError::VersionMismatch`], naming both versions.
//!
//! # The slot protocol
//! Writer, for position `pos` (`// SYNC POINT S` in the code):
//! 1. `SEQ = 2*pos+1` (relaxed), then a release fence, so anyone who sees the new data also sees the odd SEQ;
//! 2. metadata and payload, word by word, relaxed;
//! 3. `SEQ = 2*pos+2`, release;
//! 4. `HEAD = pos+1`, release (`SYNC POINT H`);
//! 5. for the first packet of a video keyframe: the GOP index entry, then `GOP_COUNT`, release (`SYNC POINT G`).
//!
//! Reader of position `pos` ([`RingReader::read`]):
//! 1. `s = SEQ` (acquire). If `s == 2*pos+2`, go on. If `s` is smaller, the slot holds an older position or
//!    `pos` is being written: [`ReadOutcome::NotYet`] if `pos >= HEAD`. If `s` is larger, the slot already holds
//!    a newer position: [`ReadOutcome::Lapped`].
//! 2. copy metadata and payload with relaxed loads;
//! 3. acquire fence, reload SEQ: if it changed, the copy may be torn: [`ReadOutcome::Lapped`].
//!
//! A writer that died after step 3 but before step 4 left a complete packet that readers may already have
//! taken; the next writer publishes it (moves `HEAD` past it) instead of overwriting it. Positions stay below
//! 2^62, so `2*pos+2` never wraps; a file whose `HEAD` says otherwise is corrupt and gets replaced.
//!
//! # Sync points
//! Every release/acquire pair is labelled in the code with `// SYNC POINT X`, on both sides:
//! - `M`: the magic, stored last when a file is initialised / loaded when a reader maps it;
//! - `S`: a slot's SEQ (and the fences around the copy);
//! - `H`: `HEAD`;
//! - `G`: `GOP_COUNT` (and the fences around the index copy);
//! - `C`: `CODECS_VERSION` (and the fences around the table copy);
//! - `L`: `LAYERS_VERSION` (the same, for the layer table);
//! - `W`: `WRITER_STATE`: a reader that sees closed sees the final `HEAD`;
//! - `R`: `REPLACED`.
//!
//! Heartbeat, epoch, pid and the counters are standalone values: relaxed.
//!
//! # Rules for readers
//! - Poll; never wait on the writer. [`RingCursor`] does the bookkeeping: positions in order, and on a lap
//!   [`RingReader::note_lapped`] then a jump to [`RingReader::latest_keyframe`] (or to `HEAD` if none).
//! - A writer that dies mid-slot leaves that slot's SEQ odd and `HEAD` unmoved: the reader sees `NotYet` there,
//!   which is the truth. The next writer rewrites that very position, so the reader goes on where it was.
//! - A writer that restarts keeps `HEAD` (positions stay monotonic) and increments [`RingReader::epoch`]. A
//!   reader needs to do nothing; packets carry [`PacketMeta::source`], which changes with the publisher.
//! - A dead writer is one whose [`RingReader::heartbeat_unix_ms`] is stale while [`RingReader::writer_state`]
//!   still says [`WriterState::Live`]; what "stale" means is the caller's policy.
//! - When [`RingReader::is_replaced`] (a writer put a file of another geometry or version at the path, or the
//!   file was removed), drop the reader and open the path again.
//! - Everything read from the file is untrusted: a corrupt slot reads as `Lapped`, a corrupt codec or layer
//!   entry is skipped, nothing panics.
//!
//! # The writer
//! There is one [`RingWriter`] per file, enforced with an exclusive `flock(2)` held for its life. Creating a
//! file initialises it under a temporary name and links it into place, so no reader ever maps a half-written
//! header. Reopening a file of the same major version and geometry keeps its positions; a file of another
//! version or geometry is replaced by a new one (atomic rename), and the old one gets `REPLACED` set so its
//! readers move on. Dropping the writer sets `WRITER_STATE` to closed; the file stays. A file's memory is taken
//! when it is made or taken over (`fallocate(2)`; a file system without room refuses with
//! [`RingError::NoSpace`]), and every mapping, the writer's and the readers', is populated when made, so no
//! access to a ring takes a page fault.
//!
//! # Other shared state
//! - GOP index: positions of the last [`GOP_INDEX_LEN`] video keyframes. An entry is written only after its
//!   slot is complete; readers check each entry against the slot's SEQ, so an overwritten keyframe is never
//!   offered.
//! - Codec table: what each payload type in the ring means. Rewritten under its own seqlock
//!   (`CODECS_VERSION`, `SYNC POINT C`); [`RingReader::codecs`] retries until it gets a consistent copy.
//! - Layer table (minor 3): the simulcast layers of the room's publisher (rid, bitrate, picture size, whether
//!   the room's own ring carries it), the same in the rings of the room and of its layers (`ROOM~RID`), so a
//!   reader of any of them can move a viewer among them. Rewritten under its own seqlock (`LAYERS_VERSION`,
//!   `SYNC POINT L`); [`RingReader::layers`]. A new writer empties it. `LAYERS_WANTED_UNIX_MS`: readers
//!   `fetch_max` the time ([`RingReader::want_layers`]) while they want every layer to have a ring of its own.
//! - `KEYFRAME_REQUESTS`: readers `fetch_add` it ([`RingReader::request_keyframe`]); the writer's process
//!   compares it with the value it saw last and asks the publisher for a keyframe.
//! - Stats: packets and bytes (writer), laps (readers).
//!
//! # Example
//! ```no_run
//! use std::path::Path;
//! use shm_proto::ring::{Geometry, MediaKind, PacketMeta, RingCursor, RingReader, RingWriter};
//!
//! # fn main() -> Result<(), shm_proto::ring::RingError> {
//! let path = Path::new("/run/deadsfu/rings/lobby.ring");
//! // ingest
//! let mut writer = RingWriter::create(path, Geometry::default(), 1_700_000_000_000)?;
//! let meta = PacketMeta {
//!     arrival_unix_ns: 1_700_000_000_000_000_000, seq: 1, timestamp: 3000, ssrc: 42, source: 7, pt: 96,
//!     kind: MediaKind::Video, marker: true, keyframe: true,
//!     audio_level: None, voice_activity: None, video_orientation: None,
//! };
//! writer.push(&meta, b"rtp payload")?;
//!
//! // fanout, any process
//! let reader = RingReader::open(path)?;
//! let mut cursor = RingCursor::join(&reader);
//! let mut buf = vec![0u8; reader.geometry().max_payload()];
//! while let Some((meta, len)) = cursor.next(&reader, &mut buf) {
//!     if cursor.take_lapped() {
//!         // resynced at a keyframe: the splicer starts a new run here
//!     }
//!     let _ = (meta, &buf[..len]); // send it
//! }
//! if reader.is_replaced() {
//!     // open the path again
//! }
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

#[cfg(not(target_endian = "little"))]
compile_error!("the ring layout is little-endian and accessed as native 64-bit words: little-endian hosts only");

use serde::Serialize;

pub mod layout;

mod cursor;
mod mapping;
mod reader;
mod record;
mod sigbus;
mod writer;

#[cfg(test)]
mod tests;

pub use cursor::RingCursor;
pub use reader::{ReadOutcome, RingReader};
pub use writer::RingWriter;

/// First word of every ring file: `b"DSFURING"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"DSFURING");
/// Major layout version: readers refuse any other.
pub const LAYOUT_MAJOR: u16 = 1;
/// Minor layout version: additions in reserved space only. 2: codec entries carry flags (the slate's). 3: the
/// layer table (a simulcast publisher's layers) and the readers' wish for the layers' rings.
pub const LAYOUT_MINOR: u16 = 3;
/// Entries in the layer table.
pub const MAX_LAYERS: usize = 8;
/// Entries in the codec table.
pub const MAX_CODECS: usize = 16;
/// Longest fmtp string of a codec entry, in bytes.
pub const FMTP_MAX: usize = 200;
/// Keyframe positions kept in the GOP index.
pub const GOP_INDEX_LEN: usize = 8;

/// Positions never get near this (2^62 packets is 146 000 years at a million packets per second), so `2 * pos +
/// 2` never wraps. A writer replaces a file whose head is beyond it; a reader finds nothing there.
pub(crate) const MAX_POSITION: u64 = 1 << 62;

/// Smallest slot: the metadata plus 192 bytes of payload.
const MIN_SLOT_SIZE: u32 = 256;
/// Largest slot; comfortably above any RTP packet.
const MAX_SLOT_SIZE: u32 = 1 << 16;
const MIN_SLOT_COUNT: u32 = 2;
const MAX_SLOT_COUNT: u32 = 1 << 20;

/// Size of the slot array. Both numbers are powers of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Geometry {
    pub slot_count: u32,
    pub slot_size: u32,
}

impl Default for Geometry {
    /// 4096 slots of 2048 bytes: 8 MiB, about 4 s of a 6 Mbit/s stream.
    fn default() -> Geometry {
        Geometry { slot_count: 4096, slot_size: 2048 }
    }
}

impl Geometry {
    /// Largest payload a slot holds.
    pub fn max_payload(&self) -> usize {
        (self.slot_size as usize).saturating_sub(layout::SLOT_PAYLOAD_OFFSET)
    }

    /// Length of a ring file of this geometry.
    pub fn file_len(&self) -> usize {
        layout::HEADER_LEN + self.slot_count as usize * self.slot_size as usize
    }

    pub fn validate(&self) -> Result<(), RingError> {
        let bad =
            |reason| Err(RingError::BadGeometry { slot_count: self.slot_count, slot_size: self.slot_size, reason });
        if !self.slot_count.is_power_of_two() {
            return bad("slot count must be a power of two");
        }
        if !(MIN_SLOT_COUNT..=MAX_SLOT_COUNT).contains(&self.slot_count) {
            return bad("slot count must be between 2 and 2^20");
        }
        if !self.slot_size.is_power_of_two() {
            return bad("slot size must be a power of two");
        }
        if !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&self.slot_size) {
            return bad("slot size must be between 256 and 65536 bytes");
        }
        Ok(())
    }

    pub(crate) fn mask(&self) -> u64 {
        u64::from(self.slot_count) - 1
    }
}

/// Audio or video.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio = 0,
    Video = 1,
}

impl MediaKind {
    pub fn from_u8(v: u8) -> Option<MediaKind> {
        match v {
            0 => Some(MediaKind::Audio),
            1 => Some(MediaKind::Video),
            _ => None,
        }
    }
}

/// The codecs the ring can carry.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Codec {
    Opus = 1,
    H264 = 2,
    Vp8 = 3,
    Vp9 = 4,
    Av1 = 5,
    Pcmu = 6,
    Pcma = 7,
    G722 = 8,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Codec> {
        Some(match v {
            1 => Codec::Opus,
            2 => Codec::H264,
            3 => Codec::Vp8,
            4 => Codec::Vp9,
            5 => Codec::Av1,
            6 => Codec::Pcmu,
            7 => Codec::Pcma,
            8 => Codec::G722,
            _ => return None,
        })
    }

    /// The SDP encoding name (`a=rtpmap`).
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Opus => "opus",
            Codec::H264 => "H264",
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::Av1 => "AV1",
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }

    pub fn kind(&self) -> MediaKind {
        match self {
            Codec::H264 | Codec::Vp8 | Codec::Vp9 | Codec::Av1 => MediaKind::Video,
            Codec::Opus | Codec::Pcmu | Codec::Pcma | Codec::G722 => MediaKind::Audio,
        }
    }
}

/// What one payload type in the ring means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CodecEntry {
    pub pt: u8,
    pub kind: MediaKind,
    pub codec: Codec,
    pub clock_rate: u32,
    pub channels: u8,
    /// At most [`FMTP_MAX`] bytes.
    pub fmtp: String,
    /// The slate's entry (ingest's own clip, played while no publisher's video is), not a publisher's.
    pub slate: bool,
}

impl CodecEntry {
    /// A publisher's codec (not the slate's).
    pub fn new(pt: u8, kind: MediaKind, codec: Codec, clock_rate: u32, channels: u8, fmtp: &str) -> CodecEntry {
        CodecEntry { pt, kind, codec, clock_rate, channels, fmtp: fmtp.to_string(), slate: false }
    }
}

/// One simulcast layer of the room's publisher, as the ring's layer table says: readers that choose a layer for
/// a viewer read the room's layers from it (the layer `rid`'s own ring is the room's `ROOM~RID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// 1 to [`crate::MAX_RID_LEN`] letters, digits, `-` or `_`.
    pub rid: String,
    /// Bits a second the layer sends (its payloads, over the last half second).
    pub bitrate_bps: u64,
    /// Its picture's size, 0 where not known.
    pub width: u16,
    pub height: u16,
    /// The room's own ring carries this layer.
    pub carried: bool,
}

/// Everything about a packet except its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// When ingest received it (wall clock, ns since the Unix epoch).
    pub arrival_unix_ns: u64,
    /// The publisher's extended RTP sequence number.
    pub seq: u64,
    /// The publisher's RTP timestamp.
    pub timestamp: u32,
    /// The publisher's SSRC.
    pub ssrc: u32,
    /// Id of the publisher session that wrote it; changes when a new publisher starts.
    pub source: u32,
    pub pt: u8,
    pub kind: MediaKind,
    pub marker: bool,
    /// First packet of a keyframe (video).
    pub keyframe: bool,
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation: Option<u8>,
}

/// Whether a writer holds the file. A writer that died without closing still reads as `Live`: compare
/// [`RingReader::heartbeat_unix_ms`] with the clock to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriterState {
    Live,
    /// Closed in an orderly way (or any value this version does not know, which no live writer writes).
    Closed,
}

impl WriterState {
    pub fn as_str(&self) -> &'static str {
        match self {
            WriterState::Live => "live",
            WriterState::Closed => "closed",
        }
    }
}

/// Counters kept in the ring header, since the file was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RingStats {
    /// Packets written.
    pub packets: u64,
    /// Payload bytes written.
    pub bytes: u64,
    /// Laps reported by readers.
    pub laps: u64,
    /// Keyframe requests made by readers.
    pub keyframe_requests: u64,
}

/// What can go wrong opening or writing a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring file not found (no publisher has created it yet?)")]
    NotFound,
    #[error("not a deadsfu ring file: magic {found:#018x}, expected {MAGIC:#018x}")]
    BadMagic { found: u64 },
    #[error(
        "ring file has layout version {found_major}.{found_minor} but this build supports \
         {supported_major}.{supported_minor}: run the same deadsfu version for ingest and fanout"
    )]
    VersionMismatch { found_major: u16, found_minor: u16, supported_major: u16, supported_minor: u16 },
    #[error("ring file is truncated: {len} bytes, at least {needed} needed")]
    Truncated { len: u64, needed: u64 },
    #[error("bad ring geometry {slot_count} slots x {slot_size} bytes: {reason}")]
    BadGeometry { slot_count: u32, slot_size: u32, reason: &'static str },
    #[error("ring header length {found} is invalid: must be a multiple of 64 between {min} and {max}")]
    BadHeaderLen { found: u32, min: u32, max: u32 },
    #[error("ring file already has a live writer (pid {pid})")]
    WriterBusy { pid: u64 },
    #[error("{count} codecs do not fit the ring's codec table of {max}")]
    TooManyCodecs { count: usize, max: usize },
    #[error("{count} layers do not fit the ring's layer table of {max}")]
    TooManyLayers { count: usize, max: usize },
    #[error("layer rid {rid:?} is not 1 to 16 letters, digits, '-' and '_'")]
    BadRid { rid: String },
    #[error("fmtp of payload type {pt} is {len} bytes; the ring holds at most {max}")]
    FmtpTooLong { pt: u8, len: usize, max: usize },
    #[error("payload of {len} bytes does not fit a ring slot (at most {max}); use a larger slot size")]
    PayloadTooLarge { len: usize, max: usize },
    #[error(
        "no room for a ring of {bytes} bytes where rings are kept (a tmpfs that is full or smaller than that): \
         give it more, or make rings smaller (ring_slots, ring_slot_size)"
    )]
    NoSpace { bytes: u64 },
    #[error("ring file I/O: {0}")]
    Io(#[from] std::io::Error),
}
