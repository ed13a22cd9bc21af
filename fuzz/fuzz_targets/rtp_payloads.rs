//! RTP payloads of every codec to ingest's per-packet parsers, `keyframe::is_keyframe` and `picture::size`, and
//! VP8 and VP9 payloads to the fanout's rewrite of their picture numbers (`splice::PictureNumbers`, across a change
//! of source). Input: a codec byte (its value modulo the codecs), then the payload. None may panic; a size said is
//! never zero, a payload that says a size is one that starts a keyframe, and a rewritten VP8 or VP9
//! payload differs from the payload only in the descriptor's picture numbers.
#![no_main]

use deadsfu_fanout::splice::{PictureDescriptor, PictureNumbers, SourceId};
use deadsfu_ingest::{keyframe, picture};
use libfuzzer_sys::fuzz_target;
use shm_proto::ring::Codec;

const CODECS: [Codec; 8] =
    [Codec::H264, Codec::Vp8, Codec::Vp9, Codec::Av1, Codec::Opus, Codec::Pcmu, Codec::Pcma, Codec::G722];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else { return };
    let codec = CODECS[usize::from(pick) % CODECS.len()];
    let key = keyframe::is_keyframe(codec, payload);
    if let Some((w, h)) = picture::size(codec, payload) {
        assert!(w > 0 && h > 0, "{codec:?}: size {w}x{h}");
        assert!(key, "{codec:?}: a size from a payload that starts no keyframe");
    }
    // Where each codec's descriptor may have its numbers: VP8's flags and X byte, then 2 of PictureID, TL0PICIDX,
    // TID/Y/KEYIDX (bytes 2-5); VP9's flags, then 2 of PictureID, the layer indices, TL0PICIDX (bytes 1-4).
    let (read, numbered) = match codec {
        Codec::Vp8 => (PictureDescriptor::read_vp8(payload), 2..6),
        Codec::Vp9 => (PictureDescriptor::read_vp9(payload), 1..5),
        _ => return,
    };
    // Numbered from a first source, then the same payload as a second source's first: rewritten.
    let mut numbers = PictureNumbers::default();
    numbers.map(SourceId { source: 1, ssrc: 1 }, &read);
    let rewrite = numbers.map(SourceId { source: 2, ssrc: 2 }, &read);
    let mut out = payload.to_vec();
    rewrite.apply(&mut out);
    let changed: Vec<usize> = payload.iter().zip(&out).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
    assert!(changed.iter().all(|at| numbered.contains(at)), "{codec:?}: bytes {changed:?} of {payload:02x?} rewritten");
    // A resend of it is rewritten alike (a payload too short to number is not numbered, nor resent).
    let resent = numbers.resent(SourceId { source: 2, ssrc: 2 }, &read);
    assert!(resent.is_none_or(|r| r == rewrite), "{resent:?} against {rewrite:?}");
});
