//! textrec's side of the training benchmark against PyTorch eager (`benches/run.sh`).
//!
//! ```text
//! . scripts/env.sh && cargo build --release -p textrec-worker --example train_bench
//! train_bench dump DIR     # random-weight model folder + rendered batches, once
//! train_bench run DIR      # textrec training steps on them; prints one JSON line
//! python benches/reference/bench_train.py DIR              # the PyTorch side, same inputs
//! ```
//!
//! `dump` writes `DIR/model/` (`write_random_model_dir`, preset `TEXTREC_BENCH_PRESET`,
//! default `small`) and `DIR/batches.safetensors`: `TEXTREC_BENCH_BATCHES` (default 4) batches
//! of `TEXTREC_BENCH_BATCH` (default 16) synthetic training lines (training fonts and text, the
//! default augmentation), as `b<k>.images|widths|tgt_in|tgt_out|target_lengths`.
//!
//! `run` does what one step of `textrec-worker train` does on the CPU: reseed, train-mode
//! forward, CE + CTC loss, backward, global-norm clipping, the worker's AdamW update with the
//! warm-up/cosine learning rate; default optimizer settings. `TEXTREC_BENCH_THREADS` (default
//! 2) intra-op threads, `TEXTREC_BENCH_WARMUP` (default 4) untimed steps, then
//! `TEXTREC_BENCH_STEPS` (default 20) timed ones, cycling through the batches.
//! `TEXTREC_BENCH_RECOMPUTE` is `off` (default), `on` (`recompute_activations`: the encoder's
//! head run again in the backward pass) or `alternate`: every other round of batches with it,
//! timed apart, so that one run compares the two on the same batches and the same noise.
//! `TEXTREC_BENCH_FUSED` likewise: `on` (default: the encoder's BatchNorm-ReLU-conv runs as one
//! autograd node that recomputes the activation), `off` (separate ops, as before that node) or
//! `alternate`. At most one of the two alternates. `TEXTREC_BENCH_PRECISION` is `fp32`
//! (default) or `bf16`: the forward pass and the loss under CPU bf16 autocast, as
//! `precision: bf16` trains on the CPU. libtorch's kernel caches are bounded as `train` bounds
//! them (`textrec_worker::train::kernel_caches`; the environment's capacities win).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tch::{nn, Device, Tensor};
use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::config::{OptimizerConfig, SyntheticConfig};
use textrec_contract::manifest::ModelManifest;
use textrec_contract::{layout, PreprocessConfig, Preset};
use textrec_model::autocast::Autocast;
use textrec_model::data::synthetic::SyntheticDataset;
use textrec_model::data::{Batch, Dataset};
use textrec_model::inference::write_random_model_dir;
use textrec_model::net::{with_composed_ops, Recognizer};
use textrec_model::{tensorio, Tokenizer};
use textrec_worker::train::optimizer::AdamW;
use textrec_worker::train::schedule::lr_at;

/// The schedule length the learning rate is computed for (warm-up, then cosine).
const SCHEDULE_STEPS: u64 = 1000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    // The kernel caches as `textrec-worker train` bounds them, so that the peak RSS printed is
    // the trainer's.
    textrec_worker::train::kernel_caches::bound_for_training();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir] if cmd == "dump" => dump(Path::new(dir)),
        [cmd, dir] if cmd == "run" => run(Path::new(dir)),
        _ => bail!("usage: train_bench dump|run DIR"),
    }
}

fn dump(dir: &Path) -> Result<()> {
    let preset: Preset =
        serde_json::from_value(json!(env_or("TEXTREC_BENCH_PRESET", "small".to_string())))
            .context("TEXTREC_BENCH_PRESET must be tiny, small or base")?;
    let batch: u64 = env_or("TEXTREC_BENCH_BATCH", 16);
    let batches: u64 = env_or("TEXTREC_BENCH_BATCHES", 4);
    let pre = PreprocessConfig::default();
    write_random_model_dir(
        &dir.join("model"),
        &preset.architecture(),
        &pre,
        IAM_CHARSET,
        1,
    )?;
    let set = SyntheticDataset::open(
        &SyntheticConfig::default(),
        Some(batch * batches),
        1,
        IAM_CHARSET,
    )?;
    let tokenizer = Tokenizer::new(IAM_CHARSET);
    let mut tensors = Vec::new();
    for k in 0..batches {
        let samples = (k * batch..(k + 1) * batch)
            .map(|i| set.get(i))
            .collect::<Result<Vec<_>>>()?;
        let b = Batch::collate(samples, &tokenizer, &pre, k * batch)?;
        let (images, widths) = b.images();
        for (name, t) in [
            ("images", images),
            ("widths", widths),
            ("tgt_in", b.tgt_in),
            ("tgt_out", b.tgt_out),
            ("target_lengths", b.target_lengths),
        ] {
            tensors.push((format!("b{k}.{name}"), t));
        }
    }
    std::fs::write(
        dir.join("batches.safetensors"),
        tensorio::to_safetensors(&tensors, None)?,
    )?;
    eprintln!(
        "wrote {} ({preset:?}) and {batches} batches of {batch} lines",
        dir.join("model").display()
    );
    Ok(())
}

/// One batch: images, widths, tgt_in, tgt_out, target_lengths.
type Tensors5 = [Tensor; 5];

fn load_batches(path: &PathBuf) -> Result<Vec<Tensors5>> {
    let mut named: BTreeMap<String, Tensor> =
        tensorio::from_safetensors(&std::fs::read(path)?, Device::Cpu)?
            .into_iter()
            .collect();
    let mut out = Vec::new();
    for k in 0.. {
        let mut take = |name: &str| named.remove(&format!("b{k}.{name}"));
        let Some(images) = take("images") else { break };
        let rest = ["widths", "tgt_in", "tgt_out", "target_lengths"]
            .map(|n| take(n).with_context(|| format!("batch {k} has no {n}")));
        let [w, ti, to, tl] = rest;
        out.push([images, w?, ti?, to?, tl?]);
    }
    if out.is_empty() {
        bail!("{} holds no batches", path.display());
    }
    Ok(out)
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

fn run(dir: &Path) -> Result<()> {
    let threads: i32 = env_or("TEXTREC_BENCH_THREADS", 2);
    let warmup: u64 = env_or("TEXTREC_BENCH_WARMUP", 4);
    let steps: u64 = env_or("TEXTREC_BENCH_STEPS", 20);
    tch::set_num_threads(threads);
    tch::set_num_interop_threads(1);

    let model_dir = dir.join("model");
    let manifest: ModelManifest =
        serde_json::from_slice(&std::fs::read(model_dir.join(layout::MANIFEST))?)?;
    let arch = manifest.architecture;
    let tokenizer = Tokenizer::new(&manifest.charset);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = Recognizer::new(&vs.root(), &arch, tokenizer.vocab_size());
    tensorio::load_varstore(
        &mut vs,
        &std::fs::read(model_dir.join(layout::MODEL_WEIGHTS))?,
    )?;
    let batches = load_batches(&dir.join("batches.safetensors"))?;

    let cfg = OptimizerConfig::default();
    let mut opt = AdamW::new(vs.variables(), &cfg);
    opt.init_grads();
    let recompute_mode = std::env::var("TEXTREC_BENCH_RECOMPUTE").unwrap_or_else(|_| "off".into());
    let fused_mode = std::env::var("TEXTREC_BENCH_FUSED").unwrap_or_else(|_| "on".into());
    if recompute_mode == "alternate" && fused_mode == "alternate" {
        bail!("TEXTREC_BENCH_RECOMPUTE and TEXTREC_BENCH_FUSED cannot both alternate");
    }
    let precision = std::env::var("TEXTREC_BENCH_PRECISION").unwrap_or_else(|_| "fp32".into());
    let autocast = match precision.as_str() {
        "fp32" => Autocast::Off,
        "bf16" => Autocast::CpuBf16,
        other => bail!("TEXTREC_BENCH_PRECISION={other}: expected fp32 or bf16"),
    };
    let mode_at = |name: &str, mode: &str, step: u64| match mode {
        "on" => Ok(true),
        "off" => Ok(false),
        "alternate" => Ok((step / batches.len() as u64) % 2 == 1),
        other => bail!("{name}={other}: expected off, on or alternate"),
    };
    let (mut samples, mut losses) = (0i64, Vec::new());
    // Seconds and samples of the timed steps, without and with recomputation, and with the
    // separate ops and the fused node.
    let mut split = [(0.0f64, 0i64); 2];
    let mut split_fused = [(0.0f64, 0i64); 2];
    let run_started = Instant::now();
    let mut warmup_secs = 0.0;
    for step in 0..warmup + steps {
        if step == warmup {
            samples = 0;
            warmup_secs = run_started.elapsed().as_secs_f64();
        }
        let [images, widths, tgt_in, tgt_out, lengths] = &batches[step as usize % batches.len()];
        let recompute = mode_at("TEXTREC_BENCH_RECOMPUTE", &recompute_mode, step)?;
        let fused = mode_at("TEXTREC_BENCH_FUSED", &fused_mode, step)?;
        let started = Instant::now();
        tch::manual_seed(step as i64);
        let forward = || {
            autocast.run(|| {
                let (out, head) = net.forward_train(images, widths, tgt_in, recompute);
                (net.loss(&out, tgt_out, lengths, cfg.label_smoothing), head)
            })
        };
        let (loss, head) = if fused {
            forward()
        } else {
            with_composed_ops(forward)
        };
        opt.zero_grad();
        loss.backward();
        if let Some(head) = head {
            autocast.run(|| net.backward_head(head));
        }
        opt.clip_grad_norm(cfg.grad_clip);
        opt.step(lr_at(step, SCHEDULE_STEPS, &cfg));
        losses.push(loss.double_value(&[]));
        if step >= warmup {
            let secs = started.elapsed().as_secs_f64();
            for cell in [
                &mut split[recompute as usize],
                &mut split_fused[fused as usize],
            ] {
                cell.0 += secs;
                cell.1 += images.size()[0];
            }
            samples += images.size()[0];
        }
    }
    let secs = split[0].0 + split[1].0;
    let rate = |(s, n): (f64, i64)| (n > 0).then(|| n as f64 / s);
    let record = json!({
        "recompute": recompute_mode,
        "samples_per_s_plain": rate(split[0]),
        "samples_per_s_recompute": rate(split[1]),
        "precision": precision,
        "fused": fused_mode,
        "fused_recompute_path": textrec_model::net::recompute_path(),
        "samples_per_s_composed": rate(split_fused[0]),
        "samples_per_s_fused": rate(split_fused[1]),
        "impl": "textrec (Rust, tch)",
        "threads": threads,
        "steps": steps,
        "batch": batches[0][0].size()[0],
        "samples_per_s": samples as f64 / secs,
        "s_per_step": secs / steps as f64,
        "warmup_s": warmup_secs,
        "first_loss": losses.first(),
        "last_loss": losses.last(),
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{record}");
    Ok(())
}
