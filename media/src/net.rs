//! The UDP sockets of a media process.
//!
//! A str0m session only accepts a datagram whose destination equals one of its local candidates, so the
//! destination of every datagram must be known. Rather than reading it from ancillary data, the process binds
//! one socket per advertised IPv4 address, all on the same port, and the socket a datagram arrived on names its
//! destination. With `ice_candidate_host` (a host behind 1:1 NAT) one socket is bound to all interfaces and the
//! advertised address stands in as the destination.
//!
//! Sending is batched: [`UdpSet::send`] queues a datagram on the socket of its source address and
//! [`UdpSet::flush`] hands each socket's queue to the kernel with `sendmmsg`, up to [`BATCH`] datagrams per
//! system call. On this machine class the kernel's send path costs more than the SRTP sealing, and one
//! syscall per datagram would dominate the fan-out. A datagram the kernel will not take (socket buffer full)
//! is dropped and counted, as the network would drop it; it is never retried out of order.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::io::IoSlice;
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use nix::sys::socket::{self, sockopt, MsgFlags, MultiHeaders, SockaddrStorage};
use str0m::net::Transmit;

/// Most datagrams handed to the kernel in one `sendmmsg`.
pub const BATCH: usize = 64;
/// Socket buffers asked for (the kernel caps them at `net.core.{r,w}mem_max`): room for a burst such as a
/// GOP replay to a joining viewer, and for publishers' keyframes.
const SOCKET_BUFFER: usize = 4 << 20;

struct Bound {
    socket: UdpSocket,
    /// The address peers send to: the socket's own, or the advertised one behind NAT.
    advertised: SocketAddr,
}

/// The sockets of one process, all on one port.
pub struct UdpSet {
    sockets: Vec<Bound>,
    first_token: usize,
    /// Per socket, the datagrams waiting for [`UdpSet::flush`].
    queues: Vec<Vec<(SockaddrStorage, Vec<u8>)>>,
    headers: MultiHeaders<SockaddrStorage>,
    dropped: u64,
}

impl UdpSet {
    /// Binds `port` (0: any free port, the same on every address) on every local IPv4 address, or on all
    /// interfaces when `advertise` is set.
    pub fn bind(port: u16, advertise: Option<IpAddr>) -> io::Result<UdpSet> {
        let mut sockets = Vec::new();
        if let Some(public) = advertise {
            let socket = UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?;
            let port = socket.local_addr()?.port();
            sockets.push(Bound { socket, advertised: SocketAddr::new(public, port) });
        } else {
            let mut port = port;
            for ip in local_ipv4_addresses()? {
                let socket = UdpSocket::bind(SocketAddr::new(ip, port))?;
                port = socket.local_addr()?.port();
                sockets.push(Bound { advertised: socket.local_addr()?, socket });
            }
        }
        if sockets.is_empty() {
            return Err(io::Error::new(io::ErrorKind::AddrNotAvailable, "no IPv4 address to bind"));
        }
        for b in &sockets {
            // Best effort: a smaller buffer only means drops sooner under a burst.
            let _ = socket::setsockopt(&b.socket, sockopt::SndBuf, &SOCKET_BUFFER);
            let _ = socket::setsockopt(&b.socket, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        let queues = sockets.iter().map(|_| Vec::with_capacity(BATCH)).collect();
        Ok(UdpSet { sockets, first_token: 0, queues, headers: MultiHeaders::preallocate(BATCH, None), dropped: 0 })
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

    /// The socket index a mio token stands for.
    pub fn index_of(&self, token: Token) -> Option<usize> {
        token.0.checked_sub(self.first_token).filter(|i| *i < self.sockets.len())
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Reads one datagram from socket `index`: its length, source and destination, or `None` when drained.
    pub fn recv(&self, index: usize, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr, SocketAddr)>> {
        let b = &self.sockets[index];
        match b.socket.recv_from(buf) {
            Ok((n, source)) => Ok(Some((n, source, b.advertised))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Queues a str0m transmit on the socket of its source address; full batches go out at once.
    pub fn send(&mut self, t: Transmit) {
        let index = self.sockets.iter().position(|b| b.advertised == t.source).unwrap_or(0);
        self.queues[index].push((SockaddrStorage::from(t.destination), t.contents.into()));
        if self.queues[index].len() >= BATCH {
            self.flush_socket(index);
        }
    }

    /// Sends everything queued.
    pub fn flush(&mut self) {
        for index in 0..self.sockets.len() {
            if !self.queues[index].is_empty() {
                self.flush_socket(index);
            }
        }
    }

    /// Datagrams dropped because the kernel would not take them, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn flush_socket(&mut self, index: usize) {
        let fd = self.sockets[index].socket.as_raw_fd();
        let queue = std::mem::take(&mut self.queues[index]);
        let mut at = 0;
        while at < queue.len() {
            let chunk = &queue[at..(at + BATCH).min(queue.len())];
            let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
            let addrs: Vec<Option<SockaddrStorage>> = chunk.iter().map(|(a, _)| Some(*a)).collect();
            match socket::sendmmsg(fd, &mut self.headers, &slices, &addrs, [], MsgFlags::MSG_DONTWAIT) {
                Ok(results) => {
                    // At least one went out, or the call would have failed; continue after the last sent.
                    at += results.count().max(1);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    // Full buffer, or a bad destination: drop this datagram, keep the rest in order.
                    tracing::trace!(error = %e, dest = ?chunk[0].0, "send failed");
                    self.dropped += 1;
                    at += 1;
                }
            }
        }
        let mut queue = queue;
        queue.clear();
        self.queues[index] = queue;
    }
}

/// Every IPv4 address of an interface that is up, loopback first.
fn local_ipv4_addresses() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let up = ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        let Some(v4) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else { continue };
        if up {
            let ip = IpAddr::V4(v4.ip());
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out.sort_by_key(|ip| !ip.is_loopback());
    Ok(out)
}
