//! `deadsfu-ring stat PATH`: prints what a ring file's header says, as one JSON object.
//!
//! For people and for end-to-end tests (watch `head` advance). Opens the ring as a reader, so it refuses a
//! file of another major layout version with the same error a fanout worker would give.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;
use shm_proto::ring::{RingReader, LAYOUT_MAJOR, LAYOUT_MINOR};

const USAGE: &str = "usage: deadsfu-ring stat PATH\n\nPrints the header of the ring file at PATH as one JSON object.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["stat", path] => stat(Path::new(path)),
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

fn stat(path: &Path) -> ExitCode {
    let reader = match RingReader::open(path) {
        Ok(reader) => reader,
        Err(e) => {
            eprintln!("deadsfu-ring: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
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
        })).collect::<Vec<_>>(),
        "stats": reader.stats(),
    });
    println!("{out}");
    ExitCode::SUCCESS
}
