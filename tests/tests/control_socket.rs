//! Bad frames on a media process's control socket drop that connection and nothing else.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use deadsfu_tests::Sfu;
use shm_proto::control::{self, Request, Response, HEADER_LEN, MAGIC, MAX_BODY, VERSION};
use shm_proto::paths;

fn header(magic: u16, version: u16, len: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN);
    f.extend_from_slice(&magic.to_le_bytes());
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&len.to_le_bytes());
    f
}

/// Sends `bytes` (optionally half-closing) and expects the process to close the connection unanswered.
fn expect_dropped(path: &std::path::Path, bytes: &[u8], half_close: bool) {
    let mut s = UnixStream::connect(path).expect("control socket accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "no answer to a bad frame, got {} bytes", rest.len()),
        // Closing with unread bytes in the socket resets the connection: dropped all the same.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn bad_frames_drop_only_their_connection() {
    let sfu = Sfu::start(1, &[]);
    let before = sfu.health().unwrap();
    let sockets = [paths::ingest_socket(&sfu.runtime_dir), paths::fanout_socket(&sfu.runtime_dir, 0)];
    for path in &sockets {
        // Something that is not our protocol at all.
        expect_dropped(path, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
        // Another protocol version.
        expect_dropped(path, &header(MAGIC, VERSION + 1, 2), false);
        // A length over the maximum: refused before the body is read or allocated.
        expect_dropped(path, &header(MAGIC, VERSION, (MAX_BODY + 1) as u32), false);
        expect_dropped(path, &header(MAGIC, VERSION, u32::MAX), false);
        // A body that is not a message.
        let mut garbage = header(MAGIC, VERSION, 4);
        garbage.extend_from_slice(b"\xff\x00{]");
        expect_dropped(path, &garbage, false);
        // A truncated frame: header says 100 bytes, 10 arrive, then the client stops sending.
        let mut truncated = header(MAGIC, VERSION, 100);
        truncated.extend_from_slice(b"{\"id\":1,\"m");
        expect_dropped(path, &truncated, true);
        // A well-formed call naming what is no room name (a path out of the rings directory) is no message.
        for room in ["../x", ""] {
            let body = format!(r#"{{"id":1,"msg":{{"type":"ingest","op":"watch","room":"{room}"}}}}"#);
            let mut bad_room = header(MAGIC, VERSION, body.len() as u32);
            bad_room.extend_from_slice(body.as_bytes());
            expect_dropped(path, &bad_room, false);
        }

        // The process still answers good calls.
        let resp = control::call(path, &Request::Status, Duration::from_secs(5)).expect("status call works");
        assert!(matches!(resp, Response::Status(_)), "{resp:?}");
    }
    assert!(!sfu.runtime_dir.join("x.ring").exists(), "a ring outside the rings directory");
    // No process died or restarted.
    let after = sfu.health().unwrap();
    assert_eq!(before["ingest"]["pid"], after["ingest"]["pid"]);
    assert_eq!(before["workers"], after["workers"]);
    assert_eq!(after["ok"], true);
}
