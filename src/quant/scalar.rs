//! The portable path, and the reference the SIMD paths are held to.

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
