//! deadsfu ingest: owns every publisher session and writes each RTP packet once into its room's ring.
//!
//! Owns: publisher sessions, the rooms' rings (it is their only writer: packets, keyframe index, codec table,
//! heartbeat), the slate, keyframe requests to publishers, an edge's pulls from its upstream.
//! Must not touch: viewers (fanout's), HTTP and room assignment (signaling's), other processes' lifetimes
//! (the supervisor's or systemd's).
//!
//! [`ingest::Ingest`] is the core: given requests, packets, time and randomness, it writes rings and says
//! what its shell must do; [`room`], [`layers`] (a simulcast publisher's) and [`pulls`] are its parts. [`shell`] is the process around it (the
//! binary `deadsfu-ingest` calls [`shell::run`]); [`upstream`] the WHEP client an edge's pull runs. The
//! modules are public so tests (`deadsfu_tests::sim`) and fuzz targets drive the core without a process.

#![forbid(unsafe_code)]

pub mod ingest;
pub mod keyframe;
pub mod layers;
pub mod picture;
pub mod pulls;
pub mod room;
pub mod shell;
pub mod slate;
pub mod upstream;
