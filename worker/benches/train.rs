//! Training and recognition throughput of the `small` preset on the CPU.
//!
//! ```text
//! . scripts/env.sh && cargo bench -p textrec-worker --bench train
//! ```
//!
//! Prints training samples/s at batch 16 (real synthetic lines through the background
//! `Loader`, AdamW with clipping: what `train` does per step), peak RSS (VmHWM), and
//! recognition lines/s at batch 1 and 16. Environment knobs: `TEXTREC_BENCH_THREADS` (libtorch
//! threads, default 2), `TEXTREC_BENCH_STEPS` (timed steps, default 20),
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
use textrec_model::data::{open_dataset, Loader, Sampler};
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
    let cfg = TrainConfig::parse("model: {preset: small}\nbatch_size: 16\n", &[])?;
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

    let train = open_dataset(&cfg.data.train, cfg.seed, IAM_CHARSET)?;
    let mut loader = Loader::start(
        train.clone(),
        Sampler::new(train.len(), cfg.seed),
        tokenizer.clone(),
        cfg.preprocess.clone(),
        cfg.batch_size,
        0,
        cfg.data.loader_threads.max(1),
        cfg.data.prefetch_batches.max(1),
    );
    let warmup = 3;
    let mut waited = 0f64;
    let mut samples = 0usize;
    let mut started = Instant::now();
    for step in 0..warmup + steps {
        if step == warmup {
            started = Instant::now();
            waited = 0.0;
            samples = 0;
        }
        let t0 = Instant::now();
        let batch = loader.next_batch()?;
        waited += t0.elapsed().as_secs_f64();
        samples += batch.ids.len();
        tch::manual_seed(step as i64);
        let out = net.forward_t(&batch.images, &batch.widths, &batch.tgt_in, true);
        let loss = net.loss(&out, &batch.tgt_out, &batch.target_lengths, 0.0);
        opt.zero_grad();
        loss.backward();
        opt.clip_grad_norm(cfg.optimizer.grad_clip);
        opt.step(lr_at(step, 1000, &cfg.optimizer));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  training: {:.1} samples/s ({:.3} s/step over {steps} steps; {:.0}% of it waiting for data)",
        samples as f64 / secs,
        secs / steps as f64,
        100.0 * waited / secs
    );
    drop(loader);

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
