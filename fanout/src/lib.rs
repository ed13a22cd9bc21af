//! deadsfu fanout: a worker that owns viewer sessions and sends them what the rooms' rings carry.
//!
//! Owns: its viewer sessions, its read position in each ring it serves, each viewer's splicing (sequence
//! numbers and timestamps across sources), GOP replay, retransmissions.
//! Must not touch: a ring's contents (it only reads them, and leaves keyframe requests, heartbeats and its
//! wake-up bit in the header), publishers, HTTP, other workers' viewers.
//!
//! [`fanout::Fanout`] is the core (given requests, packets, time and randomness; no sockets, no clock), with
//! its parts: `feed` (a room's ring as the worker reads it: replays, live reads, lag skips), `viewer` (a
//! viewer's tracks, payload types and delivery), `egress` (a viewer's packets written and sealed past its str0m
//! session) and [`splice`] (the numbering of one track). The binary `deadsfu-fanout` is a thin shell around
//! [`fanout::run`]; the modules are public so tests (`deadsfu_tests::sim`) and fuzz targets drive the core
//! without a process.

// Denied, not forbidden: `prefetch` allows it for one CPU hint.
#![deny(unsafe_code)]

mod egress;
pub mod fanout;
mod feed;
mod layers;
mod prefetch;
pub mod splice;
mod viewer;

/// Which viewers get a bandwidth estimate ([`fanout::Fanout::with_estimation`]).
pub use deadsfu_runtime::config::Estimation;
