//! This process among others: what it uses (CPU, memory, open files), and its tie to the one-host supervisor
//! that started it, if one did.

/// CPU time (user + system, ms) and resident memory (bytes) of this process, from /proc; zeros where /proc
/// is not readable.
pub fn own_usage() -> (u64, u64) {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let cpu_ms = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which may hold spaces and ends with ')'.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) * 1000 / ticks)
        })
        .unwrap_or(0);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|m| m.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    (cpu_ms, rss)
}

/// Environment variable the one-host supervisor sets in its children: its own pid.
pub const SUPERVISOR_PID_ENV: &str = "DEADSFU_SUPERVISOR_PID";

/// Under the one-host supervisor, dies with it: asks the kernel for SIGTERM when the parent goes, and exits at
/// once if the parent is already gone (it died between the fork and this call). Outside the supervisor (e.g.
/// under systemd) does nothing.
pub fn follow_supervisor() {
    let Some(expected) = std::env::var(SUPERVISOR_PID_ENV).ok().and_then(|p| p.parse::<i32>().ok()) else { return };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        tracing::warn!(error = %e, "cannot ask to be stopped with the supervisor");
    }
    if nix::unistd::getppid().as_raw() != expected {
        eprintln!("deadsfu: the supervisor (pid {expected}) is gone; exiting");
        std::process::exit(0);
    }
}

/// Raises the soft limit of open files to the hard one: each HTTP connection and each session's sockets take
/// a descriptor, and the usual soft limit of 1024 is below the connection limits' defaults. Returns the limit
/// in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 0 };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return hard,
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        }
    }
    soft
}
