//! Measures the CPU cost of accepting a WHEP-style offer: `cargo run --release -p deadsfu-media --example accept_cost`.

use std::time::Instant;

use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

fn main() {
    let mut client = Rtc::builder().build(Instant::now());
    client.add_local_candidate(Candidate::host("127.0.0.1:5000".parse().unwrap(), "udp").unwrap());
    let mut change = client.sdp_api();
    change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, _) = change.apply().unwrap();
    let offer = offer.to_sdp_string();
    let candidates =
        deadsfu_media::offer::host_candidates(&["127.0.0.1:6000".parse().unwrap()], str0m::net::Protocol::Udp);
    let n = 300;
    let t = Instant::now();
    for _ in 0..n {
        deadsfu_media::offer::accept(&offer, &candidates, Instant::now(), |c| c).unwrap();
    }
    println!("accept: {:.0} us per offer over {n}", t.elapsed().as_micros() as f64 / n as f64);
}
