//! Shared helpers of the `serve_*` integration tests: real tiny random-weight models, rendered
//! test images, servers on ephemeral 127.0.0.1 ports, and clients.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::config::Preset;
use textrec_contract::PreprocessConfig;
use textrec_worker::serve::proto::textrec::recognizer_client::RecognizerClient;
use textrec_worker::serve::{RunningServer, ServeArgs};
use tonic::transport::Channel;

/// Write a tiny random-weight model folder under `root/name` and return its path and version.
pub fn tiny_model(root: &Path, name: &str, seed: i64) -> (PathBuf, String) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    textrec_model::inference::write_random_model_dir(
        &dir,
        &Preset::Tiny.architecture(),
        &PreprocessConfig::default(),
        IAM_CHARSET,
        seed,
    )
    .unwrap();
    let version =
        textrec_contract::manifest::sha256_hex(&std::fs::read(dir.join("manifest.json")).unwrap());
    (dir, version)
}

/// A PNG of a `w`×`h` text-line-like image: dark strokes on a light background.
pub fn line_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| {
        let stroke = (x / 3) % 4 == 0 && y > h / 4 && y < h * 3 / 4;
        image::Luma([if stroke { 20 } else { 235 }])
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Server arguments on ephemeral ports for the model at `dir`.
pub fn args(dir: &Path) -> ServeArgs {
    let mut a = ServeArgs::local(dir.to_str().unwrap());
    a.torch_threads = 1;
    a
}

/// Start a real server.
pub async fn start(args: ServeArgs) -> RunningServer {
    textrec_worker::serve::start(args)
        .await
        .expect("server starts")
}

/// A connected Recognizer client.
pub async fn recognizer(server: &RunningServer) -> RecognizerClient<Channel> {
    RecognizerClient::new(channel(server).await)
}

/// A channel to the server's gRPC port.
pub async fn channel(server: &RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("gRPC connects")
}

/// Base URL of the server's HTTP port.
pub fn http_base(server: &RunningServer) -> String {
    format!("http://{}", server.http_addr)
}

/// A flagged sample as the flag store wrote it under a `file://` flags folder.
pub struct FlaggedSample {
    /// `NAME.png`.
    pub png: Vec<u8>,
    /// `NAME.gt.txt`.
    pub truth: String,
    /// `NAME.jsonl`: time, model version, prediction, corrected text.
    pub record: serde_json::Value,
}

/// Read back the sample flagged as `name` from `dir`.
pub fn read_flag(dir: &Path, name: &str) -> FlaggedSample {
    let read = |ext: &str| {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    FlaggedSample {
        png: read("png"),
        truth: String::from_utf8(read("gt.txt")).expect("UTF-8 ground truth"),
        record: serde_json::from_slice(&read("jsonl")).expect("a JSON record"),
    }
}

/// The server's Prometheus exposition at `{base}/metrics`.
pub async fn metrics(http: &reqwest::Client, base: &str) -> String {
    let r = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(r.status(), 200, "/metrics status");
    r.text().await.expect("/metrics body")
}

/// Shut down and wait.
pub async fn stop(server: RunningServer) {
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("shutdown finishes in time")
        .expect("clean shutdown");
}

/// A PNG whose header claims `w`×`h` pixels but holds almost no data: a decompression bomb's
/// shape. The header CRC is fixed up so decoders read the header without complaint.
pub fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut png = line_png(8, 8);
    // Signature (8) + IHDR length (4) + "IHDR" (4), then width and height.
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// CRC-32 (IEEE), as PNG chunks use.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
