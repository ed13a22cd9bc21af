//! The one-host supervisor: distinct processes, restart of a dead worker, two instances side by side, the
//! configuration its children run with.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use deadsfu_tests::{bin_dir, free_port, http, wait_for, Sfu};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn pids(health: &serde_json::Value) -> Vec<u64> {
    let mut out = vec![health["signaling"]["pid"].as_u64().unwrap(), health["ingest"]["pid"].as_u64().unwrap()];
    out.extend(health["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()));
    out
}

fn program(pid: u64) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap();
    String::from_utf8_lossy(argv0).rsplit('/').next().unwrap().to_string()
}

#[test]
fn every_role_is_its_own_process() {
    let sfu = Sfu::start(2, &[]);
    let health = sfu.health().unwrap();
    let pids = pids(&health);
    let mut unique = pids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 4, "signaling, ingest and 2 workers are distinct processes: {pids:?}");
    assert_eq!(program(pids[0]), "deadsfu-signaling");
    assert_eq!(program(pids[1]), "deadsfu-ingest");
    assert_eq!(program(pids[2]), "deadsfu-fanout");
    assert_eq!(program(pids[3]), "deadsfu-fanout");
}

#[test]
fn a_killed_worker_is_restarted_and_the_rest_untouched() {
    let sfu = Sfu::start(2, &[]);
    let before = sfu.health().unwrap();
    let victim = before["workers"][1]["pid"].as_u64().unwrap();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let after = wait_for("worker 1 to come back", Duration::from_secs(10), || {
        let h = sfu.health()?;
        let w = h["workers"].as_array()?.iter().find(|w| w["index"] == 1)?.clone();
        (w["pid"].as_u64()? != victim && h["ok"] == true).then_some(h)
    });
    assert_eq!(after["ingest"]["pid"], before["ingest"]["pid"], "ingest untouched");
    assert_eq!(after["signaling"]["pid"], before["signaling"]["pid"], "signaling untouched");
    assert_eq!(after["workers"][0]["pid"], before["workers"][0]["pid"], "worker 0 untouched");
}

#[test]
fn two_instances_run_side_by_side() {
    let a = Sfu::start(1, &[]);
    let b = Sfu::start(1, &[]);
    let (ha, hb) = (a.health().unwrap(), b.health().unwrap());
    assert_ne!(a.runtime_dir, b.runtime_dir);
    let (pa, pb) = (pids(&ha), pids(&hb));
    assert!(pa.iter().all(|p| !pb.contains(p)), "no process shared: {pa:?} {pb:?}");
}

#[test]
fn signaling_notices_workers_added_and_removed_at_runtime() {
    let sfu = Sfu::start(1, &[]);
    let count = |sfu: &Sfu| sfu.health().and_then(|h| h["workers"].as_array().map(Vec::len));
    assert_eq!(count(&sfu), Some(1));
    // A second worker started by hand, as `systemctl start deadsfu-fanout@1` would.
    let mut extra = std::process::Command::new(deadsfu_tests::bin_dir().join("deadsfu-fanout"))
        .args(["--index", "1", "--fanout-port", "0", "--ingest-port", "0", "--log", "warn", "--runtime-dir"])
        .arg(&sfu.runtime_dir)
        .spawn()
        .expect("fanout binary is built");
    wait_for("signaling to see worker 1", Duration::from_secs(5), || (count(&sfu)? == 2).then_some(()));
    // And stopped again: its socket file stays behind, but a worker that does not answer is not listed.
    kill(Pid::from_raw(extra.id() as i32), Signal::SIGKILL).unwrap();
    extra.wait().unwrap();
    wait_for("signaling to drop worker 1", Duration::from_secs(5), || (count(&sfu)? == 1).then_some(()));
    assert_eq!(sfu.health().unwrap()["ok"], true);
}

#[test]
fn children_die_with_a_killed_supervisor() {
    let mut sfu = Sfu::start(1, &[]);
    let before = sfu.health().unwrap();
    // A restarted child too, not only the first generation.
    let worker = before["workers"][0]["pid"].as_u64().unwrap();
    kill(Pid::from_raw(worker as i32), Signal::SIGKILL).unwrap();
    let after = wait_for("worker 0 to come back", Duration::from_secs(10), || {
        let h = sfu.health()?;
        let pid = h["workers"].as_array()?.first()?["pid"].as_u64()?;
        (pid != worker).then_some(h)
    });
    kill(Pid::from_raw(sfu.child.id() as i32), Signal::SIGKILL).unwrap();
    sfu.child.wait().unwrap();
    for pid in pids(&after) {
        wait_for(&format!("pid {pid} to exit with the supervisor"), Duration::from_secs(5), || {
            // A zombie still has /proc/PID but no cmdline; either way the process has ended.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.is_empty().then_some(())
        });
    }
}

/// Runs the supervisor with `args` until it exits (or 10 s pass); its exit status and what it logged.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(deadsfu_tests::bin_dir().join("deadsfu"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the supervisor binary is built");
    let status = wait_for("the second instance to exit", Duration::from_secs(10), || child.try_wait().unwrap());
    let out = child.wait_with_output().unwrap();
    (status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_second_instance_on_taken_ports_or_directory_stops_and_names_the_setting() {
    let first = Sfu::start(1, &[]);
    let other_dir = format!("{}-other", first.runtime_dir.display());
    let http = format!("127.0.0.1:{}", deadsfu_tests::free_port());

    // A UDP port held by another program (another instance's ingest, here a plain socket).
    let ingest_port = deadsfu_tests::free_port();
    let held = std::net::UdpSocket::bind(("127.0.0.1", ingest_port)).unwrap();
    let port = ingest_port.to_string();
    let (code, log) = run_to_exit(&["--http", &http, "--runtime-dir", &other_dir, "--ingest-port", &port]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&format!("UDP port 0.0.0.0:{ingest_port} (ingest_port, --ingest-port) is in use")), "{log}");
    assert!(!log.contains("started process"), "nothing was started: {log}");
    drop(held);

    // The first instance's runtime directory.
    let dir = first.runtime_dir.display().to_string();
    let (code, log) =
        run_to_exit(&["--http", &http, "--runtime-dir", &dir, "--ingest-port", "0", "--fanout-port", "0"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&format!("runtime directory {dir} is in use by another deadsfu")), "{log}");

    // Its HTTP port.
    let taken = format!("127.0.0.1:{}", first.http_port);
    let args = ["--http", &taken, "--runtime-dir", &other_dir, "--ingest-port", "0", "--fanout-port", "0"];
    let (code, log) = run_to_exit(&args);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&format!("HTTP address {taken} (http, --http) is in use")), "{log}");
    assert_eq!(first.health().unwrap()["ok"], true, "the first instance is untouched");
    let _ = std::fs::remove_dir_all(other_dir);
}

#[test]
fn children_run_with_the_supervisors_configuration_and_not_its_environment() {
    // The supervisor takes the flag over the variable; its children must too, though they inherit the
    // variable's environment. The token reaches them in a private file, not on a command line.
    let (port, decoy) = (free_port(), free_port());
    let runtime_dir = PathBuf::from(format!("/dev/shm/deadsfu-test-handoff-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runtime_dir);
    let child = Command::new(bin_dir().join("deadsfu"))
        .args(["--http", &format!("127.0.0.1:{port}"), "--workers", "1", "--ingest-port", "0"])
        .args(["--fanout-port", "0", "--log", "warn", "--runtime-dir"])
        .arg(&runtime_dir)
        .env("DEADSFU_HTTP", format!("127.0.0.1:{decoy}"))
        .env("DEADSFU_BEARER_TOKEN", "handoff-secret")
        .stdin(Stdio::null())
        .spawn()
        .expect("the supervisor binary is built");
    let sfu = Sfu { child, http_port: port, runtime_dir };
    let health = wait_for("deadsfu to be healthy on the flag's port", Duration::from_secs(20), || {
        let h = sfu.health()?;
        (h["ok"] == true && h["workers"].as_array()?.len() == 1).then_some(h)
    });
    assert!(http(decoy, "GET", "/healthz", &[], b"").is_none(), "nothing listens on the variable's port");
    let (status, _) = http(port, "POST", "/whep/room", &[("Content-Type", "application/sdp")], b"v=0").unwrap();
    assert_eq!(status, 401, "signaling got the token");

    let file = sfu.runtime_dir.join("deadsfu.effective.yaml");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&format!("127.0.0.1:{port}")) && text.contains("handoff-secret"), "{text}");
    for pid in pids(&health) {
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).into_owned();
        assert!(cmdline.contains("deadsfu.effective.yaml"), "pid {pid} runs {cmdline:?}");
        assert!(!cmdline.contains("handoff-secret"), "pid {pid} shows the token: {cmdline:?}");
    }
}
