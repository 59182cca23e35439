//! How GGUF lays out the blocks of each 4-, 5- and 6-bit format, decoded into blocks of
//! 32 integer values with their scales: the one place that knows the files' byte
//! layouts (ggml's `block_q4_0` ... `block_q6_K`). The matrices then pack the integers
//! their kernels' way ([`super::NibbleMatrix`], [`super::Q6Matrix`]).
//!
//! The K-quants group eight or sixteen sub-blocks in a super-block of 256 values with
//! integer sub-block scales under one f16 scale; a sub-block of 32 is decoded with the
//! product of both as its scale, which is exact in f32 (an f16 times an integer below
//! 256), so the value of every weight is the file's to the bit.

use super::{QuantError, BLOCK};

/// A quantized GGUF weight format our integer kernels read besides Q8_0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// Per 32: f16 `d`, 16 bytes of nibbles; values `d * (q - 8)`.
    Q4_0,
    /// Per 32: f16 `d`, f16 `m`, 16 bytes of nibbles; values `d * q + m`.
    Q4_1,
    /// Per 32: f16 `d`, 32 fifth bits, 16 bytes of nibbles; values `d * (q - 16)`.
    Q5_0,
    /// Per 32: f16 `d`, f16 `m`, 32 fifth bits, 16 bytes of nibbles; values `d * q + m`.
    Q5_1,
    /// Per 256: f16 `d`, f16 `dmin`, eight 6-bit scales and mins, 128 bytes of
    /// nibbles; values `d * sc * q - dmin * m` per sub-block of 32.
    Q4K,
    /// Q4K with a fifth bit per value (32 bytes of bit planes).
    Q5K,
    /// Per 256: 6-bit values in 128 bytes of nibbles and 64 of bit pairs, sixteen
    /// signed 8-bit scales, f16 `d`; values `d * sc * (q - 32)` per sub-block of 16.
    Q6K,
}

/// A block of 32 unsigned values `q` meaning `scale * q + offset`.
pub(super) struct UnsignedBlock {
    pub(super) quants: [u8; BLOCK],
    pub(super) scale: f32,
    pub(super) offset: f32,
}

/// A block of 32 six-bit values `q` meaning `scale * half_scales[i / 16] * (q - 32)`.
pub(super) struct Q6Block {
    pub(super) quants: [u8; BLOCK],
    pub(super) half_scales: [i8; 2],
    pub(super) scale: f32,
}

/// Values of a K-quant super-block.
const SUPER_BLOCK: usize = 256;

impl BlockFormat {
    /// Values per stored block.
    pub fn block_values(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 => BLOCK,
            Self::Q4K | Self::Q5K | Self::Q6K => SUPER_BLOCK,
        }
    }

    /// Bytes per stored block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// The stored blocks of a `rows x cols` matrix, after checking its shape and size.
    pub(super) fn blocks<'a>(
        self,
        bytes: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<std::slice::ChunksExact<'a, u8>, QuantError> {
        if !cols.is_multiple_of(self.block_values()) {
            return Err(QuantError::RaggedRow {
                cols,
                block: self.block_values(),
            });
        }
        let expected = rows * cols / self.block_values() * self.block_bytes();
        if bytes.len() != expected {
            return Err(QuantError::Size {
                format: self.name(),
                expected,
                actual: bytes.len(),
            });
        }
        Ok(bytes.chunks_exact(self.block_bytes()))
    }

    /// The format's name in ggml.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Whether values need a fifth bit.
    pub(super) fn has_fifth_bit(self) -> bool {
        matches!(self, Self::Q5_0 | Self::Q5_1 | Self::Q5K)
    }

    /// Decodes one stored block of an unsigned format (any but Q6K) into its blocks
    /// of 32, in order.
    pub(super) fn decode_unsigned(self, block: &[u8], out: &mut Vec<UnsignedBlock>) {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 => {
                let d = f16_at(block, 0);
                let (offset, rest) = match self {
                    Self::Q4_0 => (-8.0 * d, &block[2..]),
                    Self::Q5_0 => (-16.0 * d, &block[2..]),
                    _ => (f16_at(block, 2), &block[4..]),
                };
                let (fifth, nibbles) = if self.has_fifth_bit() {
                    (u32_at(rest, 0), &rest[4..])
                } else {
                    (0, rest)
                };
                let mut quants = [0u8; BLOCK];
                for (j, &byte) in nibbles.iter().enumerate() {
                    quants[j] = (byte & 15) | bit(fifth, j) << 4;
                    quants[j + 16] = (byte >> 4) | bit(fifth, j + 16) << 4;
                }
                out.push(UnsignedBlock {
                    quants,
                    scale: d,
                    offset,
                });
            }
            Self::Q4K | Self::Q5K => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let scales = &block[4..16];
                let (planes, nibbles) = if self == Self::Q5K {
                    (&block[16..48], &block[48..176])
                } else {
                    (&[0u8; 32][..], &block[16..144])
                };
                // Each 64 values: 32 bytes, the low nibbles one sub-block, the high the next.
                for (pair, bytes) in nibbles.chunks_exact(32).enumerate() {
                    for half in 0..2 {
                        let sub = 2 * pair + half;
                        let (sc, m) = k_scale_and_min(scales, sub);
                        let mut quants = [0u8; BLOCK];
                        for (l, &byte) in bytes.iter().enumerate() {
                            let nibble = if half == 0 { byte & 15 } else { byte >> 4 };
                            quants[l] = nibble | ((planes[l] >> sub) & 1) << 4;
                        }
                        out.push(UnsignedBlock {
                            quants,
                            scale: d * f32::from(sc),
                            offset: -dmin * f32::from(m),
                        });
                    }
                }
            }
            Self::Q6K => unreachable!("Q6_K is decoded by decode_q6"),
        }
    }

    /// Decodes one stored Q6_K block into its eight blocks of 32, in order.
    pub(super) fn decode_q6(block: &[u8], out: &mut Vec<Q6Block>) {
        let (low, high, scales) = (&block[..128], &block[128..192], &block[192..208]);
        let d = f16_at(block, 208);
        let mut values = [0u8; SUPER_BLOCK];
        // Each 128 values: 64 bytes of nibbles and 32 of bit pairs, in four runs of 32.
        for half in 0..2 {
            let (ql, qh) = (&low[64 * half..], &high[32 * half..]);
            let y = &mut values[128 * half..];
            for l in 0..32 {
                y[l] = (ql[l] & 15) | (qh[l] & 3) << 4;
                y[l + 32] = (ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4;
                y[l + 64] = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
                y[l + 96] = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
            }
        }
        for (b, chunk) in values.chunks_exact(BLOCK).enumerate() {
            let mut quants = [0u8; BLOCK];
            quants.copy_from_slice(chunk);
            out.push(Q6Block {
                quants,
                half_scales: [scales[2 * b] as i8, scales[2 * b + 1] as i8],
                scale: d,
            });
        }
    }
}

/// Sub-block `j`'s 6-bit scale and min from a K-quant's 12 packed bytes (ggml's
/// `get_scale_min_k4`).
fn k_scale_and_min(q: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn bit(bits: u32, j: usize) -> u8 {
    ((bits >> j) & 1) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn k_scales_unpack_six_bits_from_twelve_bytes() {
        // Sub-blocks 0-3 take bytes 0-3 (scale) and 4-7 (min) whole; 4-7 take a nibble
        // of bytes 8-11 and the top two bits of bytes 0-3 (scale) and 4-7 (min).
        let q = [0b11_000001, 2, 3, 4, 0b01_000101, 6, 7, 8, 0x9A, 0, 0, 0];
        assert_eq!(k_scale_and_min(&q, 0), (1, 5));
        assert_eq!(k_scale_and_min(&q, 4), (0xA | 0b11 << 4, 0x9 | 0b01 << 4));
    }

    #[test]
    fn q5_0_values_take_their_fifth_bit_from_the_bit_plane() {
        let mut block = f16(0.5).to_vec();
        block.extend((1u32 | 1 << 16 | 1 << 31).to_le_bytes());
        block.extend([0x21u8; 16]);
        let mut out = Vec::new();
        BlockFormat::Q5_0.decode_unsigned(&block, &mut out);
        let b = &out[0];
        // Value 0: nibble 1 + 16; value 16: nibble 2 + 16; value 31: nibble 2 + 16.
        assert_eq!(
            (b.quants[0], b.quants[1], b.quants[16], b.quants[31]),
            (17, 1, 18, 18)
        );
        assert_eq!((b.scale, b.offset), (0.5, -8.0));
    }

    #[test]
    fn q4_k_sub_blocks_alternate_low_and_high_nibbles() {
        let mut block = f16(2.0).to_vec();
        block.extend(f16(1.0));
        // Sub-block 0: scale 3, min 1; sub-block 1: scale 5, min 2.
        block.extend([3, 5, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0]);
        block.extend([0x72u8; 128]);
        let mut out = Vec::new();
        BlockFormat::Q4K.decode_unsigned(&block, &mut out);
        assert_eq!(out.len(), 8);
        assert_eq!(
            (out[0].quants[0], out[0].scale, out[0].offset),
            (2, 6.0, -1.0)
        );
        assert_eq!(
            (out[1].quants[31], out[1].scale, out[1].offset),
            (7, 10.0, -2.0)
        );
    }

    #[test]
    fn q6_k_values_interleave_four_runs_per_128() {
        let mut block = vec![0u8; 210];
        block[0] = 0x21; // ql[0]: value 0 low nibble 1, value 64 low nibble 2
        block[32] = 0x43; // ql[32]: value 32 nibble 3, value 96 nibble 4
        block[128] = 0b11_10_01_00; // qh[0]: high bits of values 0, 32, 64, 96
        block[192] = 7; // scale of values 0-15
        block[195] = (-2i8) as u8; // scale of values 48-63
        block[208..210].copy_from_slice(&f16(0.25));
        let mut out = Vec::new();
        BlockFormat::decode_q6(&block, &mut out);
        assert_eq!(out[0].quants[0], 1);
        assert_eq!(out[1].quants[0], 3 | 1 << 4);
        assert_eq!(out[2].quants[0], 2 | 2 << 4);
        assert_eq!(out[3].quants[0], 4 | 3 << 4);
        assert_eq!((out[0].half_scales, out[1].half_scales), ([7, 0], [0, -2]));
        assert_eq!(out[0].scale, 0.25);
    }

    #[test]
    fn a_wrong_size_or_ragged_row_is_refused() {
        assert!(matches!(
            BlockFormat::Q4K.blocks(&[0; 144], 1, 128),
            Err(QuantError::RaggedRow {
                cols: 128,
                block: 256
            })
        ));
        assert!(matches!(
            BlockFormat::Q6K.blocks(&[0; 209], 1, 256),
            Err(QuantError::Size { .. })
        ));
        assert_eq!(
            BlockFormat::Q5K.blocks(&[0; 352], 2, 256).unwrap().count(),
            2
        );
    }
}
