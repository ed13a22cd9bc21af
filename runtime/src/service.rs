//! Telling systemd how a process is doing (`Type=notify` units): ready once it serves, alive while its loop
//! turns, stopping when it stops. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The process serves now.
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}

/// The process is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Watchdog pings at half the interval systemd asked for (`WatchdogSec=`), sent by the loop that does the
/// work, so a stuck loop gets the process restarted.
#[derive(Debug)]
pub struct Watchdog {
    interval: Option<Duration>,
    next: Instant,
}

impl Watchdog {
    /// The pings systemd asked this process for (`WATCHDOG_USEC`), first due at `now`; none outside a unit
    /// with `WatchdogSec=`.
    pub fn from_env(now: Instant) -> Watchdog {
        Watchdog { interval: sd_notify::watchdog_enabled().map(|d| d / 2), next: now }
    }

    /// When the loop must turn at the latest to ping in time.
    pub fn deadline(&self) -> Option<Instant> {
        self.interval.map(|_| self.next)
    }

    /// Pings if due.
    pub fn tick(&mut self, now: Instant) {
        let Some(interval) = self.interval else { return };
        if now >= self.next {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            self.next = now + interval;
        }
    }
}
