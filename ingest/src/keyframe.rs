//! Keyframe detection on RTP payloads, per codec.
//!
//! A packet is a keyframe start when a decoder joining there can decode. The verdict is per packet, with no
//! state: ingest marks such packets in the ring and fanout starts late joiners and switches there.
//!
//! - H.264 (RFC 6184): an IDR slice or an SPS (encoders send SPS/PPS right before an IDR) in a single NAL unit,
//!   inside a STAP-A aggregate, or in the first fragment of an FU-A. A keyframe sent as a STAP-A with SPS+PPS
//!   and then FU-As of the IDR (as Chrome and aiortc do) therefore has two packets that say yes: the STAP-A
//!   and the IDR's first fragment (and each further IDR slice's).
//! - VP8 (RFC 7741): the first packet of a frame (S=1, partition 0) whose payload header has P=0.
//! - VP9 (RFC 9628): the first packet of a picture (B=1) of spatial layer 0 (no layer indices, or SID=0), not
//!   inter-picture predicted (P=0), whose uncompressed header says `frame_type` KEY_FRAME. The P bit alone is
//!   not enough: every packet of a keyframe has P=0, and so does the first packet of each upper spatial layer
//!   of an SVC keyframe (inter-layer prediction only), which a decoder cannot start at.
//! - AV1 (AOM RTP payload format 1.0): the N bit of the aggregation header ("first packet of a coded video
//!   sequence"), or, for a packetizer that does not set N, a packet that does not continue an OBU (Z=0) and
//!   whose first OBU is a sequence header, followed in the packet by nothing or by a frame (header) whose
//!   `frame_type` is KEY_FRAME.
//!
//! Every payload is untrusted: a short or malformed one is "not a keyframe", never a panic.

use shm_proto::ring::Codec;

const H264_IDR: u8 = 0x05;
const H264_SPS: u8 = 0x07;
const H264_STAP_A: u8 = 0x18;
const H264_FU_A: u8 = 0x1c;

const AV1_OBU_SEQUENCE_HEADER: u8 = 0x01;
const AV1_OBU_FRAME_HEADER: u8 = 0x03;
const AV1_OBU_FRAME: u8 = 0x06;

/// True if `payload` (an RTP payload of `codec`) starts a keyframe.
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::H264 => h264(payload),
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::Av1 => av1(payload),
        Codec::Opus | Codec::Pcmu | Codec::Pcma | Codec::G722 => false,
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
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
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

/// RFC 7741 section 4.2: `X|R|N|S|R|PID`, optional extensions, then (on a partition start) the VP8 payload
/// header, whose bit 0 is the inverse key frame flag.
fn vp8(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else { return false };
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    if !start {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&ext) = payload.get(i) else { return false };
        i += 1;
        if ext & 0x80 != 0 {
            // PictureID: 7 or 15 bits (M bit).
            let Some(&pid) = payload.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            i += 1; // TID|Y|KEYIDX
        }
    }
    payload.get(i).is_some_and(|h| h & 0x01 == 0)
}

/// A VP9 keyframe's first packet ([`vp9_start`]) whose uncompressed header says KEY_FRAME.
fn vp9(payload: &[u8]) -> bool {
    vp9_start(payload).and_then(|start| payload.get(start.header)).is_some_and(|&h| vp9_frame_is_key(h))
}

/// The first packet of a VP9 picture of spatial layer 0, not inter-picture predicted, as its payload descriptor
/// says: where its uncompressed header starts, and the size of its top spatial layer if the descriptor's
/// scalability structure gives it.
pub(crate) struct Vp9Start {
    pub header: usize,
    pub size: Option<(u16, u16)>,
}

/// RFC 9628 section 4.2: `I|P|L|F|B|E|V|Z`, then picture ID, layer indices, reference indices and the
/// scalability structure, each optional; then the VP9 frame. `None` unless the packet begins a picture (B=1)
/// of spatial layer 0 with P=0, or if the descriptor is cut short.
pub(crate) fn vp9_start(payload: &[u8]) -> Option<Vp9Start> {
    let &b0 = payload.first()?;
    let (i_bit, p_bit, l_bit, f_bit, b_bit, v_bit) =
        (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x20 != 0, b0 & 0x10 != 0, b0 & 0x08 != 0, b0 & 0x02 != 0);
    if p_bit || !b_bit {
        return None;
    }
    let mut r = Reader { bytes: payload, pos: 1 };
    if i_bit {
        let pid = r.byte()?;
        if pid & 0x80 != 0 {
            r.skip(1)?;
        }
    }
    if l_bit {
        let layers = r.byte()?;
        if (layers >> 1) & 0x07 != 0 {
            return None; // an upper spatial layer
        }
        if !f_bit {
            r.skip(1)?; // TL0PICIDX
        }
    }
    // F=1 with P=1 would carry reference indices here; P=0, so there are none.
    let mut size = None;
    if v_bit {
        let ss = r.byte()?;
        let spatial_layers = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            // WIDTH and HEIGHT per layer, 16 bits each: the last is the top layer.
            for _ in 0..spatial_layers {
                let wh = r.take(4)?;
                size = Some((u16::from_be_bytes([wh[0], wh[1]]), u16::from_be_bytes([wh[2], wh[3]])));
            }
        }
        if ss & 0x08 != 0 {
            for _ in 0..r.byte()? {
                let refs = usize::from((r.byte()? >> 2) & 0x03);
                r.skip(refs)?;
            }
        }
    }
    Some(Vp9Start { header: r.pos, size: size.filter(|&(w, h)| w > 0 && h > 0) })
}

/// The first byte of a VP9 uncompressed header (VP9 bitstream spec 6.2): `frame_marker(2)`, `profile_low_bit`,
/// `profile_high_bit`, a reserved zero bit in profile 3 only, `show_existing_frame`, `frame_type` (0 = KEY).
pub(crate) fn vp9_frame_is_key(h: u8) -> bool {
    if h & 0xc0 != 0x80 {
        return false;
    }
    let profile = ((h >> 5) & 1) | (((h >> 4) & 1) << 1);
    let show_existing_at = if profile == 3 { 2 } else { 3 };
    let show_existing = (h >> show_existing_at) & 1;
    let frame_type = (h >> (show_existing_at - 1)) & 1;
    show_existing == 0 && frame_type == 0
}

/// AOM "RTP Payload Format for AV1" section 4.4: aggregation header `Z|Y|W(2)|N|reserved(3)`, then OBU
/// elements, each with a LEB128 length except the last one when W says how many there are.
fn av1(payload: &[u8]) -> bool {
    let Some(&agg) = payload.first() else { return false };
    let (z, w, n) = (agg & 0x80 != 0, (agg >> 4) & 0x03, agg & 0x08 != 0);
    if z {
        // Continues an OBU of the previous packet: never the first packet of anything.
        return false;
    }
    if n {
        return true;
    }
    let mut r = Reader { bytes: payload, pos: 1 };
    let Some(first) = av1_element(&mut r, w, 0) else { return false };
    if av1_obu_type(first) != Some(AV1_OBU_SEQUENCE_HEADER) {
        return false;
    }
    if w == 1 {
        return true;
    }
    match av1_element(&mut r, w, 1) {
        None => true,
        Some(next) => match av1_obu_type(next) {
            Some(AV1_OBU_FRAME | AV1_OBU_FRAME_HEADER) => av1_frame_is_key(next),
            // e.g. metadata between the sequence header and the frame: trust the sequence header.
            _ => true,
        },
    }
}

/// The payload of the sequence header OBU a packet starts with ([`av1_obu_payload`]), if it starts with one: as
/// an AV1 keyframe's first packet does.
pub(crate) fn av1_sequence_header(payload: &[u8]) -> Option<&[u8]> {
    let &agg = payload.first()?;
    if agg & 0x80 != 0 {
        return None; // Z: it continues an OBU
    }
    let mut r = Reader { bytes: payload, pos: 1 };
    let first = av1_element(&mut r, (agg >> 4) & 0x03, 0)?;
    if av1_obu_type(first) != Some(AV1_OBU_SEQUENCE_HEADER) {
        return None;
    }
    av1_obu_payload(first)
}

/// What follows an OBU's header (`obu_header`, its optional extension byte and size field): up to the packet's
/// end, as a packet may carry only the start of an OBU.
fn av1_obu_payload(obu: &[u8]) -> Option<&[u8]> {
    let mut r = Reader { bytes: obu, pos: 0 };
    let header = r.byte()?;
    if header & 0x04 != 0 {
        r.skip(1)?;
    }
    if header & 0x02 != 0 {
        r.leb128()?;
    }
    obu.get(r.pos..)
}

/// OBU element `index` of a packet with `w` in its aggregation header.
fn av1_element<'a>(r: &mut Reader<'a>, w: u8, index: u8) -> Option<&'a [u8]> {
    let len = if w != 0 && index + 1 == w { r.bytes.len() - r.pos } else { r.leb128()? };
    r.take(len)
}

fn av1_obu_type(obu: &[u8]) -> Option<u8> {
    obu.first().map(|h| (h >> 3) & 0x0f)
}

/// A frame (header) OBU: `obu_header`, optional extension byte and size, then the uncompressed header,
/// which (`reduced_still_picture_header` being 0 in any WebRTC stream) begins `show_existing_frame(1)
/// frame_type(2)`, KEY_FRAME being 0.
fn av1_frame_is_key(obu: &[u8]) -> bool {
    av1_obu_payload(obu).and_then(|p| p.first()).is_some_and(|&h| h & 0x80 == 0 && (h >> 5) & 0x03 == 0)
}

/// Bounds-checked reading of untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    /// An unsigned LEB128 of at most 8 bytes (the AV1 limit), as a length.
    fn leb128(&mut self) -> Option<usize> {
        let mut value: u64 = 0;
        for k in 0..8 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * k);
            if b & 0x80 == 0 {
                return usize::try_from(value).ok();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// A packet of a fixture file: its name, the expected verdict and the payload.
    struct Fixture {
        name: String,
        keyframe: bool,
        payload: Vec<u8>,
    }

    fn unhex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd-length hex");
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("fixture hex")).collect()
    }

    /// Every packet of `ingest/fixtures/keyframes/{file}` (written by scripts/capture-keyframes).
    fn fixtures(file: &str) -> Vec<Fixture> {
        let path = format!("{}/fixtures/keyframes/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut out = Vec::new();
        for capture in doc["captures"].as_array().expect("captures") {
            for p in capture["packets"].as_array().expect("packets") {
                out.push(Fixture {
                    name: format!("{} ({})", p["name"].as_str().expect("name"), p["detail"].as_str().unwrap_or("")),
                    keyframe: p["keyframe"].as_bool().expect("keyframe"),
                    payload: unhex(p["payload"].as_str().expect("payload")),
                });
            }
        }
        out
    }

    /// Checks every packet of a fixture file and that it has both verdicts; returns the packets.
    fn check(codec: Codec, file: &str) -> Vec<Fixture> {
        let packets = fixtures(file);
        assert!(packets.iter().any(|p| p.keyframe), "{file}: no keyframe start");
        assert!(packets.iter().any(|p| !p.keyframe), "{file}: no other packet");
        let wrong: Vec<_> = packets
            .iter()
            .filter(|p| is_keyframe(codec, &p.payload) != p.keyframe)
            .map(|p| format!("expected {}: {}", p.keyframe, p.name))
            .collect();
        assert!(wrong.is_empty(), "{file}: wrong verdicts:\n{}", wrong.join("\n"));
        // Untrusted input: no prefix of a real packet panics, and none of a non-keyframe packet says yes.
        for p in &packets {
            for len in 0..p.payload.len().min(64) {
                let verdict = is_keyframe(codec, &p.payload[..len]);
                assert!(p.keyframe || !verdict, "{file}: {len}-byte prefix of a non-keyframe packet: {}", p.name);
            }
        }
        packets
    }

    #[test]
    fn h264_real_packets() {
        let packets = check(Codec::H264, "h264.json");
        let has = |what: &str, keyframe: bool| packets.iter().any(|p| p.keyframe == keyframe && p.name.contains(what));
        assert!(has("STAP-A", true), "a keyframe starting with a STAP-A (SPS, PPS)");
        assert!(has("FU-A start starting NAL types [5]", true), "an IDR's first FU-A fragment");
        assert!(has("FU-A end of NAL type 5", false), "an IDR's last FU-A fragment");
    }

    #[test]
    fn vp8_real_packets() {
        check(Codec::Vp8, "vp8.json");
    }

    /// Regression: str0m's `detect_vp9_keyframe` looks at the P bit only, which is 0 on every packet of a
    /// keyframe and on the first packet of each upper spatial layer of an SVC keyframe.
    #[test]
    fn vp9_real_packets() {
        let packets = check(Codec::Vp9, "vp9.json");
        assert!(packets.iter().any(|p| !p.keyframe && p.name.contains("second packet of the keyframe")));
        assert!(packets.iter().any(|p| !p.keyframe && p.name.contains("spatial layer 1 of a keyframe")));
        for p in packets.iter().filter(|p| !p.keyframe && p.payload[0] & 0x40 == 0) {
            assert!(str0m::format::detect_vp9_keyframe(&p.payload), "the str0m verdict this replaces: {}", p.name);
        }
    }

    /// Every keyframe start of the captures says its picture's size, from its scalability structure (the top
    /// spatial layer's) and, with that taken out, from its uncompressed header (its own layer's): the same for a
    /// single layer, smaller for the base layer of an SVC keyframe.
    #[test]
    fn vp9_real_keyframes_say_their_size_both_ways() {
        for p in fixtures("vp9.json").iter().filter(|p| p.keyframe) {
            let (w, h) = crate::picture::size(Codec::Vp9, &p.payload).unwrap_or_else(|| panic!("{}", p.name));
            // The same packet with V cleared and its scalability structure cut out (it follows the picture ID
            // and, with L, the layer indices).
            let b0 = p.payload[0];
            assert!(b0 & 0x02 != 0, "Chromium's keyframes carry their scalability structure: {}", p.name);
            let mut ss_from = 1;
            if b0 & 0x80 != 0 {
                ss_from += if p.payload[1] & 0x80 != 0 { 2 } else { 1 };
            }
            if b0 & 0x20 != 0 {
                ss_from += if b0 & 0x10 != 0 { 1 } else { 2 };
            }
            let header = vp9_start(&p.payload).expect("a keyframe start").header;
            let mut plain = vec![b0 & !0x02];
            plain.extend_from_slice(&p.payload[1..ss_from]);
            plain.extend_from_slice(&p.payload[header..]);
            assert!(is_keyframe(Codec::Vp9, &plain), "{}", p.name);
            let (hw, hh) = crate::picture::size(Codec::Vp9, &plain).unwrap_or_else(|| panic!("{} header", p.name));
            let layers = usize::from(p.payload[ss_from] >> 5) + 1;
            match layers {
                1 => assert_eq!((hw, hh), (w, h), "{}", p.name),
                _ => assert!(hw < w && hh < h, "{}: base {hw}x{hh}, top {w}x{h}", p.name),
            }
        }
    }

    #[test]
    fn av1_real_packets() {
        check(Codec::Av1, "av1.json");
    }

    /// Chromium's AV1 keyframe starts, one temporal layer or three (whose sequence header has an operating point
    /// a layer), say the size of the capture's pictures, 320x180.
    #[test]
    fn av1_real_keyframes_say_their_size() {
        for p in fixtures("av1.json").iter().filter(|p| p.keyframe) {
            assert_eq!(crate::picture::size(Codec::Av1, &p.payload), Some((320, 180)), "{}", p.name);
        }
    }

    /// A packetizer that does not set N (the payload format only requires it at a new coded video sequence):
    /// Chrome's keyframe starts with the N bit cleared are still keyframe starts, by their sequence header and
    /// KEY_FRAME frame header; its other packets stay no with N cleared.
    #[test]
    fn av1_without_the_n_bit() {
        let packets = fixtures("av1.json");
        assert!(packets.iter().any(|p| p.keyframe && p.payload[0] & 0x08 != 0), "Chrome sets N on keyframes");
        for p in &packets {
            let mut payload = p.payload.clone();
            payload[0] &= !0x08;
            assert_eq!(is_keyframe(Codec::Av1, &payload), p.keyframe, "with N cleared: {}", p.name);
        }
        // A sequence header followed by an inter frame is no place to start.
        let key = packets.iter().find(|p| p.keyframe).expect("a keyframe start");
        let mut inter = key.payload.clone();
        inter[0] &= !0x08;
        let seq_len = usize::from(inter[1]);
        assert!(seq_len < 0x80, "one-byte LEB128 length of the sequence header");
        let frame = 2 + seq_len;
        assert_eq!(av1_obu_type(&inter[frame..]), Some(AV1_OBU_FRAME));
        let header = frame + 1 + usize::from(inter[frame] & 0x04 != 0);
        assert_eq!(inter[frame] & 0x02, 0, "no obu_size in RTP");
        inter[header] = (inter[header] & !0x60) | 0x20; // frame_type INTER_FRAME
        assert!(!is_keyframe(Codec::Av1, &inter));
    }

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
    fn vp9_headers() {
        // Profile 0 keyframe (0x82) and inter frame (0x86); profile 3 (reserved bit) keyframe and inter frame.
        assert!(vp9_frame_is_key(0x82));
        assert!(!vp9_frame_is_key(0x86));
        assert!(!vp9_frame_is_key(0x8a), "show_existing_frame");
        assert!(vp9_frame_is_key(0xb1 & !0x02));
        assert!(!vp9_frame_is_key(0xb2));
        assert!(!vp9_frame_is_key(0x02), "no frame marker");
        // Non-flexible mode, L with TL0PICIDX, SID 0, keyframe.
        assert!(is_keyframe(Codec::Vp9, &[0xa8, 0x05, 0x00, 0x00, 0x82]));
        // The same with SID 1.
        assert!(!is_keyframe(Codec::Vp9, &[0xa8, 0x05, 0x02, 0x00, 0x82]));
        // A scalability structure with picture groups that runs past the end.
        assert!(!is_keyframe(Codec::Vp9, &[0x0a, 0x18, 0x00, 0x00, 0x00, 0x00, 0x05]));
        assert!(!is_keyframe(Codec::Vp9, &[0x08]));
    }

    #[test]
    fn audio_is_never_a_keyframe() {
        assert!(!is_keyframe(Codec::Opus, &[0x65]));
    }
}
