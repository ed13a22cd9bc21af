//! deadsfu-ingest: owns every publisher session and writes each RTP packet once into its room's ring.

#![forbid(unsafe_code)]

mod ingest;
mod keyframe;
mod slate;

use std::process::ExitCode;

use clap::Parser;
use shm_proto::config::ConfigArgs;

/// deadsfu ingest process: receives publishers over WebRTC and writes their media into per-room rings.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match args.config.startup("deadsfu-ingest", args.print_config) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    match ingest::run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
