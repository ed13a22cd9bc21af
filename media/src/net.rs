//! The UDP sockets of a media process.
//!
//! A str0m session only accepts a datagram whose destination equals one of its local candidates, so the
//! destination of every datagram must be known. Rather than reading it from ancillary data, the process binds
//! one socket per advertised IPv4 address, all on the same port, and the socket a datagram arrived on names its
//! destination. With `ice_candidate_host` (a host behind 1:1 NAT) one socket is bound to all interfaces and the
//! advertised address stands in as the destination.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use str0m::net::Transmit;

struct Bound {
    socket: UdpSocket,
    /// The address peers send to: the socket's own, or the advertised one behind NAT.
    advertised: SocketAddr,
}

/// The sockets of one process, all on one port.
pub struct UdpSet {
    sockets: Vec<Bound>,
    first_token: usize,
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
        Ok(UdpSet { sockets, first_token: 0 })
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

    /// Sends a str0m transmit from the socket of its source address. A full socket buffer drops the datagram
    /// (as the network would); other errors are logged and dropped: one peer's bad address must not stop the
    /// process.
    pub fn send(&self, t: &Transmit) {
        let b = self.sockets.iter().find(|b| b.advertised == t.source).unwrap_or(&self.sockets[0]);
        if let Err(e) = b.socket.send_to(&t.contents, t.destination) {
            tracing::trace!(error = %e, dest = %t.destination, "send failed");
        }
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
