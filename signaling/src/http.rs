//! Signaling's HTTP server, built to face the open internet: hyper (HTTP/1.1) on a small tokio runtime, with
//! TLS terminated in-process (rustls), in front of the synchronous [`Router`].
//!
//! Why hyper and not a thread per connection (what tiny_http gave): every connection costs a few hundred
//! bytes of task instead of a thread, so a crowd of slow clients cannot exhaust threads; the header read
//! timeout, buffer limits and the body read timeout are enforced by the server before a request reaches the
//! router; and long-polls of the room list, and the WHEP event streams of viewers (a `layers` event when their
//! room's simulcast layers change), wait on one shared snapshot instead of holding a thread and asking every
//! media process per waiter. The snapshot is made again from the [`crate::registry::Registry`] as soon
//! as its room list changes (the media processes push their changes), so a long-poll answers within moments
//! of a viewer joining; while a process is missing from the registry, it is asked directly every
//! [`ROOM_POLL_STEP`].
//!
//! Every input is bounded ([`Limits`]); past a limit the client gets a one-line reason, `503` (or `408`,
//! `413`, `431`) with `Retry-After` where waiting helps, and a counter in [`Refusals`] goes up
//! (`deadsfu_http_refused_total{reason}` in `/metrics`). Nothing a refused client sent creates state.
//!
//! The router is synchronous (its calls to the media processes block on Unix sockets for up to a few
//! seconds), so each request runs on tokio's blocking pool, at most [`Limits::max_in_flight`] at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::LazyConfigAcceptor;

use crate::router::{Backend, HttpRequest, HttpResponse, RoomList, Router, LONG_POLL, MAX_BODY};
use crate::tls::Tls;
use shm_proto::{RoomName, SessionId};

/// Most header lines in a request.
pub const MAX_HEADERS: usize = 64;
/// How often the shared room-list snapshot is refreshed while long-polls wait and some media process is not in
/// the registry (it is asked directly).
const ROOM_POLL_STEP: Duration = Duration::from_millis(250);
/// How long a request waits for a free slot of [`Limits::max_in_flight`] before it is refused.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);
/// Least time between two events of one event stream: the layers' bitrates change with every room list.
const EVENT_SPACING: Duration = Duration::from_secs(1);
/// An event stream with nothing to say sends a comment this often, so proxies keep it open.
const EVENT_KEEPALIVE: Duration = Duration::from_secs(15);
/// How often an event stream checks that its viewer session still exists (it ends with the session).
const EVENT_SESSION_CHECK: Duration = Duration::from_secs(30);

/// A response body: whole, or an event stream.
type Body = Either<Full<Bytes>, EventStream>;

/// The bounds of the HTTP server; the defaults come from the configuration (`http_*` keys).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections on all listeners together.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_ip: usize,
    /// Time for a request head to arrive, counted from the connection's start or the previous response
    /// (an idle keep-alive connection is closed after it too); also the TLS handshake's time.
    pub header_timeout: Duration,
    /// Time for a request body to arrive once its head has.
    pub body_timeout: Duration,
    /// Largest request head (request line and headers), at least 8192; a larger one is answered `431`.
    /// hyper's read buffer is this size, so it also bounds what one connection holds while its head arrives.
    pub max_head_bytes: usize,
    /// Room-list long-polls waiting at once, and event streams open.
    pub max_long_polls: usize,
    /// Requests being answered at once (each may call the media processes).
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_ip: 64,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
            max_long_polls: 1024,
            max_in_flight: 64,
        }
    }
}

/// Requests and connections refused at a limit, by reason, since start.
#[derive(Debug, Default)]
pub struct Refusals {
    pub connections: AtomicU64,
    pub connections_per_ip: AtomicU64,
    pub long_polls: AtomicU64,
    pub busy: AtomicU64,
    pub body_timeout: AtomicU64,
    pub body_too_large: AtomicU64,
}

impl Refusals {
    /// `(reason, count)` pairs, for `/metrics`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("connections", get(&self.connections)),
            ("connections_per_ip", get(&self.connections_per_ip)),
            ("long_polls", get(&self.long_polls)),
            ("busy", get(&self.busy)),
            ("body_timeout", get(&self.body_timeout)),
            ("body_too_large", get(&self.body_too_large)),
        ]
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Face {
    /// Everything; `/metrics` only when `metrics` (no admin listener is configured).
    Public { metrics: bool },
    /// `/metrics` and `/healthz` only (the `admin` listener).
    Admin,
}

/// A bound listener and what it serves.
pub struct Listener {
    pub listener: std::net::TcpListener,
    pub face: Face,
    /// TLS configuration for an HTTPS listener.
    pub tls: Option<Tls>,
}

impl Listener {
    /// Binds `addr` (a plain listener when `tls` is `None`).
    pub fn bind(addr: SocketAddr, face: Face, tls: Option<Tls>) -> std::io::Result<Listener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Listener { listener, face, tls })
    }
}

/// The room list as last seen, and when it was asked for.
#[derive(Clone)]
struct Snapshot {
    asked: Instant,
    list: Arc<RoomList>,
}

struct Shared<B> {
    router: Arc<Router<B>>,
    limits: Limits,
    refusals: Arc<Refusals>,
    /// Open connections per client address.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    connections: AtomicUsize,
    long_polls: AtomicUsize,
    in_flight: Semaphore,
    rooms: watch::Sender<Option<Snapshot>>,
    /// Wakes the room-list poller when a long-poll starts.
    room_poll: Notify,
}

/// The HTTP server: run it with [`Server::run`] on a tokio runtime.
pub struct Server<B> {
    shared: Arc<Shared<B>>,
}

impl<B: Backend + 'static> Server<B> {
    pub fn new(router: Arc<Router<B>>, limits: Limits) -> Server<B> {
        let refusals = router.refusals();
        let (rooms, _) = watch::channel(None);
        Server {
            shared: Arc::new(Shared {
                router,
                in_flight: Semaphore::new(limits.max_in_flight.max(1)),
                limits,
                refusals,
                per_ip: Mutex::new(HashMap::new()),
                connections: AtomicUsize::new(0),
                long_polls: AtomicUsize::new(0),
                rooms,
                room_poll: Notify::new(),
            }),
        }
    }

    /// Serves `listeners` until the process ends (or a listener fails to register with the runtime).
    pub async fn run(self, listeners: Vec<Listener>) -> std::io::Result<()> {
        let mut tasks = Vec::new();
        for l in listeners {
            let listener = TcpListener::from_std(l.listener)?;
            tasks.push(tokio::spawn(accept_loop(listener, l.face, l.tls, self.shared.clone())));
        }
        tokio::spawn(poll_rooms(self.shared.clone()));
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    }
}

/// Holds a connection's place in the counts; gives it back when dropped.
struct ConnectionSlot<B> {
    shared: Arc<Shared<B>>,
    ip: IpAddr,
}

impl<B> Drop for ConnectionSlot<B> {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl<B> Shared<B> {
    /// A place for a connection from `ip`, or the reason there is none.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot<B>, &'static str> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            Refusals::count(&self.refusals.connections);
            return Err("too many connections to this server; retry shortly");
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_default();
        if *n >= self.limits.max_connections_per_ip {
            drop(per_ip);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            Refusals::count(&self.refusals.connections_per_ip);
            return Err("too many connections from your address; close some and retry");
        }
        *n += 1;
        Ok(ConnectionSlot { shared: self.clone(), ip })
    }
}

async fn accept_loop<B: Backend + 'static>(
    listener: TcpListener,
    face: Face,
    tls: Option<Tls>,
    shared: Arc<Shared<B>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most likely: give connections time to close.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match shared.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                if tls.is_none() {
                    refuse_connection(&stream, reason);
                }
                tracing::debug!(%peer, reason, "connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, peer, face, tls.clone(), shared.clone(), slot));
    }
}

/// Answers a connection over the limit with a `503` without reading from it, if its send buffer takes the
/// few bytes at once, and closes it.
fn refuse_connection(stream: &TcpStream, reason: &str) {
    let body = format!("{reason}\n");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(head.as_bytes());
}

async fn serve_connection<B: Backend + 'static>(
    stream: TcpStream,
    peer: SocketAddr,
    face: Face,
    tls: Option<Tls>,
    shared: Arc<Shared<B>>,
    slot: ConnectionSlot<B>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .max_buf_size(shared.limits.max_head_bytes.max(8192))
        .max_headers(MAX_HEADERS);
    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = service_shared.clone();
        async move { Ok::<_, Infallible>(respond(req, face, &shared).await) }
    });
    let result = match tls {
        None => builder.serve_connection(TokioIo::new(stream), service).await,
        Some(tls) => match tokio::time::timeout(shared.limits.header_timeout, handshake(stream, &tls)).await {
            Ok(Ok(Some(tls))) => builder.serve_connection(TokioIo::new(tls), service).await,
            Ok(Ok(None)) => {
                tracing::debug!(%peer, "ACME validation handshake answered");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
    drop(slot);
}

/// The TLS handshake of a connection to the HTTPS listener; `None` for an ACME CA's validation handshake,
/// which is closed once done (the challenge is the handshake itself).
async fn handshake(
    stream: TcpStream,
    tls: &Tls,
) -> std::io::Result<Option<tokio_rustls::server::TlsStream<TcpStream>>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let (config, validation) = tls.config_for(&start.client_hello());
    let mut stream = start.into_stream(config).await?;
    if validation {
        let _ = stream.shutdown().await;
        return Ok(None);
    }
    Ok(Some(stream))
}

/// Reads a request, answers it with the router (or from the shared room list for a long-poll), and turns the
/// answer into hyper's response.
async fn respond<B: Backend + 'static>(
    req: hyper::Request<Incoming>,
    face: Face,
    shared: &Arc<Shared<B>>,
) -> hyper::Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let served_here = match face {
        Face::Admin => matches!(path, "/metrics" | "/healthz"),
        Face::Public { metrics } => metrics || path != "/metrics",
    };
    if !served_here {
        let reason = match face {
            Face::Admin => format!("no such resource on the admin listener: {path}"),
            Face::Public { .. } => "metrics are served on the admin listener".to_string(),
        };
        return into_hyper(crate::router::error_response(404, reason), false);
    }
    let announced = parts.headers.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    let announced: Option<u64> = announced.and_then(|v| v.trim().parse().ok());
    let mut close = false;
    let body = if announced.is_some_and(|n| n > MAX_BODY as u64) {
        // Refused unread: the connection closes after the answer instead of draining what was announced.
        Refusals::count(&shared.refusals.body_too_large);
        close = true;
        None
    } else {
        match tokio::time::timeout(shared.limits.body_timeout, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => Some(collected.to_bytes().to_vec()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                Refusals::count(&shared.refusals.body_too_large);
                close = true;
                None
            }
            Ok(Err(e)) => {
                let resp = crate::router::error_response(400, format!("request body could not be read: {e}"));
                return into_hyper(resp, true);
            }
            Err(_) => {
                Refusals::count(&shared.refusals.body_timeout);
                let secs = shared.limits.body_timeout.as_secs_f64();
                let resp = crate::router::error_response(408, format!("request body not received within {secs} s"));
                return into_hyper(resp, true);
            }
        }
    };
    let request = HttpRequest {
        method: parts.method.as_str().to_ascii_uppercase(),
        url: parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body,
    };
    if let Some(target) = shared.router.event_stream(&request) {
        return match target {
            Ok((session, mid)) => event_stream(session, mid, shared).await,
            Err(resp) => into_hyper(resp, close),
        };
    }
    let resp = match Router::<B>::long_poll(&request) {
        Some(Ok(seen)) => long_poll(seen, shared).await,
        Some(Err(resp)) => resp,
        None => call_router(request, shared).await,
    };
    into_hyper(resp, close)
}

/// The body of an event stream: what its task sends, as it comes; it ends when the task does.
pub struct EventStream(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|event| event.map(|e| Ok(Frame::data(e))))
    }
}

/// `GET /session/{id}/events`: a `layers` event with the viewer's room's simulcast layers at once and each time
/// they change (at most every [`EVENT_SPACING`]), from the shared room list; a comment every
/// [`EVENT_KEEPALIVE`]. Counted among the long-polls ([`Limits::max_long_polls`]) while it lasts; it ends when
/// the client goes or the session does (checked every [`EVENT_SESSION_CHECK`]).
async fn event_stream<B: Backend + 'static>(
    session: SessionId,
    mid: String,
    shared: &Arc<Shared<B>>,
) -> hyper::Response<Body> {
    let Some(slot) = LongPollSlot::take(shared) else {
        let resp =
            crate::router::error_response(503, "too many waiting requests; retry shortly").with("Retry-After", "1");
        return into_hyper(resp, false);
    };
    let room = match viewer_room(session, shared).await {
        Some(Ok(room)) => room,
        Some(Err(resp)) => return into_hyper(resp, false),
        None => return into_hyper(busy(shared), false),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut room = room;
        let mut rooms = shared.rooms.subscribe();
        shared.room_poll.notify_one();
        let mut last: Option<String> = None;
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + EVENT_KEEPALIVE, EVENT_KEEPALIVE);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + EVENT_SESSION_CHECK, EVENT_SESSION_CHECK);
        loop {
            let data = rooms.borrow_and_update().as_ref().map(|s| Router::<B>::layers_event(&s.list, &room, &mid));
            if let Some(data) = data.filter(|d| last.as_ref() != Some(d)) {
                if tx.send(Bytes::from(format!("event: layers\ndata: {data}\n\n"))).await.is_err() {
                    return;
                }
                last = Some(data);
                tokio::time::sleep(EVENT_SPACING).await;
                continue;
            }
            tokio::select! {
                changed = rooms.changed() => if changed.is_err() { return },
                _ = keepalive.tick() => if tx.send(Bytes::from_static(b":\n\n")).await.is_err() { return },
                _ = check.tick() => match viewer_room(session, &shared).await {
                    // A viewer moved to another room has that room's layers from now on.
                    Some(Ok(now)) => room = now,
                    Some(Err(_)) => return,
                    None => {}
                },
                () = tx.closed() => return,
            }
        }
    });
    let mut out = hyper::Response::new(Either::Right(EventStream(rx)));
    let headers = out.headers_mut();
    for (name, value) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-store"),
        ("access-control-allow-origin", "*"),
        ("x-accel-buffering", "no"),
    ] {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    out
}

/// The room of viewer `session`, asked of its worker on the blocking pool within [`Limits::max_in_flight`];
/// `None` if no place came free within [`IN_FLIGHT_WAIT`].
async fn viewer_room<B: Backend + 'static>(
    session: SessionId,
    shared: &Arc<Shared<B>>,
) -> Option<Result<RoomName, HttpResponse>> {
    let permit = tokio::time::timeout(IN_FLIGHT_WAIT, shared.in_flight.acquire()).await.ok()?.ok()?;
    let router = shared.router.clone();
    let asked = tokio::task::spawn_blocking(move || router.viewer_room(session)).await;
    drop(permit);
    Some(asked.unwrap_or_else(|e| Err(crate::router::error_response(500, format!("request handler failed: {e}")))))
}

/// Runs the router on the blocking pool, once a place among [`Limits::max_in_flight`] is free.
async fn call_router<B: Backend + 'static>(request: HttpRequest, shared: &Arc<Shared<B>>) -> HttpResponse {
    let permit = match tokio::time::timeout(IN_FLIGHT_WAIT, shared.in_flight.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => return busy(shared),
    };
    let router = shared.router.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let resp = router.handle(&request);
        tracing::debug!(method = %request.method, url = %request.url, status = resp.status, "http");
        resp
    })
    .await;
    drop(permit);
    answered.unwrap_or_else(|e| crate::router::error_response(500, format!("request handler failed: {e}")))
}

/// The answer when no place among [`Limits::max_in_flight`] came free in time (counted).
fn busy<B>(shared: &Shared<B>) -> HttpResponse {
    Refusals::count(&shared.refusals.busy);
    crate::router::error_response(503, "the server is busy; retry shortly").with("Retry-After", "1")
}

/// Holds a long-poll (or an event stream) counted among [`Limits::max_long_polls`].
struct LongPollSlot<B>(Arc<Shared<B>>);

impl<B> LongPollSlot<B> {
    /// A place, or `None` (counted as refused) at the limit.
    fn take(shared: &Arc<Shared<B>>) -> Option<LongPollSlot<B>> {
        if shared.long_polls.fetch_add(1, Ordering::AcqRel) >= shared.limits.max_long_polls {
            shared.long_polls.fetch_sub(1, Ordering::AcqRel);
            Refusals::count(&shared.refusals.long_polls);
            return None;
        }
        Some(LongPollSlot(shared.clone()))
    }
}

impl<B> Drop for LongPollSlot<B> {
    fn drop(&mut self) {
        self.0.long_polls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `GET /rooms?wait=SEEN`: answered when the shared room list has a version other than `seen`, or after
/// [`LONG_POLL`] with the list as it is.
async fn long_poll<B: Backend + 'static>(seen: u64, shared: &Arc<Shared<B>>) -> HttpResponse {
    let Some(_slot) = LongPollSlot::take(shared) else {
        return crate::router::error_response(503, "too many waiting room-list requests; retry shortly")
            .with("Retry-After", "1");
    };
    let arrived = Instant::now();
    let mut rooms = shared.rooms.subscribe();
    shared.room_poll.notify_one();
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    let mut latest: Option<Arc<RoomList>> = None;
    loop {
        if let Some(snapshot) = rooms.borrow_and_update().as_ref() {
            // Only a list asked for after this request arrived says anything about "now".
            if snapshot.asked >= arrived {
                if snapshot.list.version != seen {
                    return Router::<B>::rooms_answer(&snapshot.list);
                }
                latest = Some(snapshot.list.clone());
            }
        }
        if tokio::time::timeout_at(deadline, rooms.changed()).await.is_err() {
            break;
        }
    }
    match latest {
        Some(list) => Router::<B>::rooms_answer(&list),
        None => {
            call_router(
                HttpRequest { method: "GET".into(), url: "/rooms".into(), headers: Vec::new(), body: None },
                shared,
            )
            .await
        }
    }
}

/// Makes the shared room list again whenever the registry's list changes or a long-poll starts, but while some
/// process is asked directly (it is not in the registry) every [`ROOM_POLL_STEP`] instead of per long-poll;
/// sleeps while none waits.
async fn poll_rooms<B: Backend + 'static>(shared: Arc<Shared<B>>) {
    let mut changes = shared.router.registry().watch();
    loop {
        if shared.long_polls.load(Ordering::Acquire) == 0 {
            shared.room_poll.notified().await;
        }
        let asked = Instant::now();
        changes.borrow_and_update();
        let router = shared.router.clone();
        let complete = match tokio::task::spawn_blocking(move || router.room_list_complete()).await {
            Ok((list, complete)) => {
                shared.rooms.send_replace(Some(Snapshot { asked, list: Arc::new(list) }));
                complete
            }
            Err(_) => false,
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The registry is gone with the router: nothing will change any more.
                    return;
                }
            }
            // Made from the registry alone, a list costs no call: each long-poll that starts gets a fresh one.
            // A list some process was asked for is made at most every step, however many long-polls start.
            _ = shared.room_poll.notified(), if complete => {}
            _ = tokio::time::sleep(ROOM_POLL_STEP), if !complete => {}
        }
    }
}

fn into_hyper(resp: HttpResponse, close: bool) -> hyper::Response<Body> {
    let mut out = hyper::Response::new(Either::Left(Full::new(Bytes::from(resp.body))));
    *out.status_mut() = hyper::StatusCode::from_u16(resp.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    for (name, value) in resp.headers {
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes());
        if let (Ok(name), Ok(value)) = (name, hyper::header::HeaderValue::from_str(&value)) {
            headers.append(name, value);
        }
    }
    if close {
        headers.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    }
    out
}
