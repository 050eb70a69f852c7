//! Throughput of the recognizer: training steps (forward + backward + AdamW) and greedy
//! decoding, on synthetic 32-pixel lines. Prints samples/s; no statistics beyond a median,
//! because the numbers steer preset sizes, not regressions.
//!
//! ```text
//! cargo bench -p textrec-model --bench net                 # tiny and small
//! cargo bench -p textrec-model --bench net -- small        # one preset
//! TEXTREC_BENCH_ARCH='{"d_model":96}' cargo bench -p textrec-model --bench net -- small
//! TEXTREC_BENCH_STEPS=20 ...                                # timed steps per measurement
//! ```

use std::time::Instant;

use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use textrec_contract::{Architecture, Preset};
use textrec_model::net::resnet::Encoder;
use textrec_model::net::Recognizer;

const VOCAB: i64 = 80;
const HEIGHT: i64 = 32;

/// A batch of random "ink" lines `widths` wide (zero padded) and their widths.
fn lines(widths: &[i64]) -> (Tensor, Tensor) {
    let wide = *widths.iter().max().unwrap();
    let images: Vec<Tensor> = widths
        .iter()
        .map(|&w| {
            Tensor::rand([1, 1, HEIGHT, w], (Kind::Float, Device::Cpu))
                .gt(0.8)
                .to_kind(Kind::Float)
                .constant_pad_nd([0, wide - w])
        })
        .collect();
    (Tensor::cat(&images, 0), Tensor::from_slice(widths))
}

/// Widths spread over 200..=256 pixels (text lines of ~20 characters), as a data loader gives.
fn widths(batch: usize) -> Vec<i64> {
    (0..batch).map(|i| 256 - ((i as i64 * 37) % 57)).collect()
}

/// Targets of `chars` characters per line: (tgt_in, tgt_out, lengths).
fn targets(batch: i64, chars: i64) -> (Tensor, Tensor, Tensor) {
    let text = Tensor::randint_low(3, VOCAB, [batch, chars], (Kind::Int64, Device::Cpu));
    let bos = Tensor::ones([batch, 1], (Kind::Int64, Device::Cpu));
    let eos = Tensor::full([batch, 1], 2, (Kind::Int64, Device::Cpu));
    let tin = Tensor::cat(&[&bos, &text], 1);
    let tout = Tensor::cat(&[&text, &eos], 1);
    (
        tin,
        tout,
        Tensor::full([batch], chars, (Kind::Int64, Device::Cpu)),
    )
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median seconds of `f` over `n` runs after two warm-up runs.
fn time(n: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn architecture(preset: Preset) -> Architecture {
    let base = serde_json::to_value(preset.architecture()).unwrap();
    let Ok(over) = std::env::var("TEXTREC_BENCH_ARCH") else {
        return preset.architecture();
    };
    let over: serde_json::Value =
        serde_json::from_str(&over).expect("TEXTREC_BENCH_ARCH is a JSON object");
    let mut merged = base;
    for (k, v) in over
        .as_object()
        .expect("TEXTREC_BENCH_ARCH is a JSON object")
    {
        merged[k] = v.clone();
    }
    serde_json::from_value(merged).expect("valid architecture")
}

fn bench(name: &str, arch: &Architecture, steps: usize) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Recognizer::new(&vs.root(), arch, VOCAB);
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    println!("{name}: {arch:?}");
    println!("{name}: {params} parameters");

    let batch = 16;
    let (images, w) = lines(&widths(batch));
    let (tin, tout, lens) = targets(batch as i64, 20);
    let mut opt = nn::AdamW::default().build(&vs, 1e-3).unwrap();
    let s = time(steps, || {
        let out = net.forward_t(&images, &w, &tin, true);
        let loss = net.loss(&out, &tout, &lens, 0.1);
        opt.backward_step(&loss);
    });
    println!(
        "{name}: train step, batch {batch}, 32x~228 px, 20 chars: {:.3} s = {:.1} samples/s",
        s,
        batch as f64 / s
    );

    // The encoder alone, to see where a step's time goes.
    let enc_vs = nn::VarStore::new(Device::Cpu);
    let encoder = Encoder::new(
        &enc_vs.root(),
        &arch.encoder_channels,
        &arch.encoder_blocks,
        arch.d_model,
    );
    let s_enc = time(steps, || {
        let out = encoder.forward_t(&images, &w, true);
        out.features.square().mean(Kind::Float).backward();
    });
    println!(
        "{name}: of which encoder forward+backward: {:.3} s ({:.0}%)",
        s_enc,
        100.0 * s_enc / s
    );

    let s = time(steps, || {
        tch::no_grad(|| {
            let out = net.forward_t(&images, &w, &tin, false);
            let _ = net.loss(&out, &tout, &lens, 0.0).double_value(&[]);
        })
    });
    println!(
        "{name}: eval forward (teacher-forced), batch {batch}: {:.1} samples/s",
        batch as f64 / s
    );

    for b in [1usize, 16] {
        let (images, w) = lines(&widths(b));
        let s = time(steps, || {
            tch::no_grad(|| {
                let _ = net.greedy_decode_traced(&images, &w, 20);
            })
        });
        println!(
            "{name}: greedy decode, batch {b}, 21 steps: {:.1} lines/s ({:.1} ms per batch)",
            b as f64 / s,
            s * 1e3
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else selects presets.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let steps = std::env::var("TEXTREC_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("libtorch threads: {}", tch::get_num_threads());
    for (name, preset) in [
        ("tiny", Preset::Tiny),
        ("small", Preset::Small),
        ("base", Preset::Base),
    ] {
        let default_set = wanted.is_empty() && preset != Preset::Base;
        if default_set || wanted.iter().any(|w| w == name) {
            bench(name, &architecture(preset), steps);
        }
    }
}
