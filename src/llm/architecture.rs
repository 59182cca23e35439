//! How each supported model family differs from llama, read once from the GGUF.
//!
//! The forward ([`super::model`]) is written once; an [`Architecture`] says which of
//! its optional parts a family uses: biases on the attention projections (Qwen2),
//! norms on the queries and keys (Qwen3, Gemma 3), norms after attention and the
//! feed-forward (Gemma 3), scaled embeddings and a GELU gate (Gemma 3), sliding-window
//! layers with their own rotary base (Gemma 3), and how the rotary pairs are laid out.

use candle_core::quantized::gguf_file;

use super::LlmError;

/// The families the forward runs, by their `general.architecture` name.
pub const SUPPORTED: [&str; 4] = ["llama", "qwen2", "qwen3", "gemma3"];

/// Which dimensions a rotary pair joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent dimensions (`2i`, `2i + 1`): llama GGUFs, whose converter permutes the
    /// query and key rows for it.
    Interleaved,
    /// Dimension `i` with `i + rope_dim / 2` (GPT-NeoX's layout): Qwen and Gemma.
    Halves,
}

/// The gate's activation in the feed-forward `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): llama and Qwen.
    Silu,
    /// GELU, tanh approximation (GeGLU): Gemma.
    GeluTanh,
}

/// Gemma 3's local attention: most layers see only the last `window` positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlidingWindow {
    /// Positions a query sees, itself included.
    pub window: usize,
    /// Every `period`-th layer (the last of each run) attends globally.
    pub period: usize,
    /// The rotary base of the local layers.
    pub local_freq_base: f32,
}

/// A model's shape and the parts of the forward it uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// `general.architecture`.
    pub name: String,
    /// Transformer blocks.
    pub blocks: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head (may differ from `hidden / heads`: Gemma 3, Qwen3).
    pub head_dim: usize,
    /// Leading dimensions of a head that are rotated.
    pub rope_dim: usize,
    /// Rotary base of the global layers.
    pub freq_base: f32,
    /// Positions are divided by this before rotation (linear rope scaling).
    pub rope_scale: f32,
    /// How rotary pairs are laid out.
    pub rope_layout: RopeLayout,
    /// RMS norm epsilon.
    pub rms_eps: f32,
    /// Positions the model was trained on.
    pub context_length: Option<usize>,
    /// Biases on the query, key and value projections.
    pub qkv_bias: bool,
    /// RMS norms on each head's queries and keys, before rotation.
    pub qk_norm: bool,
    /// RMS norms on the attention and feed-forward outputs, before the residual add.
    pub post_norms: bool,
    /// The embeddings are multiplied by `sqrt(hidden)`.
    pub scaled_embeddings: bool,
    /// The feed-forward gate's activation.
    pub activation: Activation,
    /// Local attention, where the family has it.
    pub sliding: Option<SlidingWindow>,
}

/// Gemma 3's local layers: five of every six (llama.cpp's `set_swa_pattern(6)`).
const GEMMA3_PERIOD: usize = 6;
/// Gemma 3's local layers rotate with this base whatever the file's global one.
const GEMMA3_LOCAL_FREQ_BASE: f32 = 10_000.0;

impl Architecture {
    /// Reads the architecture and its shape from a GGUF's metadata.
    ///
    /// # Errors
    /// When the family is not supported (the message names those that are), or a field
    /// is missing or makes no sense.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, LlmError> {
        let name = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "llama".to_owned());
        if !SUPPORTED.contains(&name.as_str()) {
            return Err(LlmError::Metadata(format!(
                "architecture `{name}` is not supported; supported: {}",
                SUPPORTED.join(", ")
            )));
        }
        let key = |field: &str| format!("{name}.{field}");
        let int = |field: &str| metadata_usize(content, &key(field));
        let float = |field: &str| {
            content
                .metadata
                .get(&key(field))
                .and_then(|v| v.to_f32().ok())
        };
        let heads = int("attention.head_count")?;
        let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
        let hidden = int("embedding_length")?;
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || hidden % heads != 0 {
            return Err(LlmError::Metadata(format!(
                "{heads} heads, {kv_heads} key/value heads, {hidden} wide: not a transformer's shape"
            )));
        }
        let head_dim = int("attention.key_length").unwrap_or(hidden / heads);
        let rope_dim = int("rope.dimension_count").unwrap_or(head_dim);
        if head_dim == 0 || rope_dim == 0 || rope_dim % 2 != 0 || rope_dim > head_dim {
            return Err(LlmError::Metadata(format!(
                "rope.dimension_count {rope_dim} must be even and at most the head size {head_dim}"
            )));
        }
        let rope_scale = match content
            .metadata
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
        {
            None | Some("none") => 1.0,
            Some("linear") => float("rope.scaling.factor").unwrap_or(1.0),
            Some(other) => {
                return Err(LlmError::Metadata(format!(
                    "rope scaling `{other}` is not supported; `linear` is"
                )))
            }
        };
        let gemma = name == "gemma3";
        let sliding = match int("attention.sliding_window") {
            Ok(window) if gemma && window > 0 => Some(SlidingWindow {
                window,
                period: GEMMA3_PERIOD,
                local_freq_base: GEMMA3_LOCAL_FREQ_BASE,
            }),
            _ => None,
        };
        Ok(Self {
            blocks: int("block_count")?,
            hidden,
            heads,
            kv_heads,
            head_dim,
            rope_dim,
            freq_base: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scale,
            rope_layout: if name == "llama" {
                RopeLayout::Interleaved
            } else {
                RopeLayout::Halves
            },
            rms_eps: float("attention.layer_norm_rms_epsilon").ok_or_else(|| {
                LlmError::Metadata(format!(
                    "missing {}",
                    key("attention.layer_norm_rms_epsilon")
                ))
            })?,
            context_length: int("context_length").ok(),
            qkv_bias: name == "qwen2",
            qk_norm: name == "qwen3" || gemma,
            post_norms: gemma,
            scaled_embeddings: gemma,
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            sliding,
            name,
        })
    }

    /// The window of layer `layer` if it attends locally.
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        self.sliding
            .filter(|s| !(layer + 1).is_multiple_of(s.period))
            .map(|s| s.window)
    }
}

fn metadata_usize(content: &gguf_file::Content, key: &str) -> Result<usize, LlmError> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .ok_or_else(|| LlmError::Metadata(format!("missing or not an integer: {key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(arch: &str, fields: &[(&str, gguf_file::Value)]) -> gguf_file::Content {
        let mut metadata: std::collections::HashMap<String, gguf_file::Value> = fields
            .iter()
            .map(|(k, v)| (format!("{arch}.{k}"), v.clone()))
            .collect();
        metadata.insert(
            "general.architecture".into(),
            gguf_file::Value::String(arch.into()),
        );
        gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata,
            tensor_infos: std::collections::HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn gemma_fields() -> Vec<(&'static str, gguf_file::Value)> {
        use gguf_file::Value::{F32, U32};
        vec![
            ("attention.head_count", U32(4)),
            ("attention.head_count_kv", U32(1)),
            ("embedding_length", U32(640)),
            ("block_count", U32(18)),
            ("attention.key_length", U32(256)),
            ("attention.layer_norm_rms_epsilon", F32(1e-6)),
            ("rope.freq_base", F32(1e6)),
            ("attention.sliding_window", U32(512)),
        ]
    }

    #[test]
    fn gemma3_reads_its_head_size_and_local_layers() {
        let arch = Architecture::from_gguf(&content("gemma3", &gemma_fields())).unwrap();
        assert_eq!((arch.head_dim, arch.rope_dim), (256, 256));
        assert_eq!(arch.rope_layout, RopeLayout::Halves);
        assert!(arch.qk_norm && arch.post_norms && arch.scaled_embeddings);
        assert_eq!(arch.activation, Activation::GeluTanh);
        let windows: Vec<Option<usize>> = (0..7).map(|l| arch.window_of(l)).collect();
        let local = Some(512);
        assert_eq!(windows, [local, local, local, local, local, None, local]);
    }

    #[test]
    fn llama_keeps_interleaved_pairs_and_global_attention() {
        let arch = Architecture::from_gguf(&content("llama", &gemma_fields())).unwrap();
        assert_eq!(arch.rope_layout, RopeLayout::Interleaved);
        assert!(!arch.qk_norm && !arch.qkv_bias && arch.sliding.is_none());
        assert_eq!(arch.window_of(0), None);
    }

    #[test]
    fn another_family_is_refused_with_the_supported_ones_named() {
        let error = Architecture::from_gguf(&content("falcon", &gemma_fields()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`falcon`") && error.contains("llama, qwen2, qwen3, gemma3"),
            "{error}"
        );
    }
}
