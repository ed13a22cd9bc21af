//! Plumbing every media process needs: the run loop, the control inbox, termination signals, and the feed of
//! the process's status to its subscribers.
//!
//! # Subscriptions
//! Signaling subscribes to each media process (see [`shm_proto::control`]'s module docs) and is told its
//! status and rooms whenever they change. The loop does this for every [`Core`] alike: after each turn, while
//! anyone subscribes, it looks at [`Core::status_snapshot`] when a control request was handled, when the
//! session count changed, or [`STATUS_CHECK`] after it last looked (for what changes with packets and time: a
//! publisher going live, the slate starting, a room expiring). It compares the snapshot with the last one sent
//! and publishes a new [`Update`] when the status or the rooms changed, except for the rooms' bitrates, a
//! change of which alone is sent at most once per [`BITRATE_UPDATE`]. Without subscribers a turn costs one
//! atomic load. The update is left in [`Updates`] for the connection threads to write; the loop never waits
//! for a subscriber.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry, Token, Waker};
use nix::sys::signal::{SigSet, Signal};
use shm_proto::control::{
    self, ErrorKind, ProcessMetrics, ProcessStatus, Request, Response, RoomStatus, Update, Updates,
};
use str0m::net::{Protocol, Transmit};
use str0m::{Candidate, Event};

use crate::host::{Routed, SessionHost, SessionKey};
use crate::net::{RecvBatch, UdpSet, RECV_BATCH};
use crate::outbox::{self, Outbox};
use crate::tcp::TcpSet;

/// How long a control connection waits for the media loop to answer.
const LOOP_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A request from signaling waiting for the media loop, with the way back.
pub struct Call {
    pub request: Request,
    pub reply: Reply,
}

/// The way back to the control connection that made a [`Call`].
pub struct Reply(SyncSender<Response>);

impl Reply {
    pub fn send(self, response: Response) {
        // The control thread may have given up waiting; then nobody wants the answer.
        let _ = self.0.send(response);
    }
}

/// Requests from the control socket, delivered into the media loop, which `waker` wakes; and the updates the
/// loop leaves for the socket's subscriptions.
pub struct Inbox {
    rx: Receiver<Call>,
    updates: Arc<Updates>,
}

impl Inbox {
    /// Binds the control socket at `path` and serves it from background threads.
    pub fn start(path: &Path, waker: Arc<Waker>) -> Result<Inbox, control::BindError> {
        let listener = control::bind(path)?;
        let (tx, rx) = mpsc::sync_channel::<Call>(256);
        let wake_for_subscriber = waker.clone();
        let updates = Arc::new(Updates::new(move || {
            let _ = wake_for_subscriber.wake();
        }));
        let handler = move |request| {
            let (reply, answer) = mpsc::sync_channel(1);
            if tx.send(Call { request, reply: Reply(reply) }).is_err() {
                return Response::Error { kind: ErrorKind::Unavailable, message: "process is stopping".into() };
            }
            let _ = waker.wake();
            answer.recv_timeout(LOOP_ANSWER_TIMEOUT).unwrap_or_else(|_| Response::Error {
                kind: ErrorKind::Internal,
                message: "media loop did not answer in time".into(),
            })
        };
        control::serve_with_updates(listener, handler, Some(updates.clone()));
        Ok(Inbox { rx, updates })
    }

    /// Where the loop leaves updates for the subscriptions.
    pub fn updates(&self) -> Arc<Updates> {
        self.updates.clone()
    }

    /// The calls waiting now.
    pub fn drain(&self) -> impl Iterator<Item = Call> + '_ {
        self.rx.try_iter()
    }
}

/// Blocks SIGTERM and SIGINT in this thread (call before spawning others, so they inherit the mask) and
/// waits for them in a thread of their own, which sets `stop` and wakes the loop.
pub fn on_termination(waker: Arc<Waker>) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if let Err(e) = set.thread_block() {
        tracing::warn!(error = %e, "cannot block termination signals");
    }
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                tracing::info!(signal = %sig, "stopping");
            }
            flag.store(true, Ordering::Release);
            let _ = waker.wake();
        })
        .expect("spawning a thread at startup succeeds");
    stop
}

fn metrics(core: &impl Core, udp: &UdpSet, tcp: Option<&TcpSet>) -> ProcessMetrics {
    let (cpu_ms, rss_bytes) = deadsfu_runtime::process::own_usage();
    let net = udp.counters();
    let mut m = ProcessMetrics {
        cpu_ms,
        rss_bytes,
        datagrams_in: net.datagrams_in,
        bytes_in: net.bytes_in,
        datagrams_out: net.datagrams_out,
        bytes_out: net.bytes_out,
        send_dropped: udp.dropped(),
        ..Default::default()
    };
    core.metrics(&mut m);
    if let Some(tcp) = tcp {
        let (dropped, refused) = tcp.dropped();
        m.send_dropped += dropped;
        m.tcp_connections = tcp.connections() as u32;
        m.refused.push(("tcp_connections".into(), refused));
    }
    m
}

/// A media process's core, as its loop drives it. Implementations do no I/O of their own.
///
/// Both media processes hold their sessions in a [`SessionHost`]; what every core does with it (routing
/// datagrams, draining on shutdown, counting sessions) is written here once.
pub trait Core {
    /// The application's state per session.
    type App;
    /// The session table.
    fn host(&self) -> &SessionHost<Self::App>;
    /// The session table and the queue its sessions' events go to.
    fn host_and_events(&mut self) -> (&mut SessionHost<Self::App>, &mut Vec<(SessionKey, Event)>);
    /// Ends one session the way the core ends any (DELETE, silence): detach it, say goodbye.
    fn end_session(&mut self, key: SessionKey);
    /// Take no new sessions from now on.
    fn stop_accepting(&mut self);
    /// A control request from signaling.
    fn handle_request(&mut self, now: Instant, request: Request) -> Response;
    /// The turn's work: drive sessions, move media; datagrams to send go to `out`.
    fn poll(&mut self, now: Instant, out: &mut dyn Outbox);
    /// When the loop must turn again at the latest, if ever.
    fn next_timeout(&mut self, now: Instant) -> Option<Instant>;
    /// True if the loop must turn again at once.
    fn has_work(&self) -> bool;
    /// How long the loop may gather input before turning again, for a core with nothing urgent to do: its
    /// turns then start at most this often, each handling what arrived meanwhile in one batch.
    fn coalesce(&self, _now: Instant) -> Option<Duration> {
        None
    }

    /// How long what peers send may wait to be read, for a core whose turns come often anyway (media to send):
    /// then the loop does not wake for a peer's datagram but reads its UDP sockets on each turn, after the core's
    /// poll so that the turn's media is not held up by them (the core sends its media with [`Outbox::flush`] as
    /// soon as it is written, else the last of it waits in the sockets' queue until the turn's end), and turns at
    /// least this often. `None`: every datagram wakes the loop, and a turn reads before it polls.
    fn defer_input(&self, _now: Instant) -> Option<Duration> {
        None
    }

    /// A packet that arrived over `proto` on `destination` from `source`; what the session answers at once goes
    /// to `out`.
    fn handle_packet(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        buf: &[u8],
        out: &mut dyn Outbox,
    ) -> Routed {
        let (host, events) = self.host_and_events();
        host.handle_packet(now, proto, source, destination, buf, &mut |t| out.transmit(t), events)
    }

    /// The process is stopping: take no new sessions and say goodbye to every peer.
    fn shutdown(&mut self, _now: Instant) {
        self.stop_accepting();
        let keys: Vec<SessionKey> = self.host().keys().collect();
        tracing::info!(sessions = keys.len(), "stopping: closing every session");
        for key in keys {
            self.end_session(key);
        }
    }

    /// True once every session is gone.
    fn is_drained(&self) -> bool {
        self.host().is_empty()
    }

    /// Adds what the core counts to `m`; the loop fills in the rest.
    fn metrics(&self, m: &mut ProcessMetrics) {
        m.sessions = self.host().len() as u32;
    }

    /// The process's status and rooms, as [`Request::Status`] and [`Request::Rooms`] answer them; what its
    /// subscribers are told (see the module docs).
    fn status_snapshot(&self, now: Instant) -> (ProcessStatus, Vec<RoomStatus>);
}

/// While anyone subscribes, how often the loop looks at its status for changes that no control request and no
/// session coming or going brought.
pub const STATUS_CHECK: Duration = Duration::from_millis(50);
/// A change of the rooms' bitrates alone is sent at most this often.
pub const BITRATE_UPDATE: Duration = Duration::from_secs(1);

/// The loop's side of the subscriptions: what it sent last, and when it looks again.
pub struct StatusFeed {
    updates: Arc<Updates>,
    seq: u64,
    sent: Option<(ProcessStatus, Vec<RoomStatus>)>,
    /// The session count when the loop looked last.
    sessions: usize,
    next_check: Instant,
    next_bitrate: Instant,
}

impl StatusFeed {
    pub fn new(updates: Arc<Updates>, now: Instant) -> StatusFeed {
        StatusFeed { updates, seq: 0, sent: None, sessions: 0, next_check: now, next_bitrate: now }
    }

    /// After a loop turn (in which `requests` control requests were handled): publishes an update if the
    /// core's status or rooms changed, or a subscriber waits for its first.
    pub fn turn(&mut self, core: &impl Core, now: Instant, requests: bool) {
        if self.updates.subscribers() == 0 {
            return;
        }
        let wanted = self.updates.take_wanted();
        let sessions = core.host().len();
        if !wanted && !requests && sessions == self.sessions && now < self.next_check {
            return;
        }
        self.sessions = sessions;
        self.next_check = now + STATUS_CHECK;
        let (status, mut rooms) = core.status_snapshot(now);
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        let (changed, bitrate) = match &self.sent {
            None => (true, false),
            Some((sent_status, sent_rooms)) => {
                let changed = *sent_status != status || !same_but_bitrate(sent_rooms, &rooms);
                (changed, !changed && *sent_rooms != rooms)
            }
        };
        if changed || (bitrate && now >= self.next_bitrate) {
            self.seq += 1;
            self.next_bitrate = now + BITRATE_UPDATE;
            self.sent = Some((status.clone(), rooms.clone()));
        } else if !wanted {
            return;
        }
        self.updates.publish(Update { seq: self.seq, status, rooms });
    }
}

/// Whether two room lists differ at most in their bitrates.
fn same_but_bitrate(a: &[RoomStatus], b: &[RoomStatus]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| RoomStatus { bitrate_bps: b.bitrate_bps, ..a.clone() } == *b)
}

/// The errors that stop a media process at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare runtime directory {0}: {1}")]
    RuntimeDir(String, std::io::Error),
    #[error("cannot bind UDP port {port} ({setting}): {source}{}", in_use_hint(source))]
    Udp { port: u16, setting: String, source: std::io::Error },
    #[error("cannot listen on TCP port {port} for ICE over TCP ({setting}, ice_tcp): {source}{}", in_use_hint(source))]
    Tcp { port: u16, setting: String, source: std::io::Error },
    #[error("control socket: {0}")]
    Control(#[from] control::BindError),
    #[error("event loop: {0}")]
    Poll(std::io::Error),
}

/// What to do about a port in use: say so where the error is the port being taken.
fn in_use_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        "; another deadsfu or another program holds it (instances on one host need their own ports and runtime \
         directory)"
    } else {
        ""
    }
}

const WAKER: Token = Token(0);
/// The worker's wake-up socket (see [`crate::wake`]).
const WAKE_SOCKET: Token = Token(usize::MAX);
const FIRST_UDP: usize = 1;
/// ICE-TCP listeners and connections take tokens from here (see [`TcpSet::register`]).
const FIRST_TCP: usize = 1 << 20;
/// The longest the loop sleeps when nothing is due.
const IDLE_TURN: Duration = Duration::from_millis(100);
/// After SIGTERM, how long the loop keeps turning for goodbyes to go out.
const DRAIN: Duration = Duration::from_secs(1);

/// Where a media process listens.
pub struct Endpoints<'a> {
    /// The process's name in logs (`ingest`, `fanout-0`, ...).
    pub name: String,
    pub runtime_dir: &'a Path,
    pub udp_port: u16,
    /// The setting `udp_port` comes from, as errors name it (`ingest_port, --ingest-port`).
    pub udp_port_setting: String,
    pub advertise: Option<IpAddr>,
    /// Also listen for ICE over TCP, on the UDP port's number (see [`crate::tcp`]).
    pub ice_tcp: bool,
    pub control_socket: PathBuf,
    /// Where to receive wake-ups from ingest (fanout workers); each one turns the loop.
    pub wake_socket: Option<PathBuf>,
}

/// A process's outbox: its UDP sockets, and its ICE-TCP connections for a datagram over TCP (`registry`: where
/// a connection left with bytes to write asks to hear when it can).
struct Sockets<'a> {
    udp: &'a mut UdpSet,
    tcp: &'a mut Option<TcpSet>,
    registry: &'a Registry,
}

impl Outbox for Sockets<'_> {
    fn transmit(&mut self, t: Transmit) {
        match (t.proto, &mut self.tcp) {
            (Protocol::Tcp, Some(tcp)) => tcp.send(t),
            (Protocol::Tcp, None) => {}
            _ => self.udp.send(t),
        }
    }

    fn write(&mut self, write: &mut dyn FnMut(&mut Vec<u8>) -> Option<outbox::Path>) {
        if let (Some(t), Some(tcp)) = (self.udp.write(write), &mut self.tcp) {
            tcp.send(t);
        }
    }

    fn flush(&mut self) {
        self.udp.flush();
        if let Some(tcp) = self.tcp {
            tcp.flush(self.registry);
        }
    }
}

/// Datagrams read from one socket in a loop turn, [`RECV_BATCH`] per system call. A flood of datagrams
/// (hostile or not) is then read in batches between which the loop answers control requests, polls the
/// sessions and pings the watchdog; the kernel drops what the socket buffer cannot hold.
const DATAGRAM_BUDGET: usize = 256;

/// True if the loop must turn again at once: the core has work, or sockets were left with datagrams to read.
fn must_turn<C: Core>(core: &C, unfinished: &[usize], tcp_unfinished: &[Token]) -> bool {
    core.has_work() || !unfinished.is_empty() || !tcp_unfinished.is_empty()
}

/// Reads the sockets in `ready`, at most [`DATAGRAM_BUDGET`] datagrams each, and hands every datagram to the
/// core; a socket left with datagrams goes to `unfinished`.
fn read_udp<C: Core>(
    core: &mut C,
    out: &mut Sockets<'_>,
    batch: &mut RecvBatch,
    ready: &mut Vec<usize>,
    unfinished: &mut Vec<usize>,
) {
    for index in ready.drain(..) {
        let mut dry = false;
        for _ in 0..DATAGRAM_BUDGET / RECV_BATCH {
            let n = match out.udp.recv_batch(index, batch) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "recv failed");
                    0
                }
            };
            let now = Instant::now();
            for (datagram, source, dest) in batch.iter() {
                core.handle_packet(now, Protocol::Udp, source, dest, datagram, out);
            }
            // Fewer than a batch: the kernel had no more (the socket is reported again when more come).
            if n < RECV_BATCH {
                dry = true;
                break;
            }
        }
        if !dry {
            unfinished.push(index);
        }
    }
}

/// Binds the process's sockets, builds its core from its ICE host candidates (UDP, and passive TCP with
/// `ice_tcp`) and a waker (which turns the loop at once, for threads that feed the core), and runs it until
/// SIGTERM or SIGINT.
pub fn run<C: Core>(
    endpoints: Endpoints<'_>,
    make: impl FnOnce(Vec<Candidate>, Arc<Waker>, Instant) -> C,
) -> Result<(), StartError> {
    let dir = endpoints.runtime_dir;
    shm_proto::paths::prepare(dir).map_err(|e| StartError::RuntimeDir(dir.display().to_string(), e))?;
    let mut poll = Poll::new().map_err(StartError::Poll)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(StartError::Poll)?);
    let stop = on_termination(waker.clone());
    let port = endpoints.udp_port;
    let mut udp = UdpSet::bind(port, endpoints.advertise).map_err(|source| StartError::Udp {
        port,
        setting: endpoints.udp_port_setting.clone(),
        source,
    })?;
    udp.register(poll.registry(), FIRST_UDP).map_err(StartError::Poll)?;
    let mut tcp = if endpoints.ice_tcp {
        let ips: Vec<IpAddr> = udp.candidates().iter().map(|a| a.ip()).collect();
        let mut tcp = TcpSet::bind(port, &ips, endpoints.advertise).map_err(|source| StartError::Tcp {
            port,
            setting: endpoints.udp_port_setting.clone(),
            source,
        })?;
        tcp.register(poll.registry(), FIRST_TCP).map_err(StartError::Poll)?;
        Some(tcp)
    } else {
        None
    };
    let mut candidates = crate::offer::host_candidates(&udp.candidates(), Protocol::Udp);
    if let Some(tcp) = &tcp {
        candidates.extend(crate::offer::host_candidates(&tcp.candidates(), Protocol::Tcp));
    }
    let wake_socket = match &endpoints.wake_socket {
        Some(path) => {
            let mut socket = crate::wake::bind(path).map_err(StartError::Poll)?;
            poll.registry().register(&mut socket, WAKE_SOCKET, mio::Interest::READABLE).map_err(StartError::Poll)?;
            Some(socket)
        }
        None => None,
    };
    let shown: Vec<String> = candidates.iter().map(|c| format!("{} {}", c.proto(), c.addr())).collect();
    let mut core = make(candidates, waker.clone(), Instant::now());
    let inbox = Inbox::start(&endpoints.control_socket, waker)?;
    let mut feed = StatusFeed::new(inbox.updates(), Instant::now());
    tracing::info!(process = %endpoints.name, port = udp.port(), candidates = ?shown, control = %endpoints.control_socket.display(), "ready");

    deadsfu_runtime::service::ready();
    let mut watchdog = deadsfu_runtime::service::Watchdog::from_env(Instant::now());

    let mut events = Events::with_capacity(64);
    let mut batch = RecvBatch::default();
    let mut drain_until: Option<Instant> = None;
    // Sockets left with datagrams to read when a turn's budget ran out (mio reports a socket again only
    // once it was read dry), and the ones to read this turn.
    let mut unfinished: Vec<usize> = Vec::new();
    let mut ready: Vec<usize> = Vec::new();
    // The same for ICE-TCP connections, and the frames read from them this turn.
    let mut tcp_unfinished: Vec<Token> = Vec::new();
    let mut tcp_ready: Vec<Token> = Vec::new();
    let mut frames: Vec<crate::tcp::Frame> = Vec::new();
    let mut next_expiry = Instant::now();
    let mut turn_start = Instant::now();
    // While the core defers input (`Core::defer_input`), the UDP sockets are registered with `input_poll`, which
    // is looked at on every turn and never waited on, rather than with `poll`; the loop turns again by
    // `input_due` at the latest.
    let mut deferring: Option<Duration> = None;
    let mut input_due = Instant::now();
    let mut input_poll = Poll::new().map_err(StartError::Poll)?;
    let mut input_events = Events::with_capacity(8);
    loop {
        let mut now = Instant::now();
        // A quiet core's turns start at most every `gather`: what arrives meanwhile (datagrams, control
        // requests, wake-ups) waits in the kernel and is read in one turn.
        if let Some(gather) = core.coalesce(now) {
            let since = now.saturating_duration_since(turn_start);
            if since < gather && !must_turn(&core, &unfinished, &tcp_unfinished) {
                std::thread::sleep(gather - since);
                now = Instant::now();
            }
        }
        turn_start = now;
        if drain_until.is_none() && stop.load(Ordering::Acquire) {
            deadsfu_runtime::service::stopping();
            core.shutdown(now);
            drain_until = Some(now + DRAIN);
        }
        if drain_until.is_some_and(|t| now >= t || core.is_drained()) {
            break;
        }
        watchdog.tick(now);
        let defer = core.defer_input(now);
        if defer.is_some() != deferring.is_some() {
            // Registered anew, a socket with datagrams waiting is reported at once.
            let (from, to) = match defer {
                Some(_) => (&poll, &input_poll),
                None => (&input_poll, &poll),
            };
            udp.deregister(from.registry())
                .and_then(|()| udp.register(to.registry(), FIRST_UDP))
                .map_err(StartError::Poll)?;
            if deferring.is_none() {
                input_due = now + defer.unwrap_or_default();
            }
        }
        deferring = defer;
        let timeout = if must_turn(&core, &unfinished, &tcp_unfinished) {
            Duration::ZERO
        } else {
            let input = deferring.map(|_| input_due);
            let due = [core.next_timeout(now), watchdog.deadline(), input].into_iter().flatten().min();
            due.map_or(IDLE_TURN, |t| t.saturating_duration_since(now).min(IDLE_TURN))
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(StartError::Poll(e));
            }
        }
        ready.append(&mut unfinished);
        tcp_ready.append(&mut tcp_unfinished);
        if let Some(wait) = deferring {
            // What came meanwhile is read on this turn: one look, without waiting, at which sockets have any.
            if let Err(e) = input_poll.poll(&mut input_events, Some(Duration::ZERO)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(StartError::Poll(e));
                }
            }
            for event in input_events.iter() {
                if let Some(index) = udp.index_of(event.token()).filter(|i| !ready.contains(i)) {
                    ready.push(index);
                }
            }
            input_due = Instant::now() + wait;
        }
        for event in events.iter() {
            if event.token() == WAKE_SOCKET {
                if let Some(socket) = &wake_socket {
                    crate::wake::drain(socket);
                }
                continue;
            }
            if let Some(index) = udp.index_of(event.token()) {
                if !ready.contains(&index) {
                    ready.push(index);
                }
            } else if tcp.as_ref().is_some_and(|t| t.owns(event.token())) && !tcp_ready.contains(&event.token()) {
                tcp_ready.push(event.token());
            }
        }
        // While the core defers input, its media goes first: what peers sent is read after the core's poll (see
        // `Core::defer_input`).
        let media_first = deferring.is_some();
        if !media_first {
            let out = &mut Sockets { udp: &mut udp, tcp: &mut tcp, registry: poll.registry() };
            read_udp(&mut core, out, &mut batch, &mut ready, &mut unfinished);
        }
        if let Some(set) = &mut tcp {
            let now = Instant::now();
            for token in tcp_ready.drain(..) {
                if set.ready(poll.registry(), token, now, &mut frames) {
                    tcp_unfinished.push(token);
                }
            }
            if now >= next_expiry {
                set.expire(poll.registry(), now);
                next_expiry = now + Duration::from_secs(1);
            }
        }
        for frame in frames.drain(..) {
            let out = &mut Sockets { udp: &mut udp, tcp: &mut tcp, registry: poll.registry() };
            let (source, dest) = (frame.source, frame.destination);
            let routed = core.handle_packet(Instant::now(), Protocol::Tcp, source, dest, &frame.data, out);
            if let Some(set) = &mut tcp {
                set.routed(poll.registry(), frame.conn, routed != Routed::Dropped);
            }
        }
        let now = Instant::now();
        let mut requests = false;
        for call in inbox.drain() {
            requests = true;
            let response = match call.request {
                Request::Metrics => Response::Metrics { metrics: Box::new(metrics(&core, &udp, tcp.as_ref())) },
                request => core.handle_request(now, request),
            };
            call.reply.send(response);
        }
        core.poll(now, &mut Sockets { udp: &mut udp, tcp: &mut tcp, registry: poll.registry() });
        if media_first {
            let out = &mut Sockets { udp: &mut udp, tcp: &mut tcp, registry: poll.registry() };
            read_udp(&mut core, out, &mut batch, &mut ready, &mut unfinished);
        }
        feed.turn(&core, now, requests);
        udp.flush();
        if let Some(set) = &mut tcp {
            set.flush(poll.registry());
        }
    }
    if let Some(path) = &endpoints.wake_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use shm_proto::control::Role;
    use shm_proto::RoomName;

    use super::*;

    /// A core whose status and rooms the test sets, counting the snapshots the feed takes.
    struct Fake {
        host: SessionHost<()>,
        events: Vec<(SessionKey, Event)>,
        accepting: bool,
        rooms: Vec<RoomStatus>,
        snapshots: Cell<u32>,
    }

    impl Core for Fake {
        type App = ();
        fn host(&self) -> &SessionHost<()> {
            &self.host
        }
        fn host_and_events(&mut self) -> (&mut SessionHost<()>, &mut Vec<(SessionKey, Event)>) {
            (&mut self.host, &mut self.events)
        }
        fn end_session(&mut self, _key: SessionKey) {}
        fn stop_accepting(&mut self) {
            self.accepting = false;
        }
        fn handle_request(&mut self, _now: Instant, _request: Request) -> Response {
            Response::Done
        }
        fn poll(&mut self, _now: Instant, _out: &mut dyn Outbox) {}
        fn next_timeout(&mut self, _now: Instant) -> Option<Instant> {
            None
        }
        fn has_work(&self) -> bool {
            false
        }
        fn status_snapshot(&self, _now: Instant) -> (ProcessStatus, Vec<RoomStatus>) {
            self.snapshots.set(self.snapshots.get() + 1);
            let status = ProcessStatus { role: Role::Ingest, index: 0, pid: 1, sessions: 0, accepting: self.accepting };
            (status, self.rooms.clone())
        }
    }

    fn room(name: &str, bitrate_bps: u64) -> RoomStatus {
        RoomStatus { live: true, bitrate_bps, ..RoomStatus::new(RoomName::new(name).unwrap()) }
    }

    #[test]
    fn the_feed_publishes_changes_and_holds_back_bitrate_alone() {
        let updates = Arc::new(Updates::new(|| {}));
        let t0 = Instant::now();
        let mut feed = StatusFeed::new(updates.clone(), t0);
        let mut core = Fake {
            host: SessionHost::new(),
            events: Vec::new(),
            accepting: true,
            rooms: vec![room("b", 1000), room("a", 0)],
            snapshots: Cell::new(0),
        };
        // Nobody subscribes: the core is not even asked.
        feed.turn(&core, t0, true);
        assert_eq!(core.snapshots.get(), 0);

        let mut subscriber = updates.join().unwrap();
        feed.turn(&core, t0, false);
        let first = subscriber.next(Duration::ZERO).expect("the first update");
        assert_eq!(first.seq, 1);
        let names: Vec<&str> = first.rooms.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "in name order, so a reordered map is no change");

        // Turns without a request, a session or the check due do not look at the core.
        let t = t0 + STATUS_CHECK / 2;
        feed.turn(&core, t, false);
        assert_eq!(core.snapshots.get(), 1);
        // A look that finds nothing new (the rooms in another order) sends nothing.
        core.rooms.reverse();
        feed.turn(&core, t, true);
        assert_eq!(core.snapshots.get(), 2);
        assert!(subscriber.next(Duration::ZERO).is_none());

        // A bitrate alone waits for BITRATE_UPDATE after the last update.
        core.rooms.iter_mut().find(|r| r.name.as_str() == "b").unwrap().bitrate_bps = 2000;
        let t = t + STATUS_CHECK;
        feed.turn(&core, t, false);
        assert_eq!(core.snapshots.get(), 3, "the periodic look");
        assert!(subscriber.next(Duration::ZERO).is_none());
        let t = t0 + BITRATE_UPDATE;
        feed.turn(&core, t, false);
        let bitrate = subscriber.next(Duration::ZERO).expect("the bitrate, a second later");
        assert_eq!((bitrate.seq, bitrate.rooms[1].bitrate_bps), (2, 2000));

        // Anything else goes out at the next look.
        core.stop_accepting();
        feed.turn(&core, t, true);
        let stopping = subscriber.next(Duration::ZERO).expect("the status change at once");
        assert_eq!((stopping.seq, stopping.status.accepting), (3, false));

        // A new subscriber gets the state at once, under the same seq, which the first does not get twice.
        let mut second = updates.join().unwrap();
        feed.turn(&core, t, false);
        assert_eq!(second.next(Duration::ZERO).map(|u| u.seq), Some(3));
        assert!(subscriber.next(Duration::ZERO).is_none());
    }
}
