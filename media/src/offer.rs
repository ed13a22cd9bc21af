//! From a WHIP/WHEP SDP offer to a session and its answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::crypto::dtls::DtlsCert;
use str0m::crypto::CryptoProvider;
use str0m::net::{Protocol, TcpType};
use str0m::{Candidate, Rtc, RtcConfig};

/// A session made from an offer.
pub struct Accepted {
    pub rtc: Rtc,
    pub answer: String,
    /// The session's local ICE ufrag, for routing STUN from unknown addresses.
    pub ufrag: String,
}

/// Why an offer was refused. The text is shown to the client.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    #[error("malformed SDP offer: {0}")]
    Malformed(String),
    #[error("SDP offer not acceptable: {0}")]
    Refused(String),
    #[error("SDP offer has no audio or video section")]
    NoMedia,
}

/// A server-side session: ICE lite, RTP mode (packets in and out, no depacketizing), host candidates on
/// `candidates`. `tune` adjusts the configuration (codecs, RTX cache) before the session is built. The
/// session's DTLS certificate is the process's (see `process_dtls_cert`) unless `tune` sets one.
pub fn accept(
    offer: &str,
    candidates: &[Candidate],
    now: Instant,
    tune: impl FnOnce(RtcConfig) -> RtcConfig,
) -> Result<Accepted, OfferError> {
    if !offer.lines().any(|l| l.starts_with("m=audio") || l.starts_with("m=video")) {
        return Err(OfferError::NoMedia);
    }
    check_sections(offer)?;
    let offer = SdpOffer::from_sdp_string(offer).map_err(|e| OfferError::Malformed(e.to_string()))?;
    // The session host gives every session each timeout `poll_output` returns (`SessionHost::poll`):
    // a peer's RTCP, most of what a connected viewer sends, need not run all the session's timers too.
    let config = Rtc::builder().set_rtp_mode(true).set_ice_lite(true).set_timers_after_rtcp(false);
    let mut config = tune(config);
    if config.dtls_cert().is_none() {
        if let Some(cert) = process_dtls_cert(&config, now) {
            config = config.set_dtls_cert(cert);
        }
    }
    let mut rtc = config.build(now);
    for c in candidates {
        rtc.add_local_candidate(c.clone());
    }
    let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| OfferError::Refused(e.to_string()))?;
    let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
    Ok(Accepted { rtc, answer: answer.to_sdp_string(), ufrag })
}

/// Host candidates on `addresses` over `proto`: UDP, or TCP as passive candidates (RFC 6544: the peer
/// connects).
pub fn host_candidates(addresses: &[SocketAddr], proto: Protocol) -> Vec<Candidate> {
    let candidate = |addr: &SocketAddr| match proto {
        Protocol::Tcp => Candidate::builder().tcp().host(*addr).tcptype(TcpType::Passive).build(),
        _ => Candidate::host(*addr, "udp"),
    };
    addresses.iter().filter_map(|a| candidate(a).ok()).collect()
}

/// Most media sections (m-lines) any offer may have, whatever the configuration: each section costs a
/// transceiver, streams and payload tables in the session. The processes refuse fewer by default
/// (`max_media_sections`, see [`crate::limits::SessionLimits`]).
pub const MAX_MEDIA_SECTIONS: usize = 64;

/// Most lines an offer may have: a browser's offer with every codec it has is about 100 lines per video
/// section, so this leaves room for [`MAX_MEDIA_SECTIONS`] sections of the usual size.
pub const MAX_OFFER_LINES: usize = 4096;
/// Longest line an offer may have, in bytes: a browser's longest (a fingerprint, an fmtp, a candidate) is under
/// 200. A request body is bounded before it gets here; this keeps one line from being the whole of it.
pub const MAX_OFFER_LINE_LEN: usize = 1024;

/// The media sections (m-lines) of an SDP, of any kind.
pub fn media_section_count(sdp: &str) -> usize {
    sdp.lines().filter(|l| l.starts_with("m=")).count()
}

/// Checks what str0m takes on trust: at most [`MAX_OFFER_LINES`] lines of at most [`MAX_OFFER_LINE_LEN`]
/// bytes, at most [`MAX_MEDIA_SECTIONS`] media sections, and one meaning per
/// payload type across the whole offer. With BUNDLE every section shares one transport, so a payload type
/// must mean the same codec (and format parameters) in every section that lists it; str0m checks this per
/// section only, and asserts on a payload type claimed twice.
fn check_sections(offer: &str) -> Result<(), OfferError> {
    for (n, line) in offer.lines().enumerate() {
        if n >= MAX_OFFER_LINES {
            return Err(OfferError::Refused(format!("the offer has more than {MAX_OFFER_LINES} lines")));
        }
        if line.len() > MAX_OFFER_LINE_LEN {
            return Err(OfferError::Refused(format!(
                "line {} of the offer is {} bytes long, more than the {MAX_OFFER_LINE_LEN} allowed",
                n + 1,
                line.len()
            )));
        }
    }
    let sections = media_section_count(offer);
    if sections > MAX_MEDIA_SECTIONS {
        return Err(OfferError::Refused(format!(
            "the offer has {sections} media sections, more than the {MAX_MEDIA_SECTIONS} allowed"
        )));
    }
    // Payload type -> (section index, "codec/clock[/channels]" lowercase, format parameters).
    let mut meaning: std::collections::HashMap<u8, (usize, String, String)> = std::collections::HashMap::new();
    let mut rtpmap: Vec<(u8, String)> = Vec::new();
    let mut fmtp: std::collections::HashMap<u8, String> = std::collections::HashMap::new();
    let mut section = 0;
    let mut flush = |section: usize,
                     rtpmap: &mut Vec<(u8, String)>,
                     fmtp: &mut std::collections::HashMap<u8, String>|
     -> Result<(), OfferError> {
        for (pt, codec) in rtpmap.drain(..) {
            let params = fmtp.remove(&pt).unwrap_or_default();
            match meaning.get(&pt) {
                Some((first, c, p)) if *c != codec || *p != params => {
                    return Err(OfferError::Malformed(format!(
                        "payload type {pt} is {c} in media section {first} and {codec} in media section {section}; \
                         with BUNDLE a payload type must mean the same in every section"
                    )));
                }
                Some(_) => {}
                None => {
                    meaning.insert(pt, (section, codec, params));
                }
            }
        }
        fmtp.clear();
        Ok(())
    };
    for line in offer.lines() {
        if line.starts_with("m=") {
            flush(section, &mut rtpmap, &mut fmtp)?;
            section += 1;
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let Some((pt, codec)) = rest.split_once(' ') else { continue };
            let Ok(pt) = pt.trim().parse::<u8>() else { continue };
            if rtpmap.iter().any(|(p, c)| *p == pt && !c.eq_ignore_ascii_case(codec.trim())) {
                return Err(OfferError::Malformed(format!("payload type {pt} has two rtpmap lines in one section")));
            }
            rtpmap.push((pt, codec.trim().to_ascii_lowercase()));
        } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
            let Some((pt, params)) = rest.split_once(' ') else { continue };
            let Ok(pt) = pt.trim().parse::<u8>() else { continue };
            fmtp.insert(pt, params.trim().to_ascii_lowercase());
        }
    }
    flush(section, &mut rtpmap, &mut fmtp)
}

/// How long the process's DTLS certificate is used before a new one is made (it is valid for 365 days).
const DTLS_CERT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// One DTLS certificate for every session the process accepts, made again once it is [`DTLS_CERT_MAX_AGE`]
/// old; `None` if the crypto provider cannot make one (str0m then fails the same way). str0m would otherwise
/// make one per `Rtc`: a P-256 key pair and a signature, ~30 us of CPU per join. The certificate only
/// authenticates the server's end, the keys of each session come from its own ECDHE exchange.
fn process_dtls_cert(config: &RtcConfig, now: Instant) -> Option<DtlsCert> {
    static CERT: Mutex<Option<(Instant, DtlsCert)>> = Mutex::new(None);
    let mut cert = CERT.lock().unwrap_or_else(|e| e.into_inner());
    match &*cert {
        Some((made, c)) if now.saturating_duration_since(*made) < DTLS_CERT_MAX_AGE => Some(c.clone()),
        _ => {
            // The provider str0m would use to make it (`Rtc` building does the same lookup).
            let provider = config
                .crypto_provider()
                .cloned()
                .or_else(|| CryptoProvider::get_default().cloned().map(Arc::new))
                .unwrap_or_else(|| Arc::new(str0m::crypto::from_feature_flags()));
            let fresh = provider.dtls_provider.generate_certificate()?;
            *cert = Some((now, fresh.clone()));
            Some(fresh)
        }
    }
}

/// The offer with every section of the given kind (`video` or `audio`) made `a=inactive`, so the answer to it
/// is inactive too: for a kind the viewer can receive nothing of.
pub fn with_inactive(offer: &str, video: bool) -> String {
    let kind = if video { "m=video" } else { "m=audio" };
    let mut out = String::with_capacity(offer.len() + 32);
    let mut in_kind = false;
    for line in offer.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("m=") {
            if in_kind {
                out.push_str("a=inactive\r\n");
            }
            in_kind = line.starts_with(kind);
        } else if in_kind && matches!(line, "a=sendrecv" | "a=recvonly" | "a=sendonly" | "a=inactive") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if in_kind {
        out.push_str("a=inactive\r\n");
    }
    out
}

/// The offer with every audio and video section's `a=msid` set to `stream_id`, so that str0m's answer, which
/// takes the stream id of a remote media section from the offer, puts all of them in one stream at the peer.
/// Browsers' receive-only sections carry no stream (`a=msid:- ...`) and would get a random one each.
pub fn with_stream_id(offer: &str, stream_id: &str) -> String {
    let mut out = String::with_capacity(offer.len() + 128);
    let mut in_media = false;
    let mut track = 0;
    let mut close_section = |out: &mut String, in_media: bool| {
        if in_media {
            track += 1;
            out.push_str(&format!("a=msid:{stream_id} {stream_id}-{track}\r\n"));
        }
    };
    for line in offer.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("m=") {
            close_section(&mut out, in_media);
            in_media = line.starts_with("m=audio") || line.starts_with("m=video");
        } else if in_media && line.starts_with("a=msid:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    close_section(&mut out, in_media);
    out
}

/// The audio and video media sections of an SDP: (mid, is_video), in order.
pub fn media_sections(sdp: &str) -> Vec<(str0m::media::Mid, bool)> {
    let mut out = Vec::new();
    let mut current: Option<bool> = None;
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            current = match rest.split(' ').next() {
                Some("video") => Some(true),
                Some("audio") => Some(false),
                _ => None,
            };
        } else if let (Some(is_video), Some(mid)) = (current, line.strip_prefix("a=mid:")) {
            out.push((str0m::media::Mid::from(mid.trim()), is_video));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use str0m::media::{Direction, MediaKind};
    use str0m::Rtc;

    use super::*;

    /// A browser-like receive-only offer made by a str0m client.
    fn recvonly_offer() -> String {
        let mut client = Rtc::builder().build(Instant::now());
        client.add_local_candidate(Candidate::host("127.0.0.1:5000".parse().unwrap(), "udp").unwrap());
        let mut change = client.sdp_api();
        change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, _pending) = change.apply().expect("an offer");
        offer.to_sdp_string()
    }

    #[test]
    fn answer_puts_audio_and_video_in_one_stream() {
        let offer = with_stream_id(&recvonly_offer(), "deadsfu-room1");
        let candidates = crate::offer::host_candidates(&["127.0.0.1:6000".parse().unwrap()], Protocol::Udp);
        let accepted = accept(&offer, &candidates, Instant::now(), |c| c).expect("accepted");
        let msids: Vec<&str> = accepted.answer.lines().filter(|l| l.starts_with("a=msid:")).collect();
        assert_eq!(msids.len(), 2, "{}", accepted.answer);
        assert!(msids.iter().all(|l| l.starts_with("a=msid:deadsfu-room1 ")), "{msids:?}");
    }

    fn fingerprint(answer: &str) -> &str {
        answer.lines().find(|l| l.starts_with("a=fingerprint:")).expect("a fingerprint")
    }

    #[test]
    fn sessions_share_the_process_dtls_certificate_unless_given_one() {
        let offer = recvonly_offer();
        let candidates = crate::offer::host_candidates(&["127.0.0.1:6000".parse().unwrap()], Protocol::Udp);
        let now = Instant::now();
        let a = accept(&offer, &candidates, now, |c| c).expect("accepted");
        let b = accept(&offer, &candidates, now, |c| c).expect("accepted");
        assert_eq!(fingerprint(&a.answer), fingerprint(&b.answer));

        let own = str0m::crypto::from_feature_flags().dtls_provider.generate_certificate().expect("a certificate");
        let c = accept(&offer, &candidates, now, |c| c.set_dtls_cert(own)).expect("accepted");
        assert_ne!(fingerprint(&c.answer), fingerprint(&a.answer));

        // A day later the process makes a new one.
        let later = now + DTLS_CERT_MAX_AGE;
        let d = accept(&offer, &candidates, later, |c| c).expect("accepted");
        assert_ne!(fingerprint(&d.answer), fingerprint(&a.answer));
    }

    #[test]
    fn media_sections_in_order() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        let sections = media_sections(sdp);
        assert_eq!(sections, vec![(str0m::media::Mid::from("0"), false), (str0m::media::Mid::from("1"), true)]);
    }

    /// An offer in the shape browsers send, with each section given as (kind, payload types, attributes).
    fn offer_with(sections: &[(&str, &str, &[&str])]) -> String {
        let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        let mids: Vec<String> = (0..sections.len()).map(|i| i.to_string()).collect();
        sdp.push_str(&format!("a=group:BUNDLE {}\r\n", mids.join(" ")));
        for (mid, (kind, pts, attrs)) in sections.iter().enumerate() {
            sdp.push_str(&format!("m={kind} 9 UDP/TLS/RTP/SAVPF {pts}\r\nc=IN IP4 0.0.0.0\r\n"));
            sdp.push_str("a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n");
            sdp.push_str(&format!("a=fingerprint:sha-256 {}\r\n", ["AB"; 32].join(":")));
            sdp.push_str(&format!("a=setup:actpass\r\na=mid:{mid}\r\na=recvonly\r\na=rtcp-mux\r\n"));
            for a in *attrs {
                sdp.push_str(a);
                sdp.push_str("\r\n");
            }
        }
        sdp
    }

    #[test]
    fn a_payload_type_with_two_meanings_is_refused_not_a_panic() {
        let candidates = crate::offer::host_candidates(&["127.0.0.1:6000".parse().unwrap()], Protocol::Udp);
        let vp8_and_opus_on_96 =
            offer_with(&[("video", "96", &["a=rtpmap:96 VP8/90000"]), ("audio", "96", &["a=rtpmap:96 opus/48000/2"])]);
        let rtx_97_then_h264_97 = offer_with(&[
            ("video", "96 97", &["a=rtpmap:96 VP8/90000", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96"]),
            ("video", "97", &["a=rtpmap:97 H264/90000", "a=fmtp:97 packetization-mode=1;profile-level-id=42e01f"]),
        ]);
        for offer in [vp8_and_opus_on_96, rtx_97_then_h264_97] {
            match accept(&offer, &candidates, Instant::now(), |c| c) {
                Err(OfferError::Malformed(reason)) => assert!(reason.contains("payload type"), "{reason}"),
                Err(e) => panic!("refused for another reason: {e}"),
                Ok(_) => panic!("accepted:\n{offer}"),
            }
        }
        // The same payload type with the same meaning in two sections (two video tracks) is fine.
        let two_cameras =
            offer_with(&[("video", "96", &["a=rtpmap:96 VP8/90000"]), ("video", "96", &["a=rtpmap:96 VP8/90000"])]);
        assert!(accept(&two_cameras, &candidates, Instant::now(), |c| c).is_ok());
    }

    /// The vendored str0m itself refuses such offers with an error instead of asserting (the check above
    /// answers first, with a clearer reason).
    #[test]
    fn str0m_refuses_a_payload_type_with_two_meanings_without_panicking() {
        let offer =
            offer_with(&[("video", "96", &["a=rtpmap:96 VP8/90000"]), ("audio", "96", &["a=rtpmap:96 opus/48000/2"])]);
        let offer = SdpOffer::from_sdp_string(&offer).expect("parses");
        let mut rtc = Rtc::builder().set_rtp_mode(true).set_ice_lite(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host("127.0.0.1:6000".parse().unwrap(), "udp").unwrap());
        let err = rtc.sdp_api().accept_offer(offer).expect_err("refused");
        assert!(err.to_string().contains("payload type 96"), "{err}");
    }

    #[test]
    fn too_many_media_sections_are_refused() {
        let candidates = crate::offer::host_candidates(&["127.0.0.1:6000".parse().unwrap()], Protocol::Udp);
        let sections: Vec<(&str, &str, &[&str])> =
            (0..=MAX_MEDIA_SECTIONS).map(|_| ("audio", "111", &["a=rtpmap:111 opus/48000/2"][..])).collect();
        match accept(&offer_with(&sections), &candidates, Instant::now(), |c| c) {
            Err(OfferError::Refused(reason)) => assert!(reason.contains("media sections"), "{reason}"),
            other => panic!("{:?}", other.map(|a| a.answer)),
        }
    }

    #[test]
    fn overlong_offers_and_lines_are_refused() {
        let long_line = format!("{}a=x-padding:{}\r\n", recvonly_offer(), "x".repeat(MAX_OFFER_LINE_LEN));
        let Err(OfferError::Refused(why)) = accept(&long_line, &[], Instant::now(), |c| c) else {
            panic!("a line over {MAX_OFFER_LINE_LEN} bytes was accepted");
        };
        assert!(why.contains("bytes long"), "{why}");
        let many_lines = format!("{}{}", recvonly_offer(), "a=x-padding\r\n".repeat(MAX_OFFER_LINES));
        let Err(OfferError::Refused(why)) = accept(&many_lines, &[], Instant::now(), |c| c) else {
            panic!("an offer over {MAX_OFFER_LINES} lines was accepted");
        };
        assert!(why.contains("lines"), "{why}");
    }

    #[test]
    fn a_parse_error_names_no_address() {
        let garbage = "v=0\r\nm=video nonsense\r\n";
        let why = match accept(garbage, &[], Instant::now(), |c| c) {
            Err(OfferError::Malformed(why)) => why,
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("garbage was accepted"),
        };
        assert!(why.contains("Parse error at"), "{why}");
        assert!(!why.contains("0x") && !why.contains("PointerOffset"), "{why}");
    }

    #[test]
    fn refuses_garbage_and_media_less_offers() {
        let candidates = crate::offer::host_candidates(&["127.0.0.1:6000".parse().unwrap()], Protocol::Udp);
        assert!(matches!(accept("v=0\r\n", &candidates, Instant::now(), |c| c), Err(OfferError::NoMedia)));
        let garbage = "v=0\r\nm=video nonsense\r\n";
        assert!(accept(garbage, &candidates, Instant::now(), |c| c).is_err());
    }
}
