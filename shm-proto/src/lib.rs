//! The contract between deadsfu's processes.
//!
//! - [`ring`]: the shared-memory media ring, one file per room, written by ingest and read by fanout workers.
//! - [`control`]: the framed request/response protocol signaling speaks to ingest and the workers.
//! - [`config`]: the configuration every process reads.
//! - [`paths`]: where each of these lives in the runtime directory.
//! - [`service`]: readiness and watchdog notifications to systemd.
//! - [`RoomName`]: the one definition of a valid room name.

pub mod config;
pub mod control;
pub mod paths;
pub mod ring;
pub mod service;

mod room;

pub use room::{RoomName, RoomNameError};
