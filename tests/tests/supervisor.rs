//! The one-host supervisor: distinct processes, restart of a dead worker, two instances side by side.

use std::time::Duration;

use deadsfu_tests::{wait_for, Sfu};
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
