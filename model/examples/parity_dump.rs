//! Writes what the PyTorch reference (`benches/reference/`) must reproduce, for the `tiny` and
//! `small` presets:
//!
//! ```text
//! . scripts/env.sh && cargo run -p textrec-model --example parity_dump -- OUT_DIR
//! python benches/reference/test_parity.py OUT_DIR        # or: scripts/parity.sh
//! ```
//!
//! Per preset, `OUT_DIR/<preset>/` holds
//! - `random/`: a model folder straight from `write_random_model_dir` (fixed seed);
//! - `model/`: the same weights with every normalisation parameter, BatchNorm running statistic
//!   and bias perturbed (random init leaves them at 1/0, which would hide a wrong epsilon or a
//!   missing scale), the output projection scaled up (logits of order 10, so that the 1e-4
//!   tolerance is tight), and the EOS logit bias shifted so that greedy decoding stops at different
//!   lengths for different lines (random weights otherwise never emit EOS);
//! - `lines/line-N.png`: rendered text lines (held-out text, training fonts) of varied widths;
//! - `inputs.safetensors`: `images` `[B,1,H,W]` (their preprocessing, zero-padded batch),
//!   `widths` `[B]`, `tgt_in` `[B,T]` (BOS + the lines' token ids, PAD after);
//! - `expected.safetensors`: per model folder (`random.` / `model.` prefixes) the eval-mode
//!   teacher-forced `logits` `[B,T,V]`, the CTC `ctc_log_probs` `[S,B,V]`, and the traced
//!   greedy decoding: `step_tokens` `[B,steps]` fed at each step and `step_logits`
//!   `[B,steps,V]`;
//! - `expected.json`: texts, widths and each model's greedy tokens/text/EOS probability.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};
use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::config::{SyntheticConfig, TextSplit};
use textrec_contract::manifest::Provenance;
use textrec_contract::{layout, PreprocessConfig, Preset};
use textrec_model::data::synthetic::SyntheticDataset;
use textrec_model::data::Dataset;
use textrec_model::inference::{model_files, write_random_model_dir};
use textrec_model::net::{global_rng_lock, Recognizer};
use textrec_model::preprocess::{collate, prepare};
use textrec_model::{tensorio, LoadedModel, Tokenizer};

/// Seed of the random weights.
const WEIGHT_SEED: i64 = 20_240_601;
/// Seed of the perturbation of norms, statistics and biases.
const PERTURB_SEED: i64 = 7;
/// Seed of the rendered lines.
const LINE_SEED: u64 = 0x9a41_7e57;
/// Lines in the batch.
const LINES: u64 = 5;

fn main() -> Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: parity_dump OUT_DIR")?;
    tch::set_num_threads(1);
    for (name, preset) in [("tiny", Preset::Tiny), ("small", Preset::Small)] {
        dump_preset(&out.join(name), preset).with_context(|| format!("preset {name}"))?;
    }
    Ok(())
}

fn dump_preset(dir: &Path, preset: Preset) -> Result<()> {
    let arch = preset.architecture();
    let pre = PreprocessConfig::default();
    std::fs::create_dir_all(dir.join("lines"))?;

    // Lines: held-out text in the training fonts, as `synth` renders them. The last one is cut
    // to a few pixels so that a width below one encoder stride is covered too.
    let synth = SyntheticConfig {
        split: TextSplit::Validation,
        augment: 0.3,
        max_chars: 24,
        ..SyntheticConfig::default()
    };
    let set = SyntheticDataset::open(&synth, Some(LINES), LINE_SEED, IAM_CHARSET)?;
    let mut texts = Vec::new();
    let mut prepared = Vec::new();
    for i in 0..LINES {
        let sample = set.get(i)?;
        let mut image = sample.image;
        let mut text = sample.text;
        if i == LINES - 1 {
            let w = (image.height() / 4).clamp(1, image.width());
            image = image::imageops::crop_imm(&image, 0, 0, w, image.height()).to_image();
            text = String::new();
        }
        image.save(dir.join("lines").join(format!("line-{i}.png")))?;
        prepared.push(prepare(&image, &pre)?);
        texts.push(text);
    }
    let (images, widths) = collate(&prepared, &pre, Device::Cpu);

    let tokenizer = Tokenizer::new(IAM_CHARSET);
    let encoded: Vec<Vec<i64>> = texts
        .iter()
        .map(|t| tokenizer.encode(t))
        .collect::<Result<_>>()?;
    let t = encoded.iter().map(Vec::len).max().unwrap_or(0) + 1;
    let mut tgt_in = vec![Tokenizer::PAD; encoded.len() * t];
    for (k, ids) in encoded.iter().enumerate() {
        tgt_in[k * t] = Tokenizer::BOS;
        tgt_in[k * t + 1..k * t + 1 + ids.len()].copy_from_slice(ids);
    }
    let tgt_in = Tensor::from_slice(&tgt_in).view([encoded.len() as i64, t as i64]);
    let inputs = [
        ("images".to_string(), images.shallow_clone()),
        ("widths".to_string(), widths.shallow_clone()),
        ("tgt_in".to_string(), tgt_in.shallow_clone()),
    ];
    std::fs::write(
        dir.join("inputs.safetensors"),
        tensorio::to_safetensors(&inputs, None)?,
    )?;

    let random_dir = dir.join("random");
    write_random_model_dir(&random_dir, &arch, &pre, IAM_CHARSET, WEIGHT_SEED)?;
    let model_dir = dir.join("model");
    write_perturbed_model(&random_dir, &model_dir, &images, &widths)?;

    let mut tensors = Vec::new();
    let mut summary = serde_json::Map::new();
    for (label, folder) in [("random", &random_dir), ("model", &model_dir)] {
        let model = LoadedModel::load_dir(folder, Device::Cpu)?;
        let net = model.net();
        let max_len = arch.max_text_len;
        let (out, greedy, (_, fed, step_logits)) = tch::no_grad(|| {
            (
                net.forward_t(&images, &widths, &tgt_in, false),
                net.greedy_decode(&images, &widths, max_len),
                net.greedy_decode_traced(&images, &widths, max_len),
            )
        });
        tensors.push((format!("{label}.logits"), out.logits));
        if let Some(lp) = out.ctc_log_probs {
            tensors.push((format!("{label}.ctc_log_probs"), lp));
        }
        tensors.push((format!("{label}.step_tokens"), fed));
        tensors.push((format!("{label}.step_logits"), step_logits));
        let items: Vec<_> = (0..greedy.tokens.len())
            .map(|i| {
                json!({
                    "tokens": greedy.tokens[i],
                    "text": tokenizer.decode(&greedy.tokens[i]),
                    "eos_prob": greedy.eos_probs[i],
                })
            })
            .collect();
        let lengths: Vec<usize> = greedy.tokens.iter().map(Vec::len).collect();
        println!("{}: {label} greedy lengths {lengths:?}", dir.display());
        summary.insert(label.to_string(), json!({ "greedy": items }));
    }
    std::fs::write(
        dir.join("expected.safetensors"),
        tensorio::to_safetensors(&tensors, None)?,
    )?;
    let widths: Vec<i64> = Vec::try_from(&widths)?;
    let doc = json!({
        "preset": format!("{preset:?}").to_lowercase(),
        "texts": texts,
        "widths": widths,
        "models": summary,
    });
    std::fs::write(dir.join("expected.json"), serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}

/// Copy the model at `src` to `dst` with perturbed norms, running statistics, biases and the
/// CTC context's (zero-initialised) output projection, and an EOS bias that makes greedy
/// decoding of `images` stop at varied lengths.
fn write_perturbed_model(src: &Path, dst: &Path, images: &Tensor, widths: &Tensor) -> Result<()> {
    let model = LoadedModel::load_dir(src, Device::Cpu)?;
    let arch = model.manifest.architecture.clone();
    let pre = model.manifest.preprocessing.clone();
    let charset = model.manifest.charset.clone();
    let vocab = model.tokenizer().vocab_size();
    drop(model);

    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = Recognizer::new(&vs.root(), &arch, vocab);
    tensorio::load_varstore(&mut vs, &std::fs::read(src.join(layout::MODEL_WEIGHTS))?)?;
    {
        let _rng = global_rng_lock();
        tch::manual_seed(PERTURB_SEED);
        // In name order: `variables()` is a HashMap, whose order changes from run to run, and
        // the draws must land on the same tensors every time for the dump to be reproducible.
        let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        tch::no_grad(|| {
            for (name, mut var) in variables {
                let like = |lo: f64, hi: f64| var.rand_like() * (hi - lo) + lo;
                let new = if name.ends_with("running_var") {
                    like(0.5, 2.0)
                } else if name.ends_with("running_mean") {
                    var.randn_like() * 0.2
                } else if var.dim() == 1 && name.ends_with("weight") {
                    like(0.5, 1.5)
                } else if name.ends_with("bias") {
                    var.randn_like() * 0.05
                } else if name == "decoder.out.weight" {
                    // Logits of order 1-10 rather than 0.1: a 1e-4 tolerance then means more.
                    &var * 5.0
                } else if name == "ctc_context.proj.weight" {
                    // Zero at init, which would hide the whole context branch from the test.
                    var.randn_like() * 0.1
                } else {
                    continue;
                };
                var.copy_(&new);
            }
        });
    }

    // Greedy decoding stops at the first step whose EOS logit beats every character's. Find
    // how far below the best character EOS lies at each step, and shift its bias to a level
    // halfway between two of those gaps, so that the stopping step is far from a tie.
    let (_, _, step_logits) =
        tch::no_grad(|| net.greedy_decode_traced(images, widths, arch.max_text_len));
    let chars = step_logits.narrow(2, Tokenizer::EOS + 1, vocab - Tokenizer::EOS - 1);
    let margins = step_logits.select(2, Tokenizer::EOS) - chars.amax([2], false);
    let threshold = stop_threshold(&margins, arch.max_text_len / 3)?;
    tch::no_grad(|| {
        let bias = vs
            .variables()
            .remove("decoder.out.bias")
            .context("no decoder.out.bias")?;
        let _ = bias.narrow(0, Tokenizer::EOS, 1).g_sub_scalar_(threshold);
        anyhow::Ok(())
    })?;

    let provenance = Provenance {
        step: 0,
        textrec_version: "parity".into(),
        ..Provenance::default()
    };
    let files = model_files(&vs, &arch, &pre, &charset, BTreeMap::new(), provenance)?;
    std::fs::create_dir_all(dst)?;
    std::fs::write(dst.join(layout::MODEL_WEIGHTS), files.weights)?;
    std::fs::write(dst.join(layout::MANIFEST), files.manifest)?;
    Ok(())
}

/// A threshold on the EOS margins `[B, steps]` midway between two distinct margin values, near
/// the median over lines of each line's highest margin in its first `horizon` steps, and above
/// every first-step margin: lines then stop after at least one character, around that step,
/// at different steps, and no margin lies near the threshold.
fn stop_threshold(margins: &Tensor, horizon: i64) -> Result<f64> {
    let values = |t: Tensor| Vec::<f64>::try_from(t.flatten(0, -1).to_kind(Kind::Double));
    let mut early = values(margins.narrow(1, 0, horizon.max(1)).amax([1], false))?;
    early.sort_by(f64::total_cmp);
    let first = values(margins.select(1, 0))?
        .into_iter()
        .fold(f64::NEG_INFINITY, f64::max);
    let mut all = values(margins.shallow_clone())?;
    all.sort_by(f64::total_cmp);
    all.dedup();
    let start = all
        .partition_point(|&v| v < early[early.len() / 2])
        .max(all.partition_point(|&v| v <= first) + 1);
    // The gap just below the target, or the nearest one above it that is wide enough.
    let (lo, hi) = (start.max(1)..all.len())
        .map(|i| (all[i - 1], all[i]))
        .find(|(lo, hi)| hi - lo >= 1e-3)
        .context("no well separated EOS margin to put the threshold at")?;
    Ok((lo + hi) / 2.0)
}
