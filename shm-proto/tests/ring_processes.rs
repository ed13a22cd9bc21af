//! The ring across real processes: one writer process and several reader processes at full speed on a small
//! ring, and a writer process that dies.
//!
//! Children are this test binary run again with the test's exact name and [`ROLE`] set; they report on stdout
//! with [`REPORT`] followed by JSON, one report a line. Every wait has a deadline; nothing sleeps to
//! synchronise.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shm_proto::ring::{
    Codec, CodecEntry, Geometry, MediaKind, PacketMeta, RingCursor, RingError, RingReader, RingWriter, WriterState,
};

const ROLE: &str = "DEADSFU_RING_TEST_ROLE";
const RING: &str = "DEADSFU_RING_TEST_PATH";
const REPORT: &str = "RING-REPORT ";
/// Guards against hangs only; the test normally takes a second or two.
const DEADLINE: Duration = Duration::from_secs(120);

const GEOMETRY: Geometry = Geometry { slot_count: 64, slot_size: 512 };
const PACKETS: u64 = 200_000;
const READERS: usize = 3;
const KEYFRAME_EVERY: u64 = 50;
const CODECS_EVERY: u64 = 10_000;
/// Accepted-packet counts at which a reader stops reading until it is certainly lapped.
const STALLS: [u64; 3] = [500, 5_000, 20_000];

// ---------------------------------------------------------------------------------------------------------
// The packets: everything about packet `pos` is derived from `pos`, so a reader can check all of it.

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn payload_of(pos: u64, max: usize) -> Vec<u8> {
    let len = 16 + (pos.wrapping_mul(7919) % (max as u64 - 15)) as usize;
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&pos.to_le_bytes());
    let mut x = pos.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while p.len() < len - 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(x as u8);
    }
    let sum = fnv1a(&p);
    p.extend_from_slice(&sum.to_le_bytes());
    p
}

fn meta_of(pos: u64) -> PacketMeta {
    let video = !pos.is_multiple_of(4);
    PacketMeta {
        arrival_unix_ns: 1_700_000_000_000_000_000 + pos,
        seq: 1_000 + pos,
        timestamp: (pos as u32).wrapping_mul(90),
        ssrc: if video { 0x1111 } else { 0x2222 },
        source: 0xABCD,
        pt: if video { 96 } else { 111 },
        kind: if video { MediaKind::Video } else { MediaKind::Audio },
        marker: pos.is_multiple_of(3),
        keyframe: video && pos % KEYFRAME_EVERY == 1,
        audio_level: (!video).then_some(-((pos % 127) as i8)),
        voice_activity: (!video).then_some(pos.is_multiple_of(2)),
        video_orientation: video.then_some((pos % 4) as u8),
    }
}

/// Checks a packet a reader accepted at `pos`; the error says what is wrong.
fn verify(pos: u64, meta: &PacketMeta, payload: &[u8]) -> Result<(), String> {
    if payload.len() < 16 {
        return Err(format!("position {pos}: payload of {} bytes", payload.len()));
    }
    let (body, sum) = payload.split_at(payload.len() - 8);
    if fnv1a(body).to_le_bytes() != sum {
        return Err(format!("position {pos}: checksum mismatch (torn payload)"));
    }
    let mut written_at = [0u8; 8];
    written_at.copy_from_slice(&payload[..8]);
    let written_at = u64::from_le_bytes(written_at);
    if written_at != pos {
        return Err(format!("position {pos}: holds the payload of position {written_at}"));
    }
    if payload != payload_of(pos, GEOMETRY.max_payload()) {
        return Err(format!("position {pos}: payload differs"));
    }
    if *meta != meta_of(pos) {
        return Err(format!("position {pos}: metadata {meta:?} is not {:?}", meta_of(pos)));
    }
    Ok(())
}

fn codec_tables() -> [Vec<CodecEntry>; 2] {
    let opus = CodecEntry {
        pt: 111,
        kind: MediaKind::Audio,
        codec: Codec::Opus,
        clock_rate: 48_000,
        channels: 2,
        fmtp: "minptime=10;useinbandfec=1".into(),
        slate: false,
    };
    let h264 = CodecEntry {
        pt: 96,
        kind: MediaKind::Video,
        codec: Codec::H264,
        clock_rate: 90_000,
        channels: 0,
        fmtp: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".into(),
        slate: false,
    };
    let vp8 = CodecEntry {
        pt: 97,
        kind: MediaKind::Video,
        codec: Codec::Vp8,
        clock_rate: 90_000,
        channels: 0,
        fmtp: "x".repeat(150),
        slate: false,
    };
    [vec![opus.clone(), h264], vec![vp8, opus]]
}

// ---------------------------------------------------------------------------------------------------------
// Children.

fn report(value: Value) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{REPORT}{value}").expect("stdout");
    out.flush().expect("stdout");
}

fn wait_for_line_on_stdin() {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
}

fn ring_path() -> PathBuf {
    PathBuf::from(std::env::var_os(RING).expect("ring path in the environment"))
}

fn run_writer() {
    let path = ring_path();
    let mut writer = RingWriter::create(&path, GEOMETRY, 1).expect("create ring");
    let tables = codec_tables();
    writer.set_codecs(&tables[0]).expect("codecs");
    report(json!({"ready": true}));
    wait_for_line_on_stdin();
    let max = GEOMETRY.max_payload();
    for pos in 0..PACKETS {
        let written = writer.push(&meta_of(pos), &payload_of(pos, max)).expect("push");
        assert_eq!(written, pos);
        if pos % CODECS_EVERY == 0 {
            writer.set_codecs(&tables[(pos / CODECS_EVERY % 2) as usize]).expect("codecs");
            writer.heartbeat(pos);
        }
    }
    let stats = writer.stats();
    let (head, epoch) = (writer.head(), writer.epoch());
    drop(writer);
    report(json!({"packets": stats.packets, "head": head, "epoch": epoch}));
}

fn run_reader() {
    let deadline = Instant::now() + DEADLINE;
    let reader = RingReader::open(&ring_path()).expect("open ring");
    reader.request_keyframe();
    let slots = u64::from(reader.geometry().slot_count);
    let tables = codec_tables();
    let mut cursor = RingCursor::at(reader.head());
    let mut buf = vec![0u8; reader.geometry().max_payload()];
    report(json!({"ready": true}));

    let (mut accepted, mut bad, mut resyncs_on_keyframe, mut codec_checks) = (0u64, 0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut last: Option<u64> = None;
    let mut closed = false;
    let mut stalls = STALLS.iter().peekable();
    let mut fail = |e: String, bad: &mut u64| {
        *bad += 1;
        first_error.get_or_insert(e);
    };
    loop {
        if Instant::now() > deadline {
            fail("reader deadline passed".into(), &mut bad);
            break;
        }
        match cursor.next(&reader, &mut buf) {
            Some((meta, len)) => {
                let pos = cursor.last_position().expect("set by next");
                if last.is_some_and(|l| pos <= l) {
                    fail(format!("position {pos} after {last:?}"), &mut bad);
                }
                last = Some(pos);
                if let Err(e) = verify(pos, &meta, &buf[..len]) {
                    fail(e, &mut bad);
                }
                let lapped = cursor.take_lapped();
                if lapped && meta.keyframe {
                    resyncs_on_keyframe += 1;
                }
                accepted += 1;
                if accepted % 1024 == 1 || lapped {
                    let table = reader.codecs();
                    if !tables.contains(&table) {
                        fail(format!("codec table {table:?} is neither of the tables written"), &mut bad);
                    }
                    codec_checks += 1;
                }
                if stalls.next_if(|&&at| accepted >= at).is_some() {
                    // Fall behind on purpose, so the lap path runs however the scheduler treats us.
                    while reader.head() < cursor.position() + 2 * slots && reader.writer_state() == WriterState::Live {
                        if Instant::now() > deadline {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                }
            }
            None if closed => break,
            None => {
                // After seeing Closed (acquire), head is final: drain to it, then stop.
                closed = reader.writer_state() == WriterState::Closed;
                std::hint::spin_loop();
            }
        }
    }
    report(json!({
        "accepted": accepted,
        "bad": bad,
        "first_error": first_error,
        "laps": cursor.laps(),
        "resyncs_on_keyframe": resyncs_on_keyframe,
        "codec_checks": codec_checks,
        "last_position": last,
    }));
}

fn run_crashing_writer() {
    let mut writer = RingWriter::create(&ring_path(), GEOMETRY, 1).expect("create ring");
    for pos in 0..10 {
        writer.push(&meta_of(pos), &payload_of(pos, GEOMETRY.max_payload())).expect("push");
    }
    report(json!({"ready": true, "pid": std::process::id()}));
    // The parent kills us here; the writer is never dropped.
    wait_for_line_on_stdin();
    std::process::exit(3);
}

// ---------------------------------------------------------------------------------------------------------
// The parent side.

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("deadsfu-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Child processes and the reports they print, read by one thread per child.
struct Children {
    children: Vec<Child>,
    reports: mpsc::Receiver<(usize, Value)>,
    sender: mpsc::Sender<(usize, Value)>,
    /// Reports received but not yet asked for, per child.
    pending: Vec<VecDeque<Value>>,
    /// Whether a child's stdout reached its end.
    exited: Vec<bool>,
    deadline: Instant,
}

impl Children {
    fn new() -> Children {
        let (sender, reports) = mpsc::channel();
        Children {
            children: Vec::new(),
            reports,
            sender,
            pending: Vec::new(),
            exited: Vec::new(),
            deadline: Instant::now() + DEADLINE,
        }
    }

    fn spawn(&mut self, test: &str, role: &str, ring: &Path) -> usize {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads", "1"])
            .env(ROLE, role)
            .env(RING, ring)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let index = self.children.len();
        let stdout = child.stdout.take().expect("piped stdout");
        let sender = self.sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have printed "test NAME ... " on the same line first.
                if let Some(at) = line.find(REPORT) {
                    let value = serde_json::from_str(&line[at + REPORT.len()..]).expect("child report is JSON");
                    if sender.send((index, value)).is_err() {
                        return;
                    }
                }
            }
            let _ = sender.send((index, Value::Null));
        });
        self.children.push(child);
        index
    }

    fn stdin(&mut self, index: usize) -> &mut ChildStdin {
        self.children[index].stdin.as_mut().expect("piped stdin")
    }

    /// The next report of each of `which`, in the order of `which`. Reports of other children are kept for
    /// later calls.
    fn next_reports(&mut self, which: &[usize]) -> Vec<Value> {
        loop {
            if which.iter().all(|&i| self.pending.get(i).is_some_and(|q| !q.is_empty())) {
                return which.iter().map(|&i| self.pending[i].pop_front().expect("checked non-empty")).collect();
            }
            if let Some(&dead) =
                which.iter().find(|&&i| self.exited.get(i).copied().unwrap_or(false) && self.pending[i].is_empty())
            {
                panic!("child {dead} exited without reporting");
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            let (index, value) = self
                .reports
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("children {which:?} did not report before the deadline"));
            if self.pending.len() <= index {
                self.pending.resize_with(index + 1, VecDeque::new);
                self.exited.resize(index + 1, false);
            }
            match value {
                Value::Null => self.exited[index] = true,
                value => self.pending[index].push_back(value),
            }
        }
    }

    /// Waits for child `index` to exit, with the deadline.
    fn wait(&mut self, index: usize) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.children[index].try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < self.deadline, "child {index} did not exit before the deadline");
            // Polling a condition (has it exited?) with a deadline: the pause only spaces out the polls.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

const TORN_TEST: &str = "readers_in_other_processes_never_see_a_torn_packet_and_detect_laps";

#[test]
fn readers_in_other_processes_never_see_a_torn_packet_and_detect_laps() {
    match std::env::var(ROLE).as_deref() {
        Ok("writer") => return run_writer(),
        Ok("reader") => return run_reader(),
        _ => {}
    }
    let dir = TempDir::new("ring-processes");
    let ring = dir.0.join("room.ring");
    let mut children = Children::new();

    let writer = children.spawn(TORN_TEST, "writer", &ring);
    assert_eq!(children.next_reports(&[writer])[0]["ready"], true);
    let readers: Vec<usize> = (0..READERS).map(|_| children.spawn(TORN_TEST, "reader", &ring)).collect();
    for ready in children.next_reports(&readers) {
        assert_eq!(ready["ready"], true);
    }
    writeln!(children.stdin(writer), "go").expect("start the writer");

    let written = children.next_reports(&[writer]).remove(0);
    assert_eq!(written["packets"], PACKETS, "{written}");
    assert_eq!(written["head"], PACKETS, "{written}");
    let results = children.next_reports(&readers);
    for index in std::iter::once(writer).chain(readers.iter().copied()) {
        let status = children.wait(index);
        assert!(status.success(), "child {index} exited with {status}");
    }

    let mut total_laps = 0;
    for (i, r) in results.iter().enumerate() {
        eprintln!("reader {i}: {r}");
        assert_eq!(r["bad"], 0, "reader {i} accepted a bad packet: {r}");
        let accepted = r["accepted"].as_u64().expect("accepted");
        let laps = r["laps"].as_u64().expect("laps");
        assert!(accepted > 0, "reader {i} read nothing: {r}");
        assert!(laps > 0, "reader {i} was never lapped, so the lap path is untested: {r}");
        assert!(accepted + laps <= PACKETS, "{r}");
        assert!(r["codec_checks"].as_u64().expect("codec checks") > 0, "{r}");
        assert_eq!(r["last_position"], PACKETS - 1, "reader {i} did not drain to the end: {r}");
        total_laps += laps;
    }

    let reader = RingReader::open(&ring).expect("open after the run");
    let stats = reader.stats();
    assert_eq!(stats.packets, PACKETS);
    assert_eq!(stats.laps, total_laps, "every lap a cursor counted was reported in the ring");
    assert_eq!(stats.keyframe_requests, READERS as u64);
    assert_eq!(reader.writer_state(), WriterState::Closed);
    assert_eq!(reader.head(), PACKETS);
    let keyframes = reader.keyframes();
    assert!(!keyframes.is_empty() && keyframes.iter().all(|&k| meta_of(k).keyframe), "{keyframes:?}");
}

const CRASH_TEST: &str = "a_writer_process_that_dies_leaves_the_ring_to_the_next";

#[test]
fn a_writer_process_that_dies_leaves_the_ring_to_the_next() {
    if std::env::var(ROLE).as_deref() == Ok("crashing-writer") {
        return run_crashing_writer();
    }
    let dir = TempDir::new("ring-crash");
    let ring = dir.0.join("room.ring");
    let mut children = Children::new();
    let child = children.spawn(CRASH_TEST, "crashing-writer", &ring);
    let ready = children.next_reports(&[child]).remove(0);
    let pid = ready["pid"].as_u64().expect("pid");

    match RingWriter::create(&ring, GEOMETRY, 2) {
        Err(RingError::WriterBusy { pid: holder }) => assert_eq!(holder, pid),
        Err(e) => panic!("expected WriterBusy, got {e}"),
        Ok(_) => panic!("a second writer got the ring while the first lives"),
    }
    let reader = RingReader::open(&ring).expect("open");
    assert_eq!(reader.writer_pid(), pid);

    children.children[child].kill().expect("kill the writer");
    let status = children.wait(child);
    assert!(!status.success());
    assert_eq!(reader.writer_state(), WriterState::Live, "a killed writer cannot say it closed");

    let mut writer = RingWriter::create(&ring, GEOMETRY, 3).expect("the lock died with its process");
    assert_eq!((writer.epoch(), writer.head()), (2, 10));
    assert_eq!(reader.epoch(), 2);
    assert_eq!(reader.writer_pid(), u64::from(std::process::id()));
    assert!(!reader.is_replaced());
    let mut cursor = RingCursor::at(8);
    let mut buf = vec![0u8; GEOMETRY.max_payload()];
    writer.push(&meta_of(10), &payload_of(10, GEOMETRY.max_payload())).expect("push");
    for pos in 8..=10 {
        let (meta, len) = cursor.next(&reader, &mut buf).expect("packet");
        verify(pos, &meta, &buf[..len]).expect("packets of both writers read back");
    }
    assert!(cursor.next(&reader, &mut buf).is_none());
}
