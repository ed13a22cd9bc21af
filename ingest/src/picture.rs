//! A keyframe's picture size, read from its RTP payload, so /rooms can say what a simulcast layer shows.
//!
//! - VP8 (RFC 7741, RFC 6386 section 9.1): a keyframe's first packet carries, after the payload descriptor and the
//!   3-byte frame tag, the start code `9d 01 2a` and the width and height (14 bits each, little-endian).
//! - H.264 (RFC 6184, ITU-T H.264 section 7.3.2.1.1): the sequence parameter set, sent as a single NAL unit or
//!   inside a STAP-A with each IDR, gives the size in macroblocks less the frame cropping.
//!
//! - VP9 (RFC 9628, VP9 bitstream spec 6.2): a keyframe's first packet carries the size in its payload
//!   descriptor's scalability structure (the top spatial layer's, as Chromium sends it), or else in the frame's
//!   uncompressed header, after the sync code and the colour configuration.
//! - AV1 (AV1 spec 5.5.1): a keyframe's first packet starts with the sequence header; its maximum frame size is
//!   taken for the picture's (a frame may be smaller; Chromium's encoder writes the size it sends there, as the
//!   captured keyframes show).
//!
//! Other codecs give none. Every payload is untrusted: a short or malformed one gives no size, never a panic,
//! and the exponential-Golomb reader refuses codes longer than 32 bits.

use shm_proto::ring::Codec;

const H264_SPS: u8 = 0x07;
const H264_STAP_A: u8 = 0x18;

/// Width and height of the picture `payload` (an RTP payload of `codec`) starts, if it says.
pub fn size(codec: Codec, payload: &[u8]) -> Option<(u16, u16)> {
    match codec {
        Codec::Vp8 => vp8(payload),
        Codec::H264 => h264(payload),
        Codec::Vp9 => vp9(payload),
        Codec::Av1 => av1(payload),
        _ => None,
    }
}

fn vp9(payload: &[u8]) -> Option<(u16, u16)> {
    let start = crate::keyframe::vp9_start(payload)?;
    let header = payload.get(start.header..)?;
    if !header.first().is_some_and(|&h| crate::keyframe::vp9_frame_is_key(h)) {
        return None;
    }
    if start.size.is_some() {
        return start.size;
    }
    let mut r = Bits { bytes: header, pos: 0 };
    r.bits(2)?; // frame_marker
    let low = r.bits(1)?;
    let profile = r.bits(1)? << 1 | low;
    // The reserved bit of profile 3, show_existing_frame, frame_type (both 0: a keyframe, checked above),
    // show_frame, error_resilient_mode.
    r.bits(if profile == 3 { 5 } else { 4 })?;
    if r.bits(24)? != 0x49_83_42 {
        return None; // frame_sync_code
    }
    if profile >= 2 {
        r.bits(1)?; // ten_or_twelve_bit
    }
    const CS_RGB: u64 = 7;
    let color_space = r.bits(3)?;
    let odd_profile = profile == 1 || profile == 3;
    match (color_space != CS_RGB, odd_profile) {
        // color_range; and in profiles 1 and 3 subsampling_x, subsampling_y, a reserved bit.
        (true, true) => r.bits(4)?,
        (true, false) => r.bits(1)?,
        // RGB: a reserved bit in profiles 1 and 3.
        (false, true) => r.bits(1)?,
        (false, false) => 0,
    };
    let (w, h) = (r.bits(16)? + 1, r.bits(16)? + 1);
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

fn vp8(payload: &[u8]) -> Option<(u16, u16)> {
    let b0 = *payload.first()?;
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return None; // not the start of partition 0
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let ext = *payload.get(i)?;
        i += 1;
        if ext & 0x80 != 0 {
            i += if *payload.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1;
        }
        if ext & 0x30 != 0 {
            i += 1;
        }
    }
    let frame = payload.get(i..i + 10)?;
    if frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None; // an interframe, or no start code
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    (w > 0 && h > 0).then_some((w, h))
}

fn h264(payload: &[u8]) -> Option<(u16, u16)> {
    let first = *payload.first()?;
    match first & 0x1f {
        H264_SPS => sps(&payload[1..]),
        H264_STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let nal = rest.get(2..2 + n)?;
                if nal.first().is_some_and(|b| b & 0x1f == H264_SPS) {
                    return sps(&nal[1..]);
                }
                rest = &rest[2 + n..];
            }
            None
        }
        _ => None,
    }
}

fn av1(payload: &[u8]) -> Option<(u16, u16)> {
    if !crate::keyframe::is_keyframe(Codec::Av1, payload) {
        return None;
    }
    let mut r = Bits { bytes: crate::keyframe::av1_sequence_header(payload)?, pos: 0 };
    r.bits(3)?; // seq_profile
    r.bits(1)?; // still_picture
    if r.bits(1)? == 1 {
        r.bits(5)?; // reduced_still_picture_header: seq_level_idx[0] alone
    } else {
        let mut decoder_model_info = false;
        let mut buffer_delay_bits = 0;
        if r.bits(1)? == 1 {
            // timing_info: num_units_in_display_tick, time_scale, equal_picture_interval (and then
            // num_ticks_per_picture_minus_1).
            r.bits(64)?;
            if r.bits(1)? == 1 {
                r.uvlc()?;
            }
            decoder_model_info = r.bits(1)? == 1;
            if decoder_model_info {
                buffer_delay_bits = r.bits(5)? as u32 + 1;
                // num_units_in_decoding_tick, buffer_removal_time_length_minus_1,
                // frame_presentation_time_length_minus_1.
                r.bits(42)?;
            }
        }
        let initial_display_delay = r.bits(1)? == 1;
        for _ in 0..=r.bits(5)? {
            r.bits(12)?; // operating_point_idc
            if r.bits(5)? > 7 {
                r.bits(1)?; // seq_tier
            }
            if decoder_model_info && r.bits(1)? == 1 {
                // decoder_buffer_delay, encoder_buffer_delay, low_delay_mode_flag.
                r.bits(2 * buffer_delay_bits + 1)?;
            }
            if initial_display_delay && r.bits(1)? == 1 {
                r.bits(4)?;
            }
        }
    }
    let width_bits = r.bits(4)? as u32 + 1;
    let height_bits = r.bits(4)? as u32 + 1;
    let (w, h) = (r.bits(width_bits)? + 1, r.bits(height_bits)? + 1);
    Some((u16::try_from(w).ok()?, u16::try_from(h).ok()?))
}

/// The size a sequence parameter set (its RBSP after the NAL header, emulation prevention bytes included)
/// describes.
fn sps(nal: &[u8]) -> Option<(u16, u16)> {
    // Emulation prevention: 00 00 03 stands for 00 00.
    let mut rbsp = Vec::with_capacity(nal.len().min(64));
    let mut zeros = 0;
    for &b in nal.iter().take(256) {
        if zeros >= 2 && b == 0x03 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = Bits { bytes: &rbsp, pos: 0 };
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    if matches!(profile, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.bits(1)?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bits(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bits(1)? == 1 {
            // seq_scaling_matrix_present_flag: scaling lists, skipped.
            for list in 0..if chroma_format == 3 { 12 } else { 8 } {
                if r.bits(1)? == 1 {
                    let size = if list < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()? + 1;
    let height_units = r.ue()? + 1;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?; // mb_adaptive_frame_field_flag
    }
    r.bits(1)?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.bits(1)? == 1 {
        (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
    }
    let (unit_x, unit_y) = match chroma_format {
        0 | 3 => (1, 2 - frame_mbs_only),
        2 => (2, 2 - frame_mbs_only),
        _ => (2, 2 * (2 - frame_mbs_only)),
    };
    let width = (width_mbs * 16).checked_sub(unit_x * (left + right))?;
    let height = ((2 - frame_mbs_only) * height_units * 16).checked_sub(unit_y * (top + bottom))?;
    let (w, h) = (u16::try_from(width).ok()?, u16::try_from(height).ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

/// Reads bits, most significant first.
struct Bits<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u64> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u64::from(b))
    }

    fn bits(&mut self, n: u32) -> Option<u64> {
        (0..n).try_fold(0, |v, _| Some(v << 1 | self.bit()?))
    }

    /// An unsigned exponential-Golomb code of at most 32 bits of value.
    fn ue(&mut self) -> Option<u64> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 32 {
                return None;
            }
        }
        Some((1 << zeros) - 1 + self.bits(zeros)?)
    }

    /// AV1's `uvlc()`: an unsigned variable-length code of at most 32 bits of value.
    fn uvlc(&mut self) -> Option<u64> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
        }
        if zeros >= 32 {
            return Some(u64::from(u32::MAX));
        }
        Some(self.bits(zeros)? + (1 << zeros) - 1)
    }

    /// A signed exponential-Golomb code.
    fn se(&mut self) -> Option<i64> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 keyframe's first packet: descriptor with a 15-bit picture id, frame tag, start code, size.
    fn vp8_keyframe(w: u16, h: u16) -> Vec<u8> {
        let mut p = vec![0x90, 0x80, 0x81, 0x23, 0x50, 0x2c, 0x00, 0x9d, 0x01, 0x2a];
        p.extend_from_slice(&w.to_le_bytes());
        p.extend_from_slice(&h.to_le_bytes());
        p.extend_from_slice(&[0u8; 20]);
        p
    }

    #[test]
    fn a_vp8_keyframe_says_its_size() {
        assert_eq!(size(Codec::Vp8, &vp8_keyframe(1280, 720)), Some((1280, 720)));
        // The top two bits are the scaling, not the size.
        assert_eq!(size(Codec::Vp8, &vp8_keyframe(320 | 0x4000, 180 | 0xc000)), Some((320, 180)));
        let mut inter = vp8_keyframe(1280, 720);
        inter[4] |= 0x01;
        assert_eq!(size(Codec::Vp8, &inter), None, "an interframe");
        let mut later = vp8_keyframe(1280, 720);
        later[0] &= !0x10;
        assert_eq!(size(Codec::Vp8, &later), None, "not a frame's first packet");
        for n in 0..12 {
            assert_eq!(size(Codec::Vp8, &vp8_keyframe(640, 360)[..n]), None, "cut to {n} bytes");
        }
    }

    #[test]
    fn a_vp9_keyframe_says_its_size_in_its_scalability_structure_or_its_header() {
        // Chromium's: descriptor I B V Z, a 15-bit picture ID, one spatial layer of 640x480 (Y), then the
        // uncompressed header (profile 0, a shown keyframe) and its sync code.
        let chromium = hex("9be78b10028001e08249834200270000");
        assert_eq!(size(Codec::Vp9, &chromium), Some((640, 480)));
        // No scalability structure: the header says 1280x720 (sizes less one, after colour space 2 and the
        // colour range).
        let plain = [0x08, 0x82, 0x49, 0x83, 0x42, 0x40, 0x4f, 0xf0, 0x2c, 0xf0];
        assert_eq!(size(Codec::Vp9, &plain), Some((1280, 720)));
        // Profile 1 (4:4:4): three more colour bits before the size.
        let profile1 = [0x08, 0xa2, 0x49, 0x83, 0x42, 0x40, 0x09, 0xfe, 0x05, 0x9e];
        assert_eq!(size(Codec::Vp9, &profile1), Some((1280, 720)));
        // An interframe (P=1), a frame whose header says it is not a keyframe, a later packet (B=0), an upper
        // spatial layer: no size.
        assert_eq!(size(Codec::Vp9, &[0x48, 0x82, 0x49, 0x83, 0x42, 0x40, 0x4f, 0xf0, 0x2c, 0xf0]), None);
        assert_eq!(size(Codec::Vp9, &[0x08, 0x86, 0x49, 0x83, 0x42, 0x40, 0x4f, 0xf0, 0x2c, 0xf0]), None);
        assert_eq!(size(Codec::Vp9, &[0x00, 0x82, 0x49, 0x83, 0x42, 0x40, 0x4f, 0xf0, 0x2c, 0xf0]), None);
        assert_eq!(size(Codec::Vp9, &[0x28, 0x02, 0x82, 0x49, 0x83, 0x42, 0x40, 0x4f, 0xf0, 0x2c, 0xf0]), None);
        for n in 0..plain.len() {
            assert_eq!(size(Codec::Vp9, &plain[..n]), None, "cut to {n} bytes");
        }
        // Its size needs the header's first byte too (a keyframe's, or no size at all).
        for n in 0..9 {
            assert_eq!(size(Codec::Vp9, &chromium[..n]), None, "cut to {n} bytes");
        }
    }

    #[test]
    fn an_av1_sequence_header_says_the_maximum_frame_size() {
        // Chromium's first packet of a keyframe (W=2, N=1): an 11-byte sequence header, 320x180 in 9 and 8 bits.
        let chromium = hex("680b08000000043cfecc01a0083010");
        assert_eq!(size(Codec::Av1, &chromium), Some((320, 180)));
        // A sequence header with timing and decoder model info, two operating points (the second with a decoder
        // model and an initial display delay) and 1280x720 in 11 and 10 bits; one OBU with its size field.
        let mut bits = String::new();
        let mut put = |v: u64, n: u32| bits.push_str(&format!("{v:0n$b}", n = n as usize));
        put(0, 3); // seq_profile
        put(0, 2); // still_picture, reduced_still_picture_header
        put(1, 1); // timing_info_present_flag
        put(1, 32); // num_units_in_display_tick
        put(90_000, 32); // time_scale
        put(1, 1); // equal_picture_interval
        put(0b00101, 5); // uvlc: two leading zeros, then 01: 1 + 4 - 1 = 4
        put(1, 1); // decoder_model_info_present_flag
        put(9, 5); // buffer_delay_length_minus_1: 10 bits each below
        put(1, 32); // num_units_in_decoding_tick
        put(0, 10); // buffer_removal_time_length_minus_1, frame_presentation_time_length_minus_1
        put(1, 1); // initial_display_delay_present_flag
        put(1, 5); // operating_points_cnt_minus_1: two
        put(0, 12);
        put(8, 5); // seq_level_idx over 7: a tier bit
        put(0, 1);
        put(0, 1); // no decoder model for this one
        put(0, 1); // nor an initial display delay
        put(0x103, 12);
        put(4, 5);
        put(1, 1); // decoder_model_present_for_this_op: 10 + 10 + 1 bits
        put(0, 21);
        put(1, 1); // initial_display_delay_present_for_this_op: 4 bits
        put(9, 4);
        put(10, 4); // frame_width_bits_minus_1
        put(9, 4); // frame_height_bits_minus_1
        put(1279, 11);
        put(719, 10);
        while !bits.len().is_multiple_of(8) {
            bits.push('0');
        }
        let header: Vec<u8> = bits
            .as_bytes()
            .chunks(8)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap())
            .collect();
        // Aggregation header W=1 N=1, then the OBU: type 1 with a size field, its size, the header.
        let mut packet = vec![0x18, 0x0a, header.len() as u8];
        packet.extend_from_slice(&header);
        assert_eq!(size(Codec::Av1, &packet), Some((1280, 720)));
        // Cut anywhere: no size, no panic.
        for n in 0..packet.len() {
            assert_eq!(size(Codec::Av1, &packet[..n]), None, "cut to {n} bytes");
        }
        // A packet that continues an OBU (Z), or starts with a frame: no size.
        let mut z = chromium.clone();
        z[0] |= 0x80;
        assert_eq!(size(Codec::Av1, &z), None);
        assert_eq!(size(Codec::Av1, &hex("10344034000000000252810c30c2292040008000")), None);
    }

    // Sequence parameter sets as encoders wrote them (NAL header first).
    /// libx264 with `profile=high`, 1280x720 (80x45 macroblocks, 1280x720 exactly): PyAV's `libx264` encoder,
    /// one frame.
    const SPS_720P_HIGH: &str = "6764001facd9405005ba10000003001000000303c0f1831960";
    /// Constrained baseline, 640x360 (40x23 macroblocks, 8 rows cropped): the avcC of
    /// `tests/fixtures/testsrc-h264-opus.mkv`.
    const SPS_360P_BASELINE: &str = "6742c01fd900a02ff970110000030001000003003c0f183248";
    /// The same, 320x180 (20x12 macroblocks, 12 rows cropped): `tests/fixtures/testsrc-180p-h264-opus.mkv`.
    const SPS_180P_BASELINE: &str = "6742c01fd901419f9f0110000003001000000303c0f1832480";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn an_h264_sps_says_the_size_less_the_cropping() {
        let high = hex(SPS_720P_HIGH);
        assert_eq!(size(Codec::H264, &high), Some((1280, 720)));
        assert_eq!(size(Codec::H264, &hex(SPS_360P_BASELINE)), Some((640, 360)));
        assert_eq!(size(Codec::H264, &hex(SPS_180P_BASELINE)), Some((320, 180)));
        // Inside a STAP-A, after another NAL unit (an AUD), as encoders send SPS+PPS before an IDR.
        let mut stap = vec![0x18, 0x00, 0x02, 0x09, 0xf0];
        stap.extend_from_slice(&(high.len() as u16).to_be_bytes());
        stap.extend_from_slice(&high);
        stap.extend_from_slice(&[0x00, 0x04, 0x68, 0xeb, 0xe3, 0xcb]);
        assert_eq!(size(Codec::H264, &stap), Some((1280, 720)));
        // An IDR slice says nothing; nor does an SPS cut short before its size.
        assert_eq!(size(Codec::H264, &[0x65, 0x88, 0x84, 0x00]), None);
        for n in 0..8 {
            assert_eq!(size(Codec::H264, &high[..n]), None, "cut to {n} bytes");
        }
        // Garbage: never a panic.
        for seed in 0..2000u32 {
            let bytes: Vec<u8> =
                (0..40).map(|k| (seed.wrapping_mul(2_654_435_761).rotate_left(k) >> 3) as u8).collect();
            let mut nal = vec![0x67];
            nal.extend_from_slice(&bytes);
            let _ = size(Codec::H264, &nal);
        }
    }
}
