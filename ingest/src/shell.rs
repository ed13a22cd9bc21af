//! The ingest process around the [core](crate::ingest): sockets, the clock, the OS random source, the pull
//! threads and the wake-ups to the workers.
//!
//! [`run`] hands the core to the media process loop ([`deadsfu_media::process::run`]) inside a [`Shell`],
//! which does what the core asks for after each turn ([`Ingest::poll_action`]) and feeds it what the pulls
//! report.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use deadsfu_media::env::Env;
use deadsfu_media::host::{SessionHost, SessionKey};
use deadsfu_media::limits::SessionLimits;
use deadsfu_media::outbox::Outbox;
use deadsfu_media::process::{self, Core, Endpoints, StartError};
use deadsfu_media::wake::WakeSender;
use deadsfu_runtime::config::Config;
use mio::Waker;
use shm_proto::control::{ProcessMetrics, ProcessStatus, Request, Response, RoomStatus};
use shm_proto::paths;
use shm_proto::ring::Geometry;
use str0m::Event;

use crate::ingest::{Action, Ingest, Publisher, Settings};
use crate::pulls::PullCommand;
use crate::slate::Slate;
use crate::upstream::{Pull, PullEvent, Upstream};

/// The pull threads of an edge.
struct PullRunner {
    upstream: Arc<Upstream>,
    running: HashMap<u64, Pull>,
    /// Threads of ended pulls still saying goodbye to the upstream.
    ending: Vec<JoinHandle<()>>,
    sender: Sender<(u64, PullEvent)>,
    events: Receiver<(u64, PullEvent)>,
    waker: Arc<Waker>,
}

impl PullRunner {
    fn run(&mut self, command: PullCommand) {
        match command {
            PullCommand::Start { id, room } => {
                let pull = Pull::start(self.upstream.clone(), room, id, self.sender.clone(), self.waker.clone());
                self.running.insert(id, pull);
            }
            PullCommand::Stop { id } => {
                if let Some(pull) = self.running.remove(&id) {
                    self.ending.extend(pull.stop());
                }
            }
            PullCommand::RequestKeyframe { id } => {
                if let Some(pull) = self.running.get(&id) {
                    pull.request_keyframe();
                }
            }
        }
        self.ending.retain(|t| !t.is_finished());
    }
}

/// The ingest core with what it asks its process for.
pub struct Shell {
    core: Ingest,
    wakes: WakeSender,
    pulls: Option<PullRunner>,
}

impl Shell {
    /// Does what the core asks for until it asks for nothing.
    fn act(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Wake(mask) => self.wakes.wake(mask),
                Action::Pull(command) => match &mut self.pulls {
                    Some(pulls) => pulls.run(command),
                    None => tracing::warn!(?command, "a pull command on an origin"),
                },
            }
        }
    }
}

impl Core for Shell {
    type App = Publisher;

    fn host(&self) -> &SessionHost<Publisher> {
        self.core.host()
    }

    fn host_and_events(&mut self) -> (&mut SessionHost<Publisher>, &mut Vec<(SessionKey, Event)>) {
        self.core.host_and_events()
    }

    fn end_session(&mut self, key: SessionKey) {
        self.core.end_session(key);
    }

    fn stop_accepting(&mut self) {
        self.core.stop_accepting();
        self.act();
    }

    fn is_drained(&self) -> bool {
        self.core.is_drained() && self.pulls.as_ref().is_none_or(|p| p.ending.iter().all(|t| t.is_finished()))
    }

    fn handle_request(&mut self, now: Instant, request: Request) -> Response {
        let response = self.core.handle_request(now, request);
        self.act();
        response
    }

    fn poll(&mut self, now: Instant, out: &mut dyn Outbox) {
        if let Some(pulls) = &self.pulls {
            while let Ok((id, event)) = pulls.events.try_recv() {
                self.core.handle_pull_event(now, id, event);
            }
        }
        self.core.poll(now, out);
        self.act();
    }

    fn next_timeout(&mut self, now: Instant) -> Option<Instant> {
        self.core.next_timeout(now)
    }

    fn has_work(&self) -> bool {
        self.core.has_work()
    }

    fn metrics(&self, m: &mut ProcessMetrics) {
        self.core.metrics(m);
    }

    fn status_snapshot(&self, now: Instant) -> (ProcessStatus, Vec<RoomStatus>) {
        self.core.status_snapshot(now)
    }
}

/// Runs ingest until SIGTERM or SIGINT.
pub fn run(cfg: &Config) -> Result<(), RunError> {
    let runtime_dir = cfg.runtime_dir();
    let upstream = match cfg.dial_upstream.as_deref() {
        Some(url) => Some(Arc::new(Upstream::new(url, cfg.upstream_token.clone(), cfg.upstream_ca.as_deref())?)),
        None => None,
    };
    let settings = Settings {
        runtime_dir: runtime_dir.clone(),
        geometry: Geometry { slot_count: cfg.ring_slots, slot_size: cfg.ring_slot_size },
        keyframe_request_interval: Duration::from_millis(cfg.keyframe_request_interval_ms),
        keyframe_fallback_interval: (cfg.keyframe_fallback_interval_s > 0)
            .then(|| Duration::from_secs(cfg.keyframe_fallback_interval_s)),
        upstream: upstream.as_ref().map(|u| u.base().to_string()),
        upstream_grace: Duration::from_secs(cfg.upstream_grace_s),
        refuse_publishers: cfg.refuses_publishers(),
        slate: cfg.slate,
        sessions: SessionLimits::from_config(cfg),
        max_rooms: cfg.max_rooms,
        room_grace: Duration::from_secs(cfg.room_grace_s),
        max_pulls: cfg.max_pulls,
    };
    let slate = Slate::load(cfg.slate_h264.as_deref(), cfg.slate_vp8.as_deref(), cfg.slate_fps)?;
    let endpoints = Endpoints {
        name: "ingest".into(),
        runtime_dir: &runtime_dir,
        udp_port: cfg.ingest_port,
        udp_port_setting: "ingest_port, --ingest-port".into(),
        ice_tcp: cfg.ice_tcp,
        advertise: cfg.ice_candidate_host,
        control_socket: paths::ingest_socket(&runtime_dir),
        wake_socket: None,
    };
    process::run(endpoints, |candidates, waker, now| {
        warn_if_rings_do_not_fit(&settings);
        let pulls = upstream.map(|upstream| {
            let (sender, events) = mpsc::channel();
            PullRunner { upstream, running: HashMap::new(), ending: Vec::new(), sender, events, waker }
        });
        let wakes = WakeSender::new(&settings.runtime_dir);
        Shell { core: Ingest::new(settings, slate, candidates, Env::system(), now), wakes, pulls }
    })?;
    Ok(())
}

/// Warns at start if the runtime directory's file system holds fewer rings than `max_rooms` (each room's ring, and
/// each simulcast layer's, takes its whole size when it is made): the rooms past what it holds are refused.
fn warn_if_rings_do_not_fit(settings: &Settings) {
    let Some(fs_bytes) = paths::file_system_bytes(&settings.runtime_dir) else { return };
    let ring_bytes = settings.geometry.file_len() as u64;
    if let Some(fit) = rings_short_of_max_rooms(fs_bytes, ring_bytes, settings.max_rooms) {
        tracing::warn!(
            runtime_dir = %settings.runtime_dir.display(),
            size_mib = fs_bytes >> 20,
            ring_mib = ring_bytes >> 20,
            max_rooms = settings.max_rooms,
            "the runtime directory holds {fit} rings, fewer than max_rooms: rooms past them are refused (503); \
             give it more room (a tmpfs's size), lower max_rooms, or make rings smaller (ring_slots, ring_slot_size)"
        );
    }
}

/// How many rings of `ring_bytes` a file system of `fs_bytes` holds, if fewer than `max_rooms`; `None` for a size
/// of 0 (not said).
fn rings_short_of_max_rooms(fs_bytes: u64, ring_bytes: u64, max_rooms: usize) -> Option<u64> {
    let fit = fs_bytes.checked_div(ring_bytes)?;
    (fs_bytes > 0 && fit < max_rooms as u64).then_some(fit)
}

/// Why ingest stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("slate: {0}")]
    Slate(#[from] crate::slate::SlateError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::CaError),
    #[error(transparent)]
    Start(#[from] StartError),
}

#[cfg(test)]
mod ring_room_tests {
    use super::*;

    #[test]
    fn a_runtime_directory_smaller_than_max_rooms_rings_is_told() {
        const MIB: u64 = 1 << 20;
        // /run on a 16 GiB host (10%): 1638 MiB holds 204 rings of 8 MiB.
        assert_eq!(rings_short_of_max_rooms(1638 * MIB, 8 * MIB, 1000), Some(204));
        assert_eq!(rings_short_of_max_rooms(1638 * MIB, 8 * MIB, 204), None);
        assert_eq!(rings_short_of_max_rooms(12 * 1024 * MIB, 8 * MIB, 1000), None);
        // A size not said.
        assert_eq!(rings_short_of_max_rooms(0, 8 * MIB, 1000), None);
    }
}
