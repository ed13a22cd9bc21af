use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::*;
use super::*;

/// A directory under /dev/shm (tmpfs, like the runtime directory), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir =
            base.join(format!("deadsfu-ring-unit-{}-{}-{name}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn ring(&self) -> PathBuf {
        self.0.join("room.ring")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const SMALL: Geometry = Geometry { slot_count: 16, slot_size: 256 };

fn meta(seq: u64, kind: MediaKind, keyframe: bool) -> PacketMeta {
    PacketMeta {
        arrival_unix_ns: 1_700_000_000_000_000_000 + seq,
        seq,
        timestamp: (seq as u32).wrapping_mul(3000),
        ssrc: 0xDEAD_BEEF,
        source: 7,
        pt: if kind == MediaKind::Video { 96 } else { 111 },
        kind,
        marker: seq.is_multiple_of(2),
        keyframe,
        audio_level: None,
        voice_activity: None,
        video_orientation: None,
    }
}

fn payload(pos: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (pos as usize * 31 + i * 7) as u8).collect()
}

fn last_n(v: Vec<u64>, n: usize) -> Vec<u64> {
    v[v.len().saturating_sub(n)..].to_vec()
}

fn buf(g: Geometry) -> Vec<u8> {
    vec![0u8; g.max_payload()]
}

fn packet(r: &RingReader, pos: u64) -> (PacketMeta, Vec<u8>) {
    let mut b = buf(r.geometry());
    match r.read(pos, &mut b) {
        ReadOutcome::Packet { meta, len } => (meta, b[..len].to_vec()),
        other => panic!("expected a packet at {pos}, got {other:?}"),
    }
}

#[test]
fn round_trip_of_metadata_and_payload() {
    let dir = TempDir::new("roundtrip");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let r = RingReader::open(&dir.ring()).expect("open");
    let max = SMALL.max_payload();
    let lens = [0, 1, 7, 8, 9, 63, 64, 65, max - 1, max];
    let mut sent = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let mut m = meta(i as u64 + 1000, if i % 2 == 0 { MediaKind::Audio } else { MediaKind::Video }, i == 3);
        match i % 3 {
            0 => {
                m.audio_level = Some(-(i as i8) - 1);
                m.voice_activity = Some(i % 2 == 0);
            }
            1 => m.video_orientation = Some(i as u8),
            _ => m.voice_activity = Some(false),
        }
        m.arrival_unix_ns = u64::MAX - i as u64;
        m.seq = u64::MAX / 3 + i as u64;
        let p = payload(i as u64, len);
        assert_eq!(w.push(&m, &p).expect("push"), i as u64);
        sent.push((m, p));
    }
    assert_eq!(r.head(), lens.len() as u64);
    for (i, (m, p)) in sent.iter().enumerate() {
        let (got_meta, got_payload) = packet(&r, i as u64);
        assert_eq!(&got_meta, m, "metadata at {i}");
        assert_eq!(&got_payload, p, "payload at {i}");
    }
    let stats = r.stats();
    assert_eq!(stats.packets, lens.len() as u64);
    assert_eq!(stats.bytes, lens.iter().sum::<usize>() as u64);
    assert_eq!(w.stats(), stats);
}

#[test]
fn payload_too_large_is_refused() {
    let dir = TempDir::new("toolarge");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let err = w.push(&meta(0, MediaKind::Audio, false), &vec![0; SMALL.max_payload() + 1]).unwrap_err();
    assert!(matches!(err, RingError::PayloadTooLarge { len: 193, max: 192 }), "{err:?}");
    assert_eq!(w.head(), 0);
}

#[test]
fn geometry_validation() {
    let g = Geometry::default();
    assert_eq!((g.slot_count, g.slot_size), (4096, 2048));
    g.validate().expect("default geometry is valid");
    assert_eq!(g.max_payload(), 2048 - SLOT_PAYLOAD_OFFSET);
    assert_eq!(g.file_len(), HEADER_LEN + 4096 * 2048);
    SMALL.validate().expect("small geometry is valid");
    for (slot_count, slot_size) in
        [(0, 2048), (1, 2048), (3, 2048), (4095, 2048), (64, 128), (64, 1000), (64, 0), (1 << 21, 256), (64, 1 << 17)]
    {
        let g = Geometry { slot_count, slot_size };
        let err = g.validate().expect_err("invalid geometry accepted");
        assert!(matches!(err, RingError::BadGeometry { .. }), "{err:?}");
        assert!(err.to_string().contains(&slot_count.to_string()), "{err}");
        let dir = TempDir::new("badgeom");
        assert!(matches!(RingWriter::create(&dir.ring(), g, 1), Err(RingError::BadGeometry { .. })));
        assert!(!dir.ring().exists(), "no file for a bad geometry");
    }
}

#[test]
fn version_mismatch_names_both_versions() {
    let dir = TempDir::new("version");
    drop(RingWriter::create(&dir.ring(), SMALL, 1).expect("create"));
    let file = fs::OpenOptions::new().write(true).open(dir.ring()).expect("open file");
    file.write_all_at(&2u16.to_le_bytes(), LAYOUT_MAJOR_OFFSET as u64).expect("patch major");
    file.write_all_at(&3u16.to_le_bytes(), LAYOUT_MINOR_OFFSET as u64).expect("patch minor");
    let err = RingReader::open(&dir.ring()).err().expect("a reader refuses another major");
    assert!(
        matches!(
            err,
            RingError::VersionMismatch {
                found_major: 2,
                found_minor: 3,
                supported_major: 1,
                supported_minor: LAYOUT_MINOR
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("2.3") && text.contains(&format!("1.{LAYOUT_MINOR}")), "{text}");

    // Another minor of the same major is fine.
    file.write_all_at(&1u16.to_le_bytes(), LAYOUT_MAJOR_OFFSET as u64).expect("patch major");
    let r = RingReader::open(&dir.ring()).expect("same major, newer minor");
    assert_eq!(r.layout_version(), (1, 3));
}

#[test]
fn bad_magic_not_found_and_truncated() {
    let dir = TempDir::new("badfiles");
    assert!(matches!(RingReader::open(&dir.ring()), Err(RingError::NotFound)));

    fs::write(dir.ring(), vec![0x5a; 4096]).expect("write junk");
    let err = RingReader::open(&dir.ring()).err().expect("junk refused");
    assert!(matches!(err, RingError::BadMagic { found: 0x5a5a_5a5a_5a5a_5a5a }), "{err:?}");

    fs::write(dir.ring(), b"DSF").expect("write stub");
    assert!(matches!(RingReader::open(&dir.ring()), Err(RingError::Truncated { len: 3, .. })));

    fs::remove_file(dir.ring()).expect("remove");
    drop(RingWriter::create(&dir.ring(), SMALL, 1).expect("create"));
    let file = fs::OpenOptions::new().write(true).open(dir.ring()).expect("open file");
    file.set_len(SMALL.file_len() as u64 - 1).expect("truncate");
    let err = RingReader::open(&dir.ring()).err().expect("truncated file refused");
    let needed = SMALL.file_len() as u64;
    assert!(matches!(err, RingError::Truncated { len, needed: n } if len == needed - 1 && n == needed), "{err:?}");
    file.set_len(40).expect("truncate into the identity line");
    assert!(matches!(RingReader::open(&dir.ring()), Err(RingError::Truncated { len: 40, .. })));
    file.set_len(SMALL.file_len() as u64).expect("restore length");
    file.write_all_at(&0x4000_0000u32.to_le_bytes(), HEADER_LEN_OFFSET as u64).expect("patch header length");
    assert!(matches!(RingReader::open(&dir.ring()), Err(RingError::BadHeaderLen { .. })));
    file.write_all_at(&(HEADER_LEN as u32).to_le_bytes(), HEADER_LEN_OFFSET as u64).expect("restore header len");
    file.write_all_at(&1000u32.to_le_bytes(), SLOT_SIZE_OFFSET as u64).expect("patch slot size");
    assert!(matches!(RingReader::open(&dir.ring()), Err(RingError::BadGeometry { slot_size: 1000, .. })));
}

#[test]
fn codec_table_round_trip() {
    let dir = TempDir::new("codecs");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let r = RingReader::open(&dir.ring()).expect("open");
    assert_eq!(r.codecs(), Vec::<CodecEntry>::new());
    assert_eq!(r.codecs_version(), 0);
    let table = vec![
        CodecEntry {
            pt: 111,
            kind: MediaKind::Audio,
            codec: Codec::Opus,
            clock_rate: 48000,
            channels: 2,
            fmtp: "minptime=10;useinbandfec=1".into(),
            slate: false,
        },
        CodecEntry {
            pt: 96,
            kind: MediaKind::Video,
            codec: Codec::H264,
            clock_rate: 90000,
            channels: 0,
            fmtp: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".into(),
            slate: false,
        },
        CodecEntry {
            pt: 98,
            kind: MediaKind::Video,
            codec: Codec::Vp9,
            clock_rate: 90000,
            channels: 0,
            fmtp: "é".repeat(FMTP_MAX / 2),
            slate: true,
        },
        CodecEntry {
            pt: 0,
            kind: MediaKind::Audio,
            codec: Codec::Pcmu,
            clock_rate: 8000,
            channels: 1,
            fmtp: String::new(),
            slate: false,
        },
    ];
    w.set_codecs(&table).expect("set codecs");
    assert_eq!(r.codecs_version(), 1);
    assert_eq!(r.codecs(), table);
    w.set_codecs(&table[..1]).expect("set codecs");
    assert_eq!(r.codecs_version(), 2);
    assert_eq!(r.codecs(), table[..1].to_vec());

    let many = vec![table[0].clone(); MAX_CODECS + 1];
    assert!(matches!(w.set_codecs(&many), Err(RingError::TooManyCodecs { count: 17, max: 16 })));
    w.set_codecs(&many[..MAX_CODECS]).expect("a full table fits");
    assert_eq!(r.codecs().len(), MAX_CODECS);
    let mut long = table[1].clone();
    long.fmtp = "x".repeat(FMTP_MAX + 1);
    let err = w.set_codecs(&[long]).unwrap_err();
    assert!(matches!(err, RingError::FmtpTooLong { pt: 96, len: 201, max: 200 }), "{err:?}");
    assert_eq!(r.codecs().len(), MAX_CODECS, "a refused table leaves the old one");

    // A corrupt entry is skipped, not a panic.
    w.set_codecs(&table[..2]).expect("set codecs");
    w.word(CODEC_TABLE_OFFSET).store(0xFF_FF_FF_FF, Ordering::Relaxed);
    assert_eq!(r.codecs(), table[1..2].to_vec());
}

#[test]
fn codec_table_left_mid_update_by_a_dead_writer() {
    let dir = TempDir::new("codecs-dead");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    w.set_codecs(&[CodecEntry {
        pt: 111,
        kind: MediaKind::Audio,
        codec: Codec::Opus,
        clock_rate: 48000,
        channels: 2,
        fmtp: String::new(),
        slate: false,
    }])
    .expect("set");
    w.word(CODECS_VERSION_OFFSET).store(3, Ordering::Relaxed);
    let r = RingReader::open(&dir.ring()).expect("open");
    assert_eq!(r.codecs(), Vec::<CodecEntry>::new(), "a table stuck mid-update reads as empty");
    drop(w);
    let _w = RingWriter::create(&dir.ring(), SMALL, 2).expect("reopen");
    assert_eq!(r.codecs_version(), 2);
    assert_eq!(r.codecs(), Vec::<CodecEntry>::new());
}

#[test]
fn gop_index_offers_only_keyframes_still_in_the_ring() {
    let dir = TempDir::new("gop");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let r = RingReader::open(&dir.ring()).expect("open");
    assert_eq!(r.latest_keyframe(), None);
    let mut keyframes = Vec::new();
    // Keyframes at 0, 5, 10, ...; an audio packet flagged keyframe is not indexed.
    for pos in 0..40u64 {
        let is_kf = pos % 5 == 0;
        let kind = if pos == 7 { MediaKind::Audio } else { MediaKind::Video };
        w.push(&meta(pos, kind, is_kf || pos == 7), &payload(pos, 10)).expect("push");
        if is_kf {
            keyframes.push(pos);
        }
        // In the ring: positions head-16 ..= head-1.
        let oldest = (pos + 1).saturating_sub(u64::from(SMALL.slot_count));
        let expected: Vec<u64> = last_n(keyframes.iter().copied().filter(|&k| k >= oldest).collect(), GOP_INDEX_LEN);
        assert_eq!(r.keyframes(), expected, "after pushing {pos}");
        assert_eq!(r.latest_keyframe(), expected.last().copied());
    }
    // No keyframe for 16 positions: the index still has entries, but none of them is in the ring.
    for pos in 40..57u64 {
        w.push(&meta(pos, MediaKind::Video, false), &payload(pos, 10)).expect("push");
    }
    assert_eq!(r.keyframes(), Vec::<u64>::new());
    assert_eq!(r.latest_keyframe(), None);

    // More keyframes than the index holds, all in a big ring: the newest GOP_INDEX_LEN - 1 at least.
    let big = Geometry { slot_count: 1024, slot_size: 256 };
    let dir = TempDir::new("gop-big");
    let mut w = RingWriter::create(&dir.ring(), big, 1).expect("create");
    let r = RingReader::open(&dir.ring()).expect("open");
    for pos in 0..100u64 {
        w.push(&meta(pos, MediaKind::Video, pos % 3 == 0), &payload(pos, 1)).expect("push");
    }
    let expected: Vec<u64> = last_n((0..100).filter(|p| p % 3 == 0).collect(), GOP_INDEX_LEN);
    assert_eq!(r.keyframes(), expected);
    assert_eq!(r.latest_keyframe(), Some(99));
}

#[test]
fn lapped_and_not_yet() {
    let dir = TempDir::new("lapped");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let r = RingReader::open(&dir.ring()).expect("open");
    let mut b = buf(SMALL);
    assert_eq!(r.read(0, &mut b), ReadOutcome::NotYet);
    let n = u64::from(SMALL.slot_count);
    for pos in 0..n + 3 {
        w.push(&meta(pos, MediaKind::Video, pos == n + 1), &payload(pos, 20)).expect("push");
    }
    for pos in 0..3 {
        assert_eq!(r.read(pos, &mut b), ReadOutcome::Lapped, "position {pos} was overwritten");
    }
    for pos in 3..n + 3 {
        assert_eq!(packet(&r, pos).1, payload(pos, 20));
    }
    assert_eq!(r.read(n + 3, &mut b), ReadOutcome::NotYet);
    assert_eq!(r.read(n + 100, &mut b), ReadOutcome::NotYet);

    // A cursor left behind resyncs at the newest keyframe and says so, once.
    let mut cursor = RingCursor::at(1);
    let (m, len) = cursor.next(&r, &mut b).expect("a packet after the lap");
    assert_eq!(cursor.last_position(), Some(n + 1));
    assert!(m.keyframe);
    assert_eq!(&b[..len], payload(n + 1, 20));
    assert!(cursor.take_lapped());
    assert!(!cursor.take_lapped());
    assert_eq!(cursor.laps(), 1);
    assert_eq!(r.stats().laps, 1);
    assert!(cursor.next(&r, &mut b).is_some());
    assert_eq!(cursor.last_position(), Some(n + 2));
    assert!(cursor.next(&r, &mut b).is_none(), "caught up");
    assert!(!cursor.take_lapped());

    // Without a keyframe in the ring, the cursor goes to head.
    for pos in n + 3..3 * n {
        w.push(&meta(pos, MediaKind::Video, false), &payload(pos, 20)).expect("push");
    }
    let mut cursor = RingCursor::at(n);
    assert!(cursor.next(&r, &mut b).is_none());
    assert!(cursor.take_lapped());
    assert_eq!(cursor.position(), 3 * n);
    w.push(&meta(3 * n, MediaKind::Audio, false), &payload(3 * n, 20)).expect("push");
    assert!(cursor.next(&r, &mut b).is_some());
    assert_eq!(cursor.last_position(), Some(3 * n));
    assert_eq!(r.stats().laps, 2);
}

#[test]
fn cursor_walks_in_order_and_join_starts_at_the_latest_keyframe() {
    let dir = TempDir::new("cursor");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let r = RingReader::open(&dir.ring()).expect("open");
    let mut b = buf(SMALL);
    let mut joined = RingCursor::join(&r);
    assert_eq!(joined.position(), 0);
    for pos in 0..10u64 {
        w.push(&meta(pos, MediaKind::Video, pos == 4), &payload(pos, pos as usize)).expect("push");
    }
    let mut late = RingCursor::join(&r);
    assert_eq!(late.position(), 4);
    let mut seen = Vec::new();
    while let Some((m, len)) = joined.next(&r, &mut b) {
        assert_eq!(&b[..len], payload(m.seq, m.seq as usize));
        seen.push(m.seq);
    }
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert_eq!(late.next(&r, &mut b).map(|(m, _)| m.seq), Some(4));
    assert_eq!(joined.laps(), 0);
}

#[test]
fn writer_reopen_keeps_head_and_bumps_epoch() {
    let dir = TempDir::new("reopen");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 10).expect("create");
    assert_eq!((w.epoch(), w.head()), (1, 0));
    for pos in 0..5 {
        w.push(&meta(pos, MediaKind::Video, pos == 2), &payload(pos, 3)).expect("push");
    }
    let r = RingReader::open(&dir.ring()).expect("open");
    assert_eq!(r.writer_state(), WriterState::Live);
    assert_eq!(r.writer_pid(), u64::from(std::process::id()));
    assert_eq!(r.heartbeat_unix_ms(), 10);
    drop(w);
    assert_eq!(r.writer_state(), WriterState::Closed);

    let mut w = RingWriter::create(&dir.ring(), SMALL, 20).expect("reopen");
    assert_eq!((w.epoch(), w.head()), (2, 5));
    assert_eq!((r.epoch(), r.head()), (2, 5));
    assert_eq!(r.writer_state(), WriterState::Live);
    assert_eq!(r.heartbeat_unix_ms(), 20);
    assert!(!r.is_replaced(), "same geometry: the same file is reused");
    assert_eq!(r.latest_keyframe(), Some(2), "the GOP index survives");
    assert_eq!(w.stats().packets, 5);
    assert_eq!(w.push(&meta(5, MediaKind::Audio, false), b"next").expect("push"), 5);
    assert_eq!(packet(&r, 5).1, b"next");
    assert_eq!(packet(&r, 4).1, payload(4, 3), "old packets stay readable");
    w.heartbeat(30);
    assert_eq!(r.heartbeat_unix_ms(), 30);
}

/// Bytes of memory a file holds (tmpfs pages), not its length.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).expect("stat ring").blocks() * 512
}

#[test]
fn a_ring_holds_all_its_memory_from_the_start() {
    let dir = TempDir::new("allocated");
    let geometry = Geometry { slot_count: 256, slot_size: 1024 };
    let len = geometry.file_len() as u64;
    let w = RingWriter::create(&dir.ring(), geometry, 1).expect("create");
    assert!(allocated(&dir.ring()) >= len, "{} of {len} bytes allocated at creation", allocated(&dir.ring()));
    drop(w);
    // A file left sparse (by a writer of an earlier build) is filled in when it is taken over.
    let file = fs::OpenOptions::new().write(true).open(dir.ring()).expect("open");
    nix::fcntl::fallocate(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        HEADER_LEN as i64 + 4096,
        len as i64 - HEADER_LEN as i64 - 4096,
    )
    .expect("punch a hole");
    assert!(allocated(&dir.ring()) < len / 2, "the hole was punched");
    let w = RingWriter::create(&dir.ring(), geometry, 2).expect("take over");
    assert_eq!(w.epoch(), 2, "the same file, taken over");
    assert!(allocated(&dir.ring()) >= len, "{} of {len} bytes allocated after the takeover", allocated(&dir.ring()));
}

#[test]
fn a_ring_larger_than_its_file_system_is_refused_at_creation_and_leaves_nothing() {
    let dir = TempDir::new("nospace");
    // The least geometry larger than the whole file system (a tmpfs refuses it before allocating anything); none
    // on a file system without a size or larger than the largest ring.
    let Some(fs_bytes) = crate::paths::file_system_bytes(&dir.0) else { return };
    let Some(geometry) = (8..=20)
        .flat_map(|c| (8..=16).map(move |s| Geometry { slot_count: 1 << c, slot_size: 1 << s }))
        .find(|g| g.file_len() as u64 > fs_bytes)
    else {
        return;
    };
    let err = RingWriter::create(&dir.ring(), geometry, 1).err().expect("refused");
    assert!(matches!(err, RingError::NoSpace { bytes } if bytes == geometry.file_len() as u64), "{err:?}");
    assert!(err.to_string().contains("ring_slots"), "the error says what to change: {err}");
    let left: Vec<_> = fs::read_dir(&dir.0).expect("list").collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn second_writer_is_refused_while_the_first_lives() {
    let dir = TempDir::new("busy");
    let w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let err = RingWriter::create(&dir.ring(), SMALL, 1).err().expect("second writer refused");
    assert!(matches!(err, RingError::WriterBusy { pid } if pid == u64::from(std::process::id())), "{err:?}");
    // Another geometry must not replace a file with a live writer either.
    let other = Geometry { slot_count: 32, slot_size: 256 };
    assert!(matches!(RingWriter::create(&dir.ring(), other, 1), Err(RingError::WriterBusy { .. })));
    drop(w);
    let w = RingWriter::create(&dir.ring(), SMALL, 1).expect("free again");
    assert_eq!(w.epoch(), 2);
}

#[test]
fn keyframe_requests_reach_the_writer() {
    let dir = TempDir::new("kfreq");
    let w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let a = RingReader::open(&dir.ring()).expect("open");
    let b = RingReader::open(&dir.ring()).expect("open");
    assert_eq!(w.keyframe_requests(), 0);
    a.request_keyframe();
    b.request_keyframe();
    assert_eq!(w.keyframe_requests(), 2);
    assert_eq!(a.stats().keyframe_requests, 2);
}

#[test]
fn reader_heartbeats_reach_the_writer_and_never_go_back() {
    let dir = TempDir::new("rdbeat");
    let w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let a = RingReader::open(&dir.ring()).expect("open");
    let b = RingReader::open(&dir.ring()).expect("open");
    assert_eq!(w.reader_heartbeat_unix_ms(), 0);
    a.heartbeat(5_000);
    b.heartbeat(4_000);
    assert_eq!(w.reader_heartbeat_unix_ms(), 5_000);
    b.heartbeat(6_000);
    assert_eq!(w.reader_heartbeat_unix_ms(), 6_000);
}

#[test]
fn reader_sees_a_replaced_file() {
    let dir = TempDir::new("replaced");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    w.push(&meta(0, MediaKind::Audio, false), b"old").expect("push");
    let old = RingReader::open(&dir.ring()).expect("open");
    drop(w);
    assert!(!old.is_replaced());

    let other = Geometry { slot_count: 32, slot_size: 512 };
    let mut w = RingWriter::create(&dir.ring(), other, 2).expect("replace");
    assert_eq!((w.epoch(), w.head()), (1, 0));
    assert!(old.is_replaced());
    assert_eq!(old.writer_state(), WriterState::Closed);
    assert_eq!(packet(&old, 0).1, b"old", "the old mapping stays readable");
    w.push(&meta(0, MediaKind::Audio, false), b"new").expect("push");
    let new = RingReader::open(&dir.ring()).expect("reopen");
    assert_eq!(new.geometry(), other);
    assert_eq!(packet(&new, 0).1, b"new");
    assert!(!new.is_replaced());

    // A file of another major version is replaced too, and marked through the frozen identity line.
    drop(w);
    let file = fs::OpenOptions::new().read(true).write(true).open(dir.ring()).expect("open file");
    file.write_all_at(&9u16.to_le_bytes(), LAYOUT_MAJOR_OFFSET as u64).expect("patch major");
    let _w = RingWriter::create(&dir.ring(), other, 3).expect("replace other major");
    let mut identity = [0u8; IDENTITY_LEN];
    file.read_exact_at(&mut identity, 0).expect("read old identity");
    assert_ne!(Identity::decode(&identity).replaced, 0);
    assert!(new.is_replaced());

    // A removed file counts as replaced.
    let current = RingReader::open(&dir.ring()).expect("open");
    fs::remove_file(dir.ring()).expect("remove");
    assert!(current.is_replaced());
    assert!(fs::read_dir(&dir.0).expect("list").next().is_none(), "no temporary files left behind");
}

#[test]
fn junk_at_the_path_is_replaced() {
    let dir = TempDir::new("junk");
    fs::write(dir.ring(), b"not a ring").expect("write junk");
    let w = RingWriter::create(&dir.ring(), SMALL, 1).expect("replace junk");
    assert_eq!(w.epoch(), 1);
    RingReader::open(&dir.ring()).expect("a ring now");
}

#[test]
fn half_written_slot_of_a_dead_writer() {
    let dir = TempDir::new("dead");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    for pos in 0..3 {
        w.push(&meta(pos, MediaKind::Audio, false), &payload(pos, 50)).expect("push");
    }
    let r = RingReader::open(&dir.ring()).expect("open");
    let mut cursor = RingCursor::at(0);
    let mut b = buf(SMALL);
    while cursor.next(&r, &mut b).is_some() {}
    assert_eq!(cursor.position(), 3);

    w.crash_in_push(&meta(3, MediaKind::Audio, false), &payload(3, 50), false);
    assert_eq!(r.read(3, &mut b), ReadOutcome::NotYet, "a half-written slot is not a packet");
    assert!(cursor.next(&r, &mut b).is_none());
    assert_eq!(r.writer_state(), WriterState::Live, "a dead writer still reads as live");
    assert_eq!(r.head(), 3);

    let mut w = RingWriter::create(&dir.ring(), SMALL, 2).expect("the lock died with the writer");
    assert_eq!((w.epoch(), w.head()), (2, 3));
    assert_eq!(r.read(3, &mut b), ReadOutcome::NotYet);
    let mut fresh = meta(3, MediaKind::Video, true);
    fresh.source = 8;
    assert_eq!(w.push(&fresh, b"rewritten").expect("push"), 3);
    let (m, len) = cursor.next(&r, &mut b).expect("the reader goes on where it was");
    assert_eq!((m, &b[..len]), (fresh, &b"rewritten"[..]));
    assert_eq!(cursor.laps(), 0);
    assert_eq!(r.latest_keyframe(), Some(3));
}

#[test]
fn complete_but_unpublished_slot_of_a_dead_writer_is_kept() {
    let dir = TempDir::new("dead-complete");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    w.push(&meta(0, MediaKind::Audio, false), b"zero").expect("push");
    let r = RingReader::open(&dir.ring()).expect("open");
    w.crash_in_push(&meta(1, MediaKind::Video, true), b"keyframe", true);
    assert_eq!(r.head(), 1);
    // A fast reader may already take it: the slot is complete.
    assert_eq!(packet(&r, 1).1, b"keyframe");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 2).expect("reopen");
    assert_eq!(w.head(), 2, "the complete slot is published, not overwritten");
    assert_eq!(packet(&r, 1).1, b"keyframe");
    assert_eq!(r.latest_keyframe(), Some(1), "and indexed");
    assert_eq!(w.push(&meta(2, MediaKind::Audio, false), b"two").expect("push"), 2);
}

#[test]
fn corrupt_slot_reads_as_lapped() {
    let dir = TempDir::new("corrupt");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    w.push(&meta(0, MediaKind::Audio, false), b"ok").expect("push");
    w.push(&meta(1, MediaKind::Audio, false), b"ok").expect("push");
    let r = RingReader::open(&dir.ring()).expect("open");
    let slot = HEADER_LEN;
    // Payload length beyond the slot.
    w.word(slot + SLOT_SOURCE_OFFSET).store(u64::MAX, Ordering::Relaxed);
    let mut b = buf(SMALL);
    assert_eq!(r.read(0, &mut b), ReadOutcome::Lapped);
    // Unknown media kind.
    let slot = HEADER_LEN + SMALL.slot_size as usize;
    w.word(slot + SLOT_PT_OFFSET).store(0xFF00, Ordering::Relaxed);
    assert_eq!(r.read(1, &mut b), ReadOutcome::Lapped);
}

#[test]
fn handles_are_send() {
    fn send<T: Send>() {}
    send::<RingWriter>();
    send::<RingReader>();
    send::<RingCursor>();
}

#[test]
fn positions_survive_a_corrupt_head() {
    let dir = TempDir::new("corrupt-head");
    let w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    w.word(HEAD_OFFSET).store(u64::MAX, Ordering::Relaxed);
    w.word(GOP_COUNT_OFFSET).store(u64::MAX, Ordering::Relaxed);
    let r = RingReader::open(&dir.ring()).expect("open");
    let mut b = buf(SMALL);
    assert_eq!(r.read(u64::MAX - 1, &mut b), ReadOutcome::NotYet);
    assert_eq!(r.read(u64::MAX, &mut b), ReadOutcome::NotYet, "2*pos+2 wraps to the SEQ of a fresh slot");
    assert_eq!(r.keyframes(), Vec::<u64>::new());
    let mut cursor = RingCursor::at(5);
    assert!(cursor.next(&r, &mut b).is_none());
    assert!(cursor.take_lapped());
    drop(w);
    let w = RingWriter::create(&dir.ring(), SMALL, 2).expect("a corrupt file is replaced");
    assert_eq!((w.epoch(), w.head()), (1, 0));
    assert!(r.is_replaced());
}

#[test]
fn codec_table_is_never_read_torn() {
    let dir = TempDir::new("codecs-threads");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let r = RingReader::open(&dir.ring()).expect("open");
    let table = |n: u8| -> Vec<CodecEntry> {
        (0..=n % 4)
            .map(|i| CodecEntry {
                pt: 96 + i,
                kind: MediaKind::Video,
                codec: Codec::Vp8,
                clock_rate: 90_000 + u32::from(n),
                channels: n,
                fmtp: char::from(b'a' + n % 26).to_string().repeat(usize::from(n) % FMTP_MAX),
                slate: false,
            })
            .collect()
    };
    let tables: Vec<Vec<CodecEntry>> = (0..=255).map(table).collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 0..20_000usize {
                w.set_codecs(&tables[n % 256]).expect("set");
            }
            done.store(true, Ordering::Release);
        });
        let mut reads = 0;
        while !done.load(Ordering::Acquire) || reads == 0 {
            let got = r.codecs();
            assert!(got.is_empty() || tables.contains(&got), "torn codec table: {got:?}");
            reads += 1;
        }
    });
}

#[test]
fn readers_ask_for_wake_ups_by_worker_bit() {
    let dir = TempDir::new("wake");
    let w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let r0 = RingReader::open(&dir.ring()).expect("open");
    let r1 = RingReader::open(&dir.ring()).expect("open");
    assert_eq!(w.wake_mask(), 0);
    r0.want_wake(0);
    r1.want_wake(3);
    r1.want_wake(3);
    assert_eq!(w.wake_mask(), 0b1001);
    r0.unwant_wake(0);
    assert_eq!(w.wake_mask(), 0b1000);
    // Worker 67 shares worker 3's bit: either withdrawing it leaves the other to its slow poll, nothing worse.
    r0.want_wake(67);
    r1.unwant_wake(3);
    assert_eq!(w.wake_mask(), 0);
}

#[test]
fn a_cursor_skips_forward_only() {
    let dir = TempDir::new("skip");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let r = RingReader::open(&dir.ring()).expect("open");
    let mut b = buf(SMALL);
    for pos in 0..10 {
        w.push(&meta(pos, MediaKind::Video, pos == 6), &payload(pos, 20)).expect("push");
    }
    let mut cursor = RingCursor::at(2);
    cursor.skip_to(r.latest_keyframe().expect("a keyframe"));
    let (m, len) = cursor.next(&r, &mut b).expect("the keyframe");
    assert_eq!(cursor.last_position(), Some(6));
    assert!(m.keyframe);
    assert_eq!(&b[..len], payload(6, 20));
    cursor.skip_to(3);
    assert_eq!(cursor.position(), 7, "never backwards");
    assert!(!cursor.take_lapped(), "a skip is not a lap");
    assert_eq!(cursor.laps(), 0);
}

/// A ring file truncated under a reader and its writer kills neither: the access that faults is caught, the
/// mapping reads zeros from then on, the reader says to reopen the path and the writer says it is broken.
#[test]
fn a_ring_truncated_under_its_reader_and_writer_kills_neither() {
    let dir = TempDir::new("truncated");
    let geometry = Geometry { slot_count: 64, slot_size: 4096 };
    let mut writer = RingWriter::create(&dir.ring(), geometry, 1).expect("create");
    for pos in 0..32 {
        writer.push(&meta(pos, MediaKind::Video, pos == 0), &payload(pos, 1000)).expect("push");
    }
    let reader = RingReader::open(&dir.ring()).expect("open");
    assert!(!reader.is_replaced());
    // Leave the header, cut every slot off.
    let file = fs::OpenOptions::new().write(true).open(dir.ring()).expect("open file");
    file.set_len(4096).expect("truncate");
    let mut out = buf(geometry);
    for pos in 0..32 {
        // Faults (SIGBUS) on the first slot read; the handler maps zeros over the ring and the read goes on.
        let outcome = reader.read(pos, &mut out);
        assert!(!matches!(outcome, ReadOutcome::Packet { .. }), "read a packet from a truncated file: {outcome:?}");
    }
    assert!(reader.is_replaced(), "the reader does not say to reopen a truncated ring");
    for pos in 32..40 {
        let _ = writer.push(&meta(pos, MediaKind::Video, false), &payload(pos, 1000));
    }
    assert!(writer.is_broken(), "the writer does not know its file was truncated");
    // A new writer makes a whole file again, which a new reader opens.
    drop(writer);
    let _writer = RingWriter::create(&dir.ring(), geometry, 2).expect("recreate");
    let again = RingReader::open(&dir.ring()).expect("reopen");
    assert!(!again.is_replaced());
}

#[test]
fn the_layer_table_is_read_whole_refuses_what_does_not_fit_and_is_emptied_by_the_next_writer() {
    let dir = TempDir::new("layers");
    let mut w = RingWriter::create(&dir.ring(), SMALL, 1).expect("create");
    let r = RingReader::open(&dir.ring()).expect("open");
    assert_eq!(r.layers(), Vec::new(), "a new ring has no layers");
    let layer = |rid: &str, kbps: u64, carried: bool| LayerEntry {
        rid: rid.to_string(),
        bitrate_bps: kbps * 1000,
        width: 320 * (kbps / 150) as u16,
        height: 180,
        carried,
    };
    let table = vec![layer("h", 1500, true), layer("m_1-x", 500, false), layer("0123456789abcdef", 150, false)];
    let before = r.layers_version();
    w.set_layers(&table).expect("set");
    assert_eq!(r.layers(), table);
    assert_eq!(r.layers_version(), before + 1);
    // Refused, and the table stays what it was.
    assert!(matches!(w.set_layers(&vec![layer("a", 1, false); MAX_LAYERS + 1]), Err(RingError::TooManyLayers { .. })));
    for bad in ["", "a/b", "0123456789abcdefg", "é"] {
        assert!(matches!(w.set_layers(&[layer(bad, 1, false)]), Err(RingError::BadRid { .. })), "{bad:?}");
    }
    assert_eq!(r.layers(), table);
    // A reader's wish for the layers' rings: the newest of any reader's.
    assert_eq!(w.layers_wanted_unix_ms(), 0);
    r.want_layers(5_000);
    r.want_layers(4_000);
    assert_eq!(w.layers_wanted_unix_ms(), 5_000);
    // A corrupt entry is skipped, the others are read.
    w.word(LAYER_TABLE_OFFSET + LAYER_RID_OFFSET).store(u64::from(b'/'), Ordering::Relaxed);
    assert_eq!(r.layers(), table[1..]);
    // The next writer does not know the last one's publisher: its table is emptied.
    drop(w);
    let _w = RingWriter::create(&dir.ring(), SMALL, 2).expect("reopen");
    assert_eq!(r.layers(), Vec::new());
}
