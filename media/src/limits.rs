//! Bounds on what a media process holds for clients it does not know: sessions, sessions still connecting,
//! and the counts of what was refused at each bound (`deadsfu_refused_total{process,limit}`).

use std::collections::BTreeMap;

use deadsfu_runtime::config::Config;

use crate::host::SessionHost;

/// How many sessions a process holds, from the configuration (`max_sessions`, `max_pending_sessions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Sessions at once, connected or not.
    pub max_sessions: usize,
    /// Sessions whose ICE and DTLS have not completed: each costs a DTLS handshake and memory before its
    /// peer proved it can answer, so these are bounded apart and tighter.
    pub max_pending: usize,
    /// Media sections (m-lines) in one offer (at most [`crate::offer::MAX_MEDIA_SECTIONS`]).
    pub max_media_sections: usize,
}

impl SessionLimits {
    pub fn from_config(cfg: &Config) -> SessionLimits {
        SessionLimits {
            max_sessions: cfg.max_sessions,
            max_pending: cfg.max_pending_sessions,
            max_media_sections: cfg.max_media_sections,
        }
    }

    /// The reason to refuse `offer` (it becomes a 400), if it has more media sections than allowed.
    pub fn check_offer(&self, offer: &str) -> Result<(), String> {
        let sections = crate::offer::media_section_count(offer);
        if sections > self.max_media_sections {
            return Err(format!(
                "the offer has {sections} media sections, more than the {} this server takes",
                self.max_media_sections
            ));
        }
        Ok(())
    }

    /// Whether `host` may take one more session; the limit that refuses it otherwise.
    pub fn admit<T>(&self, host: &SessionHost<T>) -> Result<(), Refusal> {
        if host.len() >= self.max_sessions {
            return Err(Refusal {
                limit: "sessions",
                message: format!("this process holds its limit of {} sessions; retry shortly", self.max_sessions),
            });
        }
        if host.pending() >= self.max_pending {
            return Err(Refusal {
                limit: "pending_sessions",
                message: format!("{} sessions are still connecting here, the limit; retry shortly", self.max_pending),
            });
        }
        Ok(())
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits::from_config(&Config::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_with_too_many_media_sections_are_refused() {
        let limits = SessionLimits { max_media_sections: 2, ..SessionLimits::default() };
        let two = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        assert!(limits.check_offer(two).is_ok());
        let three = format!("{two}m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n");
        let err = limits.check_offer(&three).unwrap_err();
        assert!(err.contains("3 media sections, more than the 2"), "{err}");
    }
}

/// A request refused at a limit: the limit's name (a metric label) and the message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub limit: &'static str,
    pub message: String,
}

/// Refusals since start, by limit.
#[derive(Clone, Debug, Default)]
pub struct Refusals(BTreeMap<&'static str, u64>);

impl Refusals {
    pub fn count(&mut self, limit: &'static str) {
        *self.0.entry(limit).or_default() += 1;
    }

    pub fn get(&self, limit: &str) -> u64 {
        self.0.get(limit).copied().unwrap_or(0)
    }

    /// The counts as [`shm_proto::control::ProcessMetrics::refused`] carries them.
    pub fn to_metrics(&self) -> Vec<(String, u64)> {
        self.0.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
}
