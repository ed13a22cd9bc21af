//! Every process tells systemd it is ready once it serves, and pings the watchdog while it runs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deadsfu_tests::{bin_dir, free_port, notify_socket};

/// Runs `program` with a notify socket and a 1 s watchdog; returns the messages it sent within `window`.
fn notifications(program: &str, args: &[&str], window: Duration) -> Vec<String> {
    let (sock, sock_path, dir) = notify_socket(&format!("notify-{program}"), Duration::from_millis(100));
    let runtime = format!("/dev/shm/deadsfu-notify-{}-{program}", std::process::id());
    let mut child = Command::new(bin_dir().join(program))
        .args(args)
        .args(["--runtime-dir", &runtime, "--ingest-port", "0", "--fanout-port", "0", "--log", "warn"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdin(Stdio::null())
        .spawn()
        .expect("binary is built");
    let mut got = Vec::new();
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&runtime);
    got
}

fn check(program: &str, args: &[&str]) {
    let got = notifications(program, args, Duration::from_millis(2500));
    assert_eq!(got.first().map(String::as_str), Some("READY=1"), "{program}: {got:?}");
    let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 3, "{program}: a 1 s watchdog pinged {pings} times in 2.5 s: {got:?}");
}

#[test]
fn ingest_notifies() {
    check("deadsfu-ingest", &[]);
}

#[test]
fn fanout_notifies() {
    check("deadsfu-fanout", &["--index", "3"]);
}

#[test]
fn signaling_notifies() {
    let http = format!("127.0.0.1:{}", free_port());
    check("deadsfu-signaling", &["--http", &http]);
}
