//! deadsfu fanout: a worker that owns viewer sessions and sends them what the rooms' rings carry.
//!
//! The binary `deadsfu-fanout` is a thin shell around [`fanout::run`]; the modules are public so tests and
//! fuzz targets can drive the cores without a process.

#![forbid(unsafe_code)]

pub mod fanout;
pub mod splice;
