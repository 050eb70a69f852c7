//! Exact resume and the failure modes of `textrec-worker train`, through the built binary.
//!
//! Every run uses the `tiny` example config on one CPU thread, so runs are reproducible to the
//! bit: a trial interrupted in any way and restarted must end with the same `model.safetensors`
//! as one that never stopped. Each resume test also checks that a checkpoint was really used,
//! so a run that silently restarted from scratch cannot pass. The full-disk and read-only tests
//! mount a small or read-only tmpfs in a private mount namespace (`unshare -m`) and say so when
//! the machine does not allow it.

mod train_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use textrec_contract::manifest::UnsureLines;
use textrec_contract::metrics::{MetricsRecord, RecordKind, TrialProgress, WorkerPhase};
use textrec_contract::{DecodeMode, ModelManifest};
use train_support::complete_checkpoints;

const MAX_STEPS: u64 = 40;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/trial-tiny.yaml")
}

/// `train` with the test settings: small enough for seconds, with a checkpoint every 5 steps
/// and evaluations at 20 and 40 (so the best weights and a pending evaluation are exercised).
fn train_cmd(out: &Path, extra: &[&str]) -> Command {
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

fn run(mut c: Command) -> Output {
    let out = c.output().expect("spawn textrec-worker");
    eprintln!("--- stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The manifest of the model folder a trial wrote under `out`.
fn model_manifest(out: &Path) -> ModelManifest {
    serde_json::from_slice(&std::fs::read(out.join("model/manifest.json")).unwrap()).unwrap()
}

fn model_sha(out: &Path) -> String {
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

fn progress(out: &Path) -> TrialProgress {
    serde_json::from_slice(&std::fs::read(out.join("progress.json")).unwrap()).unwrap()
}

fn metrics(out: &Path) -> Vec<MetricsRecord> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad metrics line {l}: {e}")))
        .collect()
}

/// The uninterrupted reference run, shared by the tests of this file.
fn reference() -> &'static (tempfile::TempDir, String) {
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
fn wait_for_checkpoint(child: &mut Child, out: &Path, min_step: u64) {
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
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Duration::from_millis(u64::from(nanos) % max_ms)
}

fn spawn_quiet(mut c: Command) -> Child {
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn textrec-worker")
}

fn assert_train_records_unique(out: &Path) {
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
fn sigkill_then_rerun(cmd: impl Fn() -> Command, out: &Path) -> Vec<u64> {
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

#[test]
fn uninterrupted_run_writes_model_metrics_and_progress() {
    let (dir, _) = reference();
    let out = dir.path();
    let p = progress(out);
    assert_eq!(p.phase, WorkerPhase::Succeeded);
    assert_eq!((p.step, p.max_steps, p.resumes), (MAX_STEPS, MAX_STEPS, 0));
    let model = p.model.expect("model reference");
    assert!(model.url.ends_with("/model"), "{}", model.url);
    let records = metrics(out);
    let evals: Vec<&MetricsRecord> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Eval)
        .collect();
    assert_eq!(
        evals.iter().map(|r| r.step).collect::<Vec<_>>(),
        vec![20, 40]
    );
    for e in &evals {
        let (cer, wer) = (e.cer.unwrap(), e.wer.unwrap());
        assert!(cer >= 0.0 && wer >= 0.0 && cer.is_finite(), "{e:?}");
    }
    let train: Vec<&MetricsRecord> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Train)
        .collect();
    assert_eq!(train.len(), (MAX_STEPS / 5) as usize);
    assert!(train
        .iter()
        .all(|r| r.loss.unwrap().is_finite() && r.lr.unwrap() > 0.0));
    // The process's peak memory, for sizing a pod's limit: libtorch alone is tens of MiB, and
    // a peak never goes down.
    let peaks: Vec<f64> = train.iter().map(|r| r.peak_rss_mib.unwrap()).collect();
    assert!(peaks[0] > 20.0, "{peaks:?}");
    assert!(peaks.windows(2).all(|w| w[0] <= w[1]), "{peaks:?}");
    // The model is the best evaluation's, with its metrics.
    let manifest = model_manifest(out);
    let best = p.best.unwrap();
    assert_eq!(manifest.provenance.step, best.step);
    let best_eval = evals
        .iter()
        .filter(|e| e.step == best.step)
        .map(|e| e.cer.unwrap())
        .next()
        .unwrap();
    assert_eq!(manifest.metrics["cer"], best_eval);
    // Every decoding was measured on every validation set (joint's CERs are the evaluation's
    // own), and the model reads with the first with the lowest mean of each set's CER
    // relative to its lowest (ctc, joint, attention: the cheaper first).
    assert_eq!(manifest.metrics["cer@joint"], best_eval);
    let unseen_eval = evals
        .iter()
        .find(|e| e.step == best.step)
        .map(|e| e.sets["unseen-fonts"].cer)
        .unwrap();
    assert_eq!(manifest.metrics["cer:unseen-fonts"], unseen_eval);
    assert_eq!(manifest.metrics["cer:unseen-fonts@joint"], unseen_eval);
    let modes = [DecodeMode::Ctc, DecodeMode::Joint, DecodeMode::Attention];
    let by_mode = modes.map(|m| {
        ["cer@", "cer:unseen-fonts@"].map(|key| manifest.metrics[&format!("{key}{}", m.as_str())])
    });
    assert_eq!(
        manifest.decoding,
        modes[first_lowest_relative_mean(&by_mode)],
        "{by_mode:?}"
    );
    // The finished trial's best, and the model reference, are the model read as served.
    assert_eq!(best.decoding, Some(manifest.decoding));
    let decoded = manifest.decoding.as_str();
    // Then each reading width was measured in that decoding on every set (x1 is the
    // decoding's own measurement), and the model reads at the first with the lowest mean of
    // each set's CER relative to its lowest.
    assert_eq!(
        manifest.metrics["cer@x1"],
        manifest.metrics[&format!("cer@{decoded}")]
    );
    assert_eq!(
        manifest.metrics["cer:unseen-fonts@x1"],
        manifest.metrics[&format!("cer:unseen-fonts@{decoded}")]
    );
    let widths = [1.0, 1.1, 1.25];
    let by_width = widths
        .map(|f| ["cer@x", "cer:unseen-fonts@x"].map(|key| manifest.metrics[&format!("{key}{f}")]));
    let width = widths[first_lowest_relative_mean(&by_width)];
    match &manifest.reading {
        None => assert_eq!(width, 1.0, "{by_width:?}"),
        Some(r) => {
            assert_eq!(r.widths, vec![width as f32], "{by_width:?}");
            assert_eq!(r.reread_below, None);
        }
    }
    assert_eq!(best.cer, manifest.metrics[&format!("cer@x{width}")]);
    assert_eq!(best.cer, manifest.metrics["cer@served"]);
    assert_eq!(best.reading_width, Some(width));
    assert_eq!(model.cer, best.cer);
    // Each extra validation set's CER as served, in progress and in the manifest.
    let served = best.extra_cer["unseen-fonts"];
    assert_eq!(served, manifest.metrics["cer:unseen-fonts@served"]);
    assert_eq!(
        served,
        manifest.metrics[&format!("cer:unseen-fonts@x{width}")]
    );
    // Only the newest `keep` checkpoints survive.
    assert_eq!(complete_checkpoints(out), vec![30, 35, 40]);
}

/// The index of the first candidate with the lowest mean of each set's CER relative to that
/// set's lowest (CERs floored at 0.001), `cers[candidate][set]`: how a finished trial chooses
/// its decoding and reading width.
fn first_lowest_relative_mean<const S: usize>(cers: &[[f64; S]]) -> usize {
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

/// Reads the trial's TensorBoard event file with the real `tensorboard` package and returns
/// its scalars, images and text as JSON; `None` (the test then skips) where the package is
/// missing, unless `TEXTREC_REQUIRE_TENSORBOARD=1`.
fn tensorboard_read_back(dir: &Path) -> Option<serde_json::Value> {
    const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0, "tensors": 0})
ea.Reload()
tags = ea.Tags()
print(json.dumps({
    "scalars": {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags["scalars"]},
    "images": {t: [[e.step, e.width, e.height] for e in ea.Images(t)] for t in tags["images"]},
    "text": {t: [[e.step, e.tensor_proto.string_val[0].decode()] for e in ea.Tensors(t)]
             for t in tags["tensors"]},
}))
"#;
    let probe = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("TEXTREC_REQUIRE_TENSORBOARD").as_deref() != Ok("1"),
            "python3 cannot import tensorboard (pip install -r requirements-dev.txt)"
        );
        eprintln!("skipped: python3 has no tensorboard package");
        return None;
    }
    let out = Command::new("python3")
        .args(["-c", READER])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// TensorBoard reads every scalar of `metrics.jsonl` back from the event file, at the same
/// steps and values, plus the validation lines' images and their readings.
#[test]
fn tensorboard_reads_the_event_file_back_as_metrics_jsonl_says() {
    let (dir, _) = reference();
    let out = dir.path();
    let Some(tb) = tensorboard_read_back(out) else {
        return;
    };
    let records = metrics(out);
    let series = |tag: &str| -> Vec<(u64, f64)> {
        tb["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| panic!("no scalar {tag} in {tb}"))
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    };
    let close = |a: &[(u64, f64)], b: &[(u64, f64)]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() <= 1e-6 * y.1.abs().max(1.0))
    };
    let train: Vec<&MetricsRecord> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Train)
        .collect();
    let want: Vec<(u64, f64)> = train.iter().map(|r| (r.step, r.loss.unwrap())).collect();
    assert!(
        close(&series("train/loss"), &want),
        "{:?} vs {want:?}",
        series("train/loss")
    );
    let want: Vec<(u64, f64)> = train.iter().map(|r| (r.step, r.lr.unwrap())).collect();
    assert!(close(&series("train/lr"), &want));
    let evals: Vec<&MetricsRecord> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Eval)
        .collect();
    for set in ["validation", "unseen-fonts"] {
        let want: Vec<(u64, f64)> = evals.iter().map(|r| (r.step, r.sets[set].cer)).collect();
        assert!(close(&series(&format!("cer/{set}")), &want), "cer/{set}");
        let text = tb["text"][format!("predictions/{set}")].as_array().unwrap();
        assert_eq!(text.len(), evals.len());
        let first = &evals[0].sets[set].samples[0];
        assert!(
            text[0][1].as_str().unwrap().contains(&first.reference),
            "{text:?}"
        );
    }
    let images = tb["images"].as_object().unwrap();
    assert_eq!(images.len(), 4, "{images:?}");
    for (tag, shots) in images {
        assert!(tag.starts_with("validation/line-"), "{tag}");
        assert_eq!(shots[0][2].as_u64(), Some(32), "the network's line height");
    }
}

#[test]
fn sigkill_at_a_random_moment_then_restart_is_bit_identical() {
    let (_, expected) = reference();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let killed_at = sigkill_then_rerun(|| train_cmd(out, &[]), out);
    assert!(!killed_at.is_empty());
    assert!(progress(out).resumes >= 1);
    assert_eq!(
        &model_sha(out),
        expected,
        "resumed weights differ (checkpoints at kill: {killed_at:?})"
    );
    assert_train_records_unique(out);
}

/// `recompute_activations` trades compute for memory and nothing else: the same weights, bit
/// for bit, as the reference run.
#[test]
fn recomputing_activations_trains_the_same_weights() {
    let (_, expected) = reference();
    let dir = tempfile::tempdir().unwrap();
    let out = run(train_cmd(
        dir.path(),
        &["--set", "recompute_activations=true"],
    ));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        &model_sha(dir.path()),
        expected,
        "weights differ with recomputation"
    );
}

/// `optimizer.ema_decay`: evaluations and the model read an average of the weights, while the
/// optimizer's own weights follow exactly the path they follow without it; the average is
/// checkpointed, so a trial killed mid-run and restarted ends with the same model.
#[test]
fn an_average_of_the_weights_is_evaluated_leaves_training_alone_and_resumes_bit_identical() {
    let (reference_dir, reference_sha) = reference();
    let ema = [
        "--set",
        "optimizer.ema_decay=0.9",
        "--set",
        "checkpoint.keep=10",
    ];
    let whole = tempfile::tempdir().unwrap();
    let done = run(train_cmd(whole.path(), &ema));
    assert_eq!(done.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&done.stderr).contains("evaluating an average of the weights"));

    let last = format!("checkpoints/step-{MAX_STEPS:010}");
    let live = |dir: &Path| std::fs::read(dir.join(&last).join("weights.safetensors")).unwrap();
    assert!(
        live(whole.path()) == live(reference_dir.path()),
        "the optimizer's weights changed when an average of them was kept"
    );
    assert!(whole.path().join(&last).join("ema.safetensors").is_file());
    assert!(!reference_dir
        .path()
        .join(&last)
        .join("ema.safetensors")
        .exists());
    let sha = model_sha(whole.path());
    assert_ne!(
        &sha, reference_sha,
        "the model is the average, not the last weights"
    );
    let cers = |dir: &Path| -> Vec<f64> {
        metrics(dir)
            .iter()
            .filter(|r| r.kind == RecordKind::Eval)
            .map(|r| r.cer.unwrap())
            .collect()
    };
    // The model is the average as it stood at the best evaluation (20: the tiny network reads
    // no better at 40, and a tie keeps the earlier weights), not the weights trained then.
    let best_step = progress(whole.path()).best.expect("evaluated").step;
    let tensors = |file: PathBuf| {
        textrec_model::tensorio::from_safetensors(&std::fs::read(file).unwrap(), tch::Device::Cpu)
            .unwrap()
    };
    let at_best = whole
        .path()
        .join(format!("checkpoints/step-{best_step:010}"));
    let model = tensors(whole.path().join("model/model.safetensors"));
    let average = tensors(at_best.join("ema.safetensors"));
    let trained = tensors(at_best.join("weights.safetensors"));
    let same = |a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && x.1.equal(&y.1))
    };
    assert!(
        same(&model, &average),
        "the model is not the average at step {best_step}"
    );
    assert!(!same(&model, &trained));
    let config = &model_manifest(whole.path()).provenance.config;
    assert_eq!(config["optimizer"]["ema_decay"], 0.9);
    let plain = model_manifest(reference_dir.path()).provenance.config;
    assert!(
        plain["optimizer"].get("ema_decay").is_none(),
        "a trial without an average writes its config as before the setting existed"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let killed_at = sigkill_then_rerun(|| train_cmd(out, &ema), out);
    assert_eq!(
        model_sha(out),
        sha,
        "resumed average differs (checkpoints at kill: {killed_at:?})"
    );
    assert_eq!(cers(out), cers(whole.path()));
}

/// A tesstrain folder of short rendered lines, written by `textrec-worker synth`.
fn tesstrain_folder(dir: &Path) -> PathBuf {
    let lines = dir.join("flags");
    let out = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_textrec-worker"));
        c.args([
            "synth",
            "--count",
            "24",
            "--min-chars",
            "4",
            "--max-chars",
            "16",
        ])
        .args(["--mean-chars", "10", "--out"])
        .arg(&lines);
        c
    });
    assert_eq!(out.status.code(), Some(0), "synth failed");
    lines
}

/// Train on synthetic lines and a tesstrain folder (augmented), 70/30.
fn mixed_cmd(out: &Path, lines: &Path) -> Command {
    let mix = format!(
        "data.train=[{{kind: synthetic, weight: 0.7, synthetic: {{max_chars: 16}}}}, \
         {{kind: tesstrain, path: '{}', weight: 0.3, augment: true}}]",
        lines.display()
    );
    train_cmd(out, &["--set", &mix])
}

#[test]
fn mixed_sources_sigkill_then_restart_is_bit_identical() {
    let data = tempfile::tempdir().unwrap();
    let lines = tesstrain_folder(data.path());
    let full = tempfile::tempdir().unwrap();
    let done = run(mixed_cmd(full.path(), &lines));
    assert_eq!(
        done.status.code(),
        Some(0),
        "uninterrupted mixed run failed"
    );
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        stderr.contains("training source data.train[0]: weight 0.700")
            && stderr.contains("training source data.train[1]: weight 0.300, augmented"),
        "the mix is logged once at start"
    );
    let expected = model_sha(full.path());
    assert_ne!(
        &expected,
        &reference().1,
        "the folder's lines must change what the model learns"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let killed_at = sigkill_then_rerun(|| mixed_cmd(out, &lines), out);
    assert_eq!(
        model_sha(out),
        expected,
        "resumed mixed run differs (checkpoints at kill: {killed_at:?})"
    );
    assert_train_records_unique(out);
}

#[test]
fn sigterm_checkpoints_exits_75_and_resumes_bit_identical() {
    let (_, expected) = reference();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let termlog = out.join("termination-log");
    let mut child = spawn_quiet(train_cmd(
        out,
        &["--termination-log", termlog.to_str().unwrap()],
    ));
    wait_for_checkpoint(&mut child, out, 5);
    std::thread::sleep(jitter(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "run finished before SIGTERM"
    );
    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(75),
        "SIGTERM must exit with EX_TEMPFAIL"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        sent.elapsed()
    );
    let p = progress(out);
    assert_eq!(p.phase, WorkerPhase::Interrupted);
    let ckpt = p.checkpoint.expect("interrupted run names its checkpoint");
    assert_eq!(
        ckpt.step, p.step,
        "the checkpoint is at the step it stopped at"
    );
    let term: TrialProgress = serde_json::from_slice(&std::fs::read(&termlog).unwrap()).unwrap();
    assert_eq!(term.phase, WorkerPhase::Interrupted);
    assert!(std::fs::metadata(&termlog).unwrap().len() < 4096);

    let done = run(train_cmd(out, &[]));
    assert_eq!(done.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        stderr.contains(&format!("at step {}", ckpt.step)),
        "did not resume from {}",
        ckpt.step
    );
    assert!(progress(out).resumes >= 1);
    assert_eq!(&model_sha(out), expected);
    assert_train_records_unique(out);
}

#[test]
fn corrupt_newest_checkpoint_is_skipped_for_the_previous_one() {
    let (_, expected) = reference();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    // Stop deterministically right after the step-20 evaluation and checkpoint.
    let first = run(train_cmd(out, &["--stop-at-step", "20"]));
    assert_eq!(first.status.code(), Some(75));
    assert_eq!(complete_checkpoints(out), vec![10, 15, 20]);
    let weights = out.join("checkpoints/step-0000000020/weights.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff; // one flipped byte: same size, wrong sha256
    std::fs::write(&weights, bytes).unwrap();

    let done = run(train_cmd(out, &[]));
    assert_eq!(done.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        stderr.contains("step-0000000020 is corrupt"),
        "no warning about the corrupt checkpoint"
    );
    assert!(
        stderr.contains("at step 15"),
        "did not fall back to step 15"
    );
    assert_eq!(&model_sha(out), expected);
}

#[test]
fn config_error_exits_78_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let termlog = dir.path().join("termination-log");
    let out = run(train_cmd(
        &dir.path().join("out"),
        &[
            "--set",
            "optimizer.learning_rate=0.1",
            "--termination-log",
            termlog.to_str().unwrap(),
        ],
    ));
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("learning_rate") && stderr.contains("`lr`"),
        "{stderr}"
    );
    let term: TrialProgress = serde_json::from_slice(&std::fs::read(&termlog).unwrap()).unwrap();
    assert_eq!(term.phase, WorkerPhase::Failed);
    assert!(term.message.unwrap().contains("learning_rate"));

    let bad_enum = run(train_cmd(&dir.path().join("out"), &["--set", "device=tpu"]));
    assert_eq!(bad_enum.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&bad_enum.stderr).contains("device"));
}

#[test]
fn unwritable_output_fails_fast_before_training() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where a folder must go: not writable even for root.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let started = Instant::now();
    let out = run(train_cmd(&blocker.join("trial"), &[]));
    assert_eq!(out.status.code(), Some(78));
    assert!(started.elapsed() < Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not-a-folder"), "{stderr}");
    assert!(!stderr.contains("step 5"), "it trained before failing");

    let out = run(train_cmd(Path::new("ftp://example.invalid/x"), &[]));
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("s3://"),
        "alternatives named"
    );
}

#[test]
fn a_trial_reading_with_its_language_model_chooses_its_weights_and_unsure_lines_on_every_set() {
    // The pretrained model, hardly trained further, reads with `ctc-lm`; short validation sets
    // and a 3-gram keep it to seconds.
    let config = r#"
seed: 1
device: cpu
threads: 1
model: {init_from: "builtin:small"}
batch_size: 4
max_steps: 2
eval_interval: 2
optimizer: {lr: 0.00001, warmup_steps: 1}
data:
  loader_threads: 1
  train: {synthetic: {max_chars: 16}}
  validation: {samples: 24}
  extra_validation: {unseen-fonts: {samples: 24}}
language_model:
  {order: 3, alphas: [0.25, 0.5], betas: [1, 2], unsure_below: [0.5, 0.8], unsure_alphas: [1.5]}
"#;
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("trial.yaml");
    std::fs::write(&config_file, config).unwrap();
    let out = dir.path().join("trial");
    let mut c = Command::new(env!("CARGO_BIN_EXE_textrec-worker"));
    c.arg("train")
        .arg("--config")
        .arg(&config_file)
        .arg("--output")
        .arg(&out);
    let trained = run(c);
    assert_eq!(trained.status.code(), Some(0));
    let manifest = model_manifest(&out);
    assert_eq!(
        manifest.decoding,
        DecodeMode::CtcLm,
        "the pretrained model reads best with its language model: {:?}",
        manifest.metrics
    );
    // Every pair (the configured weights first) read on both sets at the reading width, and
    // the first with the lowest mean relative CER written to the manifest.
    let pairs = [(0.5, 2.0), (0.25, 1.0), (0.25, 2.0), (0.5, 1.0)];
    let by_pair = pairs.map(|(a, b)| {
        ["cer@", "cer:unseen-fonts@"]
            .map(|key| manifest.metrics[&format!("{key}lm(alpha={a},beta={b})")])
    });
    let (alpha, beta) = pairs[first_lowest_relative_mean(&by_pair)];
    let lm = manifest.language_model.as_ref().unwrap();
    assert_eq!(
        (lm.alpha, lm.beta),
        (alpha as f32, beta as f32),
        "{by_pair:?}"
    );
    // The configured pair's readings are the reading width's, not read again.
    let best = progress(&out).best.unwrap();
    let width = best.reading_width.unwrap();
    assert_eq!(by_pair[0][0], manifest.metrics[&format!("cer@x{width}")]);
    assert_eq!(
        by_pair[0][1],
        manifest.metrics[&format!("cer:unseen-fonts@x{width}")]
    );
    // Then reading every line once and searching unsure lines again at each threshold, with
    // the chosen weights: every line once is the chosen pair's reading, not read again.
    let chosen_pair = by_pair[pairs.iter().position(|&p| p == (alpha, beta)).unwrap()];
    let unsure = ["off", "below=0.5,alpha=1.5", "below=0.8,alpha=1.5"];
    let by_unsure = unsure.map(|u| {
        ["cer@", "cer:unseen-fonts@"].map(|key| manifest.metrics[&format!("{key}unsure({u})")])
    });
    assert_eq!(by_unsure[0], chosen_pair);
    let chosen = first_lowest_relative_mean(&by_unsure);
    let expected = [None, Some(0.5), Some(0.8)][chosen].map(|below| UnsureLines {
        below,
        alpha: 1.5,
        beta: beta as f32,
    });
    assert_eq!(lm.unsure_lines, expected, "{by_unsure:?}");
    // The model as served is the chosen reading, in the manifest and in progress.
    let chosen = by_unsure[chosen];
    assert_eq!(manifest.metrics["cer@served"], chosen[0]);
    assert_eq!(manifest.metrics["cer:unseen-fonts@served"], chosen[1]);
    let best = progress(&out).best.unwrap();
    assert_eq!(
        (best.cer, best.extra_cer["unseen-fonts"]),
        (chosen[0], chosen[1])
    );
    let log = String::from_utf8_lossy(&trained.stderr);
    assert!(
        log.contains(&format!("the model reads with alpha {alpha}, beta {beta}")),
        "{log}"
    );
}

#[test]
fn fine_tuning_starts_from_a_model_takes_its_preprocessing_and_refuses_another_network() {
    let (reference_dir, _) = reference();
    let model = reference_dir.path().join("model");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tuned");
    let tuned = run(train_cmd(
        &out,
        &[
            "--set",
            &format!("model.init_from={}", model.display()),
            "--set",
            "max_steps=10",
            // As drawn only: no width is compared (the reference run compares three).
            "--set",
            "reading_widths=[1]",
        ],
    ));
    assert_eq!(tuned.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&tuned.stderr).contains("starting from the weights of"));
    // Same seed, same data: a run that ignored the weights would log the reference's first
    // loss to the bit. Trained weights start far lower.
    let first_loss = |records: Vec<MetricsRecord>| {
        records
            .into_iter()
            .find(|r| r.kind == RecordKind::Train)
            .and_then(|r| r.loss)
            .unwrap()
    };
    let (fresh, from_model) = (
        first_loss(metrics(reference_dir.path())),
        first_loss(metrics(&out)),
    );
    assert!(
        from_model < 0.9 * fresh,
        "fresh {fresh}, fine-tuned {from_model}"
    );
    // Lineage: the fine-tune's manifest names the parent's version.
    let parent_version =
        ModelManifest::version_of(&std::fs::read(model.join("manifest.json")).unwrap());
    let tuned_manifest = model_manifest(&out);
    let parent = tuned_manifest.provenance.parent.expect("a parent");
    assert_eq!(parent.sha256, parent_version);
    assert_eq!(tuned_manifest.reading, None);
    assert_eq!(progress(&out).best.unwrap().reading_width, None);
    assert!(
        !tuned_manifest
            .metrics
            .keys()
            .any(|k| k.starts_with("cer@x")),
        "{:?}",
        tuned_manifest.metrics
    );

    // A parent trained on stretched lines: a config that leaves `preprocess` out trains and
    // records the parent's, one that sets another is refused before training.
    let wide = dir.path().join("wide-parent");
    std::fs::create_dir(&wide).unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), wide.join(entry.file_name())).unwrap();
        }
    }
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wide.join("manifest.json")).unwrap()).unwrap();
    manifest["preprocessing"]["stretch"] = serde_json::json!(1.5);
    std::fs::write(wide.join("manifest.json"), manifest.to_string()).unwrap();
    let from_wide = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "--set".to_string(),
            format!("model.init_from={}", wide.display()),
            "--set".into(),
            "max_steps=2".into(),
            "--set".into(),
            "reading_widths=[1]".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (
            dir.path().join(name),
            run(train_cmd(&dir.path().join(name), &args)),
        )
    };
    let (adopting, out_adopting) = from_wide("adopting", &[]);
    assert_eq!(out_adopting.status.code(), Some(0));
    let adopted = model_manifest(&adopting);
    assert_eq!(adopted.preprocessing.stretch, 1.5);
    let (_, refused) = from_wide("refused", &["--set", "preprocess.stretch=2"]);
    assert_eq!(refused.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("preprocess") && stderr.contains("\"stretch\":1.5"),
        "{stderr}"
    );

    // The expected version is checked before anything trains.
    let wrong = run(train_cmd(
        &dir.path().join("wrong"),
        &[
            "--set",
            &format!("model.init_from={}", model.display()),
            "--set",
            &format!("model.init_sha256=\"{}\"", "0".repeat(64)),
        ],
    ));
    assert_eq!(wrong.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("initFrom.sha256"), "{stderr}");

    // A config that sets a size of its own contradicts the parent: the field is named.
    let clash = run(train_cmd(
        &dir.path().join("clash"),
        &[
            "--set",
            &format!("model.init_from={}", model.display()),
            "--set",
            "model.d_model=64",
        ],
    ));
    assert_eq!(clash.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&clash.stderr);
    assert!(stderr.contains("model.d_model"), "{stderr}");

    // The built-in model is the `small` network: a `tiny` config cannot start from it.
    let other = run(train_cmd(
        &dir.path().join("other"),
        &["--set", "model.init_from=builtin:small"],
    ));
    assert_eq!(other.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("model.init_from") && stderr.contains("another architecture"),
        "{stderr}"
    );
}

/// Whether this machine lets an unprivileged-namespace `unshare -m` mount a tmpfs (root in a
/// container usually may). The full-disk and read-only tests need it to get a small or
/// read-only file system without touching the host's.
fn private_mounts_available() -> bool {
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs \"$d\"")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `c` as one shell command line.
fn shell_line(c: &Command) -> String {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let mut words = vec![quote(c.get_program())];
    words.extend(c.get_args().map(quote));
    // `env` takes its `-u` options before any assignment.
    let mut envs: Vec<String> = c
        .get_envs()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| format!("-u {}", k.to_string_lossy()))
        .collect();
    envs.extend(
        c.get_envs()
            .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), quote(v?)))),
    );
    format!("env {} {}", envs.join(" "), words.join(" "))
}

/// Run `script` in a private mount namespace; its mounts vanish with it.
fn in_private_mounts(script: &str) -> Output {
    run({
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c", script]);
        c
    })
}

/// Bytes of the files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                tree_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

fn exit_code(file: &Path) -> i32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn full_disk_keeps_the_newest_complete_checkpoint_and_the_rerun_resumes_bit_identical() {
    if !private_mounts_available() {
        eprintln!("skipped: this machine does not allow `unshare -m` to mount a tmpfs");
        return;
    }
    let (reference_dir, reference_sha) = reference();
    // Room for about half of what a whole run writes: the disk fills after a few checkpoints.
    let size_kib = tree_bytes(reference_dir.path()) / 2 / 1024;
    let dir = tempfile::tempdir().unwrap();
    let (mnt, saved) = (dir.path().join("mnt"), dir.path().join("saved"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&saved).unwrap();
    let script = format!(
        "mount -t tmpfs -o size={size_kib}k tmpfs '{m}' || exit 99; {train}; echo $? > '{d}/exit'; cp -a '{m}/.' '{s}/'",
        m = mnt.display(),
        d = dir.path().display(),
        s = saved.display(),
        train = shell_line(&train_cmd(&mnt, &[])),
    );
    let out = in_private_mounts(&script);
    assert!(out.status.success(), "the namespace script failed");
    let code = exit_code(&dir.path().join("exit"));
    assert!(
        code != 0,
        "training fitted in {size_kib} KiB; the test needs a full disk"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let kept = complete_checkpoints(&saved);
    assert!(
        !kept.is_empty(),
        "no complete checkpoint survived the full disk"
    );

    let rerun = run(train_cmd(&saved, &[]));
    assert_eq!(rerun.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(
        stderr.contains(&format!("at step {}", kept.last().unwrap())),
        "did not resume from the newest complete checkpoint {kept:?}: {stderr}"
    );
    assert_eq!(model_sha(&saved), *reference_sha);
}

#[test]
fn read_only_output_fails_clearly_keeps_checkpoints_and_the_rerun_resumes_bit_identical() {
    if !private_mounts_available() {
        eprintln!("skipped: this machine does not allow `unshare -m` to mount a tmpfs");
        return;
    }
    let (_, reference_sha) = reference();
    let dir = tempfile::tempdir().unwrap();
    let (mnt, saved) = (dir.path().join("mnt"), dir.path().join("saved"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&saved).unwrap();
    let m = mnt.display();
    let script = format!(
        "mount -t tmpfs -o size=256m tmpfs '{m}' || exit 99; \
         {first}; echo $? > '{d}/first'; \
         mount -o remount,ro '{m}' || exit 98; \
         {second}; echo $? > '{d}/second'; \
         cp -a '{m}/.' '{s}/'",
        d = dir.path().display(),
        s = saved.display(),
        first = shell_line(&train_cmd(&mnt, &["--stop-at-step", "20"])),
        second = shell_line(&train_cmd(&mnt, &[])),
    );
    let out = in_private_mounts(&script);
    assert!(out.status.success(), "the namespace script failed");
    assert_eq!(exit_code(&dir.path().join("first")), 75);
    let second = exit_code(&dir.path().join("second"));
    assert!(
        second != 0 && second != 75,
        "read-only output: exit {second}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(complete_checkpoints(&saved).last(), Some(&20));

    let rerun = run(train_cmd(&saved, &[]));
    assert_eq!(rerun.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&rerun.stderr).contains("at step 20"));
    assert_eq!(model_sha(&saved), *reference_sha);
}
