//! deadsfu-ingest: owns every publisher session and writes each RTP packet once into its room's ring.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use deadsfu_ingest::shell;
use deadsfu_runtime::config::ConfigArgs;

/// Ingest allocates per received datagram and per packet event, from one thread, all day; mimalloc
/// returns that churn to the system where glibc's allocator kept the high-water mark resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// deadsfu ingest process: receives publishers over WebRTC and writes their media into per-room rings.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match args.config.startup("deadsfu-ingest") {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    match shell::run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
