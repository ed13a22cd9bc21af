//! Configuration shared by every deadsfu process.
//!
//! One YAML file (optional) is read by every process; command-line flags and `DEADSFU_*` environment variables
//! override it key by key; the defaults run on a laptop. An unknown key, a bad value or an unreadable file stops
//! the process at start with a message naming the key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listener of signaling, `HOST:PORT` or `:PORT` (all interfaces).
    pub http: String,
    /// HTTPS listener of signaling (`HOST:PORT` or `:PORT`), serving the same as `http`; needs `tls_cert` and
    /// `tls_key`, or `acme`.
    pub https: Option<String>,
    /// PEM file with the certificate chain for `https`, read again when it changes.
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key for `https`, read again when it changes.
    pub tls_key: Option<PathBuf>,
    /// Domain names to get the certificate of `https` for from an ACME CA (Let's Encrypt by default) instead
    /// of `tls_cert` and `tls_key`.
    pub acme: Vec<String>,
    /// Directory URL of the ACME CA.
    pub acme_directory: String,
    /// Contact email given to the ACME CA (expiry notices, if it sends them).
    pub acme_contact: Option<String>,
    /// Directory keeping the ACME account key and the certificates. Default: see [`Config::acme_cache_dir`].
    pub acme_cache_dir: Option<PathBuf>,
    /// PEM file of the certificate authorities to check the ACME CA's own API against, instead of the public
    /// ones (a private or test ACME server).
    pub acme_ca_file: Option<PathBuf>,
    /// Directory for the rings and the control sockets. Keep it on tmpfs.
    pub runtime_dir: Option<PathBuf>,
    /// Number of fanout workers (the supervisor starts this many). Default: number of cores.
    pub workers: Option<u32>,
    /// Token required for publishing and viewing (`Authorization: Bearer` or `?access_token=`).
    pub bearer_token: Option<String>,
    /// Token required for publishing only; overrides `bearer_token` for WHIP.
    pub publish_token: Option<String>,
    /// Token required for viewing only; overrides `bearer_token` for WHEP.
    pub view_token: Option<String>,
    /// UDP port of ingest (all publishers).
    pub ingest_port: u16,
    /// UDP port of fanout worker 0; worker `k` uses `fanout_port + k`.
    pub fanout_port: u16,
    /// Also take ICE over TCP (passive candidates) on the TCP ports of the same numbers, for peers whose
    /// network blocks UDP.
    pub ice_tcp: bool,
    /// Address to put in ICE candidates instead of the host's own addresses (a host behind 1:1 NAT).
    pub ice_candidate_host: Option<IpAddr>,
    /// Slots per room ring (a power of two).
    pub ring_slots: u32,
    /// Bytes per ring slot (a power of two, at least the largest RTP payload plus 128).
    pub ring_slot_size: u32,
    /// Log filter, as `RUST_LOG` (e.g. `info`, `deadsfu_fanout=debug`).
    pub log: String,
    /// Play the slate in watched rooms without live video (false: their viewers get nothing until it returns).
    pub slate: bool,
    /// H.264 slate clip (Annex B, an access unit delimiter before each frame) replacing the built-in one.
    pub slate_h264: Option<PathBuf>,
    /// Frame rate of `slate_h264`.
    pub slate_fps: u32,
    /// VP8 slate clip (IVF) replacing the built-in one.
    pub slate_vp8: Option<PathBuf>,
    /// Least time between two keyframe requests to a room's publisher, in milliseconds.
    pub keyframe_request_interval_ms: u64,
    /// A keyframe is requested from every watched publisher this often even if nobody asks, in seconds
    /// (0: never).
    pub keyframe_fallback_interval_s: u64,
    /// Base URL of an upstream deadsfu (`http://origin:8080`): this host is an edge that pulls a room over
    /// WHEP (`POST {url}/whep/{room}`) when its viewers ask for a room nobody publishes to here.
    pub dial_upstream: Option<String>,
    /// Bearer token sent with the pulls to `dial_upstream`.
    pub upstream_token: Option<String>,
    /// PEM file of the certificate authorities an `https` upstream's certificate is checked against, instead
    /// of the built-in public ones.
    pub upstream_ca: Option<PathBuf>,
    /// Seconds a pull goes on after the edge's last viewer of the room left.
    pub upstream_grace_s: u64,
    /// An edge (`dial_upstream` set) refuses publishers unless this is true; a local publisher then takes the
    /// room over from the pull.
    pub edge_publish: bool,
    /// Admin listener of signaling (`HOST:PORT` or `:PORT`): when set, `/metrics` is served there only
    /// (and `/healthz` there as well as on `http`). Keep it on a private address.
    pub admin: Option<String>,
    /// Open HTTP connections, all listeners together; past it a connection gets 503.
    pub http_max_connections: usize,
    /// Open HTTP connections from one client address; past it a connection gets 503.
    pub http_max_connections_per_ip: usize,
    /// Milliseconds for a request's head (and a TLS handshake) to arrive; an idle keep-alive connection is
    /// closed after it too.
    pub http_header_timeout_ms: u64,
    /// Milliseconds for a request's body to arrive after its head; past it the client gets 408.
    pub http_body_timeout_ms: u64,
    /// Bytes of a request's head (request line and headers), at least 8192; past it the client gets 431.
    pub http_max_header_bytes: usize,
    /// Room-list long-polls (`GET /rooms?wait=`) held at once; past it 503.
    pub http_max_long_polls: usize,
    /// Rooms ingest holds at once (published, watched or pulled); a request for a new room past it gets 503.
    pub max_rooms: usize,
    /// Sessions one media process holds (publishers in ingest, viewers in each worker); past it 503.
    pub max_sessions: usize,
    /// Sessions of one media process whose ICE and DTLS have not completed yet; past it 503.
    pub max_pending_sessions: usize,
    /// Media sections (m-lines) in one SDP offer, 1 to 64; past it 400.
    pub max_media_sections: usize,
    /// Seconds a room with no publisher and no viewer is kept before it and its ring file are removed.
    pub room_grace_s: u64,
    /// On an edge: pulls from the upstream at once; a viewer of a further room gets 503.
    pub max_pulls: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: ":8080".into(),
            https: None,
            tls_cert: None,
            tls_key: None,
            acme: Vec::new(),
            acme_directory: LETS_ENCRYPT_PRODUCTION.into(),
            acme_contact: None,
            acme_cache_dir: None,
            acme_ca_file: None,
            runtime_dir: None,
            workers: None,
            bearer_token: None,
            ingest_port: 10000,
            fanout_port: 10100,
            ice_tcp: true,
            ice_candidate_host: None,
            ring_slots: 4096,
            ring_slot_size: 2048,
            log: "info".into(),
            publish_token: None,
            view_token: None,
            slate: true,
            slate_h264: None,
            slate_fps: 10,
            slate_vp8: None,
            keyframe_request_interval_ms: 1000,
            keyframe_fallback_interval_s: 20,
            dial_upstream: None,
            upstream_token: None,
            upstream_ca: None,
            upstream_grace_s: 10,
            edge_publish: false,
            admin: None,
            http_max_connections: 1024,
            http_max_connections_per_ip: 64,
            http_header_timeout_ms: 10000,
            http_body_timeout_ms: 10000,
            http_max_header_bytes: 16384,
            http_max_long_polls: 1024,
            max_rooms: 1000,
            max_sessions: 5000,
            max_pending_sessions: 500,
            max_media_sections: 16,
            room_grace_s: 10,
            max_pulls: 100,
        }
    }
}

/// Flags and environment variables common to every process; each overrides the same key of the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConfigArgs {
    /// YAML configuration file.
    #[arg(long, env = "DEADSFU_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listener, HOST:PORT or :PORT.
    #[arg(long, env = "DEADSFU_HTTP")]
    pub http: Option<String>,
    /// HTTPS listener, HOST:PORT or :PORT (needs --tls-cert and --tls-key, or --acme).
    #[arg(long, env = "DEADSFU_HTTPS")]
    pub https: Option<String>,
    /// PEM certificate chain for the HTTPS listener (read again when it changes).
    #[arg(long, env = "DEADSFU_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the HTTPS listener (read again when it changes).
    #[arg(long, env = "DEADSFU_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Get the HTTPS certificate for these domains from an ACME CA (comma-separated or repeated).
    #[arg(long, env = "DEADSFU_ACME", value_delimiter = ',', value_name = "DOMAIN")]
    pub acme: Option<Vec<String>>,
    /// ACME directory URL (default: Let's Encrypt production).
    #[arg(long, env = "DEADSFU_ACME_DIRECTORY", value_name = "URL")]
    pub acme_directory: Option<String>,
    /// Contact email for the ACME account.
    #[arg(long, env = "DEADSFU_ACME_CONTACT", value_name = "EMAIL")]
    pub acme_contact: Option<String>,
    /// Directory for the ACME account key and certificates.
    #[arg(long, env = "DEADSFU_ACME_CACHE_DIR", value_name = "DIR")]
    pub acme_cache_dir: Option<PathBuf>,
    /// PEM certificate authorities for the ACME server's API (instead of the public ones).
    #[arg(long, env = "DEADSFU_ACME_CA_FILE", value_name = "FILE")]
    pub acme_ca_file: Option<PathBuf>,
    /// Runtime directory for rings and control sockets.
    #[arg(long, env = "DEADSFU_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Number of fanout workers.
    #[arg(long, env = "DEADSFU_WORKERS")]
    pub workers: Option<u32>,
    /// Bearer token required to publish and view.
    #[arg(long, env = "DEADSFU_BEARER_TOKEN")]
    pub bearer_token: Option<String>,
    /// UDP port of ingest.
    #[arg(long, env = "DEADSFU_INGEST_PORT")]
    pub ingest_port: Option<u16>,
    /// UDP port of fanout worker 0 (worker k uses this + k).
    #[arg(long, env = "DEADSFU_FANOUT_PORT")]
    pub fanout_port: Option<u16>,
    /// Also take ICE over TCP on the TCP ports of the same numbers as the UDP ports.
    #[arg(long, env = "DEADSFU_ICE_TCP")]
    pub ice_tcp: Option<bool>,
    /// Address advertised in ICE candidates (1:1 NAT).
    #[arg(long, env = "DEADSFU_ICE_CANDIDATE_HOST")]
    pub ice_candidate_host: Option<IpAddr>,
    /// Slots per room ring.
    #[arg(long, env = "DEADSFU_RING_SLOTS")]
    pub ring_slots: Option<u32>,
    /// Bytes per ring slot.
    #[arg(long, env = "DEADSFU_RING_SLOT_SIZE")]
    pub ring_slot_size: Option<u32>,
    /// Log filter (overrides RUST_LOG).
    #[arg(long, env = "DEADSFU_LOG")]
    pub log: Option<String>,
    /// Token required to publish (overrides --bearer-token for WHIP).
    #[arg(long, env = "DEADSFU_PUBLISH_TOKEN")]
    pub publish_token: Option<String>,
    /// Token required to view (overrides --bearer-token for WHEP).
    #[arg(long, env = "DEADSFU_VIEW_TOKEN")]
    pub view_token: Option<String>,
    /// Play the slate in rooms without live video (true or false).
    #[arg(long, env = "DEADSFU_SLATE")]
    pub slate: Option<bool>,
    /// H.264 slate clip (Annex B with access unit delimiters).
    #[arg(long, env = "DEADSFU_SLATE_H264")]
    pub slate_h264: Option<PathBuf>,
    /// Frame rate of the H.264 slate clip.
    #[arg(long, env = "DEADSFU_SLATE_FPS")]
    pub slate_fps: Option<u32>,
    /// VP8 slate clip (IVF).
    #[arg(long, env = "DEADSFU_SLATE_VP8")]
    pub slate_vp8: Option<PathBuf>,
    /// Least milliseconds between keyframe requests to a publisher.
    #[arg(long, env = "DEADSFU_KEYFRAME_REQUEST_INTERVAL_MS")]
    pub keyframe_request_interval_ms: Option<u64>,
    /// Seconds between unprompted keyframe requests (0: never).
    #[arg(long, env = "DEADSFU_KEYFRAME_FALLBACK_INTERVAL_S")]
    pub keyframe_fallback_interval_s: Option<u64>,
    /// Base URL of an upstream deadsfu to pull rooms from over WHEP (this host becomes an edge).
    #[arg(long, env = "DEADSFU_DIAL_UPSTREAM")]
    pub dial_upstream: Option<String>,
    /// Bearer token for the pulls from the upstream.
    #[arg(long, env = "DEADSFU_UPSTREAM_TOKEN")]
    pub upstream_token: Option<String>,
    /// PEM certificate authorities for an https upstream (instead of the public ones).
    #[arg(long, env = "DEADSFU_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Seconds a pull goes on after the room's last viewer left.
    #[arg(long, env = "DEADSFU_UPSTREAM_GRACE_S")]
    pub upstream_grace_s: Option<u64>,
    /// Accept publishers on an edge.
    #[arg(long, env = "DEADSFU_EDGE_PUBLISH")]
    pub edge_publish: Option<bool>,
    /// Admin listener for /metrics (HOST:PORT or :PORT); /metrics then leaves the public listener.
    #[arg(long, env = "DEADSFU_ADMIN")]
    pub admin: Option<String>,
    /// Most open HTTP connections.
    #[arg(long, env = "DEADSFU_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Most open HTTP connections from one address.
    #[arg(long, env = "DEADSFU_HTTP_MAX_CONNECTIONS_PER_IP")]
    pub http_max_connections_per_ip: Option<usize>,
    /// Milliseconds for a request head to arrive.
    #[arg(long, env = "DEADSFU_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,
    /// Milliseconds for a request body to arrive.
    #[arg(long, env = "DEADSFU_HTTP_BODY_TIMEOUT_MS")]
    pub http_body_timeout_ms: Option<u64>,
    /// Most bytes of a request head.
    #[arg(long, env = "DEADSFU_HTTP_MAX_HEADER_BYTES")]
    pub http_max_header_bytes: Option<usize>,
    /// Most room-list long-polls held at once.
    #[arg(long, env = "DEADSFU_HTTP_MAX_LONG_POLLS")]
    pub http_max_long_polls: Option<usize>,
    /// Most rooms at once.
    #[arg(long, env = "DEADSFU_MAX_ROOMS")]
    pub max_rooms: Option<usize>,
    /// Most sessions per media process.
    #[arg(long, env = "DEADSFU_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Most not-yet-connected sessions per media process.
    #[arg(long, env = "DEADSFU_MAX_PENDING_SESSIONS")]
    pub max_pending_sessions: Option<usize>,
    /// Most media sections in an offer.
    #[arg(long, env = "DEADSFU_MAX_MEDIA_SECTIONS")]
    pub max_media_sections: Option<usize>,
    /// Seconds an empty room is kept.
    #[arg(long, env = "DEADSFU_ROOM_GRACE_S")]
    pub room_grace_s: Option<u64>,
    /// Most concurrent pulls from the upstream.
    #[arg(long, env = "DEADSFU_MAX_PULLS")]
    pub max_pulls: Option<usize>,
}

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("configuration file {path}: {source}")]
    Parse { path: String, source: serde_yaml::Error },
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl ConfigArgs {
    /// The file (if any) with these flags over it, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// What every binary does first: load and validate the configuration, print it and stop if asked to,
    /// else start logging. On `Err` the process exits with that code (2 for a bad configuration).
    pub fn startup(&self, program: &str, print_config: bool) -> Result<Config, std::process::ExitCode> {
        let cfg = self.load().map_err(|e| {
            eprintln!("{program}: {e}");
            std::process::ExitCode::from(2)
        })?;
        if print_config {
            print!("{}", cfg.to_yaml());
            return Err(std::process::ExitCode::SUCCESS);
        }
        cfg.init_logging();
        crate::service::follow_supervisor();
        let files = crate::service::raise_fd_limit();
        tracing::debug!(files, "open-file limit");
        Ok(cfg)
    }

    fn apply(&self, cfg: &mut Config) {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        fn set_opt<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                *dst = src.clone();
            }
        }
        set(&mut cfg.http, &self.http);
        set_opt(&mut cfg.https, &self.https);
        set_opt(&mut cfg.tls_cert, &self.tls_cert);
        set_opt(&mut cfg.tls_key, &self.tls_key);
        set(&mut cfg.acme, &self.acme);
        set(&mut cfg.acme_directory, &self.acme_directory);
        set_opt(&mut cfg.acme_contact, &self.acme_contact);
        set_opt(&mut cfg.acme_cache_dir, &self.acme_cache_dir);
        set_opt(&mut cfg.acme_ca_file, &self.acme_ca_file);
        set_opt(&mut cfg.runtime_dir, &self.runtime_dir);
        set_opt(&mut cfg.workers, &self.workers);
        set_opt(&mut cfg.bearer_token, &self.bearer_token);
        set(&mut cfg.ingest_port, &self.ingest_port);
        set(&mut cfg.fanout_port, &self.fanout_port);
        set(&mut cfg.ice_tcp, &self.ice_tcp);
        set_opt(&mut cfg.ice_candidate_host, &self.ice_candidate_host);
        set(&mut cfg.ring_slots, &self.ring_slots);
        set(&mut cfg.ring_slot_size, &self.ring_slot_size);
        set(&mut cfg.log, &self.log);
        set_opt(&mut cfg.publish_token, &self.publish_token);
        set_opt(&mut cfg.view_token, &self.view_token);
        set(&mut cfg.slate, &self.slate);
        set_opt(&mut cfg.slate_h264, &self.slate_h264);
        set(&mut cfg.slate_fps, &self.slate_fps);
        set_opt(&mut cfg.slate_vp8, &self.slate_vp8);
        set(&mut cfg.keyframe_request_interval_ms, &self.keyframe_request_interval_ms);
        set(&mut cfg.keyframe_fallback_interval_s, &self.keyframe_fallback_interval_s);
        set_opt(&mut cfg.dial_upstream, &self.dial_upstream);
        set_opt(&mut cfg.upstream_token, &self.upstream_token);
        set_opt(&mut cfg.upstream_ca, &self.upstream_ca);
        set(&mut cfg.upstream_grace_s, &self.upstream_grace_s);
        set(&mut cfg.edge_publish, &self.edge_publish);
        set_opt(&mut cfg.admin, &self.admin);
        set(&mut cfg.http_max_connections, &self.http_max_connections);
        set(&mut cfg.http_max_connections_per_ip, &self.http_max_connections_per_ip);
        set(&mut cfg.http_header_timeout_ms, &self.http_header_timeout_ms);
        set(&mut cfg.http_body_timeout_ms, &self.http_body_timeout_ms);
        set(&mut cfg.http_max_header_bytes, &self.http_max_header_bytes);
        set(&mut cfg.http_max_long_polls, &self.http_max_long_polls);
        set(&mut cfg.max_rooms, &self.max_rooms);
        set(&mut cfg.max_sessions, &self.max_sessions);
        set(&mut cfg.max_pending_sessions, &self.max_pending_sessions);
        set(&mut cfg.max_media_sections, &self.max_media_sections);
        set(&mut cfg.room_grace_s, &self.room_grace_s);
        set(&mut cfg.max_pulls, &self.max_pulls);
    }

    /// The flags that reproduce `cfg` for a child process (the supervisor passes these on).
    pub fn to_args(cfg: &Config) -> Vec<String> {
        let mut args = vec![
            "--http".into(),
            cfg.http.clone(),
            "--runtime-dir".into(),
            cfg.runtime_dir().display().to_string(),
            "--ingest-port".into(),
            cfg.ingest_port.to_string(),
            "--fanout-port".into(),
            cfg.fanout_port.to_string(),
            "--ice-tcp".into(),
            cfg.ice_tcp.to_string(),
            "--ring-slots".into(),
            cfg.ring_slots.to_string(),
            "--ring-slot-size".into(),
            cfg.ring_slot_size.to_string(),
            "--log".into(),
            cfg.log.clone(),
        ];
        if let Some(w) = cfg.workers {
            args.extend(["--workers".into(), w.to_string()]);
        }
        for (flag, value) in [
            ("--https", cfg.https.clone()),
            ("--tls-cert", cfg.tls_cert.as_ref().map(|p| p.display().to_string())),
            ("--tls-key", cfg.tls_key.as_ref().map(|p| p.display().to_string())),
            ("--acme", (!cfg.acme.is_empty()).then(|| cfg.acme.join(","))),
            ("--acme-directory", Some(cfg.acme_directory.clone())),
            ("--acme-contact", cfg.acme_contact.clone()),
            ("--acme-cache-dir", cfg.acme_cache_dir.as_ref().map(|p| p.display().to_string())),
            ("--acme-ca-file", cfg.acme_ca_file.as_ref().map(|p| p.display().to_string())),
        ] {
            if let Some(v) = value {
                args.extend([flag.into(), v]);
            }
        }
        if let Some(host) = cfg.ice_candidate_host {
            args.extend(["--ice-candidate-host".into(), host.to_string()]);
        }
        for (flag, path) in [("--slate-h264", &cfg.slate_h264), ("--slate-vp8", &cfg.slate_vp8)] {
            if let Some(p) = path {
                args.extend([flag.into(), p.display().to_string()]);
            }
        }
        args.extend([
            "--slate".into(),
            cfg.slate.to_string(),
            "--slate-fps".into(),
            cfg.slate_fps.to_string(),
            "--keyframe-request-interval-ms".into(),
            cfg.keyframe_request_interval_ms.to_string(),
            "--keyframe-fallback-interval-s".into(),
            cfg.keyframe_fallback_interval_s.to_string(),
            "--upstream-grace-s".into(),
            cfg.upstream_grace_s.to_string(),
            "--edge-publish".into(),
            cfg.edge_publish.to_string(),
            "--http-max-connections".into(),
            cfg.http_max_connections.to_string(),
            "--http-max-connections-per-ip".into(),
            cfg.http_max_connections_per_ip.to_string(),
            "--http-header-timeout-ms".into(),
            cfg.http_header_timeout_ms.to_string(),
            "--http-body-timeout-ms".into(),
            cfg.http_body_timeout_ms.to_string(),
            "--http-max-header-bytes".into(),
            cfg.http_max_header_bytes.to_string(),
            "--http-max-long-polls".into(),
            cfg.http_max_long_polls.to_string(),
            "--max-rooms".into(),
            cfg.max_rooms.to_string(),
            "--max-sessions".into(),
            cfg.max_sessions.to_string(),
            "--max-pending-sessions".into(),
            cfg.max_pending_sessions.to_string(),
            "--max-media-sections".into(),
            cfg.max_media_sections.to_string(),
            "--room-grace-s".into(),
            cfg.room_grace_s.to_string(),
            "--max-pulls".into(),
            cfg.max_pulls.to_string(),
        ]);
        if let Some(admin) = &cfg.admin {
            args.extend(["--admin".into(), admin.clone()]);
        }
        if let Some(url) = &cfg.dial_upstream {
            args.extend(["--dial-upstream".into(), url.clone()]);
        }
        if let Some(ca) = &cfg.upstream_ca {
            args.extend(["--upstream-ca".into(), ca.display().to_string()]);
        }
        args
    }
}

impl Config {
    /// Reads a YAML file; keys not named in the file keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse { path: shown, source })
    }

    /// Checks every value that can be wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http_addr()?;
        self.admin_addr()?;
        for (key, value) in [
            ("http_max_connections", self.http_max_connections),
            ("http_max_connections_per_ip", self.http_max_connections_per_ip),
            ("http_max_long_polls", self.http_max_long_polls),
            ("max_rooms", self.max_rooms),
            ("max_sessions", self.max_sessions),
            ("max_pending_sessions", self.max_pending_sessions),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid { key, reason: "must be at least 1".into() });
            }
        }
        if !(1..=64).contains(&self.max_media_sections) {
            let reason = format!("{} is not between 1 and 64", self.max_media_sections);
            return Err(ConfigError::Invalid { key: "max_media_sections", reason });
        }
        if self.http_max_header_bytes < 8192 {
            let reason = format!("{} bytes is too small (at least 8192)", self.http_max_header_bytes);
            return Err(ConfigError::Invalid { key: "http_max_header_bytes", reason });
        }
        for (key, value) in [
            ("http_header_timeout_ms", self.http_header_timeout_ms),
            ("http_body_timeout_ms", self.http_body_timeout_ms),
        ] {
            if value < 100 {
                return Err(ConfigError::Invalid { key, reason: format!("{value} ms is too short (at least 100)") });
            }
        }
        if self.https.is_some() {
            self.https_addr()?;
            if self.acme.is_empty() {
                for (key, file) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
                    match file {
                        None => {
                            let reason = "required when `https` is set (or get a certificate with `acme`)".into();
                            return Err(ConfigError::Invalid { key, reason });
                        }
                        Some(p) if !p.is_file() => {
                            return Err(ConfigError::Invalid {
                                key,
                                reason: format!("{} is not a readable file", p.display()),
                            })
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        self.validate_acme()?;
        if self.workers == Some(0) {
            return Err(ConfigError::Invalid { key: "workers", reason: "must be at least 1".into() });
        }
        if !self.ring_slots.is_power_of_two() || self.ring_slots < 64 {
            return Err(ConfigError::Invalid { key: "ring_slots", reason: "must be a power of two >= 64".into() });
        }
        if !self.ring_slot_size.is_power_of_two() || self.ring_slot_size < 2048 {
            return Err(ConfigError::Invalid {
                key: "ring_slot_size",
                reason: "must be a power of two >= 2048 (an RTP payload of an MTU-sized packet must fit)".into(),
            });
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(ConfigError::Invalid { key: "log", reason: e.to_string() });
        }
        for (key, token) in [
            ("bearer_token", &self.bearer_token),
            ("publish_token", &self.publish_token),
            ("view_token", &self.view_token),
            ("upstream_token", &self.upstream_token),
        ] {
            if token.as_deref() == Some("") {
                return Err(ConfigError::Invalid { key, reason: "must not be empty".into() });
            }
        }
        if self.slate_fps == 0 || self.slate_fps > 120 {
            return Err(ConfigError::Invalid { key: "slate_fps", reason: "must be between 1 and 120".into() });
        }
        if let Some(url) = &self.dial_upstream {
            upstream_url(url).map_err(|reason| ConfigError::Invalid { key: "dial_upstream", reason })?;
        }
        if let Some(ca) = &self.upstream_ca {
            if !ca.is_file() {
                return Err(ConfigError::Invalid {
                    key: "upstream_ca",
                    reason: format!("{} is not a readable file", ca.display()),
                });
            }
        }
        if let Some(dir) = &self.runtime_dir {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::Invalid { key: "runtime_dir", reason: "must not be empty".into() });
            }
        }
        Ok(())
    }

    fn validate_acme(&self) -> Result<(), ConfigError> {
        if self.acme.is_empty() {
            return Ok(());
        }
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.https.is_none() {
            return invalid("acme", "needs `https`: the certificate is served, and validated, there".into());
        }
        for (key, file) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
            if file.is_some() {
                return invalid(key, "give either `tls_cert` and `tls_key` or `acme`, not both".into());
            }
        }
        for domain in &self.acme {
            acme_domain(domain).map_err(|reason| ConfigError::Invalid { key: "acme", reason })?;
        }
        if !self.acme_directory.starts_with("https://") || self.acme_directory.len() == "https://".len() {
            return invalid("acme_directory", format!("`{}` is not an https:// URL", self.acme_directory));
        }
        if let Some(contact) = &self.acme_contact {
            let address = contact.strip_prefix("mailto:").unwrap_or(contact);
            if !address.contains('@') || address.contains([' ', ',']) {
                return invalid("acme_contact", format!("`{contact}` is not an email address"));
            }
        }
        if let Some(ca) = &self.acme_ca_file {
            if !ca.is_file() {
                return invalid("acme_ca_file", format!("{} is not a readable file", ca.display()));
            }
        }
        if self.acme_cache_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return invalid("acme_cache_dir", "must not be empty".into());
        }
        Ok(())
    }

    /// The ACME cache directory: configured, else `$STATE_DIRECTORY/acme` (systemd's `StateDirectory=`), else
    /// `/var/lib/deadsfu/acme` for root, else `$XDG_STATE_HOME/deadsfu/acme`, else
    /// `~/.local/state/deadsfu/acme`.
    pub fn acme_cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.acme_cache_dir {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
            // As RUNTIME_DIRECTORY: systemd may list several, the first is ours.
            let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
            if !first.is_empty() {
                return PathBuf::from(first).join("acme");
            }
        }
        if nix::unistd::getuid().is_root() {
            return PathBuf::from("/var/lib/deadsfu/acme");
        }
        let state = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()).map(PathBuf::from);
        let home = || std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state"));
        state.or_else(home).unwrap_or_else(|| PathBuf::from(".")).join("deadsfu/acme")
    }

    /// The HTTP listener as a socket address; `:PORT` means all interfaces.
    pub fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        listen_addr("http", &self.http)
    }

    /// The admin listener, if configured.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.admin.as_deref().map(|a| listen_addr("admin", a)).transpose()
    }

    /// The HTTPS listener, if configured.
    pub fn https_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.https.as_deref().map(|a| listen_addr("https", a)).transpose()
    }

    /// The runtime directory: configured, else `$RUNTIME_DIRECTORY` (systemd), else `$XDG_RUNTIME_DIR/deadsfu`,
    /// else `/dev/shm/deadsfu-$UID`.
    pub fn runtime_dir(&self) -> PathBuf {
        if let Some(dir) = &self.runtime_dir {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
            // systemd may list several directories separated by ':'; the first is ours.
            let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
            if !first.is_empty() {
                return PathBuf::from(first);
            }
        }
        if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
            return PathBuf::from(dir).join("deadsfu");
        }
        PathBuf::from(format!("/dev/shm/deadsfu-{}", nix::unistd::getuid()))
    }

    /// The configuration as YAML, with every key.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("a Config always serializes")
    }

    /// Sends `tracing` output to stderr (journald picks it up under systemd), filtered by `log`.
    pub fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }

    /// The token WHIP requires, if any.
    pub fn publish_token(&self) -> Option<&str> {
        self.publish_token.as_deref().or(self.bearer_token.as_deref())
    }

    /// The token WHEP requires, if any.
    pub fn view_token(&self) -> Option<&str> {
        self.view_token.as_deref().or(self.bearer_token.as_deref())
    }

    /// True if this host is an edge that refuses publishers.
    pub fn refuses_publishers(&self) -> bool {
        self.dial_upstream.is_some() && !self.edge_publish
    }

    /// Number of fanout workers: configured, else the number of cores.
    pub fn worker_count(&self) -> u32 {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1))
    }
}

/// The base URL of an upstream deadsfu, without a trailing slash: `http` or `https`, a host, an optional port
/// and path prefix, nothing else. A room's pull goes to `{base}/whep/{room}`.
pub fn upstream_url(text: &str) -> Result<&str, String> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(|| format!("`{text}` is not an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.starts_with(':') {
        return Err(format!("`{text}` names no host"));
    }
    if text.contains(['?', '#', ' ']) {
        return Err(format!("`{text}`: a base URL has no query, fragment or spaces"));
    }
    Ok(text.trim_end_matches('/'))
}

/// Let's Encrypt's production ACME directory, the default of `acme_directory`.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging ACME directory: untrusted certificates, much higher rate limits; for trying a setup.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// A domain name an ACME CA can validate on the HTTPS listener (TLS-ALPN-01): letters, digits, hyphens and
/// dots, at most 253 characters, labels of 1 to 63 not starting or ending with a hyphen; no wildcard and no
/// IP address.
pub fn acme_domain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{name}` is not a domain name"));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!("`{name}` is an IP address; ACME certificates here are for domain names"));
    }
    if name.contains('*') {
        return Err(format!("`{name}`: a wildcard needs DNS-01 validation, which deadsfu does not do"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !name.split('.').all(label_ok) {
        return Err(format!("`{name}` is not a domain name (letters, digits, `-` and `.`)"));
    }
    Ok(())
}

/// `HOST:PORT`, or `:PORT` for every interface: IPv6 and IPv4 (`[::]`, which takes IPv4 too) where the host has
/// IPv6, else IPv4 (`0.0.0.0`).
fn listen_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    let full = match text.strip_prefix(':') {
        Some(port) if ipv6_available() => format!("[::]:{port}"),
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_string(),
    };
    let addr: SocketAddr = full.parse().map_err(|e| ConfigError::Invalid { key, reason: format!("`{text}`: {e}") })?;
    Ok(addr)
}

/// Whether the host has an IPv6 stack (a socket on `[::]` can be made).
fn ipv6_available() -> bool {
    std::net::UdpSocket::bind("[::]:0").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("deadsfu-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "http: 127.0.0.1:9000\nworkers: 3\ningest_port: 12000\n").unwrap();
        let args = ConfigArgs { config: Some(path.clone()), workers: Some(5), ..Default::default() };
        let cfg = args.load().unwrap();
        assert_eq!(cfg.http, "127.0.0.1:9000");
        assert_eq!(cfg.workers, Some(5));
        assert_eq!(cfg.ingest_port, 12000);
        assert_eq!(cfg.fanout_port, Config::default().fanout_port);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("deadsfu-config-test-err-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "htp: 1\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("htp"), "{err}");
        std::fs::write(&path, "workers: many\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("workers"), "{err}");
        let cfg = Config { ring_slots: 1000, ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("ring_slots"));
        let cfg = Config { http: "nonsense".into(), ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("`http`"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn https_needs_its_files() {
        let cfg = Config { https: Some(":8443".into()), ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("tls_cert"));
        let cfg = Config {
            https: Some(":8443".into()),
            tls_cert: Some("/nonexistent/cert.pem".into()),
            tls_key: Some("/nonexistent/key.pem".into()),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("/nonexistent/cert.pem"));
        let cfg = Config { https: Some("nope".into()), ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("`https`"));
    }

    #[test]
    fn acme_settings() {
        let acme = |domains: &[&str]| Config {
            https: Some(":8443".into()),
            acme: domains.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        };
        // A certificate from ACME stands in for the files.
        assert!(acme(&["sfu.example.org", "www.sfu.example.org"]).validate().is_ok());
        let no_https = Config { https: None, ..acme(&["sfu.example.org"]) };
        assert!(no_https.validate().unwrap_err().to_string().contains("`acme`: needs `https`"));
        let both = Config { tls_cert: Some("/etc/hosts".into()), ..acme(&["sfu.example.org"]) };
        assert!(both.validate().unwrap_err().to_string().contains("tls_cert"));
        for bad in ["", "*.example.org", "127.0.0.1", "a..b", "-a.example", "a_b.example", "é.example"] {
            let err = acme(&[bad]).validate().unwrap_err().to_string();
            assert!(err.contains("`acme`"), "{bad}: {err}");
        }
        let http_dir = Config { acme_directory: "http://ca.example/dir".into(), ..acme(&["a.example"]) };
        assert!(http_dir.validate().unwrap_err().to_string().contains("acme_directory"));
        let contact = Config { acme_contact: Some("nobody".into()), ..acme(&["a.example"]) };
        assert!(contact.validate().unwrap_err().to_string().contains("acme_contact"));
        let contact = Config { acme_contact: Some("mailto:ops@example.org".into()), ..acme(&["a.example"]) };
        assert!(contact.validate().is_ok());
        let ca = Config { acme_ca_file: Some("/nonexistent/ca.pem".into()), ..acme(&["a.example"]) };
        assert!(ca.validate().unwrap_err().to_string().contains("acme_ca_file"));
        let dir = Config { acme_cache_dir: Some("/srv/acme".into()), ..Default::default() };
        assert_eq!(dir.acme_cache_dir(), PathBuf::from("/srv/acme"));
        assert!(Config::default().acme_cache_dir().ends_with("acme"));
    }

    #[test]
    fn child_flags_carry_the_acme_settings() {
        let cfg = Config {
            https: Some("127.0.0.1:8443".into()),
            acme: vec!["a.example".into(), "b.example".into()],
            acme_directory: LETS_ENCRYPT_STAGING.into(),
            acme_contact: Some("ops@example.org".into()),
            acme_cache_dir: Some("/srv/acme".into()),
            acme_ca_file: Some("/srv/ca.pem".into()),
            ..Default::default()
        };
        let args = ConfigArgs::to_args(&cfg);
        let parsed = <Flags as clap::Parser>::try_parse_from(std::iter::once("x".to_string()).chain(args)).unwrap();
        let mut again = Config::default();
        parsed.config.apply(&mut again);
        assert_eq!(
            (again.acme, again.acme_directory, again.acme_contact, again.acme_cache_dir, again.acme_ca_file),
            (cfg.acme, cfg.acme_directory, cfg.acme_contact, cfg.acme_cache_dir, cfg.acme_ca_file)
        );
    }

    #[test]
    fn http_shorthand() {
        let cfg = Config::default();
        let any = if ipv6_available() { "[::]:8080" } else { "0.0.0.0:8080" };
        assert_eq!(cfg.http_addr().unwrap(), any.parse().unwrap());
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(upstream_url("http://origin:8080/").unwrap(), "http://origin:8080");
        assert_eq!(upstream_url("https://sfu.example/prefix").unwrap(), "https://sfu.example/prefix");
        for bad in ["origin:8080", "ftp://x", "http://", "http:///whep", "http://x/?room=a", "http://a b"] {
            assert!(upstream_url(bad).is_err(), "{bad}");
        }
        let cfg = Config { dial_upstream: Some("origin".into()), ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("dial_upstream"));
        let edge = Config { dial_upstream: Some("http://origin:8080".into()), ..Default::default() };
        assert!(edge.validate().is_ok());
        assert!(edge.refuses_publishers());
        assert!(!Config { edge_publish: true, ..edge }.refuses_publishers());
        assert!(!Config::default().refuses_publishers());
    }

    #[test]
    fn child_flags_carry_the_edge_settings() {
        let cfg = Config {
            dial_upstream: Some("http://origin:8080".into()),
            upstream_grace_s: 3,
            edge_publish: true,
            ..Default::default()
        };
        let args = ConfigArgs::to_args(&cfg);
        let parsed = <Flags as clap::Parser>::try_parse_from(std::iter::once("x".to_string()).chain(args)).unwrap();
        let mut again = Config::default();
        parsed.config.apply(&mut again);
        assert_eq!(again.dial_upstream, cfg.dial_upstream);
        assert_eq!(again.upstream_grace_s, 3);
        assert!(again.edge_publish);
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        config: ConfigArgs,
    }
}
