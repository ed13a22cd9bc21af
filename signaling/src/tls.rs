//! The HTTPS listener's TLS configuration (rustls). The HTTP server ([`crate::http`]) terminates TLS itself,
//! so one server with the same limits answers both listeners.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Why the HTTPS listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read TLS private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS certificate and key do not go together: {0}")]
    Config(rustls::Error),
    #[error("cannot listen for HTTPS on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

/// The TLS configuration from PEM files.
pub fn config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert { path: shown(cert), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: shown(cert), reason: "no certificate in the file".into() });
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: shown(key), reason: e.to_string() })?;
    let mut config =
        ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
