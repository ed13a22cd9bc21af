//! Viewers on other paths than IPv4 UDP. ICE over TCP: a viewer with only an active TCP candidate (a network
//! that passes no UDP) connects to a worker's passive TCP candidate, completes ICE and DTLS over RFC 4571
//! framing, and receives the room's media (the slate, which plays for a room with viewers and no publisher); a
//! connection that sends garbage is closed and the worker keeps serving; a viewer on TCP rides out an ingest
//! restart and, as over UDP, makes a new session after its worker's. IPv6: the same over UDP and TCP from
//! `::1`, to the worker's IPv6 host candidates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use deadsfu_tests::{http, Sfu};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// The candidate addresses of an SDP answer over `proto` (passive ones for TCP).
fn candidates(answer: &str, proto: Protocol) -> Vec<SocketAddr> {
    answer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .filter(|l| match proto {
            Protocol::Tcp => l.contains(" tcp ") && l.contains("tcptype passive"),
            _ => l.to_ascii_lowercase().contains(" udp "),
        })
        .filter_map(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            Some(SocketAddr::new(parts.get(4)?.parse().ok()?, parts.get(5)?.parse().ok()?))
        })
        .collect()
}

/// Reads whole RFC 4571 frames from `stream` into `out`, keeping a partial one in `rx`.
fn read_frames(stream: &mut TcpStream, rx: &mut Vec<u8>, out: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    let mut buf = [0u8; 16384];
    match stream.read(&mut buf) {
        Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(n) => rx.extend_from_slice(&buf[..n]),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        Err(e) => return Err(e),
    }
    while rx.len() >= 2 {
        let len = u16::from_be_bytes([rx[0], rx[1]]) as usize;
        if rx.len() < 2 + len {
            break;
        }
        out.push(rx[2..2 + len].to_vec());
        rx.drain(..2 + len);
    }
    Ok(())
}

/// The way a test viewer reaches the worker: one UDP socket, or one TCP connection with RFC 4571 framing.
enum Path {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

impl Path {
    fn send(&mut self, to: SocketAddr, packet: &[u8]) {
        match self {
            Path::Udp(s) => {
                s.send_to(packet, to).unwrap();
            }
            Path::Tcp(s, _) => {
                let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(packet);
                s.write_all(&framed).unwrap();
            }
        }
    }

    fn recv(&mut self, out: &mut Vec<Vec<u8>>) {
        match self {
            Path::Udp(s) => {
                let mut buf = [0u8; 2048];
                while let Ok((n, _)) = s.recv_from(&mut buf) {
                    out.push(buf[..n].to_vec());
                }
            }
            Path::Tcp(s, rx) => read_frames(s, rx, out).expect("the worker keeps the connection"),
        }
    }
}

/// A viewer of a room from one address over one protocol only, driven by the test.
struct TestViewer {
    client: Rtc,
    path: Path,
    proto: Protocol,
    local: SocketAddr,
    server: SocketAddr,
    connected: bool,
}

impl TestViewer {
    /// Views `room` from `ip` over `proto` only; connects and receives 20 video packets (of the slate).
    fn join(sfu: &Sfu, room: &str, ip: &str, proto: Protocol) -> TestViewer {
        let now = Instant::now();
        let mut client = Rtc::builder().set_rtp_mode(true).build(now);
        let (local, udp) = match proto {
            // An active TCP candidate's port is the discard port (RFC 6544 4.5); the real one is the connection's.
            Protocol::Tcp => {
                let local: SocketAddr = format!("{ip}:9").replace("::1:9", "[::1]:9").parse().unwrap();
                let c = Candidate::builder().tcp().host(local).tcptype(TcpType::Active).build().unwrap();
                client.add_local_candidate(c);
                (local, None)
            }
            _ => {
                let socket = UdpSocket::bind(format!("{ip}:0").replace("::1:0", "[::1]:0")).unwrap();
                socket.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                let local = socket.local_addr().unwrap();
                client.add_local_candidate(Candidate::host(local, "udp").unwrap());
                (local, Some(Path::Udp(socket)))
            }
        };
        let mut change = client.sdp_api();
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let headers = [("Content-Type", "application/sdp")];
        let path = format!("/whep/{room}");
        let (status, answer) =
            http(sfu.http_port, "POST", &path, &headers, offer.to_sdp_string().as_bytes()).expect("signaling answers");
        assert_eq!(status, 201, "{answer}");
        let offered = candidates(&answer, proto);
        let Some(&server) = offered.iter().find(|a| a.ip().is_loopback() && a.is_ipv6() == local.is_ipv6()) else {
            panic!("no {proto} candidate on {ip} in the answer:\n{answer}")
        };
        client.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
        let path = udp.unwrap_or_else(|| {
            let stream = TcpStream::connect(server).expect("the worker listens on TCP");
            stream.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            Path::Tcp(stream, Vec::new())
        });
        let mut viewer = TestViewer { client, path, proto, local, server, connected: false };
        viewer.receive_video(20, Duration::from_secs(15));
        assert!(viewer.connected);
        viewer
    }

    /// Runs the client until it received `packets` more video packets; panics after `within`.
    fn receive_video(&mut self, packets: usize, within: Duration) {
        let mut received = Vec::new();
        let mut video_packets = 0;
        let deadline = Instant::now() + within;
        while video_packets < packets {
            let (proto, local) = (self.proto, self.local);
            assert!(
                Instant::now() < deadline,
                "{proto} from {local}: connected {}, {video_packets} video packets",
                self.connected
            );
            let timeout = loop {
                match self.client.poll_output().unwrap() {
                    Output::Transmit(t) => {
                        assert_eq!(t.proto, proto, "the client has candidates of one protocol only");
                        self.path.send(t.destination, &t.contents);
                    }
                    Output::Event(Event::Connected) => self.connected = true,
                    Output::Event(Event::RtpPacket(p)) if p.header.payload_type != 111.into() => video_packets += 1,
                    Output::Event(_) => {}
                    Output::Timeout(t) => break t,
                }
            };
            self.path.recv(&mut received);
            let now = Instant::now();
            for packet in received.drain(..) {
                let receive = Receive::new(proto, self.server, local, &packet).unwrap();
                self.client.handle_input(Input::Receive(now, receive)).unwrap();
            }
            self.client.handle_input(Input::Timeout(timeout.min(Instant::now()).max(now))).unwrap();
        }
    }
}

/// A viewer of `room` from `ip` over `proto` only: it connects and receives 20 video packets of the slate.
/// Returns the worker's address it used.
fn view_over(sfu: &Sfu, room: &str, ip: &str, proto: Protocol) -> SocketAddr {
    TestViewer::join(sfu, room, ip, proto).server
}

#[test]
fn a_viewer_with_only_tcp_connects_and_receives_media() {
    let sfu = Sfu::start(1, &[]);
    let server = view_over(&sfu, "tcp-room", "127.0.0.1", Protocol::Tcp);

    // A connection that sends a frame no peer sends is closed; the worker still serves.
    let mut garbage = TcpStream::connect(server).unwrap();
    garbage.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(garbage.read(&mut buf), Ok(0) | Err(_)), "the worker closes a connection framing 65535 bytes");
    let health = sfu.health().unwrap();
    assert_eq!(health["ok"], true, "{health}");
}

#[test]
fn tcp_connections_from_one_address_are_capped_and_silent_ones_closed() {
    let sfu = Sfu::start(1, &[]);
    let (_, answer) =
        http(sfu.http_port, "POST", "/whep/r", &[("Content-Type", "application/sdp")], recvonly_offer().as_bytes())
            .unwrap();
    let server = *candidates(&answer, Protocol::Tcp).iter().find(|a| a.is_ipv4()).expect("a TCP candidate");
    // 16 from one address are held; more are closed at once.
    let opened = Instant::now();
    let conns: Vec<TcpStream> = (0..24).map(|_| TcpStream::connect(server).unwrap()).collect();
    let closed_at_once = conns
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            matches!((&**c).read(&mut [0u8; 4]), Ok(0))
        })
        .count();
    assert_eq!(closed_at_once, 24 - 16, "connections past 16 from one address are closed");
    // The held ones carry nothing a session takes: closed after the handshake timeout (10 s).
    for c in &conns {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let r = (&*c).read(&mut [0u8; 4]);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    let waited = opened.elapsed();
    assert!(waited > Duration::from_secs(9) && waited < Duration::from_secs(14), "closed after {waited:?}");
}

fn recvonly_offer() -> String {
    let mut client = Rtc::builder().build(Instant::now());
    let mut change = client.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    change.apply().unwrap().0.to_sdp_string()
}

#[test]
fn a_viewer_on_ipv6_connects_over_udp_and_tcp() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host has no IPv6 loopback");
        return;
    }
    let sfu = Sfu::start(1, &[]);
    view_over(&sfu, "v6-udp", "::1", Protocol::Udp);
    view_over(&sfu, "v6-tcp", "::1", Protocol::Tcp);
}

#[test]
fn no_tcp_candidates_without_ice_tcp() {
    let sfu = Sfu::start(1, &["--ice-tcp", "false"]);
    let headers = [("Content-Type", "application/sdp")];
    let (status, answer) = http(sfu.http_port, "POST", "/whep/r", &headers, recvonly_offer().as_bytes()).unwrap();
    assert_eq!(status, 201, "{answer}");
    assert!(candidates(&answer, Protocol::Tcp).is_empty(), "{answer}");
    assert!(!candidates(&answer, Protocol::Udp).is_empty(), "{answer}");
}

#[test]
fn over_tcp_an_ingest_restart_is_a_pause_and_a_worker_restart_a_new_session() {
    let sfu = Sfu::start(1, &[]);
    let pid = |role: &str| -> i32 {
        let h = sfu.health().unwrap();
        let v = if role == "ingest" { &h["ingest"]["pid"] } else { &h["workers"][0]["pid"] };
        v.as_u64().unwrap() as i32
    };
    let kill =
        |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut viewer = TestViewer::join(&sfu, "restarts", "127.0.0.1", Protocol::Tcp);

    // Ingest dies and comes back: the viewer's worker session and TCP connection stay, the slate resumes.
    let ingest = pid("ingest");
    kill(ingest);
    deadsfu_tests::wait_for("ingest to come back", Duration::from_secs(10), || {
        (sfu.health()?["ingest"]["pid"].as_u64()? as i32 != ingest).then_some(())
    });
    viewer.receive_video(20, Duration::from_secs(15));

    // The worker dies: its TCP connection goes with it; a new WHEP session over TCP reaches the new worker.
    let worker = pid("fanout-0");
    kill(worker);
    deadsfu_tests::wait_for("worker 0 to come back", Duration::from_secs(10), || {
        let h = sfu.health()?;
        (h["workers"][0]["pid"].as_u64()? as i32 != worker && h["ok"] == true).then_some(())
    });
    let mut rest = [0u8; 64];
    if let Path::Tcp(stream, _) = &mut viewer.path {
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let closed = loop {
            match stream.read(&mut rest) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    break false
                }
                Err(_) => break true,
            }
        };
        assert!(closed, "the dead worker's connection is closed");
    }
    TestViewer::join(&sfu, "restarts", "127.0.0.1", Protocol::Tcp);
}
