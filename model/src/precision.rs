//! The type the encoder reads lines in.
//!
//! Reading a line is mostly the encoder's convolutions, and on a CPU with native bf16 dot
//! products (AVX512-BF16) oneDNN runs them in bf16 at about 1.7× the speed of fp32.
//! Only the encoder changes type: its features go back to fp32 before the Transformer layers,
//! whose small matrix products gain nothing from bf16 on a CPU, and before every softmax.
//! Training always keeps fp32 weights; this is a reading setting only.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

/// The type the encoder's weights are held and computed in when reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadingPrecision {
    /// fp32 throughout: the readings the model's recorded figures were measured with.
    #[default]
    Fp32,
    /// The encoder in bf16, whatever the hardware. Without native bf16 arithmetic (a CPU
    /// without AVX512-BF16) libtorch emulates it, slower than fp32.
    Bf16,
    /// bf16 where the CPU computes it natively ([`cpu_has_native_bf16`]), fp32 elsewhere
    /// (CUDA included: a GPU's reading time is not spent in the encoder's arithmetic).
    Auto,
}

impl ReadingPrecision {
    /// Every value, as [`fmt::Display`] writes it.
    pub const NAMES: [&'static str; 3] = ["fp32", "bf16", "auto"];

    /// The type the encoder computes in on `device`.
    pub fn kind_on(self, device: Device) -> Kind {
        match self {
            ReadingPrecision::Fp32 => Kind::Float,
            ReadingPrecision::Bf16 => Kind::BFloat16,
            ReadingPrecision::Auto if device == Device::Cpu && cpu_has_native_bf16() => {
                Kind::BFloat16
            }
            ReadingPrecision::Auto => Kind::Float,
        }
    }
}

impl fmt::Display for ReadingPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = match self {
            ReadingPrecision::Fp32 => 0,
            ReadingPrecision::Bf16 => 1,
            ReadingPrecision::Auto => 2,
        };
        f.write_str(Self::NAMES[i])
    }
}

impl FromStr for ReadingPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(ReadingPrecision::Fp32),
            "bf16" => Ok(ReadingPrecision::Bf16),
            "auto" => Ok(ReadingPrecision::Auto),
            other => Err(format!(
                "unknown precision `{other}`: expected {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// The name a reading type is reported under: `"fp32"` or `"bf16"`.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bf16",
        Kind::Half => "fp16",
        _ => "fp32",
    }
}

/// Whether this CPU has bf16 dot-product instructions (AVX512-BF16: AMD Zen 4 and later,
/// Intel Cooper Lake, Sapphire Rapids and later, whose AMX comes with it), which oneDNN uses for
/// bf16 convolutions. Other CPUs run bf16 through emulation, slower than fp32.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for name in ReadingPrecision::NAMES {
            let p: ReadingPrecision = name.parse().unwrap();
            assert_eq!(p.to_string(), name);
        }
        let err = "fp16".parse::<ReadingPrecision>().unwrap_err();
        assert!(
            err.contains("fp16") && err.contains("fp32, bf16, auto"),
            "{err}"
        );
    }

    #[test]
    fn auto_is_bf16_only_on_a_cpu_that_computes_it() {
        assert_eq!(ReadingPrecision::Fp32.kind_on(Device::Cpu), Kind::Float);
        assert_eq!(ReadingPrecision::Bf16.kind_on(Device::Cpu), Kind::BFloat16);
        assert_eq!(
            ReadingPrecision::Bf16.kind_on(Device::Cuda(0)),
            Kind::BFloat16
        );
        assert_eq!(ReadingPrecision::Auto.kind_on(Device::Cuda(0)), Kind::Float);
        let expected = if cpu_has_native_bf16() {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        assert_eq!(ReadingPrecision::Auto.kind_on(Device::Cpu), expected);
    }
}
