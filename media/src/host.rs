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
    dirty: bool,
    /// Closing: its goodbye (RTCP BYE, DTLS close_notify) goes out at the next poll, then it is dead.
    closing: bool,
}

impl<T> Session<T> {
    /// How long the peer has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.last_input)
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

/// What happened to a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// Handed to this session.
    To(SessionKey),
    /// No session wants it (an unknown peer, a closed session, or a datagram that is not WebRTC).
    Dropped,
}

pub struct SessionHost<T> {
    sessions: HashMap<SessionKey, Session<T>>,
    by_remote: HashMap<SocketAddr, SessionKey>,
    by_ufrag: HashMap<String, SessionKey>,
    next_key: u64,
    /// Sessions with work to flush at the next [`SessionHost::poll`].
    dirty: Vec<SessionKey>,
    /// When sessions want to be polled. An entry is stale unless it equals its session's `next_timeout`;
    /// stale entries are dropped when they reach the top.
    timers: BinaryHeap<Reverse<(Instant, SessionKey)>>,
}

impl<T> Default for SessionHost<T> {
    fn default() -> Self {
        SessionHost {
            sessions: HashMap::new(),
            by_remote: HashMap::new(),
            by_ufrag: HashMap::new(),
            next_key: 1,
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
        }
    }
}

impl<T> SessionHost<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
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
            Session {
                rtc,
                app,
                ufrag,
                remotes: Vec::new(),
                last_input: now,
                next_timeout: None,
                dirty: true,
                closing: false,
            },
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
        let s = self.sessions.remove(&key)?;
        self.by_ufrag.remove(&s.ufrag);
        for r in &s.remotes {
            if self.by_remote.get(r) == Some(&key) {
                self.by_remote.remove(r);
            }
        }
        Some(s)
    }

    pub fn get_mut(&mut self, key: SessionKey) -> Option<&mut Session<T>> {
        self.sessions.get_mut(&key)
    }

    pub fn get(&self, key: SessionKey) -> Option<&Session<T>> {
        self.sessions.get(&key)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (SessionKey, &mut Session<T>)> {
        self.sessions.iter_mut().map(|(k, s)| (*k, s))
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
        let Ok(receive) = Receive::new(Protocol::Udp, source, destination, buf) else {
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
        if let Some(t) = session.next_timeout {
            self.timers.push(Reverse((t, key)));
        }
        if !session.remotes.contains(&source) {
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
                if s.next_timeout == Some(t) && !s.dirty {
                    s.dirty = true;
                    work.push(key);
                }
            }
        }
        let mut dead = Vec::new();
        for key in work.drain(..) {
            let Some(s) = self.sessions.get_mut(&key) else { continue };
            if s.next_timeout.is_none_or(|t| t <= now) {
                if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(error = %e, "session timeout failed");
                }
            }
            s.drain(key, send, events);
            if s.closing {
                // The goodbye went out with this drain; nothing more is owed to the peer.
                s.rtc.disconnect();
            }
            if let Some(t) = s.next_timeout {
                self.timers.push(Reverse((t, key)));
            }
            if !s.rtc.is_alive() {
                dead.push(key);
            }
        }
        // Keep the allocation for the next turn.
        self.dirty = work;
        dead
    }
}
