//! The decoder forward pass, owned rather than borrowed from candle-transformers: one
//! forward for every supported family, the [`Architecture`] saying which optional parts
//! (biases, query/key norms, post norms, local attention...) a model uses.
//!
//! It reads the GGUF tensors itself and runs on candle tensors and ops (so the CUDA
//! build works), with two differences from candle's `quantized_llama` that the service
//! needs: every token carries its own position and an explicit attention mask may be
//! given (so several continuations can share one pass), and quantized matrices on the
//! CPU (Q8_0, the 4-, 5- and 6-bit formats, K-quants included) go through the integer
//! kernels of [`crate::quant`] instead of candle's.

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::architecture::{Activation, Architecture, RopeLayout};
use super::attention::{self, Visibility};
use super::LlmError;
use crate::quant::{BlockFormat, NibbleMatrix, Q6Matrix, Q8Matrix, Q8Weights};

/// A weight matrix applied as `x · Wᵀ`.
enum Linear {
    /// Q8_0 on the CPU: our integer kernels (shared with the embedding table when the
    /// output head is tied to it).
    Int8(Arc<Q8Weights>),
    /// A 4- or 5-bit format on the CPU: our integer kernels.
    Nibbles(NibbleMatrix),
    /// Q6_K on the CPU: our integer kernels.
    Int6(Q6Matrix),
    /// Anything else (f32, other formats, any GPU): candle's matmul.
    Candle(QMatMul),
}

impl Linear {
    fn new(tensor: QTensor) -> Result<Self, LlmError> {
        if !tensor.device().is_cpu() || !integer_format(tensor.dtype()) {
            return Ok(Self::Candle(QMatMul::from_qtensor(tensor)?));
        }
        let (rows, cols) = tensor.shape().dims2()?;
        Self::integer(tensor.dtype(), &tensor.data()?, rows, cols)
    }

    /// One of our integer kernels over GGUF bytes of `dtype` ([`integer_format`]).
    fn integer(dtype: GgmlDType, bytes: &[u8], rows: usize, cols: usize) -> Result<Self, LlmError> {
        let malformed = |e: crate::quant::QuantError| LlmError::Metadata(e.to_string());
        Ok(match dtype {
            GgmlDType::Q8_0 => Self::Int8(Arc::new(Q8Weights::new(
                Q8Matrix::from_gguf_q8_0(bytes, rows, cols).map_err(malformed)?,
            ))),
            GgmlDType::Q6K => {
                Self::Int6(Q6Matrix::from_gguf(bytes, rows, cols).map_err(malformed)?)
            }
            other => match block_format(other) {
                Some(format) => Self::Nibbles(
                    NibbleMatrix::from_gguf(format, bytes, rows, cols).map_err(malformed)?,
                ),
                None => {
                    return Err(LlmError::Metadata(format!(
                        "no integer kernel reads {other:?} weights"
                    )))
                }
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, LlmError> {
        match self {
            Self::Candle(matmul) => Ok(matmul.forward(x)?),
            Self::Int8(m) => integer_forward(x, m.rows(), m.cols(), |v, t| m.matmul(v, t)),
            Self::Nibbles(m) => integer_forward(x, m.rows(), m.cols(), |v, t| m.matmul(v, t)),
            Self::Int6(m) => integer_forward(x, m.rows(), m.cols(), |v, t| m.matmul(v, t)),
        }
    }
}

/// Runs one of our integer products on `x` (`[.., cols]`), answering `[.., rows]`.
fn integer_forward(
    x: &Tensor,
    rows: usize,
    cols: usize,
    matmul: impl Fn(&[f32], usize) -> Vec<f32>,
) -> Result<Tensor, LlmError> {
    let width = x.dims().last().copied().unwrap_or(0);
    if width != cols {
        return Err(LlmError::Metadata(format!(
            "a matrix of {cols} inputs was given rows of {width}"
        )));
    }
    let tokens = x.elem_count() / cols;
    let values = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = rows;
    }
    Ok(Tensor::from_vec(
        matmul(&values, tokens),
        shape,
        x.device(),
    )?)
}

/// Whether our integer kernels read this weight format.
fn integer_format(dtype: GgmlDType) -> bool {
    dtype == GgmlDType::Q8_0 || block_format(dtype).is_some()
}

/// Our name of a 4-, 5- or 6-bit ggml format.
fn block_format(dtype: GgmlDType) -> Option<BlockFormat> {
    Some(match dtype {
        GgmlDType::Q4_0 => BlockFormat::Q4_0,
        GgmlDType::Q4_1 => BlockFormat::Q4_1,
        GgmlDType::Q5_0 => BlockFormat::Q5_0,
        GgmlDType::Q5_1 => BlockFormat::Q5_1,
        GgmlDType::Q4K => BlockFormat::Q4K,
        GgmlDType::Q5K => BlockFormat::Q5K,
        GgmlDType::Q6K => BlockFormat::Q6K,
        _ => return None,
    })
}

/// Weight matrices applied to the same input (a block's query, key and value
/// projections; its gate and up projections).
enum Stacked {
    /// Their rows stacked into one matrix for our integer kernels: one quantization of
    /// the input and one dispatch to the kernel pool instead of one per matrix.
    /// `widths` are each matrix's outputs, in order.
    One { linear: Linear, widths: Vec<usize> },
    /// Applied one by one (candle's products, or formats that differ).
    Apart(Vec<Linear>),
}

impl Stacked {
    fn new(tensors: Vec<QTensor>) -> Result<Self, LlmError> {
        let cols = |t: &QTensor| t.shape().dims2().ok().map(|(_, cols)| cols);
        let first = tensors.first();
        let stackable = first.is_some_and(|first| {
            tensors.iter().all(|t| {
                t.device().is_cpu()
                    && t.dtype() == first.dtype()
                    && integer_format(t.dtype())
                    && cols(t) == cols(first)
            })
        });
        let (Some(dtype), true) = (first.map(QTensor::dtype), stackable) else {
            return Ok(Self::Apart(
                tensors
                    .into_iter()
                    .map(Linear::new)
                    .collect::<Result<_, _>>()?,
            ));
        };
        let (_, cols) = tensors[0].shape().dims2()?;
        let mut widths = Vec::with_capacity(tensors.len());
        let mut bytes = Vec::new();
        for tensor in &tensors {
            widths.push(tensor.shape().dims2()?.0);
            // GGUF stores a matrix row by row, so stacking rows is appending bytes.
            bytes.extend_from_slice(&tensor.data()?);
        }
        let linear = Linear::integer(dtype, &bytes, widths.iter().sum(), cols)?;
        Ok(Self::One { linear, widths })
    }

    /// Each matrix's product with `x`, in order.
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>, LlmError> {
        match self {
            Self::Apart(linears) => linears.iter().map(|l| l.forward(x)).collect(),
            Self::One { linear, widths } => {
                let all = linear.forward(x)?;
                let last = all.rank() - 1;
                let mut first = 0;
                widths
                    .iter()
                    .map(|&width| {
                        let part = all.narrow(last, first, width)?;
                        first += width;
                        Ok(part)
                    })
                    .collect()
            }
        }
    }
}

/// The token embedding table.
enum Embeddings {
    /// Dequantized to a tensor (other devices, and formats our kernels do not read).
    Table(Tensor),
    /// Q8_0 on the CPU, dequantized as tokens need them: a quarter of the f32 table's
    /// memory (28 MB rather than 113 for SmolLM2's 49152 x 576), and laid out for the
    /// integer kernels, so that a tied output head reads the same copy.
    Int8(Arc<Q8Weights>),
}

impl Embeddings {
    fn new(tensor: &QTensor, device: &Device) -> Result<Self, LlmError> {
        if tensor.device().is_cpu() && tensor.dtype() == GgmlDType::Q8_0 {
            let (rows, cols) = tensor.shape().dims2()?;
            let table = Q8Matrix::from_gguf_q8_0(&tensor.data()?, rows, cols)
                .map_err(|e| LlmError::Metadata(e.to_string()))?;
            return Ok(Self::Int8(Arc::new(Q8Weights::new(table))));
        }
        Ok(Self::Table(tensor.dequantize(device)?))
    }

    /// Tokens in the vocabulary.
    fn rows(&self) -> usize {
        match self {
            Self::Table(table) => table.dim(0).unwrap_or(0),
            Self::Int8(table) => table.rows(),
        }
    }

    /// The embeddings of `ids` (checked to be in the vocabulary), `[1, ids, hidden]`.
    fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor, LlmError> {
        match self {
            Self::Table(table) => Ok(table
                .index_select(&Tensor::new(ids, device)?, 0)?
                .unsqueeze(0)?),
            Self::Int8(table) => Ok(Tensor::from_vec(
                table.dequantize_rows(ids),
                (1, ids.len(), table.cols()),
                device,
            )?),
        }
    }
}

/// One transformer block's weights; the optional parts are those its architecture uses.
struct Layer {
    attention_norm: Tensor,
    /// Query, key and value projections.
    qkv: Stacked,
    /// Their biases (Qwen2).
    qkv_bias: Option<[Tensor; 3]>,
    /// Per-head norms of the queries and keys (Qwen3, Gemma 3).
    qk_norm: Option<(Tensor, Tensor)>,
    wo: Linear,
    /// Norm of the attention's output before the residual add (Gemma 3).
    post_attention_norm: Option<Tensor>,
    ffn_norm: Tensor,
    /// Gate and up projections.
    gate_up: Stacked,
    down: Linear,
    /// Norm of the feed-forward's output before the residual add (Gemma 3).
    post_ffn_norm: Option<Tensor>,
    /// Positions a query sees where the layer attends locally.
    window: Option<usize>,
    /// Its rotary tables, by index in [`Transformer::rotary`].
    rotary: usize,
}

/// cos and sin of `position x frequency`, one row per position.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

/// The model's weights and shape; shared, read-only, by every sequence.
pub struct Transformer {
    arch: Architecture,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    /// Rotary tables: the global layers' first, then the local layers' where their
    /// base differs.
    rotary: Vec<Rotary>,
    device: Device,
}

/// One layer's keys and values, `[1, kv_heads, tokens, head_dim]` each, held as the
/// blocks they were computed in (in order): a decoding step appends its token's block
/// instead of copying every earlier key into a new tensor, and a cached prefix's blocks
/// are shared, not copied, by the sequences that extend it.
#[derive(Clone, Default)]
pub(super) struct LayerKv {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

/// Blocks a layer may hold before they are joined into one: each costs the attention
/// loop a little, and joining them costs one copy.
const MAX_BLOCKS: usize = 64;

impl LayerKv {
    /// Tokens held.
    fn tokens(&self) -> usize {
        self.keys.iter().map(|k| k.dim(2).unwrap_or(0)).sum()
    }

    fn push(&mut self, keys: Tensor, values: Tensor) {
        self.keys.push(keys);
        self.values.push(values);
    }

    /// All keys and all values as one tensor each; the layer keeps those, so the
    /// joining is paid once.
    pub(super) fn joined(&mut self) -> Result<(Tensor, Tensor), LlmError> {
        if self.keys.len() > 1 {
            self.keys = vec![Tensor::cat(&self.keys, 2)?];
            self.values = vec![Tensor::cat(&self.values, 2)?];
        }
        match (self.keys.first(), self.values.first()) {
            (Some(k), Some(v)) => Ok((k.clone(), v.clone())),
            _ => Err(LlmError::Metadata("a layer without keys".into())),
        }
    }

    /// The keys and values of tokens `start..start + tokens` (views where a block
    /// holds them whole).
    fn narrow(&self, start: usize, tokens: usize) -> Result<Self, LlmError> {
        let mut narrowed = Self::default();
        let mut first = 0;
        for (k, v) in self.keys.iter().zip(&self.values) {
            let len = k.dim(2)?;
            let from = start.max(first);
            let to = (start + tokens).min(first + len);
            if from < to {
                narrowed.push(
                    k.narrow(2, from - first, to - from)?,
                    v.narrow(2, from - first, to - from)?,
                );
            }
            first += len;
        }
        Ok(narrowed)
    }

    /// Bytes of keys and values held.
    fn bytes(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// Each layer's keys and values of the tokens a sequence has seen.
#[derive(Clone, Default)]
pub struct KvCache {
    pub(super) layers: Vec<Option<LayerKv>>,
}

impl KvCache {
    /// Tokens held.
    fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, LayerKv::tokens)
    }

    /// The keys and values of the first `tokens` tokens only (views, not copies).
    pub(super) fn truncated(&self, tokens: usize) -> Result<Self, LlmError> {
        let layers = self
            .layers
            .iter()
            .map(|kv| kv.as_ref().map(|kv| kv.narrow(0, tokens)).transpose())
            .collect::<Result<_, LlmError>>()?;
        Ok(Self { layers })
    }

    /// The keys and values of tokens `start..start + tokens` only, copied, so that they
    /// do not keep the rest alive.
    pub(super) fn slice(&self, start: usize, tokens: usize) -> Result<Self, LlmError> {
        let layers = self
            .layers
            .iter()
            .map(|kv| match kv {
                Some(kv) => {
                    let (k, v) = kv.narrow(start, tokens)?.joined()?;
                    let mut copy = LayerKv::default();
                    copy.push(k.contiguous()?, v.contiguous()?);
                    Ok(Some(copy))
                }
                None => Ok(None),
            })
            .collect::<Result<_, LlmError>>()?;
        Ok(Self { layers })
    }

    /// This cache followed by `blocks`, each block's keys rotated `shift` positions
    /// further than where they were computed (rotary embeddings compose: a key rotated
    /// for position `p` and then by `shift` is the key for `p + shift`).
    pub(super) fn followed_by(
        &self,
        model: &Transformer,
        blocks: &[(&KvCache, usize)],
    ) -> Result<Self, LlmError> {
        let mut layers = Vec::with_capacity(model.layers.len());
        for layer in 0..model.layers.len() {
            let mut joined = self.layers.get(layer).cloned().flatten();
            for (block, shift) in blocks {
                if let Some(Some(kv)) = block.layers.get(layer) {
                    let target = joined.get_or_insert_with(LayerKv::default);
                    for (k, v) in kv.keys.iter().zip(&kv.values) {
                        target.push(model.shift_keys(layer, k, *shift)?, v.clone());
                    }
                }
            }
            layers.push(joined);
        }
        Ok(Self { layers })
    }

    /// Bytes of keys and values held.
    pub(super) fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(LayerKv::bytes).sum()
    }
}

/// What one kind of layer (global or local) lets each token of a sequence's step see.
struct Sight {
    /// The mask for candle's attention; `None` for one token or the CPU loop.
    mask: Option<Tensor>,
    /// What each token sees, for the CPU attention loop ([`attention::applies`];
    /// worked out once per pass rather than once per layer).
    visibility: Option<Visibility>,
}

/// One sequence's place in a packed batch and what its attention needs.
struct Part {
    /// Its first token's index among the batch's tokens.
    offset: usize,
    tokens: usize,
    /// What the global layers see.
    global: Sight,
    /// What the local layers see, where the model has them.
    local: Option<Sight>,
    /// The rows of each rotary table at the step's positions.
    rotations: Vec<(Tensor, Tensor)>,
}

/// The tokens of one forward pass after what the cache holds.
pub struct Step<'a> {
    /// Token ids.
    pub ids: &'a [u32],
    /// Each token's position in its sequence.
    pub positions: &'a [u32],
    /// Which earlier tokens each token may attend to: `ids.len()` rows of
    /// `cache.len() + ids.len()` columns, 0 to attend and `-inf` to not. `None` means
    /// causal: every cached token and the step's tokens up to itself.
    pub mask: Option<Tensor>,
    /// The tokens whose next-token logits are wanted, by index in `ids`.
    pub outputs: &'a [usize],
}

/// The longest context a file may declare: the rotary tables take 8 bytes per position
/// and rotary pair, allocated at load, so a garbled length must not reach them.
const MAX_CONTEXT: usize = 1 << 20;

impl Transformer {
    /// Builds the model a GGUF's metadata describes from its tensors as `tensor` gives
    /// them (read as stored, or converted one at a time), with rotary tables up to
    /// `context` tokens.
    ///
    /// # Errors
    /// When the architecture is not supported, or a tensor or metadata field is missing
    /// or malformed.
    pub fn from_tensors(
        content: &gguf_file::Content,
        device: &Device,
        context: usize,
        mut tensor: impl FnMut(&str) -> Result<QTensor, LlmError>,
    ) -> Result<Self, LlmError> {
        let arch = Architecture::from_gguf(content)?;
        if arch.rope_dim != arch.head_dim {
            return Err(LlmError::Metadata(format!(
                "rope.dimension_count {} must equal the head size {}: partial rotation is not supported",
                arch.rope_dim, arch.head_dim
            )));
        }
        if context == 0 || context > MAX_CONTEXT {
            return Err(LlmError::Metadata(format!(
                "context_length {context} is out of range: give 1 to {MAX_CONTEXT}"
            )));
        }

        let embeddings_q = tensor("token_embd.weight")?;
        let embeddings = Embeddings::new(&embeddings_q, device)?;
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let output = match (tensor("output.weight"), &embeddings) {
            (Ok(output), _) => Linear::new(output)?,
            // Tied: the head is the embedding table, read from the same copy.
            (Err(_), Embeddings::Int8(table)) => Linear::Int8(Arc::clone(table)),
            (Err(_), Embeddings::Table(_)) => Linear::new(embeddings_q)?,
        };
        // Llama 3.1's long-context frequencies, where the file has them.
        let frequency_factors = match tensor("rope_freqs.weight") {
            Ok(factors) => Some(factors.dequantize(&Device::Cpu)?.to_vec1::<f32>()?),
            Err(_) => None,
        };
        let mut rotary = vec![rotary_tables(
            &arch,
            arch.freq_base,
            frequency_factors.as_deref(),
            context,
            device,
        )?];
        let local_rotary = match arch.sliding {
            Some(sliding) if sliding.local_freq_base != arch.freq_base => {
                let mut local = arch.clone();
                local.rope_scale = 1.0;
                rotary.push(rotary_tables(
                    &local,
                    sliding.local_freq_base,
                    None,
                    context,
                    device,
                )?);
                1
            }
            _ => 0,
        };
        let mut layers = Vec::with_capacity(arch.blocks);
        for i in 0..arch.blocks {
            let mut part = |name: &str| tensor(&format!("blk.{i}.{name}"));
            let mut vector =
                |name: &str| -> Result<Tensor, LlmError> { Ok(part(name)?.dequantize(device)?) };
            let attention_norm = vector("attn_norm.weight")?;
            let qkv_bias = if arch.qkv_bias {
                Some([
                    vector("attn_q.bias")?,
                    vector("attn_k.bias")?,
                    vector("attn_v.bias")?,
                ])
            } else {
                None
            };
            let qk_norm = if arch.qk_norm {
                Some((vector("attn_q_norm.weight")?, vector("attn_k_norm.weight")?))
            } else {
                None
            };
            let (post_attention_norm, post_ffn_norm) = if arch.post_norms {
                (
                    Some(vector("post_attention_norm.weight")?),
                    Some(vector("post_ffw_norm.weight")?),
                )
            } else {
                (None, None)
            };
            let ffn_norm = vector("ffn_norm.weight")?;
            let window = arch.window_of(i);
            layers.push(Layer {
                attention_norm,
                qkv: Stacked::new(vec![
                    part("attn_q.weight")?,
                    part("attn_k.weight")?,
                    part("attn_v.weight")?,
                ])?,
                qkv_bias,
                qk_norm,
                wo: Linear::new(part("attn_output.weight")?)?,
                post_attention_norm,
                ffn_norm,
                gate_up: Stacked::new(vec![part("ffn_gate.weight")?, part("ffn_up.weight")?])?,
                down: Linear::new(part("ffn_down.weight")?)?,
                post_ffn_norm,
                window,
                rotary: if window.is_some() { local_rotary } else { 0 },
            });
        }
        Ok(Self {
            arch,
            embeddings,
            layers,
            norm,
            output,
            rotary,
            device: device.clone(),
        })
    }

    /// The architecture the model was built as.
    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of keys and values one token adds to a sequence (every layer's, in f32,
    /// the forward's one activation type).
    pub(super) fn kv_bytes_per_token(&self) -> usize {
        2 * self.layers.len() * self.arch.kv_heads * self.arch.head_dim * DType::F32.size_in_bytes()
    }

    /// Positions the rotary tables cover.
    pub fn max_positions(&self) -> usize {
        self.rotary.first().map_or(0, |r| r.cos.dim(0).unwrap_or(0))
    }

    /// Layer `layer`'s keys `[1, heads, tokens, head_dim]` rotated for their positions,
    /// rotated `by` positions further.
    pub(super) fn shift_keys(
        &self,
        layer: usize,
        keys: &Tensor,
        by: usize,
    ) -> Result<Tensor, LlmError> {
        if by == 0 {
            return Ok(keys.clone());
        }
        if by >= self.max_positions() {
            return Err(LlmError::InvalidInput(format!(
                "a shift of {by} is past the model's {} positions",
                self.max_positions()
            )));
        }
        let table = self
            .layers
            .get(layer)
            .and_then(|l| self.rotary.get(l.rotary))
            .ok_or_else(|| LlmError::InvalidInput(format!("no layer {layer}")))?;
        let tokens = keys.dim(2)?;
        let half = table.cos.dim(1)?;
        let row = |table: &Tensor| -> Result<Tensor, LlmError> {
            Ok(table
                .narrow(0, by, 1)?
                .broadcast_as((tokens, half))?
                .contiguous()?)
        };
        self.rotate(&keys.contiguous()?, &row(&table.cos)?, &row(&table.sin)?)
    }

    /// `x` (`[1, heads, tokens, head_dim]`) rotated by the rows `cos` and `sin`, pairs
    /// laid out as the architecture lays them.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, LlmError> {
        Ok(match self.arch.rope_layout {
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin)?,
            RopeLayout::Halves => candle_nn::rotary_emb::rope(x, cos, sin)?,
        })
    }

    /// Runs several sequences' steps as one packed pass, appending each step's keys and
    /// values to its cache and returning the logits of its `outputs` tokens (one row
    /// each). Every matrix product takes all their tokens at once (one pass over the
    /// weights), and each sequence attends to its own cache and tokens only. A
    /// sequence's logits equal those of its step run alone: the products are computed
    /// row by row, and its attention has the same shape.
    ///
    /// # Errors
    /// When a step is empty or malformed, or a candle operation fails.
    pub fn forward_batch(
        &self,
        batch: &mut [(&mut KvCache, &Step)],
    ) -> Result<Vec<Tensor>, LlmError> {
        let mut parts = Vec::with_capacity(batch.len());
        let mut ids = Vec::new();
        for (cache, step) in batch.iter_mut() {
            parts.push(self.prepare(cache, step, ids.len())?);
            ids.extend_from_slice(step.ids);
        }
        let eps = self.arch.rms_eps;
        let mut x = self.embeddings.lookup(&ids, &self.device)?;
        if self.arch.scaled_embeddings {
            x = (x * (self.arch.hidden as f64).sqrt())?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let normed = candle_nn::ops::rms_norm(&x, &layer.attention_norm, eps)?;
            let [mut q, mut k, mut v]: [Tensor; 3] = layer
                .qkv
                .forward(&normed)?
                .try_into()
                .map_err(|_| LlmError::Metadata("three attention projections".into()))?;
            if let Some([q_bias, k_bias, v_bias]) = &layer.qkv_bias {
                q = q.broadcast_add(q_bias)?;
                k = k.broadcast_add(k_bias)?;
                v = v.broadcast_add(v_bias)?;
            }
            let mut attended = Vec::with_capacity(parts.len());
            for (part, (cache, _)) in parts.iter().zip(batch.iter_mut()) {
                let own = |t: &Tensor| t.narrow(1, part.offset, part.tokens);
                attended.push(self.attention(
                    part,
                    layer,
                    (&own(&q)?, &own(&k)?, &own(&v)?),
                    &mut cache.layers[l],
                )?);
            }
            let attended = if attended.len() == 1 {
                attended.remove(0)
            } else {
                Tensor::cat(&attended, 1)?
            };
            let mut out = layer.wo.forward(&attended)?;
            if let Some(norm) = &layer.post_attention_norm {
                out = candle_nn::ops::rms_norm(&out, norm, eps)?;
            }
            x = (out + &x)?;
            let normed = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let [gate, up]: [Tensor; 2] = layer
                .gate_up
                .forward(&normed)?
                .try_into()
                .map_err(|_| LlmError::Metadata("two feed-forward projections".into()))?;
            let gate = match self.arch.activation {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let mut mixed = layer.down.forward(&(gate * up)?)?;
            if let Some(norm) = &layer.post_ffn_norm {
                mixed = candle_nn::ops::rms_norm(&mixed, norm, eps)?;
            }
            x = (mixed + &x)?;
        }
        let wanted: Vec<u32> = batch
            .iter()
            .zip(&parts)
            .flat_map(|((_, step), part)| step.outputs.iter().map(|&i| (part.offset + i) as u32))
            .collect();
        let picked = x.index_select(&Tensor::new(wanted.as_slice(), &self.device)?, 1)?;
        let normed = candle_nn::ops::rms_norm(&picked, &self.norm, eps)?;
        let logits = self.output.forward(&normed)?.squeeze(0)?;
        let mut first = 0;
        batch
            .iter()
            .map(|(_, step)| {
                let rows = logits.narrow(0, first, step.outputs.len());
                first += step.outputs.len();
                Ok(rows?)
            })
            .collect()
    }

    /// Refuses a step the model cannot run: no tokens, a position or output missing or
    /// out of range, a token outside the vocabulary.
    ///
    /// # Errors
    /// [`LlmError::InvalidInput`] saying what is wrong.
    pub fn check(&self, ids: &[u32], positions: &[u32], outputs: &[usize]) -> Result<(), LlmError> {
        let n = ids.len();
        if n == 0 || positions.len() != n || outputs.iter().any(|&i| i >= n) {
            return Err(LlmError::InvalidInput(
                "a forward step needs tokens, one position each, and outputs among them".into(),
            ));
        }
        if let Some(&beyond) = positions
            .iter()
            .find(|&&p| p as usize >= self.max_positions())
        {
            return Err(LlmError::InvalidInput(format!(
                "position {beyond} is past the model's {} positions",
                self.max_positions()
            )));
        }
        let vocabulary = self.embeddings.rows();
        if let Some(&unknown) = ids.iter().find(|&&id| id as usize >= vocabulary) {
            return Err(LlmError::InvalidInput(format!(
                "token {unknown} is not in the vocabulary of {vocabulary}"
            )));
        }
        Ok(())
    }

    /// Checks one sequence's step and computes what its attention needs: the masks and
    /// the rotary rows of its positions.
    fn prepare(&self, cache: &mut KvCache, step: &Step, offset: usize) -> Result<Part, LlmError> {
        self.check(step.ids, step.positions, step.outputs)?;
        let n = step.ids.len();
        let past = cache.len();
        cache.layers.resize(self.layers.len(), None);
        let window = self.arch.sliding.map(|s| s.window);
        let (global, local) = if attention::applies(&self.device) {
            let visibility = match &step.mask {
                Some(mask) => {
                    Visibility::from_mask(mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?, n)?
                }
                None => Visibility::causal(n, past),
            };
            let local = window.map(|window| Sight {
                mask: None,
                visibility: Some(visibility.within_window(past, step.positions, window)),
            });
            let global = Sight {
                mask: None,
                visibility: Some(visibility),
            };
            (global, local)
        } else {
            let mask = match &step.mask {
                Some(mask) => Some(mask.clone()),
                None if n > 1 => Some(causal_mask(n, past, &self.device)?),
                None => None,
            };
            let local = match window {
                Some(window) => Some(Sight {
                    mask: Some(windowed_mask(
                        mask.as_ref(),
                        past,
                        step.positions,
                        window,
                        &self.device,
                    )?),
                    visibility: None,
                }),
                None => None,
            };
            let global = Sight {
                mask,
                visibility: None,
            };
            (global, local)
        };
        let positions = Tensor::new(step.positions, &self.device)?;
        let rotations = self
            .rotary
            .iter()
            .map(|table| {
                Ok((
                    table.cos.index_select(&positions, 0)?,
                    table.sin.index_select(&positions, 0)?,
                ))
            })
            .collect::<Result<_, LlmError>>()?;
        Ok(Part {
            offset,
            tokens: n,
            global,
            local,
            rotations,
        })
    }

    /// One sequence's attention in `layer`: its projected queries, keys and values
    /// (`[1, n, ..]`) against its cached keys and values, which it extends.
    fn attention(
        &self,
        part: &Part,
        layer: &Layer,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        kv: &mut Option<LayerKv>,
    ) -> Result<Tensor, LlmError> {
        let n = part.tokens;
        let (heads, kv_heads, head_dim) = (self.arch.heads, self.arch.kv_heads, self.arch.head_dim);
        let split = |t: &Tensor, count: usize, norm: Option<&Tensor>| -> Result<Tensor, LlmError> {
            let t = t.reshape((1, n, count, head_dim))?;
            let t = match norm {
                Some(norm) => candle_nn::ops::rms_norm(&t.contiguous()?, norm, self.arch.rms_eps)?,
                None => t,
            };
            Ok(t.transpose(1, 2)?.contiguous()?)
        };
        let (q_norm, k_norm) = match &layer.qk_norm {
            Some((q_norm, k_norm)) => (Some(q_norm), Some(k_norm)),
            None => (None, None),
        };
        let (cos, sin) = &part.rotations[layer.rotary];
        let q = self.rotate(&split(q, heads, q_norm)?, cos, sin)?;
        let k = self.rotate(&split(k, kv_heads, k_norm)?, cos, sin)?;
        let v = split(v, kv_heads, None)?;
        let sight = match (&part.local, layer.window) {
            (Some(local), Some(_)) => local,
            _ => &part.global,
        };
        let layer_kv = kv.get_or_insert_with(LayerKv::default);
        layer_kv.push(k, v);
        if let Some(visibility) = &sight.visibility {
            if layer_kv.keys.len() > MAX_BLOCKS {
                layer_kv.joined()?;
            }
            return attention::attend(&q, &layer_kv.keys, &layer_kv.values, visibility);
        }
        let (k, v) = layer_kv.joined()?;

        // Grouped-query attention without copying the keys and values for every query
        // head: the query heads that share a key/value head are stacked as its rows.
        let repeats = heads / kv_heads;
        let columns = k.dim(2)?;
        let q = q.reshape((1, kv_heads, repeats * n, head_dim))?;
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let scores = match &sight.mask {
            Some(mask) => scores
                .reshape((1, kv_heads, repeats, n, columns))?
                .broadcast_add(mask)?
                .reshape((1, kv_heads, repeats * n, columns))?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(weights
            .matmul(&v)?
            .reshape((1, heads, n, head_dim))?
            .transpose(1, 2)?
            .reshape((1, n, heads * head_dim))?)
    }
}

/// `n` rows over `past + n` columns: 0 where a token may attend (every cached token,
/// itself and the step's earlier tokens), `-inf` elsewhere.
pub fn causal_mask(n: usize, past: usize, device: &Device) -> Result<Tensor, LlmError> {
    let values: Vec<f32> = (0..n)
        .flat_map(|row| {
            (0..past + n).map(move |col| {
                if col <= past + row {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(values, (n, past + n), device)?)
}

/// `mask` (causal where `None`) with the columns further than `window` positions
/// behind each row's position also hidden. A cached key's position is its column (a
/// cache is filled in position order), a step's key has the step's position.
fn windowed_mask(
    mask: Option<&Tensor>,
    past: usize,
    positions: &[u32],
    window: usize,
    device: &Device,
) -> Result<Tensor, LlmError> {
    let n = positions.len();
    let mut values: Vec<f32> = match mask {
        Some(mask) => mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        None => causal_mask(n, past, &Device::Cpu)?
            .flatten_all()?
            .to_vec1()?,
    };
    let columns = past + n;
    for (row, &query) in positions.iter().enumerate() {
        for column in 0..columns {
            if attention::outside_window(
                attention::key_position(column, past, positions),
                query,
                window,
            ) {
                values[row * columns + column] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Tensor::from_vec(values, (n, columns), device)?)
}

/// Each layer's rotary tables for `positions` positions: cos and sin of `position /
/// rope_scale x frequency`, the frequencies divided by `factors` where given.
fn rotary_tables(
    arch: &Architecture,
    freq_base: f32,
    factors: Option<&[f32]>,
    positions: usize,
    device: &Device,
) -> Result<Rotary, LlmError> {
    let dim = arch.rope_dim;
    if let Some(factors) = factors.filter(|f| f.len() != dim / 2) {
        return Err(LlmError::Metadata(format!(
            "rope_freqs has {} factors for {} rotary pairs",
            factors.len(),
            dim / 2
        )));
    }
    let inverse_freq: Vec<f32> = (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / freq_base.powf((2 * i) as f32 / dim as f32);
            freq / factors.map_or(1.0, |f| f[i]) / arch.rope_scale
        })
        .collect();
    let inverse_freq = Tensor::new(inverse_freq.as_slice(), device)?;
    let angles = Tensor::arange(0, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .broadcast_mul(&inverse_freq.reshape((1, dim / 2))?)?;
    Ok(Rotary {
        cos: angles.cos()?,
        sin: angles.sin()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_causal_mask_lets_a_token_see_the_cache_and_its_own_past() {
        let mask = causal_mask(2, 1, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = mask.to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(rows, vec![vec![0.0, 0.0, inf], vec![0.0, 0.0, 0.0]]);
    }

    #[test]
    fn a_local_layer_hides_keys_a_window_or_more_behind_by_position() {
        let inf = f32::NEG_INFINITY;
        // Two cached tokens (positions 0 and 1), then a step at positions 2 and 3.
        let mask = windowed_mask(None, 2, &[2, 3], 2, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = mask.to_vec2().unwrap();
        assert_eq!(
            rows,
            vec![vec![inf, 0.0, 0.0, inf], vec![inf, inf, 0.0, 0.0]]
        );
        // Two continuations of the same place share positions: the window follows
        // positions, not columns, so both see the last cached token.
        let tree =
            Tensor::new(&[[0f32, 0.0, 0.0, inf], [0.0, 0.0, inf, 0.0]], &Device::Cpu).unwrap();
        let mask = windowed_mask(Some(&tree), 2, &[2, 2], 2, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = mask.to_vec2().unwrap();
        assert_eq!(
            rows,
            vec![vec![inf, 0.0, 0.0, inf], vec![inf, 0.0, inf, 0.0]]
        );
    }

    /// A GGUF's metadata for a llama of 4 heads of 16, with `rope_dim`, and no tensors.
    fn metadata(rope_dim: u32) -> gguf_file::Content {
        let value = gguf_file::Value::U32;
        let metadata = [
            ("llama.attention.head_count", value(4)),
            ("llama.attention.head_count_kv", value(2)),
            ("llama.block_count", value(1)),
            ("llama.embedding_length", value(64)),
            ("llama.rope.dimension_count", value(rope_dim)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                gguf_file::Value::F32(1e-5),
            ),
        ];
        gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            tensor_infos: std::collections::HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn load_error(content: &gguf_file::Content, context: usize) -> String {
        let no_tensors = |name: &str| Err(LlmError::Metadata(format!("no tensor {name}")));
        match Transformer::from_tensors(content, &Device::Cpu, context, no_tensors) {
            Ok(_) => panic!("a model without tensors loaded"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_garbled_shape_is_refused_before_anything_is_allocated() {
        let error = load_error(&metadata(16), u32::MAX as usize);
        assert!(error.contains("context_length 4294967295"), "{error}");
        let error = load_error(&metadata(32), 2048);
        assert!(error.contains("rope.dimension_count 32"), "{error}");
        let error = load_error(&metadata(15), 2048);
        assert!(error.contains("rope.dimension_count 15"), "{error}");
        let error = load_error(&metadata(16), 2048);
        assert!(error.contains("no tensor token_embd.weight"), "{error}");
    }
}
