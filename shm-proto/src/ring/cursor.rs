//! Walking a ring in order.

use super::reader::{ReadOutcome, RingReader};
use super::PacketMeta;

/// Sans-IO cursor that walks a ring in position order and resyncs when lapped.
///
/// It holds nothing but positions and counters; every call is given the reader to look at. Positions it
/// returns strictly increase: none twice, and none skipped except across a lap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingCursor {
    pos: u64,
    laps: u64,
    lapped: bool,
    last: Option<u64>,
}

impl RingCursor {
    /// A cursor whose next packet is the one at `pos`.
    pub fn at(pos: u64) -> RingCursor {
        RingCursor { pos, laps: 0, lapped: false, last: None }
    }

    /// A cursor for a viewer joining now: at the newest keyframe still in the ring (replay from the start of
    /// the current GOP), or at head if there is none.
    pub fn join(reader: &RingReader) -> RingCursor {
        RingCursor::at(reader.latest_keyframe().unwrap_or_else(|| reader.head()))
    }

    /// The position [`next`](Self::next) will try.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Position of the packet the last `Some` from [`next`](Self::next) came from.
    pub fn last_position(&self) -> Option<u64> {
        self.last
    }

    /// Times this cursor was lapped.
    pub fn laps(&self) -> u64 {
        self.laps
    }

    /// Moves the cursor forward to `pos`; never backwards. A reader that fell too far behind the writer skips
    /// to a newer keyframe with it.
    pub fn skip_to(&mut self, pos: u64) {
        self.pos = self.pos.max(pos);
    }

    /// Whether a lap happened since the last call; clears the flag. After a lap the next packet is the resync
    /// point (a keyframe, unless none was left in the ring).
    pub fn take_lapped(&mut self) -> bool {
        std::mem::take(&mut self.lapped)
    }

    /// The next packet into `buf` (at least [`max_payload`](super::Geometry::max_payload) bytes), or `None` if
    /// caught up.
    ///
    /// When lapped: [`RingReader::note_lapped`], counts one lap, jumps to the newest keyframe still in the
    /// ring (or to head if none) and returns the packet there. If that one is overwritten too before it is
    /// copied, the cursor goes to head.
    pub fn next(&mut self, reader: &RingReader, buf: &mut [u8]) -> Option<(PacketMeta, usize)> {
        let mut lapped_here = false;
        // At most: the current position, the keyframe, head.
        for _ in 0..3 {
            match reader.read(self.pos, buf) {
                ReadOutcome::Packet { meta, len } => {
                    self.last = Some(self.pos);
                    self.pos = self.pos.saturating_add(1);
                    return Some((meta, len));
                }
                ReadOutcome::NotYet => return None,
                ReadOutcome::Lapped => {
                    let keyframe = if lapped_here { None } else { reader.latest_keyframe() };
                    if !lapped_here {
                        lapped_here = true;
                        self.laps += 1;
                        self.lapped = true;
                        reader.note_lapped();
                    }
                    let target = keyframe.filter(|&k| k > self.pos).unwrap_or_else(|| reader.head());
                    // Never backwards, even on a corrupt file.
                    self.pos = target.max(self.pos.saturating_add(1));
                    tracing::debug!(pos = self.pos, laps = self.laps, "ring reader lapped; resynced");
                }
            }
        }
        None
    }
}
