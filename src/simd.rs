//! Plain loops compiled for the CPU's widest vector instructions, chosen at run time.
//!
//! The release build targets baseline x86-64, so one binary starts on any x86-64 CPU.
//! The integer kernels ([`crate::quant`]) pick their instructions at run time; a
//! plain-Rust loop around them relies on the compiler to vectorize it, and baseline
//! x86-64 has only 128-bit SSE2, without a `round` instruction: quantizing activations
//! made one `roundf` library call per value. [`vectorized!`] compiles such a function
//! twice, for the baseline and for AVX2 with FMA, and calls the AVX2 copy where the CPU
//! has it. (The embedder's attention and GELU loops measured no faster that way, so
//! they stay baseline code.)
//!
//! Both copies compute the same floats bit for bit: Rust neither reorders a float sum
//! nor fuses a multiply and an add unless the code says so, so the wider copy only does
//! the same operations more at a time (the tests of each use pin it).

use std::sync::OnceLock;

/// The widest instructions the kernels may use: whatever the CPU has, or a lower tier
/// forced (`--cpu-features`), to serve and measure on a large CPU as on a smaller one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum CpuFeatures {
    /// Baseline x86-64 only: the portable kernels.
    Portable,
    /// Up to AVX2 and FMA, as on a CPU without AVX-512.
    Avx2,
    /// Everything this CPU has.
    #[default]
    Native,
}

static CEILING: OnceLock<CpuFeatures> = OnceLock::new();

/// Caps the kernels at `features` for the rest of the process. Call it before any model
/// loads (the weights are laid out for the kernels then); only the first call counts.
pub fn limit(features: CpuFeatures) {
    let _ = CEILING.set(features);
}

/// The cap [`limit`] set ([`CpuFeatures::Native`] when none).
pub fn ceiling() -> CpuFeatures {
    CEILING.get().copied().unwrap_or_default()
}

/// Whether the kernels may use AVX-512 where the CPU has it.
pub fn allows_avx512() -> bool {
    ceiling() == CpuFeatures::Native
}

/// Whether this CPU has AVX2 and FMA, and the kernels may use them (detected once; the
/// standard library caches it).
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        ceiling() >= CpuFeatures::Avx2
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `fn $name`, which runs `$body` compiled for AVX2 and FMA where the CPU has
/// them, and `fn $baseline`, the same body compiled for baseline x86-64 (the fallback,
/// and what tests compare the wide copy with). Functions the body calls must be
/// `#[inline(always)]`, or they stay baseline code.
macro_rules! vectorized {
    (
        $(#[$meta:meta])*
        fn $name:ident / $baseline:ident ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        #[inline(always)]
        fn $baseline($($arg: $ty),*) $(-> $ret)? $body

        $(#[$meta])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    $baseline($($arg),*)
                }
                if $crate::simd::has_avx2_fma() {
                    // SAFETY: this CPU has AVX2 and FMA, checked just now.
                    return unsafe { wide($($arg),*) };
                }
            }
            $baseline($($arg),*)
        }
    };
}

pub(crate) use vectorized;
