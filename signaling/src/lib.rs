//! deadsfu signaling: the HTTP face (WHIP, WHEP, pages, health) as a library, so tests and fuzz targets can
//! drive the router without sockets. The binary is `deadsfu-signaling`; the one-host supervisor that starts it
//! is the `deadsfu-supervisor` crate.

#![forbid(unsafe_code)]

pub mod acme;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod router;
pub mod tls;
