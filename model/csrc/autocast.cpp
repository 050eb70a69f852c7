// The one libtorch setting textrec needs that tch does not expose: which reduced-precision
// type CUDA autocast computes in. libtorch keeps it per thread, next to the autocast flag that
// tch::autocast toggles, so it is set on the thread that runs the forward pass.
#include <ATen/autocast_mode.h>

extern "C" {

// Makes CUDA autocast on this thread compute in bf16 (bf16 != 0) or fp16 (bf16 == 0).
// Returns the previous choice (1: bf16, 0: fp16, 2: another type), or -1 if libtorch threw.
int textrec_set_cuda_autocast_bf16(int bf16) {
  try {
    const auto previous = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_dtype(at::kCUDA, bf16 != 0 ? at::kBFloat16 : at::kHalf);
    if (previous == at::kBFloat16) return 1;
    if (previous == at::kHalf) return 0;
    return 2;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
