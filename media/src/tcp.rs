//! ICE over TCP: passive candidates (RFC 6544) for peers whose network blocks UDP.
//!
//! A media process listens on one TCP port per advertised address, the same addresses as its UDP sockets. A
//! peer whose UDP does not get through connects (its candidate is `tcptype active`) and speaks the session's
//! STUN, DTLS, SRTP and SRTCP over the connection, each packet framed by a 16-bit length (RFC 4571). To the
//! session host a frame is a datagram from the connection's remote address with `Protocol::Tcp`; a session's
//! transmit over TCP goes back on the connection its remote address names.
//!
//! Every connection is bounded: a frame longer than [`MAX_FRAME`] or a first frame that no session takes
//! closes it; a connection that has not carried a session's packet within [`HANDSHAKE_TIMEOUT`], or has been
//! silent for [`IDLE_TIMEOUT`], is closed; at most [`MAX_CONNECTIONS`] are open, [`MAX_PER_IP`] from one
//! address. What a connection has not yet taken of its sends is held up to [`MAX_BACKLOG`] bytes; past it a
//! packet is dropped, as a congested UDP path would drop it (media over TCP must not queue without end).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use str0m::net::Transmit;

/// Longest frame taken: a WebRTC packet fits a 1500-byte path MTU; RFC 4571 allows 65535, which nothing here
/// needs.
pub const MAX_FRAME: usize = 4096;
/// Most connections open at once, and from one IP address.
pub const MAX_CONNECTIONS: usize = 1024;
pub const MAX_PER_IP: usize = 16;
/// A connection must carry a packet a session takes within this of being accepted.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection silent this long is closed (ICE consent checks come every few seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes a connection may have waiting to be written before packets to it are dropped.
pub const MAX_BACKLOG: usize = 256 * 1024;
/// Frames read from one connection per turn, as [`crate::process`] bounds datagrams per socket.
const FRAME_BUDGET: usize = 256;

/// Tokens: listeners from `first_token`, connections from `first_token + CONN_OFFSET`.
const CONN_OFFSET: usize = 1 << 16;

struct Conn {
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    /// Received bytes not yet a whole frame.
    rx: Vec<u8>,
    /// Framed bytes not yet written, from `tx_at` on.
    tx: Vec<u8>,
    tx_at: usize,
    writable_interest: bool,
    accepted: Instant,
    last_input: Instant,
    /// A session took a packet from it.
    bound: bool,
}

/// A frame read from a connection: a datagram from `source` to `destination`.
pub struct Frame {
    pub conn: usize,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub data: Vec<u8>,
}

/// The TCP listeners and connections of one process.
pub struct TcpSet {
    listeners: Vec<(TcpListener, SocketAddr)>,
    conns: HashMap<usize, Conn>,
    by_remote: HashMap<SocketAddr, usize>,
    next_conn: usize,
    first_token: usize,
    /// Connections whose sends this turn wait for [`TcpSet::flush`].
    queued: Vec<usize>,
    /// Packets dropped because a connection's backlog was full, or had no connection.
    dropped: u64,
    /// Connections refused (limits) or closed for misbehaving.
    refused: u64,
}

impl TcpSet {
    /// Listens on `port` (0: any free port, the same on every address) on each of `addresses`; with `advertise`,
    /// on all interfaces, the advertised address standing in as the local one.
    pub fn bind(port: u16, addresses: &[IpAddr], advertise: Option<IpAddr>) -> io::Result<TcpSet> {
        let mut listeners = Vec::new();
        let mut port = port;
        let binds: Vec<(IpAddr, Option<IpAddr>)> = match advertise {
            Some(public) => {
                let any = if public.is_ipv6() { IpAddr::from([0u16; 8]) } else { IpAddr::from([0u8; 4]) };
                vec![(any, Some(public))]
            }
            None => addresses.iter().map(|ip| (*ip, None)).collect(),
        };
        for (ip, public) in binds {
            let listener = TcpListener::bind(SocketAddr::new(ip, port))?;
            let local = listener.local_addr()?;
            port = local.port();
            listeners.push((listener, public.map_or(local, |p| SocketAddr::new(p, port))));
        }
        Ok(TcpSet {
            listeners,
            conns: HashMap::new(),
            by_remote: HashMap::new(),
            next_conn: 0,
            first_token: 0,
            queued: Vec::new(),
            dropped: 0,
            refused: 0,
        })
    }

    /// The addresses to put in passive TCP host candidates.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, a)| *a).collect()
    }

    /// Registers the listeners with tokens from `first_token`; connections get tokens from
    /// `first_token + 65536`.
    pub fn register(&mut self, registry: &Registry, first_token: usize) -> io::Result<()> {
        self.first_token = first_token;
        for (i, (l, _)) in self.listeners.iter_mut().enumerate() {
            registry.register(l, Token(first_token + i), Interest::READABLE)?;
        }
        Ok(())
    }

    /// Whether `token` is one of this set's.
    pub fn owns(&self, token: Token) -> bool {
        token.0.checked_sub(self.first_token).is_some_and(|i| i < self.listeners.len() || i >= CONN_OFFSET)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Packets dropped (full backlog, no connection) and connections refused or closed for misbehaving.
    pub fn dropped(&self) -> (u64, u64) {
        (self.dropped, self.refused)
    }

    /// Handles readiness of `token`: accepts on a listener, writes and reads on a connection. The whole frames
    /// read are appended to `frames`. Returns true if the connection has more to read than a turn's budget:
    /// call again next turn (readiness is reported again only once a read would block).
    pub fn ready(&mut self, registry: &Registry, token: Token, now: Instant, frames: &mut Vec<Frame>) -> bool {
        let index = token.0 - self.first_token;
        if index < CONN_OFFSET {
            self.accept(registry, index, now);
            return false;
        }
        let id = index - CONN_OFFSET;
        let Some(conn) = self.conns.get_mut(&id) else { return false };
        let state = match conn.flush() {
            Ok(()) => conn.read(id, now, frames),
            Err(_) => ReadState::Closed,
        };
        if state == ReadState::Closed || conn.update_interest(registry, token).is_err() {
            self.close(registry, id);
            return false;
        }
        state == ReadState::More
    }

    fn accept(&mut self, registry: &Registry, index: usize, now: Instant) {
        let Some((listener, local)) = self.listeners.get(index) else { return };
        let local = *local;
        loop {
            let (mut stream, remote) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "TCP accept failed");
                    return;
                }
            };
            let from_ip = self.conns.values().filter(|c| c.remote.ip() == remote.ip()).count();
            if self.conns.len() >= MAX_CONNECTIONS || from_ip >= MAX_PER_IP {
                self.refused += 1;
                tracing::debug!(%remote, "ICE-TCP connection refused: too many");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = self.next_conn;
            self.next_conn += 1;
            let token = Token(self.first_token + CONN_OFFSET + id);
            if registry.register(&mut stream, token, Interest::READABLE).is_err() {
                continue;
            }
            if let Some(old) = self.by_remote.insert(remote, id) {
                self.conns.remove(&old);
            }
            let conn = Conn {
                stream,
                local,
                remote,
                rx: Vec::new(),
                tx: Vec::new(),
                tx_at: 0,
                writable_interest: false,
                accepted: now,
                last_input: now,
                bound: false,
            };
            self.conns.insert(id, conn);
        }
    }

    /// What became of frame `conn`'s packet: a session took it (`true`) or none did. A connection whose packets
    /// no session takes before any did is closed.
    pub fn routed(&mut self, registry: &Registry, conn: usize, taken: bool) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if taken {
            c.bound = true;
        } else if !c.bound {
            self.refused += 1;
            tracing::debug!(remote = %c.remote, "ICE-TCP connection carried a packet for no session; closing");
            self.close(registry, conn);
        }
    }

    /// Queues a session's transmit on the connection of its destination, for [`TcpSet::flush`].
    pub fn send(&mut self, t: Transmit) {
        let Some(&id) = self.by_remote.get(&t.destination) else {
            self.dropped += 1;
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            self.dropped += 1;
            return;
        };
        let len = t.contents.len();
        if len > MAX_FRAME || conn.tx.len() - conn.tx_at + len + 2 > MAX_BACKLOG {
            self.dropped += 1;
            return;
        }
        // A connection with bytes left from an earlier turn waits for writability; one that was idle is
        // written at the end of this turn.
        if conn.tx.len() == conn.tx_at {
            self.queued.push(id);
        }
        conn.tx.extend_from_slice(&(len as u16).to_be_bytes());
        conn.tx.extend_from_slice(&t.contents);
    }

    /// Writes what the connections queued this turn, as far as the sockets take it; a connection left with
    /// bytes is watched for writability and written when its socket takes more.
    pub fn flush(&mut self, registry: &Registry) {
        let mut queued = std::mem::take(&mut self.queued);
        for id in queued.drain(..) {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            let token = Token(self.first_token + CONN_OFFSET + id);
            if conn.flush().is_err() || conn.update_interest(registry, token).is_err() {
                self.close(registry, id);
            }
        }
        self.queued = queued;
    }

    /// Closes connections past their handshake or idle time.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        let stale: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                (!c.bound && now.duration_since(c.accepted) >= HANDSHAKE_TIMEOUT)
                    || now.duration_since(c.last_input) >= IDLE_TIMEOUT
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close(registry, id);
        }
    }

    fn close(&mut self, registry: &Registry, id: usize) {
        if let Some(mut conn) = self.conns.remove(&id) {
            let _ = registry.deregister(&mut conn.stream);
            if self.by_remote.get(&conn.remote) == Some(&id) {
                self.by_remote.remove(&conn.remote);
            }
        }
    }
}

/// Where reading a connection left it.
#[derive(Debug, PartialEq, Eq)]
enum ReadState {
    /// Read until the socket would block.
    Drained,
    /// A turn's budget of frames read; more may wait.
    More,
    /// Closed by the peer, an error, or a frame no peer of ours sends.
    Closed,
}

impl Conn {
    /// Reads what the socket has, up to a turn's budget of frames.
    fn read(&mut self, id: usize, now: Instant, frames: &mut Vec<Frame>) -> ReadState {
        let mut buf = [0u8; 8192];
        let mut taken = 0;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return ReadState::Closed,
                Ok(n) => {
                    self.last_input = now;
                    self.rx.extend_from_slice(&buf[..n]);
                    // Whole frames out of the buffer.
                    let mut at = 0;
                    while self.rx.len() - at >= 2 {
                        let len = u16::from_be_bytes([self.rx[at], self.rx[at + 1]]) as usize;
                        if len == 0 || len > MAX_FRAME {
                            return ReadState::Closed;
                        }
                        if self.rx.len() - at < 2 + len {
                            break;
                        }
                        let data = self.rx[at + 2..at + 2 + len].to_vec();
                        frames.push(Frame { conn: id, source: self.remote, destination: self.local, data });
                        at += 2 + len;
                        taken += 1;
                    }
                    self.rx.drain(..at);
                    if taken >= FRAME_BUDGET {
                        return ReadState::More;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadState::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadState::Closed,
            }
        }
    }

    /// Writes queued bytes until the socket would block.
    fn flush(&mut self) -> io::Result<()> {
        while self.tx_at < self.tx.len() {
            match self.stream.write(&self.tx[self.tx_at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.tx_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.tx_at == self.tx.len() {
            self.tx.clear();
            self.tx_at = 0;
        } else if self.tx_at > MAX_BACKLOG {
            self.tx.drain(..self.tx_at);
            self.tx_at = 0;
        }
        Ok(())
    }

    /// Watches for writability while bytes wait, and only then.
    fn update_interest(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let want = self.tx_at < self.tx.len();
        if want != self.writable_interest {
            let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            registry.reregister(&mut self.stream, token, interest)?;
            self.writable_interest = want;
        }
        Ok(())
    }
}
