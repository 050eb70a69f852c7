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
    png(&image::GrayImage::from_fn(w, h, |x, y| {
        let stroke = (x / 3) % 4 == 0 && y > h / 4 && y < h * 3 / 4;
        image::Luma([if stroke { 20 } else { 235 }])
    }))
}

/// `img` encoded as PNG.
pub fn png(img: &image::GrayImage) -> Vec<u8> {
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

/// `GET {base}/v1/model`: the served model's description.
pub async fn model_info(http: &reqwest::Client, base: &str) -> serde_json::Value {
    http.get(format!("{base}/v1/model"))
        .send()
        .await
        .expect("/v1/model answers")
        .json()
        .await
        .expect("a JSON answer")
}

/// `POST {base}/v1/recognize` with one PNG; the JSON answer.
pub async fn post_png(http: &reqwest::Client, base: &str, png: Vec<u8>) -> serde_json::Value {
    http.post(format!("{base}/v1/recognize"))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .expect("/v1/recognize answers")
        .json()
        .await
        .expect("a JSON answer")
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

/// A mostly white `w`×`h` PNG with a little ink, as a scanner or a camera would send a page:
/// tiny when encoded (a 4000×4000 one is some tens of KB) however many pixels it declares.
pub fn white_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| {
        let ink = y % 97 == 0 && x % 5 < 3;
        image::Luma([if ink { 30 } else { 250 }])
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A `w`×`h` text-line-like PNG in 16-bit RGBA, the costliest sample layout to decode (8 bytes
/// per pixel when decoded whole).
pub fn rgba16_line_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_fn(w, h, |x, y| {
        let stroke = (x / 9) % 4 == 0 && y > h / 4 && y < h * 3 / 4;
        let v = if stroke { 5_000 } else { 60_000 };
        image::Rgba([v, v, v, 65_535])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgba16(img)
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// The real `textrec-worker serve` binary in a child process: for tests that measure the
/// server alone (its memory), apart from the test's own allocations.
pub struct ServerProcess {
    child: tokio::process::Child,
    /// The child's process id.
    pub pid: u32,
    /// Where gRPC listens.
    pub grpc_addr: std::net::SocketAddr,
    /// Where HTTP listens.
    pub http_addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// Start `serve --model DIR` on ephemeral loopback ports with `extra` arguments, and wait
    /// until it serves.
    pub async fn spawn(model: &Path, extra: &[&str]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_textrec-worker"))
            .args(["serve", "--model", model.to_str().unwrap()])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the worker binary starts");
        let pid = child.id().expect("a running child");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let addr_after = |line: &str, key: &str| -> Option<std::net::SocketAddr> {
            let i = line.find(key)?;
            line[i + key.len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        let (grpc_addr, http_addr) = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let (Some(g), Some(h)) = (addr_after(&line, "grpc="), addr_after(&line, "http="))
                {
                    return (g, h);
                }
            }
            panic!("the server exited before serving:\n{}", log.lock().unwrap());
        })
        .await
        .expect("the server announces its addresses");
        // Keep draining stderr so the child never blocks on a full pipe.
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                // Keep the tail only: a hostile test makes the server log a lot.
                if log.len() > 1 << 20 {
                    let cut = log.len() - (1 << 19);
                    let cut = (cut..log.len()).find(|&i| log.is_char_boundary(i)).unwrap();
                    log.drain(..cut);
                }
                log.push_str(&l);
                log.push('\n');
            }
        });
        Self {
            child,
            pid,
            grpc_addr,
            http_addr,
            log,
        }
    }

    /// Base URL of the HTTP port.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// A connected Recognizer client.
    pub async fn recognizer(&self) -> RecognizerClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("gRPC connects");
        RecognizerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// A field of `/proc/PID/status`, in bytes (`VmHWM`: peak resident memory; `VmRSS`: now).
    pub fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("the server process is alive");
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid));
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("cannot read {line:?}"));
        kb * 1024
    }

    /// What the server has logged (the tail, for a long run).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, and wait for a clean exit.
    pub async fn stop(mut self) {
        let st = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        assert_eq!(status.code(), Some(0), "log:\n{}", self.log());
    }
}

/// A CA made at test time and certificates it signed, as PEM files in a folder.
pub struct Pki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate for `localhost` and 127.0.0.1, signed by the CA.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// Client certificate (clientAuth), signed by the CA.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the TLS tests make their certificates with the openssl CLI; install openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Make a P-256 CA named `name` in `dir` and a server and a client certificate signed by it
/// (files `NAME-ca.crt`, `NAME-server.crt`, ...).
pub fn pki(dir: &Path, name: &str) -> Pki {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let f = |s: &str| format!("{name}-{s}");
    let mut args: Vec<String> = ["req", "-x509"].map(String::from).to_vec();
    args.extend(ec.map(String::from));
    args.extend(
        [
            "-keyout",
            &f("ca.key"),
            "-out",
            &f("ca.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=textrec test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]
        .map(String::from),
    );
    openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    for (who, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        ),
        ("client", "clientAuth", ""),
    ] {
        std::fs::write(
            dir.join(f(&format!("{who}.ext"))),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n{san}"
            ),
        )
        .unwrap();
        let mut args: Vec<String> = vec!["req".into()];
        args.extend(ec.map(String::from));
        args.extend(
            [
                "-keyout",
                &f(&format!("{who}.key")),
                "-out",
                &f(&format!("{who}.csr")),
                "-subj",
                &format!("/CN=textrec test {who}"),
            ]
            .map(String::from),
        );
        openssl(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let serial = format!("{}", rand_serial());
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &f(&format!("{who}.csr")),
                "-CA",
                &f("ca.crt"),
                "-CAkey",
                &f("ca.key"),
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                &f(&format!("{who}.ext")),
                "-out",
                &f(&format!("{who}.crt")),
            ],
        );
    }
    Pki {
        ca: dir.join(f("ca.crt")),
        server_cert: dir.join(f("server.crt")),
        server_key: dir.join(f("server.key")),
        client_cert: dir.join(f("client.crt")),
        client_key: dir.join(f("client.key")),
    }
}

fn rand_serial() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish() >> 1
}
