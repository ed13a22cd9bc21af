//! `deadsfu-load`: hundreds to thousands of real WebRTC viewers (ICE, DTLS, SRTP) on one mio loop, which reads
//! its sockets every millisecond rather than waiting for them (see `RECV_TICK`).
//!
//! Every viewer is a str0m `Rtc` with its own UDP socket on 127.0.0.1 that POSTs a WHEP offer and keeps its
//! session alive (ICE consent, RTCP) by driving str0m's timers. Media is checked on every viewer from the
//! cleartext RTP header of each SRTP datagram (sequence gaps, duplicates, reorders; time to the first
//! complete video frame); a sample of viewers also feeds every datagram through str0m (SRTP decryption and
//! authentication), and their payloads are matched against the room's ring to measure the latency added
//! between ingest receiving a packet and the kernel queueing it at the viewer's socket (the socket's receive
//! timestamp, `SO_TIMESTAMPNS`: this client's own delay in reading its sockets is not counted).
//!
//! Protocol on stdin/stdout (one JSON object per line on stdout):
//! - it prints `{"event":"ramp_done",...}` once every viewer got its first complete video frame (or failed);
//! - a line `mark NAME` on stdin prints `{"event":"mark","name":NAME,...}` with cumulative counters and the
//!   latency percentiles of the samples since the previous mark;
//! - `quit` (or end of stdin) prints `{"event":"summary",...}` and exits.
//!
//! Usage: `deadsfu-load --url http://127.0.0.1:8080 --room R --viewers 300 [--ring DIR/rings/R.ring]
//!         [--ramp-rate 0] [--sample-percent 5] [--min-sample 5] [--concurrency 8]`

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::{json, Value};
use shm_proto::ring::{RingCursor, RingReader};
use shm_proto::{Owner, SessionId};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const WAKER: Token = Token(usize::MAX);
/// Datagrams per `recvmmsg`.
const BATCH: usize = 32;
const DGRAM_MAX: usize = 2048;
/// The client reads its sockets at least this often, sleeping in between rather than waiting in epoll: a datagram
/// that arrives while it sleeps wakes nobody. Waiting in epoll, the client was woken by the worker for about every
/// batch of datagrams the worker sent (590-770 times a second at 200 viewers of the 500 kbit/s stream), and on
/// loopback the sender pays for each wake-up in its own send call (an inter-processor interrupt when the client
/// sits on the other CPU): a cost a worker sending to viewers elsewhere does not have, and one that moved with the
/// phase of the two loops from run to run. Latency is read from the kernel's receive timestamps, which the client's
/// sleep does not move.
const RECV_TICK: Duration = Duration::from_millis(1);
/// A viewer with no complete video frame this long after its POST is counted as failed.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the payload -> ring arrival map keeps entries: under the fixture's loop period (10 s), whose
/// payloads repeat bit for bit; a packet later than this is counted as unmatched, not measured.
const RING_MEMORY_NS: u64 = 9_000_000_000;

struct Args {
    url: String,
    room: String,
    viewers: usize,
    ring: Option<PathBuf>,
    ramp_rate: f64,
    sample_percent: f64,
    min_sample: usize,
    concurrency: usize,
    token: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        room: "mainroom".into(),
        viewers: 100,
        ring: None,
        ramp_rate: 0.0,
        sample_percent: 5.0,
        min_sample: 5,
        concurrency: 8,
        token: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val()?,
            "--room" => a.room = val()?,
            "--viewers" => a.viewers = val()?.parse().map_err(|e| format!("--viewers: {e}"))?,
            "--ring" => a.ring = Some(PathBuf::from(val()?)),
            "--ramp-rate" => a.ramp_rate = val()?.parse().map_err(|e| format!("--ramp-rate: {e}"))?,
            "--sample-percent" => a.sample_percent = val()?.parse().map_err(|e| format!("--sample-percent: {e}"))?,
            "--min-sample" => a.min_sample = val()?.parse().map_err(|e| format!("--min-sample: {e}"))?,
            "--concurrency" => a.concurrency = val()?.parse().map_err(|e| format!("--concurrency: {e}"))?,
            "--token" => a.token = Some(val()?),
            "-h" | "--help" => {
                println!(
                    "{}",
                    include_str!("deadsfu-load.rs")
                        .lines()
                        .take_while(|l| l.starts_with("//!"))
                        .map(|l| l.trim_start_matches("//!").trim_start())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    a.concurrency = a.concurrency.max(1);
    Ok(a)
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// What a payload type of the answer carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PtKind {
    Unknown,
    Audio,
    Video,
    Rtx,
}

/// Sequence bookkeeping of one received SSRC, from the cleartext RTP header.
#[derive(Default, Clone)]
struct Track {
    ssrc: u32,
    kind: u8, // 0 audio, 1 video, 2 rtx, 3 unknown
    first: u64,
    max: u64,
    /// Bit i set: `max - i` was received.
    seen: u128,
    received: u64,
    duplicates: u64,
    reorders: u64,
    gaps: u64,
}

impl Track {
    fn extend(&self, seq: u16) -> u64 {
        let max = self.max;
        let base = max & !0xffff;
        let cand = base | seq as u64;
        // Choose the candidate closest to max.
        let cands = [cand.wrapping_sub(0x1_0000), cand, cand + 0x1_0000];
        *cands
            .iter()
            .filter(|c| **c < (1 << 62))
            .min_by_key(|c| (**c as i64 - max as i64).unsigned_abs())
            .unwrap_or(&cand)
    }

    fn on_packet(&mut self, seq: u16) {
        if self.received == 0 {
            // Start high enough that a wrap below the first packet stays positive.
            let ext = 0x1_0000 + seq as u64;
            self.first = ext;
            self.max = ext;
            self.seen = 1;
            self.received = 1;
            return;
        }
        let ext = self.extend(seq);
        self.received += 1;
        if ext > self.max {
            let d = ext - self.max;
            if d > 1 {
                self.gaps += 1;
            }
            self.seen = if d >= 128 { 0 } else { self.seen << d };
            self.seen |= 1;
            self.max = ext;
        } else {
            let back = self.max - ext;
            if back < 128 && self.seen & (1u128 << back) != 0 {
                self.duplicates += 1;
            } else {
                if back < 128 {
                    self.seen |= 1u128 << back;
                }
                if ext < self.first {
                    self.first = ext;
                }
                self.reorders += 1;
            }
        }
    }

    /// Packets between the first and the newest never received.
    fn missing(&self) -> u64 {
        if self.received == 0 {
            return 0;
        }
        let span = self.max - self.first + 1;
        span.saturating_sub(self.received - self.duplicates)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Waiting,
    Posting,
    Active,
    Failed,
}

struct Viewer {
    rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    sample: bool,
    state: State,
    pending: Option<SdpPendingOffer>,
    t_post: Option<Instant>,
    t_connected: Option<Instant>,
    t_first_frame: Option<Instant>,
    pts: [PtKind; 128],
    tracks: Vec<Track>,
    // First complete video frame: timestamp of the frame being assembled, its next expected seq, intact so far.
    frame_ts: Option<u32>,
    frame_next_seq: u16,
    frame_ok: bool,
    next_timeout: Option<Instant>,
    scheduled: Option<Instant>,
    decrypted: u64,
    error: Option<String>,
    /// Fanout worker index, from the session id (`w{k}-...`) in the Location.
    worker: Option<usize>,
    /// The answer's id of the transport-wide sequence number extension: a viewer that does not decrypt still
    /// sends the transport-wide feedback a browser would, from the packets' headers.
    transport_cc_id: Option<u8>,
}

#[derive(Default)]
struct Totals {
    latency_us: Vec<f64>,
    latency_unmatched: u64,
    sent_datagrams: u64,
    send_errors: u64,
}

/// Payload hash -> when ingest received it, from the room's ring.
struct RingIndex {
    path: PathBuf,
    reader: Option<RingReader>,
    cursor: Option<RingCursor>,
    buf: Vec<u8>,
    map: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    /// Packets seen in the ring, by kind, with arrival times (for counting packets up to a time).
    packets: [u64; 2],
    last_check: Instant,
}

impl RingIndex {
    fn new(path: PathBuf) -> RingIndex {
        RingIndex {
            path,
            reader: None,
            cursor: None,
            buf: Vec::new(),
            map: HashMap::new(),
            order: VecDeque::new(),
            packets: [0, 0],
            last_check: Instant::now() - Duration::from_secs(10),
        }
    }

    fn poll(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_check) > Duration::from_millis(500) {
            self.last_check = now;
            let replaced = self.reader.as_ref().map(|r| r.is_replaced()).unwrap_or(true);
            if replaced {
                if let Ok(r) = RingReader::open(&self.path) {
                    self.buf = vec![0u8; r.geometry().max_payload()];
                    self.cursor = Some(RingCursor::at(r.head()));
                    self.reader = Some(r);
                }
            }
        }
        let (Some(reader), Some(cursor)) = (self.reader.as_ref(), self.cursor.as_mut()) else { return };
        while let Some((meta, len)) = cursor.next(reader, &mut self.buf) {
            let h = hash(&self.buf[..len]);
            self.map.insert(h, meta.arrival_unix_ns);
            self.order.push_back((meta.arrival_unix_ns, h));
            let k = match meta.kind {
                shm_proto::ring::MediaKind::Audio => 0,
                shm_proto::ring::MediaKind::Video => 1,
            };
            self.packets[k] += 1;
        }
        let cutoff = unix_ns().saturating_sub(RING_MEMORY_NS);
        while let Some(&(t, h)) = self.order.front() {
            if t >= cutoff {
                break;
            }
            self.order.pop_front();
            if self.map.get(&h) == Some(&t) {
                self.map.remove(&h);
            }
        }
    }
}

/// FNV-1a over 8-byte words: the payloads are already high-entropy compressed media.
fn hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        h ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
    for &x in chunks.remainder() {
        h ^= x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Payload types of the answer's m-sections: rtpmap names per section kind.
fn parse_pts(sdp: &str) -> [PtKind; 128] {
    let mut out = [PtKind::Unknown; 128];
    let mut kind = PtKind::Unknown;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            kind = if m.starts_with("audio") {
                PtKind::Audio
            } else if m.starts_with("video") {
                PtKind::Video
            } else {
                PtKind::Unknown
            };
        } else if let Some(r) = line.strip_prefix("a=rtpmap:") {
            let mut parts = r.split_whitespace();
            let (Some(pt), Some(name)) = (parts.next(), parts.next()) else { continue };
            let Ok(pt) = pt.parse::<usize>() else { continue };
            if pt < 128 {
                let n = name.to_ascii_lowercase();
                out[pt] = if n.starts_with("rtx/") || n.starts_with("red/") || n.starts_with("ulpfec/") {
                    PtKind::Rtx
                } else {
                    kind
                };
            }
        }
    }
    out
}

struct HttpJob {
    idx: usize,
    offer: String,
}

struct HttpResult {
    idx: usize,
    result: Result<(u16, Option<String>, String), String>,
}

/// How often a viewer sends transport-wide feedback while packets come (str0m's interval, as a browser's).
const TRANSPORT_FEEDBACK: Duration = Duration::from_millis(100);

/// The id the answer gives the transport-wide sequence number extension (transport-cc), if any.
fn transport_cc_id(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.strip_prefix("a=extmap:")?;
        let (id, uri) = rest.split_once(' ')?;
        uri.trim().ends_with("transport-wide-cc-extensions-01").then(|| id.split('/').next()?.parse().ok())?
    })
}

/// The value of one-byte header extension `id` (RFC 8285) of an RTP packet, if it carries one.
fn one_byte_extension(rtp: &[u8], id: u8) -> Option<&[u8]> {
    if rtp.first()? & 0x10 == 0 {
        return None;
    }
    let start = 12 + 4 * usize::from(rtp[0] & 0x0f);
    let head = rtp.get(start..start + 4)?;
    if head[..2] != [0xbe, 0xde] {
        return None;
    }
    let end = start + 4 + 4 * usize::from(u16::from_be_bytes([head[2], head[3]]));
    let block = rtp.get(start + 4..end)?;
    let mut i = 0;
    while i < block.len() {
        let (eid, len) = (block[i] >> 4, usize::from(block[i] & 0x0f) + 1);
        match eid {
            0 => i += 1,
            15 => return None,
            _ if eid == id => return block.get(i + 1..i + 1 + len),
            _ => i += 1 + len,
        }
    }
    None
}

fn http_post(base: &str, path: &str, body: &str, token: Option<&str>) -> Result<(u16, Option<String>, String), String> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).map_err(|e| format!("connect {hostport}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    s.set_nodelay(true).ok();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Type: application/sdp\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status")?;
    let location = head.lines().find_map(|l| {
        l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim().to_string())
    });
    Ok((status, location, body.to_string()))
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    json!({
        "n": v.len(),
        "p50": percentile(&v, 50.0),
        "p90": percentile(&v, 90.0),
        "p99": percentile(&v, 99.0),
        "max": v.last(),
    })
}

/// Room for one `SCM_TIMESTAMPNS` control message (a `timespec`), with its header and alignment.
const CMSG_ROOM: usize = 64;

/// recvmmsg(2) on one socket into preallocated buffers, with each datagram's receive timestamp where the socket
/// gives one ([`deadsfu_tests::stamp_receipts`]).
struct RecvBatch {
    bufs: Vec<[u8; DGRAM_MAX]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<[u64; CMSG_ROOM / 8]>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new() -> RecvBatch {
        // SAFETY: sockaddr_storage and mmsghdr are plain C structs for which all-zero bytes are valid.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut b = RecvBatch {
            bufs: vec![[0u8; DGRAM_MAX]; BATCH],
            addrs: vec![zero_addr; BATCH],
            iovs: Vec::with_capacity(BATCH),
            cmsgs: vec![[0; CMSG_ROOM / 8]; BATCH],
            hdrs: vec![zero_hdr; BATCH],
        };
        for i in 0..BATCH {
            b.iovs.push(libc::iovec { iov_base: b.bufs[i].as_mut_ptr().cast(), iov_len: DGRAM_MAX });
        }
        b
    }

    /// Receives up to BATCH datagrams; returns how many (0 when none is waiting).
    fn recv(&mut self, fd: i32) -> usize {
        for i in 0..BATCH {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = DGRAM_MAX;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_ROOM;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by self (bufs, addrs, iovs) that outlive the call,
        // with lengths matching their sizes; fd is an open socket.
        let n = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            0
        } else {
            n as usize
        }
    }

    /// When the kernel queued datagram `i` at the socket (Unix time, ns), if the socket stamps datagrams.
    fn stamp(&self, i: usize) -> Option<u64> {
        let h = &self.hdrs[i].msg_hdr;
        // SAFETY: the header's control buffer is self.cmsgs[i], filled by the kernel up to msg_controllen; the
        // CMSG_ macros walk only within it, and an SCM_TIMESTAMPNS message's data is one timespec.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let t = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                    return Some(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    fn source(&self, i: usize) -> Option<SocketAddr> {
        let a = &self.addrs[i];
        if a.ss_family as i32 != libc::AF_INET {
            return None;
        }
        // SAFETY: ss_family says the storage holds a sockaddr_in, which it is large and aligned enough for.
        let sin: &libc::sockaddr_in = unsafe { &*(a as *const libc::sockaddr_storage).cast() };
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
    }
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn set_rcvbuf(fd: i32, bytes: i32) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a pointer to an i32 and its size, on an open socket.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        if r == 0 {
            return;
        }
    }
}

struct Load {
    args: Args,
    viewers: Vec<Viewer>,
    poll: Poll,
    heap: BinaryHeap<std::cmp::Reverse<(Instant, usize)>>,
    totals: Totals,
    ring: Option<RingIndex>,
    t_start: Instant,
    t_start_unix_ns: u64,
    ramp_done: bool,
}

impl Load {
    fn drain(&mut self, idx: usize, recv_unix_ns: u64) {
        let v = &mut self.viewers[idx];
        loop {
            match v.rtc.poll_output() {
                Ok(Output::Transmit(t)) => match v.sock.send_to(&t.contents, t.destination) {
                    Ok(_) => self.totals.sent_datagrams += 1,
                    Err(_) => self.totals.send_errors += 1,
                },
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        v.t_connected.get_or_insert_with(Instant::now);
                    }
                    Event::RtpPacket(p) => {
                        v.decrypted += 1;
                        let kind = v.pts[(*p.header.payload_type as usize) & 0x7f];
                        if kind == PtKind::Audio || kind == PtKind::Video {
                            if let Some(ring) = self.ring.as_mut() {
                                let h = hash(&p.payload);
                                let mut got = ring.map.get(&h).copied();
                                // A miss, or an old packet with the same payload: the ring may not be read up to
                                // this packet yet.
                                if got.is_none_or(|a| a + 1_000_000_000 < recv_unix_ns) {
                                    ring.poll();
                                    got = ring.map.get(&h).copied();
                                }
                                match got {
                                    Some(arrival) if recv_unix_ns >= arrival => {
                                        self.totals.latency_us.push((recv_unix_ns - arrival) as f64 / 1000.0)
                                    }
                                    _ => self.totals.latency_unmatched += 1,
                                }
                            }
                        }
                    }
                    _ => {}
                },
                Ok(Output::Timeout(t)) => {
                    v.next_timeout = Some(t);
                    if v.scheduled.is_none_or(|s| t < s) {
                        v.scheduled = Some(t);
                        self.heap.push(std::cmp::Reverse((t, idx)));
                    }
                    return;
                }
                Err(e) => {
                    v.error.get_or_insert_with(|| format!("rtc: {e}"));
                    v.state = State::Failed;
                    v.next_timeout = None;
                    return;
                }
            }
        }
    }

    fn start_offer(&mut self, idx: usize) -> Option<String> {
        let v = &mut self.viewers[idx];
        let mut change = v.rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply()?;
        v.pending = Some(pending);
        v.state = State::Posting;
        v.t_post = Some(Instant::now());
        Some(offer.to_sdp_string())
    }

    fn on_answer(&mut self, r: HttpResult) {
        let idx = r.idx;
        let v = &mut self.viewers[idx];
        match r.result {
            Ok((201, loc, body)) => {
                v.pts = parse_pts(&body);
                v.transport_cc_id = transport_cc_id(&body);
                v.worker = match loc.as_deref().and_then(|l| l.rsplit('/').next()).map(str::parse::<SessionId>) {
                    Some(Ok(id)) => match id.owner() {
                        Owner::Worker(k) => Some(k as usize),
                        Owner::Ingest => None,
                    },
                    _ => None,
                };
                let answer = match SdpAnswer::from_sdp_string(&body) {
                    Ok(a) => a,
                    Err(e) => {
                        v.state = State::Failed;
                        v.error = Some(format!("bad answer: {e}"));
                        return;
                    }
                };
                let pending = v.pending.take().expect("a posting viewer has a pending offer");
                if let Err(e) = v.rtc.sdp_api().accept_answer(pending, answer) {
                    v.state = State::Failed;
                    v.error = Some(format!("accept_answer: {e}"));
                    return;
                }
                v.state = State::Active;
                let now = Instant::now();
                let _ = v.rtc.handle_input(Input::Timeout(now));
                self.drain(idx, unix_ns());
            }
            Ok((status, _, body)) => {
                v.state = State::Failed;
                v.error = Some(format!("{status} {}", body.trim().chars().take(200).collect::<String>()));
            }
            Err(e) => {
                v.state = State::Failed;
                v.error = Some(e);
            }
        }
    }

    /// One datagram to viewer `idx`, queued at its socket at `received_ns` (Unix time, for the latency).
    fn on_datagram(&mut self, idx: usize, src: SocketAddr, data: &[u8], now: Instant, received_ns: u64) {
        let v = &mut self.viewers[idx];
        if v.state != State::Active {
            return;
        }
        let b0 = data.first().copied().unwrap_or(0);
        let is_rtp = data.len() >= 12 && (128..=191).contains(&b0) && !(192..=223).contains(&data[1]);
        if is_rtp {
            let pt = (data[1] & 0x7f) as usize;
            let marker = data[1] & 0x80 != 0;
            let seq = u16::from_be_bytes([data[2], data[3]]);
            let ts = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
            let kind = v.pts[pt];
            let track = match v.tracks.iter_mut().position(|t| t.ssrc == ssrc) {
                Some(i) => &mut v.tracks[i],
                None => {
                    let k = match kind {
                        PtKind::Audio => 0,
                        PtKind::Video => 1,
                        PtKind::Rtx => 2,
                        PtKind::Unknown => 3,
                    };
                    v.tracks.push(Track { ssrc, kind: k, ..Track::default() });
                    v.tracks.last_mut().expect("just pushed")
                }
            };
            track.on_packet(seq);
            if kind == PtKind::Video && v.t_first_frame.is_none() {
                if v.frame_ts != Some(ts) {
                    v.frame_ts = Some(ts);
                    v.frame_ok = true;
                } else if seq != v.frame_next_seq {
                    v.frame_ok = false;
                }
                v.frame_next_seq = seq.wrapping_add(1);
                if marker && v.frame_ok {
                    v.t_first_frame = Some(now);
                }
            }
            if !v.sample {
                // Transport-wide feedback as the viewer's session would send it, from the header alone.
                if let Some(tcc) = v.transport_cc_id.and_then(|id| one_byte_extension(data, id)) {
                    if let [a, b] = tcc[..] {
                        v.rtc.direct_api().note_received_transport_seq(u16::from_be_bytes([a, b]), now);
                        // The session sends the feedback at its next timeout (every 100 ms while packets come).
                        let due = now + TRANSPORT_FEEDBACK;
                        if v.next_timeout.is_none_or(|t| due < t) {
                            v.next_timeout = Some(due);
                        }
                        if v.scheduled.is_none_or(|t| due < t) {
                            v.scheduled = Some(due);
                            self.heap.push(std::cmp::Reverse((due, idx)));
                        }
                    }
                }
                return;
            }
        }
        let Ok(receive) = Receive::new(Protocol::Udp, src, v.local, data) else { return };
        if v.rtc.handle_input(Input::Receive(now, receive)).is_err() {
            return;
        }
        self.drain(idx, received_ns);
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((t, idx))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            let v = &mut self.viewers[idx];
            if v.scheduled != Some(t) {
                continue;
            }
            v.scheduled = None;
            if v.state != State::Active {
                continue;
            }
            match v.next_timeout {
                Some(nt) if nt <= now => {
                    let _ = v.rtc.handle_input(Input::Timeout(now));
                    self.drain(idx, unix_ns());
                }
                Some(nt) => {
                    v.scheduled = Some(nt);
                    self.heap.push(std::cmp::Reverse((nt, idx)));
                }
                None => {}
            }
        }
    }

    fn counters(&self) -> Value {
        let mut by_kind = [0u64; 4];
        let (mut gaps, mut missing, mut dups, mut reorders) = (0u64, 0u64, 0u64, 0u64);
        let mut media = 0;
        let mut connected = 0;
        let mut failed = 0;
        let mut min_received = u64::MAX;
        let mut sample_raw = 0u64;
        let mut decrypted = 0u64;
        let mut errors: HashMap<String, usize> = HashMap::new();
        let mut per_worker: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for v in &self.viewers {
            if v.t_connected.is_some() {
                connected += 1;
            }
            if v.t_first_frame.is_some() {
                media += 1;
            }
            if v.state == State::Failed {
                failed += 1;
                *errors.entry(v.error.clone().unwrap_or_default()).or_default() += 1;
            }
            let mut mine = 0;
            for t in &v.tracks {
                by_kind[t.kind as usize] += t.received;
                if t.kind <= 1 {
                    mine += t.received;
                    gaps += t.gaps;
                    missing += t.missing();
                    dups += t.duplicates;
                    reorders += t.reorders;
                }
            }
            if v.sample {
                sample_raw += v.tracks.iter().map(|t| t.received).sum::<u64>();
                decrypted += v.decrypted;
            }
            if v.state == State::Active {
                min_received = min_received.min(mine);
            }
            if let Some(w) = v.worker {
                let e = per_worker.entry(w.to_string()).or_default();
                e.0 += 1;
                e.1 += mine;
            }
        }
        json!({
            "t_unix_ns": unix_ns(),
            "elapsed_s": self.t_start.elapsed().as_secs_f64(),
            "viewers": self.viewers.len(),
            "connected": connected,
            "with_media": media,
            "failed": failed,
            "errors": errors,
            "sample_viewers": self.viewers.iter().filter(|v| v.sample).count(),
            "rtp": {"audio": by_kind[0], "video": by_kind[1], "rtx": by_kind[2], "unknown": by_kind[3],
                    "media": by_kind[0] + by_kind[1]},
            "min_media_per_viewer": if min_received == u64::MAX { 0 } else { min_received },
            "anomalies": {"gaps": gaps, "missing": missing, "duplicates": dups, "reorders": reorders},
            "sample": {"raw_rtp": sample_raw, "decrypted_rtp": decrypted},
            "ring_packets": self.ring.as_ref().map(|r| json!({"audio": r.packets[0], "video": r.packets[1], "total": r.packets[0] + r.packets[1]})),
            "per_worker": per_worker.iter().map(|(k, (n, p))| (k.clone(), json!({"viewers": n, "media": p}))).collect::<serde_json::Map<_, _>>(),
            "sent_datagrams": self.totals.sent_datagrams,
            "send_errors": self.totals.send_errors,
        })
    }

    fn ttff(&self) -> Value {
        let v: Vec<f64> = self
            .viewers
            .iter()
            .filter_map(|v| Some(v.t_first_frame?.duration_since(v.t_post?).as_secs_f64() * 1000.0))
            .collect();
        stats(v)
    }

    fn mark(&mut self, event: &str, name: &str) -> Value {
        let lat = std::mem::take(&mut self.totals.latency_us);
        let unmatched = std::mem::take(&mut self.totals.latency_unmatched);
        let mut c = self.counters();
        c["event"] = json!(event);
        c["name"] = json!(name);
        c["latency_us"] = stats(lat);
        c["latency_unmatched"] = json!(unmatched);
        c["ttff_ms"] = self.ttff();
        c["start_unix_ns"] = json!(self.t_start_unix_ns);
        c
    }
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("deadsfu-load: {e}");
            std::process::exit(2);
        }
    };
    raise_fd_limit();
    let poll = Poll::new().expect("epoll");
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).expect("waker"));
    let n = args.viewers;
    let sample_n = ((n as f64 * args.sample_percent / 100.0).ceil() as usize).max(args.min_sample).min(n);
    // Spread the sample over the ramp.
    let sample_every = if sample_n == 0 { usize::MAX } else { n.div_ceil(sample_n) };

    let mut viewers = Vec::with_capacity(n);
    for i in 0..n {
        let mut sock = UdpSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind a UDP socket");
        set_rcvbuf(sock.as_raw_fd(), 4 << 20);
        let sample = i % sample_every == 0 && i / sample_every < sample_n;
        if sample {
            // The latency is measured on the sample only.
            if let Err(e) = deadsfu_tests::stamp_receipts(&sock) {
                eprintln!("deadsfu-load: SO_TIMESTAMPNS refused: {e}");
            }
        }
        let local = sock.local_addr().expect("local addr");
        poll.registry().register(&mut sock, Token(i), Interest::READABLE).expect("register");
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("host candidate"));
        viewers.push(Viewer {
            rtc,
            sock,
            local,
            sample,
            state: State::Waiting,
            pending: None,
            t_post: None,
            t_connected: None,
            t_first_frame: None,
            pts: [PtKind::Unknown; 128],
            tracks: Vec::new(),
            frame_ts: None,
            frame_next_seq: 0,
            frame_ok: false,
            next_timeout: None,
            scheduled: None,
            decrypted: 0,
            error: None,
            worker: None,
            transport_cc_id: None,
        });
    }

    // HTTP posters.
    let (job_tx, job_rx) = mpsc::channel::<HttpJob>();
    let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
    let (res_tx, res_rx) = mpsc::channel::<HttpResult>();
    for _ in 0..args.concurrency {
        let job_rx = job_rx.clone();
        let res_tx = res_tx.clone();
        let waker = waker.clone();
        let url = args.url.clone();
        let path = format!("/whep/{}", args.room);
        let token = args.token.clone();
        std::thread::spawn(move || loop {
            let job = match job_rx.lock().expect("job queue").recv() {
                Ok(j) => j,
                Err(_) => return,
            };
            let result = http_post(&url, &path, &job.offer, token.as_deref());
            if res_tx.send(HttpResult { idx: job.idx, result }).is_err() {
                return;
            }
            let _ = waker.wake();
        });
    }
    // Commands.
    let (cmd_tx, cmd_rx) = mpsc::channel::<String>();
    {
        let waker = waker.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if cmd_tx.send(line).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
            let _ = cmd_tx.send("quit".into());
            let _ = waker.wake();
        });
    }

    let ring = args.ring.clone().map(RingIndex::new);
    let mut load = Load {
        args,
        viewers,
        poll,
        heap: BinaryHeap::new(),
        totals: Totals::default(),
        ring,
        t_start: Instant::now(),
        t_start_unix_ns: unix_ns(),
        ramp_done: false,
    };
    let mut events = Events::with_capacity(1024);
    let mut batch = RecvBatch::new();
    let mut next_post = 0usize;
    let mut in_flight = 0usize;
    let ramp_interval =
        if load.args.ramp_rate > 0.0 { Duration::from_secs_f64(1.0 / load.args.ramp_rate) } else { Duration::ZERO };
    let mut next_post_at = Instant::now();
    let mut ready: Vec<usize> = Vec::new();

    loop {
        let now = Instant::now();
        // Ramp.
        while next_post < n && in_flight < load.args.concurrency && now >= next_post_at {
            let idx = next_post;
            next_post += 1;
            if let Some(offer) = load.start_offer(idx) {
                in_flight += 1;
                let _ = job_tx.send(HttpJob { idx, offer });
            } else {
                load.viewers[idx].state = State::Failed;
                load.viewers[idx].error = Some("no offer".into());
            }
            if !ramp_interval.is_zero() {
                next_post_at += ramp_interval;
            }
        }
        while let Ok(r) = res_rx.try_recv() {
            in_flight -= 1;
            load.on_answer(r);
        }
        if !load.ramp_done && next_post == n && in_flight == 0 {
            // A viewer without a complete video frame long after its POST will not get one: count it failed,
            // so the ramp ends and the report says why.
            for v in load.viewers.iter_mut() {
                if v.state == State::Active
                    && v.t_first_frame.is_none()
                    && v.t_post.is_some_and(|t| now.duration_since(t) > MEDIA_TIMEOUT)
                {
                    v.state = State::Failed;
                    v.error = Some(format!(
                        "no complete video frame within {MEDIA_TIMEOUT:?} ({})",
                        if v.t_connected.is_some() { "connected" } else { "ICE/DTLS not connected" }
                    ));
                }
            }
            let all = load.viewers.iter().all(|v| v.state == State::Failed || v.t_first_frame.is_some());
            if all {
                load.ramp_done = true;
                let m = load.mark("ramp_done", "ramp");
                emit(&m);
            }
        }
        if let Some(r) = load.ring.as_mut() {
            r.poll();
        }

        let mut timeout = Duration::from_millis(5);
        if let Some(std::cmp::Reverse((t, _))) = load.heap.peek() {
            timeout = timeout.min(t.saturating_duration_since(Instant::now()));
        }
        if next_post < n && in_flight < load.args.concurrency {
            timeout = timeout.min(next_post_at.saturating_duration_since(Instant::now()));
        }
        // Sleep, then look at the sockets without waiting (see [`RECV_TICK`]).
        if !timeout.is_zero() {
            std::thread::sleep(timeout.min(RECV_TICK));
        }
        if let Err(e) = load.poll.poll(&mut events, Some(Duration::ZERO)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                panic!("epoll: {e}");
            }
        }
        ready.clear();
        let mut commands = false;
        for ev in events.iter() {
            if ev.token() == WAKER {
                commands = true;
            } else {
                ready.push(ev.token().0);
            }
        }
        for &idx in &ready {
            let fd = load.viewers[idx].sock.as_raw_fd();
            loop {
                let got = batch.recv(fd);
                if got == 0 {
                    break;
                }
                let now = Instant::now();
                let now_ns = unix_ns();
                for i in 0..got {
                    let Some(src) = batch.source(i) else { continue };
                    let len = batch.hdrs[i].msg_len as usize;
                    let data = &batch.bufs[i][..len.min(DGRAM_MAX)];
                    load.on_datagram(idx, src, data, now, batch.stamp(i).unwrap_or(now_ns));
                }
                if got < BATCH {
                    break;
                }
            }
        }
        load.on_timers(Instant::now());
        if commands {
            while let Ok(cmd) = cmd_rx.try_recv() {
                let cmd = cmd.trim();
                if let Some(name) = cmd.strip_prefix("mark") {
                    let m = load.mark("mark", name.trim());
                    emit(&m);
                } else if cmd == "quit" {
                    let m = load.mark("summary", "end");
                    emit(&m);
                    return;
                }
            }
        }
    }
}
