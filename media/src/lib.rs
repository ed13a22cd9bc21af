//! WebRTC session hosting shared by deadsfu's two media processes, ingest and fanout.
//!
//! Owns: the sockets of a media process (UDP and ICE-TCP), the session table and its routing, SDP offers to
//! sessions, the run loop. Must not touch: rings, rooms and what media means (the cores', in ingest and
//! fanout), HTTP (signaling's).
//!
//! Both processes own many str0m sessions on one UDP port and are driven by signaling over a control socket.
//! What they share lives here:
//! - [`net`]: the UDP sockets of a process, one per advertised address, and the only place that touches them;
//! - [`env`](mod@env): the time and randomness a core is given by its shell (the system's, or a test's simulation);
//! - [`codec`]: the mapping between negotiated payload types and the ring's codec table;
//! - [`host`]: a sans-IO table of sessions that routes datagrams by remote address and ICE ufrag and drives
//!   each session's timers;
//! - [`offer`]: turning an SDP offer into a session and its answer;
//! - [`outbox`]: where a core's datagrams go, written in place or as str0m made them;
//! - [`process`]: the control-socket inbox, signals and ids that every media process needs;
//! - [`tcp`]: ICE over TCP, for peers whose network blocks UDP;
//! - [`wake`]: ingest waking the fanout workers when rings they read have new packets.
//!
//! The run loop of a media process:
//! ```no_run
//! # use std::time::Instant;
//! # use deadsfu_media::{host::SessionHost, net::{RecvBatch, UdpSet}};
//! # fn run(udp: &mut UdpSet, host: &mut SessionHost<()>) -> std::io::Result<()> {
//! let mut batch = RecvBatch::default();
//! let mut events = Vec::new();
//! loop {
//!     // 1. wait on mio until a socket is readable, the control inbox wakes us, or host.next_timeout()
//!     // 2. feed every datagram, read a batch per system call
//!     for index in 0..udp.len() {
//!         while udp.recv_batch(index, &mut batch)? > 0 {
//!             for (datagram, source, destination) in batch.iter() {
//!                 host.handle_datagram(Instant::now(), source, destination, datagram, &mut |t| udp.send(t), &mut events);
//!             }
//!         }
//!     }
//!     // 3. app work: write media into sessions (fanout) or read their events (ingest)
//!     events.clear();
//!     // 4. drive every session that has work or a timer due, then remove the ones that ended
//!     for gone in host.poll(Instant::now(), &mut |t| udp.send(t), &mut events) {
//!         host.remove(gone);
//!     }
//!     udp.flush();
//!     # break;
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod codec;
pub mod env;
pub mod host;
pub mod limits;
pub mod net;
pub mod offer;
pub mod outbox;
pub mod process;
pub mod tcp;
pub mod wake;
