//! `deadsfu-ring stat PATH` prints the header of a ring as one JSON object.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use shm_proto::ring::{Codec, CodecEntry, Geometry, MediaKind, PacketMeta, RingReader, RingWriter};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stat(path: &std::path::Path) -> (bool, Value, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_deadsfu-ring")).arg("stat").arg(path).output().expect("run deadsfu-ring");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let value =
        if out.status.success() { serde_json::from_str(&stdout).expect("one JSON object") } else { Value::Null };
    (out.status.success(), value, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn stat_prints_the_header_and_follows_the_head() {
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = TempDir(base.join(format!("deadsfu-ring-stat-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let ring = dir.0.join("lobby.ring");

    let (ok, _, err) = stat(&ring);
    assert!(!ok && err.contains("not found"), "{err}");

    let geometry = Geometry { slot_count: 64, slot_size: 512 };
    let mut writer = RingWriter::create(&ring, geometry, 1_000).expect("create");
    writer
        .set_codecs(&[CodecEntry {
            pt: 111,
            kind: MediaKind::Audio,
            codec: Codec::Opus,
            clock_rate: 48_000,
            channels: 2,
            fmtp: "minptime=10".into(),
            slate: false,
        }])
        .expect("codecs");
    let meta = PacketMeta {
        arrival_unix_ns: 1,
        seq: 1,
        timestamp: 1,
        ssrc: 1,
        source: 1,
        pt: 96,
        kind: MediaKind::Video,
        marker: true,
        keyframe: true,
        audio_level: None,
        voice_activity: None,
        video_orientation: None,
    };
    writer.push(&meta, b"key").expect("push");
    let reader = RingReader::open(&ring).expect("open");
    reader.request_keyframe();
    reader.want_wake(2);

    let (ok, v, err) = stat(&ring);
    assert!(ok, "{err}");
    assert_eq!(v["path"], ring.to_str().expect("UTF-8 path"));
    assert_eq!(v["layout_version"], format!("1.{}", shm_proto::ring::LAYOUT_MINOR));
    assert_eq!(v["geometry"]["slot_count"], 64);
    assert_eq!(v["geometry"]["slot_size"], 512);
    assert_eq!(v["epoch"], 1);
    assert_eq!(v["wake_worker_bits"], serde_json::json!([2]));
    assert_eq!(v["writer_state"], "live");
    assert_eq!(v["writer_pid"], std::process::id());
    assert_eq!(v["heartbeat_unix_ms"], 1_000);
    assert_eq!(v["head"], 1);
    assert_eq!(v["keyframes"], serde_json::json!([0]));
    assert_eq!(v["codecs"][0]["codec"], "opus");
    assert_eq!(v["codecs"][0]["fmtp"], "minptime=10");
    assert_eq!(v["stats"]["packets"], 1);
    assert_eq!(v["stats"]["keyframe_requests"], 1);

    meta_push(&mut writer, meta, 5);
    writer.heartbeat(2_000);
    drop(writer);
    let (ok, v, err) = stat(&ring);
    assert!(ok, "{err}");
    assert_eq!(v["head"], 6);
    assert_eq!(v["heartbeat_unix_ms"], 2_000);
    assert_eq!(v["writer_state"], "closed");

    std::fs::write(&ring, vec![0u8; 4096]).expect("overwrite with junk");
    let (ok, _, err) = stat(&ring);
    assert!(!ok && err.contains("magic"), "{err}");
}

fn meta_push(writer: &mut RingWriter, mut meta: PacketMeta, n: usize) {
    meta.keyframe = false;
    for _ in 0..n {
        writer.push(&meta, b"delta").expect("push");
    }
}
