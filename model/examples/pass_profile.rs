//! Where a recognition's time goes, alone and in width-sorted batches: the encoder (with one
//! decoding step) against the rest of greedy decoding, per line, on one device.
//!
//! It bounds what dynamic batching can gain: batching amortizes the per-step overhead of
//! decoding, but the encoder's convolutions cost the same per line at any batch size on a CPU.
//! `batch-1 total ÷ batched encoder` is the speed-up batching would reach even if batched
//! decoding were free.
//!
//! Batched, the lines are shuffled (fixed seed) and cut into gatherings of `--gather` lines, as a
//! server's batcher gathers concurrent requests; each gathering is planned into width-sorted
//! passes with [`plan_batches`]. With several `--pass-cost` values, each is measured in turn
//! within every round (the planner's fixed cost of a pass, in columns; 0 pads nothing and runs
//! every line alone).
//!
//! ```text
//! cargo run --release -p textrec-model --example pass_profile -- MODEL_DIR IMAGES_DIR \
//!     [--rounds 3] [--threads 1] [--gather 64] [--max-batch 32] [--max-columns 2048] \
//!     [--pass-cost 128[,COST...]]
//! ```
//! `IMAGES_DIR` holds `*.png` lines (e.g. from `textrec-worker synth`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use textrec_model::batching::{plan_batches, BatchLimits};
use textrec_model::inference::LoadedModel;
use textrec_model::preprocess::{collate_refs, prepare_bytes, PreparedImage};

struct Args {
    model: PathBuf,
    images: PathBuf,
    rounds: usize,
    threads: i32,
    gather: usize,
    limits: BatchLimits,
    pass_costs: Vec<usize>,
}

fn parse_args() -> Result<Args> {
    let mut positional = Vec::new();
    let (mut rounds, mut threads) = (3, 1);
    let mut limits = BatchLimits {
        max_images: 32,
        max_columns: BatchLimits::CPU_COLUMNS,
        pass_cost_columns: BatchLimits::CPU_PASS_COST,
    };
    let mut gather = 64;
    let mut pass_costs = vec![BatchLimits::CPU_PASS_COST];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name}: not a number"))
        };
        match a.as_str() {
            "--rounds" => rounds = value("--rounds")?,
            "--threads" => threads = value("--threads")? as i32,
            "--max-batch" => limits.max_images = value("--max-batch")?,
            "--max-columns" => limits.max_columns = value("--max-columns")?,
            "--gather" => gather = value("--gather")?,
            "--pass-cost" => {
                let list = it.next().context("--pass-cost needs a value")?;
                pass_costs = list
                    .split(',')
                    .map(|c| c.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--pass-cost: comma-separated numbers")?;
            }
            "-h" | "--help" => {
                println!("pass_profile MODEL_DIR IMAGES_DIR [--rounds 3] [--threads 1] [--gather 64] [--max-batch 32] [--max-columns 2048] [--pass-cost 128[,COST...]]");
                std::process::exit(0);
            }
            _ if a.starts_with("--") => bail!("unknown option {a}"),
            _ => positional.push(PathBuf::from(a)),
        }
    }
    let [model, images] = <[PathBuf; 2]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("usage: pass_profile MODEL_DIR IMAGES_DIR [options]"))?;
    Ok(Args {
        model,
        images,
        rounds: rounds.max(1),
        threads: threads.max(1),
        gather: gather.max(1),
        limits,
        pass_costs,
    })
}

fn load_images(dir: &Path, model: &LoadedModel) -> Result<Vec<PreparedImage>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.png lines in {}", dir.display());
    }
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            prepare_bytes(&bytes, model.preprocess())
                .with_context(|| format!("cannot prepare {}", f.display()))
        })
        .collect()
}

/// Seconds spent on the encoder (greedy decoding cut to one step) and on whole decoding, over
/// `passes` of `images`.
fn time_passes(model: &LoadedModel, images: &[PreparedImage], passes: &[Vec<usize>]) -> (f64, f64) {
    let (mut encoder, mut total) = (0.0, 0.0);
    let max_len = model.manifest.architecture.max_text_len;
    for pass in passes {
        let batch: Vec<&PreparedImage> = pass.iter().map(|&i| &images[i]).collect();
        let (x, widths) = collate_refs(&batch, model.preprocess(), model.device());
        let t = Instant::now();
        tch::no_grad(|| model.net().greedy_decode(&x, &widths, 0));
        encoder += t.elapsed().as_secs_f64();
        let t = Instant::now();
        tch::no_grad(|| model.net().greedy_decode(&x, &widths, max_len));
        total += t.elapsed().as_secs_f64();
    }
    (encoder, total)
}

/// The lines in a fixed pseudo-random order, cut into gatherings of `gather`, each planned
/// into passes: indices into `widths`.
fn gathered_passes(widths: &[u32], gather: usize, limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..widths.len()).collect();
    // A fixed LCG shuffle: the same gatherings for every pass cost and every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in (1..order.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    order
        .chunks(gather)
        .flat_map(|chunk| {
            let w: Vec<u32> = chunk.iter().map(|&i| widths[i]).collect();
            plan_batches(&w, limits)
                .into_iter()
                .map(|pass| pass.into_iter().map(|k| chunk[k]).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    tch::set_num_threads(args.threads);
    let model = LoadedModel::load_dir(&args.model, tch::Device::Cpu)?;
    let images = load_images(&args.images, &model)?;
    let alone: Vec<Vec<usize>> = (0..images.len()).map(|i| vec![i]).collect();
    let widths: Vec<u32> = images.iter().map(|p| p.width).collect();
    let plans: Vec<(usize, Vec<Vec<usize>>)> = args
        .pass_costs
        .iter()
        .map(|&cost| {
            let limits = BatchLimits {
                pass_cost_columns: cost,
                ..args.limits
            };
            (cost, gathered_passes(&widths, args.gather, limits))
        })
        .collect();
    println!(
        "{} lines, {} libtorch thread(s); gatherings of {}, passes of at most {} images and {} columns; ms per line",
        images.len(),
        args.threads,
        args.gather,
        args.limits.max_images,
        args.limits.max_columns
    );
    // Warm-up: libtorch prepares kernels per shape.
    time_passes(&model, &images, &alone);
    for (_, passes) in &plans {
        time_passes(&model, &images, passes);
    }
    println!(
        "{:>5} {:>9} {:>9} {:>9} {:>6} {:>6} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "round",
        "enc@1",
        "dec@1",
        "total@1",
        "cost",
        "passes",
        "enc@B",
        "dec@B",
        "total@B",
        "gain",
        "ceiling"
    );
    let per_line = 1000.0 / images.len() as f64;
    for round in 0..args.rounds {
        let (e1, t1) = time_passes(&model, &images, &alone);
        for (cost, passes) in &plans {
            let (eb, tb) = time_passes(&model, &images, passes);
            println!(
                "{round:>5} {:>9.2} {:>9.2} {:>9.2} {cost:>6} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>7.2}x {:>8.2}x",
                e1 * per_line,
                (t1 - e1) * per_line,
                t1 * per_line,
                passes.len(),
                eb * per_line,
                (tb - eb) * per_line,
                tb * per_line,
                t1 / tb,
                t1 / eb,
            );
        }
    }
    println!("gain: total@1 ÷ total@B; ceiling: total@1 ÷ enc@B, the gain if batched decoding cost nothing");
    Ok(())
}
