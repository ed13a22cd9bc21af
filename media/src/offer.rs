//! From a WHIP/WHEP SDP offer to a session and its answer.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::SdpOffer;
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
/// `candidates`. `tune` adjusts the configuration (codecs, RTX cache) before the session is built.
pub fn accept(
    offer: &str,
    candidates: &[SocketAddr],
    now: Instant,
    tune: impl FnOnce(RtcConfig) -> RtcConfig,
) -> Result<Accepted, OfferError> {
    if !offer.lines().any(|l| l.starts_with("m=audio") || l.starts_with("m=video")) {
        return Err(OfferError::NoMedia);
    }
    let offer = SdpOffer::from_sdp_string(offer).map_err(|e| OfferError::Malformed(e.to_string()))?;
    let config = Rtc::builder().set_rtp_mode(true).set_ice_lite(true);
    let mut rtc = tune(config).build(now);
    for addr in candidates {
        let c = Candidate::host(*addr, "udp").map_err(|e| OfferError::Refused(e.to_string()))?;
        rtc.add_local_candidate(c);
    }
    let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| OfferError::Refused(e.to_string()))?;
    let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
    Ok(Accepted { rtc, answer: answer.to_sdp_string(), ufrag })
}
