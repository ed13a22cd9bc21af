//! Arbitrary datagrams from a few source addresses into a `SessionHost` holding one session made from a real
//! offer (aiortc 1.16's, from the seeds of `offer_accept`: the smallest real ones, as the offer is parsed for
//! every input), with time moving on between them: STUN, DTLS, RTP, RTCP and garbage. Nothing may panic.
//!
//! Input: a byte choosing the session (bit 0: a publisher's offer taken as ingest takes it, or a viewer's as a
//! fanout worker does), then records, each starting with a control byte `c`:
//! - `c & 0x0C == 0x04`: time moves on by the next byte in milliseconds, and the host is polled;
//! - `c & 0x0C == 0x08`: a valid ICE binding request (right USERNAME, MESSAGE-INTEGRITY, FINGERPRINT) from
//!   source `c & 0x03`, with USE-CANDIDATE if `c & 0x10`, its transaction id from the next 12 bytes: the
//!   fuzzer cannot forge the HMAC, and without it no other datagram reaches past ICE;
//! - otherwise: a datagram from source `c & 0x03` of `((c >> 5) << 8) | next byte` bytes (fewer at the end).
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use deadsfu_media::host::SessionHost;
use deadsfu_media::offer;
use libfuzzer_sys::fuzz_target;
use str0m::crypto::CryptoProvider;
use str0m::ice::StunMessage;

const PUBLISH_OFFER: &str = include_str!("../seeds/offer_accept/aiortc-publish.sdp");
const VIEW_OFFER: &str = include_str!("../seeds/offer_accept/aiortc-view.sdp");

fn provider() -> &'static CryptoProvider {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    PROVIDER.get_or_init(str0m::crypto::from_feature_flags)
}

fn remote_ufrag(sdp: &str) -> &str {
    sdp.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:")).map_or("", str::trim)
}

/// A binding request as the offerer's ICE agent sends it.
fn binding_request(username: &str, password: &str, txid: &[u8], use_candidate: bool, out: &mut [u8]) -> usize {
    // A transaction id can only be had from a parsed message: parse a binding request carrying it (parsing
    // wants the attributes of one to be there; the integrity is not checked).
    let mut parsed = [0u8; 72];
    parsed[..4].copy_from_slice(&[0x00, 0x01, 0x00, 52]);
    parsed[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    parsed[8..8 + txid.len()].copy_from_slice(txid);
    parsed[20..28].copy_from_slice(&[0x00, 0x06, 0x00, 4, b'a', b':', b'b', b'c']);
    parsed[28..32].copy_from_slice(&[0x00, 0x24, 0x00, 4]);
    parsed[36..40].copy_from_slice(&[0x80, 0x2A, 0x00, 8]);
    parsed[48..52].copy_from_slice(&[0x00, 0x08, 0x00, 20]);
    let trans_id = StunMessage::parse(&parsed).expect("a bare binding request parses").trans_id();
    let msg = StunMessage::binding_request(username, trans_id, true, 0x0123_4567_89AB_CDEF, 0x6E7F_1EFF, use_candidate);
    msg.to_bytes(Some(password.as_bytes()), out, |key, payloads| provider().sha1_hmac_provider.sha1_hmac(key, payloads))
        .expect("a binding request fits 1500 bytes")
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, mut rest)) = data.split_first() else { return };
    let sources: [SocketAddr; 4] = [
        "192.0.2.1:50000".parse().expect("an address"),
        "192.0.2.1:50001".parse().expect("an address"),
        "198.51.100.7:9".parse().expect("an address"),
        "[2001:db8::1]:40000".parse().expect("an address"),
    ];
    let local: SocketAddr = "127.0.0.1:3478".parse().expect("an address");
    let mut now = Instant::now();

    let publish = which & 1 == 0;
    let sdp = if publish { PUBLISH_OFFER } else { VIEW_OFFER };
    let accepted = if publish {
        offer::accept(sdp, &offer::host_candidates(&[local], str0m::net::Protocol::Udp), now, |c| c)
    } else {
        offer::accept(
            &offer::with_stream_id(sdp, "deadsfu-fuzz"),
            &offer::host_candidates(&[local], str0m::net::Protocol::Udp),
            now,
            |c| c,
        )
    }
    .expect("the seed offer is accepted");
    let mut rtc = accepted.rtc;
    let password = rtc.direct_api().local_ice_credentials().pass;
    let username = format!("{}:{}", accepted.ufrag, remote_ufrag(sdp));
    let mut host = SessionHost::new();
    let key = host.insert(rtc, accepted.ufrag, (), now);
    let mut events = Vec::new();
    let mut send = |_t| {};
    host.poll(now, &mut send, &mut events);

    let mut stun = [0u8; 1500];
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        let source = sources[usize::from(c & 0x03)];
        match c & 0x0C {
            0x04 => {
                let Some((&ms, tail)) = rest.split_first() else { break };
                rest = tail;
                now += Duration::from_millis(u64::from(ms));
                host.poll(now, &mut send, &mut events);
            }
            0x08 => {
                let n = rest.len().min(12);
                let len = binding_request(&username, &password, &rest[..n], c & 0x10 != 0, &mut stun);
                rest = &rest[n..];
                host.handle_datagram(now, source, local, &stun[..len], &mut send, &mut events);
            }
            _ => {
                let Some((&low, tail)) = rest.split_first() else { break };
                let len = (usize::from(c >> 5) << 8 | usize::from(low)).min(tail.len());
                host.handle_datagram(now, source, local, &tail[..len], &mut send, &mut events);
                rest = &tail[len..];
            }
        }
        events.clear();
    }
    now += Duration::from_secs(1);
    host.poll(now, &mut send, &mut events);
    let _ = host.next_timeout();
    host.close(key);
    for _ in 0..2 {
        for dead in host.poll(now, &mut send, &mut events) {
            host.remove(dead);
        }
    }
});
