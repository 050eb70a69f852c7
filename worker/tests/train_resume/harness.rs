//! The runs the tests start and what they read back: the `tiny` example config on one CPU
//! thread, the uninterrupted reference run, checkpoints, kills and restarts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use textrec_contract::metrics::{MetricsRecord, RecordKind, TrialProgress};
use textrec_contract::ModelManifest;

use crate::train_support::complete_checkpoints;

pub(crate) const MAX_STEPS: u64 = 40;

pub(crate) fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/trial-tiny.yaml")
}

/// `train` with the test settings: small enough for seconds, with a checkpoint every 5 steps
/// and evaluations at 20 and 40 (so the best weights and a pending evaluation are exercised).
pub(crate) fn train_cmd(out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_textrec-worker"));
    c.arg("train")
        .arg("--config")
        .arg(example())
        .arg("--output")
        .arg(out)
        .args(["--threads", "1"])
        .args(["--set", &format!("max_steps={MAX_STEPS}")])
        .args([
            "--set",
            "batch_size=8",
            "--set",
            "eval_interval=20",
            "--set",
            "log_interval=5",
        ])
        .args([
            "--set",
            "checkpoint.every_steps=5",
            "--set",
            "checkpoint.every_seconds=0",
        ])
        .args([
            "--set",
            "checkpoint.keep=3",
            "--set",
            "data.validation.samples=16",
        ])
        // Dropout on (the tiny preset has none) so the per-step RNG reseeding is exercised;
        // two loader threads so batch order across threads is too.
        .args([
            "--set",
            "model.dropout=0.1",
            "--set",
            "data.loader_threads=2",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("TEXTREC_LOG_JSON");
    c
}

pub(crate) fn run(mut c: Command) -> Output {
    let out = c.output().expect("spawn textrec-worker");
    eprintln!("--- stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The manifest of the model folder a trial wrote under `out`.
pub(crate) fn model_manifest(out: &Path) -> ModelManifest {
    serde_json::from_slice(&std::fs::read(out.join("model/manifest.json")).unwrap()).unwrap()
}

pub(crate) fn model_sha(out: &Path) -> String {
    let manifest = model_manifest(out);
    let weights = std::fs::read(out.join("model/model.safetensors")).unwrap();
    let sha = textrec_contract::manifest::sha256_hex(&weights);
    let listed = manifest
        .files
        .iter()
        .find(|f| f.path == "model.safetensors")
        .unwrap();
    assert_eq!(listed.sha256, sha, "manifest digest matches the file");
    sha
}

pub(crate) fn progress(out: &Path) -> TrialProgress {
    serde_json::from_slice(&std::fs::read(out.join("progress.json")).unwrap()).unwrap()
}

pub(crate) fn metrics(out: &Path) -> Vec<MetricsRecord> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad metrics line {l}: {e}")))
        .collect()
}

/// The uninterrupted reference run, shared by the tests of this file.
pub(crate) fn reference() -> &'static (tempfile::TempDir, String) {
    static REF: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = run(train_cmd(dir.path(), &[]));
        assert_eq!(out.status.code(), Some(0), "reference run failed");
        let sha = model_sha(dir.path());
        (dir, sha)
    })
}

/// Wait until a checkpoint at `min_step` or later is complete; the child must still be running.
pub(crate) fn wait_for_checkpoint(child: &mut Child, out: &Path, min_step: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if complete_checkpoints(out)
            .last()
            .is_some_and(|&s| s >= min_step)
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("training ended ({status}) before checkpoint {min_step} appeared");
        }
        assert!(Instant::now() < deadline, "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A delay that differs from run to run, so kills land at different points of a step
/// (mid-forward, mid-checkpoint-write, mid-evaluation).
pub(crate) fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Duration::from_millis(u64::from(nanos) % max_ms)
}

pub(crate) fn spawn_quiet(mut c: Command) -> Child {
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn textrec-worker")
}

pub(crate) fn assert_train_records_unique(out: &Path) {
    let steps: Vec<u64> = metrics(out)
        .iter()
        .filter(|r| r.kind == RecordKind::Train)
        .map(|r| r.step)
        .collect();
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "replayed steps duplicated: {steps:?}"
    );
    assert_eq!(steps.last(), Some(&MAX_STEPS));
}

/// SIGKILL a run of `cmd` (no chance to checkpoint) at a random moment after its checkpoint at
/// step 10, then run it again in the same folder, which must succeed by resuming. Returns the
/// checkpoints that were complete at the kill.
pub(crate) fn sigkill_then_rerun(cmd: impl Fn() -> Command, out: &Path) -> Vec<u64> {
    let mut child = spawn_quiet(cmd());
    wait_for_checkpoint(&mut child, out, 10);
    std::thread::sleep(jitter(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "run finished before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = complete_checkpoints(out);
    let done = run(cmd());
    assert_eq!(done.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&done.stderr).contains("resuming from checkpoint"),
        "did not resume"
    );
    killed_at
}

/// The index of the first candidate with the lowest mean of each set's CER relative to that
/// set's lowest (CERs floored at 0.001), `cers[candidate][set]`: how a finished trial chooses
/// its decoding and reading width.
pub(crate) fn first_lowest_relative_mean<const S: usize>(cers: &[[f64; S]]) -> usize {
    let lowest: [f64; S] = std::array::from_fn(|s| {
        cers.iter()
            .map(|c| c[s].max(0.001))
            .fold(f64::INFINITY, f64::min)
    });
    let relative: Vec<f64> = cers
        .iter()
        .map(|c| (0..S).map(|s| c[s].max(0.001) / lowest[s]).sum::<f64>())
        .collect();
    let min = relative.iter().copied().fold(f64::INFINITY, f64::min);
    relative.iter().position(|&r| r == min).unwrap()
}
