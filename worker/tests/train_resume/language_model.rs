//! A trial reading with its language model chooses the weights and the unsure-line search.

use std::process::Command;

use textrec_contract::manifest::UnsureLines;
use textrec_contract::DecodeMode;

use crate::harness::*;

#[test]
fn a_trial_reading_with_its_language_model_chooses_its_weights_and_unsure_lines_on_every_set() {
    // The pretrained model, hardly trained further, reads with `ctc-lm`; validation sets of 64
    // lines (on 24 the training fonts' few errors could favour `joint`) and a 3-gram keep it
    // to seconds.
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
  validation: {samples: 64}
  extra_validation: {unseen-fonts: {samples: 64}}
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
