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

mod avx2;
mod avx512;
mod q4;
mod scalar;
mod tiles;

pub use q4::{Q4Format, Q4Matrix};
pub use tiles::Q8Tiles;

use std::ops::Range;

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

/// A row-major matrix of Q8_0 blocks: `rows` outputs, `cols` inputs.
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    /// One scale per block, `rows * cols / 32`.
    scales: Vec<f32>,
    /// The signed bytes, `rows * cols`.
    quants: Vec<i8>,
}

/// Bytes of one GGUF `block_q8_0`: an f16 scale then 32 signed bytes.
const GGUF_Q8_0_BLOCK_BYTES: usize = 2 + BLOCK;

impl Q8Matrix {
    /// Reads GGUF's Q8_0 layout (per block: f16 scale, 32 `i8`), row-major.
    ///
    /// # Errors
    /// When `cols` is not a multiple of 32 or `bytes` has the wrong length.
    pub fn from_gguf_q8_0(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, QuantError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(QuantError::RaggedRow(cols));
        }
        let blocks = rows * cols / BLOCK;
        let expected = blocks * GGUF_Q8_0_BLOCK_BYTES;
        if bytes.len() != expected {
            return Err(QuantError::Size {
                expected,
                actual: bytes.len(),
            });
        }
        let mut scales = Vec::with_capacity(blocks);
        let mut quants = Vec::with_capacity(rows * cols);
        for block in bytes.chunks_exact(GGUF_Q8_0_BLOCK_BYTES) {
            scales.push(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
            quants.extend(block[2..].iter().map(|&b| b as i8));
        }
        Ok(Self {
            rows,
            cols,
            scales,
            quants,
        })
    }

    /// Quantizes a row-major f32 matrix the way llama.cpp quantizes Q8_0.
    ///
    /// # Errors
    /// When `cols` is not a multiple of 32 or `values` is not `rows * cols` long.
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Result<Self, QuantError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(QuantError::RaggedRow(cols));
        }
        if values.len() != rows * cols {
            return Err(QuantError::Size {
                expected: rows * cols,
                actual: values.len(),
            });
        }
        let q = Q8Rows::quantize(values, rows, cols);
        Ok(Self {
            rows,
            cols,
            scales: q.scales,
            quants: q.quants,
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x · selfᵀ` for `tokens` rows of `x` (row-major, `cols` each), on the best path:
    /// `tokens x rows` values, row-major.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        self.matmul_with(Isa::detect(), x, tokens)
    }

    /// Like [`Q8Matrix::matmul`] on a chosen path, which must be one of
    /// [`Isa::available`] (others fall back to the portable one).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        product(self, isa, x, tokens)
    }

    /// Rows `ids`, dequantized one after another (`ids.len() * cols` values): an
    /// embedding lookup in a table kept at a quarter of its f32 size.
    ///
    /// # Panics
    /// When an id is not a row.
    pub fn dequantize_rows(&self, ids: &[u32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let row = self.row(id as usize);
            for (quants, &scale) in row.quants.chunks_exact(BLOCK).zip(row.scales) {
                out.extend(quants.iter().map(|&q| f32::from(q) * scale));
            }
        }
        out
    }

    fn row(&self, row: usize) -> WeightRow<'_> {
        let blocks = self.cols / BLOCK;
        WeightRow {
            quants: &self.quants[row * self.cols..(row + 1) * self.cols],
            scales: &self.scales[row * blocks..(row + 1) * blocks],
        }
    }
}

/// Q8_0 weights laid out for the best kernel this CPU has: tiles of rows where it has
/// AVX-512 VNNI ([`Q8Tiles`]), rows elsewhere. Both give the same integer sums.
pub enum Q8Weights {
    /// Row by row.
    Rows(Q8Matrix),
    /// In tiles of rows.
    Tiles(Q8Tiles),
}

impl Q8Weights {
    /// `matrix`, retiled where the CPU runs tiles.
    pub fn new(matrix: Q8Matrix) -> Self {
        if Q8Tiles::supported() {
            Self::Tiles(Q8Tiles::from_rows(&matrix))
        } else {
            Self::Rows(matrix)
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Self::Rows(m) => m.rows(),
            Self::Tiles(m) => m.rows(),
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Self::Rows(m) => m.cols(),
            Self::Tiles(m) => m.cols(),
        }
    }

    /// `x · selfᵀ` for `tokens` rows of `x`: `tokens x rows` values, row-major.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        match self {
            Self::Rows(m) => m.matmul(x, tokens),
            Self::Tiles(m) => m.matmul(x, tokens),
        }
    }

    /// Rows `ids`, dequantized one after another: an embedding lookup, so that a tied
    /// output head and embedding table are one copy.
    ///
    /// # Panics
    /// When an id is not a row.
    pub fn dequantize_rows(&self, ids: &[u32]) -> Vec<f32> {
        match self {
            Self::Rows(m) => m.dequantize_rows(ids),
            Self::Tiles(m) => m.dequantize_rows(ids),
        }
    }
}

impl RowKernel for Q8Matrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn prepare(&self, isa: Isa, acts: Q8Rows) -> Q8Rows {
        match isa {
            Isa::Avx512Vnni => acts.with_scales_x8(),
            _ => acts,
        }
    }

    fn dots_up_to_tile(
        &self,
        isa: Isa,
        row: usize,
        acts: &Q8Rows,
        first: usize,
        width: usize,
    ) -> [f32; TOKEN_TILE] {
        dots_up_to_tile(isa, &self.row(row), acts, first, width)
    }
}

/// A quantized weight matrix the product driver can run: its shape and the dot
/// products of one row with up to [`TOKEN_TILE`] tokens.
trait RowKernel: Sync {
    /// Output features.
    fn rows(&self) -> usize;
    /// Input features.
    fn cols(&self) -> usize;
    /// Adds to quantized activations what this matrix's kernels on `isa` read
    /// besides the bytes and scales.
    fn prepare(&self, isa: Isa, acts: Q8Rows) -> Q8Rows;
    /// Row `row` times tokens `first..first + width` (the rest of the array is 0).
    fn dots_up_to_tile(
        &self,
        isa: Isa,
        row: usize,
        acts: &Q8Rows,
        first: usize,
        width: usize,
    ) -> [f32; TOKEN_TILE];
}

/// `x · matrixᵀ` for `tokens` rows of `x` on `isa` (the portable path when the CPU
/// lacks it), split over candle's kernel pool: `tokens x rows` values, row-major.
fn product<M: RowKernel>(matrix: &M, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        tokens * matrix.cols(),
        "activations of the wrong size"
    );
    let isa = if isa.is_supported() {
        isa
    } else {
        Isa::Portable
    };
    let acts = matrix.prepare(isa, Q8Rows::quantize(x, tokens, matrix.cols()));
    let mut out = vec![0f32; tokens * matrix.rows()];
    let shared = SharedOut::new(&mut out);
    let pool = candle_core::utils::barrier_pool();
    if tokens >= TOKEN_SPLIT_FROM {
        // Prompts: a work item is a group of token tiles small enough to stay in
        // the L1 cache while every weight row passes over it.
        let tiles = tokens.div_ceil(TOKEN_TILE);
        let group = (L1_ACTIVATION_BYTES / (TOKEN_TILE * matrix.cols())).clamp(1, 8);
        pool.execute_chunked(tiles.div_ceil(group), |groups| {
            for g in groups {
                let first = g * group * TOKEN_TILE;
                let last = ((g + 1) * group * TOKEN_TILE).min(tokens);
                for r in 0..matrix.rows() {
                    fill_row(matrix, isa, &acts, r, first..last, &shared);
                }
            }
        });
    } else {
        // Decoding and short steps: too few token tiles to keep every thread busy,
        // so the work items are groups of weight rows.
        pool.execute_chunked(matrix.rows().div_ceil(ROW_BLOCK), |groups| {
            let rows = groups.start * ROW_BLOCK..(groups.end * ROW_BLOCK).min(matrix.rows());
            for r in rows {
                fill_row(matrix, isa, &acts, r, 0..tokens, &shared);
            }
        });
    }
    out
}

/// Weight row `r` of `matrix` times `tokens`, written to `out[t * rows + r]`.
fn fill_row<M: RowKernel>(
    matrix: &M,
    isa: Isa,
    acts: &Q8Rows,
    r: usize,
    tokens: Range<usize>,
    out: &SharedOut,
) {
    let mut t = tokens.start;
    while t < tokens.end {
        let width = TOKEN_TILE.min(tokens.end - t);
        let dots = matrix.dots_up_to_tile(isa, r, acts, t, width);
        for (j, &v) in dots[..width].iter().enumerate() {
            // SAFETY: each (token, row) pair belongs to exactly one work item.
            unsafe { out.write((t + j) * matrix.rows() + r, v) };
        }
        t += width;
    }
}

/// Tokens whose dot products with one weight row are computed together, so that each
/// weight block is loaded once for all of them.
const TOKEN_TILE: usize = 4;

/// Steps of at least this many tokens split the work by tokens; shorter ones by
/// weight rows (a step of a few dozen tokens makes only one or two token items).
const TOKEN_SPLIT_FROM: usize = 128;

/// Weight rows per work item when decoding.
const ROW_BLOCK: usize = 16;

/// Bytes of quantized activations a prompt work item keeps in the L1 cache.
const L1_ACTIVATION_BYTES: usize = 16 * 1024;

/// The output of one product, written by several workers at disjoint indices.
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: workers only write through `write`, whose callers guarantee that no index is
// written by two workers; the buffer outlives the pool call that uses it.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(out: &mut [f32]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// # Safety
    /// No other worker may write `index` during the same product.
    unsafe fn write(&self, index: usize, value: f32) {
        assert!(index < self.len, "output index out of range");
        // SAFETY: in bounds (checked above) and not shared (the caller's promise).
        unsafe { *self.ptr.add(index) = value };
    }
}

/// The dot products of a weight row with tokens `first..first + N` on the given path.
fn dots<const N: usize>(isa: Isa, w: &WeightRow, acts: &Q8Rows, first: usize) -> [f32; N] {
    debug_assert!(first + N <= acts.rows && w.quants.len() == acts.cols);
    match isa {
        // SAFETY: `matmul_with` only picks a path the CPU reports, and the tokens
        // are inside `acts`.
        Isa::Avx512Vnni => unsafe { avx512::dots::<N>(w, acts, first) },
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::dots::<N>(w, acts, first) },
        Isa::Portable => scalar::dots::<N>(w, acts, first),
    }
}

/// [`dots`] for `width` (1 to [`TOKEN_TILE`]) tokens, each width its own unrolled
/// kernel so that the accumulators stay in registers.
fn dots_up_to_tile(
    isa: Isa,
    w: &WeightRow,
    acts: &Q8Rows,
    first: usize,
    width: usize,
) -> [f32; TOKEN_TILE] {
    let mut out = [0f32; TOKEN_TILE];
    match width {
        4 => out = dots::<4>(isa, w, acts, first),
        3 => out[..3].copy_from_slice(&dots::<3>(isa, w, acts, first)),
        2 => out[..2].copy_from_slice(&dots::<2>(isa, w, acts, first)),
        _ => out[..1].copy_from_slice(&dots::<1>(isa, w, acts, first)),
    }
    out
}

/// One weight row: its blocks' bytes and scales.
struct WeightRow<'a> {
    quants: &'a [i8],
    scales: &'a [f32],
}

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
struct Q8Rows {
    rows: usize,
    cols: usize,
    scales: Vec<f32>,
    quants: Vec<i8>,
    /// Each block's value sum, `d * Σ q`, for the 4-bit kernels (their offsets
    /// multiply it).
    sums: Vec<f32>,
    /// Each scale repeated 8 times, for the 512-bit path that multiplies two blocks'
    /// eight lanes at once.
    scales_x8: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes each block of 32 to `round(x / d)` with `d = max|x| / 127`, as
    /// llama.cpp's `quantize_row_q8_0` (so no byte is ever -128).
    fn quantize(values: &[f32], rows: usize, cols: usize) -> Self {
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

    fn with_sums(mut self) -> Self {
        self.sums = self
            .quants
            .chunks_exact(BLOCK)
            .zip(&self.scales)
            .map(|(block, d)| d * block.iter().map(|&q| i32::from(q)).sum::<i32>() as f32)
            .collect();
        self
    }

    fn with_scales_x8(mut self) -> Self {
        self.scales_x8 = self
            .scales
            .iter()
            .flat_map(|&s| std::iter::repeat_n(s, 8))
            .collect();
        self
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }
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
        let x = random(32 * 40, 9);
        let (mut wide, mut baseline) = (
            (vec![0f32; 40], vec![0i8; x.len()]),
            (vec![0f32; 40], vec![0i8; x.len()]),
        );
        quantize_blocks(&x, &mut wide.0, &mut wide.1);
        quantize_blocks_baseline(&x, &mut baseline.0, &mut baseline.1);
        assert_eq!(wide, baseline);
        assert!(wide.1.iter().any(|&q| q.abs() == 127));
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
