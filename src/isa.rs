//! Which of the `gemm` crate's kernel families the engine's CPU matrix products run on: its
//! AVX-512 kernels where the CPU executes 512-bit FMAs at full width, its AVX2 + FMA kernels
//! where it has them, else whatever the crate picks. The crate itself takes AVX-512 wherever the
//! CPU has AVX-512F, which on a CPU that splits each 512-bit FMA into two 256-bit halves (AMD
//! Zen 4) ran the step 10% slower than AVX2, and on one that runs them whole (Intel Xeon) AVX2
//! ran it at two thirds of AVX-512's speed (BENCHMARKS.md, "Kernels by CPU"). The choice is made
//! once per process from CPUID, never from a timing, so one machine always runs the same kernels
//! and trains to the same losses; `PLASTICITY_KERNELS` (avx2 or avx512) overrides it, to compare
//! the two or to match another machine's rounding. This module must not multiply anything.

use std::sync::OnceLock;

/// A family of micro-kernels for f32 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// 16-wide AVX-512F kernels.
    Avx512,
    /// 8-wide AVX2 + FMA kernels.
    Avx2,
    /// The `gemm` crate's own choice (a CPU without AVX2 + FMA, or not x86-64).
    Crate,
}

impl Kernels {
    /// The name reports and `PLASTICITY_KERNELS` use.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Avx512 => "avx512",
            Kernels::Avx2 => "avx2",
            Kernels::Crate => "portable",
        }
    }
}

/// The environment variable that overrides the choice.
pub const ENV: &str = "PLASTICITY_KERNELS";

/// The kernels of this process: chosen on first use, from `PLASTICITY_KERNELS` when it names
/// kernels this CPU has, else from the CPU (an unusable value is refused by [`from_env`], which
/// the commands call before any product).
pub fn kernels() -> Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    *CHOSEN.get_or_init(|| from_env().unwrap_or_else(|_| detected()))
}

/// The kernels `PLASTICITY_KERNELS` asks for (the detected ones when it is unset or empty), or
/// why it cannot have them.
pub fn from_env() -> Result<Kernels, String> {
    let value = std::env::var(ENV).unwrap_or_default();
    choose(value.trim(), has_avx512(), has_avx2())
}

/// The rule: a requested family the CPU has, else the detected one.
fn choose(requested: &str, avx512: bool, avx2: bool) -> Result<Kernels, String> {
    match requested {
        "" | "auto" => Ok(detected()),
        "avx512" if avx512 => Ok(Kernels::Avx512),
        "avx2" if avx2 => Ok(Kernels::Avx2),
        "avx512" | "avx2" => Err(format!("{requested:?}: this CPU has no {requested} kernels")),
        other => Err(format!("{other:?}: give avx2, avx512 or auto")),
    }
}

/// AVX-512 where 512-bit FMAs run at full width, else AVX2, else the crate's choice.
fn detected() -> Kernels {
    if has_avx512() && full_width_512() {
        Kernels::Avx512
    } else if has_avx2() {
        Kernels::Avx2
    } else {
        Kernels::Crate
    }
}

/// Every feature the `gemm` crate's AVX-512 kernels are built for (AVX-512F, BW, CD, DQ, VL
/// with AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    gemm_common::simd::V4::try_new().is_some()
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

/// Every feature the `gemm` crate's AVX2 kernels are built for (AVX2, FMA).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    gemm_common::simd::V3::try_new().is_some()
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

/// Whether the CPU executes a 512-bit FMA in one pass: every Intel CPU with AVX-512F (two
/// 512-bit FMA units on most Xeons; where there is one, AVX-512 still matches AVX2's peak), and
/// AMD from Zen 5 (family 0x1A) on; Zen 4 (family 0x19) splits it into two 256-bit halves.
#[cfg(target_arch = "x86_64")]
fn full_width_512() -> bool {
    let (vendor, family) = vendor_and_family();
    full_width_for(&vendor, family)
}

#[cfg(not(target_arch = "x86_64"))]
fn full_width_512() -> bool {
    false
}

fn full_width_for(vendor: &[u8; 12], family: u32) -> bool {
    match vendor {
        b"GenuineIntel" => true,
        b"AuthenticAMD" => family >= 0x1a,
        _ => false,
    }
}

/// CPUID leaf 0's vendor string and leaf 1's display family (base + extended).
#[cfg(target_arch = "x86_64")]
fn vendor_and_family() -> ([u8; 12], u32) {
    use std::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)] // safe to call in newer Rust
    // SAFETY: CPUID exists on every x86-64 CPU.
    let (leaf0, leaf1) = unsafe { (__cpuid(0), __cpuid(1)) };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    let base = (leaf1.eax >> 8) & 0xf;
    let family = if base == 0xf { base + ((leaf1.eax >> 20) & 0xff) } else { base };
    (vendor, family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_width_follows_vendor_and_family() {
        assert!(full_width_for(b"GenuineIntel", 6));
        assert!(!full_width_for(b"AuthenticAMD", 0x19)); // Zen 4
        assert!(full_width_for(b"AuthenticAMD", 0x1a)); // Zen 5
        assert!(!full_width_for(b"HygonGenuine", 0x18));
    }

    #[test]
    fn a_request_is_granted_only_where_the_cpu_has_it() {
        assert_eq!(choose("avx2", true, true), Ok(Kernels::Avx2));
        assert_eq!(choose("avx512", true, true), Ok(Kernels::Avx512));
        assert!(choose("avx512", false, true).unwrap_err().contains("no avx512 kernels"));
        assert!(choose("avx2", false, false).unwrap_err().contains("no avx2 kernels"));
        assert!(choose("sse", true, true).unwrap_err().contains("give avx2, avx512 or auto"));
        assert_eq!(choose("", true, true), Ok(detected()));
        assert_eq!(choose("auto", false, false), Ok(detected()));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_cpu_reads_as_a_known_vendor_or_falls_back() {
        let (vendor, family) = vendor_and_family();
        assert!(family > 0, "CPUID family 0 for {:?}", String::from_utf8_lossy(&vendor));
        assert!(kernels() != Kernels::Avx512 || has_avx512());
    }
}
