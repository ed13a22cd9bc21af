//! Wake-ups across processes: ingest tells fanout workers that a ring they read has new packets.
//!
//! A worker binds a Unix datagram socket (`paths::fanout_wake_socket`) in its run loop and sets its bit in the
//! rings it reads (`RingReader::want_wake`); after a loop turn that wrote packets, ingest sends one datagram to
//! each worker whose bit is set in a written ring. A worker busy with a turn finds the datagram at the next
//! one, and an idle worker sleeps in `epoll` instead of polling the rings: packets wait for no timer, and idle
//! rooms cost nothing. A lost wake-up (a full socket buffer means one is pending anyway) is covered by the
//! worker's slow poll of its rings.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// Ingest's side: sends wake-ups by worker bit.
pub struct WakeSender {
    socket: Option<UnixDatagram>,
    /// Socket path of worker `k`, for `k` in 0..64.
    paths: Vec<PathBuf>,
}

impl WakeSender {
    pub fn new(runtime_dir: &Path) -> WakeSender {
        let socket = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        if let Err(e) = &socket {
            tracing::warn!(error = %e, "no wake-up socket; workers fall back to polling their rings");
        }
        let paths = (0..64).map(|k| shm_proto::paths::fanout_wake_socket(runtime_dir, k)).collect();
        WakeSender { socket: socket.ok(), paths }
    }

    /// Wakes every worker whose bit is set in `mask`.
    pub fn wake(&self, mask: u64) {
        let Some(socket) = &self.socket else { return };
        let mut bits = mask;
        while bits != 0 {
            let k = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // A worker that is gone or restarting has no socket; one that has not read its last wake-up yet
            // has a full buffer. Neither needs another.
            if let Err(e) = socket.send_to(&[1], &self.paths[k]) {
                tracing::trace!(worker = k, error = %e, "wake-up not sent");
            }
        }
    }
}

/// A worker's side: the bound socket, registered in its run loop.
pub fn bind(path: &Path) -> io::Result<mio::net::UnixDatagram> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        // A socket left by a worker that died: this worker takes its place.
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; remove it if it is not needed", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    mio::net::UnixDatagram::bind(path)
}

/// Reads every pending wake-up; they carry nothing but the fact.
pub fn drain(socket: &mio::net::UnixDatagram) {
    let mut buf = [0u8; 16];
    while socket.recv(&mut buf).is_ok() {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn wakes_only_the_workers_in_the_mask() {
        let dir = std::env::temp_dir().join(format!("deadsfu-wake-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sockets: Vec<_> =
            (0..3).map(|k| bind(&shm_proto::paths::fanout_wake_socket(&dir, k)).expect("bind")).collect();
        let sender = WakeSender::new(&dir);
        sender.wake(0b101);
        // Bit 5 has no worker: nothing happens.
        sender.wake(1 << 5);
        std::thread::sleep(Duration::from_millis(10));
        let mut buf = [0u8; 4];
        assert!(sockets[0].recv(&mut buf).is_ok());
        assert!(sockets[1].recv(&mut buf).is_err(), "worker 1 was not in the mask");
        assert!(sockets[2].recv(&mut buf).is_ok());
        // A restarted worker binds over its old socket file.
        drop(bind(&shm_proto::paths::fanout_wake_socket(&dir, 0)).expect("rebind"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
