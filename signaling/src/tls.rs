//! The HTTPS listener: TLS is terminated here (rustls) and the plaintext relayed to signaling's own HTTP
//! listener on loopback, so one HTTP server answers both and every route behaves the same on either.
//!
//! One thread per connection relays in both directions with `poll(2)` on the two sockets; a connection idle
//! for [`IDLE`] (longer than a room-list long-poll) is closed.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// A connection with no traffic either way for this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// Why the HTTPS listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read TLS private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS certificate and key do not go together: {0}")]
    Config(rustls::Error),
    #[error("cannot listen for HTTPS on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

/// The TLS configuration from PEM files.
pub fn config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert { path: shown(cert), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: shown(cert), reason: "no certificate in the file".into() });
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: shown(key), reason: e.to_string() })?;
    let config =
        ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

/// Listens on `addr` and relays every connection to the HTTP listener at `upstream`, from background threads.
pub fn serve(addr: SocketAddr, upstream: SocketAddr, config: Arc<ServerConfig>) -> Result<(), TlsError> {
    let listener = TcpListener::bind(addr).map_err(|source| TlsError::Listen { addr, source })?;
    std::thread::Builder::new()
        .name("https".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let config = config.clone();
                let spawned = std::thread::Builder::new().name("https-conn".into()).spawn(move || {
                    if let Err(e) = relay(tcp, upstream, config) {
                        tracing::debug!(error = %e, "HTTPS connection ended");
                    }
                });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot spawn an HTTPS connection thread");
                }
            }
        })
        .expect("spawning a thread at startup succeeds");
    Ok(())
}

fn relay(client: TcpStream, upstream: SocketAddr, config: Arc<ServerConfig>) -> io::Result<()> {
    let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut client = client;
    let mut up = TcpStream::connect(upstream)?;
    client.set_nonblocking(true)?;
    up.set_nonblocking(true)?;
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let mut to_up: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let (mut client_done, mut up_done) = (false, false);
    loop {
        let mut client_events = PollFlags::empty();
        if !client_done {
            client_events |= PollFlags::POLLIN;
        }
        if tls.wants_write() {
            client_events |= PollFlags::POLLOUT;
        }
        let mut up_events = PollFlags::empty();
        if !up_done {
            up_events |= PollFlags::POLLIN;
        }
        if !to_up.is_empty() {
            up_events |= PollFlags::POLLOUT;
        }
        let mut fds = [PollFd::new(client.as_fd(), client_events), PollFd::new(up.as_fd(), up_events)];
        let timeout = PollTimeout::try_from(IDLE.as_millis() as i32).unwrap_or(PollTimeout::NONE);
        if poll(&mut fds, timeout).map_err(io::Error::from)? == 0 {
            return Ok(());
        }
        // Client -> TLS -> plaintext -> upstream.
        if !client_done {
            match tls.read_tls(&mut client) {
                Ok(0) => client_done = true,
                Ok(_) => {
                    tls.process_new_packets().map_err(io::Error::other)?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            loop {
                match tls.reader().read(&mut buf) {
                    Ok(0) => {
                        client_done = true;
                        break;
                    }
                    Ok(n) => to_up.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        while !to_up.is_empty() {
            match up.write(&to_up) {
                Ok(n) => {
                    to_up.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if client_done && to_up.is_empty() {
            let _ = up.shutdown(std::net::Shutdown::Write);
        }
        // Upstream -> plaintext -> TLS -> client.
        if !up_done {
            loop {
                match up.read(&mut buf) {
                    Ok(0) => {
                        up_done = true;
                        tls.send_close_notify();
                        break;
                    }
                    Ok(n) => tls.writer().write_all(&buf[..n])?,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        while tls.wants_write() {
            match tls.write_tls(&mut client) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if up_done && !tls.wants_write() {
            return Ok(());
        }
        if client_done && up_done {
            return Ok(());
        }
    }
}
