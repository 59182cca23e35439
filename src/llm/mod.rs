//! The LLM: candle's quantized llama loaded from GGUF, with its tokenizer.
//!
//! [`Llm`] holds the weights and an empty KV cache; a [`Session`] is a cheap clone
//! (weights are shared) that owns its own cache, so a prompt prefix can be run once
//! and continued in several ways.

mod generate;
mod handle;
mod prefix_cache;
mod score;
mod tokenizer;
mod weights;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};

pub use generate::{Delta, FinishReason, Generation, GenerationParams, TokenLogprob};
pub use handle::LlmHandle;
pub use prefix_cache::PrefixCache;
pub use score::ScoreRequest;
pub use tokenizer::LlmTokenizer;

use crate::config::WeightFormat;
use crate::worker::QueueError;

/// What can go wrong loading or running the LLM.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// A candle operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tokenizer could not be built or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The GGUF metadata lacks or garbles a field.
    #[error("gguf metadata: {0}")]
    Metadata(String),
    /// The model file could not be read.
    #[error("reading the model file: {0}")]
    Io(#[from] std::io::Error),
    /// The job was not queued.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A loaded LLM: weights, tokenizer and the facts a request is validated against.
pub struct Llm {
    model: ModelWeights,
    tokenizer: Arc<LlmTokenizer>,
    device: Device,
    context_length: usize,
    name: String,
}

impl Llm {
    /// Loads a llama-family GGUF onto `device`, holding its matrices as `format`.
    ///
    /// # Errors
    /// When the file is missing, is not a llama GGUF, or its tokenizer is unsupported.
    pub fn load(path: &Path, device: &Device, format: WeightFormat) -> Result<Self, LlmError> {
        let mut file = File::open(path)?;
        let content = gguf_file::Content::read(&mut file)?;
        let tokenizer = LlmTokenizer::from_gguf(&content)?;
        let trained_context = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_SEQ_LEN, |n| n as usize);
        let name = content
            .metadata
            .get("general.name")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| {
                path.file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
            });
        let model = weights::into_model(content, &mut file, device, format)?;
        Ok(Self {
            model,
            tokenizer: Arc::new(tokenizer),
            device: device.clone(),
            // candle's rotary tables stop at MAX_SEQ_LEN whatever the model was trained on.
            context_length: trained_context.min(MAX_SEQ_LEN),
            name,
        })
    }

    /// The tokenizer, shareable with request validation.
    pub fn tokenizer(&self) -> Arc<LlmTokenizer> {
        Arc::clone(&self.tokenizer)
    }

    /// The most tokens (prompt and generated together) one sequence may hold.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The model's name from its metadata.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A fresh sequence with an empty KV cache.
    pub fn session(&self) -> Session {
        Session {
            model: self.model.clone(),
            device: self.device.clone(),
            position: 0,
        }
    }
}

/// One sequence being run: the model with its own KV cache and position.
#[derive(Clone)]
pub struct Session {
    model: ModelWeights,
    device: Device,
    position: usize,
}

impl Session {
    /// Runs `ids` after what the session has seen and returns the next token's logits.
    ///
    /// # Errors
    /// When `ids` is empty or a candle operation fails.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>, LlmError> {
        if ids.is_empty() {
            return Err(LlmError::Tokenizer(
                "cannot run an empty token sequence".into(),
            ));
        }
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&input, self.position)?;
        self.position += ids.len();
        Ok(logits
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?)
    }
}

/// Natural-log probabilities from logits, computed in f64 for stability.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln();
    logits
        .iter()
        .map(|&l| (l as f64 - max - log_sum) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_hand_computation() {
        // logits (0, ln 3): probabilities 1/4 and 3/4.
        let lp = log_softmax(&[0.0, 3f32.ln()]);
        assert!((lp[0] - 0.25f32.ln()).abs() < 1e-6);
        assert!((lp[1] - 0.75f32.ln()).abs() < 1e-6);
    }
}
