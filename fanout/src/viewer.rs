//! A viewer as a worker holds it: its tracks and their numbering, its payload types for the room's codecs,
//! where its video stands, and the delivery of one ring packet to it.

use std::sync::Arc;
use std::time::Instant;

use deadsfu_media::codec;
use deadsfu_media::env::Random;
use deadsfu_media::host::Session;
use deadsfu_media::outbox::Outbox;
use shm_proto::ring::{Codec, CodecEntry, MediaKind, PacketMeta, RingCursor};
use shm_proto::{RoomName, SessionId};
use str0m::format::CodecConfig;
use str0m::media::{Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite, VideoOrientation};

use crate::egress::{self, Egress, Header, TrackEgress};
use crate::feed::{CodecTable, Moment, ReplayCredit};
use crate::layers::LayerChoice;
use crate::splice::{Pace, PictureDescriptor, PictureNumbers, Rewrite, SourceId, Splicer};

/// One outgoing track of a viewer.
pub(crate) struct Track {
    pub(crate) mid: Mid,
    /// Where its numbering starts (drawn when the viewer joins): first sequence number and timestamp.
    pub(crate) first: (u16, u32),
    /// Made at its first packet, when the clock rate is known.
    pub(crate) splicer: Option<Splicer>,
    /// The picture numbers of its VP8 and VP9 packets, carried over a change of source as the splicer carries the
    /// rest.
    pub(crate) pictures: PictureNumbers,
    /// What was sent, for resends (video): made at the first packet.
    pub(crate) sent: Option<Box<SentLog>>,
    /// What its packets are written with past str0m, once the session has keys ([`egress`]).
    pub(crate) egress: Option<TrackEgress>,
    /// The viewer's payload type of the ring payload type it was last asked for ([`Track::pt`]).
    pt: PtMemo,
}

/// A track's last answer from the viewer's [`PtMap`]: the ring payload type and codec table version asked for,
/// and the viewer's payload type for them. A track's packets are mostly of one codec, so a packet finds its
/// payload type beside the rest of its track's state rather than in another part of the viewer.
#[derive(Clone, Copy)]
struct PtMemo {
    version: u64,
    ring_pt: u8,
    pt: Option<Pt>,
}

impl Track {
    pub(crate) fn new(mid: Mid, random: &mut Random) -> Track {
        Track {
            mid,
            first: ((random.u32() % 16_384) as u16, random.u32()),
            splicer: None,
            pictures: PictureNumbers::default(),
            sent: None,
            egress: None,
            pt: PtMemo { version: u64::MAX, ring_pt: 0, pt: None },
        }
    }

    /// The viewer's payload type (from `pts`) for ring payload type `ring_pt` of `table`, if it negotiated that
    /// codec; asked again of `pts` only when the payload type or the table's version changed since the last call.
    pub(crate) fn pt(&mut self, pts: &mut PtMap, table: &CodecTable, ring_pt: u8) -> Option<Pt> {
        let memo = &mut self.pt;
        if memo.version != table.version || memo.ring_pt != ring_pt {
            *memo = PtMemo { version: table.version, ring_pt, pt: pts.get(table, ring_pt) };
        }
        memo.pt
    }
}

/// Packets a viewer's video track can resend: the newest [`SENT_LOG`] sequence numbers and the ring position,
/// timestamp and time each was sent with. A resend reads the packet from the ring (or the room's recent payloads)
/// again, so a viewer keeps 16 bytes per packet rather than a copy of it, and a packet sent costs it one write
/// into this small table: four packets to a cache line.
pub(crate) struct SentLog([Slot; SENT_LOG]);

/// How many sent packets a video track remembers: with [`RESEND_AGE`](crate::fanout), the bound of what a
/// NACK can get resent. 128 packets are 0.85 s at 150 packets/s (1.3 Mbit/s of ~1100-byte packets), three tries
/// at a 250 ms round trip.
pub(crate) const SENT_LOG: usize = 128;

/// What was sent as one packet, as [`SentLog::get`] gives it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sent {
    /// The viewer's (extended) sequence number.
    pub(crate) seq: u64,
    pub(crate) pos: u64,
    pub(crate) timestamp: u32,
    /// When it was sent: milliseconds of the worker's clock ([`Moment::ms`]), wrapping.
    pub(crate) sent_ms: u32,
}

impl Sent {
    /// Milliseconds since it was sent, at `at`.
    pub(crate) fn age_ms(&self, at: Moment) -> u32 {
        at.ms().wrapping_sub(self.sent_ms)
    }
}

/// A [`Sent`] in its log: the sequence number without the low bits its slot says, the ring position's low 32 bits
/// (a position is read back against the room's live cursor, never 2^32 packets ahead of what a log holds).
#[derive(Clone, Copy)]
struct Slot {
    /// `seq / SENT_LOG`; `u32::MAX` for none (a sequence number that high is never reached).
    seq_high: u32,
    pos_low: u32,
    timestamp: u32,
    sent_ms: u32,
}

impl SentLog {
    fn new() -> Box<SentLog> {
        Box::new(SentLog([Slot { seq_high: u32::MAX, pos_low: 0, timestamp: 0, sent_ms: 0 }; SENT_LOG]))
    }

    fn record(&mut self, sent: Sent) {
        self.0[sent.seq as usize % SENT_LOG] = Slot {
            seq_high: (sent.seq / SENT_LOG as u64) as u32,
            pos_low: sent.pos as u32,
            timestamp: sent.timestamp,
            sent_ms: sent.sent_ms,
        };
    }

    /// What was sent as `seq`, if it is still remembered, its ring position taken as the newest at or before
    /// `newest_pos` (the room's live cursor: nothing the viewer was sent lies past it).
    pub(crate) fn get(&self, seq: u64, newest_pos: u64) -> Option<Sent> {
        let slot = self.0[seq as usize % SENT_LOG];
        if slot.seq_high == u32::MAX || u64::from(slot.seq_high) != seq / SENT_LOG as u64 {
            return None;
        }
        let behind = (newest_pos as u32).wrapping_sub(slot.pos_low);
        let pos = newest_pos.checked_sub(u64::from(behind))?;
        Some(Sent { seq, pos, timestamp: slot.timestamp, sent_ms: slot.sent_ms })
    }
}

/// A packet read from a room's ring: its position, what the ring says of it, its payload, and for VP8 and VP9 its
/// payload descriptor's picture numbers.
pub(crate) struct RingPacket {
    pub(crate) pos: u64,
    pub(crate) meta: PacketMeta,
    pub(crate) payload: Arc<[u8]>,
    pub(crate) pictures: Option<PictureDescriptor>,
}

impl RingPacket {
    pub(crate) fn new(pos: u64, meta: PacketMeta, payload: Arc<[u8]>, codecs: &CodecTable) -> RingPacket {
        let pictures = match codecs.get(meta.pt).map(|e| e.codec).filter(|_| meta.kind == MediaKind::Video) {
            Some(Codec::Vp8) => Some(PictureDescriptor::read_vp8(&payload)),
            Some(Codec::Vp9) => Some(PictureDescriptor::read_vp9(&payload)),
            _ => None,
        };
        RingPacket { pos, meta, payload, pictures }
    }
}

/// Where a viewer's video stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VideoChoice {
    /// The source being forwarded.
    pub(crate) source: u32,
    /// The ring payload type of that source being forwarded (a slate may carry several codecs).
    pub(crate) ring_pt: u8,
}

/// Ring payload types a viewer's [`PtMap`] remembers: more than a room's codecs and its slate's.
const PT_SLOTS: usize = 8;

/// A viewer's payload type for each of a codec table's: which of the room's codecs it negotiated, as what. A
/// packet asks its track ([`Track::pt`]), which asks here only when its codec or the table changed.
pub(crate) struct PtMap {
    pub(crate) negotiated: CodecConfig,
    /// Ring payload type to the viewer's, for the first [`PT_SLOTS`] looked up: a room has a handful of codecs,
    /// and a short list held in place is faster per packet than a hash map or a list elsewhere on the heap.
    map: [(u8, Option<Pt>); PT_SLOTS],
    len: usize,
    /// The table version the map was made for.
    version: u64,
}

impl PtMap {
    pub(crate) fn new(negotiated: CodecConfig) -> PtMap {
        PtMap { negotiated, map: [(0, None); PT_SLOTS], len: 0, version: u64::MAX }
    }

    /// The viewer's payload type for ring payload type `ring_pt` of `table`, if it negotiated that codec.
    pub(crate) fn get(&mut self, table: &CodecTable, ring_pt: u8) -> Option<Pt> {
        if self.version != table.version {
            self.len = 0;
            self.version = table.version;
        }
        if let Some((_, pt)) = self.map[..self.len].iter().find(|(r, _)| *r == ring_pt) {
            return *pt;
        }
        let pt = table.get(ring_pt).and_then(|e| self.negotiated.match_params(codec::params(e))).map(|p| p.pt());
        // Past the slots (a table of more codecs than any room has) it is looked up each time.
        if self.len < PT_SLOTS {
            self.map[self.len] = (ring_pt, pt);
            self.len += 1;
        }
        pt
    }
}

pub struct Viewer {
    pub(crate) id: SessionId,
    pub(crate) room: RoomName,
    pub(crate) connected: bool,
    pub(crate) audio: Option<Track>,
    pub(crate) video: Option<Track>,
    pub(crate) video_choice: Option<VideoChoice>,
    /// Replaying the cached GOP of its room up to the feed's live position.
    pub(crate) replay: Option<Replay>,
    pub(crate) pts: PtMap,
    /// The session's keys and path for packets written past str0m ([`egress`]).
    pub(crate) egress: Option<Egress>,
    /// str0m may have made a sender report due since [`owes_report`] last asked: a packet went out through its
    /// own send path (`send_rtp_now`, a resend), or packets that ended a quiet spell were counted into it.
    pub(crate) may_owe_report: bool,
    /// It gets a bandwidth estimate (transport-cc), as [`crate::fanout::Fanout::with_estimation`] says for its
    /// room when it joined.
    pub(crate) estimated: bool,
    /// What its bandwidth estimate says of its link.
    pub(crate) estimate: LinkEstimate,
    /// Its choice among its room's simulcast layers.
    pub(crate) layer: LayerChoice,
}

/// What a viewer's bandwidth estimate says of its link.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LinkEstimate {
    /// What the link carries, bits a second, once the estimate has come down.
    link: Option<u64>,
    /// The estimate str0m last gave.
    last: u64,
}

impl LinkEstimate {
    /// Takes a new bandwidth estimate (bits a second). It says what the link carries only once it has come down:
    /// the viewer's feedback showed delay or loss. While it only rises it is still climbing from the start value
    /// it was given (to what the session has sent, and by probes), and says nothing of the link's limit.
    pub(crate) fn note(&mut self, bps: u64) {
        if self.link.is_some() || bps < self.last {
            self.link = Some(bps);
        }
        self.last = bps;
    }

    /// What the link carries, bits a second, if the estimate has said.
    pub(crate) fn link(&self) -> Option<u64> {
        self.link
    }
}

/// A viewer's replay of its room's cached GOP: where it is, and how much it may send now.
pub(crate) struct Replay {
    pub(crate) cursor: RingCursor,
    pub(crate) credit: ReplayCredit,
}

/// Sends one ring packet to one viewer: numbered in its track, in its payload type, protected with its
/// session's key and written straight into `out`, with no queue, no poll of the session and no allocation:
/// by [`egress::write`] from what the worker keeps of the session, or, for a session that path does not
/// serve (see [`egress`]), by str0m's `send_rtp_now`. True if it went out.
pub(crate) fn deliver(
    session: &mut Session<Viewer>,
    codecs: &CodecTable,
    packet: &RingPacket,
    at: Moment,
    pace: Pace,
    out: &mut dyn Outbox,
) -> bool {
    let (viewer, rtc) = (&mut session.app, &mut session.rtc);
    let meta = &packet.meta;
    // While its GOP replay runs (a second or two, paced to the link), a viewer gets live audio and the replay's
    // video: live video joins where the replay ends.
    let replaying = viewer.replay.is_some() && meta.kind == MediaKind::Video;
    if !viewer.connected || (pace == Pace::Live && replaying) {
        return false;
    }
    let track = match meta.kind {
        MediaKind::Video => viewer.video.as_mut(),
        MediaKind::Audio => viewer.audio.as_mut(),
    };
    let Some(track) = track else { return false };
    let Some(pt) = track.pt(&mut viewer.pts, codecs, meta.pt) else { return false };
    if meta.kind == MediaKind::Video {
        let current = viewer.video_choice.filter(|c| c.source == meta.source);
        match current {
            Some(c) if c.ring_pt != meta.pt => return false,
            Some(_) => {}
            // A new source (or the first): taken up at one of its keyframes only.
            None if meta.keyframe => viewer.video_choice = Some(VideoChoice { source: meta.source, ring_pt: meta.pt }),
            None => return false,
        }
    }
    let (first_seq, first_ts) = track.first;
    // The clock rate is looked up once, at the track's first packet, not for every packet.
    let splicer = track.splicer.get_or_insert_with(|| {
        let clock_rate = match meta.kind {
            MediaKind::Video => 90_000,
            MediaKind::Audio => codecs.get(meta.pt).map_or(48_000, |e| e.clock_rate),
        };
        Splicer::new(clock_rate, first_seq, first_ts)
    });
    let from = SourceId { source: meta.source, ssrc: meta.ssrc };
    let spliced = splicer.map(from, meta.seq, meta.timestamp, at.ns, pace);
    // Only a VP8 or VP9 video packet has a descriptor: its picture numbers are carried over source changes.
    let rewrite = match &packet.pictures {
        Some(read) => track.pictures.map(from, read),
        None => Rewrite::NONE,
    };
    let mut sent = false;
    out.write(&mut |buf| {
        let path = match (&mut viewer.egress, &mut track.egress) {
            (Some(egress), Some(tx)) => {
                let header = Header {
                    pt,
                    marker: meta.marker,
                    seq: spliced.seq,
                    timestamp: spliced.timestamp,
                    audio_level: meta.audio_level.zip(meta.voice_activity),
                    video_orientation: meta.video_orientation.map(|o| VideoOrientation::from(o) as u8),
                };
                egress::write(egress, tx, &header, &packet.payload, &rewrite, at.now, buf)
            }
            _ => {
                let write =
                    rtp_write(pt, spliced.seq, spliced.timestamp, at, meta, &rewritten(&packet.payload, &rewrite));
                let path = rtc.direct_api().send_rtp_now(track.mid, None, write, at.now, buf);
                viewer.may_owe_report |= path.is_some();
                path
            }
        };
        sent = path.is_some();
        path
    });
    if sent && meta.kind == MediaKind::Video {
        let log = track.sent.get_or_insert_with(SentLog::new);
        log.record(Sent { seq: spliced.seq, pos: packet.pos, timestamp: spliced.timestamp, sent_ms: at.ms() });
    }
    if sent && session.app.egress.as_ref().is_some_and(Egress::transport_full) {
        egress::note_sent(&mut session.rtc, &mut session.app, at.now);
    }
    sent
}

/// True if packets just sent to a viewer made a sender report due: the first of a track after a pause (its
/// streams send no reports while they send nothing; see [`crate::fanout`]). The session must then be polled,
/// which [`deliver`], sending without a poll, does not do. Packets written past str0m are counted into it
/// first if they end a pause. Asked of every viewer of a room after each of its turns, it reads str0m's answer
/// (a cache line of the session no packet touches) only when something since the last ask may have changed it
/// ([`Viewer::may_owe_report`]); a report that was due before had its poll asked for then.
pub(crate) fn owes_report(session: &mut Session<Viewer>, now: Instant) -> bool {
    if egress::ends_quiet(&session.app) {
        egress::note_sent(&mut session.rtc, &mut session.app, now);
    }
    std::mem::take(&mut session.app.may_owe_report) && session.rtc.direct_api().sender_report_due()
}

/// Resends what a viewer's video track sent as `seq`, as `packet` (read again from the ring at the position it
/// was sent from). True if it went out (str0m refuses one over the viewer's resend budget).
pub(crate) fn resend(
    session: &mut Session<Viewer>,
    codecs: &CodecTable,
    sent: Sent,
    packet: &RingPacket,
    at: Moment,
    out: &mut dyn Outbox,
) -> bool {
    let (viewer, rtc) = (&mut session.app, &mut session.rtc);
    let Some(pt) = viewer.pts.get(codecs, packet.meta.pt) else { return false };
    let Some(track) = viewer.video.as_ref() else { return false };
    let rewrite = match &packet.pictures {
        // Its picture numbers as it went out; a packet of a source sent before the last change is not resent.
        Some(read) => {
            match track.pictures.resent(SourceId { source: packet.meta.source, ssrc: packet.meta.ssrc }, read) {
                Some(rewrite) => rewrite,
                None => return false,
            }
        }
        None => Rewrite::NONE,
    };
    let mid = track.mid;
    let payload = rewritten(&packet.payload, &rewrite);
    let mut write = Some(rtp_write(pt, sent.seq, sent.timestamp, at, &packet.meta, &payload));
    let mut resent = false;
    // str0m numbers the resend from the session's transport-wide counter: what was numbered past it goes first.
    egress::note_sent(rtc, viewer, at.now);
    out.write(&mut |buf| {
        let path = rtc.direct_api().send_resend_now(mid, None, sent.seq.into(), write.take()?, at.now, buf);
        resent = path.is_some();
        viewer.may_owe_report |= resent;
        path
    });
    egress::renumber(rtc, viewer);
    resent
}

/// `payload` with `rewrite` written over it: a copy if there is anything to write (str0m's send path takes the
/// payload whole; the path past it writes over its own copy).
fn rewritten(payload: &Arc<[u8]>, rewrite: &Rewrite) -> Arc<[u8]> {
    if rewrite.is_empty() {
        return payload.clone();
    }
    let mut copy = payload.to_vec();
    rewrite.apply(&mut copy);
    copy.into()
}

/// A ring packet as a viewer gets it: its payload type, sequence number and timestamp.
fn rtp_write(pt: Pt, seq: u64, timestamp: u32, at: Moment, meta: &PacketMeta, payload: &Arc<[u8]>) -> RtpWrite {
    let ext = ExtensionValues {
        audio_level: meta.audio_level,
        voice_activity: meta.voice_activity,
        video_orientation: meta.video_orientation.map(VideoOrientation::from),
        ..Default::default()
    };
    RtpWrite::new(pt, seq.into(), timestamp, at.now, payload.clone())
        .marker(meta.marker)
        .ext_vals(ext)
        .nackable(meta.kind == MediaKind::Video)
}

/// The RTP header extensions offered to viewers: what a forwarder passes on (audio level, video orientation),
/// the MID, and with `estimate` transport-wide sequence numbers, whose feedback the viewer's bandwidth estimate
/// reads. Abs-send-time (the older, receiver-side estimate's) is left out.
pub(crate) fn viewer_extensions(estimate: bool) -> str0m::rtp::ExtensionMap {
    use str0m::rtp::Extension;
    let mut map = str0m::rtp::ExtensionMap::empty();
    map.set(1, Extension::AudioLevel);
    if estimate {
        map.set(3, Extension::TransportSequenceNumber);
    }
    map.set(4, Extension::RtpMid);
    map.set(13, Extension::VideoOrientation);
    map
}

/// What a viewer gets of a room whose ring carries `codecs`.
#[derive(Debug, PartialEq)]
pub(crate) enum Fit {
    /// Every kind it asked for, in a codec it negotiated; or a kind the room has no publisher for yet, which
    /// flows once one sends it.
    Plays,
    /// Some kinds, not these: the room's publisher does not send them, or only in codecs the viewer did not
    /// offer. They are answered inactive.
    Without(Vec<MediaKind>),
    /// Nothing: of every kind it asked for, the room has none or only codecs the viewer did not offer.
    Nothing(String),
}

/// Matches a viewer's offer (its negotiated codecs and its media sections, `true` for video) to a room's codec
/// table. A room without a publisher (no codecs, or only the slate's) fits every kind: the publisher to come
/// may send it. With the `slate` on, a room always has video: the slate plays while its publisher sends none.
pub(crate) fn fit(negotiated: &CodecConfig, codecs: &[CodecEntry], sections: &[(Mid, bool)], slate: bool) -> Fit {
    let published = codecs.iter().any(|e| !e.slate);
    let mut unplayable = Vec::new();
    let mut reasons = Vec::new();
    let mut asked = 0;
    for kind in [MediaKind::Video, MediaKind::Audio] {
        if !sections.iter().any(|(_, video)| *video == (kind == MediaKind::Video)) {
            continue;
        }
        asked += 1;
        let room: Vec<&CodecEntry> = codecs.iter().filter(|e| e.kind == kind).collect();
        let kind_name = if kind == MediaKind::Video { "video" } else { "audio" };
        if room.is_empty() {
            // The slate's codecs come into the table once the room is watched, after this viewer is taken.
            let slate_will_play = slate && kind == MediaKind::Video;
            if published && !slate_will_play {
                reasons.push(format!("no {kind_name}: the room's publisher sends none"));
                unplayable.push(kind);
            }
            continue;
        }
        if room.iter().any(|e| negotiated.match_params(codec::params(e)).is_some()) {
            continue;
        }
        let mut names: Vec<&str> = room.iter().map(|e| e.codec.name()).collect();
        names.dedup();
        reasons.push(format!("no {kind_name} codec of the room ({})", names.join(", ")));
        unplayable.push(kind);
    }
    match unplayable.len() {
        0 => Fit::Plays,
        n if n == asked => Fit::Nothing(format!("the offer gets nothing: {}", reasons.join("; "))),
        _ => Fit::Without(unplayable),
    }
}

#[cfg(test)]
mod tests {
    use deadsfu_media::codec;
    use shm_proto::ring::{Codec, CodecEntry, MediaKind};
    use str0m::format::CodecConfig;

    use deadsfu_media::env::Random;
    use str0m::media::Mid;

    use super::{LinkEstimate, PtMap, Sent, SentLog, Track, PT_SLOTS, SENT_LOG};
    use crate::feed::CodecTable;

    #[test]
    fn a_viewer_s_payload_types_follow_the_room_s_table_past_the_slots_and_across_versions() {
        let opus = CodecEntry::new(111, MediaKind::Audio, Codec::Opus, 48_000, 2, "minptime=10;useinbandfec=1");
        let vp8 = CodecEntry::new(96, MediaKind::Video, Codec::Vp8, 90_000, 0, "");
        // The viewer offered Opus as 109 and VP8 as 120.
        let offered = [CodecEntry { pt: 109, ..opus.clone() }, CodecEntry { pt: 120, ..vp8.clone() }];
        let mut map = PtMap::new(CodecConfig::new_from_payload_params(offered.iter().map(codec::params).collect()));
        // A table of more payload types than the map holds: VP8 under many of them, then Opus.
        let mut entries: Vec<CodecEntry> =
            (0..PT_SLOTS as u8 + 2).map(|i| CodecEntry { pt: 96 + i, ..vp8.clone() }).collect();
        entries.push(opus.clone());
        let table = CodecTable { entries, version: 1 };
        for _ in 0..2 {
            for i in 0..PT_SLOTS as u8 + 2 {
                assert_eq!(map.get(&table, 96 + i).map(|p| *p), Some(120), "ring pt {}", 96 + i);
            }
            assert_eq!(map.get(&table, 111).map(|p| *p), Some(109));
            assert_eq!(map.get(&table, 50), None, "not in the table");
        }
        // A new version of the table: 111 is VP8 now.
        let table = CodecTable { entries: vec![CodecEntry { pt: 111, ..vp8 }], version: 2 };
        assert_eq!(map.get(&table, 111).map(|p| *p), Some(120));
        assert_eq!(map.get(&table, 96), None);
    }

    #[test]
    fn a_track_asks_for_its_payload_type_anew_when_the_codec_or_the_table_changes() {
        let vp8 = CodecEntry::new(96, MediaKind::Video, Codec::Vp8, 90_000, 0, "");
        let vp9 = CodecEntry::new(98, MediaKind::Video, Codec::Vp9, 90_000, 0, "profile-id=0");
        // The viewer offered VP8 as 120, not VP9.
        let offered = [CodecEntry { pt: 120, ..vp8.clone() }];
        let mut pts = PtMap::new(CodecConfig::new_from_payload_params(offered.iter().map(codec::params).collect()));
        let mut track = Track::new(Mid::from("1"), &mut Random::Seeded(7));
        let table = CodecTable { entries: vec![vp8.clone(), vp9.clone()], version: 1 };
        assert_eq!(track.pt(&mut pts, &table, 96).map(|p| *p), Some(120));
        assert_eq!(track.pt(&mut pts, &table, 98).map(|p| *p), None, "VP9 was not negotiated");
        assert_eq!(track.pt(&mut pts, &table, 96).map(|p| *p), Some(120));
        // The same ring payload type in a new table: VP9 now.
        let table = CodecTable { entries: vec![CodecEntry { pt: 96, ..vp9 }], version: 2 };
        assert_eq!(track.pt(&mut pts, &table, 96).map(|p| *p), None);
        // And VP8 again.
        let table = CodecTable { entries: vec![vp8], version: 3 };
        assert_eq!(track.pt(&mut pts, &table, 96).map(|p| *p), Some(120));
    }

    #[test]
    fn an_estimate_says_what_the_link_carries_once_it_has_come_down() {
        let mut e = LinkEstimate::default();
        // The start value, then the climb of probes: nothing of the link yet.
        for bps in [1_000_000, 1_800_000, 2_600_000, 2_600_000] {
            e.note(bps);
            assert_eq!(e.link(), None, "at {bps}");
        }
        // Delay or loss: it comes down, and from then on every estimate is the link's, up or down.
        e.note(2_100_000);
        assert_eq!(e.link(), Some(2_100_000));
        e.note(2_400_000);
        assert_eq!(e.link(), Some(2_400_000));
    }

    #[test]
    fn the_sent_log_gives_back_what_was_sent_across_a_wrap_of_the_ring_position_s_low_bits() {
        let mut log = SentLog::new();
        let first_pos = (1u64 << 32) - 3;
        for i in 0..SENT_LOG as u64 + 10 {
            log.record(Sent {
                seq: 70_000 + i,
                pos: first_pos + 2 * i,
                timestamp: 90 * i as u32,
                sent_ms: 5 + i as u32,
            });
        }
        let newest = first_pos + 2 * (SENT_LOG as u64 + 10);
        // The newest SENT_LOG are there, with their positions whole past 2^32; what they displaced is not.
        for i in 10..SENT_LOG as u64 + 10 {
            let want =
                Sent { seq: 70_000 + i, pos: first_pos + 2 * i, timestamp: 90 * i as u32, sent_ms: 5 + i as u32 };
            assert_eq!(log.get(70_000 + i, newest), Some(want), "packet {i}");
        }
        for i in 0..10 {
            assert_eq!(log.get(70_000 + i, newest), None, "packet {i} was displaced");
        }
        // A number that shares a slot with one sent but is not it, a number never sent, and an empty log.
        assert_eq!(log.get(70_000 + 20 + SENT_LOG as u64, newest), None);
        assert_eq!(log.get(70_000 + 20 - SENT_LOG as u64, newest), None);
        assert_eq!(SentLog::new().get(0, newest), None);
        assert_eq!(SentLog::new().get(u64::from(u32::MAX) * SENT_LOG as u64, newest), None);
    }
}
