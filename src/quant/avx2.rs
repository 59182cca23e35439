//! The AVX2 path: llama.cpp's `maddubs` trick, with the magnitude on the weight side.
//!
//! `vpmaddubsw` multiplies unsigned by signed bytes, so the weight block is made
//! unsigned (`|w|`) and its sign moved onto the activations (`sign(x, w)`). Activations
//! never hold -128 (see `Q8Rows::quantize`), so the negation cannot overflow, and a pair
//! of products is at most 2 x 128 x 127 = 32512: the 16-bit sums never saturate. The
//! integer result is exact, equal to [`super::scalar::block_dot`].

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::nibble::NibbleRow;
use super::q6::Q6Row;
use super::{Q8Rows, WeightRow, BLOCK};

/// Whether this CPU has AVX2 and FMA.
pub(super) fn supported() -> bool {
    crate::simd::has_avx2_fma()
}

/// Eight 32-bit partial sums of `w · x` for one block; `abs_w` is `|w|`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn block_lanes(abs_w: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let signed_x = _mm256_sign_epi8(x, w);
    let pairs = _mm256_maddubs_epi16(abs_w, signed_x);
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// The sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn horizontal_sum(v: __m256) -> f32 {
    let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pairs = _mm_hadd_ps(halves, halves);
    _mm_cvtss_f32(_mm_hadd_ps(pairs, pairs))
}

/// The dot products of the weight row with tokens `first..first + N`, each weight
/// block loaded once for all `N`.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`supported`]), `first + N` must not pass
/// `acts.rows`, and the row must hold `acts.cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dots<const N: usize>(w: &WeightRow, acts: &Q8Rows, first: usize) -> [f32; N] {
    let blocks = acts.blocks_per_row();
    let cols = acts.cols;
    // SAFETY (all pointer reads below): blocks `0..blocks` of the row and of tokens
    // `first..first + N` are inside the slices, as the caller promises.
    let (wq, ws) = (w.quants.as_ptr(), w.scales.as_ptr());
    let xq = unsafe { acts.quants.as_ptr().add(first * cols) };
    let xs = unsafe { acts.scales.as_ptr().add(first * blocks) };
    let mut acc = [_mm256_setzero_ps(); N];
    for b in 0..blocks {
        let wv = unsafe { _mm256_loadu_si256(wq.add(b * BLOCK).cast()) };
        let abs_w = _mm256_sign_epi8(wv, wv);
        let dw = unsafe { *ws.add(b) };
        for (j, acc) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm256_loadu_si256(xq.add(j * cols + b * BLOCK).cast()) };
            let lanes = block_lanes(abs_w, wv, x);
            let scale = _mm256_set1_ps(dw * unsafe { *xs.add(j * blocks + b) });
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), scale, *acc);
        }
    }
    let mut out = [0f32; N];
    for (out, acc) in out.iter_mut().zip(acc) {
        *out = horizontal_sum(acc);
    }
    out
}

/// The exact integer sum of each block pair, by the same instructions as the kernel.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`supported`]).
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn block_sums(w: &[i8], x: &[i8]) -> Vec<i32> {
    w.chunks_exact(BLOCK)
        .zip(x.chunks_exact(BLOCK))
        .map(|(wb, xb)| {
            // SAFETY: both chunks are exactly 32 bytes.
            let (wv, xv) = unsafe {
                (
                    _mm256_loadu_si256(wb.as_ptr().cast()),
                    _mm256_loadu_si256(xb.as_ptr().cast()),
                )
            };
            let lanes = block_lanes(_mm256_sign_epi8(wv, wv), wv, xv);
            let mut out = [0i32; 8];
            // SAFETY: `out` holds eight i32.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), lanes) };
            out.iter().sum()
        })
        .collect()
}

/// Never called off x86-64: [`supported`] is false there.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn dots<const N: usize>(w: &WeightRow, acts: &Q8Rows, first: usize) -> [f32; N] {
    super::scalar::dots::<N>(w, acts, first)
}

/// The 32 nibbles of a 4-bit block as unsigned bytes, in value order.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn unpack_nibbles(packed: __m128i) -> __m256i {
    let low = _mm_set1_epi8(0x0F);
    let high = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
    _mm256_set_m128i(high, _mm_and_si128(packed, low))
}

/// Eight 32-bit partial sums of `q · x` for one block of unsigned nibbles.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn nibble_lanes(q: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1))
}

/// `value` in byte `j` where bit `j` of `bits` is set, 0 elsewhere (llama.cpp's
/// `bytes_from_bits_32`: each byte picks its bit's byte, then tests its bit).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn bit_bytes(bits: u32, value: i8) -> __m256i {
    let which_byte = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), which_byte);
    let which_bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, which_bit), which_bit);
    _mm256_and_si256(set, _mm256_set1_epi8(value))
}

nibble_kernels!("avx2,fma", nibble_lanes, bit_bytes);
