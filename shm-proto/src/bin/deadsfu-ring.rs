//! `deadsfu-ring`: looks inside a ring file, for people, operations and end-to-end tests.
//!
//! - `deadsfu-ring stat PATH` prints what the header says, as one JSON object (watch `head` advance).
//! - `deadsfu-ring dump PATH [--from POS] [--count N]` prints the packets from position `POS` on (default: the
//!   oldest one still in the ring), at most `N` of them (default: up to the head as it was at the start), one
//!   JSON object per line: `position`, every `PacketMeta` field (`arrival_unix_ns`, `seq`, `timestamp`, `ssrc`,
//!   `source`, `pt`, `kind`, `marker`, `keyframe`, `audio_level`, `voice_activity`, `video_orientation`, the
//!   last three `null` when absent), `codec` (the codec table's name for `pt`, or `null`), `len` and `payload`
//!   (lowercase hex). Positions the writer overwrote while the dump ran are skipped and counted on stderr. A
//!   dump never bumps the ring's shared counters (no keyframe request, no lap recorded), so it is safe on a live
//!   room. For example, the first packets of the keyframes still in a ring:
//!   `deadsfu-ring dump /run/deadsfu/rings/lobby.ring | jq -c 'select(.keyframe)'`.
//!
//! Both open the ring as a reader, so they refuse a file of another major layout version with the same error
//! a fanout worker would give.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::Path;
use std::process::ExitCode;

use serde_json::json;
use shm_proto::ring::{PacketMeta, ReadOutcome, RingReader, LAYOUT_MAJOR, LAYOUT_MINOR};

const USAGE: &str = "\
usage: deadsfu-ring stat PATH
       deadsfu-ring dump PATH [--from POS] [--count N]

stat  prints the header of the ring file at PATH as one JSON object.
dump  prints packets, one JSON object per line: position, metadata, codec, len, payload (hex).
      --from POS   first position (default: the oldest still in the ring)
      --count N    at most N packets (default: up to the head as it was when the dump started)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["stat", path] => stat(Path::new(path)),
        ["dump", path, opts @ ..] => match DumpArgs::parse(opts) {
            Ok(args) => dump(Path::new(path), args),
            Err(e) => {
                eprintln!("deadsfu-ring: {e}\n\n{USAGE}");
                ExitCode::from(2)
            }
        },
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn open(path: &Path) -> Option<RingReader> {
    match RingReader::open(path) {
        Ok(reader) => Some(reader),
        Err(e) => {
            eprintln!("deadsfu-ring: {}: {e}", path.display());
            None
        }
    }
}

fn stat(path: &Path) -> ExitCode {
    let Some(reader) = open(path) else { return ExitCode::FAILURE };
    let (major, minor) = reader.layout_version();
    let geometry = reader.geometry();
    let out = json!({
        "path": path,
        "layout_version": format!("{major}.{minor}"),
        "supported_layout_version": format!("{LAYOUT_MAJOR}.{LAYOUT_MINOR}"),
        "geometry": {
            "slot_count": geometry.slot_count,
            "slot_size": geometry.slot_size,
            "max_payload": geometry.max_payload(),
            "file_len": geometry.file_len(),
        },
        "created_unix_ms": reader.created_unix_ms(),
        "epoch": reader.epoch(),
        "writer_state": reader.writer_state(),
        "writer_pid": reader.writer_pid(),
        "heartbeat_unix_ms": reader.heartbeat_unix_ms(),
        "head": reader.head(),
        "reader_heartbeat_unix_ms": reader.reader_heartbeat_unix_ms(),
        "wake_worker_bits": (0..64).filter(|b| reader.wake_mask() & (1 << b) != 0).collect::<Vec<u32>>(),
        "replaced": reader.is_replaced(),
        "latest_keyframe": reader.latest_keyframe(),
        "keyframes": reader.keyframes(),
        "codecs_version": reader.codecs_version(),
        "codecs": reader.codecs().iter().map(|c| json!({
            "pt": c.pt,
            "kind": c.kind,
            "codec": c.codec.name(),
            "clock_rate": c.clock_rate,
            "channels": c.channels,
            "fmtp": c.fmtp,
            "slate": c.slate,
        })).collect::<Vec<_>>(),
        "stats": reader.stats(),
    });
    println!("{out}");
    ExitCode::SUCCESS
}

#[derive(Debug, Default, PartialEq, Eq)]
struct DumpArgs {
    from: Option<u64>,
    count: Option<u64>,
}

impl DumpArgs {
    fn parse(opts: &[&str]) -> Result<DumpArgs, String> {
        let mut args = DumpArgs::default();
        let mut it = opts.iter();
        while let Some(&opt) = it.next() {
            let slot = match opt {
                "--from" => &mut args.from,
                "--count" => &mut args.count,
                other => return Err(format!("unknown option {other:?}")),
            };
            let value = it.next().ok_or_else(|| format!("{opt} needs a value"))?;
            let n = value.parse().map_err(|_| format!("{opt} {value:?}: not a non-negative integer"))?;
            *slot = Some(n);
        }
        Ok(args)
    }
}

fn dump(path: &Path, args: DumpArgs) -> ExitCode {
    let Some(reader) = open(path) else { return ExitCode::FAILURE };
    let head = reader.head();
    let oldest = head.saturating_sub(u64::from(reader.geometry().slot_count));
    let from = args.from.unwrap_or(oldest);
    let end = match args.count {
        Some(n) => from.saturating_add(n),
        None => head.max(from),
    };
    let codecs: Vec<_> = reader.codecs();
    let codec_name = |pt: u8| codecs.iter().find(|c| c.pt == pt).map(|c| c.codec.name());
    let mut buf = vec![0u8; reader.geometry().max_payload()];
    let mut out = io::stdout().lock();
    let mut overwritten = 0u64;
    for pos in from..end {
        match reader.read(pos, &mut buf) {
            ReadOutcome::Packet { meta, len } => {
                let line = packet_json(pos, &meta, codec_name(meta.pt), &buf[..len]);
                if writeln!(out, "{line}").is_err() {
                    // The consumer went away (`| head`): not an error of ours.
                    return ExitCode::SUCCESS;
                }
            }
            ReadOutcome::Lapped => overwritten += 1,
            ReadOutcome::NotYet => break,
        }
    }
    if overwritten > 0 {
        eprintln!("deadsfu-ring: {overwritten} positions were overwritten before they could be read; skipped");
    }
    ExitCode::SUCCESS
}

fn packet_json(position: u64, meta: &PacketMeta, codec: Option<&str>, payload: &[u8]) -> serde_json::Value {
    json!({
        "position": position,
        "arrival_unix_ns": meta.arrival_unix_ns,
        "seq": meta.seq,
        "timestamp": meta.timestamp,
        "ssrc": meta.ssrc,
        "source": meta.source,
        "pt": meta.pt,
        "kind": meta.kind,
        "marker": meta.marker,
        "keyframe": meta.keyframe,
        "audio_level": meta.audio_level,
        "voice_activity": meta.voice_activity,
        "video_orientation": meta.video_orientation,
        "codec": codec,
        "len": payload.len(),
        "payload": hex(payload),
    })
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").expect("writing to a String cannot fail");
    }
    s
}

#[cfg(test)]
mod tests {
    use shm_proto::ring::{Geometry, MediaKind, RingWriter};

    use super::*;

    #[test]
    fn dump_args() {
        assert_eq!(DumpArgs::parse(&[]), Ok(DumpArgs::default()));
        assert_eq!(DumpArgs::parse(&["--count", "3", "--from", "10"]), Ok(DumpArgs { from: Some(10), count: Some(3) }));
        assert!(DumpArgs::parse(&["--from"]).is_err());
        assert!(DumpArgs::parse(&["--from", "-1"]).is_err());
        assert!(DumpArgs::parse(&["--follow"]).is_err());
    }

    #[test]
    fn packet_as_json() {
        let dir = std::env::temp_dir().join(format!("deadsfu-ring-dump-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("r.ring");
        let meta = PacketMeta {
            arrival_unix_ns: 1,
            seq: 65_536,
            timestamp: 3000,
            ssrc: 0xdead_beef,
            source: 7,
            pt: 96,
            kind: MediaKind::Video,
            marker: true,
            keyframe: true,
            audio_level: None,
            voice_activity: Some(false),
            video_orientation: None,
        };
        let mut writer = RingWriter::create(&path, Geometry { slot_count: 4, slot_size: 256 }, 0).expect("ring");
        writer.push(&meta, &[0x00, 0x0f, 0xa0]).expect("push");
        let reader = RingReader::open(&path).expect("open");
        let mut buf = vec![0u8; reader.geometry().max_payload()];
        let ReadOutcome::Packet { meta: read, len } = reader.read(0, &mut buf) else { panic!("no packet at 0") };
        let v = packet_json(0, &read, Some("VP8"), &buf[..len]);
        assert_eq!(
            v,
            json!({
                "position": 0, "arrival_unix_ns": 1, "seq": 65_536, "timestamp": 3000, "ssrc": 0xdead_beef_u32,
                "source": 7, "pt": 96, "kind": "video", "marker": true, "keyframe": true, "audio_level": null,
                "voice_activity": false, "video_orientation": null, "codec": "VP8", "len": 3, "payload": "000fa0",
            })
        );
        drop(writer);
        std::fs::remove_dir_all(&dir).ok();
    }
}
