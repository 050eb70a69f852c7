//! A trial killed, stopped or handed a corrupt checkpoint ends with the same weights as one
//! that never stopped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use textrec_contract::metrics::{RecordKind, TrialProgress, WorkerPhase};
use textrec_worker::train::kernel_caches::TRAINER_BOUNDS;

use crate::harness::*;
use crate::train_support::complete_checkpoints;

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

/// `precision: bf16` on the CPU trains under bf16 autocast: other weights than fp32's, the same
/// ones whatever oneDNN's and ideep's kernel caches hold, and a trial killed mid-run and
/// restarted still ends with exactly the uninterrupted run's.
#[test]
fn bf16_on_the_cpu_trains_its_own_weights_and_resumes_bit_identical() {
    let (_, fp32) = reference();
    let bf16 = ["--set", "precision=bf16"];
    let whole = tempfile::tempdir().unwrap();
    let mut cmd = train_cmd(whole.path(), &bf16);
    for bound in TRAINER_BOUNDS {
        cmd.env_remove(bound.var);
    }
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("oneDNN primitive cache: 32 "),
        "the trainer did not bound oneDNN's primitive cache"
    );
    assert!(
        log.contains("ideep matmul cache: 1 "),
        "the trainer did not bound ideep's matmul cache"
    );
    let expected = model_sha(whole.path());
    assert_ne!(&expected, fp32, "precision=bf16 changed nothing on the CPU");

    // A cache decides when a kernel is built, not what it computes; the environment's
    // capacities win over the trainer's.
    let default_cache = tempfile::tempdir().unwrap();
    let mut cmd = train_cmd(default_cache.path(), &bf16);
    for bound in TRAINER_BOUNDS {
        cmd.env(bound.var, "1024");
    }
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("oneDNN primitive cache: 1024 "), "{log}");
    assert!(log.contains("ideep matmul cache: 1024 "), "{log}");
    assert_eq!(
        model_sha(default_cache.path()),
        expected,
        "the kernel caches' capacities changed the weights"
    );

    let dir = tempfile::tempdir().unwrap();
    let killed_at = sigkill_then_rerun(|| train_cmd(dir.path(), &bf16), dir.path());
    assert!(!killed_at.is_empty());
    assert_eq!(
        model_sha(dir.path()),
        expected,
        "resumed bf16 weights differ (checkpoints at kill: {killed_at:?})"
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
