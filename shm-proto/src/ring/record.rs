//! Encoding of the records stored in the ring: slot metadata and codec-table entries.

use super::layout::*;
use super::{Codec, CodecEntry, LayerEntry, MediaKind, PacketMeta, FMTP_MAX};

/// Slot metadata as stored, i.e. the bytes from [`SLOT_ARRIVAL_UNIX_NS_OFFSET`] up to the payload.
pub(crate) type MetaBytes = [u8; SLOT_META_LEN];

/// Offset of a slot field inside [`MetaBytes`].
const fn m(slot_offset: usize) -> usize {
    slot_offset - SLOT_ARRIVAL_UNIX_NS_OFFSET
}

pub(crate) fn encode_meta(meta: &PacketMeta, payload_len: u32) -> MetaBytes {
    let mut b = [0u8; SLOT_META_LEN];
    put(&mut b, m(SLOT_ARRIVAL_UNIX_NS_OFFSET), &meta.arrival_unix_ns.to_le_bytes());
    put(&mut b, m(SLOT_RTP_SEQ_OFFSET), &meta.seq.to_le_bytes());
    put(&mut b, m(SLOT_TIMESTAMP_OFFSET), &meta.timestamp.to_le_bytes());
    put(&mut b, m(SLOT_SSRC_OFFSET), &meta.ssrc.to_le_bytes());
    put(&mut b, m(SLOT_SOURCE_OFFSET), &meta.source.to_le_bytes());
    put(&mut b, m(SLOT_PAYLOAD_LEN_OFFSET), &payload_len.to_le_bytes());
    b[m(SLOT_PT_OFFSET)] = meta.pt;
    b[m(SLOT_KIND_OFFSET)] = meta.kind as u8;
    let mut flags = 0;
    if meta.marker {
        flags |= FLAG_MARKER;
    }
    if meta.keyframe {
        flags |= FLAG_KEYFRAME;
    }
    if let Some(level) = meta.audio_level {
        flags |= FLAG_HAS_AUDIO_LEVEL;
        b[m(SLOT_AUDIO_LEVEL_OFFSET)] = level.to_le_bytes()[0];
    }
    if let Some(active) = meta.voice_activity {
        flags |= FLAG_HAS_VOICE_ACTIVITY;
        if active {
            flags |= FLAG_VOICE_ACTIVITY;
        }
    }
    if let Some(o) = meta.video_orientation {
        flags |= FLAG_HAS_VIDEO_ORIENTATION;
        b[m(SLOT_VIDEO_ORIENTATION_OFFSET)] = o;
    }
    b[m(SLOT_FLAGS_OFFSET)] = flags;
    b
}

/// The payload length field, read before the payload is copied (it may be torn; callers clamp it).
pub(crate) fn payload_len(b: &MetaBytes) -> u32 {
    u32_at(b, m(SLOT_PAYLOAD_LEN_OFFSET))
}

/// Decodes validated (not torn) metadata. `None` if it cannot have been written by a correct writer.
pub(crate) fn decode_meta(b: &MetaBytes) -> Option<PacketMeta> {
    let flags = b[m(SLOT_FLAGS_OFFSET)];
    Some(PacketMeta {
        arrival_unix_ns: u64_at(b, m(SLOT_ARRIVAL_UNIX_NS_OFFSET)),
        seq: u64_at(b, m(SLOT_RTP_SEQ_OFFSET)),
        timestamp: u32_at(b, m(SLOT_TIMESTAMP_OFFSET)),
        ssrc: u32_at(b, m(SLOT_SSRC_OFFSET)),
        source: u32_at(b, m(SLOT_SOURCE_OFFSET)),
        pt: b[m(SLOT_PT_OFFSET)],
        kind: MediaKind::from_u8(b[m(SLOT_KIND_OFFSET)])?,
        marker: flags & FLAG_MARKER != 0,
        keyframe: flags & FLAG_KEYFRAME != 0,
        audio_level: (flags & FLAG_HAS_AUDIO_LEVEL != 0).then(|| i8::from_le_bytes([b[m(SLOT_AUDIO_LEVEL_OFFSET)]])),
        voice_activity: (flags & FLAG_HAS_VOICE_ACTIVITY != 0).then_some(flags & FLAG_VOICE_ACTIVITY != 0),
        video_orientation: (flags & FLAG_HAS_VIDEO_ORIENTATION != 0).then(|| b[m(SLOT_VIDEO_ORIENTATION_OFFSET)]),
    })
}

pub(crate) type CodecBytes = [u8; CODEC_ENTRY_LEN];

/// Encodes an entry whose fmtp length the caller has checked against [`FMTP_MAX`].
pub(crate) fn encode_codec(e: &CodecEntry) -> CodecBytes {
    let mut b = [0u8; CODEC_ENTRY_LEN];
    b[CODEC_PT_OFFSET] = e.pt;
    b[CODEC_KIND_OFFSET] = e.kind as u8;
    b[CODEC_CODEC_OFFSET] = e.codec as u8;
    b[CODEC_CHANNELS_OFFSET] = e.channels;
    put(&mut b, CODEC_CLOCK_RATE_OFFSET, &e.clock_rate.to_le_bytes());
    let fmtp = &e.fmtp.as_bytes()[..e.fmtp.len().min(FMTP_MAX)];
    put(&mut b, CODEC_FMTP_LEN_OFFSET, &(fmtp.len() as u16).to_le_bytes());
    b[CODEC_FLAGS_OFFSET] = if e.slate { CODEC_FLAG_SLATE } else { 0 };
    put(&mut b, CODEC_FMTP_OFFSET, fmtp);
    b
}

/// Decodes a validated entry; the reason if no correct writer could have written it.
pub(crate) fn decode_codec(b: &CodecBytes) -> Result<CodecEntry, &'static str> {
    let fmtp_len = usize::from(u16_at(b, CODEC_FMTP_LEN_OFFSET));
    if fmtp_len > FMTP_MAX {
        return Err("fmtp length out of range");
    }
    let fmtp =
        std::str::from_utf8(&b[CODEC_FMTP_OFFSET..CODEC_FMTP_OFFSET + fmtp_len]).map_err(|_| "fmtp is not UTF-8")?;
    Ok(CodecEntry {
        pt: b[CODEC_PT_OFFSET],
        kind: MediaKind::from_u8(b[CODEC_KIND_OFFSET]).ok_or("unknown media kind")?,
        codec: Codec::from_u8(b[CODEC_CODEC_OFFSET]).ok_or("unknown codec")?,
        clock_rate: u32_at(b, CODEC_CLOCK_RATE_OFFSET),
        channels: b[CODEC_CHANNELS_OFFSET],
        fmtp: fmtp.to_owned(),
        slate: b[CODEC_FLAGS_OFFSET] & CODEC_FLAG_SLATE != 0,
    })
}

pub(crate) type LayerBytes = [u8; LAYER_ENTRY_LEN];

/// Encodes an entry whose rid the caller has checked (1 to [`crate::MAX_RID_LEN`] bytes).
pub(crate) fn encode_layer(e: &LayerEntry) -> LayerBytes {
    let mut b = [0u8; LAYER_ENTRY_LEN];
    put(&mut b, LAYER_BITRATE_OFFSET, &e.bitrate_bps.to_le_bytes());
    put(&mut b, LAYER_WIDTH_OFFSET, &e.width.to_le_bytes());
    put(&mut b, LAYER_HEIGHT_OFFSET, &e.height.to_le_bytes());
    b[LAYER_FLAGS_OFFSET] = if e.carried { LAYER_FLAG_CARRIED } else { 0 };
    let rid = &e.rid.as_bytes()[..e.rid.len().min(crate::MAX_RID_LEN)];
    b[LAYER_RID_LEN_OFFSET] = rid.len() as u8;
    put(&mut b, LAYER_RID_OFFSET, rid);
    b
}

/// Decodes a validated entry; the reason if no correct writer could have written it.
pub(crate) fn decode_layer(b: &LayerBytes) -> Result<LayerEntry, &'static str> {
    let len = usize::from(b[LAYER_RID_LEN_OFFSET]).min(crate::MAX_RID_LEN);
    let rid = std::str::from_utf8(&b[LAYER_RID_OFFSET..LAYER_RID_OFFSET + len]).map_err(|_| "rid is not ASCII")?;
    crate::room::check_rid(rid).map_err(|_| "not a rid")?;
    Ok(LayerEntry {
        rid: rid.to_owned(),
        bitrate_bps: u64_at(b, LAYER_BITRATE_OFFSET),
        width: u16_at(b, LAYER_WIDTH_OFFSET),
        height: u16_at(b, LAYER_HEIGHT_OFFSET),
        carried: b[LAYER_FLAGS_OFFSET] & LAYER_FLAG_CARRIED != 0,
    })
}
