//! deadsfu: runs the whole SFU on one host. Starts ingest, the fanout workers and signaling as child
//! processes, restarts any that dies (with backoff), and stops them all on SIGTERM or Ctrl-C. Each child reads
//! the configuration this process loaded from one file (see `deadsfu_supervisor::handoff`).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use deadsfu_runtime::config::ConfigArgs;
use deadsfu_supervisor::{handoff, preflight};
use nix::sys::signal::{self, SigSet, Signal};
use nix::unistd::Pid;

/// Restart delay after the first failure; doubles per quick failure up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A process that ran this long before dying is restarted with the minimum delay again.
const HEALTHY_UPTIME: Duration = Duration::from_secs(10);
/// How long children get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(50);

/// deadsfu on one host: signaling, ingest and N fanout workers, supervised.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

struct Slot {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    next_start: Instant,
    restarts: u32,
}

impl Slot {
    fn new(name: String, program: PathBuf, args: Vec<String>, now: Instant) -> Slot {
        Slot { name, program, args, child: None, started: now, backoff: MIN_BACKOFF, next_start: now, restarts: 0 }
    }

    fn start(&mut self, config_file: &Path, now: Instant) {
        // The command carries this process's pid: the child dies with the supervisor, even one killed outright.
        let mut cmd = handoff::command(&self.program, config_file, &self.args, std::env::vars_os());
        match cmd.spawn() {
            Ok(child) => {
                tracing::info!(process = %self.name, pid = child.id(), "started");
                self.child = Some(child);
                self.started = now;
            }
            Err(e) => {
                tracing::error!(process = %self.name, program = %self.program.display(), "cannot start: {e}");
                self.schedule_restart(now);
            }
        }
    }

    fn schedule_restart(&mut self, now: Instant) {
        if now.duration_since(self.started) >= HEALTHY_UPTIME {
            self.backoff = MIN_BACKOFF;
        }
        self.next_start = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Reaps the child if it exited; true if it did.
    fn reap(&mut self, now: Instant) -> bool {
        let Some(child) = &mut self.child else { return false };
        match child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(process = %self.name, %status, "exited; restarting");
                self.child = None;
                self.restarts += 1;
                self.schedule_restart(now);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(process = %self.name, "cannot wait: {e}");
                false
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match args.config.startup("deadsfu") {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let runtime_dir = cfg.runtime_dir();
    if let Err(e) = shm_proto::paths::prepare(&runtime_dir) {
        tracing::error!("cannot prepare runtime directory {}: {e}", runtime_dir.display());
        return ExitCode::FAILURE;
    }
    // Another instance's directory or ports: stop now with the setting to change, rather than start processes
    // that cannot bind and restart them for ever.
    let _lock = match preflight::lock_runtime_dir(&runtime_dir) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = preflight::check_ports(&cfg) {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    let config_file = match handoff::write_config(&runtime_dir, &cfg) {
        Ok(path) => path,
        Err(e) => {
            tracing::error!("cannot write the children's configuration into {}: {e}", runtime_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let stop = termination_channel();
    let bin_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
    let now = Instant::now();
    let mut slots = vec![Slot::new("ingest".into(), bin_dir.join("deadsfu-ingest"), Vec::new(), now)];
    for k in 0..cfg.worker_count() {
        let args = vec!["--index".to_string(), k.to_string()];
        slots.push(Slot::new(format!("fanout-{k}"), bin_dir.join("deadsfu-fanout"), args, now));
    }
    slots.push(Slot::new("signaling".into(), bin_dir.join("deadsfu-signaling"), Vec::new(), now));
    tracing::info!(workers = cfg.worker_count(), http = %cfg.http, runtime_dir = %runtime_dir.display(), "starting deadsfu");

    loop {
        let now = Instant::now();
        for slot in &mut slots {
            slot.reap(now);
            if slot.child.is_none() && now >= slot.next_start {
                slot.start(&config_file, now);
            }
        }
        match stop.recv_timeout(TICK) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    shutdown(&mut slots);
    let _ = std::fs::remove_file(&config_file);
    ExitCode::SUCCESS
}

/// Stops the children: SIGTERM, then SIGKILL for any still running after the grace period.
fn shutdown(slots: &mut [Slot]) {
    // Signaling first, so no new session arrives while the media processes stop.
    for slot in slots.iter().rev() {
        if let Some(child) = &slot.child {
            let _ = signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for slot in slots.iter_mut() {
        let Some(child) = &mut slot.child else { continue };
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    tracing::warn!(process = %slot.name, "did not stop in time; killing");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(TICK),
            }
        }
    }
    tracing::info!("stopped");
}

/// A channel that receives once when SIGTERM or SIGINT arrives.
fn termination_channel() -> mpsc::Receiver<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if let Err(e) = set.thread_block() {
        tracing::warn!("cannot block termination signals: {e}");
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::info!(signal = %sig, "stopping");
        }
        let _ = tx.send(());
    });
    rx
}
