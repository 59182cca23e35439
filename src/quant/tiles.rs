//! Q8_0 weights repacked in tiles of 16 rows, for AVX-512 VNNI (and AVX2): a register-tiled product.
//!
//! The row kernels ([`super::Q8Matrix`]) multiply one weight row by a few tokens and
//! end each dot product with a horizontal sum; half their instructions move signs and
//! lanes around the one that multiplies. Here a 512-bit register holds four weight
//! bytes of each of 16 rows, so one `vpdpbusd` against four activation bytes
//! broadcast to every lane adds 64 products into the 16 rows' sums, with nothing to
//! rearrange: eight of them cover a block of 32 values, and up to [`TOKENS`] tokens
//! reuse each weight register. (candle's x86 repacked kernels use the same layout,
//! for shapes whose length is a multiple of 256 only.)
//!
//! `vpdpbusd` takes unsigned weight bytes, so each weight is stored plus 128 (0 to
//! 255, -128 included) and the block's sum corrected by 128 times the activations'
//! sum. The integer sums are exact, equal to [`super::scalar::block_dot`].
//!
//! Where the kernels may use AVX2 but not AVX-512 (`--cpu-features avx2`, or a CPU
//! without it), the same tiles run eight rows to a 256-bit register: the stored byte's
//! top bit flipped gives the signed weight back, and llama.cpp's `vpmaddubsw` trick
//! ([`super::avx2`]: `|w|` times `x` with `w`'s sign) multiplies without saturating.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{Isa, Q8Matrix, Q8Rows, SharedOut, BLOCK};

/// Rows in a tile: one 512-bit register of 32-bit sums.
pub const ROWS: usize = 16;

/// Tokens computed together, each weight register loaded once for all of them.
const TOKENS: usize = 8;

/// Tokens computed together by the AVX2 kernel: its sixteen registers hold four
/// tokens' sums and accumulators beside the weights.
const AVX2_TOKENS: usize = 4;

/// Rows in one 256-bit register of 32-bit sums: half a tile.
const HALF: usize = ROWS / 2;

/// Groups of four values in a block: one `vpdpbusd` each.
const GROUPS: usize = BLOCK / 4;

/// One block (32 values) of 16 rows: byte `(g * 16 + r) * 4 + j` is value `4g + j` of
/// row `r`, plus 128.
#[repr(C, align(64))]
struct Tile {
    quants: [u8; BLOCK * ROWS],
    scales: [f32; ROWS],
}

/// A Q8_0 matrix in tiles of 16 rows: `rows` outputs, `cols` inputs.
pub struct Q8Tiles {
    rows: usize,
    cols: usize,
    /// Row tile `t`'s blocks are `tiles[t * blocks..(t + 1) * blocks]`; a last tile of
    /// fewer than 16 rows is padded with zero rows.
    tiles: Vec<Tile>,
}

/// Whether the kernels may use AVX-512 F and BW with VNNI here.
fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::allows_avx512()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Q8Tiles {
    /// The instructions the tiled kernel runs on here: AVX-512 VNNI, else AVX2 (with
    /// FMA), else none (the rows are kept as rows).
    pub fn isa() -> Option<Isa> {
        if vnni() {
            Some(Isa::Avx512Vnni)
        } else if crate::simd::has_avx2_fma() {
            Some(Isa::Avx2)
        } else {
            None
        }
    }

    /// Whether this CPU runs a tiled kernel, and the kernels may use it.
    pub fn supported() -> bool {
        Self::isa().is_some()
    }

    /// The same matrix, repacked.
    pub fn from_rows(matrix: &Q8Matrix) -> Self {
        let (rows, cols) = (matrix.rows, matrix.cols);
        let blocks = cols / BLOCK;
        let mut tiles = Vec::with_capacity(rows.div_ceil(ROWS) * blocks);
        for first in (0..rows).step_by(ROWS) {
            for b in 0..blocks {
                let mut tile = Tile {
                    quants: [128; BLOCK * ROWS],
                    scales: [0.0; ROWS],
                };
                for r in 0..ROWS.min(rows - first) {
                    let row = first + r;
                    tile.scales[r] = matrix.scales[row * blocks + b];
                    let block = &matrix.quants[row * cols + b * BLOCK..][..BLOCK];
                    for (i, &q) in block.iter().enumerate() {
                        tile.quants[((i / 4) * ROWS + r) * 4 + i % 4] = (i16::from(q) + 128) as u8;
                    }
                }
                tiles.push(tile);
            }
        }
        Self { rows, cols, tiles }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows `ids`, dequantized one after another (`ids.len() * cols` values), the same
    /// values as [`Q8Matrix::dequantize_rows`] of the matrix these tiles came from.
    ///
    /// # Panics
    /// When an id is not a row.
    pub fn dequantize_rows(&self, ids: &[u32]) -> Vec<f32> {
        let blocks = self.cols / BLOCK;
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let row = id as usize;
            assert!(row < self.rows, "row {row} of a {}-row matrix", self.rows);
            let (tile_row, r) = (row / ROWS, row % ROWS);
            for tile in &self.tiles[tile_row * blocks..(tile_row + 1) * blocks] {
                let scale = tile.scales[r];
                out.extend((0..BLOCK).map(|i| {
                    let stored = tile.quants[((i / 4) * ROWS + r) * 4 + i % 4];
                    f32::from(i16::from(stored) - 128) * scale
                }));
            }
        }
        out
    }

    /// `x · selfᵀ` for `tokens` rows of `x` (row-major, `cols` each), split over
    /// candle's kernel pool by row tiles: `tokens x rows` values, row-major.
    ///
    /// # Panics
    /// When `x` is not `tokens * cols` long, or the CPU lacks the kernel's
    /// instructions ([`Q8Tiles::supported`]).
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        let isa = Self::isa().expect("the tiled kernels need AVX-512 VNNI or AVX2");
        self.matmul_with(isa, x, tokens)
    }

    /// Like [`Q8Tiles::matmul`] on a chosen kernel, [`Isa::Avx512Vnni`] or [`Isa::Avx2`]
    /// (benchmarks and tests compare them).
    ///
    /// # Panics
    /// As [`Q8Tiles::matmul`], and when the CPU lacks the chosen kernel's instructions
    /// or it is the portable one.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "activations of the wrong size");
        let runs_here = match isa {
            Isa::Avx512Vnni => vnni(),
            Isa::Avx2 => crate::simd::has_avx2_fma(),
            Isa::Portable => false,
        };
        assert!(runs_here, "no {} tiled kernel runs here", isa.name());
        let vnni_kernel = isa == Isa::Avx512Vnni;
        let acts = Q8Rows::quantize(x, tokens, self.cols);
        // The +128 correction is the VNNI kernel's only.
        let sums = if vnni_kernel {
            block_sums(&acts)
        } else {
            Vec::new()
        };
        let mut out = vec![0f32; tokens * self.rows];
        let shared = SharedOut::new(&mut out);
        let blocks = self.cols / BLOCK;
        candle_core::utils::barrier_pool().execute_chunked(self.rows.div_ceil(ROWS), |tiles| {
            for t in tiles {
                let tile_blocks = &self.tiles[t * blocks..(t + 1) * blocks];
                let valid = ROWS.min(self.rows - t * ROWS);
                let write = |token: usize, row: usize, value: f32| {
                    if row < valid {
                        // SAFETY: each (token, row) of this tile is written by this
                        // work item only.
                        unsafe { shared.write(token * self.rows + t * ROWS + row, value) };
                    }
                };
                let mut first = 0;
                while first < tokens {
                    let width = if vnni_kernel { TOKENS } else { AVX2_TOKENS }.min(tokens - first);
                    // SAFETY: the CPU has the instructions (asserted above), the tokens
                    // are inside `acts`, and each (token, row) of this tile is written
                    // by this work item only.
                    unsafe {
                        tile_product(vnni_kernel, tile_blocks, &acts, &sums, first, width, write);
                    }
                    first += width;
                }
            }
        });
        out
    }
}

/// Each activation block's integer sum, for the +128 correction.
fn block_sums(acts: &Q8Rows) -> Vec<i32> {
    acts.quants
        .chunks_exact(BLOCK)
        .map(|block| block.iter().map(|&q| i32::from(q)).sum())
        .collect()
}

/// Runs [`tile_dots`] (`vnni`) or [`tile_dots_avx2`] for `width` tokens from `first`
/// (1 to [`TOKENS`], or to [`AVX2_TOKENS`]), each width its own unrolled kernel, and
/// hands every (token, row, value) to `write`.
///
/// # Safety
/// As the kernel's.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_product(
    vnni: bool,
    tiles: &[Tile],
    acts: &Q8Rows,
    sums: &[i32],
    first: usize,
    width: usize,
    mut write: impl FnMut(usize, usize, f32),
) {
    let mut emit = |dots: &[[f32; ROWS]]| {
        for (j, rows) in dots.iter().enumerate() {
            for (r, &v) in rows.iter().enumerate() {
                write(first + j, r, v);
            }
        }
    };
    // SAFETY (each call): the caller's promise.
    unsafe {
        if vnni {
            match width {
                8 => emit(&tile_dots::<8>(tiles, acts, sums, first)),
                7 => emit(&tile_dots::<7>(tiles, acts, sums, first)),
                6 => emit(&tile_dots::<6>(tiles, acts, sums, first)),
                5 => emit(&tile_dots::<5>(tiles, acts, sums, first)),
                4 => emit(&tile_dots::<4>(tiles, acts, sums, first)),
                3 => emit(&tile_dots::<3>(tiles, acts, sums, first)),
                2 => emit(&tile_dots::<2>(tiles, acts, sums, first)),
                _ => emit(&tile_dots::<1>(tiles, acts, sums, first)),
            }
        } else {
            match width {
                4 => emit(&tile_dots_avx2::<4>(tiles, acts, first)),
                3 => emit(&tile_dots_avx2::<3>(tiles, acts, first)),
                2 => emit(&tile_dots_avx2::<2>(tiles, acts, first)),
                _ => emit(&tile_dots_avx2::<1>(tiles, acts, first)),
            }
        }
    }
}

/// Never called off x86-64: [`Q8Tiles::supported`] is false there.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_product(
    _: bool,
    _: &[Tile],
    _: &Q8Rows,
    _: &[i32],
    _: usize,
    _: usize,
    _: impl FnMut(usize, usize, f32),
) {
    unreachable!("the tiled kernel runs on x86-64 only")
}

/// The products of one row tile (its blocks in order) with tokens `first..first + N`.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; tokens `first..first + N` must be rows of
/// `acts`, whose rows are as long as the tiles' blocks cover; `sums` must be
/// [`block_sums`] of `acts`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_dots<const N: usize>(
    tiles: &[Tile],
    acts: &Q8Rows,
    sums: &[i32],
    first: usize,
) -> [[f32; ROWS]; N] {
    let cols = acts.cols;
    let blocks = acts.blocks_per_row();
    debug_assert!(tiles.len() == blocks && first + N <= acts.rows);
    let xq = acts.quants.as_ptr();
    let mut acc = [_mm512_setzero_ps(); N];
    for (b, tile) in tiles.iter().enumerate() {
        // Two chains of sums per token (even and odd groups), so that consecutive
        // `vpdpbusd`s do not wait for each other when few tokens are computed.
        let mut even = [_mm512_setzero_si512(); N];
        let mut odd = [_mm512_setzero_si512(); N];
        for g in (0..GROUPS).step_by(2) {
            // SAFETY: groups `g` and `g + 1` are inside the tile's 512 bytes.
            let (w0, w1) = unsafe {
                (
                    _mm512_load_si512(tile.quants.as_ptr().add(g * ROWS * 4).cast()),
                    _mm512_load_si512(tile.quants.as_ptr().add((g + 1) * ROWS * 4).cast()),
                )
            };
            for j in 0..N {
                // SAFETY: token `first + j`'s block `b` is inside `acts` (the caller's
                // promise); four bytes read unaligned.
                let (x0, x1) = unsafe {
                    let at = xq.add((first + j) * cols + b * BLOCK + g * 4);
                    (
                        _mm512_set1_epi32(at.cast::<i32>().read_unaligned()),
                        _mm512_set1_epi32(at.add(4).cast::<i32>().read_unaligned()),
                    )
                };
                even[j] = _mm512_dpbusd_epi32(even[j], w0, x0);
                odd[j] = _mm512_dpbusd_epi32(odd[j], w1, x1);
            }
        }
        let dw = _mm512_load_ps(tile.scales.as_ptr());
        for j in 0..N {
            let at = (first + j) * blocks + b;
            let exact = _mm512_sub_epi32(
                _mm512_add_epi32(even[j], odd[j]),
                _mm512_set1_epi32(128 * sums[at]),
            );
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(acts.scales[at]));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, acc[j]);
        }
    }
    let mut out = [[0f32; ROWS]; N];
    for (row, sum) in out.iter_mut().zip(acc) {
        // SAFETY: `row` holds sixteen f32.
        unsafe { _mm512_storeu_ps(row.as_mut_ptr(), sum) };
    }
    out
}

/// Eight 32-bit sums, one per row of a half tile, of a group of four weights of each
/// row (`stored`, as the tile keeps them) times four activation bytes `x` broadcast.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn group_sums(signed_w: __m256i, abs_w: __m256i, x: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, signed_w));
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// A half tile's weights of group `g` as signed bytes and their magnitudes.
///
/// # Safety
/// `g < GROUPS` and `half < 2`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn half_group(tile: &Tile, g: usize, half: usize) -> (__m256i, __m256i) {
    // SAFETY: the 32 bytes lie inside the tile's quants, 32-byte aligned (the tile is
    // 64-byte aligned and each group is 64 bytes).
    let stored = unsafe {
        _mm256_load_si256(
            tile.quants
                .as_ptr()
                .add((g * ROWS + half * HALF) * 4)
                .cast(),
        )
    };
    // The stored byte is the weight plus 128: its top bit flipped is the weight.
    let w = _mm256_xor_si256(stored, _mm256_set1_epi8(i8::MIN));
    (w, _mm256_sign_epi8(w, w))
}

/// The products of one row tile (its blocks in order) with tokens `first..first + N`,
/// eight rows at a time on AVX2.
///
/// # Safety
/// The CPU must have AVX2 and FMA; tokens `first..first + N` must be rows of `acts`,
/// whose rows are as long as the tiles' blocks cover.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_dots_avx2<const N: usize>(
    tiles: &[Tile],
    acts: &Q8Rows,
    first: usize,
) -> [[f32; ROWS]; N] {
    let cols = acts.cols;
    let blocks = acts.blocks_per_row();
    debug_assert!(tiles.len() == blocks && first + N <= acts.rows);
    let xq = acts.quants.as_ptr();
    let mut out = [[0f32; ROWS]; N];
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, tile) in tiles.iter().enumerate() {
            let mut sums = [_mm256_setzero_si256(); N];
            for g in 0..GROUPS {
                // SAFETY: `g` and `half` are in range.
                let (w, abs_w) = unsafe { half_group(tile, g, half) };
                for (j, sum) in sums.iter_mut().enumerate() {
                    // SAFETY: token `first + j`'s block `b` is inside `acts` (the
                    // caller's promise); four bytes read unaligned.
                    let x = unsafe {
                        let at = xq.add((first + j) * cols + b * BLOCK + g * 4);
                        _mm256_set1_epi32(at.cast::<i32>().read_unaligned())
                    };
                    *sum = _mm256_add_epi32(*sum, group_sums(w, abs_w, x));
                }
            }
            // SAFETY: the half's eight scales lie inside the tile's sixteen.
            let dw = unsafe { _mm256_loadu_ps(tile.scales.as_ptr().add(half * HALF)) };
            for (j, acc) in acc.iter_mut().enumerate() {
                let scale =
                    _mm256_mul_ps(dw, _mm256_set1_ps(acts.scales[(first + j) * blocks + b]));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[j]), scale, *acc);
            }
        }
        for (row, acc) in out.iter_mut().zip(acc) {
            // SAFETY: the half's eight f32 lie inside the row's sixteen.
            unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(half * HALF), acc) };
        }
    }
    out
}

/// The exact integer sums of one token's blocks with each of the 16 rows of a row
/// tile, by the same instructions as the kernel: `[block][row]`.
///
/// # Safety
/// As [`tile_dots`], for one token.
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn integer_sums(tiles: &[Tile], x: &[i8]) -> Vec<[i32; ROWS]> {
    tiles
        .iter()
        .zip(x.chunks_exact(BLOCK))
        .map(|(tile, block)| {
            let mut sum = _mm512_setzero_si512();
            for g in 0..GROUPS {
                // SAFETY: group `g` is inside the tile and the block.
                let (w, x) = unsafe {
                    (
                        _mm512_load_si512(tile.quants.as_ptr().add(g * ROWS * 4).cast()),
                        _mm512_set1_epi32(block.as_ptr().add(g * 4).cast::<i32>().read_unaligned()),
                    )
                };
                sum = _mm512_dpbusd_epi32(sum, w, x);
            }
            let total: i32 = block.iter().map(|&q| i32::from(q)).sum();
            let exact = _mm512_sub_epi32(sum, _mm512_set1_epi32(128 * total));
            let mut out = [0i32; ROWS];
            // SAFETY: `out` holds sixteen i32.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), exact) };
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::scalar;
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` random weight bytes, with -128 and 127 (the ends of the +128 range) among them.
    fn weights_with_extremes(rng: &mut impl Rng, n: usize) -> Vec<i8> {
        (0..n)
            .map(|i| match i % 11 {
                0 => -128,
                1 => 127,
                _ => rng.gen(),
            })
            .collect()
    }

    #[test]
    fn rows_read_back_from_tiles_equal_the_rows_they_came_from() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // 37 rows: two whole tiles and a padded one.
        let (rows, cols) = (37, 3 * BLOCK);
        let quants = weights_with_extremes(&mut rng, rows * cols);
        let scales: Vec<f32> = (0..rows * cols / BLOCK)
            .map(|_| rng.gen_range(0.001..0.1))
            .collect();
        let matrix = Q8Matrix {
            rows,
            cols,
            scales,
            quants,
        };
        let ids = [0, 15, 16, 36, 3, 36];
        assert_eq!(
            Q8Tiles::from_rows(&matrix).dequantize_rows(&ids),
            matrix.dequantize_rows(&ids)
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tiled_integer_sums_equal_the_scalar_ones_bit_for_bit() {
        if !vnni() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for trial in 0..200 {
            let (rows, blocks) = (1 + trial % 20, 1 + trial % 5);
            let cols = blocks * BLOCK;
            let quants = weights_with_extremes(&mut rng, rows * cols);
            let matrix = Q8Matrix {
                rows,
                cols,
                scales: vec![1.0; rows * blocks],
                quants,
            };
            let tiles = Q8Tiles::from_rows(&matrix);
            let x: Vec<i8> = (0..cols).map(|_| rng.gen_range(-127..=127)).collect();
            for t in 0..rows.div_ceil(ROWS) {
                // SAFETY: checked above that the CPU has the instructions.
                let got = unsafe { integer_sums(&tiles.tiles[t * blocks..(t + 1) * blocks], &x) };
                for (b, sums) in got.iter().enumerate() {
                    for (r, &sum) in sums.iter().enumerate() {
                        let row = t * ROWS + r;
                        let want = if row < rows {
                            let range = row * cols + b * BLOCK..row * cols + (b + 1) * BLOCK;
                            scalar::block_dot(&matrix.quants[range], &x[b * BLOCK..][..BLOCK])
                        } else {
                            0
                        };
                        assert_eq!(sum, want, "trial {trial}, row {row}, block {b}");
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_tiles_integer_sums_equal_the_scalar_ones_bit_for_bit() {
        if !crate::simd::has_avx2_fma() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for trial in 0..200 {
            let (rows, blocks) = (1 + trial % 20, 1 + trial % 5);
            let cols = blocks * BLOCK;
            let matrix = Q8Matrix {
                rows,
                cols,
                scales: vec![1.0; rows * blocks],
                quants: weights_with_extremes(&mut rng, rows * cols),
            };
            let tiles = Q8Tiles::from_rows(&matrix);
            // One token, block by block with unit scales: each output is one block's
            // integer sum, exact in f32 (at most 32 x 128 x 127).
            for b in 0..blocks {
                let mut x = vec![0i8; cols];
                for q in &mut x[b * BLOCK..(b + 1) * BLOCK] {
                    *q = rng.gen_range(-127..=127);
                }
                let acts = Q8Rows {
                    rows: 1,
                    cols,
                    scales: vec![1.0; blocks],
                    quants: x.clone(),
                    sums: Vec::new(),
                    scales_x8: Vec::new(),
                };
                for t in 0..rows.div_ceil(ROWS) {
                    // SAFETY: checked above that the CPU has the instructions; the
                    // token is the one row of `acts`.
                    let [got] = unsafe {
                        tile_dots_avx2::<1>(&tiles.tiles[t * blocks..(t + 1) * blocks], &acts, 0)
                    };
                    for (r, &sum) in got.iter().enumerate() {
                        let row = t * ROWS + r;
                        let want = if row < rows {
                            let range = row * cols + b * BLOCK..row * cols + (b + 1) * BLOCK;
                            scalar::block_dot(&matrix.quants[range], &x[b * BLOCK..][..BLOCK])
                        } else {
                            0
                        };
                        assert_eq!(sum, want as f32, "trial {trial}, row {row}, block {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_tiled_product_equals_the_row_kernels() {
        // Rows that do not fill the last tile, token counts that do not fill the
        // last group of eight, one token (decoding).
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (rows, cols, tokens) in [(16, 32, 1), (21, 96, 9), (40, 160, 3), (7, 64, 17)] {
            let values: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..tokens * cols)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect();
            let matrix = Q8Matrix::quantize(&values, rows, cols).expect("quantizes");
            let want = matrix.matmul_with(Isa::Portable, &x, tokens);
            let tiles = Q8Tiles::from_rows(&matrix);
            let mut results = Vec::new();
            for isa in [Isa::Avx512Vnni, Isa::Avx2] {
                if isa == Isa::Avx512Vnni && !vnni() || !crate::simd::has_avx2_fma() {
                    continue;
                }
                let got = tiles.matmul_with(isa, &x, tokens);
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    let shape = format!("{rows}x{cols}x{tokens} on {}", isa.name());
                    assert!((g - w).abs() < 1e-4, "{shape}: {g} vs {w}");
                }
                results.push(got);
            }
            // Both kernels do the same integer sums and the same float steps per
            // block, so an AVX2 machine answers what an AVX-512 one does, bit for bit.
            if let [vnni_kernel, avx2_kernel] = &results[..] {
                assert_eq!(vnni_kernel, avx2_kernel, "{rows}x{cols}x{tokens}");
            }
        }
    }
}
