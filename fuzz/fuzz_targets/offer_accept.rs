//! An SDP offer through the whole accept path of both media processes: ingest's `Publish` and a fanout
//! worker's `View`, each of which runs `deadsfu_media::offer::accept` with its own configuration (ingest:
//! str0m's default codecs; fanout: the viewer's header extensions, its stream id, and the room's codec table
//! to match). No sockets: the cores are built on a temporary runtime directory and fed control requests.
//!
//! Input: the offer (bytes that are not UTF-8 are replaced, as any string in a control request is UTF-8). Its
//! length picks where it goes, so that each input costs one SDP parse (the parse under coverage
//! instrumentation is most of an execution's time): remainder 0 of 4, ingest's `Publish`; 1, a `View` of room
//! `view`, whose ring carries a publisher's codec table (H264, VP8, Opus); 2, ingest again; 3, a `View` of
//! room `empty`, which has no ring yet.
//!
//! Offers that gave one payload type more than one meaning across media sections made str0m panic ("Pt
//! locked multiple times"); the inputs that found it are in fuzz/regressions/offer_accept/ and are refused
//! with an error now (media/src/offer.rs checks first; vendor/str0m returns an error too).
#![no_main]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use deadsfu_fanout::fanout::Fanout;
use deadsfu_ingest::ingest::{Ingest, Settings};
use deadsfu_ingest::slate::Slate;
use deadsfu_media::env::Env;
use deadsfu_media::limits::SessionLimits;
use deadsfu_media::offer;
use deadsfu_media::process::Core;
use libfuzzer_sys::fuzz_target;
use shm_proto::control::{FanoutRequest, IngestRequest, Response};
use shm_proto::ring::{Codec, CodecEntry, Geometry, MediaKind, RingWriter};
use shm_proto::{paths, RoomName};
use str0m::net::Protocol;
use str0m::Candidate;

/// Small rings: ingest opens one per offer it takes.
const GEOMETRY: Geometry = Geometry { slot_count: 16, slot_size: 256 };

struct World {
    runtime_dir: PathBuf,
    candidates: Vec<Candidate>,
    /// The writer of room `view`'s ring, holding its codec table.
    _view_ring: RingWriter,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let runtime_dir = base.join(format!("deadsfu-fuzz-offer-{}", std::process::id()));
        std::fs::create_dir_all(paths::rings_dir(&runtime_dir)).expect("create the runtime directory");
        let room = RoomName::new("view").expect("a valid room name");
        let mut ring = RingWriter::create(&paths::ring(&runtime_dir, &room), GEOMETRY, 1).expect("create a ring");
        let entry = CodecEntry::new;
        ring.set_codecs(&[
            entry(111, MediaKind::Audio, Codec::Opus, 48_000, 2, "minptime=10;useinbandfec=1"),
            entry(
                102,
                MediaKind::Video,
                Codec::H264,
                90_000,
                0,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            ),
            entry(96, MediaKind::Video, Codec::Vp8, 90_000, 0, ""),
        ])
        .expect("set the codec table");
        World {
            runtime_dir,
            candidates: {
                let addrs: [SocketAddr; 2] =
                    ["127.0.0.1:3478".parse().expect("an address"), "[::1]:3478".parse().expect("an address")];
                let mut all = offer::host_candidates(&addrs, Protocol::Udp);
                all.extend(offer::host_candidates(&addrs, Protocol::Tcp));
                all
            },
            _view_ring: ring,
        }
    })
}

fn check(resp: &Response) {
    if let Response::Answer { answer, session } = resp {
        assert!(answer.starts_with("v=0"), "answer of {session} is not SDP: {answer}");
    }
}

fn run(data: &[u8]) {
    let offer = String::from_utf8_lossy(data).into_owned();
    let w = world();
    let now = Instant::now();

    match data.len() % 4 {
        0 | 2 => {
            let settings = Settings {
                runtime_dir: w.runtime_dir.clone(),
                geometry: GEOMETRY,
                keyframe_request_interval: Duration::from_millis(500),
                keyframe_fallback_interval: None,
                upstream: None,
                upstream_grace: Duration::from_secs(10),
                refuse_publishers: false,
                slate: false,
                sessions: SessionLimits::default(),
                max_rooms: 16,
                room_grace: Duration::from_secs(10),
                max_pulls: 1,
            };
            let slate = Slate { clips: Vec::new() };
            let mut ingest = Ingest::new(settings, slate, w.candidates.clone(), Env::system(), now);
            let room = RoomName::new("pub").expect("a valid room name");
            check(&ingest.handle_request(now, IngestRequest::Publish { room, offer }.into()));
        }
        k => {
            let mut fanout = Fanout::new(
                0,
                w.runtime_dir.clone(),
                w.candidates.clone(),
                SessionLimits::default(),
                Env::system(),
                now,
            );
            let room = RoomName::new(if k == 1 { "view" } else { "empty" }).expect("a valid room name");
            check(&fanout.handle_request(now, FanoutRequest::View { room, offer }.into()));
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
