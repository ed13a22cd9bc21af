//! deadsfu on one host: the supervisor behind the `deadsfu` command. It starts signaling, ingest and the fanout
//! workers as child processes, restarts any that dies (with backoff), and stops them all on SIGTERM or Ctrl-C.
//!
//! - [`preflight`]: what it checks before starting anything (the runtime directory is its alone, every port
//!   is free), so a second instance stops at once naming the setting to change.
//! - [`handoff`]: how each child gets the configuration the supervisor loaded: one YAML file in the runtime
//!   directory, given with `--config`.
//!
//! What it must not touch: media, the rings, HTTP, the control protocol. It starts and watches processes; it
//! knows of the others only their program names, the configuration they share and the runtime directory.
//! Under systemd it is not used at all: each process has its own unit (see `systemd/`).

#![forbid(unsafe_code)]

pub mod handoff;
pub mod preflight;
