//! A viewer's media path past str0m: each packet's header written, sealed and counted from a few cache lines
//! the worker holds per viewer, not from the viewer's whole session.
//!
//! Once a viewer's DTLS handshake has made an AEAD (AES-GCM) SRTP context, [`sync`] takes from its str0m session
//! what a packet needs: the RTP session key and salt, the nominated ICE path, and per track the SSRC, the
//! header extension ids and whether the MID still goes in every packet (until the viewer acknowledges the SSRC).
//! [`write`] then makes each packet from those (RFC 3550 header, RFC 8285 one-byte extensions, RFC 7714 seal):
//! byte for byte the packet str0m's `send_rtp_now` would make. What str0m must know of the packets sent, for its
//! sender reports and for reading NACKs, is counted here and handed over (`DirectApi::note_sent_rtp`) before the
//! session next runs: the session host calls [`sync`] before every input the session handles, and after every
//! drain of its output, which is when what was taken from it may have changed (a new path, an acknowledged SSRC,
//! a stream gone quiet) and is taken again. The extension ids, fixed by the answer, are read once.
//! Resends and everything else (ICE, DTLS, RTCP) stay str0m's.
//!
//! The seal is ring's AES-GCM, its key (round keys and GHASH table) held in place in [`Egress`]. aws-lc's, which
//! str0m's own SRTP uses, keeps a key behind a pointer and copies its GHASH table into a context at each seal:
//! from a key that the rest of the worker's turn has pushed out of the cache, that was half of the seal's cost
//! (BENCHMARKS.md, "The seal from a key in place").
//!
//! Transport-wide sequence numbers (transport-cc, which the viewer's feedback and str0m's bandwidth estimate
//! read) are drawn here from the session's counter (`DirectApi::transport_seq`, taken at each sync) and each
//! packet's send time and size handed back (`DirectApi::note_sent_transport`) with the rest.
//!
//! A viewer whose session has no AEAD profile (AES_CM_128_HMAC_SHA1_80), or whose extensions str0m would write
//! in another form (an id above 14, a MID longer than 16 bytes) or with more in them (abs-send-time), is sent
//! through str0m's `send_rtp_now` as before.

use std::time::Instant;

use deadsfu_media::host::SyncPoint;
use deadsfu_media::outbox::Path;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use str0m::media::{Mid, Pt};
use str0m::rtp::{Extension, SentRtp, SrtpAeadKey};
use str0m::Rtc;

use crate::splice::Rewrite;
use crate::viewer::{Track, Viewer};

/// Largest id of a one-byte header extension (RFC 8285 4.2); str0m writes the two-byte form if any id of the
/// map is above it.
const ONE_BYTE_MAX_ID: u8 = 14;
/// Longest value of a one-byte header extension.
const ONE_BYTE_MAX_LEN: usize = 16;
/// Packets numbered for transport-wide feedback and not yet registered with str0m that make the worker hand
/// them over at once rather than at the session's next sync: a bound on what a viewer keeps of them.
const TRANSPORT_UNNOTED_MAX: usize = 64;
/// The fixed header and the one-byte extension block's own header (`0xBEDE` and its length in words).
const FIXED_LEN: usize = 12 + 4;
/// The longest header [`write_header`] makes: every extension there, the MID at its longest, padded to a word.
const HEADER_MAX: usize = FIXED_LEN + (2 + (1 + ONE_BYTE_MAX_LEN) + 2 + 3).div_ceil(4) * 4;

/// What a viewer's session sends media with, taken from str0m.
pub(crate) struct Egress {
    key: LessSafeKey,
    salt: [u8; 12],
    /// The session's key as str0m gave it, to see whether it changed (a new DTLS handshake).
    source: SrtpAeadKey,
    path: Option<Path>,
    /// The transport-wide sequence number of the first of `sends`; the next packet's is past them.
    transport_first: u64,
    /// Send time and payload size of each packet numbered since str0m was last told.
    sends: Vec<(Instant, u16)>,
    /// A packet of a track that had gone quiet was written since str0m was last told ([`ends_quiet`]): kept
    /// here, beside what each packet writes, so that asking after a turn reads no track's state again.
    ends_quiet: bool,
}

/// A track's part: its SSRC, its header extensions, and what was sent since str0m was last told.
pub(crate) struct TrackEgress {
    ssrc: u32,
    /// The negotiated extensions in the order of their ids, the order a header carries them in.
    order: ExtOrder,
    /// The MID's bytes as the extension carries them, read out of the track's `Mid` once.
    mid_value: MidValue,
    /// The MID goes in each packet: the viewer has not acknowledged the SSRC yet.
    with_mid: bool,
    /// The stream had gone quiet (no sender reports while nothing flows) when str0m was last asked.
    quiet: bool,
    unnoted: SentRtp,
}

/// The viewer's ids of the header extensions a packet may carry (RFC 8285 one-byte form), if negotiated: fixed
/// by the answer, read once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ExtIds {
    audio_level: Option<u8>,
    video_orientation: Option<u8>,
    mid: Option<u8>,
    transport_seq: Option<u8>,
}

/// An extension [`write_header`] may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ext {
    AudioLevel,
    VideoOrientation,
    Mid,
    TransportSeq,
}

/// Extensions with their ids, ascending; the unused places last.
type ExtOrder = [Option<(u8, Ext)>; 4];

/// Whether `order` has the transport-wide sequence number.
fn numbered(order: &ExtOrder) -> bool {
    order.iter().flatten().any(|&(_, ext)| ext == Ext::TransportSeq)
}

impl ExtIds {
    fn order(&self) -> ExtOrder {
        let mut order = [
            self.audio_level.map(|id| (id, Ext::AudioLevel)),
            self.video_orientation.map(|id| (id, Ext::VideoOrientation)),
            self.mid.map(|id| (id, Ext::Mid)),
            self.transport_seq.map(|id| (id, Ext::TransportSeq)),
        ];
        // `None` sorts first: order by (unused, id).
        order.sort_unstable_by_key(|e| e.map_or((true, 0), |(id, _)| (false, id)));
        order
    }
}

/// A MID of at most [`ONE_BYTE_MAX_LEN`] bytes, held as its bytes (str0m's `Mid` trims its padding each time it
/// is read).
#[derive(Clone, Copy)]
struct MidValue {
    bytes: [u8; ONE_BYTE_MAX_LEN],
    len: u8,
}

impl MidValue {
    /// `mid`'s bytes, the first [`ONE_BYTE_MAX_LEN`] of them (a longer one is never written here: [`ext_ids`]).
    fn new(mid: Mid) -> MidValue {
        let value = mid.as_bytes();
        let len = value.len().min(ONE_BYTE_MAX_LEN);
        let mut bytes = [0; ONE_BYTE_MAX_LEN];
        bytes[..len].copy_from_slice(&value[..len]);
        MidValue { bytes, len: len as u8 }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// One packet's header fields.
pub(crate) struct Header {
    pub(crate) pt: Pt,
    pub(crate) marker: bool,
    /// Extended sequence number: its low 16 bits go on the wire, the rest is the SRTP rollover counter.
    pub(crate) seq: u64,
    pub(crate) timestamp: u32,
    pub(crate) audio_level: Option<(i8, bool)>,
    pub(crate) video_orientation: Option<u8>,
}

/// Writes one packet of `track` for the viewer whose session `egress` is, appended to `out`, and counts it;
/// returns where it goes (`None`, with `out` unchanged, when the session has no path).
pub(crate) fn write(
    egress: &mut Egress,
    track: &mut TrackEgress,
    header: &Header,
    payload: &[u8],
    rewrite: &Rewrite,
    now: Instant,
    out: &mut Vec<u8>,
) -> Option<Path> {
    let path = egress.path?;
    let start = out.len();
    let transport_seq = numbered(&track.order).then(|| egress.transport_first + egress.sends.len() as u64);
    write_header(track, header, transport_seq, out);
    let header_end = out.len();
    out.extend_from_slice(payload);
    rewrite.apply(&mut out[header_end..]);
    let iv = iv(&egress.salt, track.ssrc, header.seq);
    let (head, body) = out[start..].split_at_mut(header_end - start);
    let tag = egress
        .key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(&*head), body)
        .expect("an AES-GCM seal of a datagram-sized packet cannot fail");
    out.extend_from_slice(tag.as_ref());
    if transport_seq.is_some() {
        egress.sends.push((now, payload.len() as u16));
    }
    egress.ends_quiet |= track.quiet;
    let sent = &mut track.unnoted;
    sent.packets += 1;
    sent.payload_bytes += payload.len() as u64;
    sent.datagram_bytes += (out.len() - start) as u64;
    sent.last_seq_no = header.seq.into();
    sent.pt = header.pt;
    sent.rtp_time = header.timestamp;
    sent.wallclock = now;
    Some(path)
}

/// The RTP header as str0m writes it: version 2, the extension bit always set, the one-byte extensions in the
/// order of their ids, zero-padded to a word. Made in a buffer on the stack and copied out once.
fn write_header(track: &TrackEgress, h: &Header, transport_seq: Option<u64>, out: &mut Vec<u8>) {
    let mut b = [0u8; HEADER_MAX];
    b[0] = 0b1001_0000;
    b[1] = u8::from(h.marker) << 7 | (*h.pt & 0x7f);
    b[2..4].copy_from_slice(&(h.seq as u16).to_be_bytes());
    b[4..8].copy_from_slice(&h.timestamp.to_be_bytes());
    b[8..12].copy_from_slice(&track.ssrc.to_be_bytes());
    b[12..14].copy_from_slice(&[0xbe, 0xde]);
    let mut at = FIXED_LEN;
    let mut put = |id: u8, value: &[u8]| {
        b[at] = id << 4 | (value.len() as u8 - 1);
        b[at + 1..at + 1 + value.len()].copy_from_slice(value);
        at += 1 + value.len();
    };
    for &(id, ext) in track.order.iter().flatten() {
        match ext {
            Ext::AudioLevel => {
                if let Some((level_db, voice)) = h.audio_level {
                    put(id, &[u8::from(voice) << 7 | (level_db.unsigned_abs() & 0x7f)]);
                }
            }
            Ext::Mid if track.with_mid => put(id, track.mid_value.as_bytes()),
            Ext::Mid => {}
            Ext::VideoOrientation => {
                if let Some(o) = h.video_orientation {
                    put(id, &[o]);
                }
            }
            Ext::TransportSeq => {
                if let Some(seq) = transport_seq {
                    put(id, &(seq as u16).to_be_bytes());
                }
            }
        }
    }
    let words = (at - FIXED_LEN).div_ceil(4);
    b[14..16].copy_from_slice(&(words as u16).to_be_bytes());
    out.extend_from_slice(&b[..FIXED_LEN + 4 * words]);
}

fn iv(salt: &[u8; 12], ssrc: u32, seq: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&((seq >> 16) as u32).to_be_bytes());
    iv[10..12].copy_from_slice(&(seq as u16).to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

impl Egress {
    fn new(source: SrtpAeadKey) -> Egress {
        let (key, salt) = match &source {
            SrtpAeadKey::Aes128Gcm { key, salt } => (UnboundKey::new(&AES_128_GCM, key), *salt),
            SrtpAeadKey::Aes256Gcm { key, salt } => (UnboundKey::new(&AES_256_GCM, key), *salt),
        };
        let key = LessSafeKey::new(key.expect("an SRTP session key has the cipher's length"));
        Egress { key, salt, source, path: None, transport_first: 0, sends: Vec::new(), ends_quiet: false }
    }

    /// True when enough packets were numbered for transport-wide feedback that str0m should be told now.
    pub(crate) fn transport_full(&self) -> bool {
        self.sends.len() >= TRANSPORT_UNNOTED_MAX
    }
}

/// Brings a viewer's session and the worker's view of it up to date: before str0m acts, tells it what was sent
/// past it since the last call; after, takes what the next packets need (a key once DTLS has made one, the path,
/// each track's SSRC, whether it still carries the MID, whether it went quiet). Run by the session host.
pub(crate) fn sync(rtc: &mut Rtc, viewer: &mut Viewer, now: Instant, point: SyncPoint) {
    note_sent(rtc, viewer, now);
    if point == SyncPoint::BeforeInput {
        return;
    }
    let api = rtc.direct_api();
    let Some(key) = api.srtp_rtp_aead_key() else {
        viewer.egress = None;
        return;
    };
    if viewer.egress.as_ref().is_none_or(|e| e.source != key) {
        viewer.egress = Some(Egress::new(key));
    }
    let egress = viewer.egress.as_mut().expect("made above");
    egress.path = api.send_path();
    egress.transport_first = api.transport_seq();
    for track in [viewer.audio.as_mut(), viewer.video.as_mut()].into_iter().flatten() {
        track.egress = track_egress(rtc, track, now);
    }
}

/// Hands what was sent to each track since the last call over to str0m.
pub(crate) fn note_sent(rtc: &mut Rtc, viewer: &mut Viewer, now: Instant) {
    if let Some(egress) = viewer.egress.as_mut() {
        viewer.may_owe_report |= std::mem::take(&mut egress.ends_quiet);
        if !egress.sends.is_empty() {
            rtc.direct_api().note_sent_transport(egress.transport_first, &egress.sends);
            egress.transport_first += egress.sends.len() as u64;
            egress.sends.clear();
        }
    }
    for track in [viewer.audio.as_mut(), viewer.video.as_mut()].into_iter().flatten() {
        let Some(egress) = track.egress.as_mut().filter(|e| e.unnoted.packets > 0) else { continue };
        rtc.direct_api().note_sent_rtp(track.mid, None, &egress.unnoted, now);
        egress.unnoted.packets = 0;
        egress.unnoted.payload_bytes = 0;
        egress.unnoted.datagram_bytes = 0;
        egress.quiet = false;
    }
}

/// Takes the session's transport-wide counter anew after str0m sent a packet of its own outside a sync (a
/// resend), which took a number from it.
pub(crate) fn renumber(rtc: &mut Rtc, viewer: &mut Viewer) {
    if let Some(egress) = viewer.egress.as_mut() {
        debug_assert!(egress.sends.is_empty(), "noted before str0m sent");
        egress.transport_first = rtc.direct_api().transport_seq();
    }
}

/// True if a track sent its first packets after a quiet spell: str0m owes the viewer a sender report once told.
pub(crate) fn ends_quiet(viewer: &Viewer) -> bool {
    viewer.egress.as_ref().is_some_and(|e| e.ends_quiet)
}

/// A track's part, if its packets can be written here (see the module's doc).
fn track_egress(rtc: &mut Rtc, track: &Track, now: Instant) -> Option<TrackEgress> {
    let (order, mid_value, unnoted) = match &track.egress {
        Some(e) => (e.order, e.mid_value, e.unnoted),
        None => (ext_ids(rtc, track.mid)?.order(), MidValue::new(track.mid), nothing_sent(now)),
    };
    let mut api = rtc.direct_api();
    let stream = api.stream_tx_by_mid(track.mid, None)?;
    Some(TrackEgress {
        ssrc: *stream.ssrc(),
        order,
        mid_value,
        with_mid: !stream.remote_acked_ssrc(),
        quiet: stream.is_quiet(),
        unnoted,
    })
}

/// Nothing sent yet, at `now`.
fn nothing_sent(now: Instant) -> SentRtp {
    SentRtp {
        packets: 0,
        payload_bytes: 0,
        datagram_bytes: 0,
        last_seq_no: 0.into(),
        pt: 0.into(),
        rtp_time: 0,
        wallclock: now,
    }
}

/// The extension ids of the media section `mid`, if str0m would write its packets' extensions as [`write`] does.
fn ext_ids(rtc: &Rtc, mid: Mid) -> Option<ExtIds> {
    if mid.len() > ONE_BYTE_MAX_LEN {
        return None;
    }
    let mut ids = ExtIds::default();
    for (id, ext) in rtc.media(mid)?.remote_extmap().iter() {
        if id > ONE_BYTE_MAX_ID {
            return None;
        }
        match ext {
            Extension::AudioLevel => ids.audio_level = Some(id),
            Extension::VideoOrientation => ids.video_orientation = Some(id),
            Extension::RtpMid => ids.mid = Some(id),
            Extension::TransportSequenceNumber => ids.transport_seq = Some(id),
            // Written by str0m only with values deadsfu never gives (or none at all).
            Extension::TransmissionTimeOffset
            | Extension::PlayoutDelay
            | Extension::VideoContentType
            | Extension::VideoTiming
            | Extension::RtpStreamId
            | Extension::RepairedRtpStreamId
            | Extension::FrameMarking
            | Extension::ColorSpace
            | Extension::AbsoluteCaptureTime
            | Extension::UnknownUri(..) => {}
            // Abs-send-time, and what else str0m may fill in itself.
            _ => return None,
        }
    }
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(audio_level: Option<u8>, video_orientation: Option<u8>, mid: Option<(u8, Mid)>) -> TrackEgress {
        TrackEgress {
            ssrc: 0x1122_3344,
            order: ExtIds { audio_level, video_orientation, mid: mid.map(|(id, _)| id), transport_seq: None }.order(),
            mid_value: MidValue::new(mid.map_or(Mid::from("0"), |(_, m)| m)),
            with_mid: mid.is_some(),
            quiet: false,
            unnoted: nothing_sent(Instant::now()),
        }
    }

    fn header(seq: u64, audio_level: Option<(i8, bool)>, video_orientation: Option<u8>) -> Header {
        Header { pt: 111.into(), marker: true, seq, timestamp: 0xaabb_ccdd, audio_level, video_orientation }
    }

    #[test]
    fn headers_are_written_as_str0m_writes_them() {
        // Audio with its level (id 1) and the MID (id 4) while the SSRC is not acknowledged: id order, padded.
        let mut out = Vec::new();
        write_header(
            &track(Some(1), None, Some((4, Mid::from("0")))),
            &header(0x1_0203, Some((-37, true)), None),
            None,
            &mut out,
        );
        #[rustfmt::skip]
        let expected = [
            0x90, 0x80 | 111, 0x02, 0x03, 0xaa, 0xbb, 0xcc, 0xdd, 0x11, 0x22, 0x33, 0x44,
            0xbe, 0xde, 0x00, 0x01,
            0x10, 0x80 | 37, 0x40, b'0',
        ];
        assert_eq!(out, expected);
        // Video with its orientation on an id below the MID's, a two-byte MID: sorted by id, zero-padded.
        out.clear();
        write_header(&track(None, Some(3), Some((9, Mid::from("v1")))), &header(7, None, Some(2)), None, &mut out);
        assert_eq!(&out[12..], [0xbe, 0xde, 0x00, 0x02, 0x30, 0x02, 0x91, b'v', b'1', 0, 0, 0]);
        // Acknowledged, nothing to carry: the extension block is there and empty, as str0m writes it.
        out.clear();
        write_header(&track(Some(1), Some(3), None), &header(7, None, None), None, &mut out);
        assert_eq!(&out[12..], [0xbe, 0xde, 0x00, 0x00]);
        assert_eq!(out[0], 0x90, "version 2, extension bit");
        // The transport-wide sequence number (id 5 here) in its place among the others: its low 16 bits.
        out.clear();
        let mut tx = track(Some(1), None, Some((4, Mid::from("0"))));
        tx.order =
            ExtIds { audio_level: Some(1), video_orientation: None, mid: Some(4), transport_seq: Some(5) }.order();
        write_header(&tx, &header(7, Some((-20, false)), None), Some(0x3_fffe), &mut out);
        assert_eq!(&out[12..], [0xbe, 0xde, 0x00, 0x02, 0x10, 20, 0x40, b'0', 0x51, 0xff, 0xfe, 0]);
        // The longest: every extension, ids descending from the transport-wide number's, a MID of 16 bytes.
        out.clear();
        let mid = Mid::from("0123456789abcdef");
        let mut tx = track(Some(14), Some(13), Some((12, mid)));
        tx.order =
            ExtIds { audio_level: Some(14), video_orientation: Some(13), mid: Some(12), transport_seq: Some(11) }
                .order();
        write_header(&tx, &header(7, Some((-1, true)), Some(1)), Some(9), &mut out);
        assert_eq!(out.len(), HEADER_MAX);
        let mut expected = vec![0xbe, 0xde, 0x00, 0x06, 0xb1, 0x00, 0x09, 0xcf];
        expected.extend_from_slice(b"0123456789abcdef");
        expected.extend_from_slice(&[0xd0, 0x01, 0xe0, 0x81]);
        assert_eq!(&out[12..], expected);
    }

    #[test]
    fn the_iv_is_the_salt_xor_ssrc_rollover_counter_and_sequence_number() {
        let salt = [0x51, 0x75, 0x69, 0x64, 0x20, 0x70, 0x72, 0x6f, 0x20, 0x71, 0x75, 0x6f];
        let iv = iv(&salt, 0xcafe_babe, 0x1234);
        assert_eq!(iv, [0x51, 0x75, 0xa3, 0x9a, 0x9a, 0xce, 0x72, 0x6f, 0x20, 0x71, 0x67, 0x5b]);
        // The rollover counter is the extended sequence number's high bits.
        let rolled = super::iv(&[0; 12], 1, (5 << 16) | 9);
        assert_eq!(rolled, [0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 0, 9]);
    }
}
