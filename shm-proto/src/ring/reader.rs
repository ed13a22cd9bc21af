//! Readers of a ring file.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};

use tracing::warn;

use super::layout::*;
use super::mapping::Mapping;
use super::record::{decode_codec, decode_layer, decode_meta, payload_len, CodecBytes, LayerBytes, MetaBytes};
use super::writer::{gop_entry_offset, seq_done, slot_offset};
use super::{
    CodecEntry, Geometry, LayerEntry, PacketMeta, RingError, RingStats, WriterState, GOP_INDEX_LEN, LAYOUT_MAJOR,
    LAYOUT_MINOR, MAGIC, MAX_CODECS, MAX_LAYERS, MAX_POSITION,
};

/// Attempts at a consistent copy of the codec table before concluding its writer died mid-update.
const CODECS_ATTEMPTS: usize = 1000;

/// What [`RingReader::read`] found at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A whole packet; its payload is `buf[..len]`.
    Packet { meta: PacketMeta, len: usize },
    /// The position has not been written yet (or is being written right now).
    NotYet,
    /// The position was overwritten, before or during the copy (or the slot is corrupt). Resync.
    Lapped,
}

/// A reader of a ring file: maps it and reads slots and header fields. Any number of them, in any processes.
///
/// It maps the file read-write because readers bump shared counters (keyframe requests, laps). Reading is
/// lock-free and never affects the writer.
pub struct RingReader {
    map: Mapping,
    path: PathBuf,
    dev: u64,
    ino: u64,
    geometry: Geometry,
    header_len: usize,
    version: (u16, u16),
}

impl RingReader {
    /// Maps the ring file at `path` after checking its magic, major version, geometry and length.
    pub fn open(path: &Path) -> Result<RingReader, RingError> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => RingError::NotFound,
            _ => RingError::Io(e),
        })?;
        let meta = file.metadata()?;
        let len = meta.len();
        let truncated = |needed: usize| RingError::Truncated { len, needed: needed as u64 };

        let mut bytes = [0u8; IDENTITY_LEN];
        let have = (len as usize).min(IDENTITY_LEN);
        if have < 8 {
            return Err(truncated(IDENTITY_LEN));
        }
        file.read_exact_at(&mut bytes[..have], 0).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => truncated(IDENTITY_LEN),
            _ => RingError::Io(e),
        })?;
        let id = Identity::decode(&bytes);
        if id.magic != MAGIC {
            return Err(RingError::BadMagic { found: id.magic });
        }
        if have < IDENTITY_LEN {
            return Err(truncated(IDENTITY_LEN));
        }
        if id.major != LAYOUT_MAJOR {
            return Err(RingError::VersionMismatch {
                found_major: id.major,
                found_minor: id.minor,
                supported_major: LAYOUT_MAJOR,
                supported_minor: LAYOUT_MINOR,
            });
        }
        let geometry = Geometry { slot_count: id.slot_count, slot_size: id.slot_size };
        geometry.validate()?;
        let header_len = id.header_len as usize;
        if !(HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len) || !header_len.is_multiple_of(64) {
            return Err(RingError::BadHeaderLen {
                found: id.header_len,
                min: HEADER_LEN as u32,
                max: MAX_HEADER_LEN as u32,
            });
        }
        let needed = geometry.file_len() - HEADER_LEN + header_len;
        if len < needed as u64 {
            return Err(truncated(needed));
        }
        let map = Mapping::new(&file, needed)?;
        // SYNC POINT M: pairs with the writer's release store of the magic, the last word it initialises.
        let magic = map.word(MAGIC_OFFSET).load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(RingError::BadMagic { found: magic });
        }
        Ok(RingReader {
            map,
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            geometry,
            header_len,
            version: (id.major, id.minor),
        })
    }

    /// The next position the writer will fill.
    pub fn head(&self) -> u64 {
        // SYNC POINT H: pairs with the writer's release store after completing slot head-1.
        self.map.word(HEAD_OFFSET).load(Ordering::Acquire)
    }

    /// Incremented by every writer that opens the file.
    pub fn epoch(&self) -> u64 {
        // Relaxed: informational; packets carry their own `source`.
        self.map.word(EPOCH_OFFSET).load(Ordering::Relaxed)
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Layout version of the file, `(major, minor)`, as it was when opened.
    pub fn layout_version(&self) -> (u16, u16) {
        self.version
    }

    /// The path this reader was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's last heartbeat, Unix milliseconds.
    pub fn heartbeat_unix_ms(&self) -> u64 {
        // Relaxed: a standalone value.
        self.map.word(HEARTBEAT_UNIX_MS_OFFSET).load(Ordering::Relaxed)
    }

    /// Process id of the last writer.
    pub fn writer_pid(&self) -> u64 {
        self.map.word(WRITER_PID_OFFSET).load(Ordering::Relaxed)
    }

    /// When the file was created, Unix milliseconds.
    pub fn created_unix_ms(&self) -> u64 {
        self.map.word(CREATED_UNIX_MS_OFFSET).load(Ordering::Relaxed)
    }

    /// `Closed` once the writer let go of the file in an orderly way. After seeing `Closed`, [`head`](Self::head)
    /// is final until a new writer opens the file.
    pub fn writer_state(&self) -> WriterState {
        // SYNC POINT W: pairs with the writer's release store of the state.
        match self.map.word(WRITER_STATE_OFFSET).load(Ordering::Acquire) {
            WRITER_STATE_LIVE => WriterState::Live,
            _ => WriterState::Closed,
        }
    }

    /// Whether this reader should reopen the path: the file was marked replaced, or another file (or none) is
    /// at the path now. Costs a `stat(2)`: call it on a timer, not per packet.
    pub fn is_replaced(&self) -> bool {
        // A truncated file: what is mapped reads zeros, or will fault (caught, see `sigbus`).
        if self.map.is_broken() {
            return true;
        }
        // SYNC POINT R: pairs with the release store of the replacing writer.
        if self.map.word(REPLACED_OFFSET).load(Ordering::Acquire) != 0 {
            return true;
        }
        match fs::metadata(&self.path) {
            Ok(m) => m.dev() != self.dev || m.ino() != self.ino || m.len() < self.map.len() as u64,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            // Cannot tell (permissions changed?): keep reading what we have.
            Err(_) => false,
        }
    }

    /// The newest indexed video keyframe still in the ring.
    pub fn latest_keyframe(&self) -> Option<u64> {
        let (found, n) = self.indexed_keyframes();
        n.checked_sub(1).map(|last| found[last])
    }

    /// Every indexed video keyframe still in the ring, oldest first.
    pub fn keyframes(&self) -> Vec<u64> {
        let (found, n) = self.indexed_keyframes();
        found[..n].to_vec()
    }

    /// The indexed keyframes still in the ring, oldest first: the first `n` of the array. Held in place, not
    /// allocated: a fanout worker asks for the newest at each turn.
    fn indexed_keyframes(&self) -> ([u64; GOP_INDEX_LEN], usize) {
        // SYNC POINT G: pairs with the writer's release store of GOP_COUNT after the entry.
        let count = self.map.word(GOP_COUNT_OFFSET).load(Ordering::Acquire);
        let first = count.saturating_sub(GOP_INDEX_LEN as u64);
        let mut entries = [0u64; GOP_INDEX_LEN];
        for (i, e) in (first..count).zip(entries.iter_mut()) {
            *e = self.map.word(gop_entry_offset(i)).load(Ordering::Relaxed);
        }
        // SYNC POINT G (end): pairs with the writer's release fence before an entry store; the reload below
        // then sees every GOP_COUNT value stored before any entry we copied.
        fence(Ordering::Acquire);
        let now = self.map.word(GOP_COUNT_OFFSET).load(Ordering::Relaxed);
        // While GOP_COUNT is `now`, the writer may be rewriting the entry of keyframe now - GOP_INDEX_SLOTS.
        let intact = now.saturating_add(1).saturating_sub(GOP_INDEX_SLOTS as u64).max(first);
        let head = self.head();
        let (mut found, mut n) = ([0u64; GOP_INDEX_LEN], 0);
        for i in intact..count {
            let pos = entries[(i - first) as usize];
            if pos < head && (n == 0 || pos > found[n - 1]) && self.is_readable(pos) {
                found[n] = pos;
                n += 1;
            }
        }
        (found, n)
    }

    /// Counts completed codec-table rewrites; compare with the last value seen to learn of a change cheaply.
    pub fn codecs_version(&self) -> u64 {
        self.map.word(CODECS_VERSION_OFFSET).load(Ordering::Acquire) / 2
    }

    /// A consistent copy of the codec table. Entries no correct writer could have written are skipped. Empty
    /// if the writer died in the middle of rewriting it (the next writer empties it).
    pub fn codecs(&self) -> Vec<CodecEntry> {
        let version = self.map.word(CODECS_VERSION_OFFSET);
        let mut table = vec![[0u8; CODEC_ENTRY_LEN]; MAX_CODECS];
        for _ in 0..CODECS_ATTEMPTS {
            // SYNC POINT C: pairs with the writer's release store of the even version.
            let before = version.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let stored = self.map.word(CODECS_COUNT_OFFSET).load(Ordering::Relaxed);
            let count = usize::try_from(stored).unwrap_or(usize::MAX).min(MAX_CODECS);
            for (i, entry) in table.iter_mut().enumerate().take(count) {
                self.map.load_bytes(CODEC_TABLE_OFFSET + i * CODEC_ENTRY_LEN, entry);
            }
            // SYNC POINT C (end): pairs with the writer's release fence after its odd version store.
            fence(Ordering::Acquire);
            if version.load(Ordering::Relaxed) != before {
                continue;
            }
            if stored > MAX_CODECS as u64 {
                warn!(path = %self.path.display(), stored, "ring codec table count out of range; reading {MAX_CODECS}");
            }
            return table[..count].iter().filter_map(|b| self.decode_codec(b)).collect();
        }
        warn!(path = %self.path.display(), "ring codec table stays mid-update; its writer probably died");
        Vec::new()
    }

    /// The number of rewrites of the layer table: a reader that keeps a copy reads it again when this changes.
    pub fn layers_version(&self) -> u64 {
        self.map.word(LAYERS_VERSION_OFFSET).load(Ordering::Acquire) / 2
    }

    /// A consistent copy of the layer table (empty in a file of minor 2, and when the room's publisher sends
    /// no simulcast). Entries no correct writer could have written are skipped.
    pub fn layers(&self) -> Vec<LayerEntry> {
        let version = self.map.word(LAYERS_VERSION_OFFSET);
        let mut table = [[0u8; LAYER_ENTRY_LEN]; MAX_LAYERS];
        for _ in 0..CODECS_ATTEMPTS {
            // SYNC POINT L: pairs with the writer's release store of the even version.
            let before = version.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let count = usize::try_from(self.map.word(LAYERS_COUNT_OFFSET).load(Ordering::Relaxed))
                .unwrap_or(usize::MAX)
                .min(MAX_LAYERS);
            for (i, entry) in table.iter_mut().enumerate().take(count) {
                self.map.load_bytes(LAYER_TABLE_OFFSET + i * LAYER_ENTRY_LEN, entry);
            }
            // SYNC POINT L (end): pairs with the writer's release fence after its odd version store.
            fence(Ordering::Acquire);
            if version.load(Ordering::Relaxed) != before {
                continue;
            }
            return table[..count].iter().filter_map(|b| self.decode_layer(b)).collect();
        }
        Vec::new()
    }

    /// Asks the writer for a ring of each of the room's layers (call about once a second while wanted): a
    /// reader that moves viewers between the layers by their links needs every layer at hand.
    pub fn want_layers(&self, now_unix_ms: u64) {
        // Relaxed: a standalone value, nothing is published with it.
        self.map.word(LAYERS_WANTED_UNIX_MS_OFFSET).fetch_max(now_unix_ms, Ordering::Relaxed);
    }

    /// Copies the packet at `pos` into `buf`, or says why not. See the slot protocol in the
    /// [module documentation](super).
    ///
    /// # Panics
    /// If `buf` is shorter than [`Geometry::max_payload`].
    pub fn read(&self, pos: u64, buf: &mut [u8]) -> ReadOutcome {
        let max = self.geometry.max_payload();
        assert!(buf.len() >= max, "ring read buffer of {} bytes, max_payload is {max}", buf.len());
        if pos >= MAX_POSITION {
            return ReadOutcome::NotYet;
        }
        let slot = slot_offset(self.header_len, self.geometry, pos);
        let seq = self.map.word(slot + SLOT_SEQ_OFFSET);
        let expected = seq_done(pos);
        // SYNC POINT S: pairs with the writer's release store of 2*pos+2.
        let mut found = seq.load(Ordering::Acquire);
        if found < expected {
            if pos >= self.head() {
                return ReadOutcome::NotYet;
            }
            // HEAD moved past pos after our first load (SYNC POINT H), so SEQ is at least 2*pos+2 now.
            found = seq.load(Ordering::Acquire);
        }
        if found != expected {
            return ReadOutcome::Lapped;
        }
        let mut meta: MetaBytes = [0; SLOT_META_LEN];
        self.map.load_bytes(slot + SLOT_ARRIVAL_UNIX_NS_OFFSET, &mut meta);
        // Possibly torn until validated: clamp before using it as a length.
        let len = (payload_len(&meta) as usize).min(max);
        self.map.load_bytes(slot + SLOT_PAYLOAD_OFFSET, &mut buf[..len]);
        // SYNC POINT S (end): pairs with the writer's release fence after its odd SEQ store; if we copied any
        // byte of a later position, the reload sees its SEQ.
        fence(Ordering::Acquire);
        if seq.load(Ordering::Relaxed) != expected {
            return ReadOutcome::Lapped;
        }
        let decoded = decode_meta(&meta).filter(|_| payload_len(&meta) as usize <= max);
        match decoded {
            Some(meta) => ReadOutcome::Packet { meta, len },
            None => {
                warn!(path = %self.path.display(), pos, "corrupt ring slot; treating it as overwritten");
                ReadOutcome::Lapped
            }
        }
    }

    /// Asks the writer's process for a keyframe (bumps the shared counter).
    /// The newest reader heartbeat, Unix milliseconds; 0 if no reader ever beat.
    pub fn reader_heartbeat_unix_ms(&self) -> u64 {
        // Relaxed: a standalone value, nothing is published with it.
        self.map.word(READER_HEARTBEAT_UNIX_MS_OFFSET).load(Ordering::Relaxed)
    }

    /// Tells the writer someone watches this ring (call about once a second while it does).
    pub fn heartbeat(&self, now_unix_ms: u64) {
        // Relaxed: a standalone value, nothing is published with it.
        self.map.word(READER_HEARTBEAT_UNIX_MS_OFFSET).fetch_max(now_unix_ms, Ordering::Relaxed);
    }

    pub fn request_keyframe(&self) {
        // Relaxed: a standalone counter.
        self.map.word(KEYFRAME_REQUESTS_OFFSET).fetch_add(1, Ordering::Relaxed);
    }

    /// Asks the writer to wake worker `worker` (on its wake socket) after each push, while it reads this ring.
    pub fn want_wake(&self, worker: u32) {
        // Relaxed: a standalone bit mask; a missed wake is covered by the reader's own slow poll.
        self.map.word(WAKE_MASK_OFFSET).fetch_or(1 << (worker % 64), Ordering::Relaxed);
    }

    /// The workers that asked for wake-ups: bit `k % 64` for worker `k`.
    pub fn wake_mask(&self) -> u64 {
        self.map.word(WAKE_MASK_OFFSET).load(Ordering::Relaxed)
    }

    /// Withdraws [`RingReader::want_wake`].
    pub fn unwant_wake(&self, worker: u32) {
        self.map.word(WAKE_MASK_OFFSET).fetch_and(!(1 << (worker % 64)), Ordering::Relaxed);
    }

    /// Reports that this reader was lapped (bumps the shared counter).
    pub fn note_lapped(&self) {
        self.map.word(LAPS_OFFSET).fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> RingStats {
        let word = |off| self.map.word(off).load(Ordering::Relaxed);
        RingStats {
            packets: word(PACKETS_OFFSET),
            bytes: word(BYTES_OFFSET),
            laps: word(LAPS_OFFSET),
            keyframe_requests: word(KEYFRAME_REQUESTS_OFFSET),
        }
    }

    /// Whether the slot of `pos` still holds it, complete.
    fn is_readable(&self, pos: u64) -> bool {
        let slot = slot_offset(self.header_len, self.geometry, pos);
        self.map.word(slot + SLOT_SEQ_OFFSET).load(Ordering::Acquire) == seq_done(pos)
    }

    fn decode_layer(&self, bytes: &LayerBytes) -> Option<LayerEntry> {
        decode_layer(bytes)
            .inspect_err(|reason| warn!(path = %self.path.display(), reason, "skipping corrupt ring layer entry"))
            .ok()
    }

    fn decode_codec(&self, bytes: &CodecBytes) -> Option<CodecEntry> {
        decode_codec(bytes)
            .inspect_err(|reason| warn!(path = %self.path.display(), reason, "skipping corrupt ring codec entry"))
            .ok()
    }
}
