//! Our BERT encoder forward over a packed batch: the tokens of every text of a batch in
//! one `[tokens, hidden]` tensor, with no padding, each text attending only to itself.
//!
//! candle-transformers' `BertModel` pads every text to the batch's longest and runs
//! attention as one small matrix product per text and head; on SST-2 sentences half of
//! its work was padding. Here the dense layers see only real tokens, query, key and value
//! are one product, and on the CPU the layers after attention run on our Q8_0 integer
//! kernels (weights quantized at load; candle's f32 product has no AVX-512 path) while
//! attention and GELU run as plain loops split over candle's kernel pool. Other devices
//! run attention as candle ops, one text at a time.

use std::sync::Mutex;

use candle_core::{Device, Tensor};
use candle_nn::{LayerNorm, Linear, Module, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::quant::{Q8Matrix, Q8Weights};

/// A BERT encoder.
pub struct Bert {
    word_embeddings: WordEmbeddings,
    position_embeddings: Tensor,
    /// Every token is of type 0, so only that row of the type embeddings is kept.
    token_type_embedding: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    activation: HiddenAct,
    max_positions: usize,
}

struct Layer {
    /// Query, key and value weights stacked, so that one product makes all three.
    qkv: Dense,
    attention_output: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// The word embedding table: on the CPU Q8_0 rows, dequantized as tokens need them (a
/// quarter of the f32 table's 47 MB for MiniLM's 30522 x 384); elsewhere a tensor.
enum WordEmbeddings {
    Int8(Q8Matrix),
    F32(Tensor),
}

impl WordEmbeddings {
    fn new(table: Tensor) -> candle_core::Result<Self> {
        if table.device().is_cpu() {
            let (rows, cols) = table.dims2()?;
            if let Ok(matrix) = Q8Matrix::quantize(&table.flatten_all()?.to_vec1()?, rows, cols) {
                return Ok(Self::Int8(matrix));
            }
        }
        Ok(Self::F32(table))
    }

    /// The rows of `ids`, `[ids, hidden]`; an error for an id past the table (a
    /// tokenizer that does not match the weights).
    fn lookup(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::F32(table) => table.index_select(&Tensor::new(ids, device)?, 0),
            Self::Int8(table) => {
                if let Some(id) = ids.iter().find(|&&id| id as usize >= table.rows()) {
                    candle_core::bail!("token {id} is past the vocabulary of {}", table.rows());
                }
                Tensor::from_vec(
                    table.dequantize_rows(ids),
                    (ids.len(), table.cols()),
                    device,
                )
            }
        }
    }
}

/// A dense layer: on the CPU, its weights in Q8_0 through our integer kernels (the
/// layers after attention); elsewhere, and for query, key and value, candle's f32.
enum Dense {
    Int8 { weights: Q8Weights, bias: Tensor },
    F32(Linear),
}

impl Dense {
    /// In f32 through candle's product.
    fn f32(weight: Tensor, bias: Tensor) -> Self {
        Self::F32(Linear::new(weight, Some(bias)))
    }

    /// Through our integer kernels on the CPU, where the row width allows.
    fn int8(weight: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        if weight.device().is_cpu() {
            let (rows, cols) = weight.dims2()?;
            if let Ok(matrix) = Q8Matrix::quantize(&weight.flatten_all()?.to_vec1()?, rows, cols) {
                return Ok(Self::Int8 {
                    weights: Q8Weights::new(matrix),
                    bias,
                });
            }
        }
        Ok(Self::f32(weight, bias))
    }

    /// `x · Wᵀ + b` for `x` of `[tokens, inputs]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::F32(linear) => linear.forward(x),
            Self::Int8 { weights, bias } => {
                let (tokens, _) = x.dims2()?;
                let out = weights.matmul(&x.flatten_all()?.to_vec1()?, tokens);
                Tensor::from_vec(out, (tokens, weights.rows()), x.device())?.broadcast_add(bias)
            }
        }
    }
}

impl Bert {
    /// Reads the weights, with or without the `bert.` prefix of masked-LM checkpoints.
    ///
    /// # Errors
    /// When a weight is missing or of the wrong shape.
    pub fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let hidden = config.hidden_size;
        let embeddings = vb.pp("embeddings");
        let word_embeddings = WordEmbeddings::new(
            embeddings.get((config.vocab_size, hidden), "word_embeddings.weight")?,
        )?;
        let position_embeddings = embeddings.get(
            (config.max_position_embeddings, hidden),
            "position_embeddings.weight",
        )?;
        let token_type_embedding = embeddings
            .get(
                (config.type_vocab_size, hidden),
                "token_type_embeddings.weight",
            )?
            .get(0)?;
        let embedding_norm =
            candle_nn::layer_norm(hidden, config.layer_norm_eps, embeddings.pp("LayerNorm"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            embedding_norm,
            layers,
            heads: config.num_attention_heads,
            activation: config.hidden_act,
            max_positions: config.max_position_embeddings,
        })
    }

    /// The last hidden states of `texts` (token ids, none empty), packed in order:
    /// `[total tokens, hidden]`.
    ///
    /// # Errors
    /// When a text is longer than the position table, or a candle operation fails.
    pub fn forward(&self, texts: &[&[u32]]) -> candle_core::Result<Tensor> {
        let device = self.position_embeddings.device();
        let lengths: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        if let Some(&longest) = lengths.iter().max() {
            if longest > self.max_positions {
                candle_core::bail!(
                    "a text of {longest} tokens; the encoder takes {} at most",
                    self.max_positions
                );
            }
        }
        let ids: Vec<u32> = texts.iter().flat_map(|t| t.iter().copied()).collect();
        let positions: Vec<u32> = lengths.iter().flat_map(|&n| 0..n as u32).collect();
        let positions = Tensor::new(positions, device)?;
        let embedded = (self.word_embeddings.lookup(&ids, device)?
            + self.position_embeddings.index_select(&positions, 0)?)?
        .broadcast_add(&self.token_type_embedding)?;
        let mut hidden = self.embedding_norm.forward(&embedded)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &lengths, self.heads, self.activation)?;
        }
        Ok(hidden)
    }
}

impl Layer {
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let hidden = config.hidden_size;
        let eps = config.layer_norm_eps;
        let part = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
            let vb = vb.pp("attention.self").pp(name);
            Ok((vb.get((hidden, hidden), "weight")?, vb.get(hidden, "bias")?))
        };
        let (q, q_bias) = part("query")?;
        let (k, k_bias) = part("key")?;
        let (v, v_bias) = part("value")?;
        // Query, key and value stay in f32 (one product): the attention scores amplify the
        // rounding of query and key (in int8 a one-token text's embedding fell to a cosine
        // of 0.9989 to sentence-transformers').
        let qkv = Dense::f32(
            Tensor::cat(&[q, k, v], 0)?,
            Tensor::cat(&[q_bias, k_bias, v_bias], 0)?,
        );
        let dense = |inputs: usize, outputs: usize, name: &str| {
            let vb = vb.pp(name);
            Dense::int8(
                vb.get((outputs, inputs), "weight")?,
                vb.get(outputs, "bias")?,
            )
        };
        let intermediate = config.intermediate_size;
        Ok(Self {
            qkv,
            attention_output: dense(hidden, hidden, "attention.output.dense")?,
            attention_norm: candle_nn::layer_norm(
                hidden,
                eps,
                vb.pp("attention.output.LayerNorm"),
            )?,
            intermediate: dense(hidden, intermediate, "intermediate.dense")?,
            output: dense(intermediate, hidden, "output.dense")?,
            output_norm: candle_nn::layer_norm(hidden, eps, vb.pp("output.LayerNorm"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        lengths: &[usize],
        heads: usize,
        activation: HiddenAct,
    ) -> candle_core::Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let context = match x.device() {
            Device::Cpu => packed_attention_cpu(&qkv, lengths, heads)?,
            _ => packed_attention(&qkv, lengths, heads)?,
        };
        let x = self
            .attention_norm
            .forward(&(self.attention_output.forward(&context)? + x)?)?;
        let inner = self.intermediate.forward(&x)?;
        let inner = match (activation, x.device()) {
            (HiddenAct::Gelu, Device::Cpu) => gelu_erf_cpu(&inner)?,
            (HiddenAct::Gelu, _) => inner.gelu_erf()?,
            (HiddenAct::GeluApproximate, _) => inner.gelu()?,
            (HiddenAct::Relu, _) => inner.relu()?,
        };
        self.output_norm
            .forward(&(self.output.forward(&inner)? + x)?)
    }
}

/// Self-attention of each text over its own tokens, from the packed `[tokens, 3 * hidden]`
/// query-key-value rows, as candle ops one text at a time: the reference of
/// [`packed_attention_cpu`] and the path of other devices.
fn packed_attention(qkv: &Tensor, lengths: &[usize], heads: usize) -> candle_core::Result<Tensor> {
    let hidden = qkv.dim(1)? / 3;
    let head_size = hidden / heads;
    let scale = 1.0 / (head_size as f64).sqrt();
    let mut start = 0;
    let mut contexts = Vec::with_capacity(lengths.len());
    for &n in lengths {
        let rows = qkv.narrow(0, start, n)?;
        let split = |i: usize| -> candle_core::Result<Tensor> {
            rows.narrow(1, i * hidden, hidden)?
                .reshape((n, heads, head_size))?
                .transpose(0, 1)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let probabilities = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probabilities
            .matmul(&v)?
            .transpose(0, 1)?
            .reshape((n, hidden))?;
        contexts.push(context);
        start += n;
    }
    Tensor::cat(&contexts, 0)
}

/// [`packed_attention`] as plain loops over each text's rows, texts split over candle's
/// kernel pool: a text's whole attention is a few thousand multiply-adds per head, too
/// little for a matrix product call each.
fn packed_attention_cpu(
    qkv: &Tensor,
    lengths: &[usize],
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (tokens, width) = qkv.dims2()?;
    let hidden = width / 3;
    let head_size = hidden / heads;
    let scale = 1.0 / (head_size as f32).sqrt();
    let qkv = qkv.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; tokens * hidden];
    let mut texts = Vec::with_capacity(lengths.len());
    let mut rest = out.as_mut_slice();
    let mut start = 0;
    for &n in lengths {
        let (text, tail) = rest.split_at_mut(n * hidden);
        texts.push((start, Mutex::new(text)));
        rest = tail;
        start += n;
    }
    candle_core::utils::barrier_pool().execute_chunked(texts.len(), |items| {
        crate::fault_injection::panic_if_asked("embedder");
        let mut scores = Vec::new();
        for (start, text) in &texts[items] {
            let Ok(mut text) = text.lock() else { continue };
            let n = text.len() / hidden;
            let row = |t: usize| &qkv[(start + t) * width..(start + t + 1) * width];
            for h in 0..heads {
                let head = h * head_size..(h + 1) * head_size;
                for i in 0..n {
                    let q = &row(i)[head.clone()];
                    scores.clear();
                    scores.extend((0..n).map(|j| {
                        let k = &row(j)[hidden + head.start..hidden + head.end];
                        dot(q, k) * scale
                    }));
                    let top = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut total = 0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - top).exp();
                        total += *s;
                    }
                    let context = &mut text[i * hidden + head.start..i * hidden + head.end];
                    for (j, &p) in scores.iter().enumerate() {
                        let v = &row(j)[2 * hidden + head.start..2 * hidden + head.end];
                        let weight = p / total;
                        for (c, &value) in context.iter_mut().zip(v) {
                            *c += weight * value;
                        }
                    }
                }
            }
        }
    });
    Tensor::from_vec(out, (tokens, hidden), &Device::Cpu)
}

/// The dot product of two equally long rows, in eight lanes that the compiler keeps in
/// one vector register (a plain `sum` must add in order, so it stays scalar).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_blocks, b_blocks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_blocks.zip(b_blocks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Values per work item of [`gelu_erf_cpu`].
const GELU_CHUNK: usize = 16 * 1024;

/// The exact (erf) GELU, split over the kernel pool with a vectorizable erf: candle
/// runs it on one thread with a scalar erf per value, a fifth of this encoder's time.
fn gelu_erf_cpu(x: &Tensor) -> candle_core::Result<Tensor> {
    let shape = x.shape().clone();
    let mut values = x.flatten_all()?.to_vec1::<f32>()?;
    let chunks: Vec<Mutex<&mut [f32]>> = values.chunks_mut(GELU_CHUNK).map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(chunks.len(), |items| {
        for chunk in &chunks[items] {
            let Ok(mut chunk) = chunk.lock() else {
                continue;
            };
            for v in chunk.iter_mut() {
                *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    });
    drop(chunks);
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// erf by the odd rational approximation that Eigen and XLA use, on inputs clamped to
/// ±4 (where f32's erf is ±1): within 5e-7 of the exact value, and multiply-adds only,
/// so a loop of it becomes vector code.
fn erf(x: f32) -> f32 {
    const NUMERATOR: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906e-4,
        -2.954_600_2e-3,
        -1.609_603_3e-2,
    ];
    const DENOMINATOR: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = NUMERATOR.iter().fold(0.0, |p, &c| p * x2 + c) * x;
    let q = DENOMINATOR.iter().fold(0.0, |q, &c| q * x2 + c);
    p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    fn largest_gap(a: &Tensor, b: &Tensor) -> f32 {
        let a = a
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("values");
        let b = b
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("values");
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn the_cpu_attention_loops_equal_candle_ops_text_by_text() -> candle_core::Result<()> {
        // Three texts of different lengths, one of a single token; 4 heads of 8.
        let lengths = [5, 1, 9];
        let tokens: usize = lengths.iter().sum();
        let qkv = Tensor::from_vec(pseudo_random(tokens * 96, 7), (tokens, 96), &Device::Cpu)?;
        let reference = packed_attention(&qkv, &lengths, 4)?;
        let ours = packed_attention_cpu(&qkv, &lengths, 4)?;
        assert_eq!(ours.dims(), &[tokens, 32]);
        let gap = largest_gap(&ours, &reference);
        assert!(gap < 1e-5, "largest gap {gap}");
        // A one-token text attends to itself alone: its context is its own value row.
        let single = qkv.get(5)?.narrow(0, 64, 32)?;
        assert!(largest_gap(&ours.get(5)?, &single) < 1e-6);
        Ok(())
    }

    #[test]
    fn erf_is_within_5e_7_of_candles_and_the_gelu_follows() -> candle_core::Result<()> {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let exact = candle_core::cpu::erf::erf_f64(f64::from(x)) as f32;
            worst = worst.max((erf(x) - exact).abs());
        }
        assert!(worst < 5e-7, "largest erf gap {worst}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!((erf(9.0), erf(-9.0)), (erf(4.0), -erf(4.0)));
        let values = pseudo_random(3 * (GELU_CHUNK + 1), 3);
        let x = Tensor::from_vec(values, (3, GELU_CHUNK + 1), &Device::Cpu)?;
        let gap = largest_gap(&gelu_erf_cpu(&x)?, &x.gelu_erf()?);
        assert!(gap < 1e-6, "largest GELU gap {gap}");
        Ok(())
    }

    #[test]
    fn the_lane_dot_product_equals_the_plain_sum() {
        let (a, b) = (pseudo_random(37, 1), pseudo_random(37, 2));
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
        assert_eq!(dot(&[2.0], &[3.0]), 6.0);
    }
}
