//! Where a core's datagrams go.
//!
//! A core never touches a socket: what its sessions send goes to an [`Outbox`] its shell gives it. Most of it
//! comes out of str0m as a [`Transmit`] with a buffer of its own; fanout's media is written in place instead
//! ([`Outbox::write`]: the worker, or str0m's `DirectApi::send_rtp_now`, appends a protected packet to the
//! outbox's buffer), so a packet going to many viewers costs no allocation per viewer. A process's outbox is its sockets
//! ([`crate::process`]); a test's or a tool's is any `FnMut(Transmit)`.

use std::net::SocketAddr;

use str0m::net::{Protocol, Transmit};

/// Where a datagram goes: its protocol, local (source) and remote (destination) address.
pub type Path = (Protocol, SocketAddr, SocketAddr);

/// Takes the datagrams of a core's turn.
pub trait Outbox {
    /// A datagram a session made.
    fn transmit(&mut self, t: Transmit);

    /// A datagram written in place: `write` appends it to the buffer it is given and returns where it goes,
    /// or appends nothing and returns `None` (nothing to send).
    fn write(&mut self, write: &mut dyn FnMut(&mut Vec<u8>) -> Option<Path>);

    /// Sends what is queued now rather than at the end of the turn. An outbox that sends at once (a closure)
    /// has nothing to do.
    fn flush(&mut self) {}
}

/// Any `FnMut(Transmit)` is an outbox; a datagram written in place is made into a [`Transmit`] for it.
impl<F: FnMut(Transmit)> Outbox for F {
    fn transmit(&mut self, t: Transmit) {
        self(t)
    }

    fn write(&mut self, write: &mut dyn FnMut(&mut Vec<u8>) -> Option<Path>) {
        let mut buf = Vec::new();
        if let Some((proto, source, destination)) = write(&mut buf) {
            self(Transmit { proto, source, destination, contents: buf.into() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closure_gets_what_is_written_in_place_as_a_transmit() {
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let mut got = Vec::new();
        let mut out = |t: Transmit| got.push((t.source, t.destination, t.contents.to_vec()));
        let outbox: &mut dyn Outbox = &mut out;
        outbox.write(&mut |buf| {
            buf.extend_from_slice(b"hello");
            Some((Protocol::Udp, a, b))
        });
        outbox.write(&mut |_| None);
        outbox.transmit(Transmit { proto: Protocol::Udp, source: b, destination: a, contents: b"x".to_vec().into() });
        assert_eq!(got, [(a, b, b"hello".to_vec()), (b, a, b"x".to_vec())]);
    }
}
