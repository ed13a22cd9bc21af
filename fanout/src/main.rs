//! deadsfu-fanout: a worker that owns viewer sessions and sends them what the rooms' rings carry.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use deadsfu_fanout::fanout;
use deadsfu_runtime::config::ConfigArgs;

/// A worker allocates a payload per ring packet and str0m a buffer per datagram, from one thread, all day;
/// mimalloc returns that churn to the system where glibc's allocator kept the high-water mark resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// deadsfu fanout worker: serves viewers over WebRTC from the rooms' shared-memory rings.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Index of this worker (0-based); it listens on UDP fanout_port + index.
    #[arg(long, env = "DEADSFU_WORKER_INDEX", default_value_t = 0)]
    index: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match args.config.startup("deadsfu-fanout") {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    match fanout::run(&cfg, args.index) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(index = args.index, "{e}");
            ExitCode::FAILURE
        }
    }
}
