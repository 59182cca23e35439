//! Q6_K weights: 6-bit values `q` in sub-blocks of 16 with signed 8-bit scales under
//! one f16 scale per 256, each value `d * sc * (q - 32)`.
//!
//! A block of 32 holds two sub-blocks, so its product with a Q8 activation block is
//! `d dx (sc₀ Σ₀ (q - 32) x + sc₁ Σ₁ (q - 32) x)`: the integer part exact (pairs of
//! products fit 16 bits, `vpmaddwd` by the sub-block scales widens them), with the
//! activations quantized by 256 as llama.cpp's kernel has them.

use super::blocks::{BlockFormat, Q6Block};
use super::product::{product, Row, RowKernel};
use super::{avx2, avx512, scalar, Isa, Q8Rows, QuantError, BLOCK};

/// A row-major matrix of Q6_K weights: `rows` outputs, `cols` inputs.
pub struct Q6Matrix {
    rows: usize,
    cols: usize,
    /// The super-block's scale, repeated for each of its blocks of 32.
    scales: Vec<f32>,
    /// Two sub-block scales per block of 32.
    half_scales: Vec<i8>,
    /// 16 bytes per block: the low four bits of value `j` and `j + 16` in byte `j`.
    nibbles: Vec<u8>,
    /// Two words per block: bit `j` of the first is value `j`'s fifth bit, of the
    /// second its sixth.
    high_bits: Vec<u32>,
}

/// One weight row of a [`Q6Matrix`].
pub(super) struct Q6Row<'a> {
    pub(super) scales: &'a [f32],
    pub(super) half_scales: &'a [i8],
    pub(super) nibbles: &'a [u8],
    pub(super) high_bits: &'a [u32],
}

impl Q6Matrix {
    /// Reads GGUF's Q6_K layout, row-major.
    ///
    /// # Errors
    /// When `cols` is not a multiple of 256 or `bytes` has the wrong length.
    pub fn from_gguf(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, QuantError> {
        let mut decoded = Vec::with_capacity(rows * cols / BLOCK);
        for block in BlockFormat::Q6K.blocks(bytes, rows, cols)? {
            BlockFormat::decode_q6(block, &mut decoded);
        }
        Ok(Self::pack(&decoded, rows, cols))
    }

    fn pack(decoded: &[Q6Block], rows: usize, cols: usize) -> Self {
        let mut matrix = Self {
            rows,
            cols,
            scales: decoded.iter().map(|b| b.scale).collect(),
            half_scales: decoded.iter().flat_map(|b| b.half_scales).collect(),
            nibbles: Vec::with_capacity(decoded.len() * BLOCK / 2),
            high_bits: Vec::with_capacity(decoded.len() * 2),
        };
        for block in decoded {
            let (low, high) = block.quants.split_at(BLOCK / 2);
            matrix.nibbles.extend(
                low.iter()
                    .zip(high)
                    .map(|(&l, &h)| (l & 15) | (h & 15) << 4),
            );
            for bit in [4, 5] {
                let values = block.quants.iter().enumerate();
                matrix
                    .high_bits
                    .push(values.fold(0, |w, (j, &q)| w | u32::from(q >> bit & 1) << j));
            }
        }
        matrix
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

    /// Like [`Q6Matrix::matmul`] on a chosen path.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        product(self, isa, x, tokens)
    }

    /// Every weight as f32, row-major (the tests' reference).
    #[cfg(test)]
    pub(super) fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (b, nibbles) in self.nibbles.chunks_exact(BLOCK / 2).enumerate() {
            let (fifth, sixth) = (self.high_bits[2 * b], self.high_bits[2 * b + 1]);
            let value = |nibble: u8, j: usize| {
                let q = i32::from(nibble)
                    + 16 * ((fifth >> j) & 1) as i32
                    + 32 * ((sixth >> j) & 1) as i32;
                let sc = f32::from(self.half_scales[2 * b + j / 16]);
                self.scales[b] * sc * (q - 32) as f32
            };
            out.extend(nibbles.iter().enumerate().map(|(j, &n)| value(n & 15, j)));
            out.extend(
                nibbles
                    .iter()
                    .enumerate()
                    .map(|(j, &n)| value(n >> 4, j + 16)),
            );
        }
        out
    }
}

impl RowKernel for Q6Matrix {
    type Row<'a> = Q6Row<'a>;

    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn activation_group(&self) -> usize {
        BlockFormat::Q6K.block_values()
    }

    fn prepare(&self, _isa: Isa, acts: Q8Rows) -> Q8Rows {
        acts
    }

    fn row(&self, row: usize) -> Q6Row<'_> {
        let blocks = self.cols / BLOCK;
        let range = row * blocks..(row + 1) * blocks;
        Q6Row {
            scales: &self.scales[range.clone()],
            half_scales: &self.half_scales[2 * range.start..2 * range.end],
            nibbles: &self.nibbles[range.start * BLOCK / 2..range.end * BLOCK / 2],
            high_bits: &self.high_bits[2 * range.start..2 * range.end],
        }
    }
}

impl Row for Q6Row<'_> {
    fn dots<const N: usize>(&self, isa: Isa, acts: &Q8Rows, first: usize) -> [f32; N] {
        // Checked in release builds too: the kernels read raw pointers by these bounds.
        assert!(first + N <= acts.rows && self.nibbles.len() * 2 == acts.cols);
        assert!(self.high_bits.len() == self.half_scales.len());
        match isa {
            // SAFETY: the product driver only runs a path the CPU reports, on tokens
            // inside `acts` (asserted above).
            Isa::Avx512Vnni => unsafe { avx512::q6_dots::<N>(self, acts, first) },
            // SAFETY: as above.
            Isa::Avx2 => unsafe { avx2::q6_dots::<N>(self, acts, first) },
            Isa::Portable => scalar::q6_dots::<N>(self, acts, first),
        }
    }
}
