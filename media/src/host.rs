//! A sans-IO table of WebRTC sessions sharing one port.
//!
//! Datagrams are routed to a session by the remote address it last used, and a STUN request from an address
//! not seen before by the ICE ufrag in its USERNAME: never by asking every session. Each session remembers
//! when it next wants to be polled, so a quiet session costs nothing until its timer is due.

use std::collections::HashMap;
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
}

impl<T> Session<T> {
    /// How long the peer has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.last_input)
    }

    /// Marks the session as having work to flush (e.g. after writing media into it).
    pub fn touch(&mut self) {
        self.dirty = true;
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
}

impl<T> Default for SessionHost<T> {
    fn default() -> Self {
        SessionHost { sessions: HashMap::new(), by_remote: HashMap::new(), by_ufrag: HashMap::new(), next_key: 1 }
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
            Session { rtc, app, ufrag, remotes: Vec::new(), last_input: now, next_timeout: None, dirty: true },
        );
        key
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
        if let Err(e) = session.rtc.handle_input(input) {
            tracing::debug!(error = %e, "session refused input");
        }
        session.last_input = now;
        session.drain(key, send, events);
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
    pub fn next_timeout(&self) -> Option<Instant> {
        self.sessions.values().filter_map(|s| if s.dirty { None } else { s.next_timeout }).min()
    }

    /// True if some session was touched and must be polled now.
    pub fn has_dirty(&self) -> bool {
        self.sessions.values().any(|s| s.dirty)
    }

    /// Drives every session that has work or whose timer is due: transmits go to `send`, events to `events`.
    /// Returns the keys of sessions that are no longer alive; the caller removes them.
    pub fn poll(
        &mut self,
        now: Instant,
        send: &mut dyn FnMut(Transmit),
        events: &mut Vec<(SessionKey, Event)>,
    ) -> Vec<SessionKey> {
        let mut dead = Vec::new();
        for (key, s) in self.sessions.iter_mut() {
            let due = s.next_timeout.is_none_or(|t| t <= now);
            if !(s.dirty || due) {
                continue;
            }
            if due {
                if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(error = %e, "session timeout failed");
                }
            }
            s.drain(*key, send, events);
            if !s.rtc.is_alive() {
                dead.push(*key);
            }
        }
        dead
    }
}
