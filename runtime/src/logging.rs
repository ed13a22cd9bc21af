//! Where `tracing` output goes: stderr, which journald picks up under systemd and the supervisor's terminal
//! shows otherwise, filtered by the `log` key.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter a `log` value (`RUST_LOG` syntax) stands for; the error says what is wrong with it.
pub fn filter(text: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(text).map_err(|e| e.to_string())
}

/// Sends this process's `tracing` output to stderr through `filter` (`info` if it does not parse; a loaded
/// configuration's has been checked), in colour on a terminal.
pub fn init(filter_text: &str) {
    let filter = filter(filter_text).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
