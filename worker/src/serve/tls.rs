//! TLS of the serving ports (`--tls-cert`, `--tls-key`, `--client-ca`).
//!
//! The server terminates TLS itself, with rustls, for both ports: accepted TCP connections
//! are handshaken concurrently (a slow or silent client holds up nobody) and handed to tonic
//! or hyper as TLS streams. gRPC offers ALPN `h2`, HTTP `h2` and `http/1.1`.
//!
//! With `--client-ca` (mutual TLS) the gRPC port refuses a handshake without a client
//! certificate signed by it. The HTTP port verifies a certificate the client presents the same
//! way but lets a client without one finish the handshake, and then answers only the probes
//! (`/healthz`, `/readyz`) and 403 to everything else: the kubelet's HTTPS probes present no
//! certificate.
//!
//! The files are polled every [`RELOAD_INTERVAL`]: when one changes (cert-manager renewing a
//! Secret, which the kubelet swaps in place) the whole configuration is read again and new
//! connections use it; open connections keep the one they started with. A new set that
//! cannot be loaded (a half-written file, a key that does not match) is logged and the old
//! one stays in service.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use textrec_contract::exit::ConfigError;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// Longest a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files of the server's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (cert-manager's `tls.crt`).
    pub cert: PathBuf,
    /// Private key: PKCS#8, PKCS#1 or SEC1 (`tls.key`).
    pub key: PathBuf,
    /// CA certificates client certificates must be signed by (`ca.crt`); without it clients
    /// are not asked for a certificate.
    pub client_ca: Option<PathBuf>,
}

/// The rustls configurations of both ports, built from one set of files.
#[derive(Clone)]
pub struct TlsConfigs {
    /// gRPC: ALPN `h2`.
    pub grpc: Arc<ServerConfig>,
    /// HTTP: ALPN `h2`, `http/1.1`.
    pub http: Arc<ServerConfig>,
    /// Whether client certificates are verified (`--client-ca`).
    pub client_auth: bool,
}

/// Which port a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The gRPC port.
    Grpc,
    /// The HTTP port.
    Http,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        ConfigError::new(format!("{flag} {}: cannot read it: {e}", path.display())).into()
    })
}

/// The certificates of a PEM file; an error when it holds none.
pub fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_file(path, flag)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(format!("{flag} {}: not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(format!(
            "{flag} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ))
        .into());
    }
    Ok(certs)
}

/// The private key of a PEM file; an error when it holds none.
pub fn read_key(path: &Path, flag: &str) -> Result<PrivateKeyDer<'static>> {
    let pem = read_file(path, flag)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| ConfigError::new(format!("{flag} {}: not valid PEM: {e}", path.display())))?
        .ok_or_else(|| {
            ConfigError::new(format!(
                "{flag} {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
                path.display()
            ))
            .into()
        })
}

impl TlsFiles {
    /// Read the files and build both configurations. Every problem is a [`ConfigError`]
    /// naming the flag and file: unreadable, not PEM, no certificate or key in it, a key that
    /// does not belong to the certificate.
    pub fn load(&self) -> Result<TlsConfigs> {
        let certs = read_certs(&self.cert, "--tls-cert")?;
        let key = read_key(&self.key, "--tls-key")?;
        let builder = || {
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")
        };
        let (grpc, http) = match &self.client_ca {
            None => (
                builder()?.with_no_client_auth(),
                builder()?.with_no_client_auth(),
            ),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca, "--client-ca")? {
                    roots.add(cert).map_err(|e| {
                        ConfigError::new(format!(
                            "--client-ca {}: not a usable CA certificate: {e}",
                            ca.display()
                        ))
                    })?;
                }
                let roots = Arc::new(roots);
                let verifier = |optional: bool| {
                    let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
                    let b = if optional {
                        b.allow_unauthenticated()
                    } else {
                        b
                    };
                    b.build()
                        .map_err(|e| ConfigError::new(format!("--client-ca {}: {e}", ca.display())))
                };
                (
                    builder()?.with_client_cert_verifier(verifier(false)?),
                    builder()?.with_client_cert_verifier(verifier(true)?),
                )
            }
        };
        let mismatch = |e: rustls::Error| {
            ConfigError::new(format!(
                "--tls-cert {} and --tls-key {}: {}",
                self.cert.display(),
                self.key.display(),
                match e {
                    rustls::Error::InconsistentKeys(_) =>
                        "the key does not belong to the certificate".to_string(),
                    e => e.to_string(),
                }
            ))
        };
        let mut grpc = grpc
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(mismatch)?;
        let mut http = http.with_single_cert(certs, key).map_err(mismatch)?;
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsConfigs {
            grpc: Arc::new(grpc),
            http: Arc::new(http),
            client_auth: self.client_ca.is_some(),
        })
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// Modification time and size of each file (following symlinks, as the kubelet's Secret
    /// volumes swap a `..data` link): what the reload poll compares.
    fn stamp(&self) -> Stamp {
        self.paths()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            })
            .collect()
    }
}

/// Modification time and size of each TLS file (`None`: unreadable).
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The configuration in service, replaced when the files change.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<(TlsConfigs, Stamp)>,
}

impl ServerTls {
    /// Load the files (errors are configuration errors, for start-up).
    pub fn load(files: TlsFiles) -> Result<Arc<Self>> {
        let stamp = files.stamp();
        let configs = files.load()?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((configs, stamp)),
        }))
    }

    /// The acceptor for new connections on `port`.
    pub fn acceptor(&self, port: Port) -> TlsAcceptor {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(match port {
            Port::Grpc => guard.0.grpc.clone(),
            Port::Http => guard.0.http.clone(),
        })
    }

    /// Whether client certificates are verified (`--client-ca`).
    pub fn client_auth(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .client_auth
    }

    /// Reload when a file changed since the last load; `Ok(true)` when a new configuration is
    /// in service. A failed load keeps the old one (and is retried on the next change).
    pub fn reload_if_changed(&self) -> Result<bool> {
        let stamp = self.files.stamp();
        if self.current.read().unwrap_or_else(|e| e.into_inner()).1 == stamp {
            return Ok(false);
        }
        let loaded = self.files.load();
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Remember the stamp either way: a broken set is reported once, not every poll.
        guard.1 = stamp;
        guard.0 = loaded?;
        Ok(true)
    }

    /// Poll the files every `interval` until `stop`.
    pub fn spawn_reloader(
        self: Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                let this = self.clone();
                match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                    Ok(Ok(true)) => tracing::info!(
                        cert = %self.files.cert.display(),
                        "TLS certificate reloaded; new connections use it"
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        "TLS files changed but cannot be loaded; keeping the previous certificate: {e:#}"
                    ),
                    Err(e) => tracing::warn!("TLS reload task failed: {e}"),
                }
            }
        })
    }

    /// Handshake one accepted connection within [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, port: Port, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let acceptor = self.acceptor(port);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_configuration_errors_naming_the_flag() {
        let files = TlsFiles {
            cert: "/nonexistent/tls.crt".into(),
            key: "/nonexistent/tls.key".into(),
            client_ca: None,
        };
        let e = files.load().err().expect("an error");
        assert_eq!(textrec_contract::exit::code_for(&e), 78);
        assert!(
            format!("{e:#}").contains("--tls-cert /nonexistent/tls.crt"),
            "{e:#}"
        );
    }

    #[test]
    fn a_file_without_pem_blocks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        std::fs::write(&cert, "not a certificate").unwrap();
        let e = read_certs(&cert, "--tls-cert").expect_err("an error");
        assert!(format!("{e:#}").contains("no PEM certificate"), "{e:#}");
        let e = read_key(&cert, "--tls-key").expect_err("an error");
        assert!(format!("{e:#}").contains("no PEM private key"), "{e:#}");
    }
}
