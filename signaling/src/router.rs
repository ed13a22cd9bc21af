//! The HTTP face of deadsfu, as a function from request to response.
//!
//! [`Router::handle`] takes a parsed request and answers it, calling the media processes through a
//! [`Backend`]; it never touches a socket, so tests drive it with a fake backend. Which worker takes a viewer
//! and what `GET /rooms` shows come from the [`Registry`], which the processes keep up to date (see
//! [`crate::registry`]); a process the registry has no entry for is asked directly.
//!
//! Routes:
//! - `POST /whip/{room}`, `POST /whip?room=R` (publish, WHIP, RFC 9725);
//! - `POST /whep/{room}`, `POST /whap?room=R` (view, WHEP);
//! - `DELETE /session/{id}` (the `Location` of either);
//! - `POST /session/{id}/switch` with `{"room": "B"}` (or `?room=B`): move a viewer to another room;
//! - `GET /rooms`, `GET /rooms?wait=VERSION` (long-poll until the list differs from `VERSION`);
//! - `OPTIONS` anything (CORS preflight);
//! - `GET /healthz`, `GET /` (viewer page), `GET /send` (publisher page).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use shm_proto::control::{
    ControlError, ErrorKind, FanoutRequest, IngestRequest, ProcessMetrics, ProcessStatus, Request, Response,
    UpstreamStatus,
};
use shm_proto::{Owner, RoomName, SessionId};

use crate::http::Refusals;
use crate::registry::Registry;

/// Largest SDP body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Room used by DeadSFU-style URLs without `?room=`.
const DEFAULT_ROOM: &str = "mainroom";

const VIEWER_PAGE: &str = include_str!("../assets/index.html");
const PUBLISHER_PAGE: &str = include_str!("../assets/send.html");

/// A media process signaling can call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Ingest,
    Worker(u32),
}

impl From<Owner> for Target {
    /// The process that holds a session, which every call about the session goes to.
    fn from(owner: Owner) -> Target {
        match owner {
            Owner::Ingest => Target::Ingest,
            Owner::Worker(k) => Target::Worker(k),
        }
    }
}

/// The media processes, as signaling reaches them.
pub trait Backend: Send + Sync {
    fn call(&self, target: Target, request: &Request) -> Result<Response, ControlError>;
    /// Indexes of the fanout workers that have a control socket now.
    fn workers(&self) -> Vec<u32>;
}

/// An HTTP request, reduced to what the router needs.
pub struct HttpRequest {
    pub method: String,
    /// Path and query, as sent.
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body, or `None` when it was larger than [`MAX_BODY`].
    pub body: Option<Vec<u8>>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse { status, headers: vec![("Content-Type", content_type.to_string())], body: body.into() }
    }

    /// The value of a header the response carries.
    #[cfg(test)]
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A client or server error with a one-line reason.
    fn error(status: u16, reason: impl std::fmt::Display) -> HttpResponse {
        HttpResponse::new(status, "text/plain; charset=utf-8", format!("{reason}\n"))
    }

    /// The response with one more header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> HttpResponse {
        self.headers.push((name, value.into()));
        self
    }
}

/// What `GET /healthz` says.
#[derive(Serialize)]
struct Health {
    ok: bool,
    signaling: Pid,
    ingest: Option<Pid>,
    workers: Vec<WorkerHealth>,
}

#[derive(Serialize)]
struct Pid {
    pid: u32,
}

#[derive(Serialize)]
struct WorkerHealth {
    index: u32,
    pid: u32,
    viewers: u32,
    accepting: bool,
}

/// The tokens that guard publishing and viewing; `None` leaves that open.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub publish: Option<String>,
    pub view: Option<String>,
}

/// The room list `GET /rooms` answers.
#[derive(Serialize, Debug, PartialEq)]
pub struct RoomList {
    /// Changes whenever a room appears or goes, changes state or codecs, or gains or loses viewers.
    pub version: u64,
    pub rooms: Vec<RoomEntry>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct RoomEntry {
    pub name: RoomName,
    /// `live`, `slate` or `idle` (a publisher connecting, or nobody).
    pub state: &'static str,
    pub codecs: Vec<String>,
    pub viewers: u32,
    pub bitrate_kbps: f64,
    /// On an edge: how the pull of the room from the upstream stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamStatus>,
    /// A simulcast publisher's layers, the highest bitrate first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerEntry>,
}

/// One simulcast layer of a room's publisher, as `GET /rooms` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerEntry {
    pub rid: String,
    pub bitrate_kbps: f64,
    /// The room's own ring carries this layer: its viewers on Auto get it.
    pub carried: bool,
    /// Viewers getting this layer: those who chose it, and those on Auto if it is carried.
    pub viewers: u32,
    /// Its picture's size, when its keyframes say (VP8, H.264).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u16>,
}

/// Longest a `GET /rooms?wait=` is held (by the HTTP server, which waits on a shared room list).
pub const LONG_POLL: Duration = Duration::from_secs(25);

pub struct Router<B> {
    backend: B,
    tokens: Tokens,
    /// Viewers handed to each worker whose answer is not back yet, so concurrent joins spread out.
    in_flight: Mutex<HashMap<u32, u32>>,
    /// Per worker, the pid seen last and how often it changed.
    worker_pids: Mutex<HashMap<u32, (u32, u64)>>,
    /// What the HTTP server refused at its limits, shown in `/metrics`.
    refusals: Arc<Refusals>,
    /// What the media processes said of themselves last.
    registry: Arc<Registry>,
}

impl<B: Backend> Router<B> {
    pub fn new(backend: B, tokens: Tokens) -> Router<B> {
        Router {
            backend,
            tokens,
            in_flight: Mutex::new(HashMap::new()),
            worker_pids: Mutex::new(HashMap::new()),
            refusals: Arc::default(),
            registry: Arc::default(),
        }
    }

    /// What the router knows of the media processes without asking them; [`crate::registry::follow`] fills it.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The HTTP server's refusal counters, which `/metrics` reports.
    pub fn refusals(&self) -> Arc<Refusals> {
        self.refusals.clone()
    }

    /// For a long-poll (`GET /rooms?wait=VERSION`), the version the client saw, or the answer to a bad one;
    /// `None` for any other request. The HTTP server holds long-polls (see [`crate::http`]).
    pub fn long_poll(req: &HttpRequest) -> Option<Result<u64, HttpResponse>> {
        let (path, query) = req.url.split_once('?').unwrap_or((&req.url, ""));
        if req.method != "GET" || path != "/rooms" {
            return None;
        }
        let wait = query_param(query, "wait")?;
        Some(
            wait.parse()
                .map_err(|_| cors(HttpResponse::error(400, "wait must be a version number from a previous answer"))),
        )
    }

    /// The answer to `GET /rooms` for `list`.
    pub fn rooms_answer(list: &RoomList) -> HttpResponse {
        let body = serde_json::to_vec_pretty(list).expect("a room list always serializes");
        cors(HttpResponse::new(200, "application/json", body).with("Cache-Control", "no-store"))
    }

    /// A `GET /session/{id}/events` (the WHEP server-sent-events extension): the viewer session and the media id
    /// its events name, once the request is authorized and well formed, for the HTTP server to stream; `None`
    /// for any other request.
    pub fn event_stream(&self, req: &HttpRequest) -> Option<Result<(SessionId, String), HttpResponse>> {
        let (path, query) = req.url.split_once('?').unwrap_or((&req.url, ""));
        let id = path.strip_prefix("/session/")?.strip_suffix("/events")?;
        if req.method != "GET" {
            return None;
        }
        Some(self.event_target(req, id, query).map_err(cors))
    }

    /// The session and media id of a request to `/session/{id}/events`.
    fn event_target(&self, req: &HttpRequest, id: &str, query: &str) -> Result<(SessionId, String), HttpResponse> {
        self.authorized(req, query, Kind::View)?;
        let session = viewer_session(id)?;
        let mid = query_param(query, "mid").unwrap_or_else(|| DEFAULT_EVENTS_MID.to_string());
        let valid = !mid.is_empty()
            && mid.len() <= 32
            && mid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(HttpResponse::error(400, "mid is 1 to 32 letters, digits, '-' and '_'"));
        }
        Ok((session, mid))
    }

    /// The data of a `layers` event for a viewer of `room` whose video has media id `mid`, from `list`: the
    /// layers its room's publisher sends (none without simulcast), the highest bitrate first, all of them
    /// active (a layer that stops is no longer listed); `carried` names the room's own layer, what Auto gets
    /// without bandwidth estimation.
    pub fn layers_event(list: &RoomList, room: &RoomName, mid: &str) -> String {
        let layers = list.rooms.iter().find(|r| r.name == *room).map_or(&[][..], |r| r.layers.as_slice());
        let described: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                let mut e = serde_json::json!({ "encodingId": l.rid, "bitrate": (l.bitrate_kbps * 1000.0) as u64 });
                if let (Some(w), Some(h)) = (l.width, l.height) {
                    e["width"] = w.into();
                    e["height"] = h.into();
                }
                e
            })
            .collect();
        let carried = layers.iter().find(|l| l.carried).map(|l| l.rid.clone());
        let media = serde_json::json!({ "layers": described, "active": described, "inactive": [], "carried": carried });
        serde_json::json!({ mid: media }).to_string()
    }

    /// The room (not a layer's ring) whose viewer `session` is, asked of its worker; `404` if there is none.
    pub fn viewer_room(&self, session: SessionId) -> Result<RoomName, HttpResponse> {
        match self.backend.call(session.owner().into(), &FanoutRequest::Where { session }.into()) {
            Ok(Response::Room { room }) => Ok(room.base()),
            Ok(Response::Error { kind: ErrorKind::UnknownSession, .. }) | Err(ControlError::Io(_)) => {
                Err(HttpResponse::error(404, "no such viewer session"))
            }
            other => Err(answer_or_error(other, "fanout worker")),
        }
    }

    pub fn handle(&self, req: &HttpRequest) -> HttpResponse {
        cors(self.route(req))
    }

    fn route(&self, req: &HttpRequest) -> HttpResponse {
        let (path, query) = req.url.split_once('?').unwrap_or((&req.url, ""));
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method.as_str(), segments.as_slice()) {
            ("OPTIONS", _) => HttpResponse::new(204, "text/plain", "")
                .with("Accept-Post", "application/sdp")
                .with("Access-Control-Max-Age", "86400"),
            ("GET", [""]) | ("GET", ["index.html"]) => HttpResponse::new(200, "text/html; charset=utf-8", VIEWER_PAGE),
            ("GET", ["send"]) | ("GET", ["send.html"]) => {
                HttpResponse::new(200, "text/html; charset=utf-8", PUBLISHER_PAGE)
            }
            ("GET", ["healthz"]) => self.health(),
            ("GET", ["metrics"]) => self.metrics(),
            ("GET", ["rooms"]) => self.rooms(query),
            ("POST", ["session", id, "switch"]) => self.switch(req, id, query),
            ("POST", ["session", id, "layer"]) => self.layer(req, id, query),
            ("POST", ["session", id, "events"]) => self.events(req, id, query),
            ("POST", ["whip"]) => self.offer(req, query_param(query, "room"), Kind::Publish, query),
            ("POST", ["whip", room]) => self.offer(req, Some(room.to_string()), Kind::Publish, query),
            ("POST", ["whep"]) | ("POST", ["whap"]) => self.offer(req, query_param(query, "room"), Kind::View, query),
            ("POST", ["whep", room]) => self.offer(req, Some(room.to_string()), Kind::View, query),
            ("DELETE", ["session", id]) => self.delete(req, id, query),
            (_, ["session", _, "switch"]) | (_, ["session", _, "layer"]) => {
                HttpResponse::error(405, format!("method {} not allowed here", req.method))
                    .with("Allow", "POST, OPTIONS")
            }
            // A GET of the events is streamed by the HTTP server; one reaching the router is refused.
            (_, ["session", _, "events"]) => {
                HttpResponse::error(405, format!("method {} not allowed here", req.method))
                    .with("Allow", "GET, POST, OPTIONS")
            }
            ("PATCH", ["session", id]) => self.patch(req, id, query),
            (_, ["whip"]) | (_, ["whip", _]) | (_, ["whep"]) | (_, ["whep", _]) | (_, ["whap"]) => {
                HttpResponse::error(405, format!("method {} not allowed here", req.method))
                    .with("Allow", "POST, OPTIONS")
            }
            (_, ["session", _]) => HttpResponse::error(405, format!("method {} not allowed here", req.method))
                .with("Allow", "DELETE, PATCH, OPTIONS"),
            _ => HttpResponse::error(404, format!("no such resource: {path}")),
        }
    }

    fn authorized(&self, req: &HttpRequest, query: &str, kind: Kind) -> Result<(), HttpResponse> {
        let token = match kind {
            Kind::Publish => &self.tokens.publish,
            Kind::View => &self.tokens.view,
        };
        let Some(expected) = token else { return Ok(()) };
        let given = req
            .header("Authorization")
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(|t| t.trim().to_string())
            .or_else(|| query_param(query, "access_token"));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(unauthorized("wrong bearer token")),
            None => Err(unauthorized("a bearer token is required (Authorization: Bearer, or ?access_token=)")),
        }
    }

    fn offer(&self, req: &HttpRequest, room: Option<String>, kind: Kind, query: &str) -> HttpResponse {
        if let Err(resp) = self.authorized(req, query, kind) {
            return resp;
        }
        let room = match room_name(room.as_deref().unwrap_or(DEFAULT_ROOM)) {
            Ok(room) => room,
            Err(resp) => return resp,
        };
        let content_type = req.header("Content-Type").unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/sdp") {
            return HttpResponse::error(415, format!("expected Content-Type application/sdp, got `{content_type}`"))
                .with("Accept-Post", "application/sdp");
        }
        let Some(body) = &req.body else {
            return HttpResponse::error(413, format!("SDP offer larger than {MAX_BODY} bytes"));
        };
        let Ok(offer) = std::str::from_utf8(body) else {
            return HttpResponse::error(400, "SDP offer is not UTF-8");
        };
        if !offer.starts_with("v=0") {
            return HttpResponse::error(400, "malformed SDP offer: it must start with v=0");
        }
        let offer = offer.to_string();
        match kind {
            Kind::Publish => {
                let publish = IngestRequest::Publish { room, offer }.into();
                answer_or_error(self.backend.call(Target::Ingest, &publish), "ingest")
            }
            Kind::View => {
                let (session, answer) = match self.view(FanoutRequest::View { room: room.clone(), offer }.into()) {
                    Ok(created) => created,
                    Err(refused) => return refused,
                };
                if let Err(refused) = self.watch(&room) {
                    // Ingest holds no room for it (its room limit): the viewer would wait for a ring that
                    // never comes. Undo the session and say why.
                    self.close_viewer(session);
                    return refused;
                }
                // The WHEP layer extension: where a player picks a simulcast layer of the room; and the
                // server-sent-events extension, where it learns of the layers (for the answer's video).
                let layer = format!("</session/{session}/layer>; rel=\"{WHEP_LAYER_REL}\"");
                let events = video_mid(&answer).map(|mid| {
                    format!("</session/{session}/events?mid={mid}>; rel=\"{WHEP_EVENTS_REL}\"; events=\"layers\"")
                });
                let resp = created(session, answer).with("Link", layer);
                match events {
                    Some(events) => resp.with("Link", events),
                    None => resp,
                }
            }
        }
    }

    /// Hands a viewer to the least-loaded worker that takes it: the new session and its SDP answer, or the
    /// answer to the client if no worker took it.
    fn view(&self, request: Request) -> Result<(SessionId, String), HttpResponse> {
        let mut candidates: Vec<(u32, u32)> = Vec::new();
        for index in self.backend.workers() {
            let target = Target::Worker(index);
            let status = match self.registry.status(target) {
                Some(s) => Some(s),
                None => match self.backend.call(target, &Request::Status) {
                    Ok(Response::Status(s)) => Some(s),
                    _ => None,
                },
            };
            if let Some(s) = status.filter(|s| s.accepting) {
                candidates.push((s.sessions, index));
            }
        }
        if candidates.is_empty() {
            return Err(HttpResponse::error(503, "no fanout worker is available").with("Retry-After", "1"));
        }
        let mut last = HttpResponse::error(503, "no fanout worker took the viewer").with("Retry-After", "1");
        while !candidates.is_empty() {
            let index = {
                let in_flight = self.in_flight.lock().expect("in_flight lock is never poisoned");
                let load = |(sessions, index): &(u32, u32)| sessions + in_flight.get(index).copied().unwrap_or(0);
                let best = candidates.iter().enumerate().min_by_key(|(_, c)| (load(c), c.1)).map(|(i, _)| i);
                candidates.remove(best.expect("candidates is not empty")).1
            };
            *self.in_flight.lock().expect("in_flight lock is never poisoned").entry(index).or_default() += 1;
            let result = self.backend.call(Target::Worker(index), &request);
            *self.in_flight.lock().expect("in_flight lock is never poisoned").entry(index).or_default() -= 1;
            match result {
                Ok(Response::Answer { session, answer }) if session.owner() == Owner::Worker(index) => {
                    self.registry.note_session(Target::Worker(index));
                    return Ok((session, answer));
                }
                Ok(Response::Answer { session, .. }) => {
                    tracing::warn!(worker = index, %session, "worker answered with another process's session");
                    return Err(HttpResponse::error(502, "fanout worker answered with a session it does not own"));
                }
                Ok(Response::Error { kind: ErrorKind::Unavailable, message }) => {
                    last = HttpResponse::error(503, message).with("Retry-After", "1");
                }
                Err(e) => {
                    tracing::warn!(worker = index, error = %e, "worker did not answer; trying another");
                }
                other => return Err(answer_or_error(other, "fanout worker")),
            }
        }
        Err(last)
    }

    /// Tells ingest a viewer was accepted for `room`, so its ring exists and the slate plays if nobody
    /// publishes. Only an accepted viewer does: a refused request never makes a room. Viewing does not depend
    /// on ingest running: a viewer of a room whose ingest is down (or not yet told) waits for the ring to
    /// appear. Ingest refusing the room (its room limit) is the error to answer the viewer with.
    fn watch(&self, room: &RoomName) -> Result<(), HttpResponse> {
        match self.backend.call(Target::Ingest, &IngestRequest::Watch { room: room.clone() }.into()) {
            Ok(Response::Done) => Ok(()),
            Err(e) => {
                tracing::debug!(%room, error = %e, "ingest not told of a viewer");
                Ok(())
            }
            refused => Err(answer_or_error(refused, "ingest")),
        }
    }

    /// Closes a viewer session signaling made and must take back; the worker frees it either way.
    fn close_viewer(&self, session: SessionId) {
        if let Err(e) = self.backend.call(session.owner().into(), &Request::Close { session }) {
            tracing::warn!(%session, error = %e, "could not close a viewer session taken back");
        }
    }

    fn switch(&self, req: &HttpRequest, id: &str, query: &str) -> HttpResponse {
        if let Err(resp) = self.authorized(req, query, Kind::View) {
            return resp;
        }
        let (room, layer) = match query_param(query, "room") {
            Some(room) => (room, query_param(query, "layer")),
            None => {
                #[derive(serde::Deserialize)]
                struct Body {
                    room: String,
                    #[serde(default)]
                    layer: Option<String>,
                }
                let body = req.body.as_deref().unwrap_or_default();
                match serde_json::from_slice::<Body>(body) {
                    Ok(b) => (b.room, b.layer),
                    Err(e) => {
                        let expected = r#"{"room": "NAME"} or {"room": "NAME", "layer": "RID"}"#;
                        return HttpResponse::error(400, format!("expected a JSON body {expected}: {e}"));
                    }
                }
            }
        };
        let room = match room_name(&room) {
            Ok(room) => room,
            Err(resp) => return resp,
        };
        let ring = match layer_ring(&room, layer.as_deref(), "layer") {
            Ok(ring) => ring,
            Err(resp) => return resp,
        };
        let session = match viewer_session(id) {
            Ok(session) => session,
            Err(resp) => return resp,
        };
        // The session first, so an unknown session makes no room.
        match self.backend.call(session.owner().into(), &Request::Check { session }) {
            Ok(Response::Done) => {}
            Ok(Response::Error { kind: ErrorKind::UnknownSession, .. }) | Err(ControlError::Io(_)) => {
                return HttpResponse::error(404, "no such viewer session");
            }
            other => return answer_or_error(other, "fanout worker"),
        }
        self.move_viewer(session, &room, ring)
    }

    /// `POST /session/{id}/layer`, the WHEP layer extension: `{"encodingId": "RID"}` moves the viewer to that
    /// simulcast layer of its room, `{}` (or `"encodingId": null`) back to the room's own layer; `mediaId` is
    /// taken and not needed (a room has one video).
    fn layer(&self, req: &HttpRequest, id: &str, query: &str) -> HttpResponse {
        if let Err(resp) = self.authorized(req, query, Kind::View) {
            return resp;
        }
        // `mediaId` and any other member are let be.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            #[serde(default)]
            encoding_id: Option<String>,
        }
        let body = req.body.as_deref().unwrap_or_default();
        let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
        let rid = match serde_json::from_slice::<Body>(body) {
            Ok(b) => b.encoding_id,
            Err(e) => return HttpResponse::error(400, format!(r#"expected a JSON body {{"encodingId": "RID"}}: {e}"#)),
        };
        let session = match viewer_session(id) {
            Ok(session) => session,
            Err(resp) => return resp,
        };
        let room = match self.viewer_room(session) {
            Ok(room) => room,
            Err(resp) => return resp,
        };
        let ring = match layer_ring(&room, rid.as_deref(), "encodingId") {
            Ok(ring) => ring,
            Err(resp) => return resp,
        };
        self.move_viewer(session, &room, ring)
    }

    /// `POST /session/{id}/events`, the WHEP server-sent-events extension: a JSON list of the events wanted
    /// (`["layers"]`; events this server does not send are let be); `201` with the `Location` of the event
    /// stream, which `GET` streams.
    fn events(&self, req: &HttpRequest, id: &str, query: &str) -> HttpResponse {
        let (session, mid) = match self.event_target(req, id, query) {
            Ok(target) => target,
            Err(resp) => return resp,
        };
        let body = req.body.as_deref().unwrap_or_default();
        match serde_json::from_slice::<Vec<String>>(body) {
            Ok(events) if events.len() <= MAX_EVENT_NAMES && events.iter().all(|e| e.len() <= 64) => {}
            _ => {
                return HttpResponse::error(
                    400,
                    format!(r#"expected a JSON list of at most {MAX_EVENT_NAMES} event names, as ["layers"]"#),
                );
            }
        }
        if let Err(resp) = self.viewer_room(session) {
            return resp;
        }
        HttpResponse::new(201, "text/plain", "").with("Location", format!("/session/{session}/events?mid={mid}"))
    }

    /// Moves a viewer known to its worker to `ring` (`room`'s, or one of its layers'): the ring first, so a
    /// session is never moved to a ring ingest will not hold.
    fn move_viewer(&self, session: SessionId, room: &RoomName, ring: RoomName) -> HttpResponse {
        let target = session.owner().into();
        if let Err(refused) = self.watch(&ring) {
            return refused;
        }
        match self.backend.call(target, &FanoutRequest::Switch { session, room: ring.clone() }.into()) {
            Ok(Response::Done) => {
                let body = match ring.rid() {
                    Some(rid) => serde_json::json!({ "room": room, "layer": rid }),
                    None => serde_json::json!({ "room": room }),
                };
                HttpResponse::new(200, "application/json", body.to_string())
            }
            Ok(Response::Error { kind: ErrorKind::UnknownSession, .. }) | Err(ControlError::Io(_)) => {
                HttpResponse::error(404, "no such viewer session")
            }
            other => answer_or_error(other, "fanout worker"),
        }
    }

    /// `GET /rooms`: every room with a publisher or viewers, merged from ingest and the workers. A long-poll
    /// (`?wait=`) reaching the router is answered at once; the HTTP server is what holds it.
    fn rooms(&self, query: &str) -> HttpResponse {
        if query_param(query, "wait").is_some_and(|v| v.parse::<u64>().is_err()) {
            return HttpResponse::error(400, "wait must be a version number from a previous answer");
        }
        let body = serde_json::to_vec_pretty(&self.room_list()).expect("a room list always serializes");
        HttpResponse::new(200, "application/json", body).with("Cache-Control", "no-store")
    }

    pub fn room_list(&self) -> RoomList {
        self.room_list_complete().0
    }

    /// The room list, merged from what ingest and every worker said last, and whether all of them were in the
    /// registry (a process that is not is asked directly).
    pub fn room_list_complete(&self) -> (RoomList, bool) {
        let mut complete = true;
        let mut views = Vec::new();
        for target in std::iter::once(Target::Ingest).chain(self.backend.workers().into_iter().map(Target::Worker)) {
            match self.registry.rooms(target) {
                Some(rooms) => views.push(rooms),
                None => {
                    complete = false;
                    if let Ok(Response::Rooms { rooms }) = self.backend.call(target, &Request::Rooms) {
                        views.push(rooms);
                    }
                }
            }
        }
        (crate::registry::room_list(views), complete)
    }

    /// `PATCH` on a session (RFC 9725 section 4.3): trickled candidates are accepted with `204`. The media
    /// processes are ICE lite, so they need no remote candidates (they answer the client's checks from
    /// wherever they come); the request only has to be valid and name a live session. ICE restarts
    /// (`If-Match: *`) are refused with `422`, as the RFC asks of a session that supports trickle only:
    /// a client whose path broke posts a new offer.
    fn patch(&self, req: &HttpRequest, id: &str, query: &str) -> HttpResponse {
        let Ok(session) = id.parse::<SessionId>() else {
            return HttpResponse::error(404, "no such session");
        };
        let kind = Kind::of(session);
        if let Err(resp) = self.authorized(req, query, kind) {
            return resp;
        }
        let content_type = req.header("Content-Type").unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/trickle-ice-sdpfrag") {
            return HttpResponse::error(
                415,
                format!("expected Content-Type application/trickle-ice-sdpfrag, got `{content_type}`"),
            )
            .with("Accept-Patch", "application/trickle-ice-sdpfrag");
        }
        let Some(body) = &req.body else {
            return HttpResponse::error(413, format!("SDP fragment larger than {MAX_BODY} bytes"));
        };
        let Ok(frag) = std::str::from_utf8(body) else {
            return HttpResponse::error(400, "SDP fragment is not UTF-8");
        };
        if let Some(line) = frag.lines().map(str::trim).find(|l| !l.is_empty() && !is_sdpfrag_line(l)) {
            return HttpResponse::error(400, format!("not a trickle-ice-sdpfrag line: `{line}`"));
        }
        let if_match = req.header("If-Match").map(str::trim);
        if if_match == Some("*") {
            return HttpResponse::error(422, "ICE restart is not supported; start a new session with a new offer");
        }
        if let Some(tag) = if_match {
            if tag != format!("\"{session}\"") {
                return HttpResponse::error(412, "If-Match does not match the session's ETag");
            }
        }
        match self.backend.call(session.owner().into(), &Request::Check { session }) {
            Ok(Response::Done) => HttpResponse::new(204, "text/plain", ""),
            Ok(Response::Error { kind: ErrorKind::UnknownSession, .. }) | Err(ControlError::Io(_)) => {
                HttpResponse::error(404, "no such session")
            }
            other => answer_or_error(other, "media process"),
        }
    }

    fn delete(&self, req: &HttpRequest, id: &str, query: &str) -> HttpResponse {
        let Ok(session) = id.parse::<SessionId>() else {
            return HttpResponse::error(404, "no such session");
        };
        if let Err(resp) = self.authorized(req, query, Kind::of(session)) {
            return resp;
        }
        match self.backend.call(session.owner().into(), &Request::Close { session }) {
            Ok(Response::Closed) => HttpResponse::new(200, "text/plain", ""),
            Ok(Response::Error { kind: ErrorKind::UnknownSession, .. }) => HttpResponse::error(404, "no such session"),
            Ok(other) => answer_or_error(Ok(other), "media process"),
            // The process that held the session is gone, and the session with it.
            Err(ControlError::Io(_)) => HttpResponse::error(404, "no such session (its process is not running)"),
            Err(e) => HttpResponse::error(502, format!("media process failed: {e}")),
        }
    }

    /// `GET /metrics`: every process's counters, in the Prometheus text format.
    fn metrics(&self) -> HttpResponse {
        let ask = |target| match self.backend.call(target, &Request::Metrics) {
            Ok(Response::Metrics { metrics }) => Some(*metrics),
            _ => None,
        };
        let workers: Vec<(u32, Option<ProcessMetrics>)> =
            self.backend.workers().into_iter().map(|i| (i, ask(Target::Worker(i)))).collect();
        let mut restarts = Vec::new();
        {
            let mut pids = self.worker_pids.lock().expect("worker_pids lock is never poisoned");
            for index in workers.iter().map(|(i, _)| *i) {
                if let Ok(Response::Status(s)) = self.backend.call(Target::Worker(index), &Request::Status) {
                    let seen = pids.entry(index).or_insert((s.pid, 0));
                    if seen.0 != s.pid {
                        *seen = (s.pid, seen.1 + 1);
                    }
                }
            }
            restarts.extend(pids.iter().map(|(i, (_, n))| (*i, *n)));
        }
        let scrape = crate::metrics::Scrape {
            signaling: deadsfu_runtime::process::own_usage(),
            ingest: ask(Target::Ingest),
            workers,
            restarts,
            viewers: self.room_list().rooms.into_iter().map(|r| (r.name, r.viewers)).collect(),
            layer_viewers: self
                .room_list()
                .rooms
                .into_iter()
                .flat_map(|r| r.layers.into_iter().map(move |l| (r.name.clone(), l.rid, l.viewers)))
                .collect(),
            http_refused: self.refusals.snapshot(),
        };
        HttpResponse::new(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::render(&scrape),
        )
    }

    fn health(&self) -> HttpResponse {
        let status = |target| match self.backend.call(target, &Request::Status) {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        };
        let ingest = status(Target::Ingest).map(|s: ProcessStatus| Pid { pid: s.pid });
        let workers: Vec<WorkerHealth> = self
            .backend
            .workers()
            .into_iter()
            .filter_map(|i| status(Target::Worker(i)))
            .map(|s| WorkerHealth { index: s.index, pid: s.pid, viewers: s.sessions, accepting: s.accepting })
            .collect();
        let ok = ingest.is_some() && workers.iter().any(|w| w.accepting);
        let health = Health { ok, signaling: Pid { pid: std::process::id() }, ingest, workers };
        let body = serde_json::to_vec_pretty(&health).expect("health always serializes");
        HttpResponse::new(if ok { 200 } else { 503 }, "application/json", body)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Publish,
    View,
}

impl Kind {
    /// What a session does, which decides the token that guards it: ingest holds publishers, workers viewers.
    fn of(session: SessionId) -> Kind {
        match session.owner() {
            Owner::Ingest => Kind::Publish,
            Owner::Worker(_) => Kind::View,
        }
    }
}

/// The ring a viewer of `room` moves to: simulcast layer `rid`'s alone (ingest refuses one that does not
/// flow), or without one the room's own; a bad rid is the answer, naming the request's `field`.
fn layer_ring(room: &RoomName, rid: Option<&str>, field: &str) -> Result<RoomName, HttpResponse> {
    match rid.map(|rid| room.layer(rid)) {
        None => Ok(room.clone()),
        Some(Ok(ring)) => Ok(ring),
        Some(Err(e)) => Err(HttpResponse::error(400, format!("bad {field}: {e}"))),
    }
}

/// The link relation of the WHEP layer extension.
const WHEP_LAYER_REL: &str = "urn:ietf:params:whep:ext:core:layer";
/// The link relation of the WHEP server-sent-events extension.
const WHEP_EVENTS_REL: &str = "urn:ietf:params:whep:ext:core:server-sent-events";
/// The media id events name when the request names none (what a browser's first video after its audio has).
const DEFAULT_EVENTS_MID: &str = "1";
/// Most event names a `POST /session/{id}/events` may list.
const MAX_EVENT_NAMES: usize = 16;

/// A viewer session's id (a worker's), or `404`.
fn viewer_session(id: &str) -> Result<SessionId, HttpResponse> {
    id.parse::<SessionId>()
        .ok()
        .filter(|s| matches!(s.owner(), Owner::Worker(_)))
        .ok_or_else(|| HttpResponse::error(404, "no such viewer session"))
}

/// The media id of the first video section of an SDP answer, if it names one fit for a URL.
fn video_mid(sdp: &str) -> Option<&str> {
    let video = sdp.split("\nm=").skip(1).find(|m| m.starts_with("video "))?;
    let mid = video.lines().find_map(|l| l.trim_end().strip_prefix("a=mid:"))?;
    let fits =
        !mid.is_empty() && mid.len() <= 32 && mid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    fits.then_some(mid)
}

/// A room name from a URL or a body, or the answer to a bad one. The one place signaling checks room names:
/// from here on they travel as [`RoomName`].
fn room_name(name: &str) -> Result<RoomName, HttpResponse> {
    RoomName::new(name).map_err(|e| HttpResponse::error(400, format!("bad room name: {e}")))
}

/// `201 Created` for a new session, its URL in `Location`.
fn created(session: SessionId, answer: String) -> HttpResponse {
    HttpResponse::new(201, "application/sdp", answer)
        .with("Location", format!("/session/{session}"))
        .with("ETag", format!("\"{session}\""))
}

fn answer_or_error(result: Result<Response, ControlError>, who: &str) -> HttpResponse {
    match result {
        Ok(Response::Answer { session, answer }) => created(session, answer),
        Ok(Response::Error { kind, message }) => {
            let status = match kind {
                ErrorKind::BadRequest | ErrorKind::BadOffer => 400,
                ErrorKind::NoCommonCodec => 406,
                ErrorKind::RoomBusy => 409,
                ErrorKind::UnknownLayer => 404,
                ErrorKind::Forbidden => 403,
                ErrorKind::UnknownSession => 404,
                ErrorKind::Unavailable => 503,
                ErrorKind::WrongRole | ErrorKind::Internal => 500,
            };
            let resp = HttpResponse::error(status, message);
            // A limit reached or a process stopping: waiting helps.
            if status == 503 {
                return resp.with("Retry-After", "1");
            }
            resp
        }
        Ok(other) => HttpResponse::error(502, format!("{who} answered out of turn: {other:?}")),
        Err(ControlError::Io(e)) => {
            HttpResponse::error(503, format!("{who} is not running ({e})")).with("Retry-After", "1")
        }
        Err(e) => HttpResponse::error(502, format!("{who} failed: {e}")),
    }
}

/// Lines a trickle-ice-sdpfrag (RFC 8840) may carry: ICE credentials and options, media and mid lines that
/// say where candidates belong, candidates, and the end-of-candidates marker.
fn is_sdpfrag_line(line: &str) -> bool {
    ["a=ice-ufrag:", "a=ice-pwd:", "a=ice-options:", "m=", "a=mid:", "a=candidate:", "a=end-of-candidates", "c="]
        .iter()
        .any(|p| line.starts_with(p))
}

/// A client or server error with a one-line reason and the CORS headers, for answers made outside the router.
pub fn error_response(status: u16, reason: impl std::fmt::Display) -> HttpResponse {
    cors(HttpResponse::error(status, reason))
}

fn unauthorized(reason: &str) -> HttpResponse {
    HttpResponse::error(401, reason).with("WWW-Authenticate", "Bearer")
}

fn cors(resp: HttpResponse) -> HttpResponse {
    resp.with("Access-Control-Allow-Origin", "*")
        .with("Access-Control-Allow-Methods", "GET, POST, PATCH, DELETE, OPTIONS")
        .with("Access-Control-Allow-Headers", "Authorization, Content-Type, If-Match")
        .with("Access-Control-Expose-Headers", "Location, ETag, Accept-Post, Link")
}

/// The first value of `name` in a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares secrets in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use shm_proto::control::{Role, RoomStatus, Update};

    use super::*;

    /// A backend with `workers` fanout workers that count their sessions, and an ingest.
    struct Fake {
        sessions: Mutex<HashMap<Target, u32>>,
        workers: Vec<u32>,
        ingest_up: bool,
        /// Ingest refuses rooms (as at its room limit).
        ingest_full: bool,
        /// Ingest refuses every layer's ring (no publisher sends simulcast).
        no_layers: bool,
        /// Workers answer with sessions named for worker 9.
        foreign_answers: bool,
        /// Every request, in order.
        log: Mutex<Vec<(Target, Request)>>,
    }

    impl Fake {
        fn new(workers: u32) -> Fake {
            Fake {
                sessions: Mutex::new(HashMap::new()),
                workers: (0..workers).collect(),
                ingest_up: true,
                ingest_full: false,
                no_layers: false,
                foreign_answers: false,
                log: Mutex::new(Vec::new()),
            }
        }

        /// The requests of one kind, with their targets.
        fn sent(&self, matches: impl Fn(&Request) -> bool) -> Vec<(Target, Request)> {
            self.log.lock().unwrap().iter().filter(|(_, r)| matches(r)).cloned().collect()
        }
    }

    impl Backend for Fake {
        /// Answers as a media process would, through the wire format, so what cannot be framed fails here too.
        fn call(&self, target: Target, request: &Request) -> Result<Response, ControlError> {
            let resp = self.answer(target, request)?;
            let mut wire = Vec::new();
            shm_proto::control::write_frame(&mut wire, &shm_proto::control::Envelope { id: 1, msg: resp })?;
            Ok(shm_proto::control::read_frame::<Response>(&mut wire.as_slice())?.msg)
        }

        fn workers(&self) -> Vec<u32> {
            self.workers.clone()
        }
    }

    impl Fake {
        fn answer(&self, target: Target, request: &Request) -> Result<Response, ControlError> {
            self.log.lock().unwrap().push((target, request.clone()));
            if target == Target::Ingest && !self.ingest_up {
                return Err(ControlError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
            }
            if let (Target::Ingest, Request::Ingest(IngestRequest::Watch { .. }), true) =
                (target, request, self.ingest_full)
            {
                let message = "this server holds its limit of 1 rooms".into();
                return Ok(Response::Error { kind: ErrorKind::Unavailable, message });
            }
            if let (Request::Ingest(IngestRequest::Watch { room }), true) = (request, self.no_layers) {
                if let Some(rid) = room.rid() {
                    let message = format!("room {} has no simulcast layer {rid}", room.base());
                    return Ok(Response::Error { kind: ErrorKind::UnknownLayer, message });
                }
            }
            let mut sessions = self.sessions.lock().unwrap();
            let n = sessions.entry(target).or_default();
            Ok(match request {
                Request::Status => Response::Status(ProcessStatus {
                    role: if target == Target::Ingest { Role::Ingest } else { Role::Fanout },
                    index: match target {
                        Target::Worker(i) => i,
                        Target::Ingest => 0,
                    },
                    pid: 1,
                    sessions: *n,
                    accepting: true,
                }),
                Request::Ingest(IngestRequest::Publish { offer, .. })
                | Request::Fanout(FanoutRequest::View { offer, .. })
                    if offer.contains("bad") =>
                {
                    Response::Error { kind: ErrorKind::BadOffer, message: "bad offer".into() }
                }
                Request::Ingest(IngestRequest::Publish { .. }) | Request::Fanout(FanoutRequest::View { .. }) => {
                    *n += 1;
                    let owner = if self.foreign_answers { Owner::Worker(9) } else { owner(target) };
                    Response::Answer { session: id(owner, *n), answer: FAKE_ANSWER.into() }
                }
                // Each process knows its own first session only.
                Request::Close { session }
                | Request::Fanout(FanoutRequest::Switch { session, .. })
                | Request::Fanout(FanoutRequest::Where { session })
                | Request::Check { session }
                    if *session != id(owner(target), 1) =>
                {
                    Response::Error { kind: ErrorKind::UnknownSession, message: "no".into() }
                }
                Request::Close { .. } => Response::Closed,
                // The viewer reads a layer's ring of room b.
                Request::Fanout(FanoutRequest::Where { .. }) => {
                    Response::Room { room: RoomName::new("b").unwrap().layer("m").unwrap() }
                }
                Request::Fanout(FanoutRequest::Switch { .. })
                | Request::Ingest(IngestRequest::Watch { .. })
                | Request::Check { .. } => Response::Done,
                Request::Metrics => {
                    Response::Metrics { metrics: Box::new(ProcessMetrics { sessions: *n, ..Default::default() }) }
                }
                Request::Subscribe => {
                    Response::Error { kind: ErrorKind::WrongRole, message: "subscriptions are not faked".into() }
                }
                Request::Rooms => Response::Rooms {
                    rooms: match target {
                        Target::Ingest => vec![RoomStatus {
                            live: true,
                            codecs: vec!["H264".into()],
                            bitrate_bps: 1_500_000,
                            ..RoomStatus::new(RoomName::new("a").unwrap())
                        }],
                        Target::Worker(_) => {
                            vec![RoomStatus { viewers: *n, ..RoomStatus::new(RoomName::new("a").unwrap()) }]
                        }
                    },
                },
            })
        }
    }

    /// The `n`th session a fake process made.
    fn id(owner: Owner, n: u32) -> SessionId {
        let mut token = [0; shm_proto::TOKEN_LEN];
        token[shm_proto::TOKEN_LEN - 4..].copy_from_slice(&n.to_be_bytes());
        SessionId::new(owner, token)
    }

    fn owner(target: Target) -> Owner {
        match target {
            Target::Ingest => Owner::Ingest,
            Target::Worker(k) => Owner::Worker(k),
        }
    }

    /// The text forms of the first and second sessions of ingest and worker 0.
    const I1: &str = "i-000000000000000000000001";
    const I2: &str = "i-000000000000000000000002";
    const W1: &str = "w0-000000000000000000000001";
    const W2: &str = "w0-000000000000000000000002";

    fn req(method: &str, url: &str, content_type: Option<&str>, body: &str) -> HttpRequest {
        let mut headers = Vec::new();
        if let Some(ct) = content_type {
            headers.push(("Content-Type".to_string(), ct.to_string()));
        }
        HttpRequest { method: method.into(), url: url.into(), headers, body: Some(body.as_bytes().to_vec()) }
    }

    impl HttpRequest {
        fn with_url(mut self, url: &str) -> HttpRequest {
            self.url = url.into();
            self
        }
    }

    fn sdp(method: &str, url: &str) -> HttpRequest {
        req(method, url, Some("application/sdp"), "v=0\r\n")
    }

    #[test]
    fn publish_and_view_answer_with_location() {
        let r = Router::new(Fake::new(2), Tokens::default());
        let resp = r.handle(&sdp("POST", "/whip/room1"));
        assert_eq!(resp.status, 201);
        assert_eq!(resp.header("Location"), Some(format!("/session/{I1}").as_str()));
        assert_eq!(resp.header("ETag"), Some(format!("\"{I1}\"").as_str()));
        assert!(resp.header("ETag").is_some());
        assert_eq!(resp.header("Content-Type"), Some("application/sdp"));
        assert_eq!(resp.header("Access-Control-Allow-Origin"), Some("*"));
        let a = r.handle(&sdp("POST", "/whep/room1"));
        let b = r.handle(&sdp("POST", "/whep/room1"));
        assert_eq!(a.status, 201);
        assert_eq!(b.status, 201);
        let (la, lb) = (a.header("Location").unwrap(), b.header("Location").unwrap());
        let worker = |l: &str| l.trim_start_matches("/session/").parse::<SessionId>().unwrap().owner();
        assert_ne!(worker(la), worker(lb), "consecutive viewers go to different workers: {la} {lb}");
    }

    #[test]
    fn deadsfu_compatible_urls() {
        let r = Router::new(Fake::new(1), Tokens::default());
        assert_eq!(r.handle(&sdp("POST", "/whip?room=abc")).status, 201);
        assert_eq!(r.handle(&sdp("POST", "/whap?room=abc")).status, 201);
        assert_eq!(r.handle(&sdp("POST", "/whap")).status, 201, "room defaults to mainroom");
        assert_eq!(r.handle(&sdp("POST", "/whip?room=a%2Fb")).status, 400);
    }

    #[test]
    fn client_mistakes_get_4xx_with_reason() {
        let r = Router::new(Fake::new(1), Tokens::default());
        let cases = [
            (req("POST", "/whip/a", Some("text/plain"), "v=0"), 415),
            (req("POST", "/whip/a", None, "v=0"), 415),
            (req("POST", "/whip/a", Some("application/sdp"), "hello"), 400),
            (req("POST", "/whip/a", Some("application/sdp"), "v=0 bad"), 400),
            (sdp("POST", "/whip/a%2Fb"), 400),
            (sdp("POST", &format!("/whip/{}", "x".repeat(65))), 400),
            (sdp("POST", "/whip/a/b"), 404),
            (sdp("DELETE", &format!("/session/{I2}")), 404),
            (sdp("DELETE", "/session/i-0001"), 404),
            (sdp("DELETE", "/session/../../etc"), 404),
            (sdp("DELETE", "/session/zz-01"), 404),
            (sdp("GET", "/nope"), 404),
            (sdp("PUT", "/whip/a"), 405),
        ];
        for (request, status) in cases {
            let resp = r.handle(&request);
            assert_eq!(resp.status, status, "{} {}", request.method, request.url);
            assert!(!resp.body.is_empty(), "{} {} has a reason", request.method, request.url);
        }
        let mut big = sdp("POST", "/whip/a");
        big.body = None;
        assert_eq!(r.handle(&big).status, 413);
        // Nothing was lost: a good request still works.
        assert_eq!(r.handle(&sdp("POST", "/whip/a")).status, 201);
        assert_eq!(r.handle(&sdp("DELETE", &format!("/session/{I1}"))).status, 200);
    }

    #[test]
    fn bearer_token() {
        let both = Tokens { publish: Some("s3cret".into()), view: Some("s3cret".into()) };
        let r = Router::new(Fake::new(1), both);
        let resp = r.handle(&sdp("POST", "/whip/a"));
        assert_eq!(resp.status, 401);
        assert_eq!(resp.header("WWW-Authenticate"), Some("Bearer"));
        let mut wrong = sdp("POST", "/whip/a");
        wrong.headers.push(("Authorization".into(), "Bearer nope".into()));
        assert_eq!(r.handle(&wrong).status, 401);
        let mut right = sdp("POST", "/whip/a");
        right.headers.push(("authorization".into(), "Bearer s3cret".into()));
        assert_eq!(r.handle(&right).status, 201);
        assert_eq!(r.handle(&sdp("POST", "/whep/a?access_token=s3cret")).status, 201);
        assert_eq!(r.handle(&sdp("DELETE", &format!("/session/{I1}"))).status, 401);
        // Pages and health need no token.
        assert_eq!(r.handle(&sdp("GET", "/")).status, 200);
    }

    #[test]
    fn separate_publish_and_view_tokens() {
        let r = Router::new(Fake::new(1), Tokens { publish: Some("P".into()), view: Some("V".into()) });
        assert_eq!(r.handle(&sdp("POST", "/whip/a?access_token=V")).status, 401);
        assert_eq!(r.handle(&sdp("POST", "/whep/a?access_token=P")).status, 401);
        assert_eq!(r.handle(&sdp("POST", "/whip/a?access_token=P")).status, 201);
        assert_eq!(r.handle(&sdp("POST", "/whep/a?access_token=V")).status, 201);
        assert_eq!(r.handle(&sdp("DELETE", &format!("/session/{W1}?access_token=P"))).status, 401);
        assert_eq!(r.handle(&sdp("DELETE", &format!("/session/{W1}?access_token=V"))).status, 200);
    }

    #[test]
    fn trickle_patch() {
        let r = Router::new(Fake::new(1), Tokens::default());
        let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 3b1c2e6c-1d9a-4d3a-9f1e-2c7b8b0e9f10.local 51234 typ host\r\na=end-of-candidates\r\n";
        let patch = |url: &str, ct: &str, if_match: Option<&str>, body: &str| {
            let mut r = req("PATCH", url, Some(ct), body);
            if let Some(tag) = if_match {
                r.headers.push(("If-Match".into(), tag.into()));
            }
            r
        };
        let ct = "application/trickle-ice-sdpfrag";
        let (w1, i1, w2) = (format!("/session/{W1}"), format!("/session/{I1}"), format!("/session/{W2}"));
        assert_eq!(r.handle(&patch(&w1, ct, Some(&format!("\"{W1}\"")), frag)).status, 204);
        assert_eq!(r.handle(&patch(&i1, ct, None, frag)).status, 204);
        assert_eq!(r.handle(&patch(&w1, ct, Some(&format!("\"{W2}\"")), frag)).status, 412);
        assert_eq!(r.handle(&patch(&w1, ct, Some("*"), frag)).status, 422);
        assert_eq!(r.handle(&patch(&w1, "application/sdp", None, frag)).status, 415);
        assert_eq!(r.handle(&patch(&w1, ct, None, "v=0\r\ns=-\r\n")).status, 400);
        assert_eq!(r.handle(&patch(&w2, ct, None, frag)).status, 404);
        assert_eq!(r.handle(&patch("/session/w0-0001", ct, None, frag)).status, 404);
    }

    #[test]
    fn switch_a_viewer() {
        let r = Router::new(Fake::new(1), Tokens::default());
        let json = |room: &str| {
            let url = format!("/session/{W1}/switch");
            req("POST", &url, Some("application/json"), &format!("{{\"room\":\"{room}\"}}"))
        };
        let resp = r.handle(&json("b"));
        assert_eq!(resp.status, 200);
        assert_eq!(String::from_utf8_lossy(&resp.body), r#"{"room":"b"}"#);
        assert_eq!(r.handle(&sdp("POST", &format!("/session/{W1}/switch?room=c"))).status, 200);
        assert_eq!(r.handle(&json("a/b")).status, 400);
        assert_eq!(r.handle(&req("POST", &format!("/session/{W1}/switch"), None, "room=b")).status, 400);
        assert_eq!(r.handle(&json("b").with_url(&format!("/session/{W2}/switch"))).status, 404);
        let publisher = json("b").with_url(&format!("/session/{I1}/switch"));
        assert_eq!(r.handle(&publisher).status, 404, "publishers do not switch");
        assert_eq!(r.handle(&sdp("GET", &format!("/session/{W1}/switch"))).status, 405);
        // The room is checked before the session, and only once: the worker is sent a valid name.
        assert_eq!(r.handle(&sdp("POST", "/session/w0-1/switch?room=a%2Fb")).status, 400);
        let switched = r.backend.sent(|r| matches!(r, Request::Fanout(FanoutRequest::Switch { .. })));
        let rooms: Vec<&str> = switched
            .iter()
            .map(|(_, r)| match r {
                Request::Fanout(FanoutRequest::Switch { room, .. }) => room.as_str(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(rooms, ["b", "c"]);
    }

    /// The rings signaling had ingest watch and workers switch viewers to, in order.
    /// What the fake processes answer every offer with: audio (mid 0) and video (mid v1).
    const FAKE_ANSWER: &str =
        "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v1\r\n";

    fn links(resp: &HttpResponse) -> Vec<&str> {
        resp.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("Link")).map(|(_, v)| v.as_str()).collect()
    }

    #[test]
    fn the_whep_events_extension_is_linked_subscribed_to_and_recognised_for_streaming() {
        let r = Router::new(Fake::new(1), Tokens::default());
        let resp = r.handle(&sdp("POST", "/whep/b"));
        let session = resp.header("Location").expect("a session").to_string();
        let events = format!(
            "<{session}/events?mid=v1>; rel=\"urn:ietf:params:whep:ext:core:server-sent-events\"; events=\"layers\""
        );
        assert_eq!(links(&resp)[1], events);
        assert_eq!(links(&r.handle(&sdp("POST", "/whip/p"))), Vec::<&str>::new(), "publishers get no events");
        // Subscribing: a JSON list of names; 201 with the stream's Location.
        let subscribe = |url: &str, body: &str| r.handle(&req("POST", url, Some("application/json"), body));
        let url = format!("{session}/events?mid=v1");
        let resp = subscribe(&url, r#"["layers","viewercount"]"#);
        assert_eq!((resp.status, resp.header("Location")), (201, Some(url.as_str())));
        let many = serde_json::to_string(&vec!["layers"; 17]).unwrap();
        for bad in ["", "{}", r#"["layers", 7]"#, many.as_str()] {
            assert_eq!(subscribe(&url, bad).status, 400, "{bad}");
        }
        assert_eq!(subscribe(&format!("/session/{W2}/events"), r#"["layers"]"#).status, 404, "a session not there");
        assert_eq!(subscribe(&format!("{session}/events?mid=a/b"), r#"["layers"]"#).status, 400);
        // The GET is the HTTP server's to stream: recognised with its session and media id (1 by default).
        let get = |url: &str| r.event_stream(&req("GET", url, None, ""));
        let (id, mid) = get(&url).expect("an event stream").expect("well formed");
        assert_eq!((format!("/session/{id}"), mid.as_str()), (session.clone(), "v1"));
        assert_eq!(get(&format!("{session}/events")).unwrap().unwrap().1, "1");
        assert_eq!(get(&format!("{session}/events?mid=")).unwrap().unwrap_err().status, 400);
        assert_eq!(get("/session/nope/events").unwrap().unwrap_err().status, 404);
        assert!(get(&format!("{session}/layer")).is_none() && get("/rooms").is_none());
        assert_eq!(r.handle(&req("GET", &url, None, "")).status, 405, "the router itself does not stream");
        // With a view token: EventSource sends no header, so ?access_token= it is.
        let tokens = Tokens { view: Some("v".into()), ..Tokens::default() };
        let r = Router::new(Fake::new(1), tokens);
        let denied = r.event_stream(&req("GET", &format!("{session}/events"), None, "")).unwrap();
        assert_eq!(denied.unwrap_err().status, 401);
        assert!(r.event_stream(&req("GET", &format!("{session}/events?access_token=v"), None, "")).unwrap().is_ok());
    }

    #[test]
    fn a_layers_event_lists_the_rooms_layers_under_the_video_media_id() {
        let layer = |rid: &str, kbps: f64, carried: bool, size: Option<(u16, u16)>| LayerEntry {
            rid: rid.into(),
            bitrate_kbps: kbps,
            carried,
            viewers: 0,
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
        };
        let room = |name: &str, layers: Vec<LayerEntry>| RoomEntry {
            name: RoomName::new(name).unwrap(),
            state: "live",
            codecs: Vec::new(),
            viewers: 1,
            bitrate_kbps: 0.0,
            upstream: None,
            layers,
        };
        let list = RoomList {
            version: 1,
            rooms: vec![
                room("a", vec![layer("h", 1500.5, true, Some((1280, 720))), layer("l", 150.0, false, None)]),
                room("b", Vec::new()),
            ],
        };
        let event = |name: &str| {
            let data = Router::<Fake>::layers_event(&list, &RoomName::new(name).unwrap(), "1");
            serde_json::from_str::<serde_json::Value>(&data).unwrap()
        };
        let layers = serde_json::json!([
            { "encodingId": "h", "bitrate": 1_500_500, "width": 1280, "height": 720 },
            { "encodingId": "l", "bitrate": 150_000 },
        ]);
        let a = serde_json::json!({ "1": { "layers": layers, "active": layers, "inactive": [], "carried": "h" } });
        assert_eq!(event("a"), a);
        let none = serde_json::json!({ "1": { "layers": [], "active": [], "inactive": [], "carried": null } });
        assert_eq!(event("b"), none, "a room without simulcast");
        assert_eq!(event("c"), none, "a room not listed");
    }

    #[test]
    fn the_video_mid_is_read_from_an_answer() {
        assert_eq!(video_mid(FAKE_ANSWER), Some("v1"));
        assert_eq!(video_mid("v=0\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"), None, "no video");
        assert_eq!(video_mid("v=0\r\nm=video 9 RTP/AVP 96\r\na=mid:a b\r\n"), None, "not fit for a URL");
    }

    fn watches_and_switches(r: &Router<Fake>) -> Vec<String> {
        let sent = r.backend.sent(|r| {
            matches!(r, Request::Ingest(IngestRequest::Watch { .. }) | Request::Fanout(FanoutRequest::Switch { .. }))
        });
        sent.into_iter()
            .map(|(_, r)| match r {
                Request::Ingest(IngestRequest::Watch { room }) => format!("watch {room}"),
                Request::Fanout(FanoutRequest::Switch { room, .. }) => format!("switch {room}"),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn switch_a_viewer_to_a_layer() {
        let r = Router::new(Fake::new(1), Tokens::default());
        let url = format!("/session/{W1}/switch");
        let resp = r.handle(&req("POST", &url, Some("application/json"), r#"{"room":"b","layer":"l"}"#));
        assert_eq!(resp.status, 200);
        assert_eq!(String::from_utf8_lossy(&resp.body), r#"{"layer":"l","room":"b"}"#);
        assert_eq!(r.handle(&sdp("POST", &format!("{url}?room=b&layer=h"))).status, 200);
        // The ring of the layer is watched and switched to; a bad rid is refused before anything is sent.
        for bad in [r#"{"room":"b","layer":"a/b"}"#, r#"{"room":"b","layer":""}"#, r#"{"room":"b~l"}"#] {
            assert_eq!(r.handle(&req("POST", &url, Some("application/json"), bad)).status, 400, "{bad}");
        }
        let rings = watches_and_switches(&r);
        assert_eq!(rings, ["watch b~l", "switch b~l", "watch b~h", "switch b~h"]);
    }

    #[test]
    fn the_whep_layer_extension_moves_a_viewer_between_its_rooms_layers() {
        let r = Router::new(Fake::new(1), Tokens::default());
        let resp = r.handle(&sdp("POST", "/whep/b"));
        assert_eq!(resp.status, 201);
        let session = resp.header("Location").expect("a session").to_string();
        let link = format!("<{session}/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\"");
        assert_eq!(resp.header("Link"), Some(link.as_str()));
        assert_eq!(r.handle(&sdp("POST", "/whip/p")).header("Link"), None, "publishers pick no layer");
        let layer = |body: &str| r.handle(&req("POST", &format!("{session}/layer"), Some("application/json"), body));
        let resp = layer(r#"{"mediaId":"1","encodingId":"l"}"#);
        assert_eq!(
            (resp.status, String::from_utf8_lossy(&resp.body).to_string()),
            (200, r#"{"layer":"l","room":"b"}"#.into())
        );
        for auto in ["{}", r#"{"encodingId":null}"#, ""] {
            let resp = layer(auto);
            assert_eq!(
                (resp.status, String::from_utf8_lossy(&resp.body).to_string()),
                (200, r#"{"room":"b"}"#.into()),
                "{auto:?}"
            );
        }
        for bad in [r#"{"encodingId":"a/b"}"#, r#"{"encodingId":7}"#, "nope"] {
            assert_eq!(layer(bad).status, 400, "{bad}");
        }
        let other = req("POST", &format!("/session/{W2}/layer"), Some("application/json"), r#"{"encodingId":"l"}"#);
        assert_eq!(r.handle(&other).status, 404);
        assert_eq!(r.handle(&sdp("GET", &format!("{session}/layer"))).status, 405);
        let moves = watches_and_switches(&r);
        let auto = ["watch b", "switch b"];
        assert_eq!(moves, [&["watch b", "watch b~l", "switch b~l"][..], &auto, &auto, &auto].concat());
    }

    #[test]
    fn a_layer_ingest_does_not_have_is_404() {
        let mut fake = Fake::new(1);
        fake.no_layers = true;
        let r = Router::new(fake, Tokens::default());
        let resp = r.handle(&sdp("POST", &format!("/session/{W1}/switch?room=b&layer=x")));
        assert_eq!(resp.status, 404);
        assert!(String::from_utf8_lossy(&resp.body).contains("no simulcast layer x"));
        assert!(r.backend.sent(|r| matches!(r, Request::Fanout(FanoutRequest::Switch { .. }))).is_empty());
    }

    #[test]
    fn a_viewer_ingest_holds_no_room_for_is_503_and_its_session_closed() {
        let mut fake = Fake::new(1);
        fake.ingest_full = true;
        let r = Router::new(fake, Tokens::default());
        let resp = r.handle(&sdp("POST", "/whep/new-room"));
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header("Retry-After"), Some("1"));
        assert!(String::from_utf8_lossy(&resp.body).contains("limit of 1 rooms"));
        let closed = r.backend.sent(|r| matches!(r, Request::Close { .. }));
        assert_eq!(closed, vec![(Target::Worker(0), Request::Close { session: id(Owner::Worker(0), 1) })]);
        // A switch to such a room is refused before the viewer is moved.
        let resp = r.handle(&sdp("POST", &format!("/session/{W1}/switch?room=other")));
        assert_eq!(resp.status, 503);
        assert!(r.backend.sent(|r| matches!(r, Request::Fanout(FanoutRequest::Switch { .. }))).is_empty());
    }

    #[test]
    fn a_switch_of_an_unknown_session_makes_no_room() {
        let r = Router::new(Fake::new(1), Tokens::default());
        assert_eq!(r.handle(&sdp("POST", &format!("/session/{W2}/switch?room=b"))).status, 404);
        assert!(r.backend.sent(|r| matches!(r, Request::Ingest(IngestRequest::Watch { .. }))).is_empty());
        // A known one: the room is made, then the viewer moved.
        assert_eq!(r.handle(&sdp("POST", &format!("/session/{W1}/switch?room=b"))).status, 200);
        let order: Vec<_> = r.backend.sent(|r| matches!(r, Request::Ingest(_) | Request::Fanout(_)));
        assert!(matches!(
            order[..],
            [
                (Target::Ingest, Request::Ingest(IngestRequest::Watch { .. })),
                (Target::Worker(0), Request::Fanout(FanoutRequest::Switch { .. }))
            ]
        ));
    }

    #[test]
    fn room_list_merges_processes_and_versions_change_with_viewers() {
        let r = Router::new(Fake::new(2), Tokens::default());
        let before = r.room_list();
        assert_eq!(before.rooms.len(), 1);
        assert_eq!(before.rooms[0].state, "live");
        assert_eq!(before.rooms[0].codecs, vec!["H264".to_string()]);
        assert_eq!(before.rooms[0].bitrate_kbps, 1500.0);
        assert_eq!(r.handle(&sdp("POST", "/whep/a")).status, 201);
        let after = r.room_list();
        assert_eq!(after.rooms[0].viewers, 1);
        assert_ne!(before.version, after.version);
        // A long-poll with an old version answers at once.
        let resp = r.handle(&sdp("GET", &format!("/rooms?wait={}", before.version)));
        assert_eq!(resp.status, 200);
        assert!(String::from_utf8_lossy(&resp.body).contains("\"viewers\": 1"));
        assert_eq!(r.handle(&sdp("GET", "/rooms?wait=x")).status, 400);
    }

    #[test]
    fn a_worker_answering_with_a_session_it_does_not_own_is_a_server_fault() {
        let mut fake = Fake::new(1);
        fake.foreign_answers = true;
        let r = Router::new(fake, Tokens::default());
        let resp = r.handle(&sdp("POST", "/whep/a"));
        assert_eq!(resp.status, 502);
        assert!(resp.header("Location").is_none());
        assert!(r.backend.sent(|r| matches!(r, Request::Ingest(_))).is_empty(), "no room made for it");
    }

    #[test]
    fn metrics_cover_every_process() {
        let r = Router::new(Fake::new(2), Tokens::default());
        assert_eq!(r.handle(&sdp("POST", "/whep/a")).status, 201);
        let resp = r.handle(&sdp("GET", "/metrics"));
        assert_eq!(resp.status, 200);
        let text = String::from_utf8_lossy(&resp.body);
        for process in ["signaling", "ingest", "fanout-0", "fanout-1"] {
            assert!(text.contains(&format!("deadsfu_up{{process=\"{process}\"}} 1")), "{process} in\n{text}");
        }
        assert!(text.contains("deadsfu_room_viewers{room=\"a\"} 1"), "{text}");
    }

    #[test]
    fn a_media_process_at_its_limit_is_503_with_retry_after() {
        let resp = answer_or_error(
            Ok(Response::Error { kind: ErrorKind::Unavailable, message: "limit of 5 sessions".into() }),
            "ingest",
        );
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header("Retry-After"), Some("1"));
        assert!(String::from_utf8_lossy(&resp.body).contains("limit of 5 sessions"));
    }

    #[test]
    fn no_worker_or_no_ingest_is_503() {
        let r = Router::new(Fake::new(0), Tokens::default());
        assert_eq!(r.handle(&sdp("POST", "/whep/a")).status, 503);
        assert_eq!(r.handle(&sdp("GET", "/healthz")).status, 503);
        let mut fake = Fake::new(1);
        fake.ingest_up = false;
        let r = Router::new(fake, Tokens::default());
        let resp = r.handle(&sdp("POST", "/whip/a"));
        assert_eq!(resp.status, 503);
        assert!(String::from_utf8_lossy(&resp.body).contains("ingest is not running"));
    }

    #[test]
    fn calls_on_a_session_go_to_the_process_that_owns_it() {
        let r = Router::new(Fake::new(4), Tokens::default());
        let session = id(Owner::Worker(3), 1);
        assert_eq!(r.handle(&sdp("DELETE", &format!("/session/{session}"))).status, 200);
        let ct = Some("application/trickle-ice-sdpfrag");
        let publisher = id(Owner::Ingest, 1);
        assert_eq!(r.handle(&req("PATCH", &format!("/session/{publisher}"), ct, "a=end-of-candidates")).status, 204);
        assert_eq!(r.handle(&sdp("POST", &format!("/session/{session}/switch?room=b"))).status, 200);
        let about_sessions = r.backend.sent(|r| {
            matches!(r, Request::Close { .. } | Request::Check { .. } | Request::Fanout(FanoutRequest::Switch { .. }))
        });
        let targets: Vec<Target> = about_sessions.iter().map(|(t, _)| *t).collect();
        let w3 = Target::Worker(3);
        assert_eq!(targets, [w3, Target::Ingest, w3, w3], "{about_sessions:?}");
        // Ids that are not a session's exact text form go nowhere.
        for bad in ["w3-1", "w03-000000000000000000000001", "W3-000000000000000000000001", "w-00", "i-"] {
            assert_eq!(r.handle(&sdp("DELETE", &format!("/session/{bad}"))).status, 404, "{bad}");
        }
        assert_eq!(r.backend.sent(|r| matches!(r, Request::Close { .. })).len(), 1);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(query_param("x=1&room=r%20s", "room").as_deref(), Some("r s"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    fn update(target: Target, sessions: u32, accepting: bool, rooms: Vec<RoomStatus>) -> Update {
        let (role, index) = match target {
            Target::Ingest => (Role::Ingest, 0),
            Target::Worker(i) => (Role::Fanout, i),
        };
        Update { seq: 1, status: ProcessStatus { role, index, pid: 7, sessions, accepting }, rooms }
    }

    fn viewers(room: &str, n: u32) -> Vec<RoomStatus> {
        vec![RoomStatus { viewers: n, ..RoomStatus::new(RoomName::new(room).unwrap()) }]
    }

    #[test]
    fn joins_and_the_room_list_come_from_the_registry() {
        let r = Router::new(Fake::new(3), Tokens::default());
        let registry = r.registry();
        let ingest = RoomStatus { live: true, ..RoomStatus::new(RoomName::new("z").unwrap()) };
        registry.update(Target::Ingest, update(Target::Ingest, 1, true, vec![ingest]));
        registry.update(Target::Worker(0), update(Target::Worker(0), 5, true, viewers("z", 5)));
        registry.update(Target::Worker(1), update(Target::Worker(1), 1, true, viewers("z", 1)));
        // Worker 2 is the least loaded, but stopping.
        registry.update(Target::Worker(2), update(Target::Worker(2), 0, false, Vec::new()));
        let owner = |resp: &HttpResponse| {
            let location = resp.header("Location").expect("a session");
            location.trim_start_matches("/session/").parse::<SessionId>().unwrap().owner()
        };
        for _ in 0..3 {
            let resp = r.handle(&sdp("POST", "/whep/z"));
            assert_eq!(resp.status, 201);
            assert_eq!(owner(&resp), Owner::Worker(1), "the least loaded worker that takes viewers");
        }
        // Each session handed out counts until the worker's own update comes: the fourth viewer (worker 1 at
        // 4 now) goes to worker 1, the fifth to worker 0.
        assert_eq!(owner(&r.handle(&sdp("POST", "/whep/z"))), Owner::Worker(1));
        assert_eq!(owner(&r.handle(&sdp("POST", "/whep/z"))), Owner::Worker(0));
        let (list, complete) = r.room_list_complete();
        assert!(complete);
        let shown: Vec<_> = list.rooms.iter().map(|r| (r.name.as_str(), r.state, r.viewers)).collect();
        assert_eq!(shown, [("z", "live", 6)], "the registry's view, not the fake processes' own");
        assert!(r.backend.sent(|r| matches!(r, Request::Status | Request::Rooms)).is_empty(), "nobody asked");
    }

    #[test]
    fn a_process_missing_from_the_registry_is_asked() {
        let r = Router::new(Fake::new(2), Tokens::default());
        r.registry().update(Target::Worker(0), update(Target::Worker(0), 9, true, viewers("a", 9)));
        let resp = r.handle(&sdp("POST", "/whep/a"));
        assert_eq!(resp.status, 201);
        let status_calls: Vec<Target> =
            r.backend.sent(|r| matches!(r, Request::Status)).into_iter().map(|(t, _)| t).collect();
        assert_eq!(status_calls, [Target::Worker(1)]);
        assert!(resp.header("Location").unwrap().contains("w1-"), "worker 1 holds fewer than 9");
        let (list, complete) = r.room_list_complete();
        assert!(!complete);
        let rooms_calls: Vec<Target> =
            r.backend.sent(|r| matches!(r, Request::Rooms)).into_iter().map(|(t, _)| t).collect();
        assert_eq!(rooms_calls, [Target::Ingest, Target::Worker(1)]);
        // Worker 0's 9 from the registry, worker 1's 1 from itself; ingest's live room.
        assert_eq!(list.rooms[0].viewers, 10);
        assert_eq!(list.rooms[0].state, "live");
        // Worker 0 drops out: it is asked again.
        r.registry().remove(Target::Worker(0));
        assert_eq!(r.room_list().rooms[0].viewers, 1);
    }
}
