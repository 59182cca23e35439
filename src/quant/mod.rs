//! Integer matrix kernels for the quantized GGUF formats (Q8_0, Q4_0, Q4_1, Q5_0,
//! Q5_1, Q4_K, Q5_K, Q6_K), as llama.cpp runs them.
//!
//! A Q8_0 weight matrix is kept as blocks of 32 signed bytes with one f32 scale each;
//! the 4- and 5-bit formats as blocks of 32 unsigned values with a scale and an offset
//! ([`nibble`]), Q6_K as blocks of 32 with two integer sub-block scales ([`q6`]); the
//! files' own layouts are read in one place, [`blocks`]. The
//! activations are quantized the same way on the fly (one scale per 32 values), so every
//! block product is an exact integer dot product times two scales (for the K-quants
//! one activation scale spans 256 values, as llama.cpp's `Q8_K`). The integer part runs
//! on the widest instructions this CPU has, found at run time ([`Isa::detect`]): AVX-512
//! VNNI, AVX2, or portable Rust. Every path computes the same integer sums bit for bit
//! (the property tests in [`scalar`] pin it); only the order of the float accumulation
//! differs. Where the CPU has AVX-512 VNNI or AVX2, the LLM's Q8_0 matrices are
//! repacked in tiles of 16 rows ([`Q8Tiles`]), whose kernels need no horizontal sums.
//!
//! The files: [`q8`], [`nibble`] and [`q6`] hold the formats, [`activations`] the
//! quantized activations, [`product`] the driver every format's product runs through
//! (one dispatch from a row to its instruction set's kernel), and [`scalar`], [`avx2`],
//! [`avx512`] and [`tiles`] the kernels.
//!
//! Work is split over candle's kernel thread pool (`candle_core::utils::barrier_pool`,
//! spinning workers that start a product in microseconds, where rayon's sleeping ones
//! take tens), so the LLM's kernels and candle's share one set of `--threads` threads.

/// The 4-, 5- and 6-bit kernels (and their test twins) of one instruction set:
/// `$features` enables them, `$lanes` gives a block's eight partial sums of unsigned
/// values times activations, `$bit_bytes(bits, v)` a register holding `v` in byte `j`
/// where bit `j` of `bits` is set. The paths differ only there, so one text serves both.
macro_rules! nibble_kernels {
    ($features:literal, $lanes:ident, $bit_bytes:ident) => {
        /// A block's 32 values from its nibbles and, for 5-bit formats (`FIFTH`), its
        /// fifth bits.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = $features)]
        fn unpack_values<const FIFTH: bool>(
            nibbles: &[u8],
            fifth_bits: &[u32],
            b: usize,
        ) -> __m256i {
            // SAFETY: the caller passes a block index inside the row.
            let packed = unsafe { _mm_loadu_si128(nibbles.as_ptr().add(b * BLOCK / 2).cast()) };
            let q = unpack_nibbles(packed);
            if FIFTH {
                _mm256_or_si256(q, $bit_bytes(fifth_bits[b], 16))
            } else {
                q
            }
        }

        /// The dot products of a 4-bit (or, with `FIFTH`, 5-bit) weight row with
        /// tokens `first..first + N`.
        ///
        /// # Safety
        /// As [`dots`], and `acts` must carry `sums`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn nibble_dots<const N: usize, const FIFTH: bool>(
            w: &NibbleRow,
            acts: &Q8Rows,
            first: usize,
        ) -> [f32; N] {
            let blocks = acts.blocks_per_row();
            let cols = acts.cols;
            // SAFETY (all pointer reads below): blocks `0..blocks` of the row and of tokens
            // `first..first + N` are inside the slices, as the caller promises.
            let xq = unsafe { acts.quants.as_ptr().add(first * cols) };
            let mut acc = [_mm256_setzero_ps(); N];
            let mut offsets = [0f32; N];
            for b in 0..blocks {
                let q = unpack_values::<FIFTH>(w.nibbles, w.fifth_bits, b);
                for j in 0..N {
                    let at = (first + j) * blocks + b;
                    let x = unsafe { _mm256_loadu_si256(xq.add(j * cols + b * BLOCK).cast()) };
                    let scale = _mm256_set1_ps(w.scales[b] * acts.scales[at]);
                    acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps($lanes(q, x)), scale, acc[j]);
                    offsets[j] += w.offsets[b] * acts.sums[at];
                }
            }
            let mut out = [0f32; N];
            for j in 0..N {
                out[j] = horizontal_sum(acc[j]) + offsets[j];
            }
            out
        }

        /// Eight 32-bit partial sums of one Q6_K block of 32 times `x`: `(q - 32) x`
        /// in pairs (at most 2 x 32 x 127 in magnitude), widened by the sub-block
        /// scales.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = $features)]
        fn q6_lanes(q: __m256i, half_scales: __m256i, x: __m256i) -> __m256i {
            let pairs = _mm256_sub_epi16(
                _mm256_maddubs_epi16(q, x),
                _mm256_maddubs_epi16(_mm256_set1_epi8(32), x),
            );
            _mm256_madd_epi16(pairs, half_scales)
        }

        /// A Q6_K block's 32 six-bit values and its sub-block scales as 16-bit lanes
        /// (the first eight pairs of values are the first sub-block's).
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = $features)]
        fn q6_block(w: &Q6Row, b: usize) -> (__m256i, __m256i) {
            // SAFETY: the caller passes a block index inside the row.
            let packed = unsafe { _mm_loadu_si128(w.nibbles.as_ptr().add(b * BLOCK / 2).cast()) };
            let q = _mm256_or_si256(
                unpack_nibbles(packed),
                _mm256_or_si256(
                    $bit_bytes(w.high_bits[2 * b], 16),
                    $bit_bytes(w.high_bits[2 * b + 1], 32),
                ),
            );
            let half_scales = _mm256_set_m128i(
                _mm_set1_epi16(i16::from(w.half_scales[2 * b + 1])),
                _mm_set1_epi16(i16::from(w.half_scales[2 * b])),
            );
            (q, half_scales)
        }

        /// The dot products of a Q6_K weight row with tokens `first..first + N`.
        ///
        /// # Safety
        /// As [`dots`].
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn q6_dots<const N: usize>(
            w: &Q6Row,
            acts: &Q8Rows,
            first: usize,
        ) -> [f32; N] {
            let blocks = acts.blocks_per_row();
            let cols = acts.cols;
            // SAFETY (all pointer reads below): as in `nibble_dots`.
            let xq = unsafe { acts.quants.as_ptr().add(first * cols) };
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..blocks {
                let (q, half_scales) = q6_block(w, b);
                for j in 0..N {
                    let at = (first + j) * blocks + b;
                    let x = unsafe { _mm256_loadu_si256(xq.add(j * cols + b * BLOCK).cast()) };
                    let scale = _mm256_set1_ps(w.scales[b] * acts.scales[at]);
                    let lanes = q6_lanes(q, half_scales, x);
                    acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), scale, acc[j]);
                }
            }
            let mut out = [0f32; N];
            for j in 0..N {
                out[j] = horizontal_sum(acc[j]);
            }
            out
        }

        /// The exact integer sum of each 4- or 5-bit block, by the same instructions as
        /// the kernel (`fifth_bits` empty for 4-bit blocks).
        ///
        /// # Safety
        /// The CPU must support the path's features ([`supported`]).
        #[cfg(all(test, target_arch = "x86_64"))]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn nibble_block_sums(
            nibbles: &[u8],
            fifth_bits: &[u32],
            x: &[i8],
        ) -> Vec<i32> {
            (0..x.len() / BLOCK)
                .map(|b| {
                    let q = if fifth_bits.is_empty() {
                        unpack_values::<false>(nibbles, fifth_bits, b)
                    } else {
                        unpack_values::<true>(nibbles, fifth_bits, b)
                    };
                    // SAFETY: block `b` of `x` is 32 bytes inside it.
                    let xv = unsafe { _mm256_loadu_si256(x.as_ptr().add(b * BLOCK).cast()) };
                    lane_sum($lanes(q, xv))
                })
                .collect()
        }

        /// The exact integer sum of each Q6_K block of 32, by the same instructions as
        /// the kernel.
        ///
        /// # Safety
        /// The CPU must support the path's features ([`supported`]).
        #[cfg(all(test, target_arch = "x86_64"))]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn q6_block_sums(w: &Q6Row, x: &[i8]) -> Vec<i32> {
            (0..x.len() / BLOCK)
                .map(|b| {
                    let (q, half_scales) = q6_block(w, b);
                    // SAFETY: block `b` of `x` is 32 bytes inside it.
                    let xv = unsafe { _mm256_loadu_si256(x.as_ptr().add(b * BLOCK).cast()) };
                    lane_sum(q6_lanes(q, half_scales, xv))
                })
                .collect()
        }

        /// The sum of eight 32-bit lanes.
        #[cfg(all(test, target_arch = "x86_64"))]
        #[target_feature(enable = $features)]
        fn lane_sum(lanes: __m256i) -> i32 {
            let mut out = [0i32; 8];
            // SAFETY: `out` holds eight i32.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), lanes) };
            out.iter().sum()
        }

        /// Never called off x86-64: [`supported`] is false there.
        #[cfg(not(target_arch = "x86_64"))]
        pub(super) unsafe fn nibble_dots<const N: usize, const FIFTH: bool>(
            w: &NibbleRow,
            acts: &Q8Rows,
            first: usize,
        ) -> [f32; N] {
            super::scalar::nibble_dots::<N>(w, acts, first)
        }

        /// Never called off x86-64: [`supported`] is false there.
        #[cfg(not(target_arch = "x86_64"))]
        pub(super) unsafe fn q6_dots<const N: usize>(
            w: &Q6Row,
            acts: &Q8Rows,
            first: usize,
        ) -> [f32; N] {
            super::scalar::q6_dots::<N>(w, acts, first)
        }
    };
}

mod activations;
mod avx2;
mod avx512;
mod blocks;
mod nibble;
mod product;
mod q6;
mod q8;
mod scalar;
mod tiles;

pub use blocks::BlockFormat;
pub use nibble::NibbleMatrix;
pub use q6::Q6Matrix;
pub use q8::{Q8Matrix, Q8Weights};
pub use tiles::Q8Tiles;

use activations::Q8Rows;
use product::SharedOut;
use q8::WeightRow;

/// Values per quantization block.
pub const BLOCK: usize = 32;

/// The instruction sets a kernel can be written for, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 512-bit registers with `vpdpbusd` (two blocks per instruction).
    Avx512Vnni,
    /// 256-bit registers with `vpmaddubsw` / `vpmaddwd`, as llama.cpp's AVX2 path.
    Avx2,
    /// Plain Rust, for any CPU.
    Portable,
}

impl Isa {
    /// The best path this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if avx512::supported() {
                return Self::Avx512Vnni;
            }
            if avx2::supported() {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every path this CPU can run, best first (benchmarks and tests compare them).
    pub fn available() -> Vec<Self> {
        [Self::Avx512Vnni, Self::Avx2, Self::Portable]
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }

    fn is_supported(self) -> bool {
        match self {
            Self::Avx512Vnni => avx512::supported(),
            Self::Avx2 => avx2::supported(),
            Self::Portable => true,
        }
    }

    /// A short name for logs and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }
}

/// What can be wrong with a matrix handed to [`Q8Matrix`].
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The row length is not a whole number of blocks.
    #[error("a row of {cols} values is not a multiple of the format's {block}")]
    RaggedRow {
        /// Values in a row.
        cols: usize,
        /// Values in one block of the format.
        block: usize,
    },
    /// The format is not one this matrix type reads.
    #[error("{0} weights are not read by this kernel")]
    Unsupported(&'static str),
    /// The bytes do not hold rows x cols values of the format.
    #[error("expected {expected} bytes of {format} data, got {actual}")]
    Size {
        /// The format's name.
        format: &'static str,
        /// Bytes a matrix of that shape takes.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::product::RowKernel;
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// The float product of the dequantized operands, in f64.
    fn reference(m: &Q8Matrix, x: &[f32], tokens: usize) -> Vec<f32> {
        let acts = Q8Rows::quantize(x, tokens, m.cols);
        let deq = |q: &[i8], s: &[f32], i: usize| f64::from(q[i]) * f64::from(s[i / BLOCK]);
        let mut out = vec![0f32; tokens * m.rows];
        for t in 0..tokens {
            for r in 0..m.rows {
                let mut sum = 0f64;
                for c in 0..m.cols {
                    sum += deq(&m.quants[r * m.cols..], &m.scales[r * m.cols / BLOCK..], c)
                        * deq(
                            &acts.quants[t * m.cols..],
                            &acts.scales[t * m.cols / BLOCK..],
                            c,
                        );
                }
                out[t * m.rows + r] = sum as f32;
            }
        }
        out
    }

    #[test]
    fn every_path_matches_the_dequantized_product() {
        // Odd block counts and token counts exercise the 512-bit path's one-block tail
        // and the four-token tiles' remainder; 131 tokens take the token-split path.
        for (rows, cols, tokens) in [
            (7, 96, 1),
            (5, 64, 6),
            (33, 160, 9),
            (3, 32, 4),
            (9, 64, 131),
        ] {
            let m = Q8Matrix::quantize(&random(rows * cols, 1), rows, cols).unwrap();
            let x = random(tokens * cols, 2);
            let want = reference(&m, &x, tokens);
            for isa in Isa::available() {
                let got = m.matmul_with(isa, &x, tokens);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-4,
                        "{isa:?} {rows}x{cols}x{tokens}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_integer_sums_equal_the_scalar_ones_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for trial in 0..500 {
            let blocks = 1 + trial % 7;
            // Weights may hold -128 (a GGUF file may); our activations never do.
            let w: Vec<i8> = (0..blocks * BLOCK).map(|_| rng.gen()).collect();
            let x: Vec<i8> = (0..blocks * BLOCK)
                .map(|_| rng.gen_range(-127..=127))
                .collect();
            let mut extremes = w.clone();
            extremes.iter_mut().step_by(3).for_each(|v| *v = -128);
            for w in [&w, &extremes] {
                let want: Vec<i32> = w
                    .chunks_exact(BLOCK)
                    .zip(x.chunks_exact(BLOCK))
                    .map(|(a, b)| scalar::block_dot(a, b))
                    .collect();
                if avx2::supported() {
                    // SAFETY: the CPU reports AVX2 and FMA.
                    assert_eq!(unsafe { avx2::block_sums(w, &x) }, want);
                }
                if avx512::supported() {
                    // SAFETY: the CPU reports AVX-512 VNNI.
                    assert_eq!(unsafe { avx512::block_sums(w, &x) }, want);
                }
            }
        }
    }

    /// Random GGUF bytes of `format` for a `rows x cols` matrix: every byte random but
    /// the f16 scales, kept small and finite.
    fn random_gguf(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let blocks = rows * cols / format.block_values();
        let mut bytes: Vec<u8> = (0..blocks * format.block_bytes())
            .map(|_| rng.gen())
            .collect();
        let f16_fields: &[usize] = match format {
            BlockFormat::Q4_0 | BlockFormat::Q5_0 => &[0],
            BlockFormat::Q4_1 | BlockFormat::Q5_1 | BlockFormat::Q4K | BlockFormat::Q5K => &[0, 2],
            BlockFormat::Q6K => &[208],
        };
        for block in bytes.chunks_exact_mut(format.block_bytes()) {
            for &at in f16_fields {
                let v = half::f16::from_f32(rng.gen_range(-0.05..0.05));
                block[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        bytes
    }

    /// `x · wᵀ` of dequantized weights with the quantized activations, in f64.
    fn dequantized_product(weights: &[f32], acts: &Q8Rows, rows: usize) -> Vec<f64> {
        let cols = acts.cols;
        let mut out = Vec::with_capacity(acts.rows * rows);
        for t in 0..acts.rows {
            for r in 0..rows {
                out.push(
                    (0..cols)
                        .map(|c| {
                            f64::from(weights[r * cols + c])
                                * f64::from(acts.quants[t * cols + c])
                                * f64::from(acts.scales[(t * cols + c) / BLOCK])
                        })
                        .sum(),
                );
            }
        }
        out
    }

    #[test]
    fn every_path_matches_the_dequantized_4_5_and_6_bit_products() {
        use BlockFormat::*;
        for format in [Q4_0, Q4_1, Q5_0, Q5_1, Q4K, Q5K, Q6K] {
            // 131 tokens take the token-split path.
            for (rows, cols, tokens) in [(5, 256, 1), (7, 512, 6), (3, 256, 131)] {
                let bytes = random_gguf(format, rows, cols, 3);
                let x = random(tokens * cols, 5);
                let acts = Q8Rows::quantize_by(&x, tokens, cols, format.block_values());
                let (weights, products): (Vec<f32>, Vec<Vec<f32>>) = if format == Q6K {
                    let m = Q6Matrix::from_gguf(&bytes, rows, cols).unwrap();
                    let paths = Isa::available().into_iter();
                    (
                        m.dequantize(),
                        paths.map(|isa| m.matmul_with(isa, &x, tokens)).collect(),
                    )
                } else {
                    let m = NibbleMatrix::from_gguf(format, &bytes, rows, cols).unwrap();
                    let paths = Isa::available().into_iter();
                    (
                        m.dequantize(),
                        paths.map(|isa| m.matmul_with(isa, &x, tokens)).collect(),
                    )
                };
                let want = dequantized_product(&weights, &acts, rows);
                for (isa, got) in Isa::available().into_iter().zip(products) {
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (f64::from(*g) - w).abs() < 1e-3 * w.abs().max(1.0),
                            "{format:?} {isa:?}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_4_and_5_bit_integer_sums_equal_the_scalar_ones_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for trial in 0..500 {
            let blocks = 1 + trial % 5;
            let nibbles: Vec<u8> = (0..blocks * BLOCK / 2).map(|_| rng.gen()).collect();
            let fifth_bits: Vec<u32> = (0..blocks).map(|_| rng.gen()).collect();
            let x: Vec<i8> = (0..blocks * BLOCK)
                .map(|_| rng.gen_range(-127..=127))
                .collect();
            for fifth_bits in [&[][..], &fifth_bits[..]] {
                let want: Vec<i32> = (0..blocks)
                    .map(|b| {
                        scalar::nibble_block_dot(
                            &nibbles[b * BLOCK / 2..],
                            fifth_bits.get(b).copied().unwrap_or(0),
                            &x[b * BLOCK..(b + 1) * BLOCK],
                        )
                    })
                    .collect();
                if avx2::supported() {
                    // SAFETY: the CPU reports AVX2 and FMA.
                    let got = unsafe { avx2::nibble_block_sums(&nibbles, fifth_bits, &x) };
                    assert_eq!(got, want);
                }
                if avx512::supported() {
                    // SAFETY: the CPU reports AVX-512 VNNI.
                    let got = unsafe { avx512::nibble_block_sums(&nibbles, fifth_bits, &x) };
                    assert_eq!(got, want);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_6_bit_integer_sums_equal_the_scalar_ones_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        for trial in 0..200 {
            let cols = 256 * (1 + trial % 2);
            let mut bytes = random_gguf(BlockFormat::Q6K, 1, cols, trial as u64);
            // The extreme scale, -128, on the first sub-block.
            bytes[192] = 0x80;
            let m = Q6Matrix::from_gguf(&bytes, 1, cols).unwrap();
            let x: Vec<i8> = (0..cols).map(|_| rng.gen_range(-127..=127)).collect();
            let row = m.row(0);
            let want: Vec<i32> = (0..cols / BLOCK)
                .map(|b| {
                    scalar::q6_block_dot(
                        &row.nibbles[b * BLOCK / 2..],
                        [row.high_bits[2 * b], row.high_bits[2 * b + 1]],
                        [row.half_scales[2 * b], row.half_scales[2 * b + 1]],
                        &x[b * BLOCK..(b + 1) * BLOCK],
                    )
                })
                .collect();
            if avx2::supported() {
                // SAFETY: the CPU reports AVX2 and FMA.
                assert_eq!(unsafe { avx2::q6_block_sums(&row, &x) }, want);
            }
            if avx512::supported() {
                // SAFETY: the CPU reports AVX-512 VNNI.
                assert_eq!(unsafe { avx512::q6_block_sums(&row, &x) }, want);
            }
        }
    }

    #[test]
    fn q4_bytes_are_read_with_their_offsets() {
        let mut q4_0 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q4_0.extend([0x21u8; 16]);
        let m = NibbleMatrix::from_gguf(BlockFormat::Q4_0, &q4_0, 1, 32).unwrap();
        let values = m.dequantize();
        // Low nibble 1, high nibble 2: (1 - 8) / 2 and (2 - 8) / 2.
        assert_eq!((values[0], values[16]), (-3.5, -3.0));
        let mut q4_1 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q4_1.extend(half::f16::from_f32(1.0).to_le_bytes());
        q4_1.extend([0x21u8; 16]);
        let m = NibbleMatrix::from_gguf(BlockFormat::Q4_1, &q4_1, 1, 32).unwrap();
        assert_eq!((m.dequantize()[0], m.dequantize()[31]), (1.5, 2.0));
        assert!(NibbleMatrix::from_gguf(BlockFormat::Q4_1, &q4_0, 1, 32).is_err());
        assert!(NibbleMatrix::from_gguf(BlockFormat::Q6K, &[0; 210], 1, 256).is_err());
    }

    #[test]
    fn dequantized_rows_are_the_blocks_times_their_scales() {
        let values: Vec<f32> = (0..3 * 64).map(|i| (i as f32 - 90.0) / 7.0).collect();
        let m = Q8Matrix::quantize(&values, 3, 64).expect("quantizes");
        let rows = m.dequantize_rows(&[2, 0]);
        assert_eq!(rows.len(), 128);
        for (got, (q, block)) in rows[..64].iter().zip(m.quants[128..].iter().zip(0..)) {
            assert_eq!(*got, f32::from(*q) * m.scales[4 + block / 32]);
        }
        for (got, want) in rows[64..].iter().zip(&values[..64]) {
            assert!((got - want).abs() <= m.scales[0].max(m.scales[1]) / 2.0 + 1e-6);
        }
    }

    #[test]
    fn a_zero_block_has_zero_scale_and_bytes() {
        let q = Q8Rows::quantize(&[0f32; 32], 1, 32);
        assert_eq!(q.scales[0], 0.0);
        assert!(q.quants.iter().all(|&b| b == 0));
    }

    #[test]
    fn gguf_bytes_are_read_as_f16_scale_then_bytes() {
        let mut bytes = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        bytes.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let m = Q8Matrix::from_gguf_q8_0(&bytes, 1, 32).unwrap();
        assert_eq!(m.scales, vec![0.5]);
        assert_eq!(m.quants[0], -16);
        assert!(matches!(
            Q8Matrix::from_gguf_q8_0(&bytes[1..], 1, 32),
            Err(QuantError::Size { .. })
        ));
        assert!(matches!(
            Q8Matrix::from_gguf_q8_0(&bytes, 1, 31),
            Err(QuantError::RaggedRow { cols: 31, .. })
        ));
    }
}
