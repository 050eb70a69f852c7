//! [`Recognizer`]: encoder + decoder, the joint CE/CTC loss, and greedy decoding.

use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};
use textrec_contract::Architecture;
pub use textrec_contract::DecodeMode;

use super::attention::linear;
use super::context::FrameContext;
use super::decoder::Decoder;
use super::posenc;
use super::resnet::{Encoder, EncoderOutput, HeadRecompute};
use crate::lm::{prefix_search, CharNgram, CtcFrames, LanguageModel, SearchSettings};
use crate::tokenizer::Tokenizer;

/// What [`Recognizer::forward_t`] computes.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Decoder logits `[B, T, V]`, one row per input token.
    pub logits: Tensor,
    /// CTC log-probabilities `[S, B, V]` (time-major, f32), when the model has a CTC head.
    pub ctc_log_probs: Option<Tensor>,
    /// Valid CTC frames `[B]` i64 of each image, when the model has a CTC head.
    pub ctc_lengths: Option<Tensor>,
}

/// Result of [`Recognizer::greedy_decode`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Emitted character ids of each item, without BOS/EOS.
    pub tokens: Vec<Vec<i64>>,
    /// Softmax probability of each token in `tokens` (same lengths).
    pub probs: Vec<Vec<f32>>,
    /// Probability of the EOS that ended each item; `None` when the item ran into the length
    /// limit instead. Part of the sequence's confidence: a line the model is unsure has ended
    /// is not a confident reading.
    pub eos_probs: Vec<Option<f32>>,
}

impl Decoded {
    /// How sure the network is of item `k`'s reading: the geometric mean of the
    /// probabilities of its tokens and of the EOS that ended it (0 when nothing at all was
    /// emitted).
    pub fn confidence(&self, k: usize) -> f32 {
        let probs = self.probs[k].iter().chain(&self.eos_probs[k]);
        let (mut log_sum, mut n) = (0f64, 0usize);
        for &p in probs {
            log_sum += f64::from(p.max(f32::MIN_POSITIVE)).ln();
            n += 1;
        }
        if n == 0 {
            0.0
        } else {
            (log_sum / n as f64).exp() as f32
        }
    }
}

/// Weight of the CTC log-likelihood in [`DecodeMode::Joint`] (the decoder's gets the rest).
const JOINT_CTC_WEIGHT: f64 = 0.5;

/// The most characters a line `frames` CTC frames (feature columns, 4 pixels each at the
/// 32-pixel input height) wide can be read as: one per frame, the most a CTC head can emit
/// (a doubled letter even needs a blank frame between). Condensed faces come close: a 100-
/// character line squeezed into the 1024-pixel width limit, or a narrow font, draws a
/// character in little more than one frame, so a tighter cap (an earlier one assumed two
/// frames per character) cuts real readings short. No decoding emits more, so a decoder
/// caught in a repetition loop stops at a length the image could hold.
pub fn max_chars_for_frames(frames: i64) -> i64 {
    frames.max(1)
}

/// The longest attention reading worth decoding in [`DecodeMode::Joint`] next to a CTC
/// reading of `ctc_len` characters.
fn joint_attention_cap(ctc_len: i64) -> i64 {
    ctc_len + ctc_len / 4 + 4
}

/// Encoder output as the decoder and the CTC head consume it.
struct Encoded {
    /// `[B, S, d]`, S = H'·W' (row-major).
    memory: Tensor,
    /// `[B, 1, 1, S]` bool: true on valid memory positions.
    key_mask: Tensor,
    /// Valid feature columns (CTC frames) of each image `[B]` i64.
    frames: Tensor,
    /// CTC log-probs `[W', B, V]` and frame counts `[B]`.
    ctc: Option<(Tensor, Tensor)>,
}

impl Encoded {
    /// The items at `index` (`[k]` i64, on the memory's device), in that order.
    fn select(&self, index: &Tensor) -> Encoded {
        Encoded {
            memory: self.memory.index_select(0, index),
            key_mask: self.key_mask.index_select(0, index),
            frames: self.frames.index_select(0, index),
            ctc: self
                .ctc
                .as_ref()
                .map(|(lp, lengths)| (lp.index_select(1, index), lengths.index_select(0, index))),
        }
    }
}

/// The CTC head's log-probabilities of a batch on the CPU, item by item, for the prefix
/// search (see [`crate::lm::beam`]).
struct CtcRows {
    /// `[B, S, V]` row-major.
    values: Vec<f32>,
    /// Valid frames of each item.
    lengths: Vec<i64>,
    frames: usize,
    vocab: usize,
}

impl CtcRows {
    fn of(enc: &Encoded) -> Self {
        let (lp, lengths) = enc.ctc.as_ref().expect("encoded with the CTC head");
        let (s, _, v) = lp.size3().expect("[S, B, V]");
        let by_item = lp
            .transpose(0, 1)
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous();
        Self {
            values: Vec::<f32>::try_from(by_item.view([-1])).expect("f32 log-probs"),
            lengths: Vec::<i64>::try_from(lengths.to_device(Device::Cpu)).expect("i64"),
            frames: s as usize,
            vocab: v as usize,
        }
    }

    /// Item `i`'s best reading by the prefix search, at most `cap` characters.
    fn search(
        &self,
        i: usize,
        ngram: Option<&CharNgram>,
        settings: SearchSettings,
        cap: i64,
    ) -> Vec<i64> {
        let start = i * self.frames * self.vocab;
        let frames = (self.lengths[i].max(0) as usize).min(self.frames);
        let frames = CtcFrames {
            log_probs: &self.values[start..start + frames * self.vocab],
            vocab: self.vocab,
            blank: Tokenizer::PAD as usize,
            first_char: Tokenizer::EOS as usize + 1,
        };
        prefix_search(frames, ngram, settings, cap.max(0) as usize)
    }
}

/// The whole text-line recognizer.
///
/// Built into a [`nn::VarStore`] path; its parameters are that store's variables, so weights
/// are saved and loaded through the store (see [`crate::tensorio`]).
#[derive(Debug)]
pub struct Recognizer {
    arch: Architecture,
    vocab_size: i64,
    encoder: Encoder,
    memory_norm: nn::LayerNorm,
    ctc_context: Option<FrameContext>,
    ctc_head: Option<nn::Linear>,
    decoder: Decoder,
    inference_only: bool,
    /// The type the encoder's weights are held and computed in (fp32 unless an inference-only
    /// network was converted by [`Self::set_encoder_kind`]).
    encoder_kind: Kind,
}

impl Recognizer {
    /// Build the network with fresh weights (drawn from torch's global generator: seed it with
    /// `tch::manual_seed` for reproducible init).
    ///
    /// Panics when `arch` fails [`Architecture::validate`] or the vocabulary has no character.
    pub fn new(vs: &nn::Path, arch: &Architecture, vocab_size: i64) -> Self {
        if let Err(e) = arch.validate() {
            panic!("Recognizer::new: {e}");
        }
        assert!(
            vocab_size > Tokenizer::EOS + 1,
            "Recognizer::new: vocabulary has no characters"
        );
        let d = arch.d_model;
        let encoder = Encoder::new(
            &(vs / "encoder"),
            &arch.encoder_channels,
            &arch.encoder_blocks,
            d,
        );
        let memory_norm = nn::layer_norm(vs / "memory_norm", vec![d], Default::default());
        let ctc_context = (arch.ctc_weight > 0.0 && arch.ctc_context_layers > 0).then(|| {
            FrameContext::new(
                &(vs / "ctc_context"),
                d,
                arch.heads,
                arch.ctc_context_layers,
                arch.ff_dim,
                arch.dropout,
            )
        });
        let ctc_head = (arch.ctc_weight > 0.0)
            .then(|| linear(vs / "ctc_head", d, vocab_size, (d, vocab_size)));
        let decoder = Decoder::new(
            &(vs / "decoder"),
            vocab_size,
            d,
            arch.heads,
            arch.decoder_layers,
            arch.ff_dim,
            arch.dropout,
        );
        Self {
            arch: arch.clone(),
            vocab_size,
            encoder,
            memory_norm,
            ctc_context,
            ctc_head,
            decoder,
            inference_only: false,
            encoder_kind: Kind::Float,
        }
    }

    /// The sizes this network was built with.
    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// Number of token ids (specials included).
    pub fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    /// Forbid training-mode forwards: they update BatchNorm statistics in place, which a
    /// network shared between threads for inference must never do (see
    /// [`crate::inference::LoadedModel`]).
    pub(crate) fn set_inference_only(&mut self) {
        self.inference_only = true;
    }

    /// The type the encoder computes in (fp32 unless
    /// [`LoadedModel::set_precision`](crate::LoadedModel::set_precision) changed it).
    pub fn encoder_kind(&self) -> Kind {
        self.encoder_kind
    }

    /// Hold the encoder's weights (the variables of `vs`, the store this network was built
    /// in, under `encoder.`) in `kind` and run it in that type; its features are converted
    /// back to the images' type (see [`crate::precision`]). For an inference-only network:
    /// training keeps fp32 weights.
    pub(crate) fn set_encoder_kind(&mut self, vs: &nn::VarStore, kind: Kind) {
        assert!(
            self.inference_only,
            "only an inference network changes its encoder's type"
        );
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                if name.starts_with("encoder.") {
                    var.set_data(&var.to_kind(kind));
                }
            }
        });
        self.encoder_kind = kind;
    }

    fn check_trainable(&self, train: bool) {
        assert!(
            !(train && self.inference_only),
            "this Recognizer is loaded for inference only"
        );
    }

    fn check_images(images: &Tensor, widths: &Tensor) -> (i64, i64, i64) {
        let (b, c, h, w) = images.size4().expect("images must be [B, 1, H, W]");
        assert_eq!(c, 1, "images must have one channel");
        assert!(
            h % super::HEIGHT_STRIDE == 0,
            "image height {h} is not a multiple of {}",
            super::HEIGHT_STRIDE
        );
        assert_eq!(widths.size(), [b], "widths must be [B]");
        (b, h, w)
    }

    fn encode(&self, images: &Tensor, widths: &Tensor, train: bool, want_ctc: bool) -> Encoded {
        self.check_trainable(train);
        Self::check_images(images, widths);
        let out = if self.encoder_kind == images.kind() {
            self.encoder.forward_t(images, widths, train)
        } else {
            let out = self
                .encoder
                .forward_t(&images.to_kind(self.encoder_kind), widths, train);
            EncoderOutput {
                features: out.features.to_kind(images.kind()),
                widths: out.widths,
            }
        };
        self.encode_features(out, images.device(), train, want_ctc)
    }

    /// The CTC head and the decoder's memory from the encoder's features.
    fn encode_features(
        &self,
        out: EncoderOutput,
        device: Device,
        train: bool,
        want_ctc: bool,
    ) -> Encoded {
        let (b, d, h, w) = out.features.size4().expect("[B, d, H', W']");

        let ctc = match (&self.ctc_head, want_ctc) {
            (Some(head), true) => {
                // Rows are averaged: a frame is a whole column of the line.
                let frames = out.features.mean_dim(2, false, None).transpose(1, 2);
                let frames = match &self.ctc_context {
                    Some(context) => context.forward_t(&frames, &out.widths, train),
                    None => frames,
                }
                .apply(head);
                let log_probs = frames.transpose(0, 1).log_softmax(-1, Kind::Float);
                Some((log_probs, out.widths.shallow_clone()))
            }
            _ => None,
        };

        let pe = posenc::grid(h, w, d, device).to_kind(out.features.kind());
        let memory = (out.features + pe.unsqueeze(0))
            .flatten(2, 3)
            .transpose(1, 2);
        let memory = self.memory_norm.forward(&memory);
        let cols = Tensor::arange(w, (Kind::Int64, device));
        let key_mask = cols
            .view([1, 1, w])
            .lt_tensor(&out.widths.view([b, 1, 1]))
            .expand([b, h, w], false)
            .reshape([b, 1, 1, h * w]);
        Encoded {
            memory,
            key_mask,
            frames: out.widths,
            ctc,
        }
    }

    /// Teacher-forced forward pass.
    ///
    /// `images` `[B,1,H,W]` f32 (ink 1, background 0, zero padding), `widths` `[B]` i64 valid
    /// pixel widths, `tgt_in` `[B,T]` i64 starting with BOS, padded with PAD. With
    /// `train = false` BatchNorm uses its running statistics and dropout is off. In training
    /// mode BatchNorm's batch statistics include the zero padding of narrower images: a small
    /// bias that running statistics carry into eval, accepted for the speed of plain BN.
    pub fn forward_t(
        &self,
        images: &Tensor,
        widths: &Tensor,
        tgt_in: &Tensor,
        train: bool,
    ) -> ForwardOutput {
        let enc = self.encode(images, widths, train, true);
        self.forward_decoder(enc, tgt_in, train)
    }

    /// [`Self::forward_t`] in training mode. With `recompute`, holding fewer activations: the
    /// encoder's highest-resolution layers are run again in the backward pass instead of kept
    /// (see [`Encoder::forward_train_recomputing`]); pass the returned [`HeadRecompute`] to
    /// [`Self::backward_head`] right after the loss's backward pass. Outputs, gradients and
    /// BatchNorm statistics are bit-identical either way.
    pub fn forward_train(
        &self,
        images: &Tensor,
        widths: &Tensor,
        tgt_in: &Tensor,
        recompute: bool,
    ) -> (ForwardOutput, Option<HeadRecompute>) {
        if !recompute {
            return (self.forward_t(images, widths, tgt_in, true), None);
        }
        self.check_trainable(true);
        Self::check_images(images, widths);
        let (out, head) = self.encoder.forward_train_recomputing(images, widths);
        let enc = self.encode_features(out, images.device(), true, true);
        (self.forward_decoder(enc, tgt_in, true), Some(head))
    }

    /// The backward pass of the encoder's head, owed by [`Self::forward_train`].
    /// Run it inside the forward pass's autocast setting, before gradients are rescaled or
    /// clipped.
    pub fn backward_head(&self, head: HeadRecompute) {
        head.backward(&self.encoder);
    }

    fn forward_decoder(&self, enc: Encoded, tgt_in: &Tensor, train: bool) -> ForwardOutput {
        assert_eq!(tgt_in.dim(), 2, "tgt_in must be [B, T]");
        let logits = self
            .decoder
            .forward_t(tgt_in, &enc.memory, &enc.key_mask, train);
        let (ctc_log_probs, ctc_lengths) = match enc.ctc {
            Some((lp, len)) => (Some(lp), Some(len)),
            None => (None, None),
        };
        ForwardOutput {
            logits,
            ctc_log_probs,
            ctc_lengths,
        }
    }

    /// The training loss `(1 - w)·CE + w·CTC`, `w = ctc_weight`.
    ///
    /// `tgt_out` `[B,T]` i64 is `tgt_in` shifted left: the characters, EOS, then PAD (ignored
    /// by CE). The CTC targets are its first `target_lengths[b]` entries (the characters), with
    /// PAD (id 0) as the CTC blank. CE is averaged over non-PAD tokens; CTC per PyTorch's
    /// `mean` (each sequence's loss over its length, then over the batch), with impossible
    /// alignments (text longer than the frames) zeroed instead of infinite.
    pub fn loss(
        &self,
        out: &ForwardOutput,
        tgt_out: &Tensor,
        target_lengths: &Tensor,
        label_smoothing: f64,
    ) -> Tensor {
        let v = self.vocab_size;
        let ce = out
            .logits
            .to_kind(Kind::Float)
            .view([-1, v])
            .cross_entropy_loss::<Tensor>(
                &tgt_out.view([-1]),
                None,
                Reduction::Mean,
                Tokenizer::PAD,
                label_smoothing,
            );
        let w = self.arch.ctc_weight;
        match (&out.ctc_log_probs, &out.ctc_lengths) {
            (Some(lp), Some(len)) if w > 0.0 => {
                let ctc = Tensor::ctc_loss_tensor(
                    lp,
                    tgt_out,
                    len,
                    &target_lengths.to_kind(Kind::Int64),
                    Tokenizer::PAD,
                    Reduction::Mean,
                    true,
                );
                ce * (1.0 - w) + ctc * w
            }
            _ => ce,
        }
    }

    /// Batched greedy decoding with a key/value cache: the image is encoded once, each
    /// layer's cross-attention keys/values are computed once, and each step feeds only the
    /// last token. At most `max_len` characters per item (plus the EOS); an item stops at its
    /// EOS, the batch when every item has stopped. PAD and BOS are never emitted.
    ///
    /// Call inside `tch::no_grad`; BatchNorm and dropout run in eval mode.
    pub fn greedy_decode(&self, images: &Tensor, widths: &Tensor, max_len: i64) -> Decoded {
        self.decode_greedy(images, widths, max_len, false).0
    }

    /// Read each line with `mode` (see [`DecodeMode`]). No reading is longer than `max_len`
    /// characters nor than [`max_chars_for_frames`] of its image. `lm` serves
    /// [`DecodeMode::CtcLm`] (without one, that mode is a prefix beam search over the CTC head
    /// alone); the other modes ignore it. Call inside `tch::no_grad`.
    pub fn decode(
        &self,
        images: &Tensor,
        widths: &Tensor,
        max_len: i64,
        mode: DecodeMode,
        lm: Option<&LanguageModel>,
    ) -> Decoded {
        let mode = if self.ctc_head.is_none() {
            DecodeMode::Attention
        } else {
            mode
        };
        let enc = self.encode(images, widths, false, mode != DecodeMode::Attention);
        let frames = Vec::<i64>::try_from(enc.frames.to_device(Device::Cpu)).expect("i64");
        let caps: Vec<i64> = frames
            .iter()
            .map(|&f| max_chars_for_frames(f).min(max_len.max(0)))
            .collect();
        match mode {
            DecodeMode::Attention => self.greedy_from(&enc, &caps, false).0,
            DecodeMode::Ctc => {
                let hyps = self.ctc_greedy(&enc, &caps);
                self.rescore(&enc, &hyps).0
            }
            DecodeMode::CtcLm => self.read_with_lm(&enc, &caps, lm),
            DecodeMode::Joint => {
                let ctc = self.ctc_greedy(&enc, &caps);
                // A decoder reading much longer than the CTC one cannot win the rescoring (the
                // CTC likelihood of the surplus is negligible), so it is not decoded further.
                let att_caps: Vec<i64> = caps
                    .iter()
                    .zip(&ctc)
                    .map(|(&cap, c)| cap.min(joint_attention_cap(c.len() as i64)))
                    .collect();
                let att = self.greedy_from(&enc, &att_caps, false).0.tokens;
                let b = att.len();
                let both: Vec<Vec<i64>> = att.into_iter().chain(ctc).collect();
                let (scored, joint) = self.rescore(&enc, &both);
                let mut out = Decoded {
                    tokens: Vec::with_capacity(b),
                    probs: Vec::with_capacity(b),
                    eos_probs: Vec::with_capacity(b),
                };
                for i in 0..b {
                    // Ties go to the decoder's reading.
                    let k = if joint[b + i] > joint[i] { b + i } else { i };
                    out.tokens.push(scored.tokens[k].clone());
                    out.probs.push(scored.probs[k].clone());
                    out.eos_probs.push(scored.eos_probs[k]);
                }
                out
            }
        }
    }

    /// Best-path CTC readings, cut to each item's cap.
    fn ctc_greedy(&self, enc: &Encoded, caps: &[i64]) -> Vec<Vec<i64>> {
        let (lp, lengths) = enc.ctc.as_ref().expect("encoded with the CTC head");
        let (s, b, _) = lp.size3().expect("[S, B, V]");
        let best = Vec::<i64>::try_from(lp.argmax(-1, false).to_device(Device::Cpu).view([-1]))
            .expect("i64 ids");
        let lengths = Vec::<i64>::try_from(lengths.to_device(Device::Cpu)).expect("i64");
        (0..b as usize)
            .map(|i| {
                let mut out = Vec::new();
                let mut prev = Tokenizer::PAD;
                for t in 0..(lengths[i].min(s) as usize) {
                    let id = best[t * b as usize + i];
                    // PAD is the blank; BOS/EOS are never CTC targets.
                    if id != prev && id > Tokenizer::EOS && (out.len() as i64) < caps[i] {
                        out.push(id);
                    }
                    prev = id;
                }
                out
            })
            .collect()
    }

    /// `ctc-lm`: the prefix search over each item's CTC frames, cut to its cap, its reading
    /// scored by the decoder. With `unsure_lines` in the search settings, the items read with
    /// less confidence than its threshold are searched again with its weights (the language
    /// model weighed more), and those readings replace the first ones; only they go through
    /// the decoder again.
    fn read_with_lm(&self, enc: &Encoded, caps: &[i64], lm: Option<&LanguageModel>) -> Decoded {
        let frames = CtcRows::of(enc);
        let (ngram, settings) = match lm {
            Some(l) => (Some(&l.ngram), l.settings),
            None => (None, SearchSettings::without_lm()),
        };
        let hyps: Vec<Vec<i64>> = (0..caps.len())
            .map(|i| frames.search(i, ngram, settings, caps[i]))
            .collect();
        let mut out = self.rescore(enc, &hyps).0;
        let (Some(ngram), Some(again), Some(unsure)) =
            (ngram, settings.for_unsure_lines(), settings.unsure)
        else {
            return out;
        };
        let items: Vec<usize> = (0..hyps.len())
            .filter(|&i| out.confidence(i) < unsure.below)
            .collect();
        if items.is_empty() {
            return out;
        }
        let hyps: Vec<Vec<i64>> = items
            .iter()
            .map(|&i| frames.search(i, Some(ngram), again, caps[i]))
            .collect();
        let index = Tensor::from_slice(&items.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .to_device(enc.memory.device());
        let (rescored, _) = self.rescore(&enc.select(&index), &hyps);
        for (k, &i) in items.iter().enumerate() {
            out.tokens[i] = rescored.tokens[k].clone();
            out.probs[i] = rescored.probs[k].clone();
            out.eos_probs[i] = rescored.eos_probs[k];
        }
        out
    }

    /// Score readings `hyps` (item `k` of the batch is `hyps[k % B]`'s image) with the
    /// decoder, teacher-forced: per-token probabilities and the EOS probability of each, and
    /// the joint log-likelihood `w·log P_ctc + (1 - w)·log P_att` (just `log P_att` without a
    /// CTC head).
    fn rescore(&self, enc: &Encoded, hyps: &[Vec<i64>]) -> (Decoded, Vec<f64>) {
        let device = enc.memory.device();
        let b = enc.memory.size()[0];
        let n = hyps.len() as i64;
        let copies = n / b;
        let t = hyps.iter().map(Vec::len).max().unwrap_or(0) as i64 + 1;
        let mut tgt_in = vec![Tokenizer::PAD; (n * t) as usize];
        let mut tgt_out = vec![Tokenizer::PAD; (n * t) as usize];
        for (k, h) in hyps.iter().enumerate() {
            let row = k * t as usize;
            tgt_in[row] = Tokenizer::BOS;
            for (j, &id) in h.iter().enumerate() {
                tgt_in[row + j + 1] = id;
                tgt_out[row + j] = id;
            }
            tgt_out[row + h.len()] = Tokenizer::EOS;
        }
        let tgt_in = Tensor::from_slice(&tgt_in).view([n, t]).to_device(device);
        let tgt_out = Tensor::from_slice(&tgt_out).view([n, t]).to_device(device);
        let copies_of =
            |x: &Tensor| -> Vec<Tensor> { (0..copies).map(|_| x.shallow_clone()).collect() };
        let repeat = |x: &Tensor| Tensor::cat(&copies_of(x), 0);
        let (memory, key_mask) = (repeat(&enc.memory), repeat(&enc.key_mask));
        let logits = self.decoder.forward_t(&tgt_in, &memory, &key_mask, false);
        let token_lp = logits
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float)
            .gather(2, &tgt_out.unsqueeze(2), false)
            .squeeze_dim(2);
        let token_lp = Vec::<f32>::try_from(token_lp.to_device(Device::Cpu).view([-1]))
            .expect("f32 log-probs");
        let mut out = Decoded {
            tokens: hyps.to_vec(),
            probs: Vec::with_capacity(hyps.len()),
            eos_probs: Vec::with_capacity(hyps.len()),
        };
        let mut joint = Vec::with_capacity(hyps.len());
        for (k, h) in hyps.iter().enumerate() {
            let row = &token_lp[k * t as usize..k * t as usize + h.len() + 1];
            out.probs
                .push(row[..h.len()].iter().map(|lp| lp.exp()).collect());
            out.eos_probs.push(Some(row[h.len()].exp()));
            joint.push(row.iter().map(|&lp| f64::from(lp)).sum::<f64>());
        }
        if let Some((lp, lengths)) = &enc.ctc {
            let lengths_n = repeat(lengths);
            let target_lengths: Vec<i64> = hyps.iter().map(|h| h.len() as i64).collect();
            // No zero_infinity: a reading the image cannot hold must score -inf, not 0.
            let nll = Tensor::ctc_loss_tensor(
                &Tensor::cat(&copies_of(lp), 1),
                &tgt_out,
                &lengths_n,
                &Tensor::from_slice(&target_lengths).to_device(device),
                Tokenizer::PAD,
                Reduction::None,
                false,
            );
            let nll = Vec::<f64>::try_from(nll.to_kind(Kind::Double).to_device(Device::Cpu))
                .expect("f64 losses");
            for (j, l) in joint.iter_mut().zip(nll) {
                *j = (1.0 - JOINT_CTC_WEIGHT) * *j - JOINT_CTC_WEIGHT * l;
            }
        }
        (out, joint)
    }

    /// For tests and benchmarks: [`Recognizer::greedy_decode`] run for all `max_len + 1`
    /// steps whatever EOS says (so that random weights still give long sequences), returning
    /// also the tokens fed at each step `[B, steps]` and the raw logits of each step
    /// `[B, steps, V]`. A teacher-forced [`Recognizer::forward_t`] on those tokens must give
    /// the same logits.
    pub fn greedy_decode_traced(
        &self,
        images: &Tensor,
        widths: &Tensor,
        max_len: i64,
    ) -> (Decoded, Tensor, Tensor) {
        let (decoded, trace) = self.decode_greedy(images, widths, max_len, true);
        let (fed, logits) = trace.expect("tracing was requested");
        (decoded, fed, logits)
    }

    fn decode_greedy(
        &self,
        images: &Tensor,
        widths: &Tensor,
        max_len: i64,
        trace: bool,
    ) -> (Decoded, Option<(Tensor, Tensor)>) {
        let enc = self.encode(images, widths, false, false);
        let caps = vec![max_len.max(0); images.size()[0] as usize];
        self.greedy_from(&enc, &caps, trace)
    }

    /// Greedy attention decoding of encoded images, item `i` emitting at most `caps[i]`
    /// characters.
    fn greedy_from(
        &self,
        enc: &Encoded,
        caps: &[i64],
        trace: bool,
    ) -> (Decoded, Option<(Tensor, Tensor)>) {
        let device = enc.memory.device();
        let b = caps.len();
        let max_len = caps.iter().copied().max().unwrap_or(0);
        let steps = max_len + 1;
        let mut state = self.decoder.start(&enc.memory, &enc.key_mask, steps);
        let never = Tensor::from_slice(&[Tokenizer::PAD, Tokenizer::BOS]).to_device(device);

        let mut out = Decoded {
            tokens: vec![Vec::new(); b],
            probs: vec![Vec::new(); b],
            eos_probs: vec![None; b],
        };
        let mut done = vec![false; b];
        let mut next = vec![Tokenizer::BOS; b];
        let (mut fed, mut logged) = (Vec::new(), Vec::new());
        for step in 0..steps {
            let input = Tensor::from_slice(&next)
                .view([b as i64, 1])
                .to_device(device);
            let logits = self.decoder.step(&input, &mut state).squeeze_dim(1);
            let probs = logits
                .to_kind(Kind::Float)
                .index_fill(1, &never, f64::NEG_INFINITY)
                .softmax(-1, Kind::Float);
            let (best_p, best) = probs.max_dim(-1, false);
            let best = Vec::<i64>::try_from(best.to_device(Device::Cpu)).expect("i64 ids");
            let best_p = Vec::<f32>::try_from(best_p.to_device(Device::Cpu)).expect("f32 probs");
            if trace {
                fed.push(input);
                logged.push(logits);
            }
            for i in 0..b {
                if done[i] {
                    continue;
                }
                if best[i] == Tokenizer::EOS {
                    out.eos_probs[i] = Some(best_p[i]);
                    done[i] = true;
                } else if step < caps[i] {
                    out.tokens[i].push(best[i]);
                    out.probs[i].push(best_p[i]);
                    next[i] = best[i];
                } else {
                    done[i] = true;
                }
                if done[i] {
                    // Anything works as the input of a finished item: its outputs are unused
                    // and causal attention keeps it from touching the others.
                    next[i] = Tokenizer::EOS;
                }
            }
            if !trace && done.iter().all(|&d| d) {
                break;
            }
        }
        let trace = trace.then(|| (Tensor::cat(&fed, 1), Tensor::stack(&logged, 1)));
        (out, trace)
    }
}
