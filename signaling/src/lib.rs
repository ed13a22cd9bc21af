//! deadsfu signaling: the HTTP face (WHIP, WHEP, pages, health) as a library, so tests and fuzz targets can
//! drive the router without sockets. The binary is `deadsfu-signaling`; the one-host supervisor that starts it
//! is the `deadsfu-supervisor` crate.
//!
//! Owns: HTTP (listeners, TLS, limits, routes), which process serves a session (ingest, or the worker it
//! picked), the registry of what the media processes report. Must not touch: media, sessions' state, the
//! rings; it reaches the media processes only through their control sockets.

#![forbid(unsafe_code)]

pub mod acme;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod router;
pub mod tls;
