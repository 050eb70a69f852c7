//! What the tests of `textrec-operator local` through the built binaries share: finding the
//! worker binary, a scratch storage root with the runner's commands pointed at it, a guard that
//! stops a runner however a test ends, and `recognize` against a served model.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `textrec-worker` next to the test binary's target folder
/// (`<target>/debug/deps/TEST-HASH` → `<target>/debug/textrec-worker`).
pub fn worker() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let w = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("textrec-worker");
    assert!(
        w.is_file(),
        "{} is missing: build it first with `cargo build -p textrec-worker`",
        w.display()
    );
    w
}

/// The operator binary under test.
pub fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_textrec-operator"))
}

/// A scratch folder whose `data/` is the local runner's storage root.
pub struct LocalEnv {
    /// The scratch folder (deleted when dropped).
    pub dir: tempfile::TempDir,
    /// The worker binary the runner starts.
    pub worker: PathBuf,
}

impl LocalEnv {
    /// A fresh scratch folder, with the built worker.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            worker: worker(),
        }
    }

    /// The storage root.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The storage root as a `file://` URL.
    pub fn storage(&self) -> String {
        format!("file://{}", self.data().display())
    }

    /// The runner's state file, or null before it exists (or while it is half written).
    pub fn state(&self) -> Value {
        std::fs::read(self.data().join(".textrec-local/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// `textrec-operator local ARGS --storage …`, with this worker.
    pub fn local(&self, args: &[&str]) -> Command {
        let mut c = operator();
        c.arg("local")
            .args(args)
            .args(["--storage", &self.storage()])
            .env("TEXTREC_WORKER", &self.worker)
            .env("RUST_BACKTRACE", "0");
        c
    }

    /// What a runner started with its output in `runner.log` has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runner.log")).unwrap_or_default()
    }
}

/// The model the local server of deployment `name` serves, from the runner's state.
pub fn served(state: &Value, name: &str) -> Option<String> {
    state["deployments"][name]["server"]["serving"]
        .as_str()
        .map(str::to_string)
}

/// Render `count` short lines (at most 12 characters) with `textrec-worker synth` into the
/// tesstrain folder `out`; returns their images, sorted.
pub fn synth_lines(worker: &Path, out: &Path, count: usize) -> Vec<PathBuf> {
    let run = Command::new(worker)
        .args([
            "synth",
            "--count",
            &count.to_string(),
            "--max-chars",
            "12",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    pngs.sort();
    assert_eq!(pngs.len(), count);
    pngs
}

/// `textrec-worker recognize` of `images` against the gRPC server at `grpc` (host:port).
pub fn recognize(worker: &Path, grpc: &str, images: &[PathBuf]) -> Output {
    Command::new(worker)
        .arg("recognize")
        .args(["--endpoint", &format!("grpc://{grpc}")])
        .args(images)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// A running `local run`: stopped with SIGTERM (then killed after 30 s) when dropped, so a
/// failed test does not leave trainers and servers behind.
pub struct Runner(pub Child);

impl Drop for Runner {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
        }
    }
}
