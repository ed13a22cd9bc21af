//! The splicer: one per viewer per track, it turns the sequence numbers and timestamps of whatever source
//! the ring carries into one continuous stream for the viewer.
//!
//! Within one source (a publisher's SSRC in one writer session) the output follows the input with fixed
//! offsets, so loss and reordering on the publisher's path show through unchanged. At a source change (a new
//! publisher, a reconnect, a writer restart, later a room switch or the slate) the offsets are recomputed so
//! that the first packet of the new source gets the next sequence number and a timestamp that has advanced
//! with wall-clock time since the last packet sent: no gap, no duplicate, no jump.

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
    /// A cached GOP sent in a burst to a joining viewer: each new frame one tick after the previous one, so
    /// the decoder catches up at once instead of playing the GOP back in real time behind live.
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
    ns: u64,
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
                    Some(last) if pace == Pace::Replay => (last.seq + 1, last.ts_out.wrapping_add(1)),
                    Some(last) => {
                        let elapsed_ns = now_ns.saturating_sub(last.ns);
                        let ticks = (elapsed_ns as u128 * self.clock_rate as u128 / 1_000_000_000) as u32;
                        // At least one tick, so the new source's first frame is never stamped as the old one's.
                        (last.seq + 1, last.ts_out.wrapping_add(ticks.max(1)))
                    }
                };
                let m = Mapping { from, pace, seq_delta: out_seq.wrapping_sub(seq), ts_delta: out_ts.wrapping_sub(ts) };
                self.mapping = Some(m);
                m
            }
        };
        let seq_out = seq.wrapping_add(mapping.seq_delta);
        let ts_out = match (pace, self.last) {
            (Pace::Replay, Some(last)) if last.ts_in == ts => last.ts_out,
            (Pace::Replay, Some(last)) if last.from == from && seq_out > last.seq => last.ts_out.wrapping_add(1),
            _ => ts.wrapping_add(mapping.ts_delta),
        };
        if self.last.is_none_or(|l| seq_out > l.seq) {
            self.last = Some(Last { from, seq: seq_out, ts_in: ts, ts_out, ns: now_ns });
        }
        Spliced { seq: seq_out, timestamp: ts_out }
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
    fn replay_compresses_frames_then_live_resumes_the_real_spacing() {
        let mut s = Splicer::new(90_000, 0, 1000);
        // A cached GOP of three frames (the first in two packets), sent in a burst at t = 0.
        let r: Vec<Spliced> = [(10, 0), (11, 0), (12, 3000), (13, 6000)]
            .iter()
            .map(|&(seq, ts)| s.map(A, seq, ts, 0, Pace::Replay))
            .collect();
        assert_eq!(r.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(r.iter().map(|x| x.timestamp).collect::<Vec<_>>(), vec![1000, 1000, 1001, 1002]);
        // Live continues 33 ms later with the next frame: contiguous, and 33 ms of ticks later.
        let live = s.map(A, 14, 9000, 33 * MS, Pace::Live);
        assert_eq!(live, Spliced { seq: 4, timestamp: 1002 + 2970 });
        // From then on the source's own spacing.
        assert_eq!(s.map(A, 15, 12_000, 66 * MS, Pace::Live), Spliced { seq: 5, timestamp: 1002 + 2970 + 3000 });
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
}
