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

/// Whether this CPU has AVX2 and FMA (detected once; the standard library caches it).
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
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
