//! The activations' side of every product: rows of f32 quantized on the fly to Q8_0
//! blocks, with what each format's kernels read besides.

use super::BLOCK;

crate::simd::vectorized! {
    /// Quantizes each group of `group` values (a multiple of 32) of `values` with one
    /// scale, written to each of its blocks of 32 in `scales`, into `quants`: the hot
    /// loop of every product's activations, so compiled for AVX2 where the CPU has it
    /// (baseline x86-64 has no rounding instruction).
    fn quantize_blocks / quantize_blocks_baseline(
        values: &[f32],
        group: usize,
        scales: &mut [f32],
        quants: &mut [i8],
    ) {
        for (values, (scales, out)) in values.chunks_exact(group).zip(
            scales
                .chunks_exact_mut(group / BLOCK)
                .zip(quants.chunks_exact_mut(group)),
        ) {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inverse = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            // llama.cpp keeps a block of 32's scale in f16 (`block_q8_0`), one of 256's
            // in f32 (`block_q8_K`); rounding ours the same way keeps our sums its sums.
            let d = amax / 127.0;
            scales.fill(if group == BLOCK { half::f16::from_f32(d).to_f32() } else { d });
            for (q, &v) in out.iter_mut().zip(values) {
                *q = (v * inverse).round_ties_even() as i8;
            }
        }
    }
}

/// Rows quantized to Q8_0 blocks: the activations' side of a product.
pub(super) struct Q8Rows {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) scales: Vec<f32>,
    pub(super) quants: Vec<i8>,
    /// Each block's value sum, `d * Σ q`, for the 4-bit kernels (their offsets
    /// multiply it).
    pub(super) sums: Vec<f32>,
    /// Each scale repeated 8 times, for the 512-bit path that multiplies two blocks'
    /// eight lanes at once.
    pub(super) scales_x8: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes each block of 32 to `x · 127 / max|x|` rounded half to even, with the
    /// scale `max|x| / 127` rounded to f16, as llama.cpp's `quantize_row_q8_0` (so no
    /// byte is ever -128).
    pub(super) fn quantize(values: &[f32], rows: usize, cols: usize) -> Self {
        Self::quantize_by(values, rows, cols, BLOCK)
    }

    /// Like [`Q8Rows::quantize`], with one scale per `group` values (a multiple of 32
    /// dividing `cols`): 256 for the K-quants' products, as llama.cpp's
    /// `quantize_row_q8_K`, so that our sums are the ones llama.cpp computes.
    pub(super) fn quantize_by(values: &[f32], rows: usize, cols: usize, group: usize) -> Self {
        assert!(group.is_multiple_of(BLOCK) && cols.is_multiple_of(group));
        let mut scales = vec![0f32; values.len() / BLOCK];
        let mut quants = vec![0i8; values.len()];
        quantize_blocks(values, group, &mut scales, &mut quants);
        Self {
            rows,
            cols,
            scales,
            quants,
            sums: Vec::new(),
            scales_x8: Vec::new(),
        }
    }

    /// Adds each block's value sum, `d Σ q`; rounded to f16 when `in_f16`, as
    /// llama.cpp's `block_q8_1` holds it for the formats with an offset (Q4_1, Q5_1).
    pub(super) fn with_sums(mut self, in_f16: bool) -> Self {
        self.sums = self
            .quants
            .chunks_exact(BLOCK)
            .zip(&self.scales)
            .map(|(block, d)| {
                let sum = d * block.iter().map(|&q| i32::from(q)).sum::<i32>() as f32;
                if in_f16 {
                    half::f16::from_f32(sum).to_f32()
                } else {
                    sum
                }
            })
            .collect();
        self
    }

    pub(super) fn with_scales_x8(mut self) -> Self {
        self.scales_x8 = self
            .scales
            .iter()
            .flat_map(|&s| std::iter::repeat_n(s, 8))
            .collect();
        self
    }

    pub(super) fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn quantized_blocks_round_half_to_even_within_127() {
        let mut x = vec![0f32; 32];
        x[0] = -127.0; // the scale is 1
        x[1] = 62.5; // -> 62
        x[2] = -63.5; // -> -64
        x[3] = 0.5; // -> 0
        let q = Q8Rows::quantize(&x, 1, 32);
        assert_eq!(q.scales[0], 1.0);
        assert_eq!(&q.quants[..5], &[-127, 62, -64, 0, 0]);
        // A block's scale is kept in f16, as llama.cpp's.
        let mut x = vec![0f32; 32];
        x[0] = -2.0;
        let q = Q8Rows::quantize(&x, 1, 32);
        let d = half::f16::from_f32(2.0 / 127.0).to_f32();
        assert!(d != 2.0 / 127.0 && q.scales[0] == d);
    }

    #[test]
    fn a_group_of_256_shares_one_scale_over_its_eight_blocks() {
        let mut x = vec![0.5f32; 512];
        x[300] = -2.0;
        let q = Q8Rows::quantize_by(&x, 1, 512, 256);
        assert!(q.scales[..8].iter().all(|&d| d == 0.5 / 127.0));
        assert!(q.scales[8..].iter().all(|&d| d == 2.0 / 127.0));
        assert_eq!((q.quants[0], q.quants[300], q.quants[301]), (127, -127, 32));
    }

    #[test]
    fn the_avx2_copy_of_the_activation_quantizer_computes_the_baseline_bytes() {
        // On a CPU without AVX2 both calls run the baseline copy (see `crate::simd`).
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let x: Vec<f32> = (0..32 * 40).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let (mut wide, mut baseline) = (
            (vec![0f32; 40], vec![0i8; x.len()]),
            (vec![0f32; 40], vec![0i8; x.len()]),
        );
        for group in [32, 256] {
            let x = &x[..x.len() / group * group];
            quantize_blocks(x, group, &mut wide.0, &mut wide.1);
            quantize_blocks_baseline(x, group, &mut baseline.0, &mut baseline.1);
            assert_eq!(wide, baseline);
            assert!(wide.1.iter().any(|&q| q.abs() == 127));
        }
    }
}
