//! gRPC client of `textrec.v1.Recognizer`, used by `textrec-worker recognize --endpoint`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;
use textrec_contract::exit::ConfigError;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::proto::textrec::recognizer_client::RecognizerClient;
use super::proto::textrec::RecognizeRequest;

/// Files sent at once; answers keep the order of `paths`.
const CONCURRENCY: usize = 8;

/// The server's answer for one image file.
#[derive(Debug, Clone)]
pub struct RemoteRecognition {
    /// The image file sent.
    pub path: PathBuf,
    /// Recognized text.
    pub text: String,
    /// Line confidence in [0, 1].
    pub confidence: f32,
    /// Version (manifest sha256) of the model that answered.
    pub model_version: String,
}

/// The URI tonic dials for `grpc://host:port` (or `http://host:port`), `grpcs://host:port`
/// (or `https://host:port`: TLS).
pub fn endpoint_uri(endpoint: &str) -> Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    if let Some(rest) = e.strip_prefix("grpc://") {
        Ok(format!("http://{rest}"))
    } else if let Some(rest) = e.strip_prefix("grpcs://") {
        Ok(format!("https://{rest}"))
    } else if e.starts_with("http://") || e.starts_with("https://") {
        Ok(e.to_string())
    } else if !e.contains("://") {
        Ok(format!("http://{e}"))
    } else {
        anyhow::bail!(ConfigError::new(format!(
            "{endpoint}: use grpc://HOST:PORT or grpcs://HOST:PORT"
        )))
    }
}

/// How the client authenticates the server and itself.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientSecurity {
    /// With a grpcs:// endpoint: trust the server certificate if signed by a CA in this PEM
    /// file (a private CA), instead of the system's roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// With a grpcs:// endpoint: present this PEM client certificate (mutual TLS). Needs
    /// --client-key.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Send `authorization: Bearer TOKEN`, TOKEN being the first non-empty line of this file
    /// (whitespace trimmed).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// With a grpcs:// endpoint: the name the server certificate must carry, when it differs
    /// from the endpoint's host (an IP address or a port-forward, say).
    #[arg(long)]
    pub tls_server_name: Option<String>,
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        ConfigError::new(format!("{flag} {}: cannot read it: {e}", path.display())).into()
    })
}

impl ClientSecurity {
    /// The bearer token of --token-file.
    pub fn token(&self) -> Result<Option<MetadataValue<Ascii>>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = String::from_utf8(read(path, "--token-file")?).map_err(|_| {
            ConfigError::new(format!("--token-file {}: not UTF-8 text", path.display()))
        })?;
        let token = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| {
                ConfigError::new(format!("--token-file {}: no token in it", path.display()))
            })?;
        let value = format!("Bearer {token}").parse().map_err(|_| {
            ConfigError::new(format!(
                "--token-file {}: the token is not a valid header value",
                path.display()
            ))
        })?;
        Ok(Some(value))
    }

    /// The TLS settings for an `https://` URI.
    fn tls_config(&self) -> Result<ClientTlsConfig> {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_cert {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "--ca-cert")?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--client-cert")?,
                read(key, "--client-key")?,
            ));
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }

    /// A connected channel to `endpoint`, over TLS for grpcs:// and https://.
    pub async fn connect(&self, endpoint: &str) -> Result<Channel> {
        let uri = endpoint_uri(endpoint)?;
        let tls = uri.starts_with("https://");
        if !tls && (self.ca_cert.is_some() || self.client_cert.is_some()) {
            anyhow::bail!(ConfigError::new(format!(
                "{endpoint}: --ca-cert and --client-cert need a grpcs:// endpoint"
            )));
        }
        let mut ep = Endpoint::from_shared(uri)
            .map_err(|e| ConfigError::new(format!("bad endpoint {endpoint}: {e}")))?;
        if tls {
            ep = ep
                .tls_config(self.tls_config()?)
                .with_context(|| format!("TLS settings for {endpoint}"))?;
        }
        ep.connect()
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))
    }
}

/// Adds the bearer token (if any) to every call.
#[derive(Clone)]
pub struct BearerToken(pub Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Send each file to the server at `endpoint` (`grpc://host:port`, or `grpcs://host:port`
/// trusting the system's roots), without a token.
pub async fn recognize_files(endpoint: &str, paths: &[PathBuf]) -> Result<Vec<RemoteRecognition>> {
    recognize_files_with(endpoint, &ClientSecurity::default(), paths).await
}

/// [`recognize_files`] with TLS settings and a bearer token.
pub async fn recognize_files_with(
    endpoint: &str,
    security: &ClientSecurity,
    paths: &[PathBuf],
) -> Result<Vec<RemoteRecognition>> {
    let token = security.token()?;
    let channel = security.connect(endpoint).await?;
    let client = RecognizerClient::with_interceptor(channel, BearerToken(token))
        .max_decoding_message_size(64 * 1024 * 1024);
    let results: Vec<Result<RemoteRecognition>> = futures::stream::iter(paths.iter().cloned())
        .map(|path| {
            let mut client = client.clone();
            async move {
                let image = tokio::fs::read(&path)
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let request = RecognizeRequest {
                    image: image.into(),
                    request_id: path.display().to_string(),
                };
                let r = client
                    .recognize(request)
                    .await
                    .map_err(|s| {
                        anyhow::anyhow!("{}: {} ({:?})", path.display(), s.message(), s.code())
                    })?
                    .into_inner();
                Ok(RemoteRecognition {
                    path,
                    text: r.text,
                    confidence: r.confidence,
                    model_version: r.model_version,
                })
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_map_to_http_uris() {
        assert_eq!(
            endpoint_uri("grpc://127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(endpoint_uri("localhost:1").unwrap(), "http://localhost:1");
        assert_eq!(endpoint_uri("grpcs://x:1").unwrap(), "https://x:1");
        assert!(endpoint_uri("ftp://x").is_err());
    }
}
