//! The single writer of a ring file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::{debug, trace, warn};

use super::layout::*;
use super::mapping::Mapping;
use super::record::{decode_meta, encode_codec, encode_layer, encode_meta, MetaBytes};
use super::{
    CodecEntry, Geometry, LayerEntry, MediaKind, PacketMeta, RingError, RingStats, FMTP_MAX, LAYOUT_MAJOR,
    LAYOUT_MINOR, MAGIC, MAX_CODECS, MAX_LAYERS, MAX_POSITION,
};

/// Rounds of open/lock/create before giving up on a path other writers keep changing under us.
const CREATE_ATTEMPTS: usize = 8;

/// Permissions of a new ring file: the writer's user and group may map it read-write (readers bump counters).
const FILE_MODE: u32 = 0o660;

/// The one writer of a ring file. See the [module documentation](super) for the protocol.
///
/// Holds an exclusive `flock(2)` on the file for its whole life; a second writer on the same file gets
/// [`RingError::WriterBusy`]. Dropping it marks the file closed and releases the lock; the file stays.
pub struct RingWriter {
    map: Mapping,
    geometry: Geometry,
    /// Mirrors of header words only this writer changes, so the hot path loads nothing from shared memory.
    head: u64,
    epoch: u64,
    gop_count: u64,
    codecs_version: u64,
    layers_version: u64,
    packets: u64,
    bytes: u64,
    /// False only when a test simulates a crash.
    close_on_drop: bool,
    /// Last field, so the lock is released after the mapping is gone.
    _lock: Flock<File>,
}

impl RingWriter {
    /// Creates the ring file at `path`, or reopens the one there.
    ///
    /// - No file: a new one, initialised under a temporary name in the same directory and linked into place,
    ///   so readers never see a half-initialised header. Epoch 1, head 0.
    /// - A file of this major version and `geometry`: reused. Its head is kept, so positions stay monotonic
    ///   across writer restarts; the epoch is incremented; a slot a dead writer left half-written is rewritten
    ///   by the next [`push`](Self::push); a codec table it left half-written is emptied.
    /// - Any other file: replaced by a new one (atomic rename), and the old one is marked replaced (and closed,
    ///   if its layout is known) so its readers reopen the path.
    ///
    /// Fails with [`RingError::WriterBusy`] while another writer holds the file, in any process.
    pub fn create(path: &Path, geometry: Geometry, now_unix_ms: u64) -> Result<RingWriter, RingError> {
        geometry.validate()?;
        for _ in 0..CREATE_ATTEMPTS {
            let file = match OpenOptions::new().read(true).write(true).open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match Self::create_new(path, geometry, now_unix_ms, Publish::Link)? {
                        Some(writer) => return Ok(writer),
                        // Another writer linked a file in between: go and lock that one.
                        None => continue,
                    }
                }
                Err(e) => return Err(e.into()),
            };
            let file = lock(file)?;
            if !is_file_at(&file, path)? {
                // Replaced or removed between our open and our lock: start over with what is there now.
                continue;
            }
            let len = file.metadata()?.len();
            let identity = read_identity(&file, len)?;
            match identity {
                Some(id) if is_compatible(&id, len, geometry) && read_word(&file, HEAD_OFFSET)? < MAX_POSITION => {
                    return Self::reuse(file, geometry, now_unix_ms);
                }
                _ => {
                    debug!(path = %path.display(), ?identity, "replacing ring file of another version or geometry");
                    let writer = Self::create_new(path, geometry, now_unix_ms, Publish::Rename)?
                        .expect("rename replaces whatever is at the path");
                    retire(&file, identity.as_ref(), len);
                    return Ok(writer);
                }
            }
        }
        Err(RingError::WriterBusy { pid: 0 })
    }

    /// True once the file was truncated under this writer (caught as `SIGBUS`, see `sigbus`): what it writes
    /// goes to private memory no reader sees. Make a new writer for the path.
    pub fn is_broken(&self) -> bool {
        self.map.is_broken()
    }

    /// Epoch of this writer: 1 for a new file, one more than the previous writer's for a reused one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next position [`push`](Self::push) will write.
    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Replaces the codec table. Readers see either the old or the new table, never a mix.
    pub fn set_codecs(&mut self, codecs: &[CodecEntry]) -> Result<(), RingError> {
        if codecs.len() > MAX_CODECS {
            return Err(RingError::TooManyCodecs { count: codecs.len(), max: MAX_CODECS });
        }
        if let Some(e) = codecs.iter().find(|e| e.fmtp.len() > FMTP_MAX) {
            return Err(RingError::FmtpTooLong { pt: e.pt, len: e.fmtp.len(), max: FMTP_MAX });
        }
        let version = self.map.word(CODECS_VERSION_OFFSET);
        version.store(self.codecs_version + 1, Ordering::Relaxed);
        // SYNC POINT C (begin): a reader that copies any entry written below also sees the odd version when it
        // reloads it after its acquire fence, and retries.
        fence(Ordering::Release);
        for (i, entry) in codecs.iter().enumerate() {
            self.map.store_bytes(CODEC_TABLE_OFFSET + i * CODEC_ENTRY_LEN, &encode_codec(entry));
        }
        self.map.word(CODECS_COUNT_OFFSET).store(codecs.len() as u64, Ordering::Relaxed);
        self.codecs_version += 2;
        // SYNC POINT C: publishes the table to readers that load this even version with acquire.
        version.store(self.codecs_version, Ordering::Release);
        debug!(count = codecs.len(), version = self.codecs_version, "codec table written");
        Ok(())
    }

    /// Replaces the layer table. Readers see either the old or the new table, never a mix.
    pub fn set_layers(&mut self, layers: &[LayerEntry]) -> Result<(), RingError> {
        if layers.len() > MAX_LAYERS {
            return Err(RingError::TooManyLayers { count: layers.len(), max: MAX_LAYERS });
        }
        if let Some(e) = layers.iter().find(|e| crate::room::check_rid(&e.rid).is_err()) {
            return Err(RingError::BadRid { rid: e.rid.clone() });
        }
        let version = self.map.word(LAYERS_VERSION_OFFSET);
        version.store(self.layers_version + 1, Ordering::Relaxed);
        // SYNC POINT L (begin): as SYNC POINT C, for the layer table.
        fence(Ordering::Release);
        for (i, entry) in layers.iter().enumerate() {
            self.map.store_bytes(LAYER_TABLE_OFFSET + i * LAYER_ENTRY_LEN, &encode_layer(entry));
        }
        self.map.word(LAYERS_COUNT_OFFSET).store(layers.len() as u64, Ordering::Relaxed);
        self.layers_version += 2;
        // SYNC POINT L: publishes the table to readers that load this even version with acquire.
        version.store(self.layers_version, Ordering::Release);
        Ok(())
    }

    /// The newest time a reader wanted a ring for each of the room's layers ([`RingReader::want_layers`]),
    /// Unix milliseconds; 0 if none ever did.
    ///
    /// [`RingReader::want_layers`]: super::RingReader::want_layers
    pub fn layers_wanted_unix_ms(&self) -> u64 {
        // Relaxed: a standalone value, nothing is published with it.
        self.map.word(LAYERS_WANTED_UNIX_MS_OFFSET).load(Ordering::Relaxed)
    }

    /// Writes one packet at [`head`](Self::head) and returns its position.
    pub fn push(&mut self, meta: &PacketMeta, payload: &[u8]) -> Result<u64, RingError> {
        let max = self.geometry.max_payload();
        if payload.len() > max {
            return Err(RingError::PayloadTooLarge { len: payload.len(), max });
        }
        let pos = self.head;
        let slot = slot_offset(HEADER_LEN, self.geometry, pos);
        let seq = self.map.word(slot + SLOT_SEQ_OFFSET);
        seq.store(seq_writing(pos), Ordering::Relaxed);
        // SYNC POINT S (begin): orders the odd SEQ before the data stores, so a reader that copied any of the
        // new data sees SEQ changed when it reloads it after its acquire fence.
        fence(Ordering::Release);
        let len = u32::try_from(payload.len()).expect("payload length checked against max_payload above");
        self.map.store_bytes(slot + SLOT_ARRIVAL_UNIX_NS_OFFSET, &encode_meta(meta, len));
        self.map.store_bytes(slot + SLOT_PAYLOAD_OFFSET, payload);
        // SYNC POINT S: publishes metadata and payload to a reader that loads SEQ == 2*pos+2 with acquire.
        seq.store(seq_done(pos), Ordering::Release);
        self.head = pos + 1;
        // SYNC POINT H: a reader that loads HEAD > pos with acquire then sees SEQ >= 2*pos+2.
        self.map.word(HEAD_OFFSET).store(self.head, Ordering::Release);
        self.packets += 1;
        self.bytes += payload.len() as u64;
        self.map.word(PACKETS_OFFSET).store(self.packets, Ordering::Relaxed);
        self.map.word(BYTES_OFFSET).store(self.bytes, Ordering::Relaxed);
        if meta.kind == MediaKind::Video && meta.keyframe {
            self.index_keyframe(pos);
        }
        trace!(pos, len, pt = meta.pt, keyframe = meta.keyframe, "ring push");
        Ok(pos)
    }

    /// Records the wall-clock time, so readers can tell a live writer from a dead one.
    pub fn heartbeat(&mut self, now_unix_ms: u64) {
        // Relaxed: a standalone value, nothing is published with it.
        self.map.word(HEARTBEAT_UNIX_MS_OFFSET).store(now_unix_ms, Ordering::Relaxed);
    }

    /// The keyframe-request counter readers bump. Compare with the value seen last time.
    pub fn keyframe_requests(&self) -> u64 {
        // Relaxed: a standalone counter, nothing is published with it.
        self.map.word(KEYFRAME_REQUESTS_OFFSET).load(Ordering::Relaxed)
    }

    /// The newest reader heartbeat, Unix milliseconds; 0 if no reader ever beat.
    pub fn reader_heartbeat_unix_ms(&self) -> u64 {
        // Relaxed: a standalone value, nothing is published with it.
        self.map.word(READER_HEARTBEAT_UNIX_MS_OFFSET).load(Ordering::Relaxed)
    }

    /// The workers that want a wake-up after a push: bit `k % 64` for worker `k`.
    pub fn wake_mask(&self) -> u64 {
        // Relaxed: a standalone bit mask, nothing is published with it.
        self.map.word(WAKE_MASK_OFFSET).load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> RingStats {
        RingStats {
            packets: self.packets,
            bytes: self.bytes,
            laps: self.map.word(LAPS_OFFSET).load(Ordering::Relaxed),
            keyframe_requests: self.keyframe_requests(),
        }
    }

    fn index_keyframe(&mut self, pos: u64) {
        let i = self.gop_count;
        // SYNC POINT G (begin): orders the previous GOP_COUNT store before this entry store, so a reader that
        // sees the new entry also sees GOP_COUNT >= i when it reloads it after its acquire fence, and drops
        // the index this entry overwrote.
        fence(Ordering::Release);
        self.map.word(gop_entry_offset(i)).store(pos, Ordering::Relaxed);
        self.gop_count = i + 1;
        // SYNC POINT G: publishes the entry to readers that load GOP_COUNT with acquire.
        self.map.word(GOP_COUNT_OFFSET).store(self.gop_count, Ordering::Release);
    }

    /// Initialises a new file under a temporary name and publishes it at `path`. `None` if `how` is
    /// [`Publish::Link`] and another file appeared at `path` first.
    fn create_new(
        path: &Path,
        geometry: Geometry,
        now_unix_ms: u64,
        how: Publish,
    ) -> Result<Option<RingWriter>, RingError> {
        let tmp = temp_path(path)?;
        let result = Self::init_at(&tmp, path, geometry, now_unix_ms, how);
        if let Err(e) = fs::remove_file(&tmp) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(path = %tmp.display(), error = %e, "cannot remove temporary ring file");
            }
        }
        result
    }

    fn init_at(
        tmp: &Path,
        path: &Path,
        geometry: Geometry,
        now_unix_ms: u64,
        how: Publish,
    ) -> Result<Option<RingWriter>, RingError> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(FILE_MODE).open(tmp)?;
        file.set_len(geometry.file_len() as u64)?;
        allocate(&file, geometry.file_len())?;
        let map = Mapping::new(&file, geometry.file_len())?;
        let identity = Identity {
            magic: MAGIC,
            major: LAYOUT_MAJOR,
            minor: LAYOUT_MINOR,
            header_len: HEADER_LEN as u32,
            slot_count: geometry.slot_count,
            slot_size: geometry.slot_size,
            replaced: 0,
            created_unix_ms: now_unix_ms,
        }
        .encode();
        // Everything but the magic first; the file is zero-filled, so the rest of the header starts at 0.
        map.store_bytes(MAGIC_OFFSET + 8, &identity[8..]);
        map.word(EPOCH_OFFSET).store(1, Ordering::Relaxed);
        map.word(WRITER_PID_OFFSET).store(u64::from(std::process::id()), Ordering::Relaxed);
        map.word(HEARTBEAT_UNIX_MS_OFFSET).store(now_unix_ms, Ordering::Relaxed);
        map.word(WRITER_STATE_OFFSET).store(WRITER_STATE_LIVE, Ordering::Relaxed);
        // SYNC POINT M: the magic goes last, so a reader that loads it with acquire sees a whole header. (The
        // file is not visible at `path` yet either; this keeps the rule true for any way it gets published.)
        map.word(MAGIC_OFFSET).store(MAGIC, Ordering::Release);
        // Lock before publishing, so there is no moment the file is at `path` without its writer's lock.
        let lock = lock(file)?;
        match how {
            Publish::Link => match fs::hard_link(tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
                Err(e) => return Err(e.into()),
            },
            Publish::Rename => fs::rename(tmp, path)?,
        }
        debug!(path = %path.display(), ?geometry, "ring file created");
        Ok(Some(RingWriter {
            map,
            geometry,
            head: 0,
            epoch: 1,
            gop_count: 0,
            codecs_version: 0,
            layers_version: 0,
            packets: 0,
            bytes: 0,
            close_on_drop: true,
            _lock: lock,
        }))
    }

    /// Takes over a compatible file whose previous writer is gone (we hold its lock).
    fn reuse(file: Flock<File>, geometry: Geometry, now_unix_ms: u64) -> Result<RingWriter, RingError> {
        allocate(&file, geometry.file_len())?;
        let map = Mapping::new(&file, geometry.file_len())?;
        let word = |off| map.word(off);

        let mut codecs_version = word(CODECS_VERSION_OFFSET).load(Ordering::Relaxed);
        if codecs_version % 2 == 1 {
            warn!("previous ring writer died while writing the codec table; emptying it");
            word(CODECS_COUNT_OFFSET).store(0, Ordering::Relaxed);
            codecs_version += 1;
            // SYNC POINT C: readers that load this version with acquire see the emptied table.
            word(CODECS_VERSION_OFFSET).store(codecs_version, Ordering::Release);
        }

        let mut head = word(HEAD_OFFSET).load(Ordering::Relaxed);
        let seq = word(slot_offset(HEADER_LEN, geometry, head) + SLOT_SEQ_OFFSET).load(Ordering::Relaxed);
        if seq == seq_done(head) {
            // It died between completing the slot and moving HEAD. Readers may already have read this packet,
            // so it must stay what it is: publish it rather than overwrite it.
            debug!(pos = head, "publishing the last slot of the previous ring writer");
            head += 1;
            // SYNC POINT H
            word(HEAD_OFFSET).store(head, Ordering::Release);
        } else if seq == seq_writing(head) {
            debug!(pos = head, "previous ring writer died mid-slot; the next push rewrites it");
        }

        let mut writer = RingWriter {
            geometry,
            head,
            epoch: word(EPOCH_OFFSET).load(Ordering::Relaxed).wrapping_add(1),
            gop_count: word(GOP_COUNT_OFFSET).load(Ordering::Relaxed),
            codecs_version,
            // Whatever table the previous writer left (its layers, or half of a rewrite) is its: emptied below.
            layers_version: word(LAYERS_VERSION_OFFSET).load(Ordering::Relaxed) & !1,
            packets: word(PACKETS_OFFSET).load(Ordering::Relaxed),
            bytes: word(BYTES_OFFSET).load(Ordering::Relaxed),
            close_on_drop: true,
            map,
            _lock: file,
        };
        writer.index_unindexed_keyframe();
        writer.set_layers(&[]).expect("an empty layer table fits");

        let map = &writer.map;
        // This writer's minor version is what the header now promises.
        let version_word = map.word(LAYOUT_MAJOR_OFFSET);
        let mut bytes = version_word.load(Ordering::Relaxed).to_le_bytes();
        let at = LAYOUT_MINOR_OFFSET - LAYOUT_MAJOR_OFFSET;
        bytes[at..at + 2].copy_from_slice(&LAYOUT_MINOR.to_le_bytes());
        version_word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        map.word(EPOCH_OFFSET).store(writer.epoch, Ordering::Relaxed);
        map.word(WRITER_PID_OFFSET).store(u64::from(std::process::id()), Ordering::Relaxed);
        map.word(HEARTBEAT_UNIX_MS_OFFSET).store(now_unix_ms, Ordering::Relaxed);
        // SYNC POINT W: a reader that loads LIVE with acquire sees this writer's epoch, pid and heartbeat.
        map.word(WRITER_STATE_OFFSET).store(WRITER_STATE_LIVE, Ordering::Release);
        debug!(epoch = writer.epoch, head = writer.head, "ring file reopened");
        Ok(writer)
    }

    /// A writer that died between completing a keyframe's slot and indexing it left it out of the GOP index.
    fn index_unindexed_keyframe(&mut self) {
        let Some(pos) = self.head.checked_sub(1) else { return };
        let slot = slot_offset(HEADER_LEN, self.geometry, pos);
        if self.map.word(slot + SLOT_SEQ_OFFSET).load(Ordering::Relaxed) != seq_done(pos) {
            return;
        }
        let mut meta: MetaBytes = [0; SLOT_META_LEN];
        self.map.load_bytes(slot + SLOT_ARRIVAL_UNIX_NS_OFFSET, &mut meta);
        let Some(meta) = decode_meta(&meta) else { return };
        let newest = self.gop_count.checked_sub(1).map(|i| self.map.word(gop_entry_offset(i)).load(Ordering::Relaxed));
        if meta.kind == MediaKind::Video && meta.keyframe && newest != Some(pos) {
            debug!(pos, "indexing the last keyframe of the previous ring writer");
            self.index_keyframe(pos);
        }
    }

    /// Simulates a writer process dying inside [`push`](Self::push): the slot at head is left with an odd
    /// SEQ and half its payload (`complete == false`), or complete with HEAD not yet moved (`complete ==
    /// true`); the lock goes away as the kernel would release it, and the header still says live.
    #[cfg(test)]
    pub(crate) fn crash_in_push(mut self, meta: &PacketMeta, payload: &[u8], complete: bool) {
        let pos = self.head;
        let slot = slot_offset(HEADER_LEN, self.geometry, pos);
        let seq = self.map.word(slot + SLOT_SEQ_OFFSET);
        seq.store(seq_writing(pos), Ordering::Relaxed);
        fence(Ordering::Release);
        self.map.store_bytes(slot + SLOT_ARRIVAL_UNIX_NS_OFFSET, &encode_meta(meta, payload.len() as u32));
        if complete {
            self.map.store_bytes(slot + SLOT_PAYLOAD_OFFSET, payload);
            seq.store(seq_done(pos), Ordering::Release);
        } else {
            self.map.store_bytes(slot + SLOT_PAYLOAD_OFFSET, &payload[..payload.len() / 2]);
        }
        self.close_on_drop = false;
    }

    /// Direct access to the mapped words, for tests that corrupt a file on purpose.
    #[cfg(test)]
    pub(crate) fn word(&self, offset: usize) -> &AtomicU64 {
        self.map.word(offset)
    }
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        if self.close_on_drop {
            // SYNC POINT W: a reader that loads CLOSED with acquire sees the final HEAD and every slot before it.
            self.map.word(WRITER_STATE_OFFSET).store(WRITER_STATE_CLOSED, Ordering::Release);
            debug!(head = self.head, epoch = self.epoch, "ring writer closed");
        }
    }
}

#[derive(Clone, Copy)]
enum Publish {
    /// `link(2)`: fails if a file appeared at the path meanwhile.
    Link,
    /// `rename(2)`: atomically replaces the file at the path.
    Rename,
}

pub(crate) const fn seq_writing(pos: u64) -> u64 {
    pos.wrapping_mul(2).wrapping_add(1)
}

pub(crate) const fn seq_done(pos: u64) -> u64 {
    pos.wrapping_mul(2).wrapping_add(2)
}

/// Byte offset of the slot holding `pos`, in a file whose slots start at `header_len`.
pub(crate) fn slot_offset(header_len: usize, geometry: Geometry, pos: u64) -> usize {
    // The mask keeps the slot index below slot_count, which fits in u32.
    header_len + (pos & geometry.mask()) as usize * geometry.slot_size as usize
}

pub(crate) fn gop_entry_offset(index: u64) -> usize {
    GOP_INDEX_OFFSET + 8 * (index % GOP_INDEX_SLOTS as u64) as usize
}

fn lock(file: File) -> Result<Flock<File>, RingError> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, Errno::EWOULDBLOCK)) => {
            let pid = read_word(&file, WRITER_PID_OFFSET).unwrap_or(0);
            Err(RingError::WriterBusy { pid })
        }
        Err((_, errno)) => Err(io::Error::from(errno).into()),
    }
}

/// Whether `path` still names the file `file` is open on.
fn is_file_at(file: &File, path: &Path) -> io::Result<bool> {
    let ours = file.metadata()?;
    match fs::metadata(path) {
        Ok(there) => Ok(there.dev() == ours.dev() && there.ino() == ours.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The identity line of a file `len` bytes long, if it is long enough to have one.
fn read_identity(file: &File, len: u64) -> io::Result<Option<Identity>> {
    if len < IDENTITY_LEN as u64 {
        return Ok(None);
    }
    let mut bytes = [0u8; IDENTITY_LEN];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(Some(Identity::decode(&bytes)))
}

fn read_word(file: &File, offset: usize) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    file.read_exact_at(&mut bytes, offset as u64)?;
    Ok(u64::from_le_bytes(bytes))
}

fn is_compatible(id: &Identity, len: u64, geometry: Geometry) -> bool {
    id.magic == MAGIC
        && id.major == LAYOUT_MAJOR
        && id.header_len as usize == HEADER_LEN
        && id.slot_count == geometry.slot_count
        && id.slot_size == geometry.slot_size
        && len == geometry.file_len() as u64
}

/// Gives every page of the file's first `len` bytes its memory now rather than at the first write to it. A
/// runtime directory too small for the ring then fails here, with an error that names it, rather than with
/// `SIGBUS` at a write minutes later; and in the ring's first lap neither the writer nor a reader pays a page
/// allocation for every 4 KiB it comes to. A file system without `fallocate(2)` keeps the file sparse.
fn allocate(file: &File, len: usize) -> Result<(), RingError> {
    use std::os::fd::AsRawFd;
    let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match nix::fcntl::fallocate(file.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, len) {
        Ok(()) | Err(Errno::EOPNOTSUPP) => Ok(()),
        Err(Errno::ENOSPC) => Err(RingError::NoSpace { bytes: len as u64 }),
        Err(e) => Err(RingError::Io(io::Error::from(e))),
    }
}

/// Tells the readers of a file that is no longer at its path to reopen it: `REPLACED` in the identity line
/// (same offset in every version) and, for our own major version, the writer state.
fn retire(file: &File, identity: Option<&Identity>, len: u64) {
    let Some(id) = identity.filter(|id| id.magic == MAGIC) else { return };
    let same_major = id.major == LAYOUT_MAJOR && len >= HEAD_OFFSET as u64;
    let map_len = if same_major { HEAD_OFFSET } else { IDENTITY_LEN };
    match Mapping::new(file, map_len) {
        Ok(map) => {
            if same_major {
                map.word(WRITER_STATE_OFFSET).store(WRITER_STATE_CLOSED, Ordering::Relaxed);
            }
            // SYNC POINT R: a reader that loads REPLACED != 0 with acquire also sees the closed state.
            map.word(REPLACED_OFFSET).store(1, Ordering::Release);
        }
        Err(e) => warn!(error = %e, "cannot mark the replaced ring file; its readers notice by inode"),
    }
}

/// A unique name next to `path` for a file being initialised.
fn temp_path(path: &Path) -> Result<PathBuf, RingError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "ring path has no file name"))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}-{n}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}
