//! The portable path, and the reference the SIMD paths are held to.

use super::q4::Q4Row;
use super::{Q8Rows, WeightRow, BLOCK};

/// The exact integer dot product of one weight block and one activation block.
pub(super) fn block_dot(w: &[i8], x: &[i8]) -> i32 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// The dot products of the weight row with tokens `first..first + N`.
pub(super) fn dots<const N: usize>(w: &WeightRow, acts: &Q8Rows, first: usize) -> [f32; N] {
    let blocks = acts.blocks_per_row();
    std::array::from_fn(|j| {
        let t = first + j;
        let xq = &acts.quants[t * acts.cols..(t + 1) * acts.cols];
        let xs = &acts.scales[t * blocks..(t + 1) * blocks];
        (0..blocks)
            .map(|b| {
                let range = b * BLOCK..(b + 1) * BLOCK;
                w.scales[b] * xs[b] * block_dot(&w.quants[range.clone()], &xq[range]) as f32
            })
            .sum()
    })
}

/// The exact integer dot product of one block of nibbles (value `j` in the low half
/// of byte `j`, value `j + 16` in its high half) with one activation block.
pub(super) fn q4_block_dot(nibbles: &[u8], x: &[i8]) -> i32 {
    nibbles
        .iter()
        .enumerate()
        .map(|(j, &n)| {
            i32::from(n & 15) * i32::from(x[j]) + i32::from(n >> 4) * i32::from(x[j + 16])
        })
        .sum()
}

/// The dot products of a 4-bit weight row with tokens `first..first + N`.
pub(super) fn q4_dots<const N: usize>(w: &Q4Row, acts: &Q8Rows, first: usize) -> [f32; N] {
    let blocks = acts.blocks_per_row();
    std::array::from_fn(|j| {
        let t = first + j;
        let xq = &acts.quants[t * acts.cols..(t + 1) * acts.cols];
        (0..blocks)
            .map(|b| {
                let nibbles = &w.nibbles[b * BLOCK / 2..(b + 1) * BLOCK / 2];
                let integer = q4_block_dot(nibbles, &xq[b * BLOCK..(b + 1) * BLOCK]);
                w.scales[b] * acts.scales[t * blocks + b] * integer as f32
                    + w.offsets[b] * acts.sums[t * blocks + b]
            })
            .sum()
    })
}
