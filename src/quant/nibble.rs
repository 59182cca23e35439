//! The 4- and 5-bit formats (Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K): unsigned values `q`
//! in blocks of 32, each block `d * q + m`.
//!
//! A block's product with a Q8 activation block is `d dx Σ q x + m dx Σ x`: an exact
//! integer dot product of unsigned values with signed bytes (`vpmaddubsw` never
//! saturates: 2 x 31 x 127 < 2^15), plus the block's offset times the activation
//! block's sum, which is computed once per token. The K-quants' sub-blocks of 32 are
//! such blocks, with the super-block's and sub-block's scales multiplied at load
//! ([`super::blocks`]; llama.cpp multiplies them in its kernel instead), and their
//! activations are quantized by 256 values, as llama.cpp's `Q8_K`.

use super::blocks::{BlockFormat, UnsignedBlock};
use super::product::{product, Row, RowKernel};
use super::{avx2, avx512, scalar, Isa, Q8Rows, QuantError, BLOCK};

/// A row-major matrix of 4- or 5-bit blocks: `rows` outputs, `cols` inputs.
pub struct NibbleMatrix {
    rows: usize,
    cols: usize,
    scales: Vec<f32>,
    offsets: Vec<f32>,
    /// 16 bytes per block: byte `j` holds value `j` (low nibble) and `j + 16` (high).
    nibbles: Vec<u8>,
    /// The 5-bit formats' fifth bits, one word per block (bit `j`: value `j`); empty
    /// for the 4-bit formats.
    fifth_bits: Vec<u32>,
    /// The GGUF format the blocks came from: how llama.cpp quantizes the activations
    /// for it.
    format: BlockFormat,
}

/// One weight row of a [`NibbleMatrix`].
pub(super) struct NibbleRow<'a> {
    pub(super) nibbles: &'a [u8],
    pub(super) fifth_bits: &'a [u32],
    pub(super) scales: &'a [f32],
    pub(super) offsets: &'a [f32],
}

impl NibbleMatrix {
    /// Reads a 4- or 5-bit GGUF format's bytes, row-major.
    ///
    /// # Errors
    /// When the format is Q6_K, `cols` is not a multiple of the format's block, or
    /// `bytes` has the wrong length.
    pub fn from_gguf(
        format: BlockFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantError> {
        if format == BlockFormat::Q6K {
            return Err(QuantError::Unsupported(format.name()));
        }
        let mut decoded = Vec::with_capacity(rows * cols / BLOCK);
        for block in format.blocks(bytes, rows, cols)? {
            format.decode_unsigned(block, &mut decoded);
        }
        Ok(Self::pack(&decoded, rows, cols, format))
    }

    /// Packs decoded blocks of `format`.
    fn pack(decoded: &[UnsignedBlock], rows: usize, cols: usize, format: BlockFormat) -> Self {
        let five_bits = format.has_fifth_bit();
        let mut matrix = Self {
            format,
            rows,
            cols,
            scales: decoded.iter().map(|b| b.scale).collect(),
            offsets: decoded.iter().map(|b| b.offset).collect(),
            nibbles: Vec::with_capacity(decoded.len() * BLOCK / 2),
            fifth_bits: Vec::new(),
        };
        for block in decoded {
            let (low, high) = block.quants.split_at(BLOCK / 2);
            matrix.nibbles.extend(
                low.iter()
                    .zip(high)
                    .map(|(&l, &h)| (l & 15) | (h & 15) << 4),
            );
            if five_bits {
                let bits = block.quants.iter().enumerate();
                matrix
                    .fifth_bits
                    .push(bits.fold(0, |w, (j, &q)| w | u32::from(q >> 4 & 1) << j));
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

    /// Like [`NibbleMatrix::matmul`] on a chosen path.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], tokens: usize) -> Vec<f32> {
        product(self, isa, x, tokens)
    }

    /// Every weight as f32, row-major (the tests' reference).
    #[cfg(test)]
    pub(super) fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for (b, nibbles) in self.nibbles.chunks_exact(BLOCK / 2).enumerate() {
            let fifth = self.fifth_bits.get(b).copied().unwrap_or(0);
            let value = |q: u8, j: usize| {
                let q = q | (((fifth >> j) & 1) as u8) << 4;
                self.scales[b] * f32::from(q) + self.offsets[b]
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

impl RowKernel for NibbleMatrix {
    type Row<'a> = NibbleRow<'a>;

    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    /// The format's stored block: 256 values for the K-quants (llama.cpp's `Q8_K`).
    fn activation_group(&self) -> usize {
        self.format.block_values()
    }

    /// The block sums the offsets multiply, in f16 for the formats llama.cpp pairs with
    /// `Q8_1` (Q4_1, Q5_1).
    fn prepare(&self, _isa: Isa, acts: Q8Rows) -> Q8Rows {
        acts.with_sums(matches!(self.format, BlockFormat::Q4_1 | BlockFormat::Q5_1))
    }

    fn row(&self, row: usize) -> NibbleRow<'_> {
        let blocks = self.cols / BLOCK;
        let fifth_bits = if self.fifth_bits.is_empty() {
            &[][..]
        } else {
            &self.fifth_bits[row * blocks..(row + 1) * blocks]
        };
        NibbleRow {
            nibbles: &self.nibbles[row * self.cols / 2..(row + 1) * self.cols / 2],
            fifth_bits,
            scales: &self.scales[row * blocks..(row + 1) * blocks],
            offsets: &self.offsets[row * blocks..(row + 1) * blocks],
        }
    }
}

impl Row for NibbleRow<'_> {
    fn dots<const N: usize>(&self, isa: Isa, acts: &Q8Rows, first: usize) -> [f32; N] {
        // Checked in release builds too: the kernels read raw pointers by these bounds.
        assert!(first + N <= acts.rows && self.nibbles.len() * 2 == acts.cols);
        assert!(acts.sums.len() == acts.scales.len());
        if self.fifth_bits.is_empty() {
            match isa {
                // SAFETY: the product driver only runs a path the CPU reports, on
                // tokens inside `acts` (asserted above), which carry their sums.
                Isa::Avx512Vnni => unsafe { avx512::nibble_dots::<N, false>(self, acts, first) },
                // SAFETY: as above.
                Isa::Avx2 => unsafe { avx2::nibble_dots::<N, false>(self, acts, first) },
                Isa::Portable => scalar::nibble_dots::<N>(self, acts, first),
            }
        } else {
            assert!(self.fifth_bits.len() * BLOCK == acts.cols);
            match isa {
                // SAFETY: as above, and the row has a word of fifth bits per block.
                Isa::Avx512Vnni => unsafe { avx512::nibble_dots::<N, true>(self, acts, first) },
                // SAFETY: as above.
                Isa::Avx2 => unsafe { avx2::nibble_dots::<N, true>(self, acts, first) },
                Isa::Portable => scalar::nibble_dots::<N>(self, acts, first),
            }
        }
    }
}
