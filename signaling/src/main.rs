//! deadsfu-signaling: the HTTP face (WHIP, WHEP, pages, health). It never touches media, so it can restart
//! without a packet lost; it finds ingest and the fanout workers through their control sockets.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use deadsfu_signaling::router::{Backend, HttpRequest, Router, Target, Tokens, MAX_BODY};
use deadsfu_signaling::tls;
use shm_proto::config::ConfigArgs;
use shm_proto::control::{self, ControlError, Request, Response};
use shm_proto::paths;

/// How long a call to a media process may take (accepting an offer is about a millisecond).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Threads answering HTTP requests.
const HTTP_THREADS: usize = 8;

/// deadsfu signaling process: WHIP/WHEP over HTTP, hands sessions to ingest and the fanout workers.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    print_config: bool,
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
        let Ok(dir) = std::fs::read_dir(&self.runtime_dir) else { return Vec::new() };
        let mut out: Vec<u32> =
            dir.filter_map(|e| e.ok()).filter_map(|e| paths::fanout_index(e.file_name().to_str()?)).collect();
        out.sort_unstable();
        out
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
    let cfg = match args.config.startup("deadsfu-signaling", args.print_config) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let addr = cfg.http_addr().expect("validated at load");
    let server = match tiny_http::Server::http(addr) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(%addr, "cannot listen for HTTP: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(https) = cfg.https_addr().expect("validated at load") {
        let (cert, key) = (cfg.tls_cert.as_deref(), cfg.tls_key.as_deref());
        let (cert, key) = (cert.expect("validated at load"), key.expect("validated at load"));
        // The relay reaches the HTTP listener on loopback when it listens on all interfaces.
        let mut upstream = addr;
        if upstream.ip().is_unspecified() {
            upstream.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let started = tls::config(cert, key).and_then(|config| tls::serve(https, upstream, config));
        if let Err(e) = started {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
        tracing::info!(%https, "HTTPS listener ready");
    }
    let tokens = Tokens { publish: cfg.publish_token().map(String::from), view: cfg.view_token().map(String::from) };
    let router =
        Arc::new(Router::new(Sockets { runtime_dir: cfg.runtime_dir(), clients: Mutex::new(HashMap::new()) }, tokens));
    tracing::info!(%addr, runtime_dir = %cfg.runtime_dir().display(), "signaling ready");
    shm_proto::service::ready();
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || watchdog(addr))
        .expect("spawning a thread at startup succeeds");
    let threads: Vec<_> = (0..HTTP_THREADS)
        .map(|_| {
            let server = server.clone();
            let router = router.clone();
            std::thread::spawn(move || serve(&server, &router))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

/// Pings systemd's watchdog while the HTTP listener at `addr` accepts connections.
fn watchdog(addr: std::net::SocketAddr) {
    let mut watchdog = shm_proto::service::Watchdog::from_env(std::time::Instant::now());
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

fn serve(server: &tiny_http::Server, router: &Arc<Router<Sockets>>) {
    loop {
        let mut request = match server.recv() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("HTTP accept failed: {e}");
                continue;
            }
        };
        let mut body = Vec::new();
        let too_large = request.body_length().is_some_and(|n| n > MAX_BODY);
        let body = if too_large {
            None
        } else {
            match request.as_reader().take(MAX_BODY as u64 + 1).read_to_end(&mut body) {
                Ok(n) if n <= MAX_BODY => Some(body),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!("HTTP body read failed: {e}");
                    continue;
                }
            }
        };
        let req = HttpRequest {
            method: request.method().as_str().to_ascii_uppercase(),
            url: request.url().to_string(),
            headers: request.headers().iter().map(|h| (h.field.to_string(), h.value.to_string())).collect(),
            body,
        };
        if Router::<Sockets>::is_long_poll(&req) {
            // Held for up to LONG_POLL: on a thread of its own, so waiting pages never starve the others.
            if LONG_POLLS.fetch_add(1, Ordering::AcqRel) < MAX_LONG_POLLS {
                let router = router.clone();
                let spawned = std::thread::Builder::new().name("long-poll".into()).spawn(move || {
                    answer(request, &req, &router);
                    LONG_POLLS.fetch_sub(1, Ordering::AcqRel);
                });
                if spawned.is_err() {
                    LONG_POLLS.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("cannot spawn a long-poll thread");
                }
                continue;
            }
            LONG_POLLS.fetch_sub(1, Ordering::AcqRel);
            let resp = tiny_http::Response::from_string("too many waiting room-list requests; retry shortly\n")
                .with_status_code(503);
            let _ = request.respond(resp);
            continue;
        }
        answer(request, &req, router);
    }
}

/// Long-polls being held, and the most that may be.
static LONG_POLLS: AtomicUsize = AtomicUsize::new(0);
const MAX_LONG_POLLS: usize = 2048;

fn answer(request: tiny_http::Request, req: &HttpRequest, router: &Router<Sockets>) {
    let resp = router.handle(req);
    tracing::debug!(method = %req.method, url = %req.url, status = resp.status, "http");
    let mut out = tiny_http::Response::from_data(resp.body).with_status_code(resp.status);
    for (name, value) in resp.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            out.add_header(h);
        }
    }
    if let Err(e) = request.respond(out) {
        tracing::debug!("HTTP response not delivered: {e}");
    }
}
