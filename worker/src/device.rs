//! Choosing the libtorch device and thread count.

use anyhow::{bail, Result};
use textrec_contract::config::Device;

/// The tch device for a configured [`Device`].
pub fn select(device: Device) -> Result<tch::Device> {
    match device {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Auto => Ok(tch::Device::cuda_if_available()),
        Device::Cuda => {
            if tch::Cuda::is_available() {
                Ok(tch::Device::Cuda(0))
            } else {
                bail!(textrec_contract::exit::ConfigError::new(
                    "device: cuda was requested but no CUDA device is available (use `auto` or `cpu`)"
                ))
            }
        }
    }
}

/// Set libtorch's intra-op thread count (0 keeps libtorch's default).
pub fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
        tch::set_num_interop_threads(1);
    }
}
