//! The ResNet image encoder: a stem conv, stages of basic residual blocks, a 1×1 projection.
//!
//! Every feature map is multiplied by a column mask right after each normalisation, so columns
//! past an image's valid width are exactly zero whenever a 3×3 conv reads them. Zero is also
//! what the conv's own zero padding supplies at a tensor's edge, hence an image gives the same
//! features whether it is run alone or padded inside a wider batch.

use tch::nn;
use tch::{Kind, Tensor};

use super::norm_act_conv::{self, ConvSpec};
use super::{column_mask, valid_columns, HEIGHT_STRIDE, WIDTH_STRIDE};

/// Conv (no bias: BN follows) then BatchNorm.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    /// `conv`'s stride and padding (tch keeps its own copy private).
    stride: [i64; 2],
    padding: [i64; 2],
    bn: nn::BatchNorm,
    /// `bn`'s settings (tch keeps its own copy private).
    bn_config: nn::BatchNormConfig,
}

impl ConvBn {
    fn new(vs: &nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: [i64; 2]) -> Self {
        let cfg = nn::ConvConfigND::<[i64; 2]> {
            stride,
            padding: [kernel / 2, kernel / 2],
            bias: false,
            // He init for the ReLU that follows; fan-out as torchvision's ResNet does.
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity: nn::init::NonLinearity::ReLU,
            },
            ..Default::default()
        };
        let conv = nn::conv(vs / "conv", c_in, c_out, [kernel, kernel], cfg);
        let bn_config = nn::BatchNormConfig::default();
        let bn = nn::batch_norm2d(vs / "bn", c_out, bn_config);
        Self {
            conv,
            stride,
            padding: [kernel / 2, kernel / 2],
            bn,
            bn_config,
        }
    }

    /// Like [`ConvBn::new`] with the BN scale starting at zero, so that a residual branch
    /// starts as the identity (faster, steadier early training).
    fn new_zero_gamma(vs: &nn::Path, c_in: i64, c_out: i64, kernel: i64) -> Self {
        let mut layer = Self::new(vs, c_in, c_out, kernel, [1, 1]);
        if let Some(ws) = layer.bn.ws.as_mut() {
            tch::no_grad(|| {
                let _ = ws.fill_(0.0);
            });
        }
        layer
    }

    fn forward(&self, xs: &Tensor, pass: Pass) -> Tensor {
        self.norm(&xs.apply(&self.conv), pass)
    }

    /// The BatchNorm alone, on this layer's conv output `ys`.
    fn norm(&self, ys: &Tensor, pass: Pass) -> Tensor {
        match pass {
            Pass::Eval => ys.apply_t(&self.bn, false),
            Pass::Train => ys.apply_t(&self.bn, true),
            // Batch statistics, as in the training pass, but the running statistics were
            // updated by that pass already and must not move twice.
            Pass::Recompute => Tensor::batch_norm(
                ys,
                self.bn.ws.as_ref(),
                self.bn.bs.as_ref(),
                None::<&Tensor>,
                None::<&Tensor>,
                true,
                self.bn_config.momentum,
                self.bn_config.eps,
                self.bn_config.cudnn_enabled,
            ),
        }
    }

    fn conv_spec(&self) -> ConvSpec<'_> {
        ConvSpec {
            weight: &self.conv.ws,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

/// A layer's conv output whose BatchNorm, column mask and ReLU are still to come: kept in this
/// form until the convolutions that read the activation are known, so that a training pass
/// can run all of them as one node that does not hold the activation (see
/// [`super::norm_act_conv`]).
struct Pending<'a> {
    /// The conv output.
    ys: Tensor,
    layer: &'a ConvBn,
    /// Column mask of `ys`'s resolution.
    mask: &'a Tensor,
}

impl Pending<'_> {
    /// The activation itself.
    fn activate(self, pass: Pass) -> Tensor {
        relu_masked(self.layer.norm(&self.ys, pass), self.mask)
    }

    /// The conv outputs of `readers` (before their own BatchNorms), reading the activation.
    fn convolve(self, readers: &[&ConvBn], pass: Pass) -> Vec<Tensor> {
        if pass == Pass::Eval || !norm_act_conv::applies(&self.ys) {
            let act = self.activate(pass);
            return readers.iter().map(|r| act.apply(&r.conv)).collect();
        }
        let specs: Vec<ConvSpec<'_>> = readers.iter().map(|r| r.conv_spec()).collect();
        norm_act_conv::norm_act_conv(
            &self.ys,
            &self.layer.bn,
            &self.layer.bn_config,
            pass == Pass::Train,
            self.mask,
            &specs,
        )
    }
}

/// How a forward pass runs the encoder's BatchNorms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Running statistics; nothing changes.
    Eval,
    /// Batch statistics; running statistics updated.
    Train,
    /// A training pass run again for its backward pass: batch statistics, nothing updated.
    Recompute,
}

impl Pass {
    fn training(train: bool) -> Self {
        if train {
            Pass::Train
        } else {
            Pass::Eval
        }
    }
}

/// ReLU with the padding columns zeroed, computed in place on `xs`.
///
/// `xs` must be a fresh intermediate that autograd does not keep (a BatchNorm output or a
/// sum): then backward holds one tensor here (the ReLU's result) where `relu() * mask` held
/// two, the ReLU's result and the product. At full resolution these maps are what bounds the
/// trainer's memory. Masking first gives the same values, since the mask is 0 or 1.
fn relu_masked(mut xs: Tensor, mask: &Tensor) -> Tensor {
    let _ = xs.g_mul_(mask);
    xs.relu_()
}

/// conv3×3-BN-ReLU-conv3×3-BN plus a shortcut (a strided 1×1 conv-BN when the shape changes).
#[derive(Debug)]
struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(vs: &nn::Path, c_in: i64, c_out: i64, stride: [i64; 2]) -> Self {
        let shortcut = (c_in != c_out || stride != [1, 1])
            .then(|| ConvBn::new(&(vs / "shortcut"), c_in, c_out, 1, stride));
        Self {
            conv1: ConvBn::new(&(vs / "conv1"), c_in, c_out, 3, stride),
            conv2: ConvBn::new_zero_gamma(&(vs / "conv2"), c_out, c_out, 3),
            shortcut,
        }
    }

    /// `mask` is the column mask of this block's output resolution. A pending input (the
    /// stem's) is activated inside the convolutions that read it where the block has a
    /// shortcut conv; an identity shortcut needs the activation itself.
    fn forward(&self, input: BlockInput<'_>, mask: &Tensor, pass: Pass) -> Tensor {
        let (ys, short) = match (input, &self.shortcut) {
            (BlockInput::Pending(pre), Some(shortcut)) => {
                let mut outs = pre.convolve(&[&self.conv1, shortcut], pass).into_iter();
                let ys = outs.next().expect("one output per reader");
                let short = outs.next().expect("one output per reader");
                (ys, shortcut.norm(&short, pass))
            }
            (input, shortcut) => {
                let xs = match input {
                    BlockInput::Pending(pre) => pre.activate(pass),
                    BlockInput::Ready(xs) => xs,
                };
                let short = match shortcut {
                    Some(s) => s.forward(&xs, pass),
                    None => xs.shallow_clone(),
                };
                (xs.apply(&self.conv1.conv), short)
            }
        };
        let first = Pending {
            ys,
            layer: &self.conv1,
            mask,
        };
        let ys = first
            .convolve(&[&self.conv2], pass)
            .pop()
            .expect("one output per reader");
        relu_masked(self.conv2.norm(&ys, pass) + short, mask)
    }
}

/// What a block reads: an activated map, or one still pending (the stem's).
enum BlockInput<'a> {
    Ready(Tensor),
    Pending(Pending<'a>),
}

/// One resolution level: blocks of which the first may downsample.
#[derive(Debug)]
struct Stage {
    blocks: Vec<BasicBlock>,
    stride: [i64; 2],
}

/// Downsampling of the whole encoder, by dimension: 2^3 in height, 2^2 in width. Applied one
/// factor per stage from the first stage on; with fewer than three stages the stem takes the
/// leading factors. Early downsampling keeps the expensive wide stages on small maps, which is
/// what makes CPU training affordable.
const SCHEDULE: [[i64; 2]; 3] = [[2, 2], [2, 2], [2, 1]];

/// Image encoder output.
#[derive(Debug)]
pub struct EncoderOutput {
    /// `[B, d_model, H/8, W/4]`, zero past each image's valid columns.
    pub features: Tensor,
    /// `[B]` i64: valid columns of each image in `features` (≥ 1).
    pub widths: Tensor,
}

/// The encoder head of a training pass run by [`Encoder::forward_train_recomputing`], still
/// owing its backward pass.
#[derive(Debug)]
pub struct HeadRecompute {
    images: Tensor,
    widths: Tensor,
    /// The head's output as the rest of the network read it: a leaf that collects the
    /// gradient the head must carry back.
    boundary: Tensor,
}

impl HeadRecompute {
    /// Run the head again, with a graph, and carry the boundary's gradient back into the
    /// head's weights. Call once the loss's backward pass is done, inside the same autocast
    /// setting as the forward pass; before any gradient is rescaled or clipped.
    pub fn backward(self, encoder: &Encoder) {
        let grad = self.boundary.grad();
        if !grad.defined() {
            return; // the loss did not reach the encoder
        }
        let head = encoder.forward_head(&self.images, &self.widths, Pass::Recompute);
        // d(sum(head · g))/d(head) is g exactly: the head's weights get the same gradient a
        // single backward pass would have given them.
        (head * grad).sum(Kind::Float).backward();
    }
}

/// The ResNet encoder followed by a 1×1 projection to the Transformer width.
#[derive(Debug)]
pub struct Encoder {
    stem: ConvBn,
    stem_stride: [i64; 2],
    stages: Vec<Stage>,
    proj: nn::Conv2D,
}

impl Encoder {
    /// Builds the stages `channels[i]` wide with `blocks[i]` blocks each.
    pub fn new(vs: &nn::Path, channels: &[i64], blocks: &[i64], d_model: i64) -> Self {
        assert!(
            !channels.is_empty() && channels.len() == blocks.len(),
            "bad encoder sizes"
        );
        let n = channels.len();
        let stem_factors = SCHEDULE.len().saturating_sub(n);
        let mut stem_stride = [1, 1];
        for f in &SCHEDULE[..stem_factors] {
            stem_stride = [stem_stride[0] * f[0], stem_stride[1] * f[1]];
        }
        let stem = ConvBn::new(&(vs / "stem"), 1, channels[0], 3, stem_stride);
        let mut c_in = channels[0];
        let mut stages = Vec::with_capacity(n);
        for (i, (&c, &b)) in channels.iter().zip(blocks).enumerate() {
            let stride = SCHEDULE.get(stem_factors + i).copied().unwrap_or([1, 1]);
            let sp = vs / "stages" / i;
            let blocks = (0..b)
                .map(|j| {
                    let s = if j == 0 { stride } else { [1, 1] };
                    let blk = BasicBlock::new(&(&sp / j), c_in, c, s);
                    c_in = c;
                    blk
                })
                .collect();
            stages.push(Stage { blocks, stride });
        }
        let proj = nn::conv(
            vs / "proj",
            c_in,
            d_model,
            [1, 1],
            nn::ConvConfigND::<[i64; 2]> {
                ws_init: nn::init::DEFAULT_KAIMING_UNIFORM,
                ..Default::default()
            },
        );
        let enc = Self {
            stem,
            stem_stride,
            stages,
            proj,
        };
        debug_assert_eq!(enc.total_stride(), [HEIGHT_STRIDE, WIDTH_STRIDE]);
        enc
    }

    /// One stage on `xs`, whose columns are `stride_w` pixels apart; returns its output and
    /// the output's column stride.
    fn run_stage(
        &self,
        stage: &Stage,
        input: BlockInput<'_>,
        widths: &Tensor,
        stride_w: i64,
        kind: Kind,
        pass: Pass,
    ) -> (Tensor, i64) {
        let stride_w = stride_w * stage.stride[1];
        let w_in = match &input {
            BlockInput::Ready(xs) => xs.size()[3],
            BlockInput::Pending(pre) => pre.ys.size()[3],
        };
        // Output width of a k=3/p=1 or k=1/p=0 conv with stride s: ceil(W / s).
        let w_out = (w_in + stage.stride[1] - 1) / stage.stride[1];
        let mask = column_mask(widths, stride_w, w_out, kind);
        let mut input = input;
        for block in &stage.blocks {
            input = BlockInput::Ready(block.forward(input, &mask, pass));
        }
        match input {
            BlockInput::Ready(xs) => (xs, stride_w),
            BlockInput::Pending(pre) => (pre.activate(pass), stride_w),
        }
    }

    fn total_stride(&self) -> [i64; 2] {
        self.stages.iter().fold(self.stem_stride, |acc, s| {
            [acc[0] * s.stride[0], acc[1] * s.stride[1]]
        })
    }

    /// `images` `[B,1,H,W]` (ink 1, background 0, zero padding), `widths` `[B]` valid pixels.
    pub fn forward_t(&self, images: &Tensor, widths: &Tensor, train: bool) -> EncoderOutput {
        let pass = Pass::training(train);
        self.forward_tail(
            self.forward_head(images, widths, pass),
            widths,
            images.kind(),
            pass,
        )
    }

    /// The training pass without the head's activations: the head (the stem and the first
    /// stage) runs without recording a graph, and [`HeadRecompute::backward`] runs it again
    /// once the rest of the network's backward pass is done. At batch 16 on 1024-px lines the
    /// head holds about half the encoder's activations (≈ 200 of 370 MB) for a sixth of its
    /// FLOPs. Gradients and BatchNorm statistics are bit-identical to [`Self::forward_t`]'s.
    pub fn forward_train_recomputing(
        &self,
        images: &Tensor,
        widths: &Tensor,
    ) -> (EncoderOutput, HeadRecompute) {
        let head = tch::no_grad(|| self.forward_head(images, widths, Pass::Train));
        let boundary = head.detach().set_requires_grad(true);
        let out = self.forward_tail(boundary.shallow_clone(), widths, images.kind(), Pass::Train);
        let recompute = HeadRecompute {
            images: images.shallow_clone(),
            widths: widths.shallow_clone(),
            boundary,
        };
        (out, recompute)
    }

    /// The stem and the first stage. Masks are in the images' type (fp32 under autocast too).
    fn forward_head(&self, images: &Tensor, widths: &Tensor, pass: Pass) -> Tensor {
        let kind = images.kind();
        let stride_w = self.stem_stride[1];
        let w_stem = (images.size()[3] + stride_w - 1) / stride_w;
        let mask = column_mask(widths, stride_w, w_stem, kind);
        let stem = Pending {
            ys: images.apply(&self.stem.conv),
            layer: &self.stem,
            mask: &mask,
        };
        let input = BlockInput::Pending(stem);
        self.run_stage(&self.stages[0], input, widths, stride_w, kind, pass)
            .0
    }

    /// The stages after the first, and the projection.
    fn forward_tail(&self, head: Tensor, widths: &Tensor, kind: Kind, pass: Pass) -> EncoderOutput {
        let mut stride_w = self.stem_stride[1] * self.stages[0].stride[1];
        let mut xs = head;
        for stage in &self.stages[1..] {
            let input = BlockInput::Ready(xs);
            (xs, stride_w) = self.run_stage(stage, input, widths, stride_w, kind, pass);
        }
        let mask = column_mask(widths, stride_w, xs.size()[3], kind);
        let features = xs.apply(&self.proj) * &mask;
        let valid = valid_columns(widths, stride_w, features.size()[3]);
        EncoderOutput {
            features,
            widths: valid,
        }
    }
}
