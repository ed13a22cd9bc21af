//! The media processes push their changes to signaling: a subscriber of a worker is told of a viewer that
//! joins, and a long-poll of the room list answers as the worker reports the viewer, not on a timer.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use deadsfu_tests::{http, viewer_offer, wait_for, Sfu};
use shm_proto::control::{Role, Subscription};
use shm_proto::paths;

fn rooms(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = http(port, "GET", path, &[], b"").expect("an answer to GET /rooms");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn a_viewer_joining_reaches_subscribers_and_waiting_room_lists_at_once() {
    let sfu = Sfu::start(1, &[]);
    let port = sfu.http_port;

    // A subscriber of the worker gets its state at once.
    let socket = paths::fanout_socket(&sfu.runtime_dir, 0);
    let mut subscription = Subscription::open(&socket, Duration::from_secs(10)).expect("a subscription");
    let first = subscription.recv().expect("the first update");
    assert_eq!(first.status.role, Role::Fanout);
    assert_eq!(first.status.sessions, 0);
    assert!(first.rooms.is_empty(), "{first:?}");

    // A long-poll waits on the list as it is.
    let before = rooms(port, "/rooms");
    assert_eq!(before["rooms"].as_array().map(Vec::len), Some(0), "{before}");
    let version = before["version"].as_u64().expect("a version");
    let (answered, arrival) = mpsc::channel();
    // Ingest's view of the room may come first (signaling tells it to watch the room once the worker took the
    // viewer): the list waited for is the first with the viewer.
    let poller = std::thread::spawn(move || {
        let mut version = version;
        loop {
            let list = rooms(port, &format!("/rooms?wait={version}"));
            let viewers = list["rooms"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["name"] == "pushed"))
                .map(|r| r["viewers"].clone());
            if viewers == Some(1.into()) {
                answered.send(Instant::now()).expect("the test waits");
                return list;
            }
            version = list["version"].as_u64().expect("a version");
        }
    });
    assert!(arrival.recv_timeout(Duration::from_millis(300)).is_err(), "a viewer before any joined");

    let offer = viewer_offer();
    let (status, body) =
        http(port, "POST", "/whep/pushed", &[("Content-Type", "application/sdp")], offer.as_bytes()).expect("WHEP");
    assert_eq!(status, 201, "{body}");
    let joined = Instant::now();

    // The subscriber is told of the viewer.
    let update = wait_for("an update with the viewer", Duration::from_secs(10), || {
        let update = subscription.recv().expect("updates keep coming");
        (update.status.sessions == 1).then_some(update)
    });
    assert!(update.seq > first.seq);
    let room = update.rooms.iter().find(|r| r.name.as_str() == "pushed").expect("the viewer's room");
    assert_eq!(room.viewers, 1);

    // A long-poll answered with the viewer, moments after the join returned (it usually answers before: the
    // worker reports the viewer while signaling still tells ingest to watch the room). How soon is printed, not
    // bounded: the router's tests show long-polls are answered from the registry without asking anyone.
    let answered_at = arrival.recv_timeout(Duration::from_secs(30)).expect("the long-poll answers");
    let list = poller.join().expect("the long-poll thread");
    let pushed = list["rooms"].as_array().and_then(|r| r.iter().find(|r| r["name"] == "pushed")).cloned();
    assert_eq!(pushed.as_ref().map(|r| r["viewers"].clone()), Some(1.into()), "{list}");
    let late = answered_at.saturating_duration_since(joined);
    eprintln!("the long-poll answered {late:?} after the viewer's join returned");
}

fn viewers_of(list: &serde_json::Value, room: &str) -> Option<u64> {
    list["rooms"].as_array()?.iter().find(|r| r["name"] == room)?["viewers"].as_u64()
}

#[test]
fn a_worker_that_restarts_drops_out_of_the_room_list_and_comes_back() {
    let sfu = Sfu::start(2, &[]);
    let port = sfu.http_port;
    let join = || {
        let offer = viewer_offer();
        let (status, body) =
            http(port, "POST", "/whep/back", &[("Content-Type", "application/sdp")], offer.as_bytes()).expect("WHEP");
        assert_eq!(status, 201, "{body}");
    };
    // One viewer on each worker (joins go to the least loaded).
    join();
    join();
    let before = wait_for("both viewers in the room list", Duration::from_secs(10), || {
        let list = rooms(port, "/rooms");
        (viewers_of(&list, "back") == Some(2)).then_some(list)
    });
    let health = sfu.health().expect("health");
    let victim = health["workers"][1]["pid"].as_u64().expect("worker 1's pid");
    let version = before["version"].as_u64().expect("a version");

    // A long-poll sees the worker's viewer go with the worker.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("worker 1 is killed");
    let after = rooms(port, &format!("/rooms?wait={version}"));
    assert_eq!(viewers_of(&after, "back"), Some(1), "{after}");

    // The supervisor restarts it; it is followed again, and takes viewers.
    wait_for("worker 1 back", Duration::from_secs(20), || {
        let h = sfu.health()?;
        let w = h["workers"].as_array()?.iter().find(|w| w["index"] == 1)?.clone();
        (w["pid"].as_u64()? != victim && w["accepting"] == true).then_some(())
    });
    join();
    // The least loaded worker is the restarted one: its viewer went with it.
    let list = wait_for("the new viewer in the room list", Duration::from_secs(10), || {
        let list = rooms(port, "/rooms");
        (viewers_of(&list, "back") == Some(2)).then_some(list)
    });
    let health = sfu.health().expect("health");
    let viewers: Vec<u64> =
        health["workers"].as_array().expect("workers").iter().map(|w| w["viewers"].as_u64().unwrap_or(0)).collect();
    assert_eq!(viewers, [1, 1], "{health} {list}");
}
