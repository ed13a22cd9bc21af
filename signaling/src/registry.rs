//! What signaling knows of the media processes, as they tell it.
//!
//! Each media process streams its status and rooms to signaling over a subscription (see
//! [`shm_proto::control`]); [`follow`] keeps one subscription per process, each on a thread of its own that
//! reconnects with a backoff, and writes what it is told into the [`Registry`]. A process that goes away (its
//! connection closes) drops out of the registry until it is back. The router answers joins (which worker is
//! least loaded) and room lists from the registry, and asks a process directly only while the registry has no
//! entry for it (signaling just started, or the process is down); long-polls of the room list wake when the
//! registry's room list changes ([`Registry::watch`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shm_proto::control::{ProcessStatus, RoomStatus, SubscribeError, Subscription, Update};
use shm_proto::{paths, RoomName};
use tokio::sync::watch;

use crate::router::{LayerEntry, RoomEntry, RoomList, Target};

/// How long a process has to answer a subscription with its first update.
const FIRST_UPDATE: Duration = Duration::from_secs(5);
/// The wait before a follower tries a process again, doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the runtime directory is looked at for workers to follow.
const WORKER_SCAN: Duration = Duration::from_millis(250);

/// One process as it last told signaling.
#[derive(Clone, Debug)]
struct Entry {
    status: ProcessStatus,
    rooms: Vec<RoomStatus>,
}

/// The latest status and rooms of each media process that is connected, and a watch on the version of the room
/// list they make.
pub struct Registry {
    entries: Mutex<HashMap<Target, Entry>>,
    /// The version of [`Registry::room_list`]; changes only when the list does.
    version: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new()
    }
}

impl Registry {
    /// A registry that knows no process.
    pub fn new() -> Registry {
        let (version, _) = watch::channel(room_list(Vec::new()).version);
        Registry { entries: Mutex::new(HashMap::new()), version }
    }

    /// What `target` says now.
    pub fn update(&self, target: Target, update: Update) {
        self.change(|entries| {
            entries.insert(target, Entry { status: update.status, rooms: update.rooms });
        });
    }

    /// `target` went away: forget it until it is back.
    pub fn remove(&self, target: Target) {
        self.change(|entries| {
            entries.remove(&target);
        });
    }

    /// `target`'s status, if it is connected.
    pub fn status(&self, target: Target) -> Option<ProcessStatus> {
        self.lock().get(&target).map(|e| e.status.clone())
    }

    /// `target`'s rooms, if it is connected.
    pub fn rooms(&self, target: Target) -> Option<Vec<RoomStatus>> {
        self.lock().get(&target).map(|e| e.rooms.clone())
    }

    /// Counts a session signaling just handed to `target`, until the process's own next update says how many
    /// it holds: joins in quick succession then see it loaded.
    pub fn note_session(&self, target: Target) {
        if let Some(entry) = self.lock().get_mut(&target) {
            entry.status.sessions += 1;
        }
    }

    /// The room list of the connected processes.
    pub fn room_list(&self) -> RoomList {
        room_list(self.lock().values().map(|e| e.rooms.clone()).collect())
    }

    /// The version of [`Registry::room_list`], which changes only when the list does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Entry>> {
        self.entries.lock().expect("the registry's lock is never poisoned")
    }

    fn change(&self, f: impl FnOnce(&mut HashMap<Target, Entry>)) {
        let mut entries = self.lock();
        f(&mut entries);
        let version = room_list(entries.values().map(|e| e.rooms.clone()).collect()).version;
        drop(entries);
        self.version.send_if_modified(|v| std::mem::replace(v, version) != version);
    }
}

/// The room list the views of several processes make: a room appears once, live or playing the slate if any
/// process says so, with the viewers of all workers and the bitrates added up. The viewers of a simulcast
/// layer's ring (`ROOM~RID`, on the workers) are the room's.
pub fn room_list(views: Vec<Vec<RoomStatus>>) -> RoomList {
    let mut merged: BTreeMap<RoomName, RoomStatus> = BTreeMap::new();
    // Per room, the viewers of each layer's ring, and of its own ring.
    let mut on_layer: BTreeMap<(RoomName, String), u32> = BTreeMap::new();
    let mut on_own: BTreeMap<RoomName, u32> = BTreeMap::new();
    for r in views.into_iter().flatten() {
        let m = merged.entry(r.name.base()).or_insert_with(|| RoomStatus::new(r.name.base()));
        m.viewers += r.viewers;
        if let Some(rid) = r.name.rid() {
            *on_layer.entry((r.name.base(), rid.to_string())).or_default() += r.viewers;
            continue;
        }
        *on_own.entry(r.name.clone()).or_default() += r.viewers;
        m.live |= r.live;
        m.slate |= r.slate;
        if !r.codecs.is_empty() {
            m.codecs = r.codecs;
        }
        m.bitrate_bps += r.bitrate_bps;
        if r.upstream.is_some() {
            m.upstream = r.upstream;
        }
        if !r.layers.is_empty() {
            m.layers = r.layers;
        }
    }
    let rooms: Vec<RoomEntry> = merged
        .into_values()
        .map(|r| RoomEntry {
            layers: r
                .layers
                .into_iter()
                .map(|l| {
                    let chose = on_layer.get(&(r.name.clone(), l.rid.clone())).copied().unwrap_or(0);
                    let auto = if l.carried { on_own.get(&r.name).copied().unwrap_or(0) } else { 0 };
                    let bitrate_kbps = kbps(l.bitrate_bps);
                    let (width, height) = (l.width, l.height);
                    LayerEntry { rid: l.rid, bitrate_kbps, carried: l.carried, viewers: chose + auto, width, height }
                })
                .collect(),
            state: if r.live {
                "live"
            } else if r.slate {
                "slate"
            } else {
                "idle"
            },
            name: r.name,
            codecs: r.codecs,
            viewers: r.viewers,
            bitrate_kbps: kbps(r.bitrate_bps),
            upstream: r.upstream,
        })
        .collect();
    // The version covers what a room list shows, except the bitrate, which changes all the time.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for r in &rooms {
        let upstream = r.upstream.as_ref().map(|u| (&u.state, u.failures));
        let layers: Vec<_> =
            r.layers.iter().map(|l| (l.rid.as_str(), l.carried, l.viewers, l.width, l.height)).collect();
        (&r.name, r.state, &r.codecs, r.viewers, upstream, layers).hash(&mut hasher);
    }
    RoomList { version: hasher.finish() >> 11, rooms }
}

/// Bits a second in kbit/s, to a tenth.
fn kbps(bps: u64) -> f64 {
    (bps as f64 / 100.0).round() / 10.0
}

/// The indexes of the fanout workers whose control sockets are in `runtime_dir`, in order.
pub fn worker_indexes(runtime_dir: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(runtime_dir) else { return Vec::new() };
    let mut out: Vec<u32> =
        dir.filter_map(|e| e.ok()).filter_map(|e| paths::fanout_index(e.file_name().to_str()?)).collect();
    out.sort_unstable();
    out
}

/// Keeps `registry` up to date from the media processes of `runtime_dir`, from background threads: one
/// subscription to ingest, and one to each worker whose control socket is there.
pub fn follow(registry: Arc<Registry>, runtime_dir: PathBuf) {
    let followed: Arc<Mutex<HashSet<Target>>> = Arc::default();
    std::thread::Builder::new()
        .name("registry".into())
        .spawn(move || loop {
            let targets =
                std::iter::once(Target::Ingest).chain(worker_indexes(&runtime_dir).into_iter().map(Target::Worker));
            for target in targets {
                if !followed.lock().expect("the followed set's lock is never poisoned").insert(target) {
                    continue;
                }
                let (registry, mine, dir) = (registry.clone(), followed.clone(), runtime_dir.clone());
                let spawned = std::thread::Builder::new().name("follow".into()).spawn(move || {
                    follow_one(&registry, target, &dir);
                    mine.lock().expect("the followed set's lock is never poisoned").remove(&target);
                });
                if let Err(e) = spawned {
                    tracing::warn!(?target, error = %e, "cannot start following a media process");
                    followed.lock().expect("the followed set's lock is never poisoned").remove(&target);
                }
            }
            std::thread::sleep(WORKER_SCAN);
        })
        .expect("spawning a thread at startup succeeds");
}

/// Follows one process until it is a worker whose socket is gone (ingest is followed for good).
fn follow_one(registry: &Registry, target: Target, runtime_dir: &Path) {
    let path = match target {
        Target::Ingest => paths::ingest_socket(runtime_dir),
        Target::Worker(i) => paths::fanout_socket(runtime_dir, i),
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        if matches!(target, Target::Worker(_)) && !path.exists() {
            registry.remove(target);
            return;
        }
        match subscribe(registry, target, &path, &mut backoff) {
            Ok(()) => {}
            Err(e) => tracing::debug!(?target, error = %e, "subscription to a media process ended"),
        }
        registry.remove(target);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One subscription: every update into `registry` until it ends. The backoff starts over once an update came.
fn subscribe(registry: &Registry, target: Target, path: &Path, backoff: &mut Duration) -> Result<(), SubscribeError> {
    let mut subscription = Subscription::open(path, FIRST_UPDATE)?;
    loop {
        let update = subscription.recv()?;
        *backoff = MIN_BACKOFF;
        registry.update(target, update);
    }
}

#[cfg(test)]
mod tests {
    use shm_proto::control::{LayerStatus, Role, UpstreamState, UpstreamStatus};

    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::try_from(name.to_string()).unwrap()
    }

    fn status(role: Role, index: u32, sessions: u32) -> ProcessStatus {
        ProcessStatus { role, index, pid: 10 + index, sessions, accepting: true }
    }

    fn ingest(rooms: Vec<RoomStatus>) -> Update {
        Update { seq: 1, status: status(Role::Ingest, 0, 1), rooms }
    }

    fn worker(index: u32, viewers: &[(&str, u32)]) -> Update {
        let rooms = viewers.iter().map(|(name, n)| RoomStatus { viewers: *n, ..RoomStatus::new(room(name)) }).collect();
        Update { seq: 1, status: status(Role::Fanout, index, viewers.iter().map(|(_, n)| n).sum()), rooms }
    }

    fn live(name: &str, bitrate_bps: u64) -> RoomStatus {
        RoomStatus {
            live: true,
            codecs: vec!["H264".into(), "opus".into()],
            bitrate_bps,
            ..RoomStatus::new(room(name))
        }
    }

    #[test]
    fn the_room_list_merges_every_process() {
        let registry = Registry::new();
        let upstream = UpstreamStatus { state: UpstreamState::Pulling, error: None, failures: 0 };
        let slate = RoomStatus { slate: true, upstream: Some(upstream.clone()), ..RoomStatus::new(room("b")) };
        registry.update(Target::Ingest, ingest(vec![live("a", 1_500_000), slate]));
        registry.update(Target::Worker(0), worker(0, &[("a", 2), ("b", 1)]));
        registry.update(Target::Worker(1), worker(1, &[("a", 3), ("a~l", 2)]));
        let list = registry.room_list();
        let shown: Vec<_> = list.rooms.iter().map(|r| (r.name.as_str(), r.state, r.viewers)).collect();
        assert_eq!(shown, [("a", "live", 7), ("b", "slate", 1)], "a layer's viewers are its room's");
        assert_eq!(list.rooms[0].codecs, ["H264", "opus"]);
        assert_eq!(list.rooms[0].bitrate_kbps, 1500.0);
        assert_eq!(list.rooms[1].upstream, Some(upstream));
        assert!(list.rooms[0].layers.is_empty(), "a publisher without simulcast has no layers");
        assert_eq!(registry.status(Target::Worker(1)).map(|s| s.sessions), Some(5));
        assert_eq!(registry.rooms(Target::Worker(2)), None);
    }

    #[test]
    fn the_version_changes_only_when_the_list_does() {
        let registry = Registry::new();
        let mut watch = registry.watch();
        registry.update(Target::Ingest, ingest(vec![live("a", 1_000_000)]));
        assert!(watch.has_changed().unwrap());
        let first = *watch.borrow_and_update();
        assert_eq!(first, registry.room_list().version);
        // The bitrate alone, or a worker's sessions alone, is no change of the list.
        registry.update(Target::Ingest, ingest(vec![live("a", 2_000_000)]));
        registry.update(Target::Worker(0), worker(0, &[]));
        assert!(!watch.has_changed().unwrap());
        assert_eq!(registry.room_list().version, first);
        assert_eq!(registry.room_list().rooms[0].bitrate_kbps, 2000.0, "the list shows the newest bitrate");
        // A viewer is.
        registry.update(Target::Worker(0), worker(0, &[("a", 1)]));
        assert!(watch.has_changed().unwrap());
        let second = *watch.borrow_and_update();
        assert_ne!(second, first);
        // A simulcast publisher's layers are; their bitrates alone are not, the layer carried is.
        let layer = |rid: &str, bitrate_bps: u64, carried: bool| LayerStatus {
            rid: rid.into(),
            bitrate_bps,
            carried,
            width: None,
            height: None,
        };
        let layered = |h: u64, l: u64, high_carried: bool| RoomStatus {
            layers: vec![layer("h", h, high_carried), layer("l", l, !high_carried)],
            ..live("a", 1_000_000)
        };
        registry.update(Target::Ingest, ingest(vec![layered(900_000, 200_000, false)]));
        let with_layers = *watch.borrow_and_update();
        assert_ne!(with_layers, second);
        let shown = |registry: &Registry| -> Vec<(String, f64, bool, u32)> {
            let room = &registry.room_list().rooms[0];
            room.layers.iter().map(|l| (l.rid.clone(), l.bitrate_kbps, l.carried, l.viewers)).collect()
        };
        // The viewer on the room's own ring gets the carried layer.
        assert_eq!(shown(&registry), [("h".into(), 900.0, false, 0), ("l".into(), 200.0, true, 1)]);
        registry.update(Target::Ingest, ingest(vec![layered(950_000, 210_000, false)]));
        assert!(!watch.has_changed().unwrap());
        registry.update(Target::Ingest, ingest(vec![layered(950_000, 210_000, true)]));
        assert!(watch.has_changed().unwrap());
        watch.borrow_and_update();
        // A viewer on a layer's ring counts for its room and its layer.
        registry.update(Target::Worker(1), worker(1, &[("a~l", 2)]));
        assert!(watch.has_changed().unwrap());
        let second = *watch.borrow_and_update();
        assert_eq!(registry.room_list().rooms[0].viewers, 3);
        assert_eq!(shown(&registry), [("h".into(), 950.0, true, 1), ("l".into(), 210.0, false, 2)]);
        // So is a room going to the slate.
        let slate = RoomStatus { slate: true, ..RoomStatus::new(room("a")) };
        registry.update(Target::Ingest, ingest(vec![slate]));
        assert_ne!(*watch.borrow_and_update(), second);
    }

    #[test]
    fn a_process_that_drops_out_takes_its_rooms_and_status_along() {
        let registry = Registry::new();
        registry.update(Target::Ingest, ingest(vec![live("a", 0)]));
        registry.update(Target::Worker(0), worker(0, &[("a", 2)]));
        registry.update(Target::Worker(1), worker(1, &[("a", 1)]));
        let mut watch = registry.watch();
        watch.borrow_and_update();
        registry.remove(Target::Worker(0));
        assert!(watch.has_changed().unwrap());
        assert_eq!(registry.room_list().rooms[0].viewers, 1);
        assert_eq!(registry.status(Target::Worker(0)), None);
        // It comes back (restarted, without viewers).
        registry.update(Target::Worker(0), worker(0, &[]));
        assert_eq!(registry.status(Target::Worker(0)).map(|s| s.sessions), Some(0));
        registry.remove(Target::Ingest);
        registry.remove(Target::Worker(1));
        let list = registry.room_list();
        assert!(list.rooms.is_empty());
        assert_eq!(list.version, room_list(Vec::new()).version);
    }

    #[test]
    fn a_session_handed_out_counts_until_the_worker_says_otherwise() {
        let registry = Registry::new();
        registry.note_session(Target::Worker(0));
        assert_eq!(registry.status(Target::Worker(0)), None, "no entry made for an unknown worker");
        registry.update(Target::Worker(0), worker(0, &[]));
        registry.note_session(Target::Worker(0));
        registry.note_session(Target::Worker(0));
        assert_eq!(registry.status(Target::Worker(0)).map(|s| s.sessions), Some(2));
        registry.update(Target::Worker(0), worker(0, &[("a", 1)]));
        assert_eq!(registry.status(Target::Worker(0)).map(|s| s.sessions), Some(1));
    }
}
