//! ICE over TCP: a viewer with only an active TCP candidate (a network that passes no UDP) connects to a
//! worker's passive TCP candidate, completes ICE and DTLS over RFC 4571 framing, and receives the room's media
//! (the slate, which plays for a room with viewers and no publisher). A connection that sends garbage is closed
//! and the worker keeps serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use deadsfu_tests::{http, Sfu};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// The passive TCP candidate addresses in an SDP answer.
fn passive_tcp_candidates(answer: &str) -> Vec<SocketAddr> {
    answer
        .lines()
        .filter(|l| l.starts_with("a=candidate:") && l.contains(" tcp ") && l.contains("tcptype passive"))
        .filter_map(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            format!("{}:{}", parts.get(4)?, parts.get(5)?).parse().ok()
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

#[test]
fn a_viewer_with_only_tcp_connects_and_receives_media() {
    let sfu = Sfu::start(1, &[]);
    let now = Instant::now();
    // An active TCP candidate's port is the discard port (RFC 6544 4.5); the real one is the connection's.
    let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut client = Rtc::builder().set_rtp_mode(true).build(now);
    client.add_local_candidate(Candidate::builder().tcp().host(local).tcptype(TcpType::Active).build().unwrap());
    let mut change = client.sdp_api();
    change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let headers = [("Content-Type", "application/sdp")];
    let (status, answer) = http(sfu.http_port, "POST", "/whep/tcp-room", &headers, offer.to_sdp_string().as_bytes())
        .expect("signaling answers");
    assert_eq!(status, 201, "{answer}");
    let servers = passive_tcp_candidates(&answer);
    let server = *servers
        .iter()
        .find(|a| a.ip().is_loopback())
        .unwrap_or_else(|| panic!("no passive TCP candidate on loopback:\n{answer}"));
    client.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();

    let mut stream = TcpStream::connect(server).expect("the worker listens on TCP");
    stream.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let (mut rx, mut frames) = (Vec::new(), Vec::new());
    let (mut connected, mut video_packets) = (false, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while video_packets < 20 {
        assert!(Instant::now() < deadline, "connected {connected}, {video_packets} video packets after 15 s");
        let timeout = loop {
            match client.poll_output().unwrap() {
                Output::Transmit(t) => {
                    assert_eq!(t.proto, Protocol::Tcp, "the client has no UDP candidate");
                    let mut framed = (t.contents.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&t.contents);
                    stream.write_all(&framed).unwrap();
                }
                Output::Event(Event::Connected) => connected = true,
                Output::Event(Event::RtpPacket(p)) if p.header.payload_type != 111.into() => video_packets += 1,
                Output::Event(_) => {}
                Output::Timeout(t) => break t,
            }
        };
        read_frames(&mut stream, &mut rx, &mut frames).expect("the worker keeps the connection");
        let now = Instant::now();
        for frame in frames.drain(..) {
            let receive = Receive::new(Protocol::Tcp, server, local, &frame).unwrap();
            client.handle_input(Input::Receive(now, receive)).unwrap();
        }
        client.handle_input(Input::Timeout(timeout.min(Instant::now()).max(now))).unwrap();
    }
    assert!(connected);

    // A connection that sends a frame no peer sends is closed; the worker still serves.
    let mut garbage = TcpStream::connect(server).unwrap();
    garbage.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(garbage.read(&mut buf), Ok(0) | Err(_)), "the worker closes a connection framing 65535 bytes");
    let health = sfu.health().unwrap();
    assert_eq!(health["ok"], true, "{health}");
}
