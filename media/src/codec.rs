//! The mapping between str0m's payload parameters and the ring's codec table.

use std::num::NonZeroU32;

use shm_proto::ring::{Codec, CodecEntry, MediaKind};
use str0m::format::{Codec as SCodec, CodecConfig, CodecSpec, FormatParams, PayloadParams};
use str0m::media::{Frequency, Mid, Pt};
use str0m::Rtc;

/// The ring's name for a str0m codec, if the ring carries it.
pub fn ring_codec(codec: SCodec) -> Option<Codec> {
    Some(match codec {
        SCodec::Opus => Codec::Opus,
        SCodec::H264 => Codec::H264,
        SCodec::Vp8 => Codec::Vp8,
        SCodec::Vp9 => Codec::Vp9,
        SCodec::Av1 => Codec::Av1,
        SCodec::PCMU => Codec::Pcmu,
        SCodec::PCMA => Codec::Pcma,
        SCodec::G722 => Codec::G722,
        _ => return None,
    })
}

fn str0m_codec(codec: Codec) -> SCodec {
    match codec {
        Codec::Opus => SCodec::Opus,
        Codec::H264 => SCodec::H264,
        Codec::Vp8 => SCodec::Vp8,
        Codec::Vp9 => SCodec::Vp9,
        Codec::Av1 => SCodec::Av1,
        Codec::Pcmu => SCodec::PCMU,
        Codec::Pcma => SCodec::PCMA,
        Codec::G722 => SCodec::G722,
    }
}

/// The ring entry for a negotiated payload type, if the ring carries its codec.
pub fn entry(params: &PayloadParams) -> Option<CodecEntry> {
    let spec = params.spec();
    let codec = ring_codec(spec.codec)?;
    let kind = if spec.codec.is_audio() { MediaKind::Audio } else { MediaKind::Video };
    Some(CodecEntry {
        pt: *params.pt(),
        kind,
        codec,
        clock_rate: spec.clock_rate.get(),
        channels: spec.channels.unwrap_or(0),
        fmtp: spec.format.to_string(),
        slate: false,
    })
}

/// The payload parameters a ring entry stands for, to match against a viewer's negotiated ones.
pub fn params(entry: &CodecEntry) -> PayloadParams {
    let clock = NonZeroU32::new(entry.clock_rate).unwrap_or(NonZeroU32::MIN);
    let spec = CodecSpec {
        codec: str0m_codec(entry.codec),
        clock_rate: Frequency::from_nonzero(clock),
        channels: (entry.channels > 0).then_some(entry.channels),
        format: FormatParams::parse_line(&entry.fmtp),
    };
    PayloadParams::new(Pt::new_with_value(entry.pt), None, spec)
}

/// What the peer negotiated: the session's codec configuration cut down to the payload types the peer's
/// media sections agreed on. (A session's configuration also lists every codec this side could have used.)
pub fn negotiated(rtc: &Rtc, mids: &[Mid]) -> CodecConfig {
    let pts: Vec<Pt> = mids.iter().filter_map(|m| rtc.media(*m)).flat_map(|m| m.remote_pts().to_vec()).collect();
    let params = rtc.codec_config().params().iter().filter(|p| pts.contains(&p.pt())).copied().collect();
    CodecConfig::new_from_payload_params(params)
}
