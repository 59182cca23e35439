//! The product driver: `x · matrixᵀ` for any quantized format, split over candle's
//! kernel thread pool, by token tiles for prompts and by weight rows for decoding. A
//! format supplies only its rows' dot products ([`Row`]).

use std::ops::Range;

use super::{Isa, Q8Rows, BLOCK};

/// One weight row of a quantized format: its dot products with a few tokens on each
/// instruction set, the only code that differs between formats.
pub(super) trait Row {
    /// Row times tokens `first..first + N` on `isa`, which the CPU must support and
    /// `first + N` must not pass the tokens of `acts`.
    fn dots<const N: usize>(&self, isa: Isa, acts: &Q8Rows, first: usize) -> [f32; N];
}

/// A quantized weight matrix the product driver can run: its shape, what its kernels
/// read of the activations, and its rows.
pub(super) trait RowKernel: Sync {
    /// One of its rows.
    type Row<'a>: Row
    where
        Self: 'a;
    /// Output features.
    fn rows(&self) -> usize;
    /// Input features.
    fn cols(&self) -> usize;
    /// Activations quantized with one scale per this many values (llama.cpp's choice
    /// for the format: 256 for the K-quants, else a block of 32).
    fn activation_group(&self) -> usize {
        BLOCK
    }
    /// Adds to quantized activations what this matrix's kernels on `isa` read
    /// besides the bytes and scales.
    fn prepare(&self, isa: Isa, acts: Q8Rows) -> Q8Rows;
    /// Row `r`.
    fn row(&self, r: usize) -> Self::Row<'_>;
}

/// `x · matrixᵀ` for `tokens` rows of `x` on `isa` (the portable path when the CPU
/// lacks it), split over candle's kernel pool: `tokens x rows` values, row-major.
pub(super) fn product<M: RowKernel>(matrix: &M, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
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
    let group = matrix.activation_group();
    let acts = matrix.prepare(isa, Q8Rows::quantize_by(x, tokens, matrix.cols(), group));
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
    let row = matrix.row(r);
    let mut t = tokens.start;
    while t < tokens.end {
        let width = TOKEN_TILE.min(tokens.end - t);
        let dots = dots_up_to_tile(isa, &row, acts, t, width);
        for (j, &v) in dots[..width].iter().enumerate() {
            // SAFETY: each (token, row) pair belongs to exactly one work item.
            unsafe { out.write((t + j) * matrix.rows() + r, v) };
        }
        t += width;
    }
}

/// Tokens whose dot products with one weight row are computed together, so that each
/// weight block is loaded once for all of them.
pub(super) const TOKEN_TILE: usize = 4;

/// Steps of at least this many tokens split the work by tokens; shorter ones by
/// weight rows (a step of a few dozen tokens makes only one or two token items).
const TOKEN_SPLIT_FROM: usize = 128;

/// Weight rows per work item when decoding.
const ROW_BLOCK: usize = 16;

/// Bytes of quantized activations a prompt work item keeps in the L1 cache.
const L1_ACTIVATION_BYTES: usize = 16 * 1024;

/// The output of one product, written by several workers at disjoint indices.
pub(super) struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: workers only write through `write`, whose callers guarantee that no index is
// written by two workers; the buffer outlives the pool call that uses it.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(super) fn new(out: &mut [f32]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// # Safety
    /// No other worker may write `index` during the same product.
    pub(super) unsafe fn write(&self, index: usize, value: f32) {
        assert!(index < self.len, "output index out of range");
        // SAFETY: in bounds (checked above) and not shared (the caller's promise).
        unsafe { *self.ptr.add(index) = value };
    }
}

/// [`Row::dots`] for `width` (1 to [`TOKEN_TILE`]) tokens, each width its own
/// unrolled kernel so that the accumulators stay in registers; the rest of the array
/// is 0. The one dispatch every format's rows go through.
fn dots_up_to_tile<R: Row>(
    isa: Isa,
    row: &R,
    acts: &Q8Rows,
    first: usize,
    width: usize,
) -> [f32; TOKEN_TILE] {
    let mut out = [0f32; TOKEN_TILE];
    match width {
        4 => out = row.dots::<4>(isa, acts, first),
        3 => out[..3].copy_from_slice(&row.dots::<3>(isa, acts, first)),
        2 => out[..2].copy_from_slice(&row.dots::<2>(isa, acts, first)),
        _ => out[..1].copy_from_slice(&row.dots::<1>(isa, acts, first)),
    }
    out
}
