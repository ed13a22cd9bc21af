//! Configuration shared by every deadsfu process.
//!
//! One YAML file (optional) is read by every process; `DEADSFU_*` environment variables override it key by
//! key, and command-line flags override both; the defaults run on a laptop. An unknown key, a bad value or an
//! unreadable file stops the process at start with a message naming the key.
//!
//! Each key is declared once, as a field of [`Config`]: its doc comment is both the API documentation and the
//! flag's help, its `#[arg]` names the environment variable and the default, and serde reads and writes it
//! under the field's name. [`ConfigArgs`] is what a program flattens into its own arguments: `--config`,
//! `--print-config` and a flag per key. Adding a key is adding a field (and documenting it in
//! `config/deadsfu.example.yaml`, which a test checks).
//!
//! ```no_run
//! use clap::Parser;
//! use deadsfu_runtime::config::ConfigArgs;
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     config: ConfigArgs,
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let args = Args::parse();
//!     let cfg = match args.config.startup("deadsfu-example") {
//!         Ok(cfg) => cfg,
//!         Err(code) => return code,
//!     };
//!     tracing::info!(http = %cfg.http, "configured");
//!     std::process::ExitCode::SUCCESS
//! }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, FromArgMatches};
use serde::{Deserialize, Serialize};

/// The effective configuration: one field per key, named as in the file; the flag is `--` and the name in
/// kebab case, the environment variable `DEADSFU_` and the name in upper case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Args)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listener of signaling, `HOST:PORT` or `:PORT` (all interfaces).
    #[arg(long, env = "DEADSFU_HTTP", default_value = ":8080")]
    pub http: String,
    /// HTTPS listener of signaling (`HOST:PORT` or `:PORT`), serving the same as `http`; needs `tls_cert` and
    /// `tls_key`, or `acme`.
    #[arg(long, env = "DEADSFU_HTTPS")]
    pub https: Option<String>,
    /// PEM file with the certificate chain for `https`, read again when it changes.
    #[arg(long, env = "DEADSFU_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key for `https`, read again when it changes.
    #[arg(long, env = "DEADSFU_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Domain names to get the certificate of `https` for from an ACME CA (Let's Encrypt by default) instead
    /// of `tls_cert` and `tls_key`.
    #[arg(long, env = "DEADSFU_ACME", value_delimiter = ',', value_name = "DOMAIN")]
    pub acme: Vec<String>,
    /// Directory URL of the ACME CA.
    #[arg(long, env = "DEADSFU_ACME_DIRECTORY", default_value = LETS_ENCRYPT_PRODUCTION, value_name = "URL")]
    pub acme_directory: String,
    /// Contact email given to the ACME CA (expiry notices, if it sends them).
    #[arg(long, env = "DEADSFU_ACME_CONTACT", value_name = "EMAIL")]
    pub acme_contact: Option<String>,
    /// Directory keeping the ACME account key and the certificates. Unset: `$STATE_DIRECTORY/acme` under
    /// systemd, else `/var/lib/deadsfu/acme` for root, else `deadsfu/acme` in the user's state directory.
    #[arg(long, env = "DEADSFU_ACME_CACHE_DIR", value_name = "DIR")]
    pub acme_cache_dir: Option<PathBuf>,
    /// PEM file of the certificate authorities to check the ACME CA's own API against, instead of the public
    /// ones (a private or test ACME server).
    #[arg(long, env = "DEADSFU_ACME_CA_FILE", value_name = "FILE")]
    pub acme_ca_file: Option<PathBuf>,
    /// Directory for the rings and the control sockets. Keep it on tmpfs.
    #[arg(long, env = "DEADSFU_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Number of fanout workers (the supervisor starts this many). Default: number of cores.
    #[arg(long, env = "DEADSFU_WORKERS")]
    pub workers: Option<u32>,
    /// Token required for publishing and viewing (`Authorization: Bearer` or `?access_token=`).
    #[arg(long, env = "DEADSFU_BEARER_TOKEN")]
    pub bearer_token: Option<String>,
    /// Token required for publishing only; overrides `bearer_token` for WHIP.
    #[arg(long, env = "DEADSFU_PUBLISH_TOKEN")]
    pub publish_token: Option<String>,
    /// Token required for viewing only; overrides `bearer_token` for WHEP.
    #[arg(long, env = "DEADSFU_VIEW_TOKEN")]
    pub view_token: Option<String>,
    /// UDP port of ingest (all publishers).
    #[arg(long, env = "DEADSFU_INGEST_PORT", default_value_t = 10000)]
    pub ingest_port: u16,
    /// UDP port of fanout worker 0; worker `k` uses `fanout_port + k`.
    #[arg(long, env = "DEADSFU_FANOUT_PORT", default_value_t = 10100)]
    pub fanout_port: u16,
    /// Also take ICE over TCP (passive candidates) on the TCP ports of the same numbers, for peers whose
    /// network blocks UDP.
    #[arg(long, env = "DEADSFU_ICE_TCP", action = ArgAction::Set, default_value_t = true)]
    pub ice_tcp: bool,
    /// Address to put in ICE candidates instead of the host's own addresses (a host behind 1:1 NAT).
    #[arg(long, env = "DEADSFU_ICE_CANDIDATE_HOST")]
    pub ice_candidate_host: Option<IpAddr>,
    /// Slots per room ring (a power of two).
    #[arg(long, env = "DEADSFU_RING_SLOTS", default_value_t = 4096)]
    pub ring_slots: u32,
    /// Bytes per ring slot (a power of two, at least the largest RTP payload plus 128).
    #[arg(long, env = "DEADSFU_RING_SLOT_SIZE", default_value_t = 2048)]
    pub ring_slot_size: u32,
    /// Log filter, as `RUST_LOG` (e.g. `info`, `deadsfu_fanout=debug`).
    #[arg(long, env = "DEADSFU_LOG", default_value = "info")]
    pub log: String,
    /// Play the slate in watched rooms without live video (false: their viewers get nothing until it returns).
    #[arg(long, env = "DEADSFU_SLATE", action = ArgAction::Set, default_value_t = true)]
    pub slate: bool,
    /// H.264 slate clip (Annex B, an access unit delimiter before each frame) replacing the built-in one.
    #[arg(long, env = "DEADSFU_SLATE_H264")]
    pub slate_h264: Option<PathBuf>,
    /// Frame rate of `slate_h264`.
    #[arg(long, env = "DEADSFU_SLATE_FPS", default_value_t = 10)]
    pub slate_fps: u32,
    /// VP8 slate clip (IVF) replacing the built-in one.
    #[arg(long, env = "DEADSFU_SLATE_VP8")]
    pub slate_vp8: Option<PathBuf>,
    /// How fast a joining viewer gets the cached GOP (the fast start), in percent of the room's bitrate: the share
    /// of its link the replay takes until it is live. Higher catches up sooner and needs a wider link.
    #[arg(long, env = "DEADSFU_REPLAY_RATE_PERCENT", default_value_t = 200)]
    pub replay_rate_percent: u32,
    /// Estimate viewers' links (transport-wide congestion control feedback, a send-side estimate per viewer): a
    /// joining viewer's GOP replay is paced within it, and a viewer of a simulcast room that chose no layer gets
    /// the best layer its link carries. `simulcast`: the viewers who join a room whose publisher sends simulcast
    /// layers; `true`: every viewer; `false`: none (viewers are offered no transport-cc).
    #[arg(long, env = "DEADSFU_BANDWIDTH_ESTIMATION", value_enum, default_value = "simulcast")]
    pub bandwidth_estimation: Estimation,
    /// Least time between two keyframe requests to a room's publisher, in milliseconds.
    #[arg(long, env = "DEADSFU_KEYFRAME_REQUEST_INTERVAL_MS", default_value_t = 1000)]
    pub keyframe_request_interval_ms: u64,
    /// A keyframe is requested from every watched publisher this often even if nobody asks, in seconds
    /// (0: never).
    #[arg(long, env = "DEADSFU_KEYFRAME_FALLBACK_INTERVAL_S", default_value_t = 20)]
    pub keyframe_fallback_interval_s: u64,
    /// Base URL of an upstream deadsfu (`http://origin:8080`): this host is an edge that pulls a room over
    /// WHEP (`POST {url}/whep/{room}`) when its viewers ask for a room nobody publishes to here.
    #[arg(long, env = "DEADSFU_DIAL_UPSTREAM")]
    pub dial_upstream: Option<String>,
    /// Bearer token sent with the pulls to `dial_upstream`.
    #[arg(long, env = "DEADSFU_UPSTREAM_TOKEN")]
    pub upstream_token: Option<String>,
    /// PEM file of the certificate authorities an `https` upstream's certificate is checked against, instead
    /// of the built-in public ones.
    #[arg(long, env = "DEADSFU_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Seconds a pull goes on after the edge's last viewer of the room left.
    #[arg(long, env = "DEADSFU_UPSTREAM_GRACE_S", default_value_t = 10)]
    pub upstream_grace_s: u64,
    /// An edge (`dial_upstream` set) refuses publishers unless this is true; a local publisher then takes the
    /// room over from the pull.
    #[arg(long, env = "DEADSFU_EDGE_PUBLISH", action = ArgAction::Set, default_value_t = false)]
    pub edge_publish: bool,
    /// Admin listener of signaling (`HOST:PORT` or `:PORT`): when set, `/metrics` is served there only
    /// (and `/healthz` there as well as on `http`). Keep it on a private address.
    #[arg(long, env = "DEADSFU_ADMIN")]
    pub admin: Option<String>,
    /// Open HTTP connections, all listeners together; past it a connection gets 503.
    #[arg(long, env = "DEADSFU_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,
    /// Open HTTP connections from one client address; past it a connection gets 503.
    #[arg(long, env = "DEADSFU_HTTP_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub http_max_connections_per_ip: usize,
    /// Milliseconds for a request's head (and a TLS handshake) to arrive; an idle keep-alive connection is
    /// closed after it too.
    #[arg(long, env = "DEADSFU_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10000)]
    pub http_header_timeout_ms: u64,
    /// Milliseconds for a request's body to arrive after its head; past it the client gets 408.
    #[arg(long, env = "DEADSFU_HTTP_BODY_TIMEOUT_MS", default_value_t = 10000)]
    pub http_body_timeout_ms: u64,
    /// Bytes of a request's head (request line and headers), at least 8192; past it the client gets 431.
    #[arg(long, env = "DEADSFU_HTTP_MAX_HEADER_BYTES", default_value_t = 16384)]
    pub http_max_header_bytes: usize,
    /// Room-list long-polls (`GET /rooms?wait=`) and WHEP event streams (`GET /session/{id}/events`) held at
    /// once; past it 503.
    #[arg(long, env = "DEADSFU_HTTP_MAX_LONG_POLLS", default_value_t = 1024)]
    pub http_max_long_polls: usize,
    /// Rooms ingest holds at once (published, watched or pulled); a request for a new room past it gets 503.
    #[arg(long, env = "DEADSFU_MAX_ROOMS", default_value_t = 1000)]
    pub max_rooms: usize,
    /// Sessions one media process holds (publishers in ingest, viewers in each worker); past it 503.
    #[arg(long, env = "DEADSFU_MAX_SESSIONS", default_value_t = 5000)]
    pub max_sessions: usize,
    /// Sessions of one media process whose ICE and DTLS have not completed yet; past it 503.
    #[arg(long, env = "DEADSFU_MAX_PENDING_SESSIONS", default_value_t = 500)]
    pub max_pending_sessions: usize,
    /// Media sections (m-lines) in one SDP offer, 1 to 64; past it 400.
    #[arg(long, env = "DEADSFU_MAX_MEDIA_SECTIONS", default_value_t = 16)]
    pub max_media_sections: usize,
    /// Seconds a room with no publisher and no viewer is kept before it and its ring file are removed.
    #[arg(long, env = "DEADSFU_ROOM_GRACE_S", default_value_t = 10)]
    pub room_grace_s: u64,
    /// On an edge: pulls from the upstream at once; a viewer of a further room gets 503.
    #[arg(long, env = "DEADSFU_MAX_PULLS", default_value_t = 100)]
    pub max_pulls: usize,
}

/// Which viewers get a bandwidth estimate (`bandwidth_estimation`). Written as `true`, `false` or `simulcast`;
/// YAML's booleans are taken too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(try_from = "EstimationValue")]
pub enum Estimation {
    /// No viewer.
    #[value(name = "false")]
    Off,
    /// Every viewer.
    #[value(name = "true")]
    On,
    /// The viewers who join a room whose publisher sends simulcast layers (as its ring says when they join).
    Simulcast,
}

impl From<bool> for Estimation {
    fn from(every: bool) -> Estimation {
        if every {
            Estimation::On
        } else {
            Estimation::Off
        }
    }
}

impl Estimation {
    /// Whether a viewer joining a room gets an estimate; `layered` says if the room has simulcast layers (asked
    /// only with [`Estimation::Simulcast`]).
    pub fn applies(self, layered: impl FnOnce() -> bool) -> bool {
        match self {
            Estimation::Off => false,
            Estimation::On => true,
            Estimation::Simulcast => layered(),
        }
    }
}

/// `bandwidth_estimation` as a file spells it: a YAML boolean or a name.
#[derive(Deserialize)]
#[serde(untagged)]
enum EstimationValue {
    Bool(bool),
    Name(String),
}

impl TryFrom<EstimationValue> for Estimation {
    type Error = String;

    fn try_from(v: EstimationValue) -> Result<Estimation, String> {
        match v {
            EstimationValue::Bool(b) => Ok(b.into()),
            EstimationValue::Name(name) => match name.as_str() {
                "true" => Ok(Estimation::On),
                "false" => Ok(Estimation::Off),
                "simulcast" => Ok(Estimation::Simulcast),
                _ => Err(format!("`{name}` is not one of true, false, simulcast")),
            },
        }
    }
}

/// Written back as a file spells it: `true` and `false` as YAML booleans.
impl Serialize for Estimation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Estimation::Off => serializer.serialize_bool(false),
            Estimation::On => serializer.serialize_bool(true),
            Estimation::Simulcast => serializer.serialize_str("simulcast"),
        }
    }
}

impl Default for Config {
    /// The defaults written with the keys' flags: an empty command line, the environment unread.
    fn default() -> Self {
        let command = Config::augment_args(clap::Command::new("deadsfu")).mut_args(|arg| arg.env(None));
        let mut matches = command.try_get_matches_from(["deadsfu"]).expect("an empty command line parses");
        Config::from_arg_matches_mut(&mut matches).expect("every key has a default or is optional")
    }
}

/// The command line every deadsfu program takes: `--config FILE`, `--print-config`, and a flag per key of
/// [`Config`], each also read from its `DEADSFU_*` environment variable. Flatten it into the program's
/// arguments and call [`ConfigArgs::startup`].
#[derive(Clone, Debug, Default)]
pub struct ConfigArgs {
    /// The YAML file the keys are read from first (`--config`, `DEADSFU_CONFIG`).
    pub config: Option<PathBuf>,
    /// Print the effective configuration as YAML and exit (`--print-config`).
    pub print_config: bool,
    /// The keys given by flag or environment variable, without the defaults clap fills in, so that a key not
    /// given keeps the file's value. `None` when not parsed from a command line.
    overrides: Option<ArgMatches>,
}

/// The arguments of [`ConfigArgs`] that are not keys.
#[derive(Args)]
struct FileArgs {
    /// YAML configuration file.
    #[arg(long, env = "DEADSFU_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    print_config: bool,
}

impl Args for ConfigArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        Config::augment_args(FileArgs::augment_args(command))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let file = FileArgs::from_arg_matches(matches)?;
        let mut overrides = matches.clone();
        let defaults: Vec<String> = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::DefaultValue))
            .map(|id| id.to_string())
            .collect();
        for id in defaults {
            overrides.try_clear_id(&id).expect("the id comes from these matches");
        }
        Ok(ConfigArgs { config: file.config, print_config: file.print_config, overrides: Some(overrides) })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
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
    /// The file (if any) with the environment and the flags over it, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(overrides) = &self.overrides {
            cfg.update_from_arg_matches(overrides).expect("the overrides were parsed for these keys");
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// What every program does first: load and validate the configuration, print it and stop if asked to,
    /// else start logging, follow the supervisor if started by one, and raise the open-file limit. On `Err`
    /// the process exits with that code (2 for a bad configuration).
    pub fn startup(&self, program: &str) -> Result<Config, ExitCode> {
        let cfg = self.load().map_err(|e| {
            eprintln!("{program}: {e}");
            ExitCode::from(2)
        })?;
        if self.print_config {
            print!("{}", cfg.to_yaml());
            return Err(ExitCode::SUCCESS);
        }
        crate::logging::init(&cfg.log);
        crate::process::follow_supervisor();
        let files = crate::process::raise_fd_limit();
        tracing::debug!(files, "open-file limit");
        Ok(cfg)
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
        if let Err(reason) = crate::logging::filter(&self.log) {
            return Err(ConfigError::Invalid { key: "log", reason });
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
        if !(110..=10_000).contains(&self.replay_rate_percent) {
            let reason = "must be between 110 (a replay must outrun the stream) and 10000".into();
            return Err(ConfigError::Invalid { key: "replay_rate_percent", reason });
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

    use clap::Parser;

    /// A program's command line: the configuration flattened in, as every binary has it.
    #[derive(Parser)]
    struct Program {
        #[command(flatten)]
        config: ConfigArgs,
    }

    fn parse(args: &[&str]) -> Result<ConfigArgs, clap::Error> {
        Program::try_parse_from(std::iter::once("deadsfu").chain(args.iter().copied())).map(|p| p.config)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("deadsfu-config-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Set in the copy of this test binary that [`file_then_environment_then_flags`] starts, with the
    /// configuration file's path, so that the variables it sets are seen by that process alone.
    const LAYERS_FILE: &str = "DEADSFU_TEST_LAYERS_FILE";

    #[test]
    fn file_then_environment_then_flags() {
        let dir = temp_dir("layers");
        let path = dir.join("c.yaml");
        std::fs::write(&path, "http: 127.0.0.1:9000\nworkers: 3\ningest_port: 12000\nroom_grace_s: 1\n").unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "config::tests::layers_in_a_process_of_their_own", "--nocapture"])
            .env(LAYERS_FILE, &path)
            .env("DEADSFU_ROOM_GRACE_S", "2")
            .env("DEADSFU_WORKERS", "4")
            .output()
            .unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && log.contains("1 passed"), "{log}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn layers_in_a_process_of_their_own() {
        let Some(path) = std::env::var_os(LAYERS_FILE) else { return };
        let config = path.to_str().unwrap();
        let cfg = parse(&["--config", config, "--workers", "5"]).unwrap().load().unwrap();
        assert_eq!(cfg.http, "127.0.0.1:9000", "the file's value stays where nothing overrides it");
        assert_eq!(cfg.ingest_port, 12000);
        assert_eq!(cfg.fanout_port, Config::default().fanout_port, "a key in neither keeps its default");
        assert_eq!(cfg.room_grace_s, 2, "the environment overrides the file");
        assert_eq!(cfg.workers, Some(5), "a flag overrides the environment");
        let defaults = parse(&[]).unwrap().load().unwrap();
        assert_eq!((defaults.room_grace_s, defaults.workers), (2, Some(4)), "the environment without a file");
        assert_eq!(Config::default().room_grace_s, 10, "the defaults do not read the environment");
    }

    #[test]
    fn flags_of_every_kind() {
        let cfg = parse(&[
            "--acme",
            "a.example,b.example",
            "--acme",
            "c.example",
            "--https",
            ":8443",
            "--ice-tcp",
            "false",
            "--ice-candidate-host",
            "192.0.2.1",
            "--slate-h264",
            "/srv/slate.h264",
        ])
        .unwrap()
        .load()
        .unwrap();
        assert_eq!(cfg.acme, ["a.example", "b.example", "c.example"]);
        assert_eq!(cfg.https.as_deref(), Some(":8443"));
        assert!(!cfg.ice_tcp);
        assert_eq!(cfg.ice_candidate_host, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(cfg.slate_h264, Some(PathBuf::from("/srv/slate.h264")));
        let defaults = parse(&[]).unwrap();
        assert!(!defaults.print_config && defaults.config.is_none());
        assert!(parse(&["--print-config"]).unwrap().print_config);
        let err = parse(&["--ice-tcp", "maybe"]).err().unwrap().to_string();
        assert!(err.contains("--ice-tcp"), "{err}");
        let err = parse(&["--workers", "many"]).err().unwrap().to_string();
        assert!(err.contains("--workers"), "{err}");
        assert!(parse(&["--no-such-key", "1"]).is_err());
    }

    #[test]
    fn bandwidth_estimation_takes_booleans_and_simulcast() {
        assert_eq!(Config::default().bandwidth_estimation, Estimation::Simulcast);
        for (flag, want) in [("true", Estimation::On), ("false", Estimation::Off), ("simulcast", Estimation::Simulcast)]
        {
            let cfg = parse(&["--bandwidth-estimation", flag]).unwrap().load().unwrap();
            assert_eq!(cfg.bandwidth_estimation, want, "--bandwidth-estimation {flag}");
            let yaml = format!("bandwidth_estimation: {flag}\n");
            let from_file: Config = serde_yaml::from_str(&yaml).unwrap();
            assert_eq!(from_file.bandwidth_estimation, want, "{yaml}");
            let quoted: Config = serde_yaml::from_str(&format!("bandwidth_estimation: \"{flag}\"\n")).unwrap();
            assert_eq!(quoted.bandwidth_estimation, want);
            let cfg = Config { bandwidth_estimation: want, ..Config::default() };
            assert!(cfg.to_yaml().contains(&format!("bandwidth_estimation: {flag}")), "{}", cfg.to_yaml());
        }
        assert!(parse(&["--bandwidth-estimation", "some"]).is_err());
        let err = serde_yaml::from_str::<Config>("bandwidth_estimation: some\n").unwrap_err().to_string();
        assert!(err.contains("not one of true, false, simulcast"), "{err}");
        let unasked = || -> bool { panic!("only simulcast asks whether the room has layers") };
        assert!(!Estimation::Off.applies(unasked) && Estimation::On.applies(unasked));
        assert!(Estimation::Simulcast.applies(|| true) && !Estimation::Simulcast.applies(|| false));
    }

    #[test]
    fn the_example_file_spells_out_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/deadsfu.example.yaml");
        let cfg = Config::from_file(&example).unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(Config::default().http, ":8080");
        assert_eq!(Config::default().acme_directory, LETS_ENCRYPT_PRODUCTION);
        assert!(Config::default().ice_tcp && Config::default().slate && !Config::default().edge_publish);
    }

    #[test]
    fn the_yaml_reads_back_as_the_same_configuration() {
        let dir = temp_dir("yaml");
        let path = dir.join("effective.yaml");
        let cfg = Config {
            https: Some("127.0.0.1:8443".into()),
            acme: vec!["a.example".into(), "b.example".into()],
            acme_directory: LETS_ENCRYPT_STAGING.into(),
            runtime_dir: Some("/run/deadsfu".into()),
            workers: Some(3),
            bearer_token: Some("secret".into()),
            ice_tcp: false,
            ice_candidate_host: Some("2001:db8::1".parse().unwrap()),
            dial_upstream: Some("http://origin:8080".into()),
            upstream_grace_s: 3,
            edge_publish: true,
            max_pulls: 7,
            ..Default::default()
        };
        std::fs::write(&path, cfg.to_yaml()).unwrap();
        assert_eq!(Config::from_file(&path).unwrap(), cfg);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn errors_name_the_key() {
        let dir = temp_dir("errors");
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
}
