//! Integer matrix kernels for Q8_0, Q4_0 and Q4_1 weights, as llama.cpp runs them.
//!
//! A Q8_0 weight matrix is kept as blocks of 32 signed bytes with one f32 scale each
//! (the 4-bit formats: [`q4`]). The
//! activations are quantized the same way on the fly (one scale per 32 values), so every
//! block product is an exact integer dot product times two scales. The integer part runs
//! on the widest instructions this CPU has, found at run time ([`Isa::detect`]): AVX-512
//! VNNI, AVX2, or portable Rust. Every path computes the same integer sums bit for bit
//! (the property tests in [`scalar`] pin it); only the order of the float accumulation
//! differs. Where the CPU has AVX-512 VNNI, the LLM's Q8_0 matrices are repacked in
//! tiles of 16 rows ([`Q8Tiles`]), whose kernel needs no horizontal sums.
//!
//! The files: [`q8`] and [`q4`] hold the formats, [`activations`] the quantized
//! activations, [`product`] the driver every format's product runs through (one
//! dispatch from a row to its instruction set's kernel), and [`scalar`], [`avx2`],
//! [`avx512`] and [`tiles`] the kernels.
//!
//! Work is split over candle's kernel thread pool (`candle_core::utils::barrier_pool`,
//! spinning workers that start a product in microseconds, where rayon's sleeping ones
//! take tens), so the LLM's kernels and candle's share one set of `--threads` threads.

/// The 4-bit kernel (and its test twin) of one instruction set: `$features` enables
/// it, `$lanes` gives a block's eight partial sums of nibbles times activations. The
/// paths differ only there, so one text serves both.
macro_rules! nibble_kernels {
    ($features:literal, $lanes:ident) => {
        /// The dot products of a 4-bit weight row with tokens `first..first + N`.
        ///
        /// # Safety
        /// As [`dots`].
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn q4_dots<const N: usize>(
            w: &Q4Row,
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
                let packed =
                    unsafe { _mm_loadu_si128(w.nibbles.as_ptr().add(b * BLOCK / 2).cast()) };
                let q = unpack_nibbles(packed);
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

        /// The exact integer sum of each 4-bit block, by the same instructions as the kernel.
        ///
        /// # Safety
        /// The CPU must support the path's features ([`supported`]).
        #[cfg(all(test, target_arch = "x86_64"))]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn q4_block_sums(nibbles: &[u8], x: &[i8]) -> Vec<i32> {
            nibbles
                .chunks_exact(BLOCK / 2)
                .zip(x.chunks_exact(BLOCK))
                .map(|(nb, xb)| {
                    // SAFETY: the chunks are exactly 16 and 32 bytes.
                    let (packed, xv) = unsafe {
                        (
                            _mm_loadu_si128(nb.as_ptr().cast()),
                            _mm256_loadu_si256(xb.as_ptr().cast()),
                        )
                    };
                    let mut out = [0i32; 8];
                    let lanes = $lanes(unpack_nibbles(packed), xv);
                    // SAFETY: `out` holds eight i32.
                    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), lanes) };
                    out.iter().sum()
                })
                .collect()
        }

        /// Never called off x86-64: [`supported`] is false there.
        #[cfg(not(target_arch = "x86_64"))]
        pub(super) unsafe fn q4_dots<const N: usize>(
            w: &Q4Row,
            acts: &Q8Rows,
            first: usize,
        ) -> [f32; N] {
            super::scalar::q4_dots::<N>(w, acts, first)
        }
    };
}

mod activations;
mod avx2;
mod avx512;
mod product;
mod q4;
mod q8;
mod scalar;
mod tiles;

pub use q4::{Q4Format, Q4Matrix};
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
    #[error("a row of {0} values is not a multiple of {BLOCK}")]
    RaggedRow(usize),
    /// The bytes do not hold rows x cols values of the format.
    #[error("expected {expected} bytes of Q8_0 data, got {actual}")]
    Size {
        /// Bytes a matrix of that shape takes.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn every_path_matches_the_dequantized_4_bit_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for format in [Q4Format::Q4_0, Q4Format::Q4_1] {
            for (rows, cols, tokens) in [(5, 96, 1), (7, 64, 6), (3, 64, 131)] {
                let mut bytes = Vec::new();
                for _ in 0..rows * cols / BLOCK {
                    bytes.extend(half::f16::from_f32(rng.gen_range(0.01..0.1)).to_le_bytes());
                    if format == Q4Format::Q4_1 {
                        bytes.extend(half::f16::from_f32(rng.gen_range(-0.5..0.5)).to_le_bytes());
                    }
                    bytes.extend((0..BLOCK / 2).map(|_| rng.gen::<u8>()));
                }
                let m = Q4Matrix::from_gguf(format, &bytes, rows, cols).unwrap();
                let weights = m.dequantize();
                let x = random(tokens * cols, 5);
                let acts = Q8Rows::quantize(&x, tokens, cols);
                for isa in Isa::available() {
                    let got = m.matmul_with(isa, &x, tokens);
                    for t in 0..tokens {
                        for r in 0..rows {
                            let want: f64 = (0..cols)
                                .map(|c| {
                                    f64::from(weights[r * cols + c])
                                        * f64::from(acts.quants[t * cols + c])
                                        * f64::from(acts.scales[(t * cols + c) / BLOCK])
                                })
                                .sum();
                            let g = got[t * rows + r];
                            assert!(
                                (f64::from(g) - want).abs() < 1e-3,
                                "{format:?} {isa:?}: {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_4_bit_integer_sums_equal_the_scalar_ones_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for trial in 0..500 {
            let blocks = 1 + trial % 5;
            let nibbles: Vec<u8> = (0..blocks * BLOCK / 2).map(|_| rng.gen()).collect();
            let x: Vec<i8> = (0..blocks * BLOCK)
                .map(|_| rng.gen_range(-127..=127))
                .collect();
            let want: Vec<i32> = nibbles
                .chunks_exact(BLOCK / 2)
                .zip(x.chunks_exact(BLOCK))
                .map(|(n, b)| scalar::q4_block_dot(n, b))
                .collect();
            if avx2::supported() {
                // SAFETY: the CPU reports AVX2 and FMA.
                assert_eq!(unsafe { avx2::q4_block_sums(&nibbles, &x) }, want);
            }
            if avx512::supported() {
                // SAFETY: the CPU reports AVX-512 VNNI.
                assert_eq!(unsafe { avx512::q4_block_sums(&nibbles, &x) }, want);
            }
        }
    }

    #[test]
    fn q4_bytes_are_read_with_their_offsets() {
        let mut q4_0 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q4_0.extend([0x21u8; 16]);
        let m = Q4Matrix::from_gguf(Q4Format::Q4_0, &q4_0, 1, 32).unwrap();
        let values = m.dequantize();
        // Low nibble 1, high nibble 2: (1 - 8) / 2 and (2 - 8) / 2.
        assert_eq!((values[0], values[16]), (-3.5, -3.0));
        let mut q4_1 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        q4_1.extend(half::f16::from_f32(1.0).to_le_bytes());
        q4_1.extend([0x21u8; 16]);
        let m = Q4Matrix::from_gguf(Q4Format::Q4_1, &q4_1, 1, 32).unwrap();
        assert_eq!((m.dequantize()[0], m.dequantize()[31]), (1.5, 2.0));
        assert!(Q4Matrix::from_gguf(Q4Format::Q4_1, &q4_0, 1, 32).is_err());
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
            Err(QuantError::RaggedRow(31))
        ));
    }
}
