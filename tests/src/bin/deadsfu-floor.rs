//! `deadsfu-floor`: the least work a fan-out can do per delivered packet on this machine, to compare the
//! fanout workers with.
//!
//! It takes real packets of a stream (the newest ones in a room's ring, or a synthetic 1.5 Mbit/s mix when no
//! ring is given), cut to whole GOPs (from a keyframe to the start of the last one) so that a loop of them has
//! the stream's own share of keyframes. A capture that begins at the stream's start leaves out its first GOP where
//! a later one is whole: a publisher's first keyframe leaves it unpaced (the bench's: 17 packets within 0.8 ms,
//! where its next two are paced over 33-35 ms), and a floor that looped it read a p99 latency 2-8x that of a
//! capture later in the same stream (100 and 200 viewers). Then, for N viewers, it copies each packet, rewrites
//! its sequence number and SSRC, seals it with AES-128-GCM under that viewer's own key (RFC 7714 nonce and AAD;
//! ring's AES-GCM, as the workers seal), and sends it with `sendmmsg` in batches of 64 to N UDP sockets on
//! 127.0.0.1, from a socket set up as the workers' are (`IP_PMTUDISC_PROBE`). A
//! helper thread drains the sockets (its CPU is reported apart) every millisecond, sleeping in between as
//! `deadsfu-load` reads its own, so that no datagram wakes it: on loopback the sender would pay for each
//! wake-up, which a sender to hosts elsewhere does not. The sender's CPU comes from `getrusage(RUSAGE_THREAD)`,
//! reported whole and split into user space and kernel.
//!
//! On loopback the sender pays for the receiving side too, and its sockets are set up as `deadsfu-load`'s are:
//! the same share of them asks for receive timestamps (`SO_TIMESTAMPNS`). One such socket is enough for the
//! kernel to stamp every datagram it receives, whichever socket it is for, and without it the floor's runs
//! before the load client starts would skip that cost while the fanout workers pay it.
//!
//! Modes: `--paced` (default) sends each packet to all N viewers at the stream's own pace (its arrival times
//! in the ring, looped), for `--seconds S`; `--flat` sends `--packets P` packets to all N as fast as it can.
//!
//! Paced, it also reports the floor's added latency: for every viewer's copy, the time from the packet being
//! due (its place in the stream) to `sendmmsg` returning with it, p50 and p99. A packet cannot reach the last
//! of N viewers before N seals and sends are done, so this is the least added latency a fan-out of N on one
//! core can have for this stream (its frames come in bursts of packets).
//!
//! Usage: `deadsfu-floor --viewers 1000 [--ring DIR/rings/R.ring] [--seconds 10 | --flat --packets 200000]
//! [--sender-cpu N] [--drain-cpu M]` (the last two keep the sending and the draining thread on those CPUs)
//! Prints one JSON object.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use serde_json::json;
use shm_proto::ring::{RingCursor, RingReader};

/// Datagrams per `sendmmsg`.
const BATCH: usize = 64;
const DGRAM_MAX: usize = 1600;
const TAG_LEN: usize = 16;
/// One receiving socket in this many asks for receive timestamps, as the load client's 5% sample does.
const STAMPED_EVERY: usize = 20;
/// The shortest lap of a capture.
const MIN_LAP: Duration = Duration::from_millis(1);
/// How often the drain reads the sockets, as `deadsfu-load` does (its `RECV_TICK`).
const RECV_TICK: Duration = Duration::from_millis(1);

#[derive(Clone)]
struct Packet {
    /// Offset from the first packet of the capture.
    at: Duration,
    pt: u8,
    marker: bool,
    timestamp: u32,
    /// The first packet of a keyframe.
    keyframe: bool,
    payload: Vec<u8>,
}

struct ViewerKey {
    key: LessSafeKey,
    salt: [u8; 12],
    ssrc: u32,
    seq: u16,
    addr: libc::sockaddr_in,
}

fn thread_cpu() -> Duration {
    let (user, system) = thread_cpu_split();
    user + system
}

/// The calling thread's CPU time in user space and in the kernel.
fn thread_cpu_split() -> (Duration, Duration) {
    // SAFETY: all-zero bytes are a valid rusage, and getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// The newest `want` packets of the ring (at most half of it), and whether they begin with the stream's first.
fn capture_from_ring(path: &std::path::Path, want: usize) -> Result<(Vec<Packet>, bool), String> {
    let reader = RingReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let head = reader.head();
    let slots = reader.geometry().slot_count as u64;
    let start = head.saturating_sub((want as u64).min(slots / 2));
    let mut cursor = RingCursor::at(start);
    let mut buf = vec![0u8; reader.geometry().max_payload()];
    let mut out = Vec::new();
    let mut first_ns = None;
    while out.len() < want {
        let Some((meta, len)) = cursor.next(&reader, &mut buf) else { break };
        if cursor.position() > head {
            break;
        }
        let first = *first_ns.get_or_insert(meta.arrival_unix_ns);
        out.push(Packet {
            at: Duration::from_nanos(meta.arrival_unix_ns.saturating_sub(first)),
            pt: meta.pt,
            marker: meta.marker,
            timestamp: meta.timestamp,
            keyframe: meta.keyframe,
            payload: buf[..len].to_vec(),
        });
    }
    if out.len() < 2 {
        return Err(format!("{}: fewer than 2 packets in the ring", path.display()));
    }
    Ok((out, start == 0))
}

/// A capture as the floor loops it.
struct Looped {
    packets: Vec<Packet>,
    /// From the first packet of one lap to the first of the next.
    period: Duration,
    /// Whole GOPs in a lap; 0 where the capture held too few keyframes and is looped whole.
    gops: usize,
    /// The capture's first GOP was left out (it began at the stream's start).
    skipped_first: bool,
}

/// `capture` from a keyframe to the start of its last, looped at the distance between the two: each lap has
/// keyframes as often as the stream has them. From its first keyframe, or from its second where it holds the
/// stream's start (`at_stream_start`) and at least three. With fewer than two keyframes, the whole capture, looped
/// at its span plus one mean gap between its packets.
fn whole_gops(mut capture: Vec<Packet>, at_stream_start: bool) -> Looped {
    let mut starts: Vec<usize> = capture.iter().enumerate().filter(|(_, p)| p.keyframe).map(|(i, _)| i).collect();
    let skipped_first = at_stream_start && starts.len() >= 3;
    if skipped_first {
        starts.remove(0);
    }
    // Arrival times out of order (a clock step) cannot make a lap of no time, which would never end.
    let (first, last) = match (starts.first(), starts.last()) {
        (Some(&first), Some(&last)) if capture[last].at > capture[first].at => (first, last),
        _ => {
            let span = capture.last().map(|p| p.at).unwrap_or_default();
            let period = (span + span / capture.len().max(1) as u32).max(MIN_LAP);
            return Looped { packets: capture, period, gops: 0, skipped_first: false };
        }
    };
    let (base, end) = (capture[first].at, capture[last].at);
    capture.truncate(last);
    capture.drain(..first);
    for p in &mut capture {
        p.at = p.at.saturating_sub(base);
    }
    Looped { packets: capture, period: end - base, gops: starts.len() - 1, skipped_first }
}

/// A 1.5 Mbit/s 30 fps video + 50 packets/s audio mix, one second of it, when no ring is given.
fn synthetic() -> Vec<Packet> {
    let mut out = Vec::new();
    let mut x: u32 = 0x1234_5678;
    let mut rnd = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    for f in 0..30u32 {
        let t = Duration::from_millis(f as u64 * 1000 / 30);
        for p in 0..5 {
            out.push(Packet {
                at: t,
                pt: 102,
                marker: p == 4,
                timestamp: f * 3000,
                keyframe: false,
                payload: rnd(1150),
            });
        }
    }
    for a in 0..50u32 {
        out.push(Packet {
            at: Duration::from_millis(a as u64 * 20),
            pt: 111,
            marker: false,
            timestamp: a * 960,
            keyframe: false,
            payload: rnd(80),
        });
    }
    out.sort_by_key(|p| p.at);
    out
}

fn main() {
    let mut viewers = 100usize;
    let mut ring: Option<PathBuf> = None;
    let mut seconds = 10.0f64;
    let mut flat = false;
    let mut packets_flat = 200_000u64;
    let (mut sender_cpu, mut drain_cpu): (Option<usize>, Option<usize>) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| die(&format!("{a} needs a value")));
        match a.as_str() {
            "--viewers" => viewers = val().parse().unwrap_or_else(|e| die(&format!("--viewers: {e}"))),
            "--ring" => ring = Some(PathBuf::from(val())),
            "--seconds" => seconds = val().parse().unwrap_or_else(|e| die(&format!("--seconds: {e}"))),
            "--packets" => packets_flat = val().parse().unwrap_or_else(|e| die(&format!("--packets: {e}"))),
            "--sender-cpu" => sender_cpu = Some(val().parse().unwrap_or_else(|e| die(&format!("--sender-cpu: {e}")))),
            "--drain-cpu" => drain_cpu = Some(val().parse().unwrap_or_else(|e| die(&format!("--drain-cpu: {e}")))),
            "--flat" => flat = true,
            "--paced" => flat = false,
            other => die(&format!("unknown argument {other}")),
        }
    }
    let viewers = viewers.max(1);
    raise_fd_limit();
    let (capture, at_stream_start) = match &ring {
        Some(p) => capture_from_ring(p, 4096).unwrap_or_else(|e| die(&e)),
        None => (synthetic(), false),
    };
    let Looped { packets: capture, period, gops, skipped_first } = whole_gops(capture, at_stream_start);

    // Receivers.
    let mut socks = Vec::with_capacity(viewers);
    let mut keys = Vec::with_capacity(viewers);
    for i in 0..viewers {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| die(&format!("bind: {e}")));
        s.set_nonblocking(true).expect("nonblocking");
        if i % STAMPED_EVERY == 0 {
            deadsfu_tests::stamp_receipts(&s).unwrap_or_else(|e| die(&format!("SO_TIMESTAMPNS: {e}")));
        }
        let port = s.local_addr().expect("local addr").port();
        let mut key = [0u8; 16];
        let mut salt = [0u8; 12];
        for (j, b) in key.iter_mut().enumerate() {
            *b = (i * 31 + j * 7) as u8 ^ 0x5a;
        }
        for (j, b) in salt.iter_mut().enumerate() {
            *b = (i * 13 + j * 3) as u8 ^ 0xa5;
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        };
        keys.push(ViewerKey {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).expect("16-byte key")),
            salt,
            ssrc: 0x1000_0000 + i as u32,
            seq: (i as u16).wrapping_mul(7),
            addr,
        });
        socks.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drain = {
        let stop = stop.clone();
        let received = received.clone();
        std::thread::spawn(move || {
            if let Some(cpu) = drain_cpu {
                pin_to(cpu);
            }
            drain_thread(socks, stop, received)
        })
    };
    if let Some(cpu) = sender_cpu {
        pin_to(cpu);
    }

    let send_sock = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    // As the workers' sockets: DF and IP ID 0, no draw from the kernel's shared ID counters.
    deadsfu_media::net::sockopt_df(&send_sock).unwrap_or_else(|e| die(&format!("IP_PMTUDISC_PROBE: {e}")));
    let fd = send_sock.as_raw_fd();
    let mut out = Sender::new();

    let t0 = Instant::now();
    let (user0, system0) = thread_cpu_split();
    let mut sent: u64 = 0;
    let mut send_errors: u64 = 0;
    let mut ring_packets: u64 = 0;
    let mut i = 0usize;
    let mut lap = 0u32;
    // Per viewer copy, microseconds from due to sent; and when the current packet was due.
    let mut latency_us: Vec<u32> = Vec::new();
    let mut due_at = t0;
    loop {
        let p = &capture[i];
        if flat {
            if sent >= packets_flat {
                break;
            }
        } else {
            let due = t0 + period * lap + p.at;
            if due > t0 + Duration::from_secs_f64(seconds) {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            due_at = due;
        }
        ring_packets += 1;
        for v in keys.iter_mut() {
            v.seq = v.seq.wrapping_add(1);
            let slot = out.slot();
            let len = seal(v, p, slot);
            out.push(len, v.addr);
            if out.len() == BATCH {
                let n = out.len();
                let (s, e) = out.flush(fd);
                sent += s;
                send_errors += e;
                if !flat {
                    record_latency(&mut latency_us, due_at, n);
                }
            }
        }
        let n = out.len();
        let (s, e) = out.flush(fd);
        sent += s;
        send_errors += e;
        if !flat {
            record_latency(&mut latency_us, due_at, n);
        }
        i += 1;
        if i == capture.len() {
            i = 0;
            lap += 1;
        }
    }
    let (user1, system1) = thread_cpu_split();
    let (user, system) = (user1 - user0, system1 - system0);
    let cpu = user + system;
    let wall = t0.elapsed();
    // Let the receivers catch up, then stop them.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let recv_cpu = drain.join().expect("drain thread");
    let r = received.load(Ordering::Relaxed);
    latency_us.sort_unstable();
    let per_packet = |t: Duration| if sent > 0 { t.as_secs_f64() * 1e6 / sent as f64 } else { 0.0 };
    let pct = |q: f64| latency_us.get(((latency_us.len() as f64 - 1.0) * q).round() as usize).copied();
    let report = json!({
        "mode": if flat { "flat" } else { "paced" },
        "viewers": viewers,
        "source": ring.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "synthetic".into()),
        "capture_packets": capture.len(),
        "capture_gops": gops,
        "capture_skipped_first_gop": skipped_first,
        "ring_packets": ring_packets,
        "sent": sent,
        "send_errors": send_errors,
        "received": r,
        "wall_s": wall.as_secs_f64(),
        "sender_cpu_s": cpu.as_secs_f64(),
        "sender_cpu_us_per_packet": per_packet(cpu),
        "sender_user_us_per_packet": per_packet(user),
        "sender_system_us_per_packet": per_packet(system),
        "receiver_cpu_s": recv_cpu.as_secs_f64(),
        "sender_core_percent": 100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        "latency_us": { "p50": pct(0.50), "p99": pct(0.99), "max": latency_us.last() },
    });
    println!("{report}");
}

/// Notes `n` copies sent now of a packet due at `due`.
fn record_latency(samples: &mut Vec<u32>, due: Instant, n: usize) {
    let us = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
    samples.extend(std::iter::repeat_n(us, n));
}

/// Writes viewer `v`'s copy of `p` into `slot`: RTP header with its seq/SSRC, payload sealed in place, tag.
fn seal(v: &ViewerKey, p: &Packet, slot: &mut [u8; DGRAM_MAX]) -> usize {
    let hlen = 12;
    let plen = p.payload.len().min(DGRAM_MAX - hlen - TAG_LEN);
    slot[0] = 0x80;
    slot[1] = (p.pt & 0x7f) | if p.marker { 0x80 } else { 0 };
    slot[2..4].copy_from_slice(&v.seq.to_be_bytes());
    slot[4..8].copy_from_slice(&p.timestamp.to_be_bytes());
    slot[8..12].copy_from_slice(&v.ssrc.to_be_bytes());
    slot[hlen..hlen + plen].copy_from_slice(&p.payload[..plen]);
    // RFC 7714 section 8.1: IV = (0x0000 || SSRC || ROC || SEQ) XOR salt.
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&v.ssrc.to_be_bytes());
    iv[10..12].copy_from_slice(&v.seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(v.salt) {
        *b ^= s;
    }
    let (head, rest) = slot.split_at_mut(hlen);
    let tag = v
        .key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(&head[..]), &mut rest[..plen])
        .expect("AES-GCM seal of a bounded buffer");
    rest[plen..plen + TAG_LEN].copy_from_slice(tag.as_ref());
    hlen + plen + TAG_LEN
}

/// A batch of datagrams for one `sendmmsg`.
struct Sender {
    bufs: Vec<[u8; DGRAM_MAX]>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    n: usize,
}

impl Sender {
    fn new() -> Sender {
        // SAFETY: all-zero bytes are valid for these plain C structs.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        Sender {
            bufs: vec![[0u8; DGRAM_MAX]; BATCH],
            lens: vec![0; BATCH],
            addrs: vec![zero_addr; BATCH],
            iovs: (0..BATCH).map(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }).collect(),
            hdrs: vec![zero_hdr; BATCH],
            n: 0,
        }
    }
    fn slot(&mut self) -> &mut [u8; DGRAM_MAX] {
        &mut self.bufs[self.n]
    }
    fn push(&mut self, len: usize, addr: libc::sockaddr_in) {
        self.lens[self.n] = len;
        self.addrs[self.n] = addr;
        self.n += 1;
    }
    fn len(&self) -> usize {
        self.n
    }
    /// Sends the batch; (sent, failed).
    fn flush(&mut self, fd: i32) -> (u64, u64) {
        let n = self.n;
        if n == 0 {
            return (0, 0);
        }
        for i in 0..n {
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: self.lens[i] };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
        }
        let mut done = 0usize;
        let mut failed = 0u64;
        while done < n {
            // SAFETY: headers done..n point at buffers, lengths and addresses owned by self, alive for the call.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[done..].as_mut_ptr(), (n - done) as u32, 0) };
            if r <= 0 {
                // Skip the datagram that failed (e.g. ENOBUFS) and go on.
                failed += 1;
                done += 1;
            } else {
                done += r as usize;
            }
        }
        self.n = 0;
        (n as u64 - failed, failed)
    }
}

/// Keeps the calling thread on one CPU (`scripts/bench --pin`: the sender where the fanout worker runs, the
/// drain where the load client does).
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap_or_else(|e| die(&format!("cpu {cpu}: {e}")));
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .unwrap_or_else(|e| die(&format!("pinning to cpu {cpu}: {e}")));
}

fn drain_thread(socks: Vec<UdpSocket>, stop: Arc<AtomicBool>, received: Arc<AtomicU64>) -> Duration {
    let cpu0 = thread_cpu();
    let mut poll = mio::Poll::new().expect("epoll");
    let mut msocks: Vec<mio::net::UdpSocket> = socks.into_iter().map(mio::net::UdpSocket::from_std).collect();
    for (i, s) in msocks.iter_mut().enumerate() {
        poll.registry().register(s, mio::Token(i), mio::Interest::READABLE).expect("register");
    }
    let mut events = mio::Events::with_capacity(1024);
    let mut buf = [0u8; DGRAM_MAX];
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Sleep, then look without waiting, as `deadsfu-load` reads its sockets: the sender wakes nobody.
        std::thread::sleep(RECV_TICK);
        if poll.poll(&mut events, Some(Duration::ZERO)).is_err() {
            continue;
        }
        for ev in events.iter() {
            let s = &msocks[ev.token().0];
            while s.recv(&mut buf).is_ok() {
                count += 1;
            }
        }
        received.store(count, Ordering::Relaxed);
    }
    thread_cpu() - cpu0
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

fn die(msg: &str) -> ! {
    eprintln!("deadsfu-floor: {msg}");
    std::process::exit(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ms: u64, keyframe: bool) -> Packet {
        Packet { at: Duration::from_millis(ms), pt: 96, marker: false, timestamp: 0, keyframe, payload: vec![0; 10] }
    }

    #[test]
    fn a_capture_is_looped_as_whole_gops_from_its_first_keyframe() {
        // Audio and video before the first keyframe, three keyframes 2 s apart, a part-GOP after the last.
        let capture = vec![
            packet(0, false),
            packet(300, false),
            packet(500, true),
            packet(520, false),
            packet(1500, false),
            packet(2500, true),
            packet(3000, false),
            packet(4500, true),
            packet(4600, false),
        ];
        let looped = whole_gops(capture, false);
        assert_eq!(looped.gops, 2);
        assert!(!looped.skipped_first);
        assert_eq!(looped.period, Duration::from_millis(4000));
        let at: Vec<u64> = looped.packets.iter().map(|p| p.at.as_millis() as u64).collect();
        assert_eq!(at, [0, 20, 1000, 2000, 2500]);
        assert!(looped.packets[0].keyframe && looped.packets[3].keyframe);
    }

    #[test]
    fn a_capture_with_one_keyframe_is_looped_whole() {
        let looped = whole_gops(vec![packet(0, true), packet(100, false), packet(200, false)], false);
        assert_eq!(looped.gops, 0);
        assert_eq!(looped.packets.len(), 3);
        // The span and one mean gap (200 / 3 ms).
        assert_eq!(looped.period, Duration::from_millis(200) + Duration::from_millis(200) / 3);
        assert_eq!(whole_gops(synthetic(), false).gops, 0);
    }

    #[test]
    fn arrival_times_out_of_order_still_make_a_lap_of_some_time() {
        // Two keyframes stamped at the same instant: looped whole, not as a GOP of no time.
        let looped = whole_gops(vec![packet(5, true), packet(3, false), packet(5, true)], false);
        assert_eq!(looped.gops, 0);
        assert!(looped.period >= MIN_LAP);
        // A packet stamped before its GOP's keyframe: at the lap's start.
        let looped = whole_gops(vec![packet(10, true), packet(4, false), packet(2010, true)], false);
        assert_eq!(looped.gops, 1);
        assert_eq!(looped.packets[1].at, Duration::ZERO);
        let looped = whole_gops(vec![packet(0, false), packet(0, false)], false);
        assert_eq!(looped.period, MIN_LAP);
    }

    #[test]
    fn a_capture_of_the_streams_start_leaves_out_its_first_gop_where_a_later_one_is_whole() {
        let capture = || {
            vec![
                packet(0, true),
                packet(1, false),
                packet(2000, true),
                packet(2030, false),
                packet(4000, true),
                packet(4010, false),
            ]
        };
        let looped = whole_gops(capture(), true);
        assert!(looped.skipped_first);
        assert_eq!((looped.gops, looped.period), (1, Duration::from_millis(2000)));
        let at: Vec<u64> = looped.packets.iter().map(|p| p.at.as_millis() as u64).collect();
        assert_eq!(at, [0, 30]);
        // Later in the stream, the same packets loop from the first keyframe.
        assert_eq!(whole_gops(capture(), false).gops, 2);
        // With two keyframes only, the first GOP is all there is.
        let looped = whole_gops(capture()[..4].to_vec(), true);
        assert!(!looped.skipped_first);
        assert_eq!(looped.gops, 1);
    }
}
