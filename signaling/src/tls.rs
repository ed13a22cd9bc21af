//! The HTTPS listener's TLS (rustls). The HTTP server ([`crate::http`]) terminates TLS itself, so one server
//! with the same limits answers both listeners.
//!
//! The rustls configuration holds a certificate resolver, not a certificate, so a new certificate is used from
//! the next handshake on, without a restart; open connections keep the one they started with. It comes from:
//! - PEM files (`tls_cert`, `tls_key`): [`CertFiles`] serves the pair it last read, and
//!   [`CertFiles::check`] (called every [`RELOAD_CHECK`] by the binary) reads the files again when either
//!   changed. A pair that does not load (a file half written, a key of another certificate) is reported and
//!   the previous pair kept; the next change is tried again, so the two files can be replaced in either order.
//! - an ACME CA ([`crate::acme`]): rustls-acme's resolver, which also answers the CA's TLS-ALPN-01
//!   validation handshakes, through [`Tls::challenge`].

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// How often the certificate files are looked at for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Why the HTTPS listener could not start, or a certificate could not be (re)loaded.
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

/// What the HTTPS listener shakes hands with.
#[derive(Clone, Debug)]
pub struct Tls {
    /// Every ordinary handshake.
    pub config: Arc<ServerConfig>,
    /// An ACME CA's TLS-ALPN-01 validation handshakes (ALPN `acme-tls/1`, RFC 8737), when certificates
    /// come from ACME. Such a connection is closed after its handshake.
    pub challenge: Option<Arc<ServerConfig>>,
}

impl Tls {
    /// Files or any other certificate source without validation handshakes.
    pub fn new(resolver: Arc<dyn ResolvesServerCert>) -> Tls {
        Tls { config: server_config(resolver), challenge: None }
    }

    /// The configuration for the handshake that starts with `hello`, and whether it is an ACME validation.
    pub fn config_for(&self, hello: &ClientHello<'_>) -> (Arc<ServerConfig>, bool) {
        match &self.challenge {
            Some(challenge) if rustls_acme::is_tls_alpn_challenge(hello) => (challenge.clone(), true),
            _ => (self.config.clone(), false),
        }
    }
}

/// The HTTPS listener's configuration around `resolver`: HTTP/1.1 only, as the server speaks nothing else.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder().with_no_client_auth().with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Reads a certificate chain and its key from PEM files, checking that they go together.
pub fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert { path: shown(cert), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: shown(cert), reason: "no certificate in the file".into() });
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: shown(key), reason: e.to_string() })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    CertifiedKey::from_der(certs, key, &provider).map_err(TlsError::Config)
}

/// What identifies one version of a file: it changes when the file is rewritten or replaced (renamed over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn version(path: &Path) -> Option<Version> {
    let m = std::fs::metadata(path).ok()?;
    Some(Version { modified: m.modified().ok(), len: m.len(), inode: m.ino() })
}

/// What [`CertFiles::check`] found.
#[derive(Debug)]
pub enum Reload {
    /// Neither file changed since the last look.
    Unchanged,
    /// The files changed and the new pair is served from now on.
    Loaded,
    /// The files changed but do not load; the previous pair is still served.
    Kept(TlsError),
}

/// A certificate and key from PEM files, served to every handshake and read again when the files change.
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' versions at the last look.
    seen: Mutex<(Option<Version>, Option<Version>)>,
}

impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFiles").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl CertFiles {
    /// Reads the pair; an error here stops signaling at start.
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<CertFiles>, TlsError> {
        let seen = (version(cert), version(key));
        let pair = read_pair(cert, key)?;
        Ok(Arc::new(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
        }))
    }

    /// Reads the files again if either changed since the last look. The versions are taken before reading, so
    /// a file that changes while it is read is read again at the next check.
    pub fn check(&self) -> Reload {
        let now = (version(&self.cert), version(&self.key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        match read_pair(&self.cert, &self.key) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                Reload::Loaded
            }
            Err(e) => Reload::Kept(e),
        }
    }

    /// The files, for messages.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` and its key, as PEM.
    fn self_signed(name: &str) -> (String, String) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen makes a certificate");
        (cert.pem(), key_pair.serialize_pem())
    }

    fn leaf(files: &CertFiles) -> Vec<u8> {
        files.current.read().unwrap().end_entity_cert().unwrap().to_vec()
    }

    #[test]
    fn files_are_read_again_when_they_change_and_a_bad_pair_is_not_taken() {
        let dir = std::env::temp_dir().join(format!("deadsfu-tls-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let (c1, k1) = self_signed("one.example");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let files = CertFiles::open(&cert, &key).unwrap();
        let first = leaf(&files);
        assert!(matches!(files.check(), Reload::Unchanged));

        // Certificate replaced before its key: the mismatched pair is refused and the first one kept.
        let (c2, k2) = self_signed("two.example");
        std::fs::write(dir.join("cert.new"), &c2).unwrap();
        std::fs::rename(dir.join("cert.new"), &cert).unwrap();
        match files.check() {
            Reload::Kept(TlsError::Config(e)) => assert!(e.to_string().contains("key"), "{e}"),
            other => panic!("a certificate without its key was taken: {other:?}"),
        }
        assert_eq!(leaf(&files), first);
        assert!(matches!(files.check(), Reload::Unchanged), "a failed pair is reported once");

        // Then the key: the pair goes together and is served.
        std::fs::write(dir.join("key.new"), &k2).unwrap();
        std::fs::rename(dir.join("key.new"), &key).unwrap();
        assert!(matches!(files.check(), Reload::Loaded));
        assert_ne!(leaf(&files), first);

        // A file that is not PEM at all, then gone: kept.
        std::fs::write(&key, "not a key").unwrap();
        assert!(matches!(files.check(), Reload::Kept(TlsError::Key { .. })));
        std::fs::remove_file(&cert).unwrap();
        assert!(matches!(files.check(), Reload::Kept(TlsError::Cert { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}
