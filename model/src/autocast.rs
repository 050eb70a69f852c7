//! Mixed precision on CUDA: which reduced type autocast computes in, and running a closure
//! under it.
//!
//! tch's `autocast` only switches libtorch's autocast on and off, which then computes in its
//! default type, fp16. bf16 has fp32's exponent range, so it trains without loss scaling and
//! without the overflow-skipped steps fp16 has; Ampere and newer GPUs run it as fast as fp16.
//! The type is a per-thread libtorch setting (`at::autocast::set_autocast_dtype`), reached
//! through a few lines of C++ (`csrc/autocast.cpp`).

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};
use textrec_contract::config::Precision;

extern "C" {
    fn textrec_set_cuda_autocast_bf16(bf16: i32) -> i32;
}

/// What a forward pass computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autocast {
    /// fp32 throughout (the CPU, or `precision: fp32`).
    Off,
    /// CUDA autocast in fp16: needs loss scaling when training.
    Fp16,
    /// CUDA autocast in bf16.
    Bf16,
}

impl Autocast {
    /// Whether training under this setting needs dynamic loss scaling (fp16's narrow range
    /// underflows small gradients).
    pub fn needs_loss_scaling(self) -> bool {
        self == Autocast::Fp16
    }

    /// The reduced type matrix products compute in, if any.
    pub fn kind(self) -> Option<Kind> {
        match self {
            Autocast::Off => None,
            Autocast::Fp16 => Some(Kind::Half),
            Autocast::Bf16 => Some(Kind::BFloat16),
        }
    }

    /// Short name for logs.
    pub fn label(self) -> &'static str {
        match self {
            Autocast::Off => "off",
            Autocast::Fp16 => "fp16",
            Autocast::Bf16 => "bf16",
        }
    }

    /// What `precision` means on `device`: the CPU always computes in fp32, and so does
    /// `auto` on CUDA. Measured on an H200 with the `small` network at batch 16, autocast
    /// trained 5x slower than fp32 (55-57 against 293 samples/s, bf16 and fp16 alike): a network
    /// this small is bound by kernel launches, and autocast adds a cast to nearly every one.
    pub fn for_precision(precision: Precision, device: Device) -> Self {
        if !device.is_cuda() {
            return Autocast::Off;
        }
        match precision {
            Precision::Auto | Precision::Fp32 => Autocast::Off,
            Precision::Fp16 => Autocast::Fp16,
            Precision::Bf16 => Autocast::Bf16,
        }
    }

    /// Runs `f` under this setting on the calling thread; the previous autocast type is put
    /// back afterwards, even if `f` panics.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        let Some(kind) = self.kind() else {
            return f();
        };
        let previous = set_cuda_autocast_kind(kind);
        let _restore = RestoreKind(previous);
        tch::autocast(true, f)
    }

    /// Checks on `device` that a matrix product under this setting really computes in the
    /// promised type, so a libtorch that ignores the setting fails loudly at start-up rather
    /// than training in another precision than the config says.
    pub fn verify(self, device: Device) -> Result<()> {
        let Some(want) = self.kind() else {
            return Ok(());
        };
        let a = Tensor::ones([4, 4], (Kind::Float, device));
        let got = self.run(|| a.matmul(&a)).kind();
        if got != want {
            bail!(
                "autocast {}: a matrix product computed in {got:?}, not {want:?}",
                self.label()
            );
        }
        Ok(())
    }
}

/// Sets the type CUDA autocast uses on this thread; returns the previous one.
fn set_cuda_autocast_kind(kind: Kind) -> Option<Kind> {
    // SAFETY: the function only reads and writes libtorch's thread-local autocast settings
    // and catches every C++ exception.
    let previous = unsafe { textrec_set_cuda_autocast_bf16(i32::from(kind == Kind::BFloat16)) };
    match previous {
        1 => Some(Kind::BFloat16),
        0 => Some(Kind::Half),
        _ => None,
    }
}

/// Puts the previous autocast type back when dropped.
struct RestoreKind(Option<Kind>);

impl Drop for RestoreKind {
    fn drop(&mut self) {
        if let Some(kind) = self.0 {
            set_cuda_autocast_kind(kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_kind() -> Option<Kind> {
        // Setting a value returns the one before: set, read, and set it back.
        let k = set_cuda_autocast_kind(Kind::Half);
        if let Some(k) = k {
            set_cuda_autocast_kind(k);
        }
        k
    }

    #[test]
    fn libtorch_default_is_fp16_and_run_restores_it() {
        assert_eq!(current_kind(), Some(Kind::Half));
        let inside = Autocast::Bf16.run(current_kind);
        assert_eq!(inside, Some(Kind::BFloat16), "bf16 is set for the closure");
        assert_eq!(current_kind(), Some(Kind::Half), "and put back after it");
        let nested = Autocast::Bf16.run(|| Autocast::Fp16.run(current_kind));
        assert_eq!(nested, Some(Kind::Half));
        assert_eq!(current_kind(), Some(Kind::Half));
    }

    #[test]
    fn restored_after_a_panic() {
        let r = std::panic::catch_unwind(|| Autocast::Bf16.run(|| panic!("inside")));
        assert!(r.is_err());
        assert_eq!(current_kind(), Some(Kind::Half));
    }

    #[test]
    fn off_leaves_cpu_arithmetic_in_fp32() {
        let a = Tensor::ones([3, 3], (Kind::Float, Device::Cpu));
        assert_eq!(Autocast::Off.run(|| a.matmul(&a)).kind(), Kind::Float);
        Autocast::Off.verify(Device::Cpu).unwrap();
        assert!(!Autocast::Bf16.needs_loss_scaling());
        let cuda = Device::Cuda(0);
        assert_eq!(
            Autocast::for_precision(Precision::Auto, cuda),
            Autocast::Off
        );
        assert_eq!(
            Autocast::for_precision(Precision::Bf16, cuda),
            Autocast::Bf16
        );
        assert_eq!(
            Autocast::for_precision(Precision::Fp16, cuda),
            Autocast::Fp16
        );
        assert_eq!(
            Autocast::for_precision(Precision::Fp32, cuda),
            Autocast::Off
        );
        assert_eq!(
            Autocast::for_precision(Precision::Auto, Device::Cpu),
            Autocast::Off
        );
        assert!(Autocast::Fp16.needs_loss_scaling());
    }

    /// Runs where a GPU is present (the device check); elsewhere there is nothing to verify.
    #[test]
    fn cuda_products_compute_in_the_chosen_type() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: skipped");
            return;
        }
        Autocast::Bf16.verify(Device::Cuda(0)).unwrap();
        Autocast::Fp16.verify(Device::Cuda(0)).unwrap();
    }
}
