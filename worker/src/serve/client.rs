//! gRPC client of `textrec.v1.Recognizer` (stub until the serving work lands).

use std::path::PathBuf;

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

/// Send each file to the server at `endpoint` (`grpc://host:port` or `http://host:port`).
pub async fn recognize_files(endpoint: &str, paths: &[PathBuf]) -> anyhow::Result<Vec<RemoteRecognition>> {
    let _ = (endpoint, paths);
    anyhow::bail!("the gRPC client is not built yet")
}
