// CUDA autocast regions through libtorch's device-typed API. tch's `autocast` calls the untyped
// functions (`at::autocast::is_enabled`, `set_enabled`), which libtorch deprecated and which
// print three warnings on every call, so a bf16 trial logged them at every step; and tch has no
// way to choose the reduced type, which libtorch keeps per thread next to the flag. Both are
// reached here.
#include <ATen/autocast_mode.h>

extern "C" {

// Enters a CUDA autocast region on this thread computing in bf16 (bf16 != 0) or fp16
// (bf16 == 0). The flag and type it replaced are written to *prev_enabled and *prev_dtype
// (a c10::ScalarType code) for textrec_cuda_autocast_exit. Returns 0, or -1 if libtorch threw.
int textrec_cuda_autocast_enter(int bf16, int* prev_enabled, int* prev_dtype) {
  try {
    *prev_enabled = at::autocast::is_autocast_enabled(at::kCUDA) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(at::kCUDA));
    at::autocast::set_autocast_dtype(at::kCUDA, bf16 != 0 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Leaves the region entered by textrec_cuda_autocast_enter: the outermost region frees the
// weights autocast cast for it, and the flag and type it replaced are put back.
int textrec_cuda_autocast_exit(int prev_enabled, int prev_dtype) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(at::kCUDA, prev_enabled != 0);
    at::autocast::set_autocast_dtype(at::kCUDA, static_cast<c10::ScalarType>(prev_dtype));
    return 0;
  } catch (...) {
    return -1;
  }
}

// This thread's CUDA autocast flag and type (a c10::ScalarType code). Returns 0, or -1 if
// libtorch threw.
int textrec_cuda_autocast_state(int* enabled, int* dtype) {
  try {
    *enabled = at::autocast::is_autocast_enabled(at::kCUDA) ? 1 : 0;
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(at::kCUDA));
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
