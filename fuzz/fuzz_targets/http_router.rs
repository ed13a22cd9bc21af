//! Arbitrary HTTP requests into the signaling router, with a fake backend that answers as ingest and the
//! workers would, or fails the way they can (down, draining, refusing, answering out of turn).
//!
//! Input: one byte choosing the backend's behaviour, then the request as text:
//! `METHOD URL` on the first line, `Name: value` header lines up to an empty line, then the body.
//! A request whose body is absent (too large for signaling to read) is chosen by the top bit of that byte.
//!
//! Long-polls (`GET /rooms?wait=N`) are answered at once by the router; the HTTP server is what holds them.
#![no_main]

use std::sync::Mutex;

use deadsfu_signaling::router::{Backend, HttpRequest, Router, Target, Tokens};
use libfuzzer_sys::fuzz_target;
use shm_proto::control::{
    read_frame, write_frame, ControlError, Envelope, ErrorKind, FanoutRequest, IngestRequest, LayerStatus,
    ProcessMetrics, ProcessStatus, Request, Response, Role, RoomStatus, UpstreamState, UpstreamStatus,
};
use shm_proto::{Owner, RoomName, SessionId, TOKEN_LEN};

const ERROR_KINDS: [ErrorKind; 10] = [
    ErrorKind::BadRequest,
    ErrorKind::BadOffer,
    ErrorKind::NoCommonCodec,
    ErrorKind::RoomBusy,
    ErrorKind::Forbidden,
    ErrorKind::UnknownSession,
    ErrorKind::UnknownLayer,
    ErrorKind::Unavailable,
    ErrorKind::WrongRole,
    ErrorKind::Internal,
];

struct Fake {
    /// Bits 0-1: workers; bit 2: ingest down; bits 3-6: how session calls end (0: as asked).
    mood: u8,
    calls: Mutex<u32>,
}

impl Fake {
    fn answer(&self, target: Target, request: &Request) -> Result<Response, ControlError> {
        if target == Target::Ingest && self.mood & 0x04 != 0 {
            return Err(ControlError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        }
        let n = {
            let mut calls = self.calls.lock().expect("not poisoned");
            *calls += 1;
            *calls
        };
        let index = match target {
            Target::Worker(i) => i,
            Target::Ingest => 0,
        };
        let failure = match (self.mood >> 3) & 0x0F {
            0 => None,
            k if usize::from(k) <= ERROR_KINDS.len() => Some(Response::Error {
                kind: ERROR_KINDS[usize::from(k) - 1],
                message: format!("refused by {target:?}"),
            }),
            11 => Some(Response::Done),
            12 => Some(Response::Closed),
            13 => return Err(ControlError::Truncated),
            _ => return Err(ControlError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut))),
        };
        Ok(match request {
            Request::Status => Response::Status(ProcessStatus {
                role: if target == Target::Ingest { Role::Ingest } else { Role::Fanout },
                index,
                pid: 100 + index + n % 2,
                sessions: index * 3,
                accepting: index != 2,
            }),
            Request::Metrics => Response::Metrics {
                metrics: Box::new(ProcessMetrics { sessions: 2, datagrams_in: u64::from(n), ..Default::default() }),
            },
            Request::Rooms => Response::Rooms {
                rooms: vec![
                    RoomStatus {
                        live: true,
                        codecs: vec!["H264".into()],
                        layers: vec![LayerStatus {
                            rid: "h".into(),
                            bitrate_bps: 900_000,
                            carried: true,
                            width: Some(1280),
                            height: Some(720),
                        }],
                        ..RoomStatus::new(room("a"))
                    },
                    RoomStatus { viewers: index, ..RoomStatus::new(room("a").layer("l").expect("a rid")) },
                    RoomStatus {
                        slate: true,
                        viewers: index,
                        upstream: Some(UpstreamStatus { state: UpstreamState::Retrying, error: None, failures: 2 }),
                        ..RoomStatus::new(room("edge"))
                    },
                ],
            },
            _ if failure.is_some() => failure.expect("checked"),
            Request::Ingest(IngestRequest::Publish { .. }) => {
                Response::Answer { session: SessionId::new(Owner::Ingest, [0xab; TOKEN_LEN]), answer: "v=0\r\n".into() }
            }
            Request::Fanout(FanoutRequest::View { .. }) => {
                // Now and then a worker answers with a session it does not own.
                let owner = if n % 7 == 0 { Owner::Ingest } else { Owner::Worker(index) };
                Response::Answer { session: SessionId::new(owner, [0xcd; TOKEN_LEN]), answer: "v=0\r\n".into() }
            }
            Request::Close { .. } => Response::Closed,
            // The viewer reads a layer's ring, or its room's.
            Request::Fanout(FanoutRequest::Where { .. }) => {
                Response::Room { room: if n % 2 == 0 { room("a").layer("h").expect("a rid") } else { room("a") } }
            }
            Request::Fanout(FanoutRequest::Switch { .. })
            | Request::Ingest(IngestRequest::Watch { .. })
            | Request::Check { .. } => Response::Done,
            Request::Subscribe => Response::Error { kind: ErrorKind::WrongRole, message: "no subscriptions".into() },
        })
    }
}

fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("a valid room name")
}

impl Backend for Fake {
    /// Through the wire format, as a media process answers.
    fn call(&self, target: Target, request: &Request) -> Result<Response, ControlError> {
        let resp = self.answer(target, request)?;
        let mut wire = Vec::new();
        write_frame(&mut wire, &Envelope { id: 1, msg: resp })?;
        Ok(read_frame::<Response>(&mut wire.as_slice())?.msg)
    }

    fn workers(&self) -> Vec<u32> {
        (0..u32::from(self.mood & 0x03)).collect()
    }
}

fn parse(mood: u8, text: &[u8]) -> HttpRequest {
    let (head, body) = match text.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let first = lines.next().unwrap_or("");
    let (method, url) = first.split_once(' ').unwrap_or((first, "/"));
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    HttpRequest {
        method: method.to_string(),
        url: url.to_string(),
        headers,
        body: (mood & 0x80 == 0).then(|| body.to_vec()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mood, text)) = data.split_first() else { return };
    let req = parse(mood, text);
    // What the HTTP server holds as a long-poll (the router answers those at once too).
    if let Some(Err(resp)) = Router::<Fake>::long_poll(&req) {
        assert_eq!(resp.status, 400);
    }
    let open = Tokens::default();
    let guarded = Tokens { publish: Some("pub-secret".into()), view: Some("view-secret".into()) };
    for tokens in [open, guarded] {
        let router = Router::new(Fake { mood, calls: Mutex::new(0) }, tokens);
        let resp = router.handle(&req);
        assert!((100..600).contains(&resp.status), "status {}", resp.status);
        let has = |name: &str| resp.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        assert!(has("Access-Control-Allow-Origin"));
        if resp.status == 201 {
            assert!(has("Location") && has("ETag"), "a 201 without Location: {resp:?}");
        }
    }
});
