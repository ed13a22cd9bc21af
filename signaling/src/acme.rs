//! The HTTPS listener's certificate from an ACME CA (RFC 8555): Let's Encrypt unless `acme_directory` names
//! another.
//!
//! Built on rustls-acme rather than instant-acme. Signaling terminates TLS itself with rustls, so the
//! TLS-ALPN-01 challenge (RFC 8737) is answered by the HTTPS listener's own handshake: rustls-acme's
//! certificate resolver hands the CA's validation handshake (ALPN `acme-tls/1`, told apart in
//! [`crate::tls::Tls::config_for`]) its challenge certificate and every other handshake the current
//! certificate. Nothing else is needed: no port 80, no challenge route in the router, no second listener. The
//! crate also keeps the account key and the certificate in a directory, so a restart reuses both instead of
//! ordering again, and renews a certificate once two thirds of its lifetime have passed (day 60 of Let's
//! Encrypt's 90), retrying a failed order after 1 s, 2 s, 4 s, ... With instant-acme, the order flow, the
//! challenge certificate, the cache and the renewal schedule would have been written here.
//!
//! What it asks of the host: the CA connects to port 443 of every domain for validation, so the `https`
//! listener must be reachable there (directly, or forwarded from 443). A renewed certificate goes into the
//! resolver and is used from the next handshake on.
//!
//! The state is driven by awaiting [`Acme::next`] in a loop (the binary does, on its tokio runtime); the
//! crate's timers run on async-io's own thread.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;

use deadsfu_runtime::config::Config;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use rustls_acme::caches::DirCache;
use rustls_acme::{AcmeConfig, AcmeState, EventError, EventOk};

use crate::tls::{server_config, Tls};

/// What signaling needs to get its certificate (the `acme*` configuration keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    pub directory: String,
    pub contact: Option<String>,
    pub cache_dir: PathBuf,
    pub ca_file: Option<PathBuf>,
}

impl AcmeSettings {
    /// The settings of `cfg`, or `None` when it gets no certificate from ACME.
    pub fn from_config(cfg: &Config) -> Option<AcmeSettings> {
        (!cfg.acme.is_empty()).then(|| AcmeSettings {
            domains: cfg.acme.clone(),
            directory: cfg.acme_directory.clone(),
            contact: cfg.acme_contact.clone(),
            cache_dir: cfg.acme_cache_dir(),
            ca_file: cfg.acme_ca_file.clone(),
        })
    }
}

/// Why ACME could not start.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot use {path} as the ACME cache directory (acme_cache_dir): {source}")]
    CacheDir { path: String, source: io::Error },
    #[error("cannot read the ACME server's certificate authorities from {path} (acme_ca_file): {reason}")]
    CaFile { path: String, reason: String },
}

/// What happened to the certificate.
#[derive(Debug)]
pub enum AcmeEvent {
    /// A certificate from the cache is served (at start).
    CachedCertificate,
    /// A new certificate was issued and is served from the next handshake on.
    NewCertificate,
    /// The account key or a certificate was written to the cache.
    Stored,
    /// An order failed (the CA refused, validation failed, the CA was unreachable): it is tried again after
    /// a back-off of 1 s, doubling up to 18 h; the current certificate, if any, is still served.
    OrderFailed(String),
    /// The cache could not be read or written: the certificate is served but a restart will order again.
    CacheFailed(String),
}

/// The ACME state of the HTTPS listener's certificate: orders, validation, cache, renewal.
pub struct Acme {
    state: AcmeState<io::Error, io::Error>,
}

impl Acme {
    /// Prepares the cache directory and the account; nothing is asked of the CA until [`Acme::next`] runs.
    /// Returns the TLS configurations of the HTTPS listener too.
    pub fn start(settings: &AcmeSettings) -> Result<(Acme, Tls), AcmeError> {
        private_dir(&settings.cache_dir)
            .map_err(|source| AcmeError::CacheDir { path: settings.cache_dir.display().to_string(), source })?;
        let mut config = AcmeConfig::new(&settings.domains)
            .directory(&settings.directory)
            .contact(settings.contact.iter().map(|c| {
                if c.starts_with("mailto:") {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            }))
            .cache(DirCache::new(settings.cache_dir.clone()));
        if let Some(ca) = &settings.ca_file {
            config = config.client_tls_config(client_config(ca)?);
        }
        let state = config.state();
        let resolver: Arc<dyn rustls::server::ResolvesServerCert> = state.resolver();
        let tls = Tls { config: server_config(resolver), challenge: Some(state.challenge_rustls_config()) };
        Ok((Acme { state }, tls))
    }

    /// Waits for the next thing to happen; the state only moves on while this is awaited.
    pub async fn next(&mut self) -> AcmeEvent {
        let event: Result<EventOk, EventError<io::Error, io::Error>> =
            std::future::poll_fn(|cx| Pin::new(&mut self.state).poll_next(cx))
                .await
                .expect("rustls-acme's state is an endless stream");
        match event {
            Ok(EventOk::DeployedCachedCert) => AcmeEvent::CachedCertificate,
            Ok(EventOk::DeployedNewCert) => AcmeEvent::NewCertificate,
            Ok(EventOk::CertCacheStore | EventOk::AccountCacheStore) => AcmeEvent::Stored,
            Err(e @ (EventError::Order(_) | EventError::NewCertParse(_))) => AcmeEvent::OrderFailed(e.to_string()),
            Err(e) => AcmeEvent::CacheFailed(e.to_string()),
        }
    }
}

/// Creates `dir` if missing, and makes it private to this user: it holds the account's and the certificates'
/// private keys, which the cache writes with the default file mode.
fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// A TLS client configuration for the CA's API trusting the certificates in `ca` only.
fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, AcmeError> {
    let fail = |reason: String| AcmeError::CaFile { path: ca.display().to_string(), reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| fail(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(fail("no usable certificate in the file".into()));
    }
    Ok(Arc::new(ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_directory_is_made_private() {
        let dir = std::env::temp_dir().join(format!("deadsfu-acme-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = dir.join("state/acme");
        private_dir(&cache).unwrap();
        assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&cache).unwrap();
        assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("deadsfu-acme-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "nothing here\n").unwrap();
        let err = client_config(&path).unwrap_err().to_string();
        assert!(err.contains("acme_ca_file"), "{err}");
        std::fs::remove_file(&path).ok();
    }
}
