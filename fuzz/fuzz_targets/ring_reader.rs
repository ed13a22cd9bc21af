//! The ring reader over arbitrary file contents: open, every getter, every position it offers, and a cursor
//! walk. Nothing may panic, read out of bounds or fault (a mapping past the end of the file raises SIGBUS).
//!
//! Input: a mode byte, then
//! - even mode: the file itself, whatever its size (mostly refused at the magic, version or length checks);
//! - odd mode: two bytes choosing a small geometry, header length and file length, then patches of the form
//!   `word index (u16 LE) | value (u64 LE)` laid over a zeroed file with a valid identity line, so slots,
//!   head, GOP index and codec table take values no correct writer would leave.
#![no_main]

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shm_proto::ring::layout::{
    HEADER_LEN, HEADER_LEN_OFFSET, LAYOUT_MAJOR_OFFSET, LAYOUT_MINOR_OFFSET, MAGIC_OFFSET, SLOT_COUNT_OFFSET,
    SLOT_SIZE_OFFSET,
};
use shm_proto::ring::{Geometry, ReadOutcome, RingCursor, RingReader, LAYOUT_MAJOR, MAGIC};

/// The file every input is written to: on tmpfs, like the runtime directory; one per fuzzing process.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let dir = base.join(format!("deadsfu-fuzz-ring-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create the fuzz directory");
        dir.join("room.ring")
    })
}

fn shaped(data: &[u8]) -> Option<()> {
    let (&g, rest) = data.split_first()?;
    let (&h, patches) = rest.split_first()?;
    let geometry = Geometry { slot_count: 2 << (g & 0x07), slot_size: 256 << ((g >> 3) & 0x03) };
    // Mostly the header length of this version, sometimes a newer minor's longer one, sometimes an invalid one.
    let header_len: u32 = match h & 0x07 {
        0..=3 => HEADER_LEN as u32,
        4 => HEADER_LEN as u32 + 0x40,
        5 => HEADER_LEN as u32 * 2,
        6 => HEADER_LEN as u32 - 0x40,
        _ => HEADER_LEN as u32 + 8,
    };
    let needed = geometry.file_len() - HEADER_LEN + header_len as usize;
    // Mostly the needed length; sometimes a word short, or a little longer.
    let len = match (h >> 3) & 0x03 {
        0 | 1 => needed,
        2 => needed - 8,
        _ => needed + 8 * usize::from(h >> 5),
    };
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path()).ok()?;
    file.set_len(len as u64).ok()?;
    let mut identity = [0u8; 0x18];
    identity[MAGIC_OFFSET..MAGIC_OFFSET + 8].copy_from_slice(&MAGIC.to_le_bytes());
    identity[LAYOUT_MAJOR_OFFSET..LAYOUT_MAJOR_OFFSET + 2].copy_from_slice(&LAYOUT_MAJOR.to_le_bytes());
    identity[LAYOUT_MINOR_OFFSET..LAYOUT_MINOR_OFFSET + 2].copy_from_slice(&u16::from(g >> 5).to_le_bytes());
    identity[HEADER_LEN_OFFSET..HEADER_LEN_OFFSET + 4].copy_from_slice(&header_len.to_le_bytes());
    identity[SLOT_COUNT_OFFSET..SLOT_COUNT_OFFSET + 4].copy_from_slice(&geometry.slot_count.to_le_bytes());
    identity[SLOT_SIZE_OFFSET..SLOT_SIZE_OFFSET + 4].copy_from_slice(&geometry.slot_size.to_le_bytes());
    file.write_all_at(&identity, 0).ok()?;
    let words = len / 8;
    for p in patches.chunks_exact(10) {
        let index = usize::from(u16::from_le_bytes([p[0], p[1]])) % words;
        file.write_all_at(&p[2..10], (index * 8) as u64).ok()?;
    }
    check(&file, len as u64)
}

fn raw(data: &[u8]) -> Option<()> {
    fs::write(path(), data).ok()?;
    let file = File::open(path()).ok()?;
    check(&file, data.len() as u64)
}

/// Opens the file and reads everything the reader offers.
fn check(_file: &File, len: u64) -> Option<()> {
    let reader = RingReader::open(path()).ok()?;
    let geometry = reader.geometry();
    assert!(geometry.validate().is_ok(), "opened a ring of invalid geometry {geometry:?}");
    assert!(len >= geometry.file_len() as u64, "opened a ring of {len} bytes, shorter than {geometry:?} needs");
    let _ = (reader.epoch(), reader.layout_version(), reader.heartbeat_unix_ms(), reader.writer_pid());
    let _ = (reader.created_unix_ms(), reader.writer_state(), reader.reader_heartbeat_unix_ms());
    let _ = (reader.is_replaced(), reader.stats(), reader.wake_mask(), reader.codecs_version());
    for codec in reader.codecs() {
        assert!(codec.fmtp.len() <= shm_proto::ring::FMTP_MAX);
    }
    let head = reader.head();
    let keyframes = reader.keyframes();
    assert!(keyframes.windows(2).all(|w| w[0] < w[1]), "keyframes out of order: {keyframes:?}");
    assert!(keyframes.iter().all(|&k| k < head), "keyframe at or past head {head}: {keyframes:?}");
    assert_eq!(reader.latest_keyframe(), keyframes.last().copied());

    let max = geometry.max_payload();
    let mut buf = vec![0u8; max];
    let slots = u64::from(geometry.slot_count);
    let from_head = head.saturating_sub(slots + 1)..head.saturating_add(2);
    for pos in (0..slots + 1).chain(from_head).chain([u64::MAX, 1 << 62, (1 << 62) - 1]) {
        if let ReadOutcome::Packet { len, .. } = reader.read(pos, &mut buf) {
            assert!(len <= max, "payload of {len} bytes in slots of {max}");
        }
    }

    // Bounded: each slot matches at most one position, so the cursor runs out after a lap or two.
    for mut cursor in [RingCursor::join(&reader), RingCursor::at(0)] {
        let mut last = None;
        for _ in 0..4 * slots + 8 {
            let Some((_, len)) = cursor.next(&reader, &mut buf) else { break };
            assert!(len <= max);
            let pos = cursor.last_position().expect("a packet has a position");
            assert!(last.is_none_or(|l| pos > l), "cursor went from {last:?} back to {pos}");
            last = Some(pos);
            let _ = cursor.take_lapped();
        }
    }
    reader.request_keyframe();
    reader.note_lapped();
    reader.heartbeat(1);
    reader.want_wake(3);
    reader.unwant_wake(3);
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        raw(rest);
    } else {
        shaped(rest);
    }
});
