//! A flood of datagrams at a media process's UDP port does not stall its loop: the systemd watchdog keeps
//! being pinged and the control socket keeps answering while the flood lasts.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadsfu_tests::{bin_dir, free_port, notify_socket};
use shm_proto::control::{Request, Response};

#[test]
fn a_datagram_flood_leaves_the_watchdog_and_control_answering() {
    let (notify, sock_path, dir) = notify_socket("flood", Duration::from_millis(20));
    let runtime = format!("/dev/shm/deadsfu-flood-{}", std::process::id());
    let port = free_port();
    let child = Command::new(bin_dir().join("deadsfu-ingest"))
        .args(["--runtime-dir", &runtime, "--ingest-port", &port.to_string(), "--log", "warn", "--slate", "false"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdin(Stdio::null())
        .spawn()
        .expect("binary is built");
    let _stop = Stop(child);
    let mut buf = [0u8; 512];
    let ready_by = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < ready_by, "ingest did not get ready");
        if let Ok(n) = notify.recv(&mut buf) {
            if buf[..n].trim_ascii() == b"READY=1" {
                break;
            }
        }
    }

    // Two senders of garbage shaped like STUN, DTLS and RTP, for 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..2)
        .map(|k| {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                let shapes: [&[u8]; 4] =
                    [b"\x00\x01\x00\x00\x21\x12\xa4\x42", b"\x16\xfe\xfd\x00\x00\x00", b"\x80\x60\x00\x01", b"\xff"];
                let mut i = k;
                while !stop.load(Ordering::Relaxed) {
                    let mut d = shapes[i % shapes.len()].to_vec();
                    d.resize(d.len() + (i * 37) % 1200, (i % 251) as u8);
                    if s.send_to(&d, ("127.0.0.1", port)).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let control = shm_proto::paths::ingest_socket(std::path::Path::new(&runtime));
    let flood_start = Instant::now();
    let mut pings = vec![flood_start];
    let mut slowest_call = Duration::ZERO;
    let mut next_call = flood_start;
    while flood_start.elapsed() < Duration::from_secs(3) {
        if let Ok(n) = notify.recv(&mut buf) {
            if buf[..n].trim_ascii() == b"WATCHDOG=1" {
                pings.push(Instant::now());
            }
        }
        if Instant::now() >= next_call {
            let t = Instant::now();
            let answer = shm_proto::control::call(&control, &Request::Status, Duration::from_secs(5));
            slowest_call = slowest_call.max(t.elapsed());
            assert!(matches!(answer, Ok(Response::Status(_))), "control did not answer during the flood: {answer:?}");
            next_call = Instant::now() + Duration::from_millis(250);
        }
    }
    pings.push(Instant::now());
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&runtime);
    let gap = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!(
        "flood: {} datagrams in 3 s; watchdog pings {} (longest gap {gap:?}); slowest control call {slowest_call:?}",
        sent.load(Ordering::Relaxed),
        pings.len() - 2
    );
    // Pings are due every 0.5 s; systemd would act after 1 s without one.
    assert!(gap < Duration::from_secs(1), "the watchdog went {gap:?} without a ping during the flood");
}

/// Stops the child however the test ends.
struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
