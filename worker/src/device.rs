//! Choosing the libtorch device and thread count.

use std::ffi::CStr;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Result};
use textrec_contract::config::Device;

/// The tch device for a configured [`Device`].
pub fn select(device: Device) -> Result<tch::Device> {
    match device {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Auto => Ok(if cuda_available() {
            tch::Device::Cuda(0)
        } else {
            tch::Device::Cpu
        }),
        Device::Cuda => {
            if cuda_available() {
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

/// Whether libtorch can use a CUDA device.
///
/// libtorch registers its CUDA backend when `libtorch_cuda.so` is loaded, but the linker drops
/// that library from a binary that calls none of its functions (`--as-needed`), so on its own
/// tch sees no GPU even when the CUDA wheel's libraries are on the library path. It is loaded
/// here, once, where an NVIDIA driver is present; elsewhere loading its GPU libraries would
/// only cost start-up time and memory.
pub fn cuda_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if nvidia_driver_present() {
            if let Err(e) = load_library(c"libtorch_cuda.so") {
                tracing::warn!("no CUDA backend: {e} (a worker built against the CPU-only libtorch cannot use a GPU)");
            }
        }
        tch::Cuda::is_available()
    })
}

fn nvidia_driver_present() -> bool {
    Path::new("/proc/driver/nvidia").exists() || Path::new("/dev/nvidiactl").exists()
}

/// `dlopen`s a library for the whole process (its symbols global, so libtorch's registration
/// code and later libraries see them).
fn load_library(name: &CStr) -> Result<(), String> {
    // SAFETY: dlopen with a valid C string; a failure is reported by dlerror, read at once on
    // this thread.
    unsafe {
        if libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null() {
            let err = libc::dlerror();
            return Err(if err.is_null() {
                format!("{} could not be loaded", name.to_string_lossy())
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let err = load_library(c"libtextrec-no-such-library.so").unwrap_err();
        assert!(err.contains("libtextrec-no-such-library.so"), "{err}");
    }

    #[test]
    fn cuda_is_refused_with_a_config_error_where_there_is_none() {
        if cuda_available() {
            return; // a GPU machine: nothing to refuse
        }
        let err = select(Device::Cuda).unwrap_err();
        assert!(err.to_string().contains("no CUDA device"), "{err}");
        assert_eq!(select(Device::Auto).unwrap(), tch::Device::Cpu);
    }
}
