//! Q8_0 weights: blocks of 32 signed bytes with one f32 scale each, row by row
//! ([`Q8Matrix`]) or in the tiles of the AVX-512 VNNI kernel ([`Q8Weights`]).

use super::product::{product, Row, RowKernel};
use super::{avx2, avx512, scalar, Isa, Q8Rows, Q8Tiles, QuantError, BLOCK};

/// A row-major matrix of Q8_0 blocks: `rows` outputs, `cols` inputs.
pub struct Q8Matrix {
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// One scale per block, `rows * cols / 32`.
    pub(super) scales: Vec<f32>,
    /// The signed bytes, `rows * cols`.
    pub(super) quants: Vec<i8>,
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
            return Err(QuantError::RaggedRow { cols, block: BLOCK });
        }
        let blocks = rows * cols / BLOCK;
        let expected = blocks * GGUF_Q8_0_BLOCK_BYTES;
        if bytes.len() != expected {
            return Err(QuantError::Size {
                format: "Q8_0",
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
            return Err(QuantError::RaggedRow { cols, block: BLOCK });
        }
        if values.len() != rows * cols {
            return Err(QuantError::Size {
                format: "f32",
                expected: rows * cols * 4,
                actual: values.len() * 4,
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
}

/// Q8_0 weights laid out for the best kernel this CPU has: tiles of rows where it has
/// AVX-512 VNNI or AVX2 ([`Q8Tiles`]), rows elsewhere. Both give the same integer sums.
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
    type Row<'a> = WeightRow<'a>;

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

    fn row(&self, row: usize) -> WeightRow<'_> {
        let blocks = self.cols / BLOCK;
        WeightRow {
            quants: &self.quants[row * self.cols..(row + 1) * self.cols],
            scales: &self.scales[row * blocks..(row + 1) * blocks],
        }
    }
}

/// One weight row: its blocks' bytes and scales.
pub(super) struct WeightRow<'a> {
    pub(super) quants: &'a [i8],
    pub(super) scales: &'a [f32],
}

impl Row for WeightRow<'_> {
    fn dots<const N: usize>(&self, isa: Isa, acts: &Q8Rows, first: usize) -> [f32; N] {
        debug_assert!(first + N <= acts.rows && self.quants.len() == acts.cols);
        match isa {
            // SAFETY: the product driver only runs a path the CPU reports, on tokens
            // inside `acts`.
            Isa::Avx512Vnni => unsafe { avx512::dots::<N>(self, acts, first) },
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::dots::<N>(self, acts, first) },
            Isa::Portable => scalar::dots::<N>(self, acts, first),
        }
    }
}
