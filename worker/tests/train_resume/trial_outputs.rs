//! What a finished trial writes: the model, `metrics.jsonl`, `progress.json`, the choices it
//! made at the end and the TensorBoard event file.

use std::path::Path;
use std::process::Command;

use textrec_contract::metrics::{MetricsRecord, RecordKind, WorkerPhase};
use textrec_contract::DecodeMode;

use crate::harness::*;
use crate::train_support::complete_checkpoints;

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
