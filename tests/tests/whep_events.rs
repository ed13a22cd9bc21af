//! The WHEP server-sent-events extension on a running deadsfu: a viewer's 201 links its event stream, which
//! streams a `layers` event at once, is bounded by `http_max_long_polls` like the room-list long-polls, and
//! frees its place when the client goes.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use deadsfu_tests::{http, viewer_offer, wait_for, Sfu};

/// POSTs a viewer's offer for `room` and returns the response head (status line and headers).
fn join(port: u16, room: &str) -> String {
    let offer = viewer_offer();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let head = format!(
        "POST /whep/{room} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
        offer.len()
    );
    s.write_all(head.as_bytes()).and_then(|_| s.write_all(offer.as_bytes())).expect("send");
    let mut head = String::new();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).expect("read") == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    head
}

/// The URL of the event stream a viewer's 201 links.
fn events_url(head: &str) -> String {
    let link = head
        .lines()
        .filter_map(|l| l.strip_prefix("link: ").or_else(|| l.strip_prefix("Link: ")))
        .find(|l| l.contains("urn:ietf:params:whep:ext:core:server-sent-events"))
        .unwrap_or_else(|| panic!("no events link in {head}"));
    assert!(link.ends_with("events=\"layers\""), "{link}");
    link[1..link.find('>').expect("<url>")].to_string()
}

/// Opens an event stream: its status line, and the reader positioned after the head.
fn open(port: u16, url: &str) -> (String, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(format!("GET {url} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").as_bytes())
        .expect("send");
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("a header");
        if line == "\r\n" {
            break;
        }
        headers.push_str(&line.to_ascii_lowercase());
    }
    if status.contains(" 200 ") {
        assert!(headers.contains("content-type: text/event-stream"), "{headers}");
    }
    (status, r)
}

/// The next event's name and data (chunked transfer framing and comments skipped).
fn next_event(r: &mut BufReader<TcpStream>) -> (String, String) {
    let (mut name, mut data) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).expect("an event line") > 0, "the stream ended");
        let line = line.trim_end();
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            data = d.to_string();
        } else if line.is_empty() && !name.is_empty() {
            return (name, data);
        }
    }
}

#[test]
fn a_viewers_event_stream_says_its_rooms_layers_and_is_bounded_with_the_long_polls() {
    let sfu = Sfu::start(1, &["--http-max-long-polls", "1"]);
    let port = sfu.http_port;
    let head = join(port, "events");
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let url = events_url(&head);
    let mid = url.split("mid=").nth(1).expect("a mid").to_string();

    // Subscribing names the stream; the stream starts with the room's layers: none, without simulcast.
    let (status, body) =
        http(port, "POST", &url, &[("Content-Type", "application/json")], br#"["layers"]"#).expect("POST");
    assert_eq!(status, 201, "{body}");
    let (status, mut stream) = open(port, &url);
    assert!(status.contains(" 200 "), "{status}");
    let (name, data) = next_event(&mut stream);
    assert_eq!(name, "layers");
    let data: serde_json::Value = serde_json::from_str(&data).expect("JSON");
    assert_eq!(data[&mid]["layers"], serde_json::json!([]), "{data}");

    // The one place is taken: a second stream (or a room-list long-poll) is refused until the first goes.
    let (status, _) = open(port, &url);
    assert!(status.contains(" 503 "), "{status}");
    let (status, _) = http(port, "GET", "/rooms?wait=0", &[], b"").expect("GET");
    assert_eq!(status, 503);
    drop(stream);
    wait_for("the closed stream's place to come free", Duration::from_secs(10), || {
        let (status, _) = open(port, &url);
        status.contains(" 200 ").then_some(())
    });

    // A session that is not there has no stream (once the place is free again: the limit is looked at first),
    // and a malformed media id none either.
    let id_end = url.find("/events").expect("/events");
    let last = &url[id_end - 1..id_end];
    let gone = format!("{}{}{}", &url[..id_end - 1], if last == "a" { "b" } else { "a" }, &url[id_end..]);
    let status = wait_for("an answer other than 503", Duration::from_secs(10), || {
        let (status, _) = open(port, &gone);
        (!status.contains(" 503 ")).then_some(status)
    });
    assert!(status.contains(" 404 "), "{gone}: {status}");
    let bad = format!("{}?mid=a%2Fb", &url[..url.find('?').unwrap()]);
    assert!(open(port, &bad).0.contains(" 400 "));
}
