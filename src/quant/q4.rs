//! Q4_0 and Q4_1 weights: 4-bit values in blocks of 32, each block `d * q + m` with
//! `q` in 0..16 (Q4_0 stores only `d`, and `m = -8 d`).
//!
//! A block's product with a Q8 activation block is `d dx Σ q x + m dx Σ x`: an exact
//! integer dot product of unsigned nibbles with signed bytes (`vpmaddubsw` never
//! saturates: 2 x 15 x 127 < 2^15), plus the block's offset times the activation
//! block's sum, which is computed once per token.

use super::product::{product, Row, RowKernel};
use super::{avx2, avx512, scalar, Isa, Q8Rows, QuantError, BLOCK};

/// Which 4-bit GGUF format the bytes are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q4Format {
    /// Per block: f16 `d`, 16 bytes of nibbles; values `d * (q - 8)`.
    Q4_0,
    /// Per block: f16 `d`, f16 `m`, 16 bytes of nibbles; values `d * q + m`.
    Q4_1,
}

/// A row-major matrix of 4-bit blocks: `rows` outputs, `cols` inputs.
pub struct Q4Matrix {
    rows: usize,
    cols: usize,
    scales: Vec<f32>,
    offsets: Vec<f32>,
    /// 16 bytes per block: byte `j` holds value `j` (low nibble) and `j + 16` (high).
    nibbles: Vec<u8>,
}

/// One weight row of a [`Q4Matrix`].
pub(super) struct Q4Row<'a> {
    pub(super) nibbles: &'a [u8],
    pub(super) scales: &'a [f32],
    pub(super) offsets: &'a [f32],
}

impl Q4Matrix {
    /// Reads GGUF's Q4_0 or Q4_1 layout, row-major.
    ///
    /// # Errors
    /// When `cols` is not a multiple of 32 or `bytes` has the wrong length.
    pub fn from_gguf(
        format: Q4Format,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantError> {
        if !cols.is_multiple_of(BLOCK) {
            return Err(QuantError::RaggedRow(cols));
        }
        let header = match format {
            Q4Format::Q4_0 => 2,
            Q4Format::Q4_1 => 4,
        };
        let block_bytes = header + BLOCK / 2;
        let blocks = rows * cols / BLOCK;
        if bytes.len() != blocks * block_bytes {
            return Err(QuantError::Size {
                expected: blocks * block_bytes,
                actual: bytes.len(),
            });
        }
        let f16_at = |b: &[u8], at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
        let mut matrix = Self {
            rows,
            cols,
            scales: Vec::with_capacity(blocks),
            offsets: Vec::with_capacity(blocks),
            nibbles: Vec::with_capacity(blocks * BLOCK / 2),
        };
        for block in bytes.chunks_exact(block_bytes) {
            let d = f16_at(block, 0);
            matrix.scales.push(d);
            matrix.offsets.push(match format {
                Q4Format::Q4_0 => -8.0 * d,
                Q4Format::Q4_1 => f16_at(block, 2),
            });
            matrix.nibbles.extend_from_slice(&block[header..]);
        }
        Ok(matrix)
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

    /// Like [`Q4Matrix::matmul`] on a chosen path.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        product(self, isa, x, tokens)
    }

    /// Every weight as f32, row-major (the tests' reference).
    #[cfg(test)]
    pub(super) fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (b, nibbles) in self.nibbles.chunks_exact(BLOCK / 2).enumerate() {
            let value = |q: u8| self.scales[b] * f32::from(q) + self.offsets[b];
            out.extend(nibbles.iter().map(|&n| value(n & 15)));
            out.extend(nibbles.iter().map(|&n| value(n >> 4)));
        }
        out
    }
}

impl RowKernel for Q4Matrix {
    type Row<'a> = Q4Row<'a>;

    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn prepare(&self, _isa: Isa, acts: Q8Rows) -> Q8Rows {
        acts.with_sums()
    }

    fn row(&self, row: usize) -> Q4Row<'_> {
        let blocks = self.cols / BLOCK;
        Q4Row {
            nibbles: &self.nibbles[row * self.cols / 2..(row + 1) * self.cols / 2],
            scales: &self.scales[row * blocks..(row + 1) * blocks],
            offsets: &self.offsets[row * blocks..(row + 1) * blocks],
        }
    }
}

impl Row for Q4Row<'_> {
    fn dots<const N: usize>(&self, isa: Isa, acts: &Q8Rows, first: usize) -> [f32; N] {
        debug_assert!(first + N <= acts.rows && self.nibbles.len() * 2 == acts.cols);
        match isa {
            // SAFETY: the product driver only runs a path the CPU reports, on tokens
            // inside `acts`.
            Isa::Avx512Vnni => unsafe { avx512::q4_dots::<N>(self, acts, first) },
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::q4_dots::<N>(self, acts, first) },
            Isa::Portable => scalar::q4_dots::<N>(self, acts, first),
        }
    }
}
