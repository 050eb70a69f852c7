// Autocast regions through libtorch's device-typed API, on CUDA or the CPU. tch's `autocast`
// calls the untyped functions (`at::autocast::is_enabled`, `set_enabled`), which libtorch
// deprecated, which print three warnings on every call (a bf16 trial logged them at every
// step) and which only reach CUDA; and tch has no way to choose the reduced type, which
// libtorch keeps per thread and per device type next to the flag. All of that is reached here.
#include <ATen/autocast_mode.h>

namespace {

at::DeviceType device_type(int cuda) { return cuda != 0 ? at::kCUDA : at::kCPU; }

}  // namespace

extern "C" {

// Enters an autocast region on this thread for CUDA (cuda != 0) or the CPU, computing in bf16
// (bf16 != 0) or fp16 (bf16 == 0). The flag and type it replaced are written to *prev_enabled
// and *prev_dtype (a c10::ScalarType code) for textrec_autocast_exit. Returns 0, or -1 if
// libtorch threw.
int textrec_autocast_enter(int cuda, int bf16, int* prev_enabled, int* prev_dtype) {
  try {
    const auto device = device_type(cuda);
    *prev_enabled = at::autocast::is_autocast_enabled(device) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
    at::autocast::set_autocast_dtype(device, bf16 != 0 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Leaves the region entered by textrec_autocast_enter for the same device type: the outermost
// region frees the weights autocast cast for it, and the flag and type it replaced are put
// back.
int textrec_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  try {
    const auto device = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device, prev_enabled != 0);
    at::autocast::set_autocast_dtype(device, static_cast<c10::ScalarType>(prev_dtype));
    return 0;
  } catch (...) {
    return -1;
  }
}

// This thread's autocast flag and type (a c10::ScalarType code) for CUDA (cuda != 0) or the
// CPU. Returns 0, or -1 if libtorch threw.
int textrec_autocast_state(int cuda, int* enabled, int* dtype) {
  try {
    const auto device = device_type(cuda);
    *enabled = at::autocast::is_autocast_enabled(device) ? 1 : 0;
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
