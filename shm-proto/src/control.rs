//! The control protocol between signaling and the media processes.
//!
//! Signaling is always the client. Each media process (ingest, fanout worker `k`) listens on a Unix stream
//! socket in the runtime directory (see [`crate::paths`]). A connection carries any number of request/response
//! pairs, strictly alternating; signaling opens one connection per HTTP request, so a restart of either side
//! loses nothing but the calls in flight.
//!
//! # Framing
//! ```text
//!  0        2        4                 8
//!  +--------+--------+-----------------+------------------------------+
//!  | MAGIC  | VERSION|  BODY_LEN (u32) |  BODY: JSON, BODY_LEN bytes  |
//!  +--------+--------+-----------------+------------------------------+
//!  all integers little-endian
//! ```
//! The body is a JSON [`Envelope`]: a request id chosen by the client and echoed by the server, and the
//! message. `BODY_LEN` is checked against [`MAX_BODY`] before anything is allocated. A frame with another
//! magic, another version, an oversized or truncated body, or a body that is not a valid message is an error
//! for that connection only: the server answers nothing and drops the connection.
//!
//! # Messages
//! A [`Request`] is one of the calls every media process answers (`status`, `check`, `close`, `rooms`,
//! `metrics`), or a call for one role: `{"type": "ingest", "op": "publish" | "watch", ...}`
//! ([`IngestRequest`]) or `{"type": "fanout", "op": "view" | "switch", ...}` ([`FanoutRequest`]). Room names
//! ([`RoomName`]) and session ids ([`SessionId`]) are strings on the wire and are checked as the body is
//! decoded: a request naming an invalid room or a malformed session is not a valid message.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{RoomName, SessionId};

/// First two bytes of every frame.
pub const MAGIC: u16 = 0xD5F0;
/// Version of the framing and of the message set. A peer speaking another version is refused.
///
/// 2: requests for one role grouped under `ingest` and `fanout`; room names and session ids checked on
/// decoding.
/// 3: `subscribe` and its stream of `update`s.
pub const VERSION: u16 = 3;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// Largest body accepted. SDP offers from browsers are 5-15 KiB; this leaves ample room.
pub const MAX_BODY: usize = 256 * 1024;

/// A server drops a connection that sends nothing for this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Subscriptions a process serves at once: signaling takes one; the rest leave room for a signaling that
/// restarts before the process noticed the old one's connection close, and for tools.
pub const MAX_SUBSCRIBERS: usize = 4;
/// While no update comes, how often a subscription's connection thread checks that its client is still there.
const SUBSCRIBER_CHECK: Duration = Duration::from_secs(1);

/// Which process answers on a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Ingest,
    Fanout,
}

/// A call from signaling to a media process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Who are you and how loaded are you.
    Status,
    /// End a session made by `Publish` or `View`.
    Close { session: SessionId },
    /// Does this process hold `session`? `Done` if it does.
    Check { session: SessionId },
    /// The rooms this process knows, with what it knows of them.
    Rooms,
    /// Counters and gauges of this process, for `GET /metrics`.
    Metrics,
    /// Turn this connection into a stream of [`Response::Update`]s (see the module docs).
    Subscribe,
    /// A call only ingest answers.
    Ingest(IngestRequest),
    /// A call only fanout workers answer.
    Fanout(FanoutRequest),
}

/// A call for ingest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum IngestRequest {
    /// A publisher's SDP offer for `room`.
    Publish { room: RoomName, offer: String },
    /// A viewer is about to watch `room`: make sure its ring exists, so the slate can play before any
    /// publisher arrives.
    Watch { room: RoomName },
}

/// A call for a fanout worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FanoutRequest {
    /// A viewer's SDP offer for `room`.
    View { room: RoomName, offer: String },
    /// Move a viewer to another room without renegotiation.
    Switch { session: SessionId, room: RoomName },
    /// The ring a viewer reads: its room's, or one of its layers' (`ROOM~RID`). Answered with [`Response::Room`].
    Where { session: SessionId },
}

impl From<IngestRequest> for Request {
    fn from(request: IngestRequest) -> Request {
        Request::Ingest(request)
    }
}

impl From<FanoutRequest> for Request {
    fn from(request: FanoutRequest) -> Request {
        Request::Fanout(request)
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Status(ProcessStatus),
    /// The SDP answer and the id of the new session.
    Answer {
        session: SessionId,
        answer: String,
    },
    Closed,
    /// The request was carried out.
    Done,
    Rooms {
        rooms: Vec<RoomStatus>,
    },
    /// The ring a viewer reads ([`FanoutRequest::Where`]).
    Room {
        room: RoomName,
    },
    Metrics {
        /// Boxed: the counters outweigh every other response.
        metrics: Box<ProcessMetrics>,
    },
    /// On a subscribed connection: the process's status and rooms as they are now.
    Update(Update),
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// What a subscription is told: a process's status and rooms (as [`Request::Status`] and [`Request::Rooms`]
/// would answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// Goes up by one with each change the process sends; the first update a subscriber gets may repeat the
    /// number of one another subscriber got before.
    pub seq: u64,
    pub status: ProcessStatus,
    pub rooms: Vec<RoomStatus>,
}

/// What a media process counts about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMetrics {
    pub sessions: u32,
    /// User plus system CPU time since the process started, in milliseconds.
    pub cpu_ms: u64,
    pub rss_bytes: u64,
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// Datagrams the kernel would not take (socket buffer full).
    pub send_dropped: u64,
    /// Ingest: keyframe requests (PLI) sent to publishers.
    pub keyframe_requests_sent: u64,
    /// Ingest: times a room's ring moved from one simulcast layer of its publisher to another.
    #[serde(default)]
    pub layer_moves: u64,
    /// Ingest: the rings it writes.
    pub rings: Vec<RingMetrics>,
    /// Ingest on an edge: its pulls from the upstream.
    #[serde(default)]
    pub upstream: Vec<UpstreamMetrics>,
    /// Fanout: RTP packets written to viewers live from the rings.
    #[serde(default)]
    pub viewer_packets_live: u64,
    /// Fanout: RTP packets replayed to joining viewers from the rooms' cached GOPs.
    #[serde(default)]
    pub viewer_packets_replayed: u64,
    /// Fanout: RTP packets resent to viewers on their NACKs.
    #[serde(default)]
    pub viewer_packets_resent: u64,
    /// Fanout: times a room's live feed fell too far behind its ring (short of CPU) and skipped ahead.
    #[serde(default)]
    pub lag_skips: u64,
    /// Fanout: bandwidth estimates its viewers' sessions gave (the start value, then an update at most every
    /// 100 ms while transport-wide feedback comes; `bandwidth_estimation`).
    #[serde(default)]
    pub viewer_estimates: u64,
    /// Fanout: viewers on Auto moved from one simulcast layer of their room to another by their estimates.
    #[serde(default)]
    pub viewer_layer_moves: u64,
    /// Requests refused at a limit since start, by limit (`rooms`, `sessions`, `pending_sessions`, ...).
    #[serde(default)]
    pub refused: Vec<(String, u64)>,
    /// ICE-over-TCP connections open.
    #[serde(default)]
    pub tcp_connections: u32,
}

/// The counters of one room's ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMetrics {
    pub room: RoomName,
    pub head: u64,
    pub epoch: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Times a reader was lapped.
    pub laps: u64,
    /// Keyframe requests readers left in the ring.
    pub keyframe_requests: u64,
}

/// One room as one process sees it; signaling merges the views of all processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStatus {
    pub name: RoomName,
    /// Ingest: a publisher is sending live video.
    pub live: bool,
    /// Ingest: the slate is playing.
    pub slate: bool,
    /// Ingest: codec names of the live publisher (`H264`, `opus`, ...).
    pub codecs: Vec<String>,
    /// Ingest: bits per second written into the ring over the last few seconds.
    pub bitrate_bps: u64,
    /// Fanout: viewers of the room on this worker.
    pub viewers: u32,
    /// Ingest on an edge: the pull of this room from the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamStatus>,
    /// Ingest: a simulcast publisher's layers that flow, the highest bitrate first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerStatus>,
}

/// One simulcast layer of a room's publisher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStatus {
    /// The publisher's rid for it (its SSRC in decimal until a packet named the rid).
    pub rid: String,
    /// Bits a second it sends, over the last half second.
    pub bitrate_bps: u64,
    /// The room's ring carries this layer.
    pub carried: bool,
    /// Its picture's width and height, from its last keyframe (VP8 and H.264 say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u16>,
}

impl RingMetrics {
    /// The ring of `room`, nothing counted yet.
    pub fn new(room: RoomName) -> RingMetrics {
        RingMetrics { room, head: 0, epoch: 0, packets: 0, bytes: 0, laps: 0, keyframe_requests: 0 }
    }
}

impl RoomStatus {
    /// `room`, neither live nor playing the slate, without viewers.
    pub fn new(name: RoomName) -> RoomStatus {
        RoomStatus {
            name,
            live: false,
            slate: false,
            codecs: Vec::new(),
            bitrate_bps: 0,
            viewers: 0,
            upstream: None,
            layers: Vec::new(),
        }
    }
}

/// How an edge's pull of a room from its upstream stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub state: UpstreamState,
    /// Why the last attempt failed, while it is not pulling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts that failed in a row.
    pub failures: u32,
}

/// Where an edge's pull of a room stands; a lowercase string on the wire and in `GET /rooms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamState {
    /// The offer is posted, or ICE/DTLS is under way.
    Connecting,
    /// Media arrives.
    Pulling,
    /// The last attempt failed; the next one is due after a backoff.
    Retrying,
}

/// Why a pull from the upstream failed, by kind (the label of the failure counter in `/metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamFailureKind {
    /// The upstream could not be reached over HTTP (DNS, connection refused, timeout).
    Unreachable,
    /// The upstream refused the token (401, 403).
    Unauthorized,
    /// The upstream does not know the path (404).
    NotFound,
    /// Any other refusal of the offer (4xx, 5xx, a bad answer).
    Refused,
    /// The answer came but media never did (ICE or DTLS did not connect).
    NoMedia,
    /// A pull that was delivering stopped (the upstream went silent or closed).
    Dropped,
}

impl UpstreamFailureKind {
    /// The metrics label value, the same as the wire form.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamFailureKind::Unreachable => "unreachable",
            UpstreamFailureKind::Unauthorized => "unauthorized",
            UpstreamFailureKind::NotFound => "not_found",
            UpstreamFailureKind::Refused => "refused",
            UpstreamFailureKind::NoMedia => "no_media",
            UpstreamFailureKind::Dropped => "dropped",
        }
    }
}

/// What an edge's ingest counts about one pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamMetrics {
    pub room: RoomName,
    /// 1 while media arrives from the upstream.
    pub pulling: bool,
    /// Failed attempts by kind.
    pub failures: Vec<(UpstreamFailureKind, u64)>,
}

/// What a media process says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub role: Role,
    /// Worker index for fanout, 0 for ingest.
    pub index: u32,
    pub pid: u32,
    /// Live sessions (publishers for ingest, viewers for fanout).
    pub sessions: u32,
    /// False while the process is draining and takes no new sessions.
    pub accepting: bool,
}

/// Why a request failed. Signaling maps these to HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is invalid. Room names and session ids are checked as a request is decoded (a
    /// request naming a bad one is no message, and its connection is dropped), so this is for what only the
    /// process can judge.
    BadRequest,
    /// The SDP offer could not be parsed or accepted.
    BadOffer,
    /// The offer shares no codec with what the room carries.
    NoCommonCodec,
    /// The room already has a publisher.
    RoomBusy,
    /// The request is valid but this host does not allow it (e.g. publishing to an edge).
    Forbidden,
    /// No such session in this process.
    UnknownSession,
    /// The room's publisher sends no simulcast layer of that rid.
    UnknownLayer,
    /// The process is at capacity or draining.
    Unavailable,
    /// The request does not apply to this process.
    WrongRole,
    /// A fault of the server.
    Internal,
}

/// One frame's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub msg: T,
}

/// Errors of the control protocol.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    #[error("control frame has magic {found:#06x}, expected {MAGIC:#06x}: not a deadsfu control socket")]
    BadMagic { found: u16 },
    #[error("control protocol version {found} is not supported (this build speaks version {VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("control frame body of {len} bytes exceeds the maximum of {MAX_BODY}")]
    TooLarge { len: usize },
    #[error("control connection closed in the middle of a frame")]
    Truncated,
    #[error("control connection closed")]
    Closed,
    #[error("control frame body is not a valid message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("control response id {found} does not match request id {expected}")]
    IdMismatch { expected: u64, found: u64 },
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, env: &Envelope<T>) -> Result<(), ControlError> {
    let body = serde_json::to_vec(env)?;
    if body.len() > MAX_BODY {
        return Err(ControlError::TooLarge { len: body.len() });
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.extend_from_slice(&VERSION.to_le_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame. A clean end of stream before the first byte is [`ControlError::Closed`].
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Envelope<T>, ControlError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match r.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Err(ControlError::Closed),
            Ok(0) => return Err(ControlError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let magic = u16::from_le_bytes([header[0], header[1]]);
    if magic != MAGIC {
        return Err(ControlError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([header[2], header[3]]);
    if version != VERSION {
        return Err(ControlError::UnsupportedVersion { found: version });
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_BODY {
        return Err(ControlError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ControlError::Truncated,
        _ => ControlError::Io(e),
    })?;
    Ok(serde_json::from_slice(&body)?)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Makes one call on the socket at `path`: connect, send, wait for the answer within `timeout`.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Response, ControlError> {
    exchange(&mut connect(path, timeout)?, request)
}

fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, ControlError> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// One request and its answer on an open connection.
fn exchange(stream: &mut UnixStream, request: &Request) -> Result<Response, ControlError> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    write_frame(stream, &Envelope { id, msg: request })?;
    let env: Envelope<Response> = read_frame(stream)?;
    if env.id != id {
        return Err(ControlError::IdMismatch { expected: id, found: env.id });
    }
    Ok(env.msg)
}

/// How long a [`Client`] keeps an idle connection: well under the server's [`IDLE_TIMEOUT`], so the client,
/// never the server, closes it.
const CLIENT_IDLE: Duration = Duration::from_secs(10);

/// A client of one control socket that keeps its connections open between calls. Each new connection costs
/// the serving process a thread; signaling makes several calls per viewer that joins.
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    idle: Mutex<Vec<(UnixStream, Instant)>>,
}

impl Client {
    pub fn new(path: PathBuf, timeout: Duration) -> Client {
        Client { path, timeout, idle: Mutex::new(Vec::new()) }
    }

    /// Makes one call, on an idle connection if there is one. A kept connection whose server went away (it
    /// restarted) fails before its request is read; the call is then made on a fresh connection.
    pub fn call(&self, request: &Request) -> Result<Response, ControlError> {
        while let Some(mut stream) = self.take_idle() {
            match exchange(&mut stream, request) {
                Ok(response) => {
                    self.keep(stream);
                    return Ok(response);
                }
                Err(ControlError::Closed) => continue,
                Err(ControlError::Io(e))
                    if matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        let mut stream = connect(&self.path, self.timeout)?;
        let response = exchange(&mut stream, request)?;
        self.keep(stream);
        Ok(response)
    }

    fn take_idle(&self) -> Option<UnixStream> {
        let mut idle = self.idle.lock().expect("the idle list's lock is never poisoned");
        let now = Instant::now();
        idle.retain(|(_, since)| now.duration_since(*since) < CLIENT_IDLE);
        idle.pop().map(|(stream, _)| stream)
    }

    fn keep(&self, stream: UnixStream) {
        self.idle.lock().expect("the idle list's lock is never poisoned").push((stream, Instant::now()));
    }
}

/// Errors starting a control server.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another process already serves {0}")]
    InUse(String),
    #[error("{0} exists and is not a socket; remove it if it is not needed, or set another runtime_dir")]
    NotASocket(String),
    #[error("cannot listen on {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Binds the control socket at `path`. A stale socket file left by a dead process is replaced; a socket on
/// which a live process answers is refused, so two processes never share one role; anything else at the
/// path (a file, a directory, a symbolic link) is left alone and refused.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let shown = path.display().to_string();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(shown));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(shown));
        }
        std::fs::remove_file(path).map_err(|source| BindError::Io { path: shown.clone(), source })?;
    }
    UnixListener::bind(path).map_err(|source| BindError::Io { path: shown, source })
}

/// Serves requests on `listener` from a background thread, one thread per connection, answering each with
/// `handler`. A connection that sends a bad frame is dropped; others are not affected. A
/// [`Request::Subscribe`] goes to `handler` like any other request.
pub fn serve<H>(listener: UnixListener, handler: H) -> thread::JoinHandle<()>
where
    H: Fn(Request) -> Response + Send + Sync + 'static,
{
    serve_with_updates(listener, handler, None)
}

/// [`serve`], with [`Request::Subscribe`] answered from `updates` (see the module docs) when there is one.
pub fn serve_with_updates<H>(
    listener: UnixListener,
    handler: H,
    updates: Option<Arc<Updates>>,
) -> thread::JoinHandle<()>
where
    H: Fn(Request) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let own = nix::unistd::geteuid().as_raw();
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
                    Ok(peer) if peer_allowed(peer.uid(), own) => {}
                    Ok(peer) => {
                        tracing::warn!(
                            peer_uid = peer.uid(),
                            peer_pid = peer.pid(),
                            "control connection from another user refused"
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control connection without peer credentials refused");
                        continue;
                    }
                }
                let handler = handler.clone();
                let updates = updates.clone();
                let spawned = thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || serve_connection(stream, &*handler, updates.as_deref()));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot spawn control connection thread");
                }
            }
        })
        .expect("spawning a thread at startup succeeds")
}

/// Whether a control connection from a process of `peer_uid` is served by a process of `own_uid`: the same
/// user, or root (who could read the rings and sockets anyway).
fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

fn serve_connection(
    mut stream: UnixStream,
    handler: &(dyn Fn(Request) -> Response + Send + Sync),
    updates: Option<&Updates>,
) {
    // A client that stops mid-frame, or idles, must not hold a thread forever.
    if let Err(e) = stream.set_read_timeout(Some(IDLE_TIMEOUT)) {
        tracing::warn!(error = %e, "cannot set control read timeout");
        return;
    }
    loop {
        let env: Envelope<Request> = match read_frame(&mut stream) {
            Ok(env) => env,
            Err(ControlError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "dropping control connection");
                return;
            }
        };
        let msg = match (env.msg, updates) {
            (Request::Subscribe, Some(updates)) => match updates.join() {
                Some(subscriber) => {
                    stream_updates(&mut stream, env.id, subscriber);
                    return;
                }
                None => Response::Error {
                    kind: ErrorKind::Unavailable,
                    message: format!("this process serves at most {MAX_SUBSCRIBERS} subscriptions"),
                },
            },
            (request, _) => handler(request),
        };
        let reply = Envelope { id: env.id, msg };
        if let Err(e) = write_frame(&mut stream, &reply) {
            tracing::debug!(error = %e, "control reply not delivered");
            return;
        }
    }
}

/// Writes the updates `subscriber` is handed to `stream`, each under the subscribe request's `id`, until the
/// client goes away or a write fails.
fn stream_updates(stream: &mut UnixStream, id: u64, mut subscriber: Subscriber<'_>) {
    loop {
        match subscriber.next(SUBSCRIBER_CHECK) {
            Some(update) => {
                let reply = Envelope { id, msg: Response::Update((*update).clone()) };
                if let Err(e) = write_frame(stream, &reply) {
                    tracing::debug!(error = %e, "subscription ended");
                    return;
                }
            }
            None if !client_still_there(stream) => return,
            None => {}
        }
    }
}

/// Whether the client of a subscribed connection is still there: it sends nothing after `subscribe`, so
/// anything readable (its end of stream, or bytes it should not send) ends the subscription.
fn client_still_there(stream: &UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    matches!(
        recv(stream.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
        Err(nix::errno::Errno::EAGAIN)
    )
}

/// The newest [`Update`] of a process, handed from its loop to the connection threads of its subscriptions.
///
/// The loop calls [`Updates::subscribers`] each turn (one atomic load) and does nothing more while it is 0;
/// [`Updates::take_wanted`] says a new subscriber waits for its first update, which the loop then publishes
/// even if nothing changed. [`Updates::publish`] replaces the newest update and wakes the connection threads;
/// it never waits for them.
pub struct Updates {
    subscribers: AtomicUsize,
    wanted: AtomicBool,
    newest: Mutex<Newest>,
    published: Condvar,
    /// Turns the process's loop, so a new subscriber's first update comes at once.
    wake: Box<dyn Fn() + Send + Sync>,
}

struct Newest {
    /// Bumped by every publish, including one that repeats a `seq` for a new subscriber.
    generation: u64,
    update: Option<Arc<Update>>,
}

impl Updates {
    /// A hub whose new subscribers call `wake` to have the process publish.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Updates {
        Updates {
            subscribers: AtomicUsize::new(0),
            wanted: AtomicBool::new(false),
            newest: Mutex::new(Newest { generation: 0, update: None }),
            published: Condvar::new(),
            wake: Box::new(wake),
        }
    }

    /// Subscriptions open now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// True once after a subscriber arrived: publish an update now, changed or not.
    pub fn take_wanted(&self) -> bool {
        // A load first: the loop asks every turn, and a subscriber arrives rarely.
        self.wanted.load(Ordering::Acquire) && self.wanted.swap(false, Ordering::AcqRel)
    }

    /// Makes `update` the newest and wakes the subscriptions' threads.
    pub fn publish(&self, update: Update) {
        let mut newest = self.newest.lock().expect("the updates' lock is never poisoned");
        newest.generation += 1;
        newest.update = Some(Arc::new(update));
        self.published.notify_all();
    }

    /// A place among [`MAX_SUBSCRIBERS`], or `None` if all are taken. [`serve_with_updates`] takes one for
    /// each subscription.
    pub fn join(&self) -> Option<Subscriber<'_>> {
        if self.subscribers.fetch_add(1, Ordering::AcqRel) >= MAX_SUBSCRIBERS {
            self.subscribers.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let generation = self.newest.lock().expect("the updates' lock is never poisoned").generation;
        self.wanted.store(true, Ordering::Release);
        (self.wake)();
        Some(Subscriber { updates: self, generation, written: None })
    }
}

/// One subscription's place in [`Updates`]; given back when dropped.
pub struct Subscriber<'a> {
    updates: &'a Updates,
    /// The publish this subscriber looked at last.
    generation: u64,
    /// The `seq` of the update it wrote last.
    written: Option<u64>,
}

impl Subscriber<'_> {
    /// The newest update if it is one this subscriber has not written yet, waiting up to `timeout` for it.
    pub fn next(&mut self, timeout: Duration) -> Option<Arc<Update>> {
        let newest = self.updates.newest.lock().expect("the updates' lock is never poisoned");
        let (newest, _) = self
            .updates
            .published
            .wait_timeout_while(newest, timeout, |n| n.generation == self.generation)
            .expect("the updates' lock is never poisoned");
        self.generation = newest.generation;
        let update = newest.update.clone()?;
        if self.written == Some(update.seq) {
            return None;
        }
        self.written = Some(update.seq);
        Some(update)
    }
}

impl Drop for Subscriber<'_> {
    fn drop(&mut self) {
        self.updates.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A subscription to one process (see the module docs): [`Subscription::recv`] gives its updates in order.
pub struct Subscription {
    stream: UnixStream,
    id: u64,
}

impl Subscription {
    /// Subscribes on the socket at `path`; the process must answer within `timeout`.
    pub fn open(path: &Path, timeout: Duration) -> Result<Subscription, ControlError> {
        let mut stream = connect(path, timeout)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        write_frame(&mut stream, &Envelope { id, msg: Request::Subscribe })?;
        Ok(Subscription { stream, id })
    }

    /// The next update. The first comes within the `timeout` given to [`Subscription::open`]; later ones
    /// whenever the process changes, so the wait after the first has no bound. A refusal (the process has
    /// all its subscriptions) is [`SubscribeError::Refused`].
    pub fn recv(&mut self) -> Result<Update, SubscribeError> {
        let env: Envelope<Response> = read_frame(&mut self.stream)?;
        if env.id != self.id {
            return Err(ControlError::IdMismatch { expected: self.id, found: env.id }.into());
        }
        match env.msg {
            Response::Update(update) => {
                self.stream.set_read_timeout(None).map_err(ControlError::Io)?;
                Ok(update)
            }
            Response::Error { message, .. } => Err(SubscribeError::Refused(message)),
            other => Err(SubscribeError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Why a [`Subscription`] ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("subscription refused: {0}")]
    Refused(String),
    #[error("subscription answered with something other than an update: {0}")]
    Unexpected(String),
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::Owner;

    fn frame(magic: u16, version: u16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&magic.to_le_bytes());
        f.extend_from_slice(&version.to_le_bytes());
        f.extend_from_slice(&(body.len() as u32).to_le_bytes());
        f.extend_from_slice(body);
        f
    }

    fn room(name: &str) -> RoomName {
        RoomName::new(name).unwrap()
    }

    fn session(owner: Owner) -> SessionId {
        SessionId::new(owner, [0x5a; crate::TOKEN_LEN])
    }

    fn body(json: &str) -> Vec<u8> {
        frame(MAGIC, VERSION, json.as_bytes())
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        let req = Request::Fanout(FanoutRequest::View { room: room("a"), offer: "v=0".into() });
        write_frame(&mut buf, &Envelope { id: 7, msg: req.clone() }).unwrap();
        let back: Envelope<Request> = read_frame(&mut Cursor::new(buf)).unwrap();
        assert_eq!(back, Envelope { id: 7, msg: req });
    }

    #[test]
    fn every_message_frames() {
        let requests = [
            Request::Status,
            IngestRequest::Publish { room: room("a"), offer: "v=0".into() }.into(),
            FanoutRequest::View { room: room("a"), offer: "v=0".into() }.into(),
            Request::Close { session: session(Owner::Ingest) },
            FanoutRequest::Switch { session: session(Owner::Worker(0)), room: room("b") }.into(),
            IngestRequest::Watch { room: room("a") }.into(),
            Request::Rooms,
            Request::Check { session: session(Owner::Worker(0)) },
            Request::Metrics,
            Request::Subscribe,
        ];
        let status = ProcessStatus { role: Role::Fanout, index: 1, pid: 2, sessions: 3, accepting: true };
        let upstream = UpstreamStatus { state: UpstreamState::Retrying, error: Some("no".into()), failures: 2 };
        let responses = [
            Response::Update(Update {
                seq: 4,
                status: status.clone(),
                rooms: vec![RoomStatus { viewers: 1, ..RoomStatus::new(room("a")) }],
            }),
            Response::Status(status),
            Response::Answer { session: session(Owner::Ingest), answer: "v=0".into() },
            Response::Closed,
            Response::Done,
            Response::Rooms {
                rooms: vec![
                    RoomStatus { viewers: 2, ..RoomStatus::new(room("a")) },
                    RoomStatus { upstream: Some(upstream), ..RoomStatus::new(room("b")) },
                ],
            },
            Response::Error { kind: ErrorKind::RoomBusy, message: "busy".into() },
            Response::Metrics {
                metrics: Box::new(ProcessMetrics {
                    sessions: 1,
                    rings: vec![RingMetrics { head: 9, ..RingMetrics::new(room("a")) }],
                    upstream: vec![UpstreamMetrics {
                        room: room("a"),
                        pulling: false,
                        failures: vec![(UpstreamFailureKind::NotFound, 3)],
                    }],
                    ..Default::default()
                }),
            },
        ];
        for msg in requests {
            let mut buf = Vec::new();
            write_frame(&mut buf, &Envelope { id: 1, msg: msg.clone() }).unwrap();
            assert_eq!(read_frame::<Request>(&mut Cursor::new(buf)).unwrap().msg, msg);
        }
        for msg in responses {
            let mut buf = Vec::new();
            write_frame(&mut buf, &Envelope { id: 1, msg: msg.clone() }).unwrap();
            assert_eq!(read_frame::<Response>(&mut Cursor::new(buf)).unwrap().msg, msg);
        }
    }

    #[test]
    fn the_wire_form_of_role_calls_and_states() {
        let publish: Request = IngestRequest::Publish { room: room("a"), offer: "v=0".into() }.into();
        let json = serde_json::to_value(Envelope { id: 3, msg: publish }).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": 3, "msg": {"type": "ingest", "op": "publish", "room": "a", "offer": "v=0"}})
        );
        let switch: Request = FanoutRequest::Switch { session: session(Owner::Worker(2)), room: room("b") }.into();
        let json = serde_json::to_value(Envelope { id: 4, msg: switch }).unwrap();
        let id = "w2-5a5a5a5a5a5a5a5a5a5a5a5a";
        assert_eq!(
            json,
            serde_json::json!({"id": 4, "msg": {"type": "fanout", "op": "switch", "session": id, "room": "b"}})
        );
        let decoded = read_frame::<Request>(&mut Cursor::new(body(&format!(
            r#"{{"id":5,"msg":{{"type":"close","session":"{id}"}}}}"#
        ))))
        .unwrap();
        assert_eq!(decoded.msg, Request::Close { session: session(Owner::Worker(2)) });
        // `/rooms` shows these as they were shown when they were strings.
        for (state, text) in [
            (UpstreamState::Connecting, "connecting"),
            (UpstreamState::Pulling, "pulling"),
            (UpstreamState::Retrying, "retrying"),
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), text);
        }
        for kind in [
            UpstreamFailureKind::Unreachable,
            UpstreamFailureKind::Unauthorized,
            UpstreamFailureKind::NotFound,
            UpstreamFailureKind::Refused,
            UpstreamFailureKind::NoMedia,
            UpstreamFailureKind::Dropped,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.label());
        }
    }

    #[test]
    fn a_request_naming_a_bad_room_or_session_does_not_decode() {
        let bad_room = body(r#"{"id":1,"msg":{"type":"ingest","op":"watch","room":"../etc"}}"#);
        let err = read_frame::<Request>(&mut Cursor::new(bad_room)).unwrap_err();
        assert!(matches!(err, ControlError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("room name may contain only letters"), "{err}");
        let long = "a".repeat(crate::room::MAX_ROOM_LEN + 1);
        let long_room =
            body(&format!(r#"{{"id":1,"msg":{{"type":"fanout","op":"view","room":"{long}","offer":"v=0"}}}}"#));
        let err = read_frame::<Request>(&mut Cursor::new(long_room)).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        let bad_session = body(r#"{"id":1,"msg":{"type":"check","session":"w0-0001"}}"#);
        let err = read_frame::<Request>(&mut Cursor::new(bad_session)).unwrap_err();
        assert!(err.to_string().contains("hex digits"), "{err}");
        // A role call without its op, or with the other role's op, is no message either.
        for json in [
            r#"{"id":1,"msg":{"type":"ingest","room":"a"}}"#,
            r#"{"id":1,"msg":{"type":"ingest","op":"view","room":"a","offer":"v=0"}}"#,
            r#"{"id":1,"msg":{"type":"publish","room":"a","offer":"v=0"}}"#,
        ] {
            let err = read_frame::<Request>(&mut Cursor::new(body(json))).unwrap_err();
            assert!(matches!(err, ControlError::Malformed(_)), "{json}: {err}");
        }
        let bad_answer = body(r#"{"id":1,"msg":{"type":"answer","session":"x-1","answer":"v=0"}}"#);
        assert!(matches!(read_frame::<Response>(&mut Cursor::new(bad_answer)), Err(ControlError::Malformed(_))));
    }

    #[test]
    fn truncated_header_and_body() {
        let good = body(r#"{"id":1,"msg":{"type":"status"}}"#);
        for cut in [3, HEADER_LEN + 4] {
            let err = read_frame::<Request>(&mut Cursor::new(&good[..cut])).unwrap_err();
            assert!(matches!(err, ControlError::Truncated), "cut at {cut}: {err}");
        }
        let err = read_frame::<Request>(&mut Cursor::new(Vec::new())).unwrap_err();
        assert!(matches!(err, ControlError::Closed));
    }

    #[test]
    fn oversized_is_refused_before_allocating() {
        let mut f = frame(MAGIC, VERSION, b"");
        f[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read_frame::<Request>(&mut Cursor::new(f)).unwrap_err();
        assert!(matches!(err, ControlError::TooLarge { len } if len == u32::MAX as usize));
    }

    #[test]
    fn garbage_magic_version_and_body() {
        let err = read_frame::<Request>(&mut Cursor::new(b"GET / HTTP/1.1\r\n".to_vec())).unwrap_err();
        assert!(matches!(err, ControlError::BadMagic { .. }));
        let err = read_frame::<Request>(&mut Cursor::new(frame(MAGIC, 9, b"{}"))).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        let err = read_frame::<Request>(&mut Cursor::new(frame(MAGIC, VERSION, b"{nope"))).unwrap_err();
        assert!(matches!(err, ControlError::Malformed(_)));
        let body = br#"{"id":1,"msg":{"type":"launch_rockets"}}"#;
        let err = read_frame::<Request>(&mut Cursor::new(frame(MAGIC, VERSION, body))).unwrap_err();
        assert!(matches!(err, ControlError::Malformed(_)));
    }

    #[test]
    fn bind_replaces_only_a_stale_socket() {
        let dir = std::env::temp_dir().join(format!("deadsfu-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-a-socket.sock");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(bind(&file), Err(BindError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(matches!(bind(&link), Err(BindError::NotASocket(_))));
        // A socket nobody serves is stale and replaced.
        let stale = dir.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        bind(&stale).expect("a stale socket is replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn control_peers_are_this_user_or_root() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    #[test]
    fn server_drops_bad_connection_and_keeps_serving() {
        let dir = std::env::temp_dir().join(format!("deadsfu-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.sock");
        let listener = bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(BindError::InUse(_))));
        serve(listener, |req| match req {
            Request::Status => Response::Closed,
            _ => Response::Error { kind: ErrorKind::WrongRole, message: "no".into() },
        });

        // A garbage client is dropped: it reads end-of-stream, not an answer.
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        bad.write_all(&frame(MAGIC, VERSION, b"\xff\xfe")).unwrap();
        let mut rest = Vec::new();
        bad.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());

        // An oversized frame header is dropped too, without the server reading the body.
        let mut big = UnixStream::connect(&path).unwrap();
        big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut f = frame(MAGIC, VERSION, b"");
        f[4..8].copy_from_slice(&((MAX_BODY + 1) as u32).to_le_bytes());
        big.write_all(&f).unwrap();
        let mut rest = Vec::new();
        big.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());

        // Good clients are unaffected.
        let resp = call(&path, &Request::Status, Duration::from_secs(5)).unwrap();
        assert_eq!(resp, Response::Closed);
        let resp = call(&path, &Request::Close { session: session(Owner::Ingest) }, Duration::from_secs(5)).unwrap();
        assert!(matches!(resp, Response::Error { kind: ErrorKind::WrongRole, .. }));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_client_keeps_its_connection_and_survives_a_server_restart() {
        let dir = std::env::temp_dir().join(format!("deadsfu-control-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let connections = Arc::new(AtomicU64::new(0));
        let serve_counting = |listener: UnixListener, connections: Arc<AtomicU64>, answer: Response| {
            thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(stream) = conn else { return };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let answer = answer.clone();
                    thread::spawn(move || serve_connection(stream, &move |_| answer.clone(), None));
                }
            })
        };
        let server = bind(&path).unwrap();
        serve_counting(server, connections.clone(), Response::Done);
        let client = Client::new(path.clone(), Duration::from_secs(5));
        for _ in 0..3 {
            assert_eq!(client.call(&Request::Status).unwrap(), Response::Done);
        }
        assert_eq!(connections.load(Ordering::Relaxed), 1, "three calls, one connection");

        // A kept connection whose server went away (a peer that closed) is stale: the call goes out on a fresh
        // connection instead of failing.
        drop(client.take_idle().expect("a kept connection"));
        let (stale, peer) = UnixStream::pair().unwrap();
        drop(peer);
        client.keep(stale);
        assert_eq!(client.call(&Request::Status).unwrap(), Response::Done);
        assert_eq!(connections.load(Ordering::Relaxed), 2);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_subscriber_gets_the_state_at_once_then_each_change_and_a_fifth_is_refused() {
        let dir = std::env::temp_dir().join(format!("deadsfu-control-subscribe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        // A process loop in miniature: it publishes its state when a subscriber wants it, and when `viewers`
        // changes.
        let (wake_tx, wake_rx) = std::sync::mpsc::channel::<()>();
        let updates = Arc::new(Updates::new(move || {
            let _ = wake_tx.send(());
        }));
        let viewers = Arc::new(AtomicU64::new(0));
        let state = |seq: u64, viewers: u64| Update {
            seq,
            status: ProcessStatus { role: Role::Fanout, index: 0, pid: 1, sessions: viewers as u32, accepting: true },
            rooms: vec![RoomStatus { viewers: viewers as u32, ..RoomStatus::new(room("a")) }],
        };
        {
            let (updates, viewers) = (updates.clone(), viewers.clone());
            thread::spawn(move || {
                let (mut seq, mut sent) = (0, u64::MAX);
                while wake_rx.recv().is_ok() {
                    let now = viewers.load(Ordering::Acquire);
                    let wanted = updates.take_wanted();
                    if now != sent {
                        seq += 1;
                        sent = now;
                    } else if !wanted {
                        continue;
                    }
                    updates.publish(state(seq, now));
                }
            });
        }
        serve_with_updates(bind(&path).unwrap(), |_| Response::Done, Some(updates.clone()));
        let timeout = Duration::from_secs(5);

        let mut first = Subscription::open(&path, timeout).unwrap();
        assert_eq!(first.recv().unwrap(), state(1, 0), "the state at once");
        // The process changes: the subscriber is told.
        viewers.store(2, Ordering::Release);
        (updates.wake)();
        assert_eq!(first.recv().unwrap(), state(2, 2));

        // More subscribers each get the state at once, the others nothing new; a fifth is refused, and its
        // connection still answers calls.
        let mut others: Vec<Subscription> = (0..3).map(|_| Subscription::open(&path, timeout).unwrap()).collect();
        for other in &mut others {
            assert_eq!(other.recv().unwrap(), state(2, 2));
        }
        assert_eq!(updates.subscribers(), MAX_SUBSCRIBERS);
        let mut fifth = connect(&path, timeout).unwrap();
        let refused = exchange(&mut fifth, &Request::Subscribe).unwrap();
        assert!(matches!(refused, Response::Error { kind: ErrorKind::Unavailable, .. }), "{refused:?}");
        assert_eq!(exchange(&mut fifth, &Request::Status).unwrap(), Response::Done);

        // A subscriber that goes gives its place back.
        drop(others.pop());
        let deadline = Instant::now() + timeout;
        while updates.subscribers() == MAX_SUBSCRIBERS {
            assert!(Instant::now() < deadline, "the place of a closed subscription is never given back");
            thread::sleep(Duration::from_millis(20));
        }
        let mut again = Subscription::open(&path, timeout).unwrap();
        assert_eq!(again.recv().unwrap(), state(2, 2));
        viewers.store(3, Ordering::Release);
        (updates.wake)();
        assert_eq!(first.recv().unwrap(), state(3, 3), "no update skipped for a subscriber that keeps up");
        assert_eq!(again.recv().unwrap(), state(3, 3));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_slow_subscriber_gets_the_newest_update_only() {
        let updates = Updates::new(|| {});
        let status = ProcessStatus { role: Role::Ingest, index: 0, pid: 1, sessions: 0, accepting: true };
        let update = |seq| Update { seq, status: status.clone(), rooms: Vec::new() };
        let mut subscriber = updates.join().unwrap();
        assert!(updates.take_wanted());
        assert!(!updates.take_wanted());
        for seq in 1..=3 {
            updates.publish(update(seq));
        }
        assert_eq!(subscriber.next(Duration::ZERO).as_deref(), Some(&update(3)));
        assert_eq!(subscriber.next(Duration::ZERO), None, "nothing new");
        // The same state published again (for another subscriber) is not written twice.
        updates.publish(update(3));
        assert_eq!(subscriber.next(Duration::ZERO), None);
        drop(subscriber);
        assert_eq!(updates.subscribers(), 0);
    }
}
