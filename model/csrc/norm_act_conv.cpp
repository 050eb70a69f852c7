// BatchNorm -> column mask -> ReLU -> one or more convolutions, as one autograd node that keeps
// the BatchNorm's input and not the activation between it and the convolutions.
//
// Composed from separate ops, backward holds two full-size maps per conv layer: the BatchNorm
// keeps its input and the next convolution keeps its (activated) input. The activation is
// cheap to compute again from the BatchNorm's input (memory-bound passes, no convolution), so
// this node keeps only the BatchNorm's input and recomputes the activation in backward, with
// the same arithmetic: every value and gradient is bit-identical to the composed ops' (the
// Rust tests check it, against the encoder built from separate ops). tch cannot define an
// autograd node from Rust, hence C++.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The BatchNorm's running statistics: updated by a training pass, undefined for a pass that
// recomputes one already counted.
struct RunningStats {
  at::Tensor mean;
  at::Tensor var;
};

// Stride and padding (height, width) of each convolution.
struct Geometry {
  std::vector<std::vector<int64_t>> strides;
  std::vector<std::vector<int64_t>> paddings;
};

// Whether the single-pass loops below apply: float maps [B, C, H, W] and a mask [B, 1, 1, W],
// both contiguous. Anything else takes the composed ops, which give the same values.
bool single_pass(const at::Tensor& z, const at::Tensor& mask) {
  return z.scalar_type() == at::kFloat && mask.scalar_type() == at::kFloat && z.dim() == 4 &&
         mask.dim() == 4 && z.is_contiguous() && mask.is_contiguous() &&
         mask.size(0) == z.size(0) && mask.size(1) == 1 && mask.size(2) == 1 &&
         mask.size(3) == z.size(3);
}

// Calls f(row, mask_row, width) for every row of a [B, C, H, W] map, in parallel.
template <typename F>
void for_each_row(const at::Tensor& z, const at::Tensor& mask, F f) {
  const int64_t width = z.size(3);
  const int64_t rows_per_image = z.size(1) * z.size(2);
  const float* mask_data = mask.data_ptr<float>();
  at::parallel_for(0, z.size(0) * rows_per_image, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      f(row * width, mask_data + (row / rows_per_image) * width, width);
    }
  });
}

// z = relu(z * mask) in one pass, bit for bit as `z.mul_(mask).relu_()`: a float product,
// then ReLU as libtorch's clamp_min(0) computes it (NaN and -0 kept, anything below 0 to 0).
// The two composed passes over a full-resolution map cost as much as a BatchNorm.
void mask_relu_(at::Tensor& z, const at::Tensor& mask) {
  if (!single_pass(z, mask)) {
    z.mul_(mask);
    z.relu_();
    return;
  }
  float* data = z.data_ptr<float>();
  for_each_row(z, mask, [&](int64_t offset, const float* m, int64_t width) {
    float* row = data + offset;
    for (int64_t w = 0; w < width; ++w) {
      const float v = row[w] * m[w];
      row[w] = v < 0.0f ? 0.0f : v;
    }
  });
}

// The backward of mask_relu_: bit for bit `threshold_backward(grad, z, 0) * mask` (a gradient
// where z > 0 or z is NaN, else 0), in one pass into a new tensor. (Written over `grad` in
// place instead, the trainer's peak grew by 100 MiB: the allocator reused freed blocks worse;
// written into a second per-thread buffer like the activation's, it grew by 25 MiB.)
at::Tensor mask_relu_backward(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& mask) {
  if (!single_pass(z, mask) || !single_pass(grad, mask) || grad.sizes() != z.sizes()) {
    return at::threshold_backward(grad, z, 0) * mask;
  }
  at::Tensor out = at::empty_like(grad);
  float* o = out.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  const float* data = z.data_ptr<float>();
  for_each_row(z, mask, [&](int64_t offset, const float* m, int64_t width) {
    for (int64_t w = 0; w < width; ++w) {
      const float kept = data[offset + w] <= 0.0f ? 0.0f : g[offset + w];
      o[offset + w] = kept * m[w];
    }
  });
  return out;
}

// Where a node's activation goes: the map lives only while the node's convolutions read it.
// Allocated afresh for every node, in forward and again in backward, these full-size
// temporaries landed between the maps autograd keeps, and over hundreds of steps of changing
// widths the allocator's resident pages grew far past the live peak: 1.5-2.0 GB at step 300
// of the recipe, against 1.1 GB for the composed ops, which keep every map until backward.
// One buffer per thread, grown to the largest map seen, holds them all instead (0.98 GB, flat
// from step 50; BENCHMARKS.md, "Over a whole run"). Nodes run one at a time on the thread that
// runs the pass (CPU autograd runs backward on the calling thread), so no two activations
// overlap; `Scratch::kNone` allocates, for callers that hold two at once.
enum class Scratch { kNone, kBuffer };

at::Tensor activation_like(const at::Tensor& y, Scratch scratch) {
  if (scratch == Scratch::kNone || !y.is_contiguous()) return at::empty_like(y);
  thread_local at::Tensor buffer;
  const int64_t n = y.numel();
  if (!buffer.defined() || buffer.numel() < n || buffer.scalar_type() != y.scalar_type() ||
      buffer.device() != y.device()) {
    buffer.reset();  // freed before its successor is taken
    buffer = at::empty({n}, y.options());
  }
  return buffer.narrow(0, 0, n).view(y.sizes());
}

// relu(mask * batch_norm(y)) with batch statistics, as the composed ops compute it: the same
// BatchNorm kernel, then the mask and the ReLU in place on its output.
at::Tensor activate(const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& beta,
                    const at::Tensor& mask, const RunningStats& running, double momentum,
                    double eps, at::Tensor* mean, at::Tensor* invstd, Scratch scratch) {
  at::Tensor z = activation_like(y, scratch);
  at::Tensor save_mean = at::empty({0}, y.options());
  at::Tensor save_invstd = at::empty({0}, y.options());
  at::native_batch_norm_out(z, save_mean, save_invstd, y, gamma, beta, running.mean, running.var,
                            /*training=*/true, momentum, eps);
  if (mean != nullptr) *mean = save_mean;
  if (invstd != nullptr) *invstd = save_invstd;
  mask_relu_(z, mask);
  return z;
}

// Recomputing the activation in backward from the statistics the forward pass saved, in one
// pass: libtorch's CPU BatchNorm computes y * alpha + shift per channel with
// alpha = invstd * gamma and shift = beta - mean * alpha, each either as one fused multiply-add
// or as a product and a sum, depending on how the kernel was built for this CPU. Which one is
// found out once per process (`affine_kind`), by comparing both with libtorch's own result;
// if neither matches bit for bit, backward recomputes with libtorch's BatchNorm (statistics
// and all), which costs one more pass over the map.
enum class Affine { kFused, kSeparate, kLibtorch };

#if defined(__x86_64__)
#define TEXTREC_FMA_TARGET __attribute__((target("avx2,fma")))
bool cpu_has_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
#define TEXTREC_FMA_TARGET
bool cpu_has_fma() { return true; }
#endif

TEXTREC_FMA_TARGET void affine_mask_relu_fused(const float* y, float* z, const float* m,
                                               float alpha, float shift, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = __builtin_fmaf(y[i], alpha, shift) * m[i];
    z[i] = v < 0.0f ? 0.0f : v;
  }
}

// Built with -ffp-contract=off (build.rs), so the product and the sum stay two roundings.
void affine_mask_relu_separate(const float* y, float* z, const float* m, float alpha,
                               float shift, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = (y[i] * alpha + shift) * m[i];
    z[i] = v < 0.0f ? 0.0f : v;
  }
}

// relu(mask * batch_norm(y)) from saved statistics, with `kind` kFused or kSeparate.
at::Tensor affine_mask_relu(const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& beta,
                            const at::Tensor& mask, const at::Tensor& mean,
                            const at::Tensor& invstd, Affine kind, Scratch scratch) {
  const int64_t channels = y.size(1);
  const auto g = gamma.contiguous();
  const auto b = beta.contiguous();
  const auto mu = mean.contiguous();
  const auto is = invstd.contiguous();
  std::vector<float> alpha(channels);
  std::vector<float> shift(channels);
  for (int64_t c = 0; c < channels; ++c) {
    alpha[c] = is.data_ptr<float>()[c] * g.data_ptr<float>()[c];
    const float m = mu.data_ptr<float>()[c];
    shift[c] = kind == Affine::kFused ? std::fma(-m, alpha[c], b.data_ptr<float>()[c])
                                      : b.data_ptr<float>()[c] - m * alpha[c];
  }
  at::Tensor z = activation_like(y, scratch);
  const float* src = y.data_ptr<float>();
  float* dst = z.data_ptr<float>();
  const int64_t rows_per_channel = y.size(2);
  for_each_row(y, mask, [&](int64_t offset, const float* m, int64_t width) {
    const int64_t c = (offset / width / rows_per_channel) % channels;
    if (kind == Affine::kFused) {
      affine_mask_relu_fused(src + offset, dst + offset, m, alpha[c], shift[c], width);
    } else {
      affine_mask_relu_separate(src + offset, dst + offset, m, alpha[c], shift[c], width);
    }
  });
  return z;
}

bool affine_applies(const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& mask) {
  return single_pass(y, mask) && gamma.scalar_type() == at::kFloat;
}

// Which recomputation reproduces libtorch's BatchNorm here: checked on a small map of fixed,
// non-random values (the global random generator must not move), 536 pixels per channel so
// that the vector loops and their tails both run.
Affine probe_affine() {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor y = at::arange(2 * 4 * 8 * 67, opts).mul(0.37).sin().mul(3.0).add(0.5)
                           .view({2, 4, 8, 67});
  const at::Tensor gamma = at::arange(4, opts).mul(0.7).cos().add(0.2);
  const at::Tensor beta = at::arange(4, opts).mul(1.3).sin();
  const at::Tensor mask = at::ones({2, 1, 1, 67}, opts);
  at::Tensor mean;
  at::Tensor invstd;
  const at::Tensor expected =
      activate(y, gamma, beta, mask, RunningStats{}, 0.1, 1e-5, &mean, &invstd, Scratch::kNone);
  for (const Affine kind : {Affine::kFused, Affine::kSeparate}) {
    if (kind == Affine::kFused && !cpu_has_fma()) continue;
    const at::Tensor z = affine_mask_relu(y, gamma, beta, mask, mean, invstd, kind, Scratch::kNone);
    if (at::equal(z, expected)) return kind;
  }
  return Affine::kLibtorch;
}

Affine affine_kind() {
  static const Affine kind = probe_affine();
  return kind;
}

at::Tensor conv(const at::Tensor& x, const at::Tensor& weight, const Geometry& geometry, size_t i) {
  return at::conv2d(x, weight, /*bias=*/{}, geometry.strides[i], geometry.paddings[i]);
}

// Inputs with an autograd edge, in order: y 0, gamma 1, beta 2, mask 3, weights 4...; then the
// arguments that are not tensors (geometry, running, momentum, eps).
constexpr size_t kWeights = 4;
constexpr size_t kPlainArguments = 4;

struct NormActConv : public torch::autograd::Function<NormActConv> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& gamma,
                               const at::Tensor& beta, const at::Tensor& mask,
                               at::TensorList weights, const Geometry& geometry,
                               const RunningStats& running, double momentum, double eps) {
    at::Tensor mean;
    at::Tensor invstd;
    const at::Tensor z =
        activate(y, gamma, beta, mask, running, momentum, eps, &mean, &invstd, Scratch::kBuffer);
    variable_list outputs;
    for (size_t i = 0; i < weights.size(); ++i) {
      outputs.push_back(conv(z, weights[i], geometry, i));
    }
    std::vector<at::Tensor> saved = {y, gamma, beta, mask, mean, invstd};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["strides"] = c10::IValue(geometry.strides);
    ctx->saved_data["paddings"] = c10::IValue(geometry.paddings);
    // An output nobody read gets no gradient rather than a zero-filled one.
    ctx->set_materialize_grads(false);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& y = saved[0];
    const at::Tensor& gamma = saved[1];
    const at::Tensor& beta = saved[2];
    const at::Tensor& mask = saved[3];
    const at::Tensor& mean = saved[4];
    const at::Tensor& invstd = saved[5];
    const double eps = ctx->saved_data["eps"].toDouble();
    const Geometry geometry{ctx->saved_data["strides"].to<std::vector<std::vector<int64_t>>>(),
                            ctx->saved_data["paddings"].to<std::vector<std::vector<int64_t>>>()};
    const size_t n = grads.size();

    // The activation exactly as the forward pass computed it: from the saved statistics where
    // that reproduces libtorch's arithmetic (see affine_kind), else with libtorch's BatchNorm
    // again (batch statistics, running ones untouched: the same kernel on the same input).
    const Affine kind = affine_applies(y, gamma, mask) ? affine_kind() : Affine::kLibtorch;
    at::Tensor z = kind == Affine::kLibtorch
                       ? activate(y, gamma, beta, mask, RunningStats{}, 0.0, eps, nullptr, nullptr,
                                  Scratch::kBuffer)
                       : affine_mask_relu(y, gamma, beta, mask, mean, invstd, kind, Scratch::kBuffer);

    variable_list result(kWeights + n + kPlainArguments);  // undefined where none
    at::Tensor grad_z;
    for (size_t i = 0; i < n; ++i) {
      if (!grads[i].defined()) continue;
      auto [grad_input, grad_weight, grad_bias] = at::convolution_backward(
          grads[i], z, saved[6 + i], /*bias_sizes=*/std::nullopt, geometry.strides[i],
          geometry.paddings[i], /*dilation=*/{1, 1}, /*transposed=*/false,
          /*output_padding=*/{0, 0}, /*groups=*/1,
          {true, ctx->needs_input_grad(kWeights + i), false});
      // Autograd sums two consumers' gradients the same way; a sum of two commutes.
      if (grad_z.defined()) {
        grad_z.add_(grad_input);
      } else {
        grad_z = std::move(grad_input);
      }
      result[kWeights + i] = std::move(grad_weight);
    }
    if (!grad_z.defined()) return result;

    // ReLU's and the mask's backward, as autograd computes them for the composed ops.
    at::Tensor grad_normed = mask_relu_backward(grad_z, z, mask);
    grad_z.reset();
    z.reset();
    auto [grad_y, grad_gamma, grad_beta] = at::native_batch_norm_backward(
        grad_normed, y, gamma, /*running_mean=*/{}, /*running_var=*/{}, mean, invstd,
        /*train=*/true, eps,
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)});
    result[0] = std::move(grad_y);
    result[1] = std::move(grad_gamma);
    result[2] = std::move(grad_beta);
    return result;
  }
};


void copy_error(const char* message, char* error, size_t error_len) {
  if (error == nullptr || error_len == 0) return;
  std::strncpy(error, message, error_len - 1);
  error[error_len - 1] = '\0';
}

}  // namespace

extern "C" {

// How backward recomputes the activation on this machine: 0 one pass with fused multiply-adds,
// 1 one pass with separate products and sums, 2 libtorch's BatchNorm again (see affine_kind).
int textrec_norm_act_conv_recompute_kind() {
  try {
    return static_cast<int>(affine_kind());
  } catch (...) {
    return static_cast<int>(Affine::kLibtorch);
  }
}

// outputs[i] = conv2d(relu(mask * batch_norm(y)), weights[i]) for i < n, as one autograd node
// (see the top of this file). `geometry` holds four numbers per convolution: stride h, w and
// padding h, w. `running_mean`/`running_var` may be null: batch statistics only, nothing
// updated. Each output is a new tensor the caller owns. Returns 0, or -1 with a message in
// `error` if libtorch threw.
int textrec_norm_act_conv(const at::Tensor* y, const at::Tensor* gamma, const at::Tensor* beta,
                          at::Tensor* running_mean, at::Tensor* running_var,
                          const at::Tensor* mask, double momentum, double eps, size_t n,
                          const at::Tensor* const* weights, const int64_t* geometry,
                          at::Tensor** outputs, char* error, size_t error_len) {
  try {
    std::vector<at::Tensor> ws;
    Geometry geo;
    for (size_t i = 0; i < n; ++i) {
      ws.push_back(*weights[i]);
      geo.strides.push_back({geometry[4 * i], geometry[4 * i + 1]});
      geo.paddings.push_back({geometry[4 * i + 2], geometry[4 * i + 3]});
    }
    RunningStats running;
    if (running_mean != nullptr) running.mean = *running_mean;
    if (running_var != nullptr) running.var = *running_var;
    auto outs = NormActConv::apply(*y, *gamma, *beta, *mask, at::TensorList(ws), geo, running,
                                   momentum, eps);
    for (size_t i = 0; i < outs.size(); ++i) outputs[i] = new at::Tensor(std::move(outs[i]));
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), error, error_len);
    return -1;
  } catch (...) {
    copy_error("unknown C++ exception", error, error_len);
    return -1;
  }
}

}  // extern "C"
