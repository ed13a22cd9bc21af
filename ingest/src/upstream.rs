//! An edge's pulls: a room fetched from the upstream deadsfu over WHEP, as its viewer.
//!
//! Each pull runs in a thread of its own with its own UDP socket (a WebRTC session is told apart from others
//! by its address pair, and two pulls may go to the same upstream worker): it posts a receive-only offer to
//! `{upstream}/whep/{room}`, connects, and hands every RTP packet to ingest's loop through a channel, waking it.
//! Ingest writes them into the room's ring as it would a publisher's. A pull ends when ingest drops it (its
//! upstream session is deleted) or when it fails; then it reports why, once, and ingest decides on a retry.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use deadsfu_media::codec;
use mio::Waker;
use shm_proto::ring::CodecEntry;
use shm_proto::RoomName;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

/// Longest an HTTP exchange with the upstream may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// A pull that has not connected (ICE and DTLS) this long after its answer has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An upstream that sends nothing this long is gone (its slate alone sends several packets a second).
const SILENCE: Duration = Duration::from_secs(3);
/// Longest the thread waits for a datagram before it looks at its commands and timers again.
const TURN: Duration = Duration::from_millis(20);

/// Where the pulls go.
pub struct Upstream {
    /// Base URL, without a trailing slash.
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "..."))
            .finish()
    }
}

/// Why the upstream's settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("upstream_ca {path}: {reason}")]
pub struct CaError {
    path: String,
    reason: String,
}

impl Upstream {
    /// `base` is a validated base URL (see `deadsfu_runtime::config::upstream_url`); `ca`, a PEM file of the
    /// certificate authorities to check an https upstream against instead of the public ones.
    pub fn new(base: &str, token: Option<String>, ca: Option<&Path>) -> Result<Upstream, CaError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = ureq::tls::TlsConfig::builder().unversioned_rustls_crypto_provider(provider);
        if let Some(path) = ca {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&load_certificates(path)?));
        }
        let tls = tls.build();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(HTTP_TIMEOUT))
            .http_status_as_error(false)
            // A redirect would carry the offer (and the token) wherever the upstream points.
            .max_redirects(0)
            .tls_config(tls)
            .build()
            .into();
        Ok(Upstream { base: base.trim_end_matches('/').to_string(), token, agent })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn whep_url(&self, room: &RoomName) -> String {
        format!("{}/whep/{}", self.base, room)
    }

    /// The absolute URL of a `Location` the upstream answered with.
    fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            return location.to_string();
        }
        if location.starts_with('/') {
            let scheme_end = self.base.find("://").map_or(0, |i| i + 3);
            let origin_end = self.base[scheme_end..].find('/').map_or(self.base.len(), |i| scheme_end + i);
            return format!("{}{}", &self.base[..origin_end], location);
        }
        format!("{}/{}", self.base, location)
    }

    /// The upstream's HTTP address, to find the local address that routes to it.
    fn socket_addr(&self) -> Result<SocketAddr, Failure> {
        let (https, rest) = match self.base.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, self.base.strip_prefix("http://").unwrap_or(&self.base)),
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else {
            format!("{authority}:{}", if https { 443 } else { 80 })
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|e| Failure::new(FailureKind::Unreachable, format!("cannot resolve {authority}: {e}")))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| Failure::new(FailureKind::Unreachable, format!("{authority} has no address")))
    }

    /// Posts the offer; the answer and the session's URL.
    fn post(&self, room: &RoomName, offer: String) -> Result<(String, String), Failure> {
        let url = self.whep_url(room);
        let mut request = self.agent.post(&url).header("Content-Type", "application/sdp");
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response =
            request.send(offer).map_err(|e| Failure::new(FailureKind::Unreachable, format!("POST {url}: {e}")))?;
        let status = response.status().as_u16();
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.body_mut().with_config().limit(256 * 1024).read_to_string().unwrap_or_default();
        if status != 201 {
            let reason = body.lines().next().unwrap_or("").trim();
            let kind = match status {
                401 | 403 => FailureKind::Unauthorized,
                404 => FailureKind::NotFound,
                _ => FailureKind::Refused,
            };
            return Err(Failure::new(kind, format!("upstream answered {status}: {reason}")));
        }
        let location =
            location.ok_or_else(|| Failure::new(FailureKind::Refused, "upstream answered 201 without a Location"))?;
        Ok((body, self.resolve(&location)))
    }

    /// Ends the upstream session, so its worker frees the viewer at once. Best effort. The token goes only to
    /// the upstream's own origin: a `Location` naming another host gets the DELETE without it.
    fn delete(&self, url: &str) {
        let mut request = self.agent.delete(url);
        if let Some(token) = &self.token {
            if same_origin(url, &self.base) {
                request = request.header("Authorization", format!("Bearer {token}"));
            } else {
                tracing::warn!(url, upstream = %self.base, "the upstream's session is on another origin; not sending it the token");
            }
        }
        if let Err(e) = request.call() {
            tracing::debug!(error = %e, url, "DELETE of the upstream session failed");
        }
    }
}

/// Scheme, host (lowercase) and port of an absolute http(s) URL, the port defaulted by the scheme.
fn origin(url: &str) -> Option<(&'static str, String, u16)> {
    let (scheme, rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest, 443)
    } else {
        ("http", url.strip_prefix("http://")?, 80)
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    if authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside its brackets; a port follows the closing one.
        Some((host, port))
            if (!host.starts_with('[') || host.ends_with(']'))
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (host, port.parse().ok()?)
        }
        _ => (authority, default_port),
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// True if `url` is on the same origin (scheme, host, port) as `base`.
fn same_origin(url: &str, base: &str) -> bool {
    matches!((origin(url), origin(base)), (Some(a), Some(b)) if a == b)
}

fn load_certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, CaError> {
    let fail = |reason: String| CaError { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(cert) = item.map_err(|e| fail(e.to_string()))? {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Why a pull failed, by kind: part of the control contract, since ingest reports it in its metrics.
pub use shm_proto::control::UpstreamFailureKind as FailureKind;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into() }
    }
}

/// What a pull tells ingest.
#[derive(Debug)]
pub enum PullEvent {
    /// ICE and DTLS are up; these are the codecs the upstream may send.
    Connected {
        codecs: Vec<CodecEntry>,
    },
    Packet(Box<RtpPacket>),
    /// The pull is over; nothing follows. Not sent for a pull that ingest stopped.
    Failed(Failure),
}

enum Command {
    RequestKeyframe,
}

/// A running pull. Dropping it ends the pull: the thread deletes its upstream session and exits.
pub struct Pull {
    id: u64,
    /// Dropped with the pull, which tells the thread to stop.
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Pull {
    /// Starts pulling `room`; its events go to `events` tagged with `id`, and `waker` turns ingest's loop.
    pub fn start(
        upstream: Arc<Upstream>,
        room: RoomName,
        id: u64,
        events: Sender<(u64, PullEvent)>,
        waker: Arc<Waker>,
    ) -> Pull {
        let (commands, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("pull-{room}"))
            .spawn(move || {
                let emit = |event: PullEvent| {
                    if events.send((id, event)).is_ok() {
                        let _ = waker.wake();
                    }
                };
                if let Err(failure) = pull(&upstream, &room, &rx, &emit) {
                    emit(PullEvent::Failed(failure));
                }
            })
            .expect("a thread can be spawned");
        Pull { id, commands, thread: Some(thread) }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Asks the upstream for a keyframe (PLI on every video stream).
    pub fn request_keyframe(&self) {
        let _ = self.commands.send(Command::RequestKeyframe);
    }

    /// Stops the pull and hands back its thread, to wait for its goodbye to the upstream.
    pub fn stop(mut self) -> Option<JoinHandle<()>> {
        self.thread.take()
    }
}

/// The upstream session, deleted when this goes out of scope whatever the way out.
struct UpstreamSession<'a> {
    upstream: &'a Upstream,
    url: String,
}

impl Drop for UpstreamSession<'_> {
    fn drop(&mut self) {
        self.upstream.delete(&self.url);
    }
}

/// The pull itself: `Ok` when ingest stopped it, `Err` when it failed.
fn pull(
    upstream: &Upstream,
    room: &RoomName,
    commands: &Receiver<Command>,
    emit: &dyn Fn(PullEvent),
) -> Result<(), Failure> {
    let target = upstream.socket_addr()?;
    let local_ip = local_ip_towards(target)?;
    let socket = UdpSocket::bind((local_ip, 0))
        .map_err(|e| Failure::new(FailureKind::Unreachable, format!("cannot bind a UDP socket on {local_ip}: {e}")))?;
    let local = socket.local_addr().expect("a bound socket has an address");

    let now = Instant::now();
    let mut rtc = Rtc::builder().set_rtp_mode(true).enable_h265(false).build(now);
    let candidate = Candidate::host(local, "udp").expect("a bound UDP address is a host candidate");
    rtc.add_local_candidate(candidate);
    let mut change = rtc.sdp_api();
    let audio = change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let video = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change.apply().expect("a change with two media sections makes an offer");

    let (answer, url) = upstream.post(room, offer.to_sdp_string())?;
    let _session = UpstreamSession { upstream, url };
    let answer = SdpAnswer::from_sdp_string(&answer)
        .map_err(|e| Failure::new(FailureKind::Refused, format!("upstream's answer is not SDP: {e}")))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| Failure::new(FailureKind::Refused, format!("upstream's answer not acceptable: {e}")))?;
    tracing::debug!(%room, %local, "pull answered; connecting");

    let mids = [audio, video];
    let started = Instant::now();
    let mut last_input = started;
    let mut connected = false;
    let mut buf = vec![0u8; 2048];
    loop {
        loop {
            match commands.try_recv() {
                Ok(Command::RequestKeyframe) => request_keyframe(&mut rtc, video),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = rtc.close();
                    flush(&mut rtc, &socket);
                    return Ok(());
                }
            }
        }
        let deadline = loop {
            match rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    if let Err(e) = socket.send_to(&t.contents, t.destination) {
                        tracing::trace!(error = %e, "pull send failed");
                    }
                }
                Ok(Output::Event(event)) => match event {
                    Event::Connected => {
                        connected = true;
                        emit(PullEvent::Connected { codecs: negotiated(&rtc, &mids) });
                    }
                    Event::RtpPacket(pkt) => emit(PullEvent::Packet(Box::new(pkt))),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        return Err(Failure::new(FailureKind::Dropped, "ICE disconnected from the upstream"));
                    }
                    _ => {}
                },
                Ok(Output::Timeout(t)) => break t,
                Err(e) => return Err(Failure::new(FailureKind::Dropped, format!("session failed: {e}"))),
            }
        };
        let now = Instant::now();
        if !rtc.is_alive() {
            return Err(Failure::new(FailureKind::Dropped, "the upstream ended the session"));
        }
        if !connected && now.duration_since(started) >= CONNECT_TIMEOUT {
            return Err(Failure::new(
                FailureKind::NoMedia,
                format!("no ICE/DTLS connection to the upstream within {CONNECT_TIMEOUT:?}"),
            ));
        }
        if now.duration_since(last_input) >= SILENCE {
            let kind = if connected { FailureKind::Dropped } else { FailureKind::NoMedia };
            return Err(Failure::new(kind, format!("the upstream sent nothing for {SILENCE:?}")));
        }
        let wait = deadline.saturating_duration_since(now).clamp(Duration::from_millis(1), TURN);
        socket.set_read_timeout(Some(wait)).expect("a non-zero timeout");
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                let now = Instant::now();
                if let Ok(receive) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                    last_input = now;
                    if let Err(e) = rtc.handle_input(Input::Receive(now, receive)) {
                        tracing::debug!(error = %e, "pull refused a datagram");
                    }
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => tracing::debug!(error = %e, "pull recv failed"),
        }
        if let Err(e) = rtc.handle_input(Input::Timeout(Instant::now())) {
            tracing::debug!(error = %e, "pull timeout failed");
        }
    }
}

/// Sends what the session still has to say (its goodbye).
fn flush(rtc: &mut Rtc, socket: &UdpSocket) {
    while let Ok(output) = rtc.poll_output() {
        match output {
            Output::Transmit(t) => {
                let _ = socket.send_to(&t.contents, t.destination);
            }
            Output::Event(_) => {}
            Output::Timeout(_) => break,
        }
    }
}

fn request_keyframe(rtc: &mut Rtc, video: Mid) {
    let mut api = rtc.direct_api();
    let ssrcs: Vec<_> = api.stream_rx_by_mid(video, None).map(|rx| rx.ssrc()).into_iter().collect();
    for ssrc in ssrcs {
        if let Some(rx) = api.stream_rx(&ssrc) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        }
    }
}

/// The ring entries of what the upstream may send.
fn negotiated(rtc: &Rtc, mids: &[Mid]) -> Vec<CodecEntry> {
    codec::negotiated(rtc, mids).params().iter().filter_map(codec::entry).collect()
}

/// The local address the kernel would send from to reach `target`.
fn local_ip_towards(target: SocketAddr) -> Result<IpAddr, Failure> {
    let any: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("a literal address");
    let probe = UdpSocket::bind(any)
        .and_then(|s| s.connect(target).map(|()| s))
        .and_then(|s| s.local_addr())
        .map_err(|e| Failure::new(FailureKind::Unreachable, format!("no route to {target}: {e}")))?;
    Ok(probe.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_base() {
        let u = Upstream::new("http://origin:8080/prefix/", None, None).unwrap();
        assert_eq!(u.base(), "http://origin:8080/prefix");
        assert_eq!(u.whep_url(&RoomName::new("a").unwrap()), "http://origin:8080/prefix/whep/a");
        assert_eq!(u.resolve("/session/w0-1"), "http://origin:8080/session/w0-1");
        assert_eq!(u.resolve("session/w0-1"), "http://origin:8080/prefix/session/w0-1");
        assert_eq!(u.resolve("https://other/session/x"), "https://other/session/x");
        let plain = Upstream::new("https://sfu.example", None, None).unwrap();
        assert_eq!(plain.resolve("/session/x"), "https://sfu.example/session/x");
    }

    #[test]
    fn the_token_goes_to_the_upstreams_origin_only() {
        let base = "http://origin:8080/prefix";
        assert!(same_origin("http://origin:8080/session/w0-1", base));
        assert!(same_origin("http://ORIGIN:8080/x", base));
        assert!(!same_origin("http://origin:8081/session/w0-1", base));
        assert!(!same_origin("https://origin:8080/session/w0-1", base));
        assert!(!same_origin("http://evil.example/session/w0-1", base));
        assert!(!same_origin("http://origin:8080@evil.example/x", base));
        assert!(same_origin("https://sfu.example/session/x", "https://sfu.example"));
        assert!(same_origin("https://sfu.example:443/session/x", "https://sfu.example"));
        assert!(same_origin("http://[::1]:8080/session/x", "http://[::1]:8080"));
        assert!(!same_origin("http://[::1]:8081/session/x", "http://[::1]:8080"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("deadsfu-upstream-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Upstream::new("https://origin", None, Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let err = Upstream::new("https://origin", None, Some(&dir.join("missing.pem"))).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unreachable_upstreams_fail_with_a_reason() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let u = Upstream::new("http://127.0.0.1:1", None, None).unwrap();
        let err = u.post(&RoomName::new("a").unwrap(), "v=0\r\n".into()).unwrap_err();
        assert_eq!(err.kind, FailureKind::Unreachable, "{err:?}");
        assert!(err.message.contains("127.0.0.1:1"), "{}", err.message);
    }
}
