//! The HTTP server against hostile clients: announced bodies it never reads, slow heads and bodies, too many
//! connections, crowds of long-polls. A real server on loopback with a fake backend.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_signaling::http::{Face, Limits, Listener, Server};
use deadsfu_signaling::router::{Backend, Router, Target, Tokens};
use shm_proto::control::{ControlError, ProcessStatus, Request, Response, Role, RoomStatus};
use shm_proto::RoomName;

/// One ingest and one worker; counts room-list questions; the room list's viewers follow `viewers`.
#[derive(Default)]
struct Fake {
    room_calls: AtomicUsize,
    viewers: AtomicU64,
}

/// The backend the router owns; the test keeps another handle on the same counters.
struct Shared(Arc<Fake>);

impl Backend for Shared {
    fn call(&self, target: Target, request: &Request) -> Result<Response, ControlError> {
        Ok(match request {
            Request::Status => Response::Status(ProcessStatus {
                role: if target == Target::Ingest { Role::Ingest } else { Role::Fanout },
                index: 0,
                pid: 1,
                sessions: 0,
                accepting: true,
            }),
            Request::Rooms => {
                self.0.room_calls.fetch_add(1, Ordering::SeqCst);
                let viewers = self.0.viewers.load(Ordering::SeqCst) as u32;
                let room = RoomName::new("a").expect("a valid room name");
                Response::Rooms { rooms: vec![RoomStatus { viewers, ..RoomStatus::new(room) }] }
            }
            _ => Response::Done,
        })
    }

    fn workers(&self) -> Vec<u32> {
        vec![0]
    }
}

struct Running {
    public: SocketAddr,
    admin: SocketAddr,
    fake: Arc<Fake>,
}

fn start(limits: Limits) -> Running {
    let fake = Arc::new(Fake::default());
    let router = Arc::new(Router::new(Shared(fake.clone()), Tokens::default()));
    let public = Listener::bind("127.0.0.1:0".parse().unwrap(), Face::Public { metrics: false }, None).unwrap();
    let admin = Listener::bind("127.0.0.1:0".parse().unwrap(), Face::Admin, None).unwrap();
    let addrs = (public.listener.local_addr().unwrap(), admin.listener.local_addr().unwrap());
    let server = Server::new(router, limits);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(server.run(vec![public, admin])).unwrap();
    });
    Running { public: addrs.0, admin: addrs.1, fake }
}

/// Sends `raw` and reads the whole answer (the server closes, or `Connection: close` is asked for).
fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
}

fn status(answer: &str) -> u16 {
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// True once the server has closed `s` (read gives end of file or an error).
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn an_absurd_content_length_is_refused_unread_and_the_server_stays() {
    let sfu = start(Limits::default());
    for length in [u64::MAX, i64::MAX as u64, 1 << 40] {
        let answer = exchange(
            sfu.public,
            &format!(
                "POST /whep/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n"
            ),
        );
        if length == u64::MAX {
            // Past what hyper's parser takes as a length at all: refused as a malformed head.
            assert!(matches!(status(&answer), 413 | 431), "{answer}");
        } else {
            assert_eq!(status(&answer), 413, "{answer}");
            assert!(answer.contains("larger than"), "{answer}");
        }
    }
    assert_eq!(status(&get(sfu.public, "/healthz")), 200);
}

#[test]
fn a_body_sent_in_full_over_the_limit_is_413() {
    let sfu = start(Limits::default());
    let body = "v=0\r\n".repeat(20_000);
    let answer = exchange(
        sfu.public,
        &format!(
            "POST /whep/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ),
    );
    assert_eq!(status(&answer), 413, "{answer}");
}

#[test]
fn slow_heads_are_dropped_after_the_header_timeout_while_others_are_served() {
    let limits = Limits { header_timeout: Duration::from_millis(500), ..Limits::default() };
    let sfu = start(limits);
    let mut slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(sfu.public).unwrap();
            s.write_all(b"GET /rooms HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // Served meanwhile.
    assert_eq!(status(&get(sfu.public, "/healthz")), 200);
    assert!(eventually(Duration::from_secs(20), || slow.iter_mut().all(closed)), "slow heads still open");
    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(sfu.public).unwrap();
    assert!(eventually(Duration::from_secs(20), || closed(&mut silent)));
}

#[test]
fn a_body_that_never_arrives_gets_408() {
    let limits = Limits { body_timeout: Duration::from_millis(300), ..Limits::default() };
    let sfu = start(limits);
    let answer = exchange(
        sfu.public,
        "POST /whep/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: 100\r\n\r\nv=0\r\n",
    );
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(answer.contains("not received within"), "{answer}");
}

#[test]
fn a_huge_head_gets_431() {
    let sfu = start(Limits::default());
    let answer =
        exchange(sfu.public, &format!("GET /rooms HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024)));
    assert_eq!(status(&answer), 431, "{answer}");
}

#[test]
fn connections_past_the_per_address_limit_get_503() {
    let limits = Limits { max_connections_per_ip: 4, ..Limits::default() };
    let sfu = start(limits);
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(sfu.public).unwrap()).collect();
    // The server counts a connection once it accepted it: wait until the fifth is refused.
    let mut answer = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        answer = get(sfu.public, "/healthz");
        status(&answer) == 503
    }));
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    assert!(answer.contains("too many connections from your address"), "{answer}");
    drop(held);
    assert!(eventually(Duration::from_secs(10), || status(&get(sfu.public, "/healthz")) == 200));
    let metrics = get(sfu.admin, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"deadsfu_refused_total{process="signaling",limit="connections_per_ip"}"#)),
        "{metrics}"
    );
}

#[test]
fn long_polls_share_one_room_list_and_return_on_a_change() {
    let sfu = start(Limits::default());
    let first = get(sfu.public, "/rooms");
    let version: u64 = first
        .split("\"version\": ")
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .expect("a version in the room list");
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let addr = sfu.public;
            std::thread::spawn(move || get(addr, &format!("/rooms?wait={version}")))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let calls_before = sfu.fake.room_calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1000));
    let calls = sfu.fake.room_calls.load(Ordering::SeqCst) - calls_before;
    // One room list (ingest + one worker: 2 calls) per 250 ms step, whatever the number of waiters.
    assert!(calls <= 2 * 6, "{calls} room-list calls in a second for 50 waiters");
    sfu.fake.viewers.store(3, Ordering::SeqCst);
    for w in waiters {
        let answer = w.join().unwrap();
        assert_eq!(status(&answer), 200, "{answer}");
        assert!(answer.contains("\"viewers\": 6"), "{answer}");
    }
}

#[test]
fn metrics_move_to_the_admin_listener() {
    let sfu = start(Limits::default());
    let public = get(sfu.public, "/metrics");
    assert_eq!(status(&public), 404, "{public}");
    assert!(public.contains("admin listener"));
    assert_eq!(status(&get(sfu.admin, "/metrics")), 200);
    assert_eq!(status(&get(sfu.admin, "/healthz")), 200);
    assert_eq!(status(&get(sfu.admin, "/")), 404);
    assert_eq!(status(&get(sfu.public, "/healthz")), 200);
}
