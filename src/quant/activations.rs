//! The activations' side of every product: rows of f32 quantized on the fly to Q8_0
//! blocks, with what each format's kernels read besides.

use super::BLOCK;

crate::simd::vectorized! {
    /// Quantizes each block of 32 of `values` into `scales` and `quants`: the hot loop of
    /// every product's activations, so compiled for AVX2 where the CPU has it (baseline
    /// x86-64 has no rounding instruction).
    fn quantize_blocks / quantize_blocks_baseline(
        values: &[f32],
        scales: &mut [f32],
        quants: &mut [i8],
    ) {
        for (block, (scale, out)) in values
            .chunks_exact(BLOCK)
            .zip(scales.iter_mut().zip(quants.chunks_exact_mut(BLOCK)))
        {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
            *scale = d;
            for (q, &v) in out.iter_mut().zip(block) {
                *q = (v * inverse).round() as i8;
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
    /// Quantizes each block of 32 to `round(x / d)` with `d = max|x| / 127`, as
    /// llama.cpp's `quantize_row_q8_0` (so no byte is ever -128).
    pub(super) fn quantize(values: &[f32], rows: usize, cols: usize) -> Self {
        let mut scales = vec![0f32; values.len() / BLOCK];
        let mut quants = vec![0i8; values.len()];
        quantize_blocks(values, &mut scales, &mut quants);
        Self {
            rows,
            cols,
            scales,
            quants,
            sums: Vec::new(),
            scales_x8: Vec::new(),
        }
    }

    pub(super) fn with_sums(mut self) -> Self {
        self.sums = self
            .quants
            .chunks_exact(BLOCK)
            .zip(&self.scales)
            .map(|(block, d)| d * block.iter().map(|&q| i32::from(q)).sum::<i32>() as f32)
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
    fn quantized_blocks_round_half_away_from_zero_within_127() {
        let mut x = vec![0f32; 32];
        x[0] = -2.0;
        x[1] = 1.0; // 63.5 -> 64
        x[2] = -1.0; // -63.5 -> -64
        let q = Q8Rows::quantize(&x, 1, 32);
        assert_eq!(q.scales[0], 2.0 / 127.0);
        assert_eq!(&q.quants[..4], &[-127, 64, -64, 0]);
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
        quantize_blocks(&x, &mut wide.0, &mut wide.1);
        quantize_blocks_baseline(&x, &mut baseline.0, &mut baseline.1);
        assert_eq!(wide, baseline);
        assert!(wide.1.iter().any(|&q| q.abs() == 127));
    }
}
