//! The AVX-512 VNNI path: two blocks per 512-bit register, `vpdpbusd` for the products.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes and adds groups of four straight into
//! 32-bit lanes, so nothing saturates. AVX-512 has no `vpsignb`, so the weight block is
//! made unsigned with `vpabsb` and the activations negated under the weight's sign mask
//! (`vpmovb2m`, then a masked subtract from zero). The integer result is exact, equal to
//! [`super::scalar::block_dot`]. A row with an odd number of blocks ends with one
//! 256-bit block.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
use super::avx2::{horizontal_sum, unpack_nibbles};
use super::nibble::NibbleRow;
use super::q6::Q6Row;
use super::{Q8Rows, WeightRow, BLOCK};

/// Whether this CPU has AVX-512 (F, BW, VL) with VNNI, and the kernels may use it.
pub(super) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::allows_avx512()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sixteen 32-bit partial sums of `w · x` for two blocks (eight lanes each).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
fn pair_lanes(abs_w: __m512i, negative_w: __mmask64, x: __m512i) -> __m512i {
    let signed_x = _mm512_mask_sub_epi8(x, negative_w, _mm512_setzero_si512(), x);
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), abs_w, signed_x)
}

/// Eight 32-bit partial sums of `w · x` for one block.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
fn block_lanes(w: __m256i, x: __m256i) -> __m256i {
    let signed_x = _mm256_sign_epi8(x, w);
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), signed_x)
}

/// The dot products of the weight row with tokens `first..first + N`, each pair of
/// weight blocks loaded once for all `N`.
///
/// # Safety
/// The CPU must support the features of [`supported`], `acts` must carry
/// `scales_x8`, `first + N` must not pass `acts.rows`, and the row must hold
/// `acts.cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(super) unsafe fn dots<const N: usize>(w: &WeightRow, acts: &Q8Rows, first: usize) -> [f32; N] {
    let blocks = acts.blocks_per_row();
    let pairs = blocks / 2;
    let cols = acts.cols;
    debug_assert_eq!(acts.scales_x8.len(), acts.scales.len() * 8);
    // SAFETY (all pointer reads below): blocks `0..blocks` of the row and of tokens
    // `first..first + N` are inside the slices, as the caller promises.
    let (wq, ws) = (w.quants.as_ptr(), w.scales.as_ptr());
    let xq = unsafe { acts.quants.as_ptr().add(first * cols) };
    let xs = unsafe { acts.scales.as_ptr().add(first * blocks) };
    let xs8 = unsafe { acts.scales_x8.as_ptr().add(first * blocks * 8) };
    let mut acc = [_mm512_setzero_ps(); N];
    for p in 0..pairs {
        let wv = unsafe { _mm512_loadu_si512(wq.add(p * 2 * BLOCK).cast()) };
        let abs_w = _mm512_abs_epi8(wv);
        let negative_w = _mm512_movepi8_mask(wv);
        let dw = unsafe {
            _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(*ws.add(2 * p)),
                _mm512_set1_ps(*ws.add(2 * p + 1)),
            )
        };
        for (j, acc) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm512_loadu_si512(xq.add(j * cols + p * 2 * BLOCK).cast()) };
            let lanes = pair_lanes(abs_w, negative_w, x);
            let dx = unsafe { _mm512_loadu_ps(xs8.add((j * blocks + 2 * p) * 8)) };
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), _mm512_mul_ps(dw, dx), *acc);
        }
    }
    let mut out = [0f32; N];
    for (j, out) in out.iter_mut().enumerate() {
        *out = _mm512_reduce_add_ps(acc[j]);
        if blocks % 2 == 1 {
            let b = blocks - 1;
            let (wv, x) = unsafe {
                (
                    _mm256_loadu_si256(wq.add(b * BLOCK).cast()),
                    _mm256_loadu_si256(xq.add(j * cols + b * BLOCK).cast()),
                )
            };
            let lanes = _mm256_cvtepi32_ps(block_lanes(wv, x));
            *out += unsafe { *ws.add(b) * *xs.add(j * blocks + b) } * horizontal_sum(lanes);
        }
    }
    out
}

/// The exact integer sum of each block, by the same instructions as the kernel: pairs
/// of blocks through the 512-bit sequence, an odd last block through the 256-bit one.
///
/// # Safety
/// The CPU must support the features of [`supported`].
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(super) unsafe fn block_sums(w: &[i8], x: &[i8]) -> Vec<i32> {
    let blocks = w.len() / BLOCK;
    let mut sums = Vec::with_capacity(blocks);
    for p in 0..blocks / 2 {
        let at = p * 2 * BLOCK;
        // SAFETY: two whole blocks from `at` are inside both slices.
        let (wv, xv) = unsafe {
            (
                _mm512_loadu_si512(w.as_ptr().add(at).cast()),
                _mm512_loadu_si512(x.as_ptr().add(at).cast()),
            )
        };
        let lanes = pair_lanes(_mm512_abs_epi8(wv), _mm512_movepi8_mask(wv), xv);
        let mut out = [0i32; 16];
        // SAFETY: `out` holds sixteen i32.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), lanes) };
        sums.push(out[..8].iter().sum());
        sums.push(out[8..].iter().sum());
    }
    if blocks % 2 == 1 {
        let at = (blocks - 1) * BLOCK;
        // SAFETY: one whole block from `at` is inside both slices.
        let (wv, xv) = unsafe {
            (
                _mm256_loadu_si256(w.as_ptr().add(at).cast()),
                _mm256_loadu_si256(x.as_ptr().add(at).cast()),
            )
        };
        let mut out = [0i32; 8];
        // SAFETY: `out` holds eight i32.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), block_lanes(wv, xv)) };
        sums.push(out.iter().sum());
    }
    sums
}

/// Never called off x86-64: [`supported`] is false there.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn dots<const N: usize>(w: &WeightRow, acts: &Q8Rows, first: usize) -> [f32; N] {
    super::scalar::dots::<N>(w, acts, first)
}

/// Eight 32-bit partial sums of `q · x` for one block of unsigned nibbles.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
fn nibble_lanes(q: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, x)
}

/// `value` in byte `j` where bit `j` of `bits` is set, 0 elsewhere: the bits are a
/// byte mask as they are.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
fn bit_bytes(bits: u32, value: i8) -> __m256i {
    _mm256_maskz_set1_epi8(bits, value)
}

nibble_kernels!(
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma",
    nibble_lanes,
    bit_bytes
);
