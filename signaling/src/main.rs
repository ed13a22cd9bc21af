//! deadsfu-signaling: the HTTP face (WHIP, WHEP, pages, health). It never touches media, so it can restart
//! without a packet lost; it finds ingest and the fanout workers through their control sockets, and follows
//! each one's status and rooms over a subscription ([`deadsfu_signaling::registry`]).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use deadsfu_runtime::config::ConfigArgs;
use deadsfu_signaling::acme::{Acme, AcmeEvent, AcmeSettings};
use deadsfu_signaling::http::{Face, Limits, Listener, Server};
use deadsfu_signaling::router::{Backend, Router, Target, Tokens};
use deadsfu_signaling::tls::{self, CertFiles, Reload, Tls};
use shm_proto::control::{self, ControlError, Request, Response};
use shm_proto::paths;

/// Requests, connections and the blocking pool's threads come and go all day; with glibc's allocator the
/// process's private memory crept up in steps (888 -> 1004 KB over an hour of `scripts/soak`), as its
/// per-thread arenas kept their high-water marks. mimalloc returns that churn, as in ingest and fanout.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a call to a media process may take (accepting an offer is about a millisecond).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// deadsfu signaling process: WHIP/WHEP over HTTP, hands sessions to ingest and the fanout workers.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

/// The media processes, reached through their sockets in the runtime directory, on connections kept open.
struct Sockets {
    runtime_dir: PathBuf,
    clients: Mutex<HashMap<Target, Arc<control::Client>>>,
}

impl Sockets {
    fn client(&self, target: Target) -> Arc<control::Client> {
        let mut clients = self.clients.lock().expect("the clients' lock is never poisoned");
        let client = clients.entry(target).or_insert_with(|| {
            let path = match target {
                Target::Ingest => paths::ingest_socket(&self.runtime_dir),
                Target::Worker(i) => paths::fanout_socket(&self.runtime_dir, i),
            };
            Arc::new(control::Client::new(path, CALL_TIMEOUT))
        });
        client.clone()
    }
}

impl Backend for Sockets {
    fn call(&self, target: Target, request: &Request) -> Result<Response, ControlError> {
        self.client(target).call(request)
    }

    fn workers(&self) -> Vec<u32> {
        deadsfu_signaling::registry::worker_indexes(&self.runtime_dir)
    }
}

fn main() -> ExitCode {
    // A parent that waits for signals with sigwait (as the supervisor does) may hand its blocked mask down;
    // signaling has no state to save, so the default action of SIGTERM and SIGINT (exit) is what it wants.
    let mut termination = nix::sys::signal::SigSet::empty();
    termination.add(nix::sys::signal::Signal::SIGTERM);
    termination.add(nix::sys::signal::Signal::SIGINT);
    let _ = termination.thread_unblock();
    let args = Args::parse();
    let cfg = match args.config.startup("deadsfu-signaling") {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let runtime_dir = cfg.runtime_dir();
    if let Err(e) = shm_proto::paths::prepare(&runtime_dir) {
        tracing::error!("runtime directory {}: {e}", runtime_dir.display());
        return ExitCode::from(2);
    }
    let addr = cfg.http_addr().expect("validated at load");
    let admin = cfg.admin_addr().expect("validated at load");
    let mut listeners = Vec::new();
    match Listener::bind(addr, Face::Public { metrics: admin.is_none() }, None) {
        Ok(l) => listeners.push(l),
        Err(e) => {
            tracing::error!(%addr, "cannot listen for HTTP: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut acme = None;
    if let Some(https) = cfg.https_addr().expect("validated at load") {
        let tls = match AcmeSettings::from_config(&cfg) {
            Some(settings) => match Acme::start(&settings) {
                Ok((state, tls)) => {
                    tracing::info!(
                        domains = ?settings.domains,
                        directory = %settings.directory,
                        cache = %settings.cache_dir.display(),
                        "HTTPS certificate from ACME (TLS-ALPN-01 on the HTTPS listener)"
                    );
                    acme = Some(state);
                    tls
                }
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::from(2);
                }
            },
            None => {
                let (cert, key) = (cfg.tls_cert.as_deref(), cfg.tls_key.as_deref());
                let (cert, key) = (cert.expect("validated at load"), key.expect("validated at load"));
                match CertFiles::open(cert, key) {
                    Ok(files) => {
                        let watched = files.clone();
                        std::thread::Builder::new()
                            .name("tls-reload".into())
                            .spawn(move || reload_certificate(&watched))
                            .expect("spawning a thread at startup succeeds");
                        Tls::new(files)
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        return ExitCode::from(2);
                    }
                }
            }
        };
        match Listener::bind(https, Face::Public { metrics: admin.is_none() }, Some(tls)) {
            Ok(l) => listeners.push(l),
            Err(source) => {
                tracing::error!("{}", tls::TlsError::Listen { addr: https, source });
                return ExitCode::from(2);
            }
        }
        tracing::info!(%https, "HTTPS listener ready");
    }
    if let Some(admin) = admin {
        match Listener::bind(admin, Face::Admin, None) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                tracing::error!(%admin, "cannot listen for the admin listener: {e}");
                return ExitCode::FAILURE;
            }
        }
        tracing::info!(%admin, "admin listener ready (/metrics, /healthz)");
    }
    let limits = Limits {
        max_connections: cfg.http_max_connections,
        max_connections_per_ip: cfg.http_max_connections_per_ip,
        header_timeout: Duration::from_millis(cfg.http_header_timeout_ms),
        body_timeout: Duration::from_millis(cfg.http_body_timeout_ms),
        max_head_bytes: cfg.http_max_header_bytes,
        max_long_polls: cfg.http_max_long_polls,
        ..Limits::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(limits.max_in_flight + 8)
        .thread_name("http")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the HTTP runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tokens = Tokens { publish: cfg.publish_token().map(String::from), view: cfg.view_token().map(String::from) };
    let router =
        Arc::new(Router::new(Sockets { runtime_dir: cfg.runtime_dir(), clients: Mutex::new(HashMap::new()) }, tokens));
    deadsfu_signaling::registry::follow(router.registry(), cfg.runtime_dir());
    let server = Server::new(router, limits);
    tracing::info!(%addr, runtime_dir = %cfg.runtime_dir().display(), "signaling ready");
    deadsfu_runtime::service::ready();
    if let Some(acme) = acme {
        runtime.spawn(follow_acme(acme));
    }
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || watchdog(addr))
        .expect("spawning a thread at startup succeeds");
    match runtime.block_on(server.run(listeners)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("HTTP server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Looks at the certificate files every [`tls::RELOAD_CHECK`] and serves them again once changed.
fn reload_certificate(files: &CertFiles) {
    let (cert, key) = files.paths();
    loop {
        std::thread::sleep(tls::RELOAD_CHECK);
        match files.check() {
            Reload::Unchanged => {}
            Reload::Loaded => {
                tracing::info!(cert = %cert.display(), key = %key.display(), "TLS certificate reloaded")
            }
            Reload::Kept(e) => tracing::warn!("TLS certificate files changed but do not load, kept the previous: {e}"),
        }
    }
}

/// Drives the ACME certificate's life (order, renewal, retries) and says what happens.
async fn follow_acme(mut acme: Acme) {
    loop {
        match acme.next().await {
            AcmeEvent::CachedCertificate => tracing::info!("ACME certificate from the cache served"),
            AcmeEvent::NewCertificate => tracing::info!("new ACME certificate served"),
            AcmeEvent::Stored => tracing::debug!("ACME cache written"),
            AcmeEvent::OrderFailed(e) => tracing::warn!("ACME order failed, will be tried again: {e}"),
            AcmeEvent::CacheFailed(e) => tracing::warn!("ACME cache: {e}"),
        }
    }
}

/// Pings systemd's watchdog while the HTTP listener at `addr` accepts connections.
fn watchdog(addr: std::net::SocketAddr) {
    let mut watchdog = deadsfu_runtime::service::Watchdog::from_env(std::time::Instant::now());
    let mut probe = addr;
    if probe.ip().is_unspecified() {
        probe.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    while let Some(deadline) = watchdog.deadline() {
        std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
        match std::net::TcpStream::connect_timeout(&probe, Duration::from_secs(1)) {
            Ok(_) => watchdog.tick(std::time::Instant::now()),
            Err(e) => tracing::warn!(%probe, error = %e, "HTTP listener does not accept; withholding watchdog ping"),
        }
    }
}
