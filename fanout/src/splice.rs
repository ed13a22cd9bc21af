//! The splicer: one per viewer per track, it turns the sequence numbers and timestamps of whatever source
//! the ring carries into one continuous stream for the viewer.
//!
//! Within one source (a publisher's SSRC in one writer session) the output follows the input with fixed
//! offsets, so loss and reordering on the publisher's path show through unchanged. At a source change (a new
//! publisher, a reconnect, a writer restart, later a room switch or the slate) the offsets are recomputed so
//! that the first packet of the new source gets the next sequence number and a timestamp that has advanced
//! with wall-clock time since the last frame sent started going out: no gap, no duplicate, no jump.

/// Identity of a source: the ring writer's session id and the publisher's SSRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceId {
    pub source: u32,
    pub ssrc: u32,
}

/// How a packet's timestamp is carried over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Live media: timestamps keep the source's spacing.
    Live,
    /// A cached GOP sent faster than real time to a joining viewer: each new frame stamped with the time that
    /// passed since the previous frame started going out (at least one tick), so the receiver plays each frame as it
    /// comes and catches up with live, and learns the same clock from the replay as from the live packets
    /// after it. (Frames stamped one tick apart would teach it a clock that barely moves: a browser then held
    /// the live frames after the replay for seconds, until it had learned the real one again.)
    Replay,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    from: SourceId,
    pace: Pace,
    seq_delta: u64,
    ts_delta: u32,
}

/// The packet sent last.
#[derive(Clone, Copy, Debug)]
struct Last {
    from: SourceId,
    seq: u64,
    ts_in: u32,
    ts_out: u32,
    /// When the first packet stamped `ts_out` went out: a frame's packets may leave over several milliseconds
    /// (paced), and the next frame's timestamp counts from its start.
    frame_ns: u64,
}

/// Output sequence number and timestamp for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spliced {
    /// Extended sequence number (str0m takes the extended form and derives the SRTP rollover counter from it).
    pub seq: u64,
    pub timestamp: u32,
}

#[derive(Clone, Debug)]
pub struct Splicer {
    clock_rate: u32,
    mapping: Option<Mapping>,
    /// The packet with the highest output sequence number so far.
    last: Option<Last>,
    first_seq: u64,
    first_ts: u32,
}

impl Splicer {
    /// A splicer for a track of `clock_rate` Hz whose output starts at `first_seq` and `first_ts`.
    pub fn new(clock_rate: u32, first_seq: u16, first_ts: u32) -> Splicer {
        Splicer { clock_rate, mapping: None, last: None, first_seq: first_seq as u64, first_ts }
    }

    /// Maps a packet with extended input sequence number `seq` and timestamp `ts` from `from`, sent at
    /// `now_ns` (any monotonic nanosecond clock).
    pub fn map(&mut self, from: SourceId, seq: u64, ts: u32, now_ns: u64, pace: Pace) -> Spliced {
        let mapping = match self.mapping {
            Some(m) if m.from == from && m.pace == pace => m,
            _ => {
                let (out_seq, out_ts) = match self.last {
                    None => (self.first_seq, self.first_ts),
                    // The rest of a frame whose first packets went out before the cut keeps their timestamp.
                    Some(last) if last.from == from && last.ts_in == ts => (last.seq + 1, last.ts_out),
                    Some(last) => (last.seq + 1, self.after(&last, now_ns)),
                };
                let m = Mapping { from, pace, seq_delta: out_seq.wrapping_sub(seq), ts_delta: out_ts.wrapping_sub(ts) };
                self.mapping = Some(m);
                m
            }
        };
        let seq_out = seq.wrapping_add(mapping.seq_delta);
        let ts_out = match (pace, self.last) {
            (Pace::Replay, Some(last)) if last.from == from && last.ts_in == ts => last.ts_out,
            (Pace::Replay, Some(last)) if last.from == from && seq_out > last.seq => self.after(&last, now_ns),
            _ => ts.wrapping_add(mapping.ts_delta),
        };
        if self.last.is_none_or(|l| seq_out > l.seq) {
            let frame_ns = self.last.filter(|l| l.ts_out == ts_out).map_or(now_ns, |l| l.frame_ns);
            self.last = Some(Last { from, seq: seq_out, ts_in: ts, ts_out, frame_ns });
        }
        Spliced { seq: seq_out, timestamp: ts_out }
    }

    /// The timestamp of a new frame sent at `now_ns` after `last`'s: the ticks of the time since that frame's
    /// first packet went out, at least one, so that it is never stamped as the frame before it.
    fn after(&self, last: &Last, now_ns: u64) -> u32 {
        let elapsed_ns = now_ns.saturating_sub(last.frame_ns);
        let ticks = (elapsed_ns as u128 * self.clock_rate as u128 / 1_000_000_000) as u32;
        last.ts_out.wrapping_add(ticks.max(1))
    }
}

/// The picture numbers of a VP8 or VP9 stream (VP8: RFC 7741 4.2, PictureID, TL0PICIDX, KEYIDX; VP9: RFC 9628
/// 4.2, PictureID and, in non-flexible mode, TL0PICIDX) carried over a source change as [`Splicer`] carries
/// sequence numbers and timestamps: within one source the output follows the input with fixed offsets; at a change
/// the new source's first picture (a keyframe: a viewer takes up a source at one) is numbered one past the last one
/// sent. A receiver finds a picture's references by these numbers; each simulcast layer, and each publisher,
/// numbers from its own random start, and a jump at a cut makes a receiver wait for the pictures in between,
/// stalling until its next keyframe.
#[derive(Clone, Copy, Debug, Default)]
pub struct PictureNumbers {
    /// The source the offsets are for, and the offsets of the three numbers.
    mapping: Option<(SourceId, [u16; 3])>,
    /// The newest of each number sent.
    last: [Option<u16>; 3],
}

/// The moduli of PictureID (15 bits; the 7-bit form is its low bits), TL0PICIDX and KEYIDX (VP8 only).
const PICTURE_MODULI: [u16; 3] = [1 << 15, 1 << 8, 1 << 5];

/// Where a payload descriptor's numbers are: each number's offset in the payload and value, whether the
/// PictureID is in its 15-bit form, and the byte KEYIDX shares with TID and Y (VP8's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PictureFields {
    at: [Option<(u8, u16)>; 3],
    long_picture_id: bool,
    keyidx_byte: u8,
}

/// The picture numbers of a VP8 or VP9 payload descriptor, read once per ring packet for all the viewers it goes
/// to; each viewer's [`PictureNumbers`] adds its own offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PictureDescriptor {
    /// `None` if the descriptor is cut short of what its flags announce.
    fields: Option<PictureFields>,
}

impl PictureDescriptor {
    pub fn read_vp8(payload: &[u8]) -> PictureDescriptor {
        PictureDescriptor { fields: vp8_fields(payload) }
    }

    pub fn read_vp9(payload: &[u8]) -> PictureDescriptor {
        PictureDescriptor { fields: vp9_fields(payload) }
    }
}

impl PictureFields {
    /// Reads the PictureID at `i` of a VP8 or VP9 descriptor, in either form (M bit set: 15 bits, else 7); the
    /// index past it, or `None` if the payload ends first.
    fn read_picture_id(&mut self, payload: &[u8], i: usize) -> Option<usize> {
        let high = *payload.get(i)?;
        self.long_picture_id = high & 0x80 != 0;
        let value = match self.long_picture_id {
            true => u16::from(high & 0x7f) << 8 | u16::from(*payload.get(i + 1)?),
            false => u16::from(high & 0x7f),
        };
        self.at[0] = Some((i as u8, value));
        Some(i + 1 + usize::from(self.long_picture_id))
    }
}

/// Reads the numbers' places from a VP8 payload descriptor (RFC 7741 4.2); `None` if it is cut short.
fn vp8_fields(payload: &[u8]) -> Option<PictureFields> {
    let mut fields = PictureFields::default();
    if payload.first()? & 0x80 == 0 {
        return Some(fields);
    }
    let x = *payload.get(1)?;
    let mut i = 2;
    if x & 0x80 != 0 {
        i = fields.read_picture_id(payload, i)?;
    }
    if x & 0x40 != 0 {
        fields.at[1] = Some((i as u8, u16::from(*payload.get(i)?)));
        i += 1;
    }
    if x & 0x10 != 0 {
        fields.keyidx_byte = *payload.get(i)?;
        fields.at[2] = Some((i as u8, u16::from(fields.keyidx_byte & 0x1f)));
    }
    Some(fields)
}

/// Reads the numbers' places from a VP9 payload descriptor (RFC 9628 4.2: I P L F B E V Z, then the PictureID if
/// I, in the same two forms as VP8's, then the layer indices if L and after them TL0PICIDX in non-flexible mode);
/// `None` if it is cut short.
fn vp9_fields(payload: &[u8]) -> Option<PictureFields> {
    let mut fields = PictureFields::default();
    let flags = *payload.first()?;
    let mut i = 1;
    if flags & 0x80 != 0 {
        i = fields.read_picture_id(payload, i)?;
    }
    if flags & 0x20 != 0 {
        payload.get(i)?;
        i += 1;
        if flags & 0x10 == 0 {
            fields.at[1] = Some((i as u8, u16::from(*payload.get(i)?)));
        }
    }
    Some(fields)
}

/// Bytes to write over a payload: at most four (its offset, the byte).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    len: u8,
    bytes: [(u8, u8); 4],
}

impl Rewrite {
    /// Nothing to write.
    pub const NONE: Rewrite = Rewrite { len: 0, bytes: [(0, 0); 4] };

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, at: u8, byte: u8) {
        self.bytes[usize::from(self.len)] = (at, byte);
        self.len += 1;
    }

    /// Writes the bytes over `payload`, the payload they were made for (or a copy of it).
    pub fn apply(&self, payload: &mut [u8]) {
        for &(at, byte) in &self.bytes[..usize::from(self.len)] {
            payload[usize::from(at)] = byte;
        }
    }
}

impl PictureNumbers {
    /// The rewrite of the numbers of a VP8 or VP9 packet from `from` about to be sent, whose descriptor is `read`.
    pub fn map(&mut self, from: SourceId, read: &PictureDescriptor) -> Rewrite {
        let Some(fields) = read.fields else { return Rewrite::NONE };
        let offsets = match self.mapping {
            Some((source, offsets)) if source == from => offsets,
            _ => {
                let mut offsets = [0; 3];
                for (k, offset) in offsets.iter_mut().enumerate() {
                    if let (Some(last), Some((_, value))) = (self.last[k], fields.at[k]) {
                        *offset = last.wrapping_add(1).wrapping_sub(value) % PICTURE_MODULI[k];
                    }
                }
                self.mapping = Some((from, offsets));
                offsets
            }
        };
        for (k, &(_, value)) in fields.at.iter().enumerate().filter_map(|(k, f)| Some((k, f.as_ref()?))) {
            let out = value.wrapping_add(offsets[k]) % PICTURE_MODULI[k];
            // The newest: ahead within half the number's range (reordered packets are older).
            let newer = self.last[k]
                .is_none_or(|l| (0..PICTURE_MODULI[k] / 2).contains(&(out.wrapping_sub(l) % PICTURE_MODULI[k])));
            if newer {
                self.last[k] = Some(out);
            }
        }
        Self::rewrite(fields, offsets)
    }

    /// The rewrite a resend of a packet from `from`, whose descriptor is `read`, gets: the numbers it went out
    /// with, if it is of the source being sent now (the numbers of an earlier one are not kept).
    pub fn resent(&self, from: SourceId, read: &PictureDescriptor) -> Option<Rewrite> {
        let (source, offsets) = self.mapping?;
        match (source == from, read.fields) {
            (true, Some(fields)) => Some(Self::rewrite(fields, offsets)),
            (true, None) => Some(Rewrite::NONE),
            (false, _) => None,
        }
    }

    fn rewrite(fields: PictureFields, offsets: [u16; 3]) -> Rewrite {
        let mut rewrite = Rewrite::NONE;
        if offsets == [0; 3] {
            return rewrite;
        }
        if let Some((at, value)) = fields.at[0] {
            let out = value.wrapping_add(offsets[0]) % PICTURE_MODULI[0];
            match fields.long_picture_id {
                true => {
                    rewrite.push(at, 0x80 | (out >> 8) as u8);
                    rewrite.push(at + 1, out as u8);
                }
                false => rewrite.push(at, (out & 0x7f) as u8),
            }
        }
        if let Some((at, value)) = fields.at[1] {
            rewrite.push(at, value.wrapping_add(offsets[1]) as u8);
        }
        if let Some((at, value)) = fields.at[2] {
            let out = value.wrapping_add(offsets[2]) % PICTURE_MODULI[2];
            rewrite.push(at, (fields.keyidx_byte & !0x1f) | out as u8);
        }
        rewrite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SourceId = SourceId { source: 1, ssrc: 100 };
    const B: SourceId = SourceId { source: 2, ssrc: 200 };
    const MS: u64 = 1_000_000;

    impl Splicer {
        fn map_live(&mut self, from: SourceId, seq: u64, ts: u32, now_ns: u64) -> Spliced {
            self.map(from, seq, ts, now_ns, Pace::Live)
        }
    }

    #[test]
    fn follows_one_source_with_fixed_offsets() {
        let mut s = Splicer::new(90_000, 10, 1000);
        assert_eq!(s.map_live(A, 5000, 7, 0), Spliced { seq: 10, timestamp: 1000 });
        assert_eq!(s.map_live(A, 5001, 3007, 33 * MS), Spliced { seq: 11, timestamp: 4000 });
        // Loss on the publisher's path shows as the same gap.
        assert_eq!(s.map_live(A, 5003, 3007, 34 * MS).seq, 13);
        // Reordering keeps each packet's own number.
        assert_eq!(s.map_live(A, 5002, 3007, 35 * MS).seq, 12);
    }

    #[test]
    fn source_change_is_contiguous_and_advances_with_wall_clock() {
        let mut s = Splicer::new(90_000, 100, 0);
        s.map_live(A, 1, 0, 0);
        let last = s.map_live(A, 2, 3000, 33 * MS);
        // The new source starts 100 ms later with unrelated numbers.
        let first_b = s.map_live(B, 40_000, 123_456_789, 133 * MS);
        assert_eq!(first_b.seq, last.seq + 1);
        assert_eq!(first_b.timestamp, last.timestamp + 9000);
        assert_eq!(
            s.map_live(B, 40_001, 123_459_789, 166 * MS),
            Spliced { seq: last.seq + 2, timestamp: last.timestamp + 12_000 }
        );
        // And back again.
        let back = s.map_live(A, 3, 6000, 200 * MS);
        assert_eq!(back.seq, last.seq + 3);
    }

    #[test]
    fn source_change_in_the_same_instant_still_advances_the_timestamp() {
        let mut s = Splicer::new(48_000, 0, 0);
        let a = s.map_live(A, 1, 0, 5 * MS);
        let b = s.map_live(B, 9, 9, 5 * MS);
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.timestamp, a.timestamp + 1);
    }

    #[test]
    fn input_and_output_wraparound() {
        // Input timestamps wrap; output follows without a jump.
        let mut s = Splicer::new(90_000, 65_534, u32::MAX - 1500);
        let a = s.map_live(A, 70_000, u32::MAX - 10, 0);
        let b = s.map_live(A, 70_001, 2990, 33 * MS);
        assert_eq!(a.timestamp, u32::MAX - 1500);
        assert_eq!(b.timestamp, (u32::MAX - 1500).wrapping_add(3001));
        // Output sequence numbers cross 65535 as extended numbers (the wire carries the low 16 bits).
        assert_eq!(a.seq, 65_534);
        assert_eq!(s.map_live(A, 70_002, 5990, 66 * MS).seq, 65_536);
        assert_eq!(s.map_live(A, 70_003, 8990, 99 * MS).seq as u16, 1);
        // A source change right at the wrap stays contiguous.
        let c = s.map_live(B, 3, 0, 132 * MS);
        assert_eq!(c.seq, 65_538);
    }

    #[test]
    fn a_replay_stamps_its_frames_by_the_time_they_go_out_and_live_goes_on_with_the_source_s_spacing() {
        let mut s = Splicer::new(90_000, 0, 1000);
        // A cached GOP of four frames, 100 ms of stream replayed in 27 ms: the first in two packets 4 ms apart,
        // the second and third sent in the same instant.
        let r: Vec<Spliced> = [(10, 0, 0), (11, 0, 4), (12, 3000, 16), (13, 6000, 16), (14, 9000, 27)]
            .iter()
            .map(|&(seq, ts, ms)| s.map(A, seq, ts, ms * MS, Pace::Replay))
            .collect();
        assert_eq!(r.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        // Each frame the ticks of the time since the frame before it started, at least one: 16 ms (not the 12
        // since its last packet), one tick, 11 ms.
        assert_eq!(r.iter().map(|x| x.timestamp).collect::<Vec<_>>(), vec![1000, 1000, 2440, 2441, 3431]);
        // Live continues 33 ms later with the next frame: contiguous, and 33 ms of ticks later.
        let live = s.map(A, 15, 12_000, 60 * MS, Pace::Live);
        assert_eq!(live, Spliced { seq: 5, timestamp: 3431 + 2970 });
        // From then on the source's own spacing.
        assert_eq!(s.map(A, 16, 15_000, 93 * MS, Pace::Live), Spliced { seq: 6, timestamp: 3431 + 2970 + 3000 });
    }

    #[test]
    fn a_replay_after_a_cut_is_stamped_by_the_time_since_the_last_frame_started() {
        let mut s = Splicer::new(90_000, 0, 0);
        // A live frame of two packets, 6 ms apart.
        s.map_live(A, 100, 50_000, 0);
        let live = s.map_live(A, 101, 50_000, 6 * MS);
        // A switch to another room 20 ms after that frame started: its replay's keyframe, then its next frame 2 ms
        // after.
        let key = s.map(B, 7, 123_456, 20 * MS, Pace::Replay);
        assert_eq!(key, Spliced { seq: live.seq + 1, timestamp: live.timestamp + 1800 });
        let next = s.map(B, 8, 126_456, 22 * MS, Pace::Replay);
        assert_eq!(next, Spliced { seq: key.seq + 1, timestamp: key.timestamp + 180 });
    }

    #[test]
    fn a_frame_split_across_the_end_of_a_replay_keeps_one_timestamp() {
        let mut s = Splicer::new(90_000, 0, 0);
        s.map(A, 10, 0, 0, Pace::Replay);
        let head = s.map(A, 11, 3000, 0, Pace::Replay);
        // The second packet of the frame at 3000 arrives live.
        let tail = s.map(A, 12, 3000, 5 * MS, Pace::Live);
        assert_eq!(tail, Spliced { seq: head.seq + 1, timestamp: head.timestamp });
    }

    /// A VP8 payload: descriptor with a 15-bit PictureID, TL0PICIDX and TID (KEYIDX 5 with `key`), one byte of
    /// frame after it.
    fn vp8(picture_id: u16, tl0: u8, tid: u8, key: bool) -> Vec<u8> {
        let x = 0x80 | 0x40 | 0x20 | if key { 0x10 } else { 0 };
        vec![0x90, x, 0x80 | (picture_id >> 8) as u8, picture_id as u8, tl0, tid << 6 | if key { 5 } else { 0 }, 0x9d]
    }

    /// What a receiver reads from `payload` once `rewrite` is written over it: PictureID, TL0PICIDX, KEYIDX.
    fn numbers(payload: &[u8], rewrite: Rewrite) -> [Option<u16>; 3] {
        let mut p = payload.to_vec();
        rewrite.apply(&mut p);
        vp8_fields(&p).expect("a descriptor").at.map(|f| f.map(|(_, v)| v))
    }

    #[test]
    fn vp8_picture_numbers_go_on_from_the_last_sent_across_a_source_change() {
        let mut n = PictureNumbers::default();
        // The first source goes out as it is.
        let a = [vp8(32_766, 254, 0, true), vp8(32_767, 254, 1, true), vp8(0, 255, 0, true)];
        for p in &a {
            assert_eq!(n.map(A, &PictureDescriptor::read_vp8(p)), Rewrite::NONE);
        }
        // Another layer: its keyframe, then a frame of two packets, numbered on from the last sent, wrapping.
        let b = [vp8(1234, 7, 0, true), vp8(1235, 7, 2, true), vp8(1235, 7, 2, true), vp8(1236, 8, 0, true)];
        let out: Vec<_> = b.iter().map(|p| numbers(p, n.map(B, &PictureDescriptor::read_vp8(p)))).collect();
        assert_eq!(
            out,
            [
                [Some(1), Some(0), Some(6)],
                [Some(2), Some(0), Some(6)],
                [Some(2), Some(0), Some(6)],
                [Some(3), Some(1), Some(6)]
            ]
        );
        // The bytes around the numbers are the packet's own: the descriptor's flags, TID and Y, the frame.
        let mut p = b[1].clone();
        n.map(B, &PictureDescriptor::read_vp8(&b[1])).apply(&mut p);
        assert_eq!((p[0], p[1], p[5] & 0xe0, p[6]), (b[1][0], b[1][1], b[1][5] & 0xe0, b[1][6]));
        // A reordered packet of the source keeps its own place: the next cut follows the newest.
        assert_eq!(numbers(&b[1], n.map(B, &PictureDescriptor::read_vp8(&b[1])))[0], Some(2));
        assert_eq!(numbers(&a[0], n.map(A, &PictureDescriptor::read_vp8(&a[0]))), [Some(4), Some(2), Some(7)]);
    }

    #[test]
    fn a_vp8_resend_gets_the_numbers_its_packet_went_out_with_or_none_once_the_source_changed() {
        let mut n = PictureNumbers::default();
        n.map(A, &PictureDescriptor::read_vp8(&vp8(10, 1, 0, false)));
        let b = vp8(500, 60, 0, false);
        let sent = n.map(B, &PictureDescriptor::read_vp8(&b));
        assert_eq!(n.resent(B, &PictureDescriptor::read_vp8(&b)), Some(sent));
        assert_eq!(numbers(&b, sent)[0], Some(11));
        // From the source before the change: not resent with numbers that are no longer its own.
        assert_eq!(n.resent(A, &PictureDescriptor::read_vp8(&vp8(10, 1, 0, false))), None);
    }

    #[test]
    fn a_short_picture_id_keeps_its_form_and_a_cut_short_descriptor_is_left_alone() {
        let mut n = PictureNumbers::default();
        n.map(A, &PictureDescriptor::read_vp8(&vp8(300, 0, 0, false)));
        // 7-bit PictureID 5 (M bit clear), no TL0PICIDX: numbered 301 within 7 bits, the length unchanged.
        let short = [0x90, 0x80, 0x05, 0x9d];
        let rewrite = n.map(B, &PictureDescriptor::read_vp8(&short));
        let mut p = short.to_vec();
        rewrite.apply(&mut p);
        assert_eq!(p, [0x90, 0x80, (301 & 0x7f) as u8, 0x9d]);
        // A descriptor cut short, or none at all: nothing written.
        for p in [&[0x90, 0xc0, 0x81][..], &[0x90][..], &[][..], &[0x10, 0x9d][..]] {
            assert_eq!(n.map(SourceId { source: 9, ssrc: 9 }, &PictureDescriptor::read_vp8(p)), Rewrite::NONE);
        }
    }

    /// A VP9 payload (RFC 9628 4.2): descriptor with a 15-bit PictureID, the layer indices (TID 1, SID 0) and in
    /// non-flexible mode TL0PICIDX `tl0`; in flexible mode (`tl0` none) one reference index; one byte of frame.
    fn vp9(picture_id: u16, tl0: Option<u8>) -> Vec<u8> {
        let (pid_high, pid_low) = (0x80 | (picture_id >> 8) as u8, picture_id as u8);
        match tl0 {
            // I L B, non-flexible: PictureID, layer indices, TL0PICIDX.
            Some(tl0) => vec![0x80 | 0x20 | 0x08, pid_high, pid_low, 1 << 5, tl0, 0x83],
            // I P L F B, flexible: PictureID, layer indices, one P_DIFF (no TL0PICIDX).
            None => vec![0x80 | 0x40 | 0x20 | 0x10 | 0x08, pid_high, pid_low, 1 << 5, 1 << 1, 0x83],
        }
    }

    /// What a receiver reads from a VP9 `payload` once `rewrite` is written over it: PictureID, TL0PICIDX.
    fn vp9_numbers(payload: &[u8], rewrite: Rewrite) -> [Option<u16>; 2] {
        let mut p = payload.to_vec();
        rewrite.apply(&mut p);
        let at = vp9_fields(&p).expect("a descriptor").at.map(|f| f.map(|(_, v)| v));
        assert_eq!(at[2], None, "VP9 has no KEYIDX");
        [at[0], at[1]]
    }

    #[test]
    fn vp9_picture_numbers_go_on_from_the_last_sent_across_a_source_change() {
        let mut n = PictureNumbers::default();
        let a = [vp9(32_766, Some(254)), vp9(32_767, Some(255))];
        for p in &a {
            assert_eq!(n.map(A, &PictureDescriptor::read_vp9(p)), Rewrite::NONE);
        }
        // Another publisher's keyframe and next picture: on from the last sent, wrapping.
        let b = [vp9(1234, Some(7)), vp9(1235, Some(8))];
        let out: Vec<_> = b.iter().map(|p| vp9_numbers(p, n.map(B, &PictureDescriptor::read_vp9(p)))).collect();
        assert_eq!(out, [[Some(0), Some(0)], [Some(1), Some(1)]]);
        // The flags, the layer indices and the frame are the packet's own.
        let mut p = b[1].clone();
        n.map(B, &PictureDescriptor::read_vp9(&b[1])).apply(&mut p);
        assert_eq!((p[0], p[3], p[5]), (b[1][0], b[1][3], b[1][5]));
        // Flexible mode has no TL0PICIDX: the PictureID alone goes on, the reference index is left as it is.
        let c = vp9(77, None);
        let rewrite = n.map(SourceId { source: 3, ssrc: 300 }, &PictureDescriptor::read_vp9(&c));
        assert_eq!(vp9_numbers(&c, rewrite), [Some(2), None]);
        let mut p = c.clone();
        rewrite.apply(&mut p);
        assert_eq!(p[4], c[4]);
        // A descriptor cut short, or none of the numbers: nothing written.
        for p in [&[0xa8, 0x81][..], &[0xa8, 0x80, 0x01, 0x20][..], &[][..], &[0x08, 0x83][..]] {
            assert_eq!(n.map(SourceId { source: 9, ssrc: 9 }, &PictureDescriptor::read_vp9(p)), Rewrite::NONE);
        }
    }
}
