//! Byte offsets of every field of a ring file, and the encoding of the records stored in it.
//!
//! The map and the rules that go with these offsets are in the [module documentation](super). Offsets are in
//! bytes from the start of the file (header fields) or from the start of a record (slot and codec-entry
//! fields). Every field is little-endian and lives inside one naturally aligned 64-bit word, because the file
//! is only ever accessed through 64-bit atomics; fields narrower than a word are the low-order bytes of the
//! word first.

// ---- Line 0: identity. Frozen across major versions, so a writer of any version can recognise and retire a
// ---- file of any other version.

/// `u64`: [`super::MAGIC`].
pub const MAGIC_OFFSET: usize = 0x000;
/// `u16`: major layout version; a reader refuses any other major.
pub const LAYOUT_MAJOR_OFFSET: usize = 0x008;
/// `u16`: minor layout version; additions only, in reserved space.
pub const LAYOUT_MINOR_OFFSET: usize = 0x00A;
/// `u32`: length of the header; slot 0 starts here.
pub const HEADER_LEN_OFFSET: usize = 0x00C;
/// `u32`: number of slots, a power of two.
pub const SLOT_COUNT_OFFSET: usize = 0x010;
/// `u32`: size of one slot in bytes, a power of two.
pub const SLOT_SIZE_OFFSET: usize = 0x014;
/// `u64`: non-zero once a writer has put another file at this file's path. Readers reopen the path.
pub const REPLACED_OFFSET: usize = 0x018;
/// `u64`: wall-clock time the file was created, Unix milliseconds.
pub const CREATED_UNIX_MS_OFFSET: usize = 0x020;
/// Length of the identity line.
pub const IDENTITY_LEN: usize = 0x040;

// ---- Line 1: writer.

/// `u64`: incremented each time a writer (re)opens the file; 1 for a fresh file.
pub const EPOCH_OFFSET: usize = 0x040;
/// `u64`: [`WRITER_STATE_LIVE`] or [`WRITER_STATE_CLOSED`].
pub const WRITER_STATE_OFFSET: usize = 0x048;
/// `u64`: process id of the last writer.
pub const WRITER_PID_OFFSET: usize = 0x050;
/// `u64`: the writer's last heartbeat, Unix milliseconds.
pub const HEARTBEAT_UNIX_MS_OFFSET: usize = 0x058;

// ---- Hot counters, one cache line each.

/// `u64`: next position the writer will fill. Alone on its line: every reader polls it.
pub const HEAD_OFFSET: usize = 0x080;
/// `u64`: keyframe requests, bumped by readers, watched by the writer. Alone on its line.
pub const KEYFRAME_REQUESTS_OFFSET: usize = 0x0C0;
/// `u64`: packets written since the file was created (writer-owned line).
pub const PACKETS_OFFSET: usize = 0x100;
/// `u64`: payload bytes written since the file was created.
pub const BYTES_OFFSET: usize = 0x108;
/// `u64`: times a reader reported being lapped (reader-owned line).
pub const LAPS_OFFSET: usize = 0x140;
/// `u64`: the newest heartbeat of any reader, Unix milliseconds (readers `fetch_max` it). The writer learns
/// from it whether anyone watches the room.
pub const READER_HEARTBEAT_UNIX_MS_OFFSET: usize = 0x148;
/// `u64` (minor 1): bit `k % 64` is set while fanout worker `k` reads this ring and wants a wake-up datagram on
/// its wake socket after the writer pushed (readers `fetch_or` and `fetch_and` their bit).
pub const WAKE_MASK_OFFSET: usize = 0x150;

// ---- GOP index.

/// `u64`: number of keyframes ever recorded; keyframe `i` lives at `GOP_INDEX_OFFSET + 8 * (i % GOP_INDEX_SLOTS)`.
pub const GOP_COUNT_OFFSET: usize = 0x180;
/// `[u64; GOP_INDEX_SLOTS]`: positions of the newest video keyframes.
pub const GOP_INDEX_OFFSET: usize = 0x1C0;
/// Entries of the GOP index: one more than [`super::GOP_INDEX_LEN`], so the writer can fill the next entry
/// while readers still find the newest `GOP_INDEX_LEN` intact.
pub const GOP_INDEX_SLOTS: usize = super::GOP_INDEX_LEN + 1;

// ---- Codec table.

/// `u64`: seqlock of the codec table: odd while the writer rewrites it, `2 * n` after the n-th rewrite.
pub const CODECS_VERSION_OFFSET: usize = 0x240;
/// `u64`: number of valid entries.
pub const CODECS_COUNT_OFFSET: usize = 0x248;
/// `[CodecEntry; MAX_CODECS]`, each [`CODEC_ENTRY_LEN`] bytes.
pub const CODEC_TABLE_OFFSET: usize = 0x280;
/// Size of one codec entry.
pub const CODEC_ENTRY_LEN: usize = 0x100;

// ---- Layer table (minor 3): the simulcast layers of the room's publisher, for readers that choose among the
// ---- rings of a room's layers. Zero (no layer) in files of minor 2.

/// `u64`: seqlock of the layer table: odd while the writer rewrites it, `2 * n` after the n-th rewrite.
pub const LAYERS_VERSION_OFFSET: usize = 0x1280;
/// `u64`: number of valid entries.
pub const LAYERS_COUNT_OFFSET: usize = 0x1288;
/// `u64`: the newest time a reader wanted every layer of the room to have a ring of its own, Unix milliseconds
/// (readers `fetch_max` it). Alone on its line: readers write it.
pub const LAYERS_WANTED_UNIX_MS_OFFSET: usize = 0x12C0;
/// `[LayerEntry; MAX_LAYERS]`, each [`LAYER_ENTRY_LEN`] bytes.
pub const LAYER_TABLE_OFFSET: usize = 0x1300;
/// Size of one layer entry.
pub const LAYER_ENTRY_LEN: usize = 0x20;

/// Length of the header of this layout version. Space between the layer table and this is reserved.
pub const HEADER_LEN: usize = 0x2000;
/// Largest header length a reader accepts from a (newer-minor) file.
pub const MAX_HEADER_LEN: usize = 0x10_0000;

// ---- Codec entry, offsets from the start of the entry.

/// `u8`: RTP payload type.
pub const CODEC_PT_OFFSET: usize = 0x00;
/// `u8`: [`super::MediaKind`].
pub const CODEC_KIND_OFFSET: usize = 0x01;
/// `u8`: [`super::Codec`].
pub const CODEC_CODEC_OFFSET: usize = 0x02;
/// `u8`: audio channels (0 for video).
pub const CODEC_CHANNELS_OFFSET: usize = 0x03;
/// `u32`: RTP clock rate.
pub const CODEC_CLOCK_RATE_OFFSET: usize = 0x04;
/// `u16`: length of the fmtp string.
pub const CODEC_FMTP_LEN_OFFSET: usize = 0x08;
/// `u8` (minor 2): flags, [`CODEC_FLAG_SLATE`]; zero (no flag) in files of minor 1.
pub const CODEC_FLAGS_OFFSET: usize = 0x0A;
/// The entry is the slate's (ingest's own clip), not a publisher's.
pub const CODEC_FLAG_SLATE: u8 = 0x01;
/// `[u8; FMTP_MAX]`: the fmtp string, UTF-8.
pub const CODEC_FMTP_OFFSET: usize = 0x10;

// ---- Layer entry, offsets from the start of the entry.

/// `u64`: bits a second the layer sends.
pub const LAYER_BITRATE_OFFSET: usize = 0x00;
/// `u16`: picture width, 0 if not known.
pub const LAYER_WIDTH_OFFSET: usize = 0x08;
/// `u16`: picture height, 0 if not known.
pub const LAYER_HEIGHT_OFFSET: usize = 0x0A;
/// `u8`: flags, [`LAYER_FLAG_CARRIED`].
pub const LAYER_FLAGS_OFFSET: usize = 0x0C;
/// `u8`: length of the rid, 1 to [`crate::MAX_RID_LEN`].
pub const LAYER_RID_LEN_OFFSET: usize = 0x0D;
/// The room's own ring carries this layer.
pub const LAYER_FLAG_CARRIED: u8 = 0x01;
/// `[u8; MAX_RID_LEN]`: the rid, ASCII.
pub const LAYER_RID_OFFSET: usize = 0x10;

// ---- Slot, offsets from the start of the slot.

/// `u64`: the slot's seqlock: `2 * pos + 1` while position `pos` is being written, `2 * pos + 2` once done.
pub const SLOT_SEQ_OFFSET: usize = 0x00;
/// `u64`: [`super::PacketMeta::arrival_unix_ns`].
pub const SLOT_ARRIVAL_UNIX_NS_OFFSET: usize = 0x08;
/// `u64`: extended RTP sequence number.
pub const SLOT_RTP_SEQ_OFFSET: usize = 0x10;
/// `u32`: RTP timestamp.
pub const SLOT_TIMESTAMP_OFFSET: usize = 0x18;
/// `u32`: RTP SSRC.
pub const SLOT_SSRC_OFFSET: usize = 0x1C;
/// `u32`: publisher session id.
pub const SLOT_SOURCE_OFFSET: usize = 0x20;
/// `u32`: payload length in bytes.
pub const SLOT_PAYLOAD_LEN_OFFSET: usize = 0x24;
/// `u8`: RTP payload type.
pub const SLOT_PT_OFFSET: usize = 0x28;
/// `u8`: [`super::MediaKind`].
pub const SLOT_KIND_OFFSET: usize = 0x29;
/// `u8`: `FLAG_*` bits.
pub const SLOT_FLAGS_OFFSET: usize = 0x2A;
/// `i8`: audio level, valid if [`FLAG_HAS_AUDIO_LEVEL`].
pub const SLOT_AUDIO_LEVEL_OFFSET: usize = 0x2B;
/// `u8`: video orientation, valid if [`FLAG_HAS_VIDEO_ORIENTATION`].
pub const SLOT_VIDEO_ORIENTATION_OFFSET: usize = 0x2C;
/// Payload bytes start here; the bytes between the metadata and this are reserved.
pub const SLOT_PAYLOAD_OFFSET: usize = 0x40;

pub const FLAG_MARKER: u8 = 0x01;
pub const FLAG_KEYFRAME: u8 = 0x02;
pub const FLAG_HAS_AUDIO_LEVEL: u8 = 0x04;
pub const FLAG_HAS_VOICE_ACTIVITY: u8 = 0x08;
pub const FLAG_VOICE_ACTIVITY: u8 = 0x10;
pub const FLAG_HAS_VIDEO_ORIENTATION: u8 = 0x20;

/// Value of [`WRITER_STATE_OFFSET`] while a writer holds the file.
pub const WRITER_STATE_LIVE: u64 = 1;
/// Value of [`WRITER_STATE_OFFSET`] after the writer let go of the file in an orderly way.
pub const WRITER_STATE_CLOSED: u64 = 2;

/// Bytes of slot metadata after the sequence word, copied as whole words.
pub(crate) const SLOT_META_LEN: usize = SLOT_PAYLOAD_OFFSET - SLOT_ARRIVAL_UNIX_NS_OFFSET;

const CACHE_LINE: usize = 64;

const _: () = {
    use super::{FMTP_MAX, MAX_CODECS};
    assert!(IDENTITY_LEN == CACHE_LINE);
    assert!(EPOCH_OFFSET.is_multiple_of(CACHE_LINE));
    assert!(HEAD_OFFSET.is_multiple_of(CACHE_LINE) && HEARTBEAT_UNIX_MS_OFFSET < HEAD_OFFSET);
    assert!(KEYFRAME_REQUESTS_OFFSET == HEAD_OFFSET + CACHE_LINE);
    assert!(PACKETS_OFFSET == KEYFRAME_REQUESTS_OFFSET + CACHE_LINE);
    assert!(LAPS_OFFSET == PACKETS_OFFSET + CACHE_LINE);
    assert!(GOP_COUNT_OFFSET == LAPS_OFFSET + CACHE_LINE);
    assert!(GOP_INDEX_OFFSET == GOP_COUNT_OFFSET + CACHE_LINE);
    assert!(CODECS_VERSION_OFFSET >= GOP_INDEX_OFFSET + 8 * GOP_INDEX_SLOTS);
    assert!(CODECS_VERSION_OFFSET.is_multiple_of(CACHE_LINE));
    assert!(CODEC_TABLE_OFFSET.is_multiple_of(CACHE_LINE));
    assert!(CODEC_FMTP_OFFSET + FMTP_MAX <= CODEC_ENTRY_LEN && CODEC_ENTRY_LEN.is_multiple_of(8));
    assert!(CODEC_TABLE_OFFSET + MAX_CODECS * CODEC_ENTRY_LEN <= LAYERS_VERSION_OFFSET);
    assert!(LAYERS_VERSION_OFFSET.is_multiple_of(CACHE_LINE));
    assert!(LAYERS_WANTED_UNIX_MS_OFFSET == LAYERS_VERSION_OFFSET + CACHE_LINE);
    assert!(LAYER_TABLE_OFFSET == LAYERS_WANTED_UNIX_MS_OFFSET + CACHE_LINE);
    assert!(LAYER_RID_OFFSET + crate::MAX_RID_LEN <= LAYER_ENTRY_LEN);
    assert!(LAYER_TABLE_OFFSET + super::MAX_LAYERS * LAYER_ENTRY_LEN <= HEADER_LEN);
    assert!(HEADER_LEN.is_multiple_of(CACHE_LINE));
    assert!(SLOT_VIDEO_ORIENTATION_OFFSET < SLOT_PAYLOAD_OFFSET && SLOT_PAYLOAD_OFFSET.is_multiple_of(8));
};

/// The identity line, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub magic: u64,
    pub major: u16,
    pub minor: u16,
    pub header_len: u32,
    pub slot_count: u32,
    pub slot_size: u32,
    pub replaced: u64,
    pub created_unix_ms: u64,
}

impl Identity {
    pub fn decode(b: &[u8; IDENTITY_LEN]) -> Identity {
        Identity {
            magic: u64_at(b, MAGIC_OFFSET),
            major: u16_at(b, LAYOUT_MAJOR_OFFSET),
            minor: u16_at(b, LAYOUT_MINOR_OFFSET),
            header_len: u32_at(b, HEADER_LEN_OFFSET),
            slot_count: u32_at(b, SLOT_COUNT_OFFSET),
            slot_size: u32_at(b, SLOT_SIZE_OFFSET),
            replaced: u64_at(b, REPLACED_OFFSET),
            created_unix_ms: u64_at(b, CREATED_UNIX_MS_OFFSET),
        }
    }

    pub fn encode(&self) -> [u8; IDENTITY_LEN] {
        let mut b = [0u8; IDENTITY_LEN];
        put(&mut b, MAGIC_OFFSET, &self.magic.to_le_bytes());
        put(&mut b, LAYOUT_MAJOR_OFFSET, &self.major.to_le_bytes());
        put(&mut b, LAYOUT_MINOR_OFFSET, &self.minor.to_le_bytes());
        put(&mut b, HEADER_LEN_OFFSET, &self.header_len.to_le_bytes());
        put(&mut b, SLOT_COUNT_OFFSET, &self.slot_count.to_le_bytes());
        put(&mut b, SLOT_SIZE_OFFSET, &self.slot_size.to_le_bytes());
        put(&mut b, REPLACED_OFFSET, &self.replaced.to_le_bytes());
        put(&mut b, CREATED_UNIX_MS_OFFSET, &self.created_unix_ms.to_le_bytes());
        b
    }
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}
