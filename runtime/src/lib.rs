//! What every deadsfu process does around its work, the same in signaling, ingest, the fanout workers and the
//! supervisor.
//!
//! - [`config`]: the configuration keys, each declared once (field, doc, flag, `DEADSFU_*` variable,
//!   default), loaded from the file, the environment and the flags, and checked.
//! - [`logging`]: `tracing` output to stderr, filtered by the `log` key.
//! - [`service`]: readiness, stopping and watchdog notifications to systemd.
//! - [`process`]: this process's own usage, its open-file limit, and dying with the supervisor that started
//!   it.
//!
//! A program flattens [`config::ConfigArgs`] into its arguments and calls [`config::ConfigArgs::startup`]
//! first; that loads the configuration, starts logging and ties the process to its supervisor.
//!
//! What this crate must not touch: media, the rings, the control protocol, HTTP. Those belong to `shm-proto`
//! (the contract between the processes) and to the programs; this crate knows no more of them than the
//! names and bounds of their settings, so any of them can take it without taking the others.

#![forbid(unsafe_code)]

pub mod config;
pub mod logging;
pub mod process;
pub mod service;
