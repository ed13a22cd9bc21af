//! Harnesses for tests across processes: [`sim`] runs the media path (ingest, rings, fanout workers) in
//! memory on a simulated clock; the rest runs the built deadsfu binaries as real processes.
//!
//! The binaries are taken from the target directory of the test binary itself (`target/release` when the
//! tests run with `--release`), so the test command builds once and every test uses that build.

#![forbid(unsafe_code)]

pub mod sim;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A systemd-style notify socket in a fresh directory named after `name`: what a child started with
/// `NOTIFY_SOCKET=<path>` tells systemd arrives here. Returns the socket (reads time out after `timeout`), its
/// path, and the directory to remove afterwards.
pub fn notify_socket(name: &str, timeout: Duration) -> (std::os::unix::net::UnixDatagram, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("deadsfu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("a notify socket");
    sock.set_read_timeout(Some(timeout)).expect("a read timeout");
    (sock, path, dir)
}

/// The directory holding the deadsfu binaries of this build.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEADSFU_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test binary>
    exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

/// Asks the kernel to stamp each datagram `socket` receives with the time it was queued there
/// (`SO_TIMESTAMPNS`), read from the `SCM_TIMESTAMPNS` control message.
pub fn stamp_receipts(socket: &impl std::os::fd::AsFd) -> nix::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
}

/// A free TCP port on loopback (free at the time of the call).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("loopback is available")
}

/// Polls `f` until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A WHEP offer (audio and video, receive only) from a peer that never connects: a viewer session to a worker
/// that no media reaches.
pub fn viewer_offer() -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().expect("an address");
    rtc.add_local_candidate(str0m::Candidate::host(addr, "udp").expect("a host candidate"));
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, _pending) = change.apply().expect("an offer");
    offer.to_sdp_string()
}

/// A minimal HTTP/1.1 client: status and body.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// A running deadsfu (the supervisor and its children), stopped on drop.
pub struct Sfu {
    pub child: Child,
    pub http_port: u16,
    pub runtime_dir: PathBuf,
}

impl Sfu {
    /// Starts deadsfu with `workers` fanout workers on free ports and a fresh runtime directory, and waits
    /// until `/healthz` shows every worker.
    pub fn start(workers: u32, extra: &[&str]) -> Sfu {
        let http_port = free_port();
        let runtime_dir = PathBuf::from(format!("/dev/shm/deadsfu-test-{}-{http_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&runtime_dir);
        let child = Command::new(bin_dir().join("deadsfu"))
            .args(["--http", &format!("127.0.0.1:{http_port}"), "--workers", &workers.to_string()])
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .args(["--ingest-port", "0", "--fanout-port", "0", "--log", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("deadsfu binary is built (run the tests with --release after cargo build --release)");
        let sfu = Sfu { child, http_port, runtime_dir };
        wait_for("deadsfu to be healthy", Duration::from_secs(20), || {
            let health = sfu.health()?;
            (health["ok"] == true && health["workers"].as_array()?.len() == workers as usize).then_some(())
        });
        sfu
    }

    /// `GET /healthz` as JSON (whatever its status).
    pub fn health(&self) -> Option<serde_json::Value> {
        let (_, body) = http(self.http_port, "GET", "/healthz", &[], b"")?;
        serde_json::from_str(&body).ok()
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}
