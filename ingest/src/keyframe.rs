//! Keyframe detection on RTP payloads, per codec.
//!
//! A packet is a keyframe start when a decoder joining there can decode: for H.264 an IDR slice or an SPS
//! (encoders send SPS/PPS right before an IDR) in a single NAL unit, inside a STAP-A aggregate, or in the
//! first fragment of an FU-A; VP8, VP9 and AV1 by their payload descriptors.

use shm_proto::ring::Codec;

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;

/// True if `payload` (an RTP payload of `codec`) starts a keyframe.
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::H264 => h264(payload),
        Codec::Vp8 => str0m::format::detect_vp8_keyframe(payload),
        Codec::Vp9 => str0m::format::detect_vp9_keyframe(payload),
        Codec::Av1 => str0m::format::detect_av1_keyframe(payload),
        _ => false,
    }
}

fn h264_key_nal(nal_type: u8) -> bool {
    nal_type == H264_IDR || nal_type == H264_SPS
}

fn h264(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else { return false };
    match first & 0x1f {
        H264_STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let size = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let Some(nal) = rest.get(2..2 + size) else { return false };
                if nal.first().is_some_and(|b| h264_key_nal(b & 0x1f)) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        H264_FU_A => payload.get(1).is_some_and(|fu| fu & 0x80 != 0 && h264_key_nal(fu & 0x1f)),
        t => h264_key_nal(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_forms() {
        assert!(is_keyframe(Codec::H264, &[0x65, 0x88]), "single IDR");
        assert!(is_keyframe(Codec::H264, &[0x67, 0x42]), "single SPS");
        assert!(!is_keyframe(Codec::H264, &[0x41, 0x9a]), "single non-IDR slice");
        // STAP-A with SPS and PPS.
        assert!(is_keyframe(Codec::H264, &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]));
        // STAP-A with only a PPS.
        assert!(!is_keyframe(Codec::H264, &[0x78, 0x00, 0x02, 0x68, 0xce]));
        // STAP-A whose size runs past the end.
        assert!(!is_keyframe(Codec::H264, &[0x78, 0x00, 0x09, 0x67]));
        // FU-A: first fragment of an IDR, a middle fragment of one, first fragment of a P slice.
        assert!(is_keyframe(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe(Codec::H264, &[0x7c, 0x05, 0x00]));
        assert!(!is_keyframe(Codec::H264, &[0x7c, 0x81, 0x00]));
        assert!(!is_keyframe(Codec::H264, &[]));
        assert!(!is_keyframe(Codec::H264, &[0x7c]));
    }

    #[test]
    fn audio_is_never_a_keyframe() {
        assert!(!is_keyframe(Codec::Opus, &[0x65]));
    }
}
