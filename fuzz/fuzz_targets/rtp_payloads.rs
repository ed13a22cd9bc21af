//! RTP payloads of every codec to ingest's per-packet parsers: `keyframe::is_keyframe` and `picture::size`.
//! Input: a codec byte (its value modulo the codecs), then the payload. Neither may panic; a size said is
//! never zero, and a VP8 or H.264 payload that says a size is one that starts a keyframe.
#![no_main]

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
});
