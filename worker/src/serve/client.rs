//! gRPC client of `textrec.v1.Recognizer`, used by `textrec-worker recognize --endpoint`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use futures::StreamExt;

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

/// The URI tonic dials for `grpc://host:port` (or `http://host:port`).
pub fn endpoint_uri(endpoint: &str) -> Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    if let Some(rest) = e.strip_prefix("grpc://") {
        Ok(format!("http://{rest}"))
    } else if e.starts_with("http://") {
        Ok(e.to_string())
    } else if e.starts_with("grpcs://") || e.starts_with("https://") {
        anyhow::bail!("{endpoint}: TLS endpoints are not supported by this client; terminate TLS in front of it or use grpc://")
    } else if !e.contains("://") {
        Ok(format!("http://{e}"))
    } else {
        anyhow::bail!("{endpoint}: use grpc://HOST:PORT")
    }
}

/// Send each file to the server at `endpoint` (`grpc://host:port` or `http://host:port`).
pub async fn recognize_files(endpoint: &str, paths: &[PathBuf]) -> Result<Vec<RemoteRecognition>> {
    let uri = endpoint_uri(endpoint)?;
    let channel = tonic::transport::Endpoint::from_shared(uri.clone())
        .with_context(|| format!("bad endpoint {endpoint}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))?;
    let client = RecognizerClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
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
        assert!(endpoint_uri("grpcs://x:1").is_err());
        assert!(endpoint_uri("ftp://x").is_err());
    }
}
