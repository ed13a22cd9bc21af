//! Measures the server's CPU for a whole join in memory, no sockets: accepting a WHEP-style offer, then ICE,
//! DTLS 1.2 and SRTP setup with a str0m client until both ends report `Connected`. Only the server's calls
//! are timed (the client's are not). `cargo run --release -p deadsfu-media --example join_cost`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// Polls `rtc` until it times out; datagrams go to `out`. Returns whether it reported `Connected`.
fn drain(rtc: &mut Rtc, out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) -> bool {
    let mut connected = false;
    loop {
        match rtc.poll_output().expect("poll_output") {
            Output::Transmit(t) => out.push((t.source, t.destination, t.contents.to_vec())),
            Output::Event(Event::Connected) => connected = true,
            Output::Event(_) => {}
            Output::Timeout(_) => return connected,
        }
    }
}

fn deliver(rtc: &mut Rtc, now: Instant, datagrams: Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
    for (source, destination, data) in datagrams {
        let receive = Receive::new(Protocol::Udp, source, destination, &data).expect("a datagram");
        rtc.handle_input(Input::Receive(now, receive)).expect("handle_input");
    }
}

fn main() {
    let client_addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let server_addr: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    let n = 200;
    let (mut accept, mut handshake) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let mut now = Instant::now();
        let mut client = Rtc::builder().build(now);
        client.add_local_candidate(Candidate::host(client_addr, "udp").unwrap());
        let mut change = client.sdp_api();
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().unwrap();

        let t = Instant::now();
        let accepted = deadsfu_media::offer::accept(
            &offer.to_sdp_string(),
            &deadsfu_media::offer::host_candidates(&[server_addr], str0m::net::Protocol::Udp),
            now,
            |c| c,
        )
        .unwrap();
        accept += t.elapsed();
        let mut server = accepted.rtc;
        let answer = str0m::change::SdpAnswer::from_sdp_string(&accepted.answer).unwrap();
        client.sdp_api().accept_answer(pending, answer).unwrap();

        let (mut client_up, mut server_up) = (false, false);
        for _ in 0..100 {
            let mut to_server = Vec::new();
            client_up |= drain(&mut client, &mut to_server);
            let t = Instant::now();
            deliver(&mut server, now, to_server);
            let mut to_client = Vec::new();
            server_up |= drain(&mut server, &mut to_client);
            handshake += t.elapsed();
            deliver(&mut client, now, to_client);
            if client_up && server_up {
                break;
            }
            now += Duration::from_millis(10);
            client.handle_input(Input::Timeout(now)).unwrap();
            let t = Instant::now();
            server.handle_input(Input::Timeout(now)).unwrap();
            handshake += t.elapsed();
        }
        assert!(client_up && server_up, "not connected");
    }
    let us = |d: Duration| d.as_micros() as f64 / n as f64;
    println!(
        "join (server side): accept {:.0} us + ICE/DTLS/SRTP {:.0} us = {:.0} us per join over {n}",
        us(accept),
        us(handshake),
        us(accept + handshake)
    );
}
