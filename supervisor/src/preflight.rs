//! What the supervisor checks before it starts anything: that the runtime directory is its alone and that every
//! port the processes will listen on is free. A second instance on one host with the first's defaults (an edge
//! next to its origin, a test run beside a service) otherwise starts processes that fail to bind and are
//! restarted for ever; here it stops at once and says which setting to change.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;

use deadsfu_runtime::config::Config;
use nix::fcntl::{Flock, FlockArg};

/// Name of the lock file the supervisor holds in its runtime directory for as long as it runs.
pub const LOCK_FILE: &str = "deadsfu.lock";

/// Why this instance cannot start. The text is for the person starting it.
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    #[error(
        "runtime directory {0} is in use by another deadsfu (pid {1}): give each instance its own runtime_dir \
         (--runtime-dir)"
    )]
    RuntimeDir(String, String),
    #[error("cannot lock runtime directory {0}: {1}")]
    Lock(String, std::io::Error),
    #[error(
        "{what} {addr} ({setting}) is in use: another deadsfu or another program holds it. Instances on one host \
         need their own --http, --ingest-port, --fanout-port (a range of one port per worker) and --runtime-dir"
    )]
    InUse { what: &'static str, addr: SocketAddr, setting: String },
    #[error("cannot listen on {what} {addr} ({setting}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, setting: String, source: std::io::Error },
}

/// The lock on a runtime directory, held until dropped (or the process ends, whichever way).
pub struct RuntimeLock(#[allow(dead_code)] Flock<File>);

/// Locks `dir` for this instance, writing its pid into the lock file.
pub fn lock_runtime_dir(dir: &Path) -> Result<RuntimeLock, Conflict> {
    let shown = dir.display().to_string();
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Conflict::Lock(shown.clone(), e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            let _ = lock.set_len(0);
            let _ = std::io::Write::write_all(&mut &*lock, format!("{}\n", std::process::id()).as_bytes());
            Ok(RuntimeLock(lock))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default().trim().to_string();
            Err(Conflict::RuntimeDir(shown, if pid.is_empty() { "unknown".into() } else { pid }))
        }
        Err((_, e)) => Err(Conflict::Lock(shown, e.into())),
    }
}

/// Checks that every address the processes of `cfg` will listen on can be bound now: the HTTP, HTTPS and admin
/// listeners (TCP), the UDP ports of ingest and of each fanout worker, and with `ice_tcp` the TCP ports of the
/// same numbers. Port 0 (any free port) always is.
pub fn check_ports(cfg: &Config) -> Result<(), Conflict> {
    let tcp = [
        ("HTTP address", cfg.http_addr().ok(), "http, --http"),
        ("HTTPS address", cfg.https_addr().ok().flatten(), "https, --https"),
        ("admin address", cfg.admin_addr().ok().flatten(), "admin, --admin"),
    ];
    for (what, addr, setting) in tcp {
        let Some(addr) = addr.filter(|a| a.port() != 0) else { continue };
        TcpListener::bind(addr).map_err(|e| conflict(what, addr, setting.to_string(), e))?;
    }
    let mut udp = vec![(cfg.ingest_port, "ingest_port, --ingest-port".to_string())];
    if cfg.fanout_port != 0 {
        for k in 0..cfg.worker_count() {
            let setting = format!("worker {k}'s: fanout_port + {k}, --fanout-port");
            udp.push((cfg.fanout_port.saturating_add(k as u16), setting));
        }
    }
    for (port, setting) in udp.into_iter().filter(|(port, _)| *port != 0) {
        // A wildcard bind conflicts with any socket on the port, whichever address it is bound to.
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        UdpSocket::bind(addr).map_err(|e| conflict("UDP port", addr, setting.clone(), e))?;
        if cfg.ice_tcp {
            TcpListener::bind(addr).map_err(|e| conflict("TCP port", addr, format!("{setting}, ice_tcp"), e))?;
        }
    }
    Ok(())
}

fn conflict(what: &'static str, addr: SocketAddr, setting: String, source: std::io::Error) -> Conflict {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        Conflict::InUse { what, addr, setting }
    } else {
        Conflict::Bind { what, addr, setting, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn a_second_lock_on_a_runtime_dir_names_the_first_holder() {
        let dir = std::env::temp_dir().join(format!("deadsfu-preflight-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock_runtime_dir(&dir).expect("the first lock");
        let Err(Conflict::RuntimeDir(_, pid)) = lock_runtime_dir(&dir) else { panic!("locked twice") };
        assert_eq!(pid, std::process::id().to_string());
        drop(first);
        lock_runtime_dir(&dir).expect("free again once the first is gone");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_port_in_use_names_its_setting() {
        let mut cfg = Config { http: "127.0.0.1:0".into(), workers: Some(2), ..Config::default() };
        cfg.ingest_port = free_port();
        cfg.fanout_port = free_port();
        check_ports(&cfg).expect("all free");

        let held = UdpSocket::bind(("127.0.0.1", cfg.fanout_port + 1)).unwrap();
        let err = check_ports(&cfg).expect_err("worker 1's port is taken");
        assert!(matches!(err, Conflict::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains("worker 1's: fanout_port + 1, --fanout-port"), "{err}");
        drop(held);

        // The TCP port of the same number, for ICE over TCP.
        let held = TcpListener::bind(("127.0.0.1", cfg.ingest_port)).unwrap();
        let err = check_ports(&cfg).expect_err("ingest's TCP port is taken");
        assert!(err.to_string().contains("(ingest_port, --ingest-port, ice_tcp) is in use"), "{err}");
        cfg.ice_tcp = false;
        check_ports(&cfg).expect("without ICE over TCP the TCP port is not needed");
        drop(held);

        let http = TcpListener::bind("127.0.0.1:0").unwrap();
        cfg.http = http.local_addr().unwrap().to_string();
        let err = check_ports(&cfg).expect_err("the HTTP port is taken");
        assert!(err.to_string().starts_with(&format!("HTTP address {} (http, --http) is in use", cfg.http)), "{err}");
    }
}
