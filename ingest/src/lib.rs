//! deadsfu ingest: owns every publisher session and writes each RTP packet once into its room's ring.
//!
//! The binary `deadsfu-ingest` is a thin shell around [`shell::run`]; the modules are public so tests and
//! fuzz targets can drive the cores without a process.

#![forbid(unsafe_code)]

pub mod ingest;
pub mod keyframe;
pub mod pulls;
pub mod room;
pub mod shell;
pub mod slate;
pub mod upstream;
