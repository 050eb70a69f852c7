//! Mixed precision: which reduced type autocast computes in, on which device, and running a
//! closure under it.
//!
//! bf16 has fp32's exponent range, so it trains without loss scaling and without the
//! overflow-skipped steps fp16 has; Ampere and newer GPUs run it as fast as fp16, and so do
//! CPUs with AVX512-BF16 (oneDNN's bf16 convolutions and matrix products). The region is
//! entered through a few lines of C++ (`csrc/autocast.cpp`) rather than `tch::autocast`: tch
//! cannot choose the type (libtorch's default is fp16) nor the CPU, and it calls libtorch's
//! deprecated untyped autocast functions, which print three warnings on every call, so a bf16
//! trial logged them at every step.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};
use textrec_contract::config::Precision;

extern "C" {
    fn textrec_autocast_enter(
        cuda: i32,
        bf16: i32,
        prev_enabled: *mut i32,
        prev_dtype: *mut i32,
    ) -> i32;
    fn textrec_autocast_exit(cuda: i32, prev_enabled: i32, prev_dtype: i32) -> i32;
}

/// What a forward pass computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autocast {
    /// fp32 throughout (`precision: auto` or `fp32`, and `fp16` on the CPU).
    Off,
    /// CUDA autocast in fp16: needs loss scaling when training.
    Fp16,
    /// CUDA autocast in bf16.
    Bf16,
    /// CPU autocast in bf16 (`precision: bf16` on the CPU).
    CpuBf16,
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
            Autocast::Bf16 | Autocast::CpuBf16 => Some(Kind::BFloat16),
        }
    }

    /// Short name for logs.
    pub fn label(self) -> &'static str {
        match self {
            Autocast::Off => "off",
            Autocast::Fp16 => "fp16",
            Autocast::Bf16 => "bf16",
            Autocast::CpuBf16 => "bf16 (CPU)",
        }
    }

    /// What `precision` means on `device`: `auto` computes in fp32 everywhere, and on the
    /// CPU only `bf16` changes that (fp16 trains in fp32 there: CPUs have no fast fp16
    /// arithmetic). On CUDA, `auto` is fp32 because on an H200 bf16 autocast trained the
    /// `small` network at batch 16 at 55-98 samples/s against fp32's 291-293, and the `base`
    /// network at batch 64 at 103-158 against 532-541, the GPU busy under 10% of the time:
    /// both networks are bound by the host's work per kernel, and autocast adds a cast in
    /// front of nearly every kernel and new cuDNN/cuBLAS plans for each new line width
    /// (padding widths to a multiple of 256 took bf16 from the lower figures to the higher
    /// ones and left fp32 where it was). On the CPU, `auto` is fp32 so that runs stay as
    /// recorded (and reproducible bit for bit against the recorded figures).
    pub fn for_precision(precision: Precision, device: Device) -> Self {
        if !device.is_cuda() {
            return match precision {
                Precision::Bf16 => Autocast::CpuBf16,
                _ => Autocast::Off,
            };
        }
        match precision {
            Precision::Auto | Precision::Fp32 => Autocast::Off,
            Precision::Fp16 => Autocast::Fp16,
            Precision::Bf16 => Autocast::Bf16,
        }
    }

    /// Runs `f` under this setting on the calling thread; the previous autocast flag and type
    /// are put back afterwards, even if `f` panics.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        let Some(kind) = self.kind() else {
            return f();
        };
        let _region = Region::enter(kind, self != Autocast::CpuBf16);
        f()
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

/// An autocast region on this thread, for CUDA or the CPU: entered in a reduced type, left
/// when dropped.
struct Region {
    cuda: bool,
    prev_enabled: i32,
    prev_dtype: i32,
}

impl Region {
    fn enter(kind: Kind, cuda: bool) -> Self {
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: the function writes the two integers it is given and catches every C++
        // exception; it only touches libtorch's thread-local autocast settings.
        let rc = unsafe {
            textrec_autocast_enter(
                i32::from(cuda),
                i32::from(kind == Kind::BFloat16),
                &mut prev_enabled,
                &mut prev_dtype,
            )
        };
        assert_eq!(rc, 0, "libtorch refused to enter an autocast region");
        Region {
            cuda,
            prev_enabled,
            prev_dtype,
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: as in `enter`; the values are the ones libtorch reported there.
        let rc = unsafe {
            textrec_autocast_exit(i32::from(self.cuda), self.prev_enabled, self.prev_dtype)
        };
        if rc != 0 {
            tracing::error!("libtorch refused to leave an autocast region");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        fn textrec_autocast_state(cuda: i32, enabled: *mut i32, dtype: *mut i32) -> i32;
    }

    /// This thread's CUDA autocast flag and type.
    fn state() -> (bool, Kind) {
        device_state(true)
    }

    /// This thread's CPU autocast flag and type.
    fn cpu_state() -> (bool, Kind) {
        device_state(false)
    }

    fn device_state(cuda: bool) -> (bool, Kind) {
        let (mut enabled, mut dtype) = (0, 0);
        // SAFETY: writes the two integers; catches C++ exceptions.
        assert_eq!(
            unsafe { textrec_autocast_state(i32::from(cuda), &mut enabled, &mut dtype) },
            0
        );
        // c10::ScalarType's codes, fixed since libtorch 1.x.
        let kind = match dtype {
            5 => Kind::Half,
            15 => Kind::BFloat16,
            other => panic!("autocast type code {other}"),
        };
        (enabled != 0, kind)
    }

    #[test]
    fn run_enters_cuda_autocast_in_the_chosen_type_and_restores_it() {
        // libtorch's default: off, fp16.
        assert_eq!(state(), (false, Kind::Half));
        assert_eq!(Autocast::Bf16.run(state), (true, Kind::BFloat16));
        assert_eq!(state(), (false, Kind::Half), "put back after the closure");
        assert_eq!(Autocast::Fp16.run(state), (true, Kind::Half));
        let nested = Autocast::Bf16.run(|| (Autocast::Fp16.run(state), state()));
        assert_eq!(nested, ((true, Kind::Half), (true, Kind::BFloat16)));
        assert_eq!(state(), (false, Kind::Half));
        assert_eq!(Autocast::Off.run(state), (false, Kind::Half));
    }

    #[test]
    fn restored_after_a_panic() {
        let r = std::panic::catch_unwind(|| Autocast::Bf16.run(|| panic!("inside")));
        assert!(r.is_err());
        assert_eq!(state(), (false, Kind::Half));
    }

    /// Runs [`regions_alone`] in a process of its own: libtorch prints its warnings straight
    /// to the process's stderr, which the test harness does not capture per test.
    #[test]
    fn regions_print_no_warnings() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "autocast::tests::regions_alone",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{stderr}"
        );
        assert!(
            !stderr.contains("Warning") && !stderr.contains("deprecated"),
            "autocast printed warnings:\n{stderr}"
        );
    }

    #[test]
    #[ignore = "run in its own process by regions_print_no_warnings"]
    fn regions_alone() {
        for _ in 0..3 {
            assert!(Autocast::Bf16.run(|| state().0));
            assert!(Autocast::Fp16.run(|| state().0));
            assert!(Autocast::CpuBf16.run(|| cpu_state().0));
        }
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

    #[test]
    fn cpu_bf16_computes_products_in_bf16_on_the_cpu_and_leaves_cuda_alone() {
        // libtorch's CPU default: off, bf16.
        assert_eq!(cpu_state(), (false, Kind::BFloat16));
        let inside = Autocast::CpuBf16.run(|| (cpu_state(), state()));
        assert_eq!(inside, ((true, Kind::BFloat16), (false, Kind::Half)));
        assert_eq!(
            cpu_state(),
            (false, Kind::BFloat16),
            "put back after the closure"
        );
        let a = Tensor::ones([3, 3], (Kind::Float, Device::Cpu));
        assert_eq!(
            Autocast::CpuBf16.run(|| a.matmul(&a)).kind(),
            Kind::BFloat16
        );
        Autocast::CpuBf16.verify(Device::Cpu).unwrap();
        assert!(!Autocast::CpuBf16.needs_loss_scaling());
        let on_cpu = |p| Autocast::for_precision(p, Device::Cpu);
        assert_eq!(on_cpu(Precision::Bf16), Autocast::CpuBf16);
        for p in [Precision::Auto, Precision::Fp32, Precision::Fp16] {
            assert_eq!(on_cpu(p), Autocast::Off, "{p:?}");
        }
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
