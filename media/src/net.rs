//! The UDP sockets of a media process.
//!
//! A str0m session only accepts a datagram whose destination equals one of its local candidates, so the
//! destination of every datagram must be known. Rather than reading it from ancillary data, the process binds
//! one socket per address of the host (IPv4 and IPv6), all on the same port, and the socket a datagram arrived
//! on names its destination. With `ice_candidate_host` (a host behind 1:1 NAT) one socket is bound to all
//! interfaces and the advertised address stands in as the destination.
//!
//! Sending is batched: [`UdpSet::send`] (a str0m transmit) and [`UdpSet::write`] (a datagram written in place)
//! queue a datagram in one send buffer, back to back, for the socket of its source address, and
//! [`UdpSet::flush`] hands the queue to the kernel in as few system calls as it can, at the latest when a
//! batch is full. Consecutive datagrams to one destination of one size (the packets of a video frame to one
//! viewer: fanout sends a turn's packets viewer by viewer) go as one UDP GSO message (`UDP_SEGMENT`), which the kernel splits, paying its send
//! path once; the rest go with `sendmmsg`, up to [`BATCH`] per call. On this machine class the kernel's send
//! path costs more than the SRTP sealing. A datagram the kernel will not take (socket buffer full) is dropped
//! and counted, as the network would drop it; it is never retried out of order. A GSO message the kernel
//! refuses goes again datagram by datagram, and if the device cannot take GSO at all (EIO) the set falls back
//! to `sendmmsg` for good. IPv4 sockets send with the don't-fragment bit and IP ID 0
//! ([`sockopt_df`]), which spares the kernel's shared ID counters a draw per datagram.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage};
use str0m::net::{Protocol, Transmit};

use crate::outbox::Path;

/// Most datagrams handed to the kernel in one `sendmmsg`.
pub const BATCH: usize = 64;
/// Most datagrams in one GSO message (the kernel allows 64), and most bytes.
const GSO_MAX_SEGMENTS: usize = 32;
const GSO_MAX_BYTES: usize = 60_000;
/// Socket buffers asked for (the kernel caps them at `net.core.{r,w}mem_max`): room for a burst such as a
/// GOP replay to a joining viewer, and for publishers' keyframes.
const SOCKET_BUFFER: usize = 4 << 20;
/// Bytes of queued datagrams, back to back, before they go out: a batch of the largest.
const SEND_BUFFER: usize = BATCH * DATAGRAM_MAX;
/// The largest datagram a session sends (str0m's MTU is 1150 by default; a peer's may be larger).
const DATAGRAM_MAX: usize = 2048;

struct Bound {
    socket: UdpSocket,
    /// The address peers send to: the socket's own, or the advertised one behind NAT.
    advertised: SocketAddr,
    /// The `recvmmsg` headers of this socket, kept across calls. Each is its own: a header's address length
    /// goes into the kernel as the room for the source address and comes back as the length written, and nix
    /// does not restore it between calls, so a slot that once read an IPv4 source (16 bytes) would cut the next
    /// IPv6 one (28) to its first 8 address bytes (`fd00::2` read as `fd00::`). A socket's sources are all of
    /// its own family, so its own headers never shrink below what it needs.
    recv_headers: MultiHeaders<SockaddrStorage>,
}

impl Bound {
    fn new(socket: UdpSocket, advertised: SocketAddr) -> Bound {
        Bound { socket, advertised, recv_headers: MultiHeaders::preallocate(RECV_BATCH, None) }
    }
}

/// The sockets of one process, all on one port.
pub struct UdpSet {
    sockets: Vec<Bound>,
    first_token: usize,
    /// The datagrams waiting for [`UdpSet::flush`], back to back (allocated once: a datagram costs no
    /// allocation), and where each goes.
    data: Vec<u8>,
    queued: Vec<Queued>,
    /// Room for a flush's lists (which datagrams go one by one, and their destinations), kept across flushes.
    singles: Vec<usize>,
    v4: Dests<SockaddrIn>,
    v6: Dests<SockaddrIn6>,
    dropped: u64,
    gso: bool,
    counters: NetCounters,
}

/// What a [`UdpSet`] moved since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
}

impl UdpSet {
    /// Binds `port` (0: any free port, the same on every address) on every local address (IPv4 and IPv6, see
    /// `local_addresses`), or on all interfaces of the advertised address's family when `advertise` is set.
    pub fn bind(port: u16, advertise: Option<IpAddr>) -> io::Result<UdpSet> {
        let mut sockets = Vec::new();
        if let Some(public) = advertise {
            let any: IpAddr =
                if public.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
            let socket = UdpSocket::bind(SocketAddr::new(any, port))?;
            let port = socket.local_addr()?.port();
            sockets.push(Bound::new(socket, SocketAddr::new(public, port)));
        } else {
            let mut port = port;
            for ip in local_addresses()? {
                let socket = match UdpSocket::bind(SocketAddr::new(ip, port)) {
                    Ok(socket) => socket,
                    // An IPv6 address still in duplicate address detection, or going away: leave it out.
                    Err(e) if ip.is_ipv6() && e.kind() == io::ErrorKind::AddrNotAvailable => {
                        tracing::warn!(%ip, error = %e, "IPv6 address not bound");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                port = socket.local_addr()?.port();
                let advertised = socket.local_addr()?;
                sockets.push(Bound::new(socket, advertised));
            }
        }
        if sockets.is_empty() {
            return Err(io::Error::new(io::ErrorKind::AddrNotAvailable, "no IP address to bind"));
        }
        for b in &sockets {
            // Best effort: a smaller buffer only means drops sooner under a burst.
            let _ = socket::setsockopt(&b.socket, sockopt::SndBuf, &SOCKET_BUFFER);
            let _ = socket::setsockopt(&b.socket, sockopt::RcvBuf, &SOCKET_BUFFER);
            if b.advertised.is_ipv4() {
                if let Err(e) = sockopt_df(&b.socket) {
                    tracing::warn!(addr = %b.advertised, error = %e, "IP_PMTUDISC_PROBE not set: datagrams draw IP IDs");
                }
            }
        }
        let (data, queued) = (Vec::with_capacity(SEND_BUFFER), Vec::with_capacity(BATCH));
        Ok(UdpSet {
            sockets,
            first_token: 0,
            data,
            queued,
            singles: Vec::with_capacity(BATCH),
            v4: Dests::new(),
            v6: Dests::new(),
            dropped: 0,
            gso: true,
            counters: NetCounters::default(),
        })
    }

    /// The addresses to put in ICE host candidates.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|b| b.advertised).collect()
    }

    /// The port every socket is bound to.
    pub fn port(&self) -> u16 {
        self.sockets[0].advertised.port()
    }

    /// Registers the sockets for readability with tokens `first_token..first_token + len`.
    pub fn register(&mut self, registry: &Registry, first_token: usize) -> io::Result<()> {
        self.first_token = first_token;
        for (i, b) in self.sockets.iter_mut().enumerate() {
            registry.register(&mut b.socket, Token(first_token + i), Interest::READABLE)?;
        }
        Ok(())
    }

    /// Takes the sockets off `registry`, to be registered with another (see
    /// [`crate::process::Core::defer_input`]).
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        for b in self.sockets.iter_mut() {
            registry.deregister(&mut b.socket)?;
        }
        Ok(())
    }

    /// The socket index a mio token stands for.
    pub fn index_of(&self, token: Token) -> Option<usize> {
        token.0.checked_sub(self.first_token).filter(|i| *i < self.sockets.len())
    }

    /// How many sockets the set has (their indices are `0..len`).
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Reads up to [`RECV_BATCH`] datagrams from socket `index` in one `recvmmsg` into `batch`, and returns how
    /// many the kernel gave; 0 when the socket had none. Fewer than a batch means the socket was read dry.
    pub fn recv_batch(&mut self, index: usize, batch: &mut RecvBatch) -> io::Result<usize> {
        let b = &mut self.sockets[index];
        batch.got.clear();
        batch.destination = b.advertised;
        let mut chunks = batch.buf.chunks_exact_mut(DATAGRAM_MAX);
        let mut slices: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().expect("the buffer holds a batch"))]);
        let received = socket::recvmmsg(
            b.socket.as_raw_fd(),
            &mut b.recv_headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        );
        let mut read = 0;
        match received {
            Ok(results) => {
                for (slot, msg) in results.enumerate() {
                    read += 1;
                    let Some(source) = msg.address.as_ref().and_then(socket_addr) else { continue };
                    batch.got.push((slot, msg.bytes.min(DATAGRAM_MAX), source));
                }
            }
            Err(Errno::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
        self.counters.datagrams_in += read as u64;
        self.counters.bytes_in += batch.got.iter().map(|(_, n, _)| *n as u64).sum::<u64>();
        Ok(read)
    }

    /// Queues a str0m transmit on the socket of its source address; a full batch goes out at once.
    pub fn send(&mut self, t: Transmit) {
        let start = self.data.len();
        self.data.extend_from_slice(&t.contents);
        self.queue(t.source, t.destination, start);
    }

    /// Queues a datagram written in place: `write` appends it to the send buffer and says where it goes (see
    /// [`Outbox::write`](crate::outbox::Outbox::write)). A UDP one is queued like [`UdpSet::send`]'s; one for
    /// another protocol (ICE-TCP) is handed back as a transmit for its own socket.
    pub fn write(&mut self, write: &mut dyn FnMut(&mut Vec<u8>) -> Option<Path>) -> Option<Transmit> {
        let start = self.data.len();
        match write(&mut self.data) {
            None => {
                self.data.truncate(start);
                None
            }
            Some((Protocol::Udp, source, destination)) => {
                self.queue(source, destination, start);
                None
            }
            Some((proto, source, destination)) => {
                let contents = self.data[start..].to_vec();
                self.data.truncate(start);
                Some(Transmit { proto, source, destination, contents: contents.into() })
            }
        }
    }

    /// Queues the datagram at `start..` of the send buffer on the socket of `source`.
    fn queue(&mut self, source: SocketAddr, destination: SocketAddr, start: usize) {
        let len = self.data.len() - start;
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += len as u64;
        let socket = self.sockets.iter().position(|b| b.advertised == source).unwrap_or(0);
        self.queued.push(Queued { socket, destination, start, len });
        if self.queued.len() >= BATCH || self.data.len() > SEND_BUFFER - DATAGRAM_MAX {
            self.flush();
        }
    }

    /// Sends everything queued: each socket's datagrams in the order they were queued.
    pub fn flush(&mut self) {
        let UdpSet { sockets, data, queued, singles, v4, v6, dropped, gso, .. } = self;
        let mut out = Out { data, singles, v4, v6, dropped, gso };
        let mut at = 0;
        while at < queued.len() {
            let socket = queued[at].socket;
            let run = queued[at..].iter().take_while(|q| q.socket == socket).count();
            let b = &sockets[socket];
            out.send(b.socket.as_raw_fd(), b.advertised.is_ipv6(), &queued[at..at + run]);
            at += run;
        }
        queued.clear();
        data.clear();
    }

    /// Datagrams and bytes received and queued for sending so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Whether consecutive datagrams to one destination still go out as UDP GSO messages.
    pub fn gso_active(&self) -> bool {
        self.gso
    }

    /// Datagrams dropped because the kernel would not take them, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A datagram waiting in the send buffer: `data[start..start + len]`, for `destination` from socket `socket`.
struct Queued {
    socket: usize,
    destination: SocketAddr,
    start: usize,
    len: usize,
}

/// Most datagrams read in one `recvmmsg` ([`UdpSet::recv_batch`]).
pub const RECV_BATCH: usize = 32;

/// Datagrams read from one socket in one system call, and the buffers for them (allocated once).
pub struct RecvBatch {
    /// [`RECV_BATCH`] slots of [`DATAGRAM_MAX`] bytes; a longer datagram is cut short, as a `recvfrom` into a
    /// buffer of that size would cut it.
    buf: Vec<u8>,
    /// Slot, length and source of each datagram read (one without a source address, which a UDP socket does
    /// not give, is left out).
    got: Vec<(usize, usize, SocketAddr)>,
    /// The address they were sent to (the socket's advertised one).
    destination: SocketAddr,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buf: vec![0; RECV_BATCH * DATAGRAM_MAX],
            got: Vec::with_capacity(RECV_BATCH),
            destination: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

impl RecvBatch {
    /// The datagrams read: contents, source and destination of each.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr, SocketAddr)> + '_ {
        self.got.iter().map(|&(slot, n, source)| {
            let start = slot * DATAGRAM_MAX;
            (&self.buf[start..start + n], source, self.destination)
        })
    }
}

/// A socket address as the kernel gave it, if it is IPv4 or IPv6.
fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// What sending a run of queued datagrams needs of a [`UdpSet`].
struct Out<'a> {
    data: &'a [u8],
    singles: &'a mut Vec<usize>,
    v4: &'a mut Dests<SockaddrIn>,
    v6: &'a mut Dests<SockaddrIn6>,
    dropped: &'a mut u64,
    gso: &'a mut bool,
}

impl Out<'_> {
    /// Sends `queue` (datagrams of one socket, IPv6 or not) in order: runs that can go as one GSO message so,
    /// the rest with sendmmsg.
    fn send(&mut self, fd: RawFd, v6: bool, queue: &[Queued]) {
        // Datagrams that go one by one (`self.singles`) wait for the next sendmmsg.
        let mut at = 0;
        while at < queue.len() {
            let run = if *self.gso { gso_run(&queue[at..]) } else { 1 };
            if run < 2 {
                self.singles.push(at);
                at += 1;
                continue;
            }
            self.send_singles(fd, v6, queue);
            let first = &queue[at];
            let segment = first.len as u16;
            let data = self.data;
            let mut slices = [IoSlice::new(&[]); GSO_MAX_SEGMENTS];
            for (slice, q) in slices.iter_mut().zip(&queue[at..at + run]) {
                *slice = IoSlice::new(&data[q.start..][..q.len]);
            }
            let cmsg = [socket::ControlMessage::UdpGsoSegments(&segment)];
            let addr = SockaddrStorage::from(first.destination);
            match socket::sendmsg(fd, &slices[..run], &cmsg, MsgFlags::MSG_DONTWAIT, Some(&addr)) {
                Ok(_) => {}
                Err(Errno::EAGAIN) => *self.dropped += run as u64,
                Err(e) => {
                    // These go one by one, each dropped alone if the kernel will not take it. An error of this
                    // destination or this run (EINVAL for port 0, EMSGSIZE, EPERM from a firewall rule) leaves the
                    // other viewers' runs as they were; EIO says the device cannot checksum GSO segments, so none
                    // goes as GSO from now on.
                    if e == Errno::EIO {
                        tracing::debug!(error = %e, "UDP GSO refused; sending datagrams one by one");
                        *self.gso = false;
                    }
                    self.singles.extend(at..at + run);
                }
            }
            at += run;
        }
        self.send_singles(fd, v6, queue);
    }

    /// Sends the datagrams of `queue` listed in `self.singles` with sendmmsg, and empties the list.
    fn send_singles(&mut self, fd: RawFd, v6: bool, queue: &[Queued]) {
        let data = self.data;
        let mut done = 0;
        while done < self.singles.len() {
            let chunk = &self.singles[done..(done + BATCH).min(self.singles.len())];
            let mut slices = [[IoSlice::new(&[])]; BATCH];
            for (slice, &i) in slices.iter_mut().zip(chunk) {
                *slice = [IoSlice::new(&data[queue[i].start..][..queue[i].len])];
            }
            let slices = &slices[..chunk.len()];
            let destinations = chunk.iter().map(|&i| queue[i].destination);
            let sent = if v6 {
                self.v6.sendmmsg(fd, slices, destinations)
            } else {
                self.v4.sendmmsg(fd, slices, destinations)
            };
            match sent {
                // At least one went out, or the call would have failed; continue after the last sent.
                Ok(sent) => done += sent.max(1),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    // Full buffer, or a bad destination: drop this datagram, keep the rest in order.
                    tracing::trace!(error = %e, dest = %queue[chunk[0]].destination, "send failed");
                    *self.dropped += 1;
                    done += 1;
                }
            }
        }
        self.singles.clear();
    }
}

/// The destinations of one `sendmmsg` in the address type of the socket's family, and nix's headers for them
/// (both kept across calls). A `SockaddrStorage` is 128 bytes to fill per datagram, and nix copies each sent
/// datagram's address once more as it counts them; an IPv4 address is 16 bytes.
struct Dests<S> {
    headers: MultiHeaders<S>,
    addrs: Vec<Option<S>>,
}

/// A socket address type [`Dests`] holds: made from a [`SocketAddr`] of its family.
trait Dest: SockaddrLike + Copy {
    fn of(addr: SocketAddr) -> Option<Self>;
}

impl Dest for SockaddrIn {
    fn of(addr: SocketAddr) -> Option<Self> {
        match addr {
            SocketAddr::V4(v4) => Some(v4.into()),
            SocketAddr::V6(_) => None,
        }
    }
}

impl Dest for SockaddrIn6 {
    /// An IPv4 address as IPv4-mapped, as a dual-stack socket (bound to `::`) sends to it.
    fn of(addr: SocketAddr) -> Option<Self> {
        let v6 = match addr {
            SocketAddr::V6(v6) => v6,
            SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        };
        Some(v6.into())
    }
}

impl<S: Dest> Dests<S> {
    fn new() -> Dests<S> {
        Dests { headers: MultiHeaders::preallocate(BATCH, None), addrs: Vec::with_capacity(BATCH) }
    }

    /// Sends datagram `i` of `slices` to destination `i` with one `sendmmsg`; returns how many the kernel took.
    /// An IPv6 destination of an IPv4 socket goes without an address, which the kernel refuses.
    fn sendmmsg(
        &mut self,
        fd: RawFd,
        slices: &[[IoSlice<'_>; 1]],
        destinations: impl Iterator<Item = SocketAddr>,
    ) -> nix::Result<usize> {
        self.addrs.clear();
        self.addrs.extend(destinations.map(S::of));
        socket::sendmmsg(fd, &mut self.headers, slices, &*self.addrs, [], MsgFlags::MSG_DONTWAIT)
            .map(|results| results.count())
    }
}

/// How many datagrams from the start of `queue` can go as one GSO message: same destination, all of the
/// first one's size except a last one that may be shorter, within the kernel's limits.
fn gso_run(queue: &[Queued]) -> usize {
    let first = &queue[0];
    let size = first.len;
    let mut bytes = size;
    let mut n = 1;
    while n < queue.len() && n < GSO_MAX_SEGMENTS {
        let q = &queue[n];
        if q.destination != first.destination || q.len > size || bytes + q.len > GSO_MAX_BYTES {
            break;
        }
        bytes += q.len;
        n += 1;
        if q.len < size {
            // A shorter datagram can only end a GSO message.
            break;
        }
    }
    n
}

/// Sets an IPv4 socket's datagrams to leave with the don't-fragment bit and IP ID 0 (`IP_PMTUDISC_PROBE`).
///
/// By default (`IP_PMTUDISC_WANT`) Linux sets DF on a UDP datagram that fits the path MTU too, but still draws it an IP
/// ID from a hashed table of counters shared by every CPU (`__ip_select_ident`: a SipHash and an atomic on a cache line
/// of its own: 4-5% of a worker's CPU at 200 and 1000 viewers in `perf`, BENCHMARKS.md "Datagrams without an IP ID"). A
/// datagram with DF that the socket will not fragment is atomic (RFC 6864) and gets ID 0. `PROBE` also sizes datagrams
/// by the device's MTU and never by a path MTU learned from ICMP, so a forged "fragmentation needed" can neither make
/// the kernel fragment media nor make it refuse to send: a datagram too long for some link on the path is dropped
/// there, as one with DF already was. A datagram longer than the device's MTU (a publisher's packet that our header and
/// tag make longer than it) is refused by the kernel and counted as dropped, where it was fragmented before.
pub fn sockopt_df(socket: &impl std::os::fd::AsFd) -> io::Result<()> {
    use rustix::net::sockopt::{set_ip_mtu_discover, Ipv4PathMtuDiscovery};
    set_ip_mtu_discover(socket, Ipv4PathMtuDiscovery::PROBE).map_err(io::Error::from)
}

/// Every address of an interface that is up: IPv4, then IPv6 except link-local ones (`fe80::/10`, which need
/// a scope that ICE candidates do not carry), loopback first in each family.
fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if !ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(ip) = ifa.address.as_ref().and_then(socket_addr).map(|a| a.ip()) else { continue };
        if matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80) {
            continue;
        }
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out.sort_by_key(|ip| (ip.is_ipv6(), !ip.is_loopback()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(items: &[(u16, usize)]) -> Vec<Queued> {
        let destination = |port| SocketAddr::from(([127, 0, 0, 1], port));
        items.iter().map(|&(port, len)| Queued { socket: 0, destination: destination(port), start: 0, len }).collect()
    }

    #[test]
    fn gso_runs() {
        // A frame of four equal packets and a short last one, then another viewer.
        assert_eq!(gso_run(&q(&[(1, 1200), (1, 1200), (1, 1200), (1, 1200), (1, 700), (2, 1200)])), 5);
        // A shorter datagram ends a run.
        assert_eq!(gso_run(&q(&[(1, 1200), (1, 700), (1, 1200)])), 2);
        // A longer one cannot join.
        assert_eq!(gso_run(&q(&[(1, 700), (1, 1200)])), 1);
        assert_eq!(gso_run(&q(&[(1, 1200), (2, 1200)])), 1);
        assert_eq!(gso_run(&q(&[(1, 1200)])), 1);
        // The kernel's limits.
        assert_eq!(gso_run(&q(&[(1, 1200); 40])), GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / 1200));
    }

    #[test]
    fn gso_and_single_datagrams_arrive_whole_and_in_order() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let dest = rx.local_addr().unwrap();
        let mut set = UdpSet::bind(0, Some(IpAddr::V4(Ipv4Addr::LOCALHOST))).unwrap();
        let source = set.candidates()[0];
        let sizes = [1200, 1200, 1200, 500, 300, 1200, 1200];
        for (i, len) in sizes.iter().enumerate() {
            let contents = vec![i as u8; *len];
            set.send(Transmit {
                proto: str0m::net::Protocol::Udp,
                source,
                destination: dest,
                contents: contents.into(),
            });
        }
        set.flush();
        let mut buf = [0u8; 2000];
        for (i, len) in sizes.iter().enumerate() {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(n, *len, "datagram {i}");
            assert!(buf[..n].iter().all(|b| *b == i as u8), "datagram {i} content");
        }
        assert_eq!(set.dropped(), 0);
        // Linux has had UDP GSO on loopback since 4.18; every machine this runs on is newer.
        assert!(set.gso_active(), "the kernel refused UDP GSO");
    }

    #[test]
    fn a_destination_that_refuses_a_gso_message_loses_its_own_datagrams_only() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut set = UdpSet::bind(0, Some(IpAddr::V4(Ipv4Addr::LOCALHOST))).unwrap();
        let source = set.candidates()[0];
        // Port 0: the kernel refuses every datagram to it (EINVAL), a run of them as one GSO message too.
        let refused = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        for destination in [refused, rx.local_addr().unwrap()] {
            for i in 0..3u8 {
                let contents = vec![i; 1000].into();
                set.send(Transmit { proto: str0m::net::Protocol::Udp, source, destination, contents });
            }
        }
        set.flush();
        let mut buf = [0u8; 2000];
        for i in 0..3u8 {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!((n, buf[0]), (1000, i), "datagram {i}");
        }
        assert_eq!(set.dropped(), 3, "the refused destination's datagrams, each counted");
        assert!(set.gso_active(), "one destination's error turned GSO off for every viewer");
    }

    #[test]
    fn datagrams_go_one_by_one_from_either_family() {
        let rx4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        for rx in [&rx4, &rx6] {
            rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        }
        let (to4, to6) = (rx4.local_addr().unwrap(), rx6.local_addr().unwrap());
        // The IPv6 set's one socket is bound to `::` and reaches IPv4 peers too (as IPv4-mapped); the IPv4 one
        // cannot send to an IPv6 address and drops those datagrams alone.
        for (advertise, reaches6) in [(Ipv4Addr::LOCALHOST.into(), false), (Ipv6Addr::LOCALHOST.into(), true)] {
            let mut set = UdpSet::bind(0, Some(advertise)).unwrap();
            let source = set.candidates()[0];
            // Destinations alternate: no two consecutive datagrams could go as one GSO message.
            for i in 0..6u8 {
                let destination = if i % 2 == 0 { to4 } else { to6 };
                let contents = vec![i; 100 + usize::from(i)].into();
                set.send(Transmit { proto: str0m::net::Protocol::Udp, source, destination, contents });
            }
            set.flush();
            let mut buf = [0u8; 2000];
            for i in (0..6u8).filter(|i| i % 2 == 0 || reaches6) {
                let rx = if i % 2 == 0 { &rx4 } else { &rx6 };
                let (n, _) = rx.recv_from(&mut buf).unwrap();
                assert_eq!((n, buf[0]), (100 + usize::from(i), i), "datagram {i} from {advertise}");
            }
            assert_eq!(set.dropped(), if reaches6 { 0 } else { 3 }, "from {advertise}");
        }
    }

    #[test]
    fn ipv4_sockets_set_df_without_drawing_ip_ids() {
        use rustix::net::sockopt::{ip_mtu_discover, Ipv4PathMtuDiscovery};
        for advertise in [None, Some(IpAddr::V4(Ipv4Addr::LOCALHOST))] {
            let set = UdpSet::bind(0, advertise).unwrap();
            let v4: Vec<_> = set.sockets.iter().filter(|b| b.advertised.is_ipv4()).collect();
            assert!(!v4.is_empty(), "no IPv4 socket bound ({advertise:?})");
            for b in v4 {
                assert_eq!(ip_mtu_discover(&b.socket).unwrap(), Ipv4PathMtuDiscovery::PROBE, "{}", b.advertised);
            }
        }
        // Not the kernel's default (`WANT`, or `DONT` with `ip_no_pmtu_disc`): a plain socket still draws IDs.
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_ne!(ip_mtu_discover(&plain).unwrap(), Ipv4PathMtuDiscovery::PROBE);
    }

    #[test]
    fn datagrams_are_read_a_batch_per_call_whole_and_in_order() {
        let mut set = UdpSet::bind(0, Some(IpAddr::V4(Ipv4Addr::LOCALHOST))).unwrap();
        let to = set.candidates()[0];
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = tx.local_addr().unwrap();
        let mut batch = RecvBatch::default();
        assert_eq!(set.recv_batch(0, &mut batch).unwrap(), 0, "nothing sent yet");
        // 40 datagrams of different sizes, the last longer than a slot.
        let sizes: Vec<usize> = (0..40).map(|i| if i == 39 { DATAGRAM_MAX + 500 } else { 100 + 20 * i }).collect();
        for (i, len) in sizes.iter().enumerate() {
            tx.send_to(&vec![i as u8; *len], to).unwrap();
        }
        // Loopback queues a datagram at the receiver before `send_to` returns: all 40 wait, one call reads a
        // batch of them, the next the rest.
        let mut got = Vec::new();
        for expected in [RECV_BATCH, sizes.len() - RECV_BATCH] {
            assert_eq!(set.recv_batch(0, &mut batch).unwrap(), expected);
            for (data, source, destination) in batch.iter() {
                assert_eq!((source, destination), (from, to));
                got.push(data.to_vec());
            }
        }
        assert_eq!(got.len(), sizes.len());
        for (i, data) in got.iter().enumerate() {
            assert_eq!(data.len(), sizes[i].min(DATAGRAM_MAX), "datagram {i}: a long one is cut to a slot");
            assert!(data.iter().all(|b| *b == i as u8), "datagram {i} content");
        }
        assert_eq!(set.counters().datagrams_in, 40);
        assert_eq!(set.recv_batch(0, &mut batch).unwrap(), 0, "read dry");
    }

    /// Reads from an IPv4 socket and then an IPv6 one of the same set, through one batch: each datagram's
    /// source comes whole (an IPv6 source read where an IPv4 one was read before once came cut to 8 bytes).
    #[test]
    fn each_source_address_comes_whole_whatever_was_read_before() {
        let mut set = UdpSet::bind(0, None).unwrap();
        let on = |ip: IpAddr| set.candidates().iter().position(|c| c.ip() == ip);
        let (Some(v4), Some(v6)) = (on(Ipv4Addr::LOCALHOST.into()), on(Ipv6Addr::LOCALHOST.into())) else {
            eprintln!("skipped: this host has no IPv4 and IPv6 loopback to bind");
            return;
        };
        let (to4, to6) = (set.candidates()[v4], set.candidates()[v6]);
        let tx4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let mut batch = RecvBatch::default();
        for round in 0..3 {
            for _ in 0..RECV_BATCH {
                tx4.send_to(b"four", to4).unwrap();
            }
            assert_eq!(set.recv_batch(v4, &mut batch).unwrap(), RECV_BATCH);
            assert!(batch.iter().all(|(_, source, _)| source == tx4.local_addr().unwrap()), "round {round}");
            for _ in 0..RECV_BATCH {
                tx6.send_to(b"six", to6).unwrap();
            }
            assert_eq!(set.recv_batch(v6, &mut batch).unwrap(), RECV_BATCH);
            for (_, source, destination) in batch.iter() {
                assert_eq!((source, destination), (tx6.local_addr().unwrap(), to6), "round {round}");
            }
        }
    }
}
