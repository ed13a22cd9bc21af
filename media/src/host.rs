//! A sans-IO table of WebRTC sessions sharing one port.
//!
//! Datagrams are routed to a session by the remote address it last used, and a STUN request from an address
//! not seen before by the ICE ufrag in its USERNAME: never by asking every session. Sessions wait in a timer
//! heap until they next want to be polled, and sessions with new work sit on a dirty list, so a loop turn
//! costs what the active sessions cost, not what all of them do.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use rustc_hash::FxHashMap;
use str0m::ice::StunMessage;
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, Input, Output, Rtc};

/// Key of a session in a [`SessionHost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(u64);

/// One session and the application's state for it.
pub struct Session<T> {
    pub rtc: Rtc,
    pub app: T,
    ufrag: String,
    remotes: Vec<SocketAddr>,
    /// When the peer last sent anything (or when the session was made).
    last_input: Instant,
    next_timeout: Option<Instant>,
    /// The timeout of this session's entry in the timer heap, if one is there (stale entries aside).
    queued: Option<Instant>,
    dirty: bool,
    /// Closing: its goodbye (RTCP BYE, DTLS close_notify) goes out at the next poll, then it is dead.
    closing: bool,
}

impl<T> Session<T> {
    /// How long the peer has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.last_input)
    }

    /// An entry at `t` left the timer heap.
    fn unqueue(&mut self, t: Instant) {
        if self.queued == Some(t) {
            self.queued = None;
        }
    }

    /// Polls the session until it only has a timeout left.
    fn drain(&mut self, key: SessionKey, send: &mut dyn FnMut(Transmit), events: &mut Vec<(SessionKey, Event)>) {
        self.dirty = false;
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => send(t),
                Ok(Output::Event(e)) => events.push((key, e)),
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = Some(t);
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "session failed");
                    self.rtc.disconnect();
                    return;
                }
            }
        }
    }
}

/// Puts the session's timeout in the timer heap unless its entry is there already: a session that sends a
/// packet every few milliseconds mostly keeps the same timeout, and would otherwise leave an entry per
/// packet in the heap until that time came.
fn queue_timeout<T>(timers: &mut BinaryHeap<Reverse<(Instant, SessionKey)>>, key: SessionKey, s: &mut Session<T>) {
    if let Some(t) = s.next_timeout {
        if s.queued != Some(t) {
            timers.push(Reverse((t, key)));
            s.queued = Some(t);
        }
    }
}

/// What happened to a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// Handed to this session.
    To(SessionKey),
    /// No session wants it (an unknown peer, a closed session, or a datagram that is not WebRTC).
    Dropped,
}

/// Remote addresses a session takes datagrams from, over its life. A browser uses one or two (IPv4 and IPv6,
/// or a relayed path besides a direct one) and a new one when its network changes; more only come from a
/// peer that means harm. A client past it starts a new session.
pub const MAX_REMOTES: usize = 8;

pub struct SessionHost<T> {
    /// Boxed: an `Rtc` is about 10 KB, and a table of them inline would keep that much per empty slot (up to
    /// half the slots after it grows) and move every session each time it grows. Looked up for every viewer a
    /// packet goes to, by keys this table numbers itself (no peer chooses them): hashed with Fx, a multiply,
    /// rather than SipHash, which stands against keys chosen to collide.
    sessions: FxHashMap<SessionKey, Box<Session<T>>>,
    by_remote: HashMap<SocketAddr, SessionKey>,
    by_ufrag: HashMap<String, SessionKey>,
    next_key: u64,
    /// Sessions with work to flush at the next [`SessionHost::poll`].
    dirty: Vec<SessionKey>,
    /// When sessions want to be polled: a session's timeout is pushed when it changes, not at every drain. An
    /// entry is stale unless it equals its session's `next_timeout`; stale entries are dropped when they reach
    /// the top.
    timers: BinaryHeap<Reverse<(Instant, SessionKey)>>,
    /// Run for a session before it handles any input and after each drain of its output (see
    /// [`SessionHost::with_sync`]).
    sync: Option<SyncFn<T>>,
}

/// What [`SessionHost::with_sync`] runs: given a session's `Rtc`, the application's state for it, the time and
/// which side of str0m's work it is on.
pub type SyncFn<T> = fn(&mut Rtc, &mut T, Instant, SyncPoint);

/// When a [`SyncFn`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPoint {
    /// Before the session handles an input (a datagram, a timeout): str0m is about to act on what it knows.
    BeforeInput,
    /// After its output was drained: what str0m knows may have changed.
    AfterOutput,
}

impl<T> Default for SessionHost<T> {
    fn default() -> Self {
        SessionHost {
            sessions: FxHashMap::default(),
            by_remote: HashMap::new(),
            by_ufrag: HashMap::new(),
            next_key: 1,
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
            sync: None,
        }
    }
}

impl<T> SessionHost<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `sync` for a session before it handles any input (a datagram, a timeout) and after each drain of
    /// its output ([`SyncPoint`]): for an application that sends media past str0m (fanout's egress), to tell the
    /// session what it sent before the session acts on it, and to take what may have changed after.
    pub fn with_sync(mut self, sync: SyncFn<T>) -> Self {
        self.sync = Some(sync);
        self
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions whose ICE and DTLS have not both completed yet.
    pub fn pending(&self) -> usize {
        self.sessions.values().filter(|s| !s.rtc.is_connected()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Adds a session whose local ICE ufrag is `ufrag`, made at `now`.
    pub fn insert(&mut self, rtc: Rtc, ufrag: String, app: T, now: Instant) -> SessionKey {
        let key = SessionKey(self.next_key);
        self.next_key += 1;
        self.by_ufrag.insert(ufrag.clone(), key);
        self.sessions.insert(
            key,
            Box::new(Session {
                rtc,
                app,
                ufrag,
                remotes: Vec::new(),
                last_input: now,
                next_timeout: None,
                queued: None,
                dirty: true,
                closing: false,
            }),
        );
        self.dirty.push(key);
        key
    }

    /// Marks a session as having work to flush (e.g. after writing media into it).
    pub fn touch(&mut self, key: SessionKey) {
        if let Some(s) = self.sessions.get_mut(&key) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Ends a session: a live one says goodbye to its peer (RTCP BYE, DTLS close_notify, so a browser learns
    /// at once rather than by a timeout) at the next poll, which then reports it dead; a dead one is removed
    /// and returned.
    pub fn close(&mut self, key: SessionKey) -> Option<Session<T>> {
        let s = self.sessions.get_mut(&key)?;
        if s.rtc.is_alive() && !s.closing {
            if let Err(e) = s.rtc.close() {
                tracing::debug!(error = %e, "session close failed");
                s.rtc.disconnect();
            }
            s.closing = true;
            self.touch(key);
            return None;
        }
        self.remove(key)
    }

    pub fn remove(&mut self, key: SessionKey) -> Option<Session<T>> {
        let s = *self.sessions.remove(&key)?;
        self.by_ufrag.remove(&s.ufrag);
        for r in &s.remotes {
            if self.by_remote.get(r) == Some(&key) {
                self.by_remote.remove(r);
            }
        }
        Some(s)
    }

    pub fn get_mut(&mut self, key: SessionKey) -> Option<&mut Session<T>> {
        self.sessions.get_mut(&key).map(|s| &mut **s)
    }

    pub fn get(&self, key: SessionKey) -> Option<&Session<T>> {
        self.sessions.get(&key).map(|s| &**s)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (SessionKey, &mut Session<T>)> {
        self.sessions.iter_mut().map(|(k, s)| (*k, &mut **s))
    }

    pub fn keys(&self) -> impl Iterator<Item = SessionKey> + '_ {
        self.sessions.keys().copied()
    }

    /// Routes one received datagram to its session and drains that session's output at once: in RTP mode a
    /// session holds only one received packet until it is polled, so the next datagram would overwrite it.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        buf: &[u8],
        send: &mut dyn FnMut(Transmit),
        events: &mut Vec<(SessionKey, Event)>,
    ) -> Routed {
        self.handle_packet(now, Protocol::Udp, source, destination, buf, send, events)
    }

    /// [`handle_datagram`](Self::handle_datagram) for a packet that came over `proto`: UDP, or a frame of an
    /// ICE-TCP connection (see [`crate::tcp`]), whose remote address stands for the connection.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_packet(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        buf: &[u8],
        send: &mut dyn FnMut(Transmit),
        events: &mut Vec<(SessionKey, Event)>,
    ) -> Routed {
        let Ok(receive) = Receive::new(proto, source, destination, buf) else {
            return Routed::Dropped;
        };
        let input = Input::Receive(now, receive);
        let key = match self.by_remote.get(&source) {
            Some(key) if self.sessions.get(key).is_some_and(|s| s.rtc.accepts(&input)) => Some(*key),
            _ => self.by_stun_ufrag(buf).filter(|k| self.sessions.get(k).is_some_and(|s| s.rtc.accepts(&input))),
        };
        let Some(key) = key else {
            tracing::trace!(%source, "datagram for no session");
            return Routed::Dropped;
        };
        let session = self.sessions.get_mut(&key).expect("key was found in the table above");
        let new_remote = !session.remotes.contains(&source);
        if new_remote && session.remotes.len() >= MAX_REMOTES {
            // Every address a peer checks from becomes a remote candidate and pair inside str0m's ICE
            // agent: a peer trying ever new ones would grow the session without bound.
            tracing::trace!(%source, "datagram from one address too many for its session");
            return Routed::Dropped;
        }
        if let Some(sync) = self.sync {
            sync(&mut session.rtc, &mut session.app, now, SyncPoint::BeforeInput);
        }
        match session.rtc.handle_input(input) {
            Ok(()) => {}
            // A failed handshake (e.g. a certificate the DTLS stack refuses) can never recover: end the session
            // now rather than leaving it to the silence timeout.
            Err(e @ str0m::RtcError::Dtls(_)) => {
                tracing::warn!(error = %e, %source, "DTLS failed; closing the session");
                session.rtc.disconnect();
                if !session.dirty {
                    session.dirty = true;
                    self.dirty.push(key);
                }
            }
            Err(e) => tracing::debug!(error = %e, "session refused input"),
        }
        session.last_input = now;
        session.drain(key, send, events);
        if let Some(sync) = self.sync {
            sync(&mut session.rtc, &mut session.app, now, SyncPoint::AfterOutput);
        }
        queue_timeout(&mut self.timers, key, session);
        if new_remote {
            session.remotes.push(source);
            self.by_remote.insert(source, key);
        }
        Routed::To(key)
    }

    fn by_stun_ufrag(&self, buf: &[u8]) -> Option<SessionKey> {
        let msg = StunMessage::parse(buf).ok()?;
        let (local, _remote) = msg.split_username()?;
        self.by_ufrag.get(local).copied()
    }

    /// Sessions whose peer has sent nothing for `limit`: gone without saying so (ICE consent lapsed).
    pub fn silent(&self, now: Instant, limit: std::time::Duration) -> Vec<SessionKey> {
        self.sessions.iter().filter(|(_, s)| s.silent_for(now) >= limit).map(|(k, _)| *k).collect()
    }

    /// When the next session wants to be polled, if any does.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if self.sessions.get(&key).is_some_and(|s| s.next_timeout == Some(t)) {
                return Some(t);
            }
            self.timers.pop();
            if let Some(s) = self.sessions.get_mut(&key) {
                s.unqueue(t);
            }
        }
        None
    }

    /// True if some session was touched and must be polled now.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Drives every session that has work or whose timer is due: transmits go to `send`, events to `events`.
    /// Returns the keys of sessions that are no longer alive; the caller removes them.
    pub fn poll(
        &mut self,
        now: Instant,
        send: &mut dyn FnMut(Transmit),
        events: &mut Vec<(SessionKey, Event)>,
    ) -> Vec<SessionKey> {
        let mut work = std::mem::take(&mut self.dirty);
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(s) = self.sessions.get_mut(&key) {
                s.unqueue(t);
                if s.next_timeout == Some(t) && !s.dirty {
                    s.dirty = true;
                    work.push(key);
                }
            }
        }
        let mut dead = Vec::new();
        for key in work.drain(..) {
            let Some(s) = self.sessions.get_mut(&key) else { continue };
            if let Some(sync) = self.sync {
                sync(&mut s.rtc, &mut s.app, now, SyncPoint::BeforeInput);
            }
            if s.next_timeout.is_none_or(|t| t <= now) {
                if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(error = %e, "session timeout failed");
                }
            }
            s.drain(key, send, events);
            if let Some(sync) = self.sync {
                sync(&mut s.rtc, &mut s.app, now, SyncPoint::AfterOutput);
            }
            if s.closing {
                // The goodbye went out with this drain; nothing more is owed to the peer.
                s.rtc.disconnect();
            }
            queue_timeout(&mut self.timers, key, s);
            if !s.rtc.is_alive() {
                dead.push(key);
            }
        }
        // Keep the allocation for the next turn.
        self.dirty = work;
        // A session's timeout moves on as it sends, so stale entries pile up until their time comes: at a few
        // hundred packets a second, more than a hundred per session. Keep the heap to about the live entries.
        if self.timers.len() > 2 * self.sessions.len() + 64 {
            let sessions = &self.sessions;
            self.timers.retain(|Reverse((t, key))| sessions.get(key).is_some_and(|s| s.queued == Some(*t)));
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use str0m::media::{Direction, MediaKind, Mid};
    use str0m::rtp::RtpWrite;
    use str0m::Candidate;
    use str0m::IceConnectionState;

    use super::*;

    fn session(now: Instant) -> (Rtc, String) {
        let mut client = Rtc::builder().build(now);
        client.add_local_candidate(Candidate::host("127.0.0.1:5000".parse().unwrap(), "udp").unwrap());
        let mut change = client.sdp_api();
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, _) = change.apply().unwrap();
        let candidates = crate::offer::host_candidates(&["127.0.0.1:6000".parse().unwrap()], Protocol::Udp);
        let accepted = crate::offer::accept(&offer.to_sdp_string(), &candidates, now, |c| c).unwrap();
        (accepted.rtc, accepted.ufrag)
    }

    /// A str0m client (a full ICE agent) on `client` with one receive-only video section, and a host holding the
    /// session made from its offer on `server`, the answer applied: their handshake is the caller's to run.
    fn client_and_host(
        now: Instant,
        client: SocketAddr,
        server: SocketAddr,
    ) -> (Rtc, SessionHost<()>, SessionKey, Mid) {
        let mut rtc = Rtc::builder().build(now);
        rtc.add_local_candidate(Candidate::host(client, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let candidates = crate::offer::host_candidates(&[server], Protocol::Udp);
        let accepted = crate::offer::accept(&offer.to_sdp_string(), &candidates, now, |c| c).unwrap();
        let answer = str0m::change::SdpAnswer::from_sdp_string(&accepted.answer).unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let mut host = SessionHost::new();
        let key = host.insert(accepted.rtc, accepted.ufrag, (), now);
        (rtc, host, key, mid)
    }

    #[test]
    fn a_peer_checking_from_ever_new_addresses_does_not_grow_the_tables() {
        let now = Instant::now();
        let server_addr: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let (mut client, mut host, key, _) = client_and_host(now, "127.0.0.1:5000".parse().unwrap(), server_addr);
        // The client's first connectivity check, replayed from 100 source ports.
        let mut t = now;
        let check = loop {
            match client.poll_output().unwrap() {
                Output::Transmit(tx) => break tx.contents.to_vec(),
                Output::Timeout(at) => {
                    t = at.max(t + Duration::from_millis(1));
                    client.handle_input(Input::Timeout(t)).unwrap();
                }
                Output::Event(_) => {}
            }
        };
        let mut events = Vec::new();
        for port in 0..100u16 {
            let source = SocketAddr::from(([127, 0, 0, 1], 20000 + port));
            let routed = host.handle_datagram(t, source, server_addr, &check, &mut |_| {}, &mut events);
            let expected = if usize::from(port) < MAX_REMOTES { Routed::To(key) } else { Routed::Dropped };
            assert_eq!(routed, expected, "check from port {}", 20000 + port);
        }
        assert_eq!(host.get(key).unwrap().remotes.len(), MAX_REMOTES);
        assert_eq!(host.by_remote.len(), MAX_REMOTES);
        // The addresses it has are still served.
        let first = SocketAddr::from(([127, 0, 0, 1], 20000));
        assert_eq!(host.handle_datagram(t, first, server_addr, &check, &mut |_| {}, &mut events), Routed::To(key));
    }

    /// A viewer (str0m, a full ICE agent) and a host session sending it video every 33 ms, on a simulated
    /// clock. Once connected, the viewer's STUN is dropped from `stun_from` (as libnice, which keeps a pair
    /// with binding indications, sends no more binding requests) and all of its datagrams from `all_from`.
    /// Returns when the host session ended or its ICE disconnected (`Some(time since connected)`), or `None` if
    /// it lived `run_for`.
    fn viewer_without_binding_requests(stun_from: Duration, all_from: Duration, run_for: Duration) -> Option<Duration> {
        let start = Instant::now();
        let (client_addr, server_addr): (SocketAddr, SocketAddr) =
            ("127.0.0.1:5000".parse().unwrap(), "127.0.0.1:6000".parse().unwrap());
        let (mut client, mut host, key, mid) = client_and_host(start, client_addr, server_addr);

        let (mut now, mut connected_at, mut next_frame, mut seq) = (start, None, start, 0u16);
        let (mut to_client, mut events) = (Vec::new(), Vec::new());
        loop {
            let since = connected_at.map(|c: Instant| now - c);
            if since.is_some_and(|d| d > run_for) {
                return None;
            }
            assert!(now - start < Duration::from_secs(10) || connected_at.is_some(), "never connected");
            let client_timeout = loop {
                match client.poll_output().unwrap() {
                    Output::Transmit(t) => {
                        let is_stun = matches!(t.contents.first(), Some(0..=3));
                        let dropped = since.is_some_and(|d| d >= all_from || (is_stun && d >= stun_from));
                        if !dropped {
                            let to = &mut |t| to_client.push(t);
                            host.handle_datagram(now, client_addr, server_addr, &t.contents, to, &mut events);
                        }
                    }
                    Output::Timeout(t) => break t,
                    Output::Event(_) => {}
                }
            };
            if connected_at.is_some() && now >= next_frame {
                let rtc = &mut host.get_mut(key).unwrap().rtc;
                let pt = rtc.media(mid).unwrap().remote_pts()[0];
                let timestamp = (now - start).as_millis() as u32 * 90;
                let mut api = rtc.direct_api();
                let tx = api.stream_tx_by_mid(mid, None).expect("a send stream");
                tx.write_rtp(RtpWrite::new(pt, u64::from(seq).into(), timestamp, now, vec![0x10; 800]).marker(true));
                seq = seq.wrapping_add(1);
                host.touch(key);
                next_frame = now + Duration::from_millis(33);
            }
            if !host.poll(now, &mut |t| to_client.push(t), &mut events).is_empty() {
                return Some(now - connected_at.unwrap_or(start));
            }
            for (_, event) in events.drain(..) {
                match event {
                    Event::Connected => {
                        connected_at.get_or_insert(now);
                    }
                    // What ingest and fanout close a session on.
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        return Some(now - connected_at.unwrap_or(start));
                    }
                    _ => {}
                }
            }
            for t in to_client.drain(..) {
                let receive = Receive::new(Protocol::Udp, t.source, t.destination, &t.contents).unwrap();
                client.handle_input(Input::Receive(now, receive)).unwrap();
            }
            let host_timeout = host.next_timeout().unwrap_or(now + Duration::from_millis(100));
            let frame = if connected_at.is_some() { next_frame } else { now + Duration::from_secs(1) };
            now = client_timeout.min(host_timeout).min(frame).max(now + Duration::from_millis(1));
            client.handle_input(Input::Timeout(now)).unwrap();
        }
    }

    #[test]
    fn a_viewer_whose_media_flows_stays_without_binding_requests() {
        // Before str0m's ice-lite agent counted authenticated media, such a session ended 15 s in.
        assert_eq!(viewer_without_binding_requests(Duration::ZERO, Duration::MAX, Duration::from_secs(60)), None);
    }

    #[test]
    fn a_silent_viewer_is_dropped_after_the_ice_timeout() {
        let gone = viewer_without_binding_requests(Duration::ZERO, Duration::from_secs(5), Duration::from_secs(60));
        let gone = gone.expect("a viewer silent for 55 s is still there");
        assert!(gone > Duration::from_secs(15) && gone < Duration::from_secs(30), "dropped {gone:?} after connecting");
    }

    #[test]
    fn timer_heap_stays_small_while_sessions_are_touched() {
        let mut now = Instant::now();
        let mut host = SessionHost::new();
        let keys: Vec<SessionKey> = (0..3)
            .map(|_| {
                let (rtc, ufrag) = session(now);
                host.insert(rtc, ufrag, (), now)
            })
            .collect();
        let mut events = Vec::new();
        for i in 0..2000 {
            now += Duration::from_millis(1);
            for &key in &keys {
                host.touch(key);
                // The entry of a timeout the session has moved on from, as a sending session leaves them.
                host.timers.push(Reverse((now + Duration::from_secs(1) + Duration::from_micros(i), key)));
            }
            let dead = host.poll(now, &mut |_| {}, &mut events);
            assert!(dead.is_empty());
            assert!(host.timers.len() <= 2 * keys.len() + 64 + keys.len(), "{} timer entries", host.timers.len());
            // Every session's timeout is in the heap.
            for &key in &keys {
                let t = host.get(key).unwrap().next_timeout.expect("a timeout");
                assert!(host.timers.iter().any(|Reverse(e)| *e == (t, key)));
            }
            let next = host.next_timeout().expect("a timeout");
            assert!(keys.iter().all(|k| host.get(*k).unwrap().next_timeout.unwrap() >= next));
        }
    }
}
