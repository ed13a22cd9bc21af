//! deadsfu signaling: the HTTP face (WHIP, WHEP, pages, health) as a library, so tests and fuzz targets can
//! drive the router without sockets. The binaries are `deadsfu-signaling` and the supervisor `deadsfu`.

#![forbid(unsafe_code)]

pub mod acme;
pub mod http;
pub mod metrics;
pub mod preflight;
pub mod router;
pub mod tls;
