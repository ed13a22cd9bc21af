//! The contract between deadsfu's processes.
//!
//! - [`ring`]: the shared-memory media ring, one file per room, written by ingest and read by fanout workers.
//! - [`control`]: the framed request/response protocol signaling speaks to ingest and the workers.
//! - [`paths`]: where each of these lives in the runtime directory.
//! - [`RoomName`]: the one definition of a valid room name.
//! - [`SessionId`]: a session's id, which names the process ([`Owner`]) that holds the session.
//!
//! Owns: the bytes processes exchange and their meaning (layouts, frames, names, ids). Must not touch:
//! sockets other than the control protocol's, sessions, media semantics (what ingest and fanout do with the
//! ring), configuration. How a process is configured, logs and talks to systemd is not part of the contract:
//! that is the `deadsfu-runtime` crate.

pub mod control;
pub mod paths;
pub mod ring;

mod room;
mod session;

pub use room::{RoomName, RoomNameError, MAX_RID_LEN};
pub use session::{Owner, SessionId, SessionIdError, TOKEN_LEN};
