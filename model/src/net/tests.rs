//! Tests of the network as a whole: shapes, exact batching, the decode cache, learning.

use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use textrec_contract::{Architecture, Preset};

use super::*;
use crate::autocast::Autocast;
use crate::tokenizer::Tokenizer;

const VOCAB: i64 = 12;

fn tiny() -> Architecture {
    Preset::Tiny.architecture()
}

fn build(arch: &Architecture, seed: i64) -> (nn::VarStore, Recognizer) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Recognizer::new(&vs.root(), arch, VOCAB);
    (vs, net)
}

/// Fresh weights hide bugs (zero-init BN scales make residual branches vanish, untrained
/// running statistics are the identity), so the exactness tests use arbitrary weights.
fn scramble(vs: &nn::VarStore) {
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut t) in vars {
            if name.ends_with("running_var") || name.ends_with("bn.weight") {
                let _ = t.uniform_(0.5, 1.5);
            } else {
                let _ = t.g_add_(&(t.randn_like() * 0.2));
            }
        }
    });
}

/// A random "ink" image `[1,1,32,w]`.
fn ink(w: i64) -> Tensor {
    Tensor::rand([1, 1, 32, w], (Kind::Float, Device::Cpu))
        .gt(0.75)
        .to_kind(Kind::Float)
}

/// Two images of different widths zero-padded into one batch.
fn pair(w0: i64, w1: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    let (a, b) = (ink(w0), ink(w1));
    let wide = w0.max(w1);
    let pad = |x: &Tensor, w: i64| x.constant_pad_nd([0, wide - w]);
    let images = Tensor::cat(&[pad(&a, w0), pad(&b, w1)], 0);
    (images, Tensor::from_slice(&[w0, w1]), a, b)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn output_shapes() {
    let _rng = global_rng_lock();
    let (_vs, net) = build(&tiny(), 1);
    let (images, widths, _, _) = pair(40, 64);
    let tgt = Tensor::from_slice(&[1i64, 3, 4, 5, 0, 1, 6, 7, 2, 0]).view([2, 5]);
    let out = net.forward_t(&images, &widths, &tgt, true);
    assert_eq!(out.logits.size(), [2, 5, VOCAB]);
    assert_eq!(out.ctc_log_probs.as_ref().unwrap().size(), [16, 2, VOCAB]);
    assert_eq!(
        Vec::<i64>::try_from(out.ctc_lengths.unwrap()).unwrap(),
        [10, 16]
    );
    // Odd widths round up: a partly covered column is still a column.
    let narrow = net.forward_t(&images, &Tensor::from_slice(&[37i64, 1]), &tgt, false);
    assert_eq!(
        Vec::<i64>::try_from(narrow.ctc_lengths.unwrap()).unwrap(),
        [10, 1]
    );

    let no_ctc = Architecture {
        ctc_weight: 0.0,
        ..tiny()
    };
    let (_vs, net) = build(&no_ctc, 1);
    let out = net.forward_t(&images, &widths, &tgt, false);
    assert!(out.ctc_log_probs.is_none() && out.ctc_lengths.is_none());
}

#[test]
fn padded_batch_equals_each_image_alone() {
    let _rng = global_rng_lock();
    let (vs, net) = build(&tiny(), 2);
    scramble(&vs);
    let (images, widths, a, b) = pair(40, 64);
    let tgt = Tensor::from_slice(&[1i64, 3, 4, 5, 6, 1, 7, 8, 9, 10]).view([2, 5]);
    tch::no_grad(|| {
        let batch = net.forward_t(&images, &widths, &tgt, false);
        for (i, (img, w)) in [(&a, 40i64), (&b, 64)].into_iter().enumerate() {
            let i = i as i64;
            let alone = net.forward_t(img, &Tensor::from_slice(&[w]), &tgt.narrow(0, i, 1), false);
            let d = max_diff(&batch.logits.narrow(0, i, 1), &alone.logits);
            assert!(d <= 1e-4, "item {i}: logits differ by {d}");
            let frames = w / WIDTH_STRIDE;
            let lp_batch = batch
                .ctc_log_probs
                .as_ref()
                .unwrap()
                .narrow(0, 0, frames)
                .narrow(1, i, 1);
            let d = max_diff(&lp_batch, alone.ctc_log_probs.as_ref().unwrap());
            assert!(d <= 1e-4, "item {i}: CTC log-probs differ by {d}");
        }
        let together = net.greedy_decode(&images, &widths, 8);
        let first = net.greedy_decode(&a, &Tensor::from_slice(&[40i64]), 8);
        let second = net.greedy_decode(&b, &Tensor::from_slice(&[64i64]), 8);
        assert_eq!(
            together.tokens,
            [first.tokens[0].clone(), second.tokens[0].clone()]
        );

        // The masks are what makes this work: calling the padding valid changes the result.
        let unmasked = net.forward_t(&images, &Tensor::from_slice(&[64i64, 64]), &tgt, false);
        let alone = net.forward_t(
            &a,
            &Tensor::from_slice(&[40i64]),
            &tgt.narrow(0, 0, 1),
            false,
        );
        assert!(max_diff(&unmasked.logits.narrow(0, 0, 1), &alone.logits) > 1e-3);
    });
}

#[test]
fn cached_decoding_matches_full_forward() {
    let _rng = global_rng_lock();
    for layers in [1, 2] {
        let arch = Architecture {
            decoder_layers: layers,
            ..tiny()
        };
        let (vs, net) = build(&arch, 3);
        scramble(&vs);
        let (images, widths, _, _) = pair(36, 64);
        tch::no_grad(|| {
            let (_, fed, step_logits) = net.greedy_decode_traced(&images, &widths, 9);
            assert_eq!(fed.size(), [2, 10]);
            let full = net.forward_t(&images, &widths, &fed, false).logits;
            let d = max_diff(&full, &step_logits);
            assert!(
                d <= 1e-4,
                "{layers} layers: cached logits differ from the full pass by {d}"
            );
        });
    }
}

#[test]
fn greedy_decode_emits_characters_with_probabilities() {
    let _rng = global_rng_lock();
    let (vs, net) = build(&tiny(), 4);
    scramble(&vs);
    let (images, widths, _, _) = pair(40, 64);
    let out = tch::no_grad(|| net.greedy_decode(&images, &widths, 6));
    assert_eq!(out.tokens.len(), 2);
    for i in 0..2 {
        assert!(out.tokens[i].len() <= 6);
        assert_eq!(out.tokens[i].len(), out.probs[i].len());
        assert!(out.tokens[i]
            .iter()
            .all(|&t| t > Tokenizer::EOS && t < VOCAB));
        assert!(out.probs[i]
            .iter()
            .chain(&out.eos_probs[i])
            .all(|&p| p > 0.0 && p <= 1.0));
        if out.eos_probs[i].is_none() {
            assert_eq!(
                out.tokens[i].len(),
                6,
                "an item without EOS must have hit the limit"
            );
        }
    }
}

/// Targets for two texts given as char ids: (tgt_in, tgt_out, lengths).
fn targets(texts: &[&[i64]]) -> (Tensor, Tensor, Tensor) {
    let t = texts.iter().map(|s| s.len()).max().unwrap() + 1;
    let (mut tin, mut tout) = (Vec::new(), Vec::new());
    for s in texts {
        let mut i = vec![Tokenizer::BOS];
        i.extend_from_slice(s);
        let mut o = s.to_vec();
        o.push(Tokenizer::EOS);
        i.resize(t, Tokenizer::PAD);
        o.resize(t, Tokenizer::PAD);
        tin.extend(i);
        tout.extend(o);
    }
    let b = texts.len() as i64;
    let lens: Vec<i64> = texts.iter().map(|s| s.len() as i64).collect();
    (
        Tensor::from_slice(&tin).view([b, -1]),
        Tensor::from_slice(&tout).view([b, -1]),
        Tensor::from_slice(&lens),
    )
}

#[test]
fn tiny_model_overfits_two_images() {
    let _rng = global_rng_lock();
    let (vs, net) = build(&tiny(), 5);
    let (images, widths, _, _) = pair(48, 64);
    let texts: [&[i64]; 2] = [&[3, 4, 5, 6], &[7, 8, 9, 10, 11, 3]];
    let (tin, tout, lens) = targets(&texts);
    let mut opt = nn::Adam::default().build(&vs, 3e-3).unwrap();
    let mut first = None;
    let mut last = f64::INFINITY;
    for step in 0..200 {
        let out = net.forward_t(&images, &widths, &tin, true);
        let loss = net.loss(&out, &tout, &lens, 0.0);
        opt.backward_step(&loss);
        last = loss.double_value(&[]);
        first.get_or_insert(last);
        if last < 0.05 && step > 20 {
            break;
        }
    }
    let first = first.unwrap();
    assert!(last < 0.1, "loss only went from {first:.3} to {last:.3}");
    let decoded = tch::no_grad(|| net.greedy_decode(&images, &widths, 10));
    assert_eq!(decoded.tokens, texts.map(|t| t.to_vec()));
}

#[test]
fn loss_mixes_ce_and_ctc_by_weight() {
    let _rng = global_rng_lock();
    let (vs, net) = build(
        &Architecture {
            ctc_weight: 0.5,
            ..tiny()
        },
        6,
    );
    scramble(&vs);
    let (images, widths, _, _) = pair(40, 64);
    let (tin, tout, lens) = targets(&[&[3, 4], &[5, 6, 7]]);
    tch::no_grad(|| {
        let out = net.forward_t(&images, &widths, &tin, false);
        let total = net.loss(&out, &tout, &lens, 0.1).double_value(&[]);
        let ce = out.logits.view([-1, VOCAB]).cross_entropy_loss::<Tensor>(
            &tout.view([-1]),
            None,
            tch::Reduction::Mean,
            0,
            0.1,
        );
        let ctc = Tensor::ctc_loss_tensor(
            out.ctc_log_probs.as_ref().unwrap(),
            &tout,
            out.ctc_lengths.as_ref().unwrap(),
            &lens,
            0,
            tch::Reduction::Mean,
            true,
        );
        let expected = 0.5 * ce.double_value(&[]) + 0.5 * ctc.double_value(&[]);
        assert!((total - expected).abs() < 1e-5, "{total} vs {expected}");
        assert!(ctc.double_value(&[]) > 0.0);
    });
}

/// The trainer promises bit-identical CPU runs for a seed; dropout draws from the global
/// generator, so reseeding must reproduce a training step exactly.
#[test]
fn training_step_is_deterministic() {
    let _rng = global_rng_lock();
    let arch = Architecture {
        dropout: 0.2,
        ..tiny()
    };
    let run = || {
        let (vs, net) = build(&arch, 7);
        let (images, widths, _, _) = pair(40, 64);
        let (tin, tout, lens) = targets(&[&[3, 4], &[5, 6, 7]]);
        let mut opt = nn::AdamW::default().build(&vs, 1e-3).unwrap();
        for _ in 0..2 {
            let out = net.forward_t(&images, &widths, &tin, true);
            opt.backward_step(&net.loss(&out, &tout, &lens, 0.1));
        }
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    };
    let (a, b) = (run(), run());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs between identical runs");
    }
}

/// Two padded lines of different widths and their targets (`tgt_in`, `tgt_out`, lengths):
/// the input of [`one_training_step`], drawn once so that the steps compared read the same.
struct StepInput {
    images: Tensor,
    widths: Tensor,
    targets: (Tensor, Tensor, Tensor),
}

impl StepInput {
    fn new() -> Self {
        let (images, widths, _, _) = pair(40, 71);
        let targets = targets(&[&[3, 4], &[5, 6, 7]]);
        Self {
            images,
            widths,
            targets,
        }
    }
}

/// One training step of a fresh `arch` network (seed 9, scrambled weights, dropout's draws
/// seeded) on `input`, under `autocast` as the trainer runs it (the forward pass, the loss and
/// the head's recomputation inside, the loss's backward pass outside): the loss and every
/// variable, by name, with its gradient.
fn one_training_step(
    arch: &Architecture,
    input: &StepInput,
    recompute: bool,
    autocast: Autocast,
) -> (f64, Vec<(String, Tensor)>) {
    let StepInput {
        images,
        widths,
        targets: (tin, tout, lens),
    } = input;
    let (vs, net) = build(arch, 9);
    scramble(&vs);
    tch::manual_seed(21); // dropout's draws
    let (loss, head) = autocast.run(|| {
        let (out, head) = net.forward_train(images, widths, tin, recompute);
        (net.loss(&out, tout, lens, 0.1), head)
    });
    loss.backward();
    if let Some(head) = head {
        autocast.run(|| net.backward_head(head));
    }
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    (loss.double_value(&[]), vars)
}

/// Asserts two steps from [`one_training_step`] agree bit for bit: loss, every variable, every
/// gradient. The gradients of the variables `counted` picks must also be nonzero; returns how
/// many those were.
fn assert_identical_steps(
    (loss_a, a): &(f64, Vec<(String, Tensor)>),
    (loss_b, b): &(f64, Vec<(String, Tensor)>),
    context: &str,
    counted: impl Fn(&str) -> bool,
) -> usize {
    assert_eq!(
        loss_a.to_bits(),
        loss_b.to_bits(),
        "{context}: losses differ"
    );
    let mut compared = 0;
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert!(x.equal(y), "{name} differs ({context})");
        let (gx, gy) = (x.grad(), y.grad());
        assert_eq!(
            gx.defined(),
            gy.defined(),
            "{name}: gradient only on one side"
        );
        if gx.defined() {
            assert!(gx.equal(&gy), "{name}: gradients differ ({context})");
            if counted(name) {
                assert!(
                    gx.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                    "{name}: no gradient"
                );
                compared += 1;
            }
        }
    }
    compared
}

/// Recomputing the encoder's head in the backward pass must change nothing but memory: the
/// same loss, the same gradient on every weight, the same BatchNorm running statistics, bit
/// for bit, with dropout on and padded images of different widths.
#[test]
fn recomputing_the_encoder_head_gives_identical_gradients_and_statistics() {
    let _rng = global_rng_lock();
    let arch = Architecture {
        dropout: 0.2,
        ..tiny()
    };
    let input = StepInput::new();
    let head_grads = assert_identical_steps(
        &one_training_step(&arch, &input, false, Autocast::Off),
        &one_training_step(&arch, &input, true, Autocast::Off),
        "recomputed head",
        |name| name.starts_with("encoder.stem") || name.starts_with("encoder.stages.0."),
    );
    assert!(head_grads >= 4, "only {head_grads} head gradients compared");
}

/// The fused BatchNorm-ReLU-conv node must change nothing but memory: the same loss, the same
/// gradient on every weight, the same running statistics, bit for bit, against the encoder
/// built from separate ops; in a plain training pass and in one that recomputes the head.
/// Two blocks in the middle stage, so that an identity shortcut is covered too.
#[test]
fn the_fused_norm_act_conv_node_gives_identical_gradients_and_statistics() {
    let _rng = global_rng_lock();
    let arch = Architecture {
        dropout: 0.2,
        encoder_blocks: vec![1, 2, 1],
        ..tiny()
    };
    let input = StepInput::new();
    for recompute in [false, true] {
        let context = format!("recompute {recompute}");
        let before = norm_act_conv::nodes_run();
        let composed = crate::net::with_composed_ops(|| {
            one_training_step(&arch, &input, recompute, Autocast::Off)
        });
        assert_eq!(
            norm_act_conv::nodes_run(),
            before,
            "{context}: composed ran the node"
        );
        let fused = one_training_step(&arch, &input, recompute, Autocast::Off);
        // Five layers feed convolutions through the node in this network (the others are a
        // block's last, added to its shortcut first); without this the comparison would pass
        // with the node never running.
        let ran = norm_act_conv::nodes_run() - before;
        assert!(ran >= 5, "{context}: the fused node ran {ran} times");
        let encoder_grads = assert_identical_steps(&composed, &fused, &context, |name| {
            name.starts_with("encoder.") && name.contains(".bn.")
        });
        // stem 2, stage 0: 3 layers, stage 1: 1 + 2 + 2 layers, stage 2: 3 (×2 weights each)
        assert!(
            encoder_grads >= 20,
            "only {encoder_grads} BatchNorm gradients compared"
        );
    }
}

/// Under CPU bf16 autocast the encoder's maps are bf16 and the separate ops run (see
/// `norm_act_conv::applies`), computing in bf16: the step's gradients are not fp32's.
#[test]
fn under_cpu_bf16_autocast_the_encoder_runs_as_separate_ops_in_bf16() {
    let _rng = global_rng_lock();
    let arch = tiny();
    let input = StepInput::new();
    let (loss_fp32, fp32) = one_training_step(&arch, &input, false, Autocast::Off);
    let before = norm_act_conv::nodes_run();
    let (loss_bf16, bf16) = one_training_step(&arch, &input, false, Autocast::CpuBf16);
    assert_eq!(
        norm_act_conv::nodes_run(),
        before,
        "the fused node ran under autocast"
    );
    assert_ne!(loss_fp32.to_bits(), loss_bf16.to_bits());
    let differing = fp32
        .iter()
        .zip(&bf16)
        .filter(|((name, a), (_, b))| {
            name.starts_with("encoder.") && a.grad().defined() && !a.grad().equal(&b.grad())
        })
        .count();
    assert!(differing >= 10, "only {differing} encoder gradients differ");
}

#[test]
fn column_mask_rounds_widths_up() {
    let _rng = global_rng_lock();
    let m = column_mask(&Tensor::from_slice(&[5i64, 8, 0]), 4, 3, Kind::Float);
    assert_eq!(m.size(), [3, 1, 1, 3]);
    let rows: Vec<f32> = Vec::try_from(m.view([-1])).unwrap();
    assert_eq!(rows, [1., 1., 0., 1., 1., 0., 1., 0., 0.]);
}

#[test]
fn every_decode_mode_stops_within_what_the_image_can_hold() {
    let _rng = global_rng_lock();
    let (vs, net) = build(&tiny(), 6);
    scramble(&vs);
    // 40 and 64 pixels: 10 and 16 CTC frames, so at most 10 and 16 characters.
    let (images, widths, _, _) = pair(40, 64);
    let caps = [max_chars_for_frames(10), max_chars_for_frames(16)];
    assert_eq!(caps, [10, 16]);
    for mode in [
        DecodeMode::Attention,
        DecodeMode::Ctc,
        DecodeMode::Joint,
        DecodeMode::CtcLm,
    ] {
        let out = tch::no_grad(|| net.decode(&images, &widths, 100, mode, None));
        for (i, &cap) in caps.iter().enumerate() {
            let tokens = &out.tokens[i];
            assert!(
                tokens.len() as i64 <= cap,
                "{mode:?}: {} tokens for an image that holds {cap}",
                tokens.len()
            );
            assert_eq!(tokens.len(), out.probs[i].len());
            assert!(tokens.iter().all(|&t| t > Tokenizer::EOS && t < VOCAB));
            // Readings scored by both heads always have an end probability; the decoder
            // alone has none when it ran into the cap.
            let eos = out.eos_probs[i];
            assert!(eos.is_none_or(|p| p > 0.0 && p <= 1.0), "{mode:?}: {eos:?}");
            assert!(mode == DecodeMode::Attention || eos.is_some(), "{mode:?}");
        }
        // The caller's limit still applies.
        let short = tch::no_grad(|| net.decode(&images, &widths, 3, mode, None));
        assert!(short.tokens.iter().all(|t| t.len() <= 3), "{mode:?}");
    }
}

#[test]
fn joint_decoding_picks_one_of_the_two_readings_per_line() {
    let _rng = global_rng_lock();
    let (vs, net) = build(&tiny(), 7);
    scramble(&vs);
    let (images, widths, _, _) = pair(48, 64);
    let (att, ctc, joint) = tch::no_grad(|| {
        (
            net.decode(&images, &widths, 20, DecodeMode::Attention, None),
            net.decode(&images, &widths, 20, DecodeMode::Ctc, None),
            net.decode(&images, &widths, 20, DecodeMode::Joint, None),
        )
    });
    for i in 0..2 {
        assert!(
            joint.tokens[i] == att.tokens[i] || joint.tokens[i] == ctc.tokens[i],
            "line {i}: {:?} is neither {:?} nor {:?}",
            joint.tokens[i],
            att.tokens[i],
            ctc.tokens[i]
        );
    }
    // Without a CTC head every mode is the attention decoder's reading.
    let arch = Architecture {
        ctc_weight: 0.0,
        ..tiny()
    };
    let (vs, net) = build(&arch, 7);
    scramble(&vs);
    let (a, j) = tch::no_grad(|| {
        (
            net.decode(&images, &widths, 20, DecodeMode::Attention, None),
            net.decode(&images, &widths, 20, DecodeMode::Joint, None),
        )
    });
    assert_eq!(a.tokens, j.tokens);
}
