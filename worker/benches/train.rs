//! Training and recognition throughput of the `small` preset on the CPU.
//!
//! ```text
//! . scripts/env.sh && cargo bench -p textrec-worker --bench train
//! ```
//!
//! Prints training samples/s at batch 16 (real synthetic lines through the background
//! `Loader`, AdamW with clipping: what `train` does per step), peak RSS (VmHWM), and
//! recognition lines/s at batch 1 and 16. Environment knobs: `TEXTREC_BENCH_THREADS` (libtorch
//! threads, default 2), `TEXTREC_BENCH_STEPS` (timed steps, default 20), `TEXTREC_BENCH_SET`
//! (`;`-separated config overrides such as `data.bucket_batches=1`),
//! `TEXTREC_BENCH_MODEL` (a trained model folder for the recognition part; without it the
//! weights come from the benchmark's own short training, and decoding may run to the
//! maximum length, which is the slow case).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use image::GrayImage;
use tch::nn::VarStore;
use tch::Device;
use textrec_contract::charset::IAM_CHARSET;
use textrec_contract::manifest::Provenance;
use textrec_contract::TrainConfig;
use textrec_model::data::{open_dataset, open_training_data, Loader, Sampler};
use textrec_model::inference::{model_files, LoadedModel};
use textrec_model::net::Recognizer;
use textrec_model::Tokenizer;
use textrec_worker::train::optimizer::AdamW;
use textrec_worker::train::schedule::lr_at;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; this binary takes no arguments of its own.
    let threads = env_or("TEXTREC_BENCH_THREADS", 2);
    let steps = env_or("TEXTREC_BENCH_STEPS", 20) as u64;
    tch::set_num_threads(threads as i32);
    tch::set_num_interop_threads(1);
    // `TEXTREC_BENCH_SET="data.bucket_batches=1;model.ctc_weight=0.5"`: config overrides, for
    // side-by-side runs of one change.
    let overrides: Vec<String> = std::env::var("TEXTREC_BENCH_SET")
        .unwrap_or_default()
        .split(';')
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .collect();
    let cfg = TrainConfig::parse("model: {preset: small}\nbatch_size: 16\n", &overrides)?;
    if !overrides.is_empty() {
        println!("  overrides: {}", overrides.join(" "));
    }
    let arch = cfg.model.resolve()?;
    let tokenizer = Tokenizer::new(IAM_CHARSET);
    println!(
        "textrec training benchmark: preset small, batch {}, {threads} libtorch threads, CPU",
        cfg.batch_size
    );

    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let net = Recognizer::new(&vs.root(), &arch, tokenizer.vocab_size());
    let mut opt = AdamW::new(vs.variables(), &cfg.optimizer);
    opt.init_grads();
    let weights: usize = vs.trainable_variables().iter().map(|t| t.numel()).sum();
    println!("  network: {:.2}M trainable weights", weights as f64 / 1e6);

    let train = open_training_data(&cfg.data.train, cfg.seed, IAM_CHARSET)?;
    let mut loader = Loader::start(
        train.clone(),
        Sampler::new(train.len(), cfg.seed),
        tokenizer.clone(),
        cfg.preprocess.clone(),
        cfg.batch_size,
        cfg.data.bucket_batches,
        0,
        // The trainer's rule on the CPU, where this bench runs (the CPU count only matters on CUDA).
        cfg.data.loader_threads_for(false, 1),
        cfg.data.prefetch_batches.max(1),
    );
    let warmup = 3;
    let mut waited = 0f64;
    let mut samples = 0usize;
    let mut started = Instant::now();
    // Where a step's time goes: forward + loss, backward, clipping + AdamW.
    let mut phases = [0f64; 3];
    let (mut valid_cols, mut padded_cols) = (0i64, 0i64);
    for step in 0..warmup + steps {
        if step == warmup {
            started = Instant::now();
            waited = 0.0;
            samples = 0;
            phases = [0.0; 3];
            (valid_cols, padded_cols) = (0, 0);
        }
        let t0 = Instant::now();
        let batch = loader.next_batch()?;
        waited += t0.elapsed().as_secs_f64();
        samples += batch.ids.len();
        let (images, widths) = batch.images();
        valid_cols += widths.sum(tch::Kind::Int64).int64_value(&[]);
        padded_cols += images.size()[0] * images.size()[3];
        tch::manual_seed(step as i64);
        let t1 = Instant::now();
        let out = net.forward_t(&images, &widths, &batch.tgt_in, true);
        let loss = net.loss(&out, &batch.tgt_out, &batch.target_lengths, 0.0);
        let _ = loss.double_value(&[]);
        let t2 = Instant::now();
        opt.zero_grad();
        loss.backward();
        let t3 = Instant::now();
        opt.clip_grad_norm(cfg.optimizer.grad_clip);
        opt.step(lr_at(step, 1000, &cfg.optimizer));
        phases[0] += (t2 - t1).as_secs_f64();
        phases[1] += (t3 - t2).as_secs_f64();
        phases[2] += t3.elapsed().as_secs_f64();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  training: {:.1} samples/s ({:.3} s/step over {steps} steps; {:.0}% of it waiting for data)",
        samples as f64 / secs,
        secs / steps as f64,
        100.0 * waited / secs
    );
    println!(
        "  per step: forward+loss {:.3} s, backward {:.3} s, clip+AdamW {:.3} s; {:.0} px mean line width, {:.0}% of the columns padding",
        phases[0] / steps as f64,
        phases[1] / steps as f64,
        phases[2] / steps as f64,
        valid_cols as f64 / samples as f64,
        100.0 * (1.0 - valid_cols as f64 / padded_cols as f64)
    );
    drop(loader);
    if let Some(mib) = peak_rss_mib() {
        println!("  peak RSS after training (VmHWM): {mib:.0} MiB");
    }

    // Recognition.
    let model = match std::env::var("TEXTREC_BENCH_MODEL") {
        Ok(dir) => {
            println!("  recognition model: {dir}");
            LoadedModel::load_dir(std::path::Path::new(&dir), Device::Cpu)?
        }
        Err(_) => {
            println!("  recognition model: the benchmark's own weights (untrained; set TEXTREC_BENCH_MODEL for a trained one)");
            let files = model_files(
                &vs,
                &arch,
                &cfg.preprocess,
                IAM_CHARSET,
                BTreeMap::new(),
                Provenance {
                    step: 0,
                    textrec_version: "bench".into(),
                    ..Provenance::default()
                },
            )?;
            LoadedModel::from_bytes(&files.manifest, &files.weights, Device::Cpu)?
        }
    };
    let val = open_dataset(&cfg.data.validation, cfg.seed, IAM_CHARSET)?;
    let lines: Vec<GrayImage> = (0..64)
        .map(|i| val.get(i).map(|s| s.image))
        .collect::<Result<_>>()?;
    for batch in [1usize, 16] {
        let n = if batch == 1 { 32 } else { 64 };
        model.recognize(&lines[..batch])?; // warm-up
        let t0 = Instant::now();
        let mut chars = 0usize;
        for chunk in lines[..n].chunks(batch) {
            chars += model
                .recognize(chunk)?
                .iter()
                .map(|p| p.text.chars().count())
                .sum::<usize>();
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "  recognition batch {batch:>2}: {:.1} lines/s ({n} lines, {:.1} chars/line decoded)",
            n as f64 / secs,
            chars as f64 / n as f64
        );
    }
    if let Some(mib) = peak_rss_mib() {
        println!("  peak RSS (VmHWM): {mib:.0} MiB");
    }
    Ok(())
}
