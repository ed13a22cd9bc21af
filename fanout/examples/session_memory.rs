//! Measures the memory of a viewer session as the fanout core makes and feeds it, in memory, no sockets.
//!
//! N str0m clients make browser-like receive-only offers to a [`Fanout`] core, which takes each exactly as a
//! worker does and connects it (ICE, DTLS, SRTP); then a room's ring, written by this program as ingest
//! would, carries a stream for a few simulated seconds: H.264 video at 150 packets/s of ~1100 bytes with a
//! keyframe of 40 packets at once every 2 s, and Opus audio at 50 packets/s. The core reads each packet once
//! and writes it into every session, as in a worker. The clients' RTCP and consent checks reach the core,
//! the core's media is dropped on the way to them.
//!
//! A counting global allocator (over mimalloc, the fanout's allocator) tags every allocation with who made it
//! (the core, the clients and harness), so the live heap per session is exact: bytes allocated minus bytes
//! freed (not counting the allocator's own overhead). The payloads the core keeps for replays are shared by
//! the room's sessions and shown apart ([`Fanout::replay_cache_bytes`]); payloads only the RTX caches still
//! hold count as the sessions'. The process's RSS is shown besides; it includes the clients.
//!
//! `cargo run --release -p deadsfu-fanout --example session_memory [-- SESSIONS]` (200 by default);
//! `SESSION_MEMORY_SITES=1` also records a backtrace for each core allocation and prints the bytes still live
//! after the media phase by allocation site (slow: use a few sessions).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---- The counting allocator ----

/// Who made an allocation.
const OTHER: usize = 0;
const SERVER: usize = 1;
const PROFILER: usize = 2;
const TAGS: usize = 3;

/// Room before each block for its size and tag, keeping the block's alignment.
const HEADER: usize = 16;

static LIVE: [AtomicIsize; TAGS] = [const { AtomicIsize::new(0) }; TAGS];
static CURRENT: AtomicUsize = AtomicUsize::new(OTHER);
static SITES_ON: AtomicBool = AtomicBool::new(false);
/// Live server allocations by address, with where they were made (while `SITES_ON`).
static SITES: Mutex<Option<HashMap<usize, Site>>> = Mutex::new(None);
/// The phase a recorded allocation was made in (0 accept, 1 connect, 2 media).
static PHASE: AtomicUsize = AtomicUsize::new(0);
const PHASES: [&str; 3] = ["accept", "connect", "media"];

thread_local! {
    /// Set while the profiler itself runs: its allocations are its own and not recorded.
    static IN_PROFILER: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

/// A recorded allocation: its size, the phase it was made in and where.
type Site = (usize, usize, std::backtrace::Backtrace);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn in_profiler() -> bool {
    IN_PROFILER.try_with(|c| c.get()).unwrap_or(true)
}

fn with_profiler<R>(f: impl FnOnce() -> R) -> R {
    IN_PROFILER.with(|c| c.set(true));
    let r = f();
    IN_PROFILER.with(|c| c.set(false));
    r
}

fn outer(layout: Layout) -> (Layout, usize) {
    let offset = HEADER.max(layout.align());
    let outer = Layout::from_size_align(layout.size() + offset, layout.align().max(HEADER)).expect("a layout");
    (outer, offset)
}

impl Counting {
    /// Writes the header of a block at `base` and counts it; returns the caller's pointer.
    ///
    /// # Safety
    /// `base` points to a block of at least `offset + size` bytes, `offset` >= 16 and 16-aligned.
    unsafe fn record(base: *mut u8, offset: usize, size: usize, tag: usize) -> *mut u8 {
        // SAFETY: the block has `offset` bytes before the caller's part, 16 of which hold the header.
        let user = unsafe { base.add(offset) };
        // SAFETY: user - 16 is inside the block and 8-aligned (offset and base are 16-aligned).
        unsafe { (user.sub(16) as *mut usize).write(size) };
        // SAFETY: as above.
        unsafe { (user.sub(8) as *mut usize).write(tag) };
        LIVE[tag].fetch_add(size as isize, Ordering::Relaxed);
        if tag == SERVER && SITES_ON.load(Ordering::Relaxed) {
            with_profiler(|| {
                let bt = std::backtrace::Backtrace::force_capture();
                let mut sites = SITES.lock().unwrap_or_else(|e| e.into_inner());
                sites.get_or_insert_with(HashMap::new).insert(user as usize, (size, PHASE.load(Ordering::Relaxed), bt));
            });
        }
        user
    }

    /// The size and tag in the header of the caller's pointer `user`, uncounting it.
    ///
    /// # Safety
    /// `user` came from [`Counting::record`].
    unsafe fn forget(user: *mut u8) -> (usize, usize) {
        // SAFETY: written by `record`.
        let size = unsafe { (user.sub(16) as *const usize).read() };
        // SAFETY: written by `record`.
        let tag = unsafe { (user.sub(8) as *const usize).read() };
        LIVE[tag].fetch_sub(size as isize, Ordering::Relaxed);
        if tag == SERVER && SITES_ON.load(Ordering::Relaxed) && !in_profiler() {
            let removed =
                with_profiler(|| SITES.lock().unwrap_or_else(|e| e.into_inner()).as_mut()?.remove(&(user as usize)));
            drop(removed);
        }
        (size, tag)
    }
}

fn current_tag() -> usize {
    if in_profiler() {
        PROFILER
    } else {
        CURRENT.load(Ordering::Relaxed)
    }
}

// SAFETY: every block comes from mimalloc with room for the header before the caller's part, and goes back to
// it with the same layout.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (outer, offset) = outer(layout);
        // SAFETY: `outer` has a nonzero size.
        let base = unsafe { mimalloc::MiMalloc.alloc(outer) };
        if base.is_null() {
            return base;
        }
        // SAFETY: `base` holds `outer`.
        unsafe { Self::record(base, offset, layout.size(), current_tag()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (outer, offset) = outer(layout);
        // SAFETY: `ptr` came from `alloc`.
        unsafe { Self::forget(ptr) };
        // SAFETY: the block was allocated at ptr - offset with `outer`.
        unsafe { mimalloc::MiMalloc.dealloc(ptr.sub(offset), outer) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The block keeps its maker's tag; its site (if recorded) is where it was grown.
        let (outer_old, offset) = outer(layout);
        // SAFETY: `ptr` came from `alloc`.
        let (_, tag) = unsafe { Self::forget(ptr) };
        // SAFETY: the block was allocated at ptr - offset with `outer_old`; the new size keeps the header.
        let base = unsafe { mimalloc::MiMalloc.realloc(ptr.sub(offset), outer_old, new_size + offset) };
        if base.is_null() {
            // The old block is still there: count it again.
            // SAFETY: the old block is unchanged.
            unsafe { Self::record(ptr.sub(offset), offset, layout.size(), tag) };
            return base;
        }
        // SAFETY: `base` holds `new_size + offset` bytes.
        unsafe { Self::record(base, offset, new_size, tag) }
    }
}

/// Runs `f` with its allocations counted as `tag`'s.
fn as_tag<R>(tag: usize, f: impl FnOnce() -> R) -> R {
    let before = CURRENT.swap(tag, Ordering::Relaxed);
    let r = f();
    CURRENT.store(before, Ordering::Relaxed);
    r
}

fn live(tag: usize) -> isize {
    LIVE[tag].load(Ordering::Relaxed)
}

/// Bytes in use in glibc's malloc: what C code (aws-lc, the crypto under str0m and dimpl) allocates, which
/// bypasses Rust's global allocator. Server and clients together.
fn c_heap() -> isize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { nix::libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as isize
}

/// The resident set after a pause and a little allocator traffic, so that mimalloc returns the pages it freed
/// meanwhile (it does so some milliseconds after, on later calls), as a running fanout's would be.
fn rss() -> isize {
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(20));
        for size in [64, 1200, 20_000, 200_000] {
            drop(std::hint::black_box(vec![1u8; size]));
        }
    }
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: isize = statm.split_whitespace().nth(1).expect("resident").parse().expect("a number");
    pages * 4096
}

use deadsfu_fanout::fanout::Fanout;
use deadsfu_media::env::Env;
use deadsfu_media::limits::SessionLimits;
use deadsfu_media::offer;
use deadsfu_media::outbox::{Outbox, Path};
use deadsfu_media::process::Core;
use shm_proto::control::{FanoutRequest, Response};
use shm_proto::ring::{Codec, CodecEntry, Geometry, MediaKind as RingKind, PacketMeta, RingWriter};
use shm_proto::{paths, RoomName};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// Packets of a keyframe, written into the ring at once.
const KEYFRAME_PACKETS: usize = 40;
const ROOM: &str = "bench";

// ---- The harness ----

type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

struct Client {
    rtc: Rtc,
    connected: bool,
}

/// Polls a client until it times out; datagrams go to `out`.
fn drain_client(c: &mut Client, out: &mut Vec<Datagram>) {
    loop {
        match c.rtc.poll_output().expect("poll_output") {
            Output::Transmit(t) => out.push((t.source, t.destination, t.contents.to_vec())),
            Output::Event(Event::Connected) => c.connected = true,
            Output::Event(_) => {}
            Output::Timeout(_) => return,
        }
    }
}

/// RTP (not RTCP) by RFC 5761's demultiplexing: the core's media, which the clients need not decrypt.
fn is_rtp(d: &[u8]) -> bool {
    d.len() > 1 && (128..=191).contains(&d[0]) && !(192..=223).contains(&d[1])
}

struct Room {
    fanout: Fanout,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Client output on its way to the core.
    to_core: Vec<Datagram>,
    /// RTP datagrams the core sent.
    rtp_sent: u64,
    /// Time the core spent in its turns (handling the clients' datagrams, reading the ring, protecting and
    /// writing media); no system call is made in it.
    core_time: Duration,
    /// The send buffer the core writes datagrams into, as a process's sockets have one.
    buf: Vec<u8>,
}

/// The core's outbox: RTP is counted and dropped (written into the buffer, as for a socket), the rest goes
/// to the clients.
struct Sink {
    buf: Vec<u8>,
    rtp: u64,
    to_clients: Vec<Datagram>,
}

impl Outbox for Sink {
    fn transmit(&mut self, t: Transmit) {
        as_tag(OTHER, || {
            if is_rtp(&t.contents) {
                self.rtp += 1;
            } else {
                self.to_clients.push((t.source, t.destination, t.contents.to_vec()))
            }
        })
    }

    fn write(&mut self, write: &mut dyn FnMut(&mut Vec<u8>) -> Option<Path>) {
        let start = self.buf.len();
        if let Some((_, source, destination)) = write(&mut self.buf) {
            if is_rtp(&self.buf[start..]) {
                self.rtp += 1;
            } else {
                let data = self.buf[start..].to_vec();
                as_tag(OTHER, || self.to_clients.push((source, destination, data)));
            }
        }
        self.buf.truncate(start);
    }
}

impl Room {
    /// One round: clients' output to the core, the core's turn (ring read, timers) and output to the clients.
    fn round(&mut self, now: Instant) {
        let mut to_core = std::mem::take(&mut self.to_core);
        for c in &mut self.clients {
            c.rtc.handle_input(Input::Timeout(now)).expect("client timeout");
            drain_client(c, &mut to_core);
        }
        let mut sink = Sink { buf: std::mem::take(&mut self.buf), rtp: 0, to_clients: Vec::new() };
        let fanout = &mut self.fanout;
        let started = Instant::now();
        as_tag(SERVER, || {
            for (source, destination, data) in &to_core {
                fanout.handle_packet(now, Protocol::Udp, *source, *destination, data, &mut sink);
            }
            fanout.poll(now, &mut sink);
        });
        self.core_time += started.elapsed();
        self.rtp_sent += sink.rtp;
        self.buf = sink.buf;
        for (source, destination, data) in sink.to_clients {
            let Some(&i) = self.by_addr.get(&destination) else { continue };
            let c = &mut self.clients[i];
            let receive = Receive::new(Protocol::Udp, source, destination, &data).expect("a datagram");
            c.rtc.handle_input(Input::Receive(now, receive)).expect("client input");
            // str0m wants its output drained after every input.
            drain_client(c, &mut self.to_core);
        }
    }
}

fn codec_table() -> Vec<CodecEntry> {
    let h264 = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
    vec![
        CodecEntry::new(111, RingKind::Audio, Codec::Opus, 48_000, 2, "minptime=10;useinbandfec=1"),
        CodecEntry::new(102, RingKind::Video, Codec::H264, 90_000, 0, h264),
    ]
}

fn main() {
    let arg = |i: usize| std::env::args().nth(i).map(|a| a.parse::<u64>().expect("arguments are numbers"));
    let n = arg(1).unwrap_or(200) as usize;
    let sites = std::env::var_os("SESSION_MEMORY_SITES").is_some();
    let media_seconds = 4;
    let server_addr: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    let origin = Instant::now();
    let mut now = origin;
    let unix0 = 1_700_000_000_000_000_000u64;
    let unix_ns = |now: Instant| unix0 + (now - origin).as_nanos() as u64;
    let dir = std::env::temp_dir().join(format!("deadsfu-session-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    paths::prepare(&dir).expect("a runtime directory");
    let room_name = RoomName::new(ROOM).expect("a room name");
    let geometry = Geometry { slot_count: 4096, slot_size: 2048 };
    let mut ring =
        RingWriter::create(&paths::ring(&dir, &room_name), geometry, unix_ns(now) / 1_000_000).expect("a ring");
    ring.set_codecs(&codec_table()).expect("the codec table");
    let candidates = offer::host_candidates(&[server_addr], Protocol::Udp);
    // The process's DTLS certificate and the crypto provider's self-test, made once, before counting.
    let _ = offer::accept(&client_offer(now, "10.0.0.1:1".parse().unwrap()).0, &candidates, now, |c| c);
    let limits = SessionLimits { max_sessions: n + 1, max_pending: n + 1, ..SessionLimits::default() };
    let fanout = Fanout::new(0, dir.clone(), candidates, limits, Env::simulated(origin, unix0, 1), now);
    let mut room = Room {
        fanout,
        clients: Vec::with_capacity(n),
        by_addr: HashMap::new(),
        to_core: Vec::new(),
        rtp_sent: 0,
        core_time: Duration::ZERO,
        buf: Vec::with_capacity(64 * 2048),
    };
    SITES_ON.store(sites, Ordering::Relaxed);
    let (heap0, rss0, c0) = (live(SERVER), rss(), c_heap());
    let client0 = live(OTHER);

    // 1. Accept, as a worker takes a WHEP offer.
    for i in 0..n {
        let addr = SocketAddr::from(([10, (i / 250) as u8, (i % 250) as u8 + 1, 1], 5000));
        let (offer_sdp, client, pending) = client_offer(now, addr);
        let request = FanoutRequest::View { room: room_name.clone(), offer: offer_sdp }.into();
        let Response::Answer { answer, .. } = as_tag(SERVER, || room.fanout.handle_request(now, request)) else {
            panic!("the viewer was refused")
        };
        let mut client = Client { rtc: client, connected: false };
        let answer = str0m::change::SdpAnswer::from_sdp_string(&answer).expect("an answer");
        client.rtc.sdp_api().accept_answer(pending, answer).expect("answer accepted");
        room.by_addr.insert(addr, i);
        room.clients.push(client);
    }
    let (heap1, rss1, c1) = (live(SERVER), rss(), c_heap());
    let client1 = live(OTHER);

    // 2. Connect: ICE, DTLS, SRTP.
    PHASE.store(1, Ordering::Relaxed);
    for _ in 0..200 {
        room.round(now);
        if room.clients.iter().all(|c| c.connected) {
            break;
        }
        now += Duration::from_millis(10);
    }
    assert!(room.clients.iter().all(|c| c.connected), "clients not connected");
    // A second of quiet, as after a real join (timers, first reports).
    for _ in 0..100 {
        now += Duration::from_millis(10);
        room.round(now);
    }
    let (heap2, rss2, c2) = (live(SERVER), rss(), c_heap());
    let client2 = live(OTHER);
    let cache2 = room.fanout.replay_cache_bytes() as isize;

    // 3. Media: 150 video packets/s (~1100 bytes) with a keyframe burst every 2 s, 50 audio packets/s (~120
    // bytes), written into the ring in 5 ms turns.
    PHASE.store(2, Ordering::Relaxed);
    let step = Duration::from_millis(5);
    let steps = media_seconds * 200;
    let (mut video_n, mut audio_n) = (0u64, 0u64);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let t0 = now;
    let payload = vec![0x5cu8; 1200];
    let (rtp0, core0) = (room.rtp_sent, room.core_time);
    for s in 0..steps {
        now += step;
        let elapsed = now - t0;
        // Every 2 s a keyframe: KEYFRAME_PACKETS packets at once, as a publisher's burst reaches ingest (the
        // packets after it are late by as much, keeping the mean rate).
        let keyframe = if s % 400 == 0 { KEYFRAME_PACKETS } else { 0 };
        let mut written = 0;
        as_tag(OTHER, || {
            while video_n * 1_000_000 / 150 <= elapsed.as_micros() as u64 || written < keyframe {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let len = 1000 + (rng % 200) as usize;
                let meta = PacketMeta {
                    arrival_unix_ns: unix_ns(now),
                    seq: 1000 + video_n,
                    timestamp: (elapsed.as_micros() as u64 * 90_000 / 1_000_000) as u32,
                    ssrc: 1,
                    source: 7,
                    pt: 102,
                    kind: RingKind::Video,
                    marker: video_n % 5 == 4,
                    keyframe: written == 0 && keyframe > 0,
                    audio_level: None,
                    voice_activity: None,
                    video_orientation: None,
                };
                ring.push(&meta, &payload[..len]).expect("a ring write");
                video_n += 1;
                written += 1;
            }
            while audio_n * 1_000_000 / 50 <= elapsed.as_micros() as u64 {
                let meta = PacketMeta {
                    arrival_unix_ns: unix_ns(now),
                    seq: 5000 + audio_n,
                    timestamp: (audio_n * 960) as u32,
                    ssrc: 2,
                    source: 7,
                    pt: 111,
                    kind: RingKind::Audio,
                    marker: false,
                    keyframe: false,
                    audio_level: Some(-30),
                    voice_activity: None,
                    video_orientation: None,
                };
                ring.push(&meta, &payload[..120]).expect("a ring write");
                audio_n += 1;
            }
        });
        room.round(now);
        if s % 200 == 199 {
            eprintln!("media: {} s", (s + 1) / 200);
        }
    }
    let (heap3, rss3, c3) = (live(SERVER), rss(), c_heap());
    let cache3 = room.fanout.replay_cache_bytes() as isize;
    SITES_ON.store(false, Ordering::Relaxed);
    let client3 = live(OTHER);

    println!(
        "wrote {video_n} video and {audio_n} audio packets into the ring; the core sent {:.0} RTP datagrams per session",
        room.rtp_sent as f64 / n as f64
    );
    let (rtp, core) = (room.rtp_sent - rtp0, room.core_time - core0);
    println!(
        "the core's time per RTP datagram sent in the media phase: {:.2} us (numbering, protection, bookkeeping, \
         the clients' RTCP; no system calls; counting allocator)",
        core.as_secs_f64() * 1e6 / rtp.max(1) as f64
    );
    println!("size of an Rtc {} bytes", std::mem::size_of::<Rtc>());
    let kb = |b: isize| b as f64 / 1024.0 / n as f64;
    println!("{n} viewer sessions of a fanout core");
    println!("core live heap per session (allocated - freed, less the room's shared replay cache):");
    println!("  after accept                   {:7.1} KB", kb(heap1 - heap0));
    println!(
        "  after connect (ICE/DTLS/SRTP)  {:7.1} KB  (+{:.1})",
        kb(heap2 - heap0 - cache2),
        kb(heap2 - heap1 - cache2)
    );
    println!(
        "  after {media_seconds} s of media             {:7.1} KB  (+{:.1})",
        kb(heap3 - heap0 - cache3),
        kb(heap3 - heap2 - cache3 + cache2)
    );
    println!("the room's replay cache (payloads shared by every session): {:.0} KB", cache3 as f64 / 1024.0);
    println!(
        "process RSS per session: accept {:.1} KB, connect {:.1} KB, media {:.1} KB",
        kb(rss1 - rss0),
        kb(rss2 - rss0),
        kb(rss3 - rss0),
    );
    println!(
        "  of which the clients' heap: accept {:.1} KB, connect {:.1} KB, media {:.1} KB",
        kb(client1 - client0),
        kb(client2 - client0),
        kb(client3 - client0),
    );
    println!(
        "C heap (glibc malloc: aws-lc, core and clients) per session: accept {:.1} KB, connect {:.1} KB, media {:.1} KB",
        kb(c1 - c0),
        kb(c2 - c0),
        kb(c3 - c0)
    );
    if sites {
        print_sites(n);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Skip tearing everything down.
    std::process::exit(0);
}

/// A browser-like receive-only offer from a str0m client at `addr`.
fn client_offer(now: Instant, addr: SocketAddr) -> (String, Rtc, str0m::change::SdpPendingOffer) {
    let mut client = Rtc::builder().build(now);
    client.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut change = client.sdp_api();
    change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    (offer.to_sdp_string(), client, pending)
}

/// Live server bytes, by the phase and site that allocated them.
fn print_sites(n: usize) {
    let sites = with_profiler(|| SITES.lock().unwrap().take().unwrap_or_default());
    let mut by_site: HashMap<String, (usize, usize)> = HashMap::new();
    with_profiler(|| {
        for (_, (size, phase, bt)) in sites {
            let text = bt.to_string();
            let frames: Vec<&str> = text
                .lines()
                .filter_map(|l| l.trim().split_once(": ").map(|(_, f)| f))
                .filter(|f| !f.starts_with("at "))
                .filter(|f| {
                    ![
                        "std::",
                        "alloc::",
                        "core::",
                        "<alloc::",
                        "<core::",
                        "__rust",
                        "<session_memory::Counting",
                        "session_memory::Counting",
                        "session_memory::with_profiler",
                        "hashbrown::",
                        "<T as alloc",
                        "<u8 as alloc",
                        "<std::",
                        "rust_begin",
                        "__libc",
                        "_start",
                        "main",
                    ]
                    .iter()
                    .any(|p| f.starts_with(p))
                })
                .take(8)
                .collect();
            let e = by_site.entry(format!("[{}] {}", PHASES[phase], frames.join("\n      <- "))).or_default();
            e.0 += size;
            e.1 += 1;
        }
    });
    let mut sorted: Vec<_> = by_site.into_iter().collect();
    sorted.sort_by_key(|(_, (bytes, _))| std::cmp::Reverse(*bytes));
    println!("server heap still live after the media phase, by the phase and site that allocated it (per session):");
    for (site, (bytes, count)) in sorted.iter().filter(|(_, (bytes, _))| *bytes >= 100 * n) {
        println!("  {:7.1} KB in {:5.0} blocks: {site}", *bytes as f64 / 1024.0 / n as f64, *count as f64 / n as f64);
    }
}
