//! The portable path, and the reference the SIMD paths are held to.

use super::nibble::NibbleRow;
use super::q6::Q6Row;
use super::{Q8Rows, WeightRow, BLOCK};

/// The exact integer dot product of one weight block and one activation block.
pub(super) fn block_dot(w: &[i8], x: &[i8]) -> i32 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// A weight row's dot products with tokens `first..first + N`: for each token, the sum
/// over the row's blocks `b` of `block(b, the token's activation block b, its index in
/// acts' scales and sums)`, in block order. Every format's portable kernel.
fn by_blocks<const N: usize>(
    acts: &Q8Rows,
    first: usize,
    block: impl Fn(usize, &[i8], usize) -> f32,
) -> [f32; N] {
    let blocks = acts.blocks_per_row();
    std::array::from_fn(|j| {
        let t = first + j;
        let xq = &acts.quants[t * acts.cols..(t + 1) * acts.cols];
        (0..blocks)
            .map(|b| block(b, &xq[b * BLOCK..(b + 1) * BLOCK], t * blocks + b))
            .sum()
    })
}

/// The dot products of the weight row with tokens `first..first + N`.
pub(super) fn dots<const N: usize>(w: &WeightRow, acts: &Q8Rows, first: usize) -> [f32; N] {
    by_blocks(acts, first, |b, x, at| {
        w.scales[b] * acts.scales[at] * block_dot(&w.quants[b * BLOCK..(b + 1) * BLOCK], x) as f32
    })
}

/// Value `j` of a block of nibbles with its high bits (`planes[k]` bit `j` is the
/// value's bit `4 + k`).
fn unpacked(nibbles: &[u8], planes: &[u32], j: usize) -> i32 {
    let nibble = if j < 16 {
        nibbles[j] & 15
    } else {
        nibbles[j - 16] >> 4
    };
    let high = planes
        .iter()
        .enumerate()
        .map(|(k, bits)| (((bits >> j) & 1) << (4 + k)) as i32)
        .sum::<i32>();
    i32::from(nibble) + high
}

/// The exact integer dot product of one block of 4- or 5-bit values (value `j` in the
/// low half of byte `j`, value `j + 16` in its high half, their fifth bits in one word,
/// 0 for the 4-bit formats) with one activation block.
pub(super) fn nibble_block_dot(nibbles: &[u8], fifth_bits: u32, x: &[i8]) -> i32 {
    (0..BLOCK)
        .map(|j| unpacked(nibbles, &[fifth_bits], j) * i32::from(x[j]))
        .sum()
}

/// The dot products of a 4- or 5-bit weight row with tokens `first..first + N`.
pub(super) fn nibble_dots<const N: usize>(w: &NibbleRow, acts: &Q8Rows, first: usize) -> [f32; N] {
    by_blocks(acts, first, |b, x, at| {
        let nibbles = &w.nibbles[b * BLOCK / 2..(b + 1) * BLOCK / 2];
        let fifth_bits = w.fifth_bits.get(b).copied().unwrap_or(0);
        let integer = nibble_block_dot(nibbles, fifth_bits, x);
        w.scales[b] * acts.scales[at] * integer as f32 + w.offsets[b] * acts.sums[at]
    })
}

/// The exact integer sum of one Q6_K block of 32 with one activation block:
/// `sc₀ Σ₀ (q - 32) x + sc₁ Σ₁ (q - 32) x` over its two sub-blocks of 16.
pub(super) fn q6_block_dot(
    nibbles: &[u8],
    high_bits: [u32; 2],
    half_scales: [i8; 2],
    x: &[i8],
) -> i32 {
    (0..BLOCK)
        .map(|j| {
            let q = unpacked(nibbles, &high_bits, j) - 32;
            i32::from(half_scales[j / 16]) * q * i32::from(x[j])
        })
        .sum()
}

/// The dot products of a Q6_K weight row with tokens `first..first + N`.
pub(super) fn q6_dots<const N: usize>(w: &Q6Row, acts: &Q8Rows, first: usize) -> [f32; N] {
    by_blocks(acts, first, |b, x, at| {
        let integer = q6_block_dot(
            &w.nibbles[b * BLOCK / 2..(b + 1) * BLOCK / 2],
            [w.high_bits[2 * b], w.high_bits[2 * b + 1]],
            [w.half_scales[2 * b], w.half_scales[2 * b + 1]],
            x,
        );
        w.scales[b] * acts.scales[at] * integer as f32
    })
}
