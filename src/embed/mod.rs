//! The sentence embedder: a BERT encoder ([`bert`]) with mean pooling over each text's
//! tokens and L2 normalisation, as sentence-transformers computes all-MiniLM-L6-v2.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;
use tokenizers::{Tokenizer, TruncationParams};

mod bert;
mod handle;

use bert::Bert;

pub use handle::EmbedderHandle;

use crate::cores;
use crate::model_source::EmbedderFiles;
use crate::worker::QueueError;

/// sentence-transformers truncates MiniLM inputs here, not at the tokenizer file's 128.
pub const MAX_INPUT_TOKENS: usize = 256;
/// Texts embedded in one forward pass; more are split into batches of this size.
const BATCH_SIZE: usize = 32;

/// What can go wrong loading or running the embedder.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A candle operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// `config.json` could not be read or parsed.
    #[error("embedder config: {0}")]
    Config(String),
    /// The job was not queued.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A loaded sentence embedder.
pub struct Embedder {
    model: Bert,
    tokenizer: Tokenizer,
    dimension: usize,
    device: Device,
}

impl Embedder {
    /// Loads BERT weights, config and tokenizer onto `device`.
    ///
    /// # Errors
    /// When a file is missing or malformed.
    pub fn load(files: &EmbedderFiles, device: &Device) -> Result<Self, EmbedError> {
        let config_text = std::fs::read_to_string(&files.config)
            .map_err(|e| EmbedError::Config(format!("{}: {e}", files.config.display())))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| EmbedError::Config(format!("{}: {e}", files.config.display())))?;
        let mut tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| EmbedError::Tokenizer(format!("{}: {e}", files.tokenizer.display())))?;
        // The file pads every input to 128; the packed forward needs no padding at all.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_INPUT_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // SAFETY: the weights file is not modified while the process runs.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&files.weights], DType::F32, device)? };
        let model = Bert::load(vb, &config)?;
        Ok(Self {
            model,
            tokenizer,
            dimension: config.hidden_size,
            device: device.clone(),
        })
    }

    /// The length of every embedding.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Unit-length embeddings of `texts`, in the same order.
    ///
    /// Texts go through the encoder [`BATCH_SIZE`] at a time, packed without padding.
    ///
    /// # Errors
    /// When tokenization or a forward pass fails.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut embeddings = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH_SIZE) {
            let batch: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
            embeddings.extend(self.embed_batch(&batch)?);
        }
        Ok(embeddings)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let _turn = cores::take(&self.device);
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let hidden = self.model.forward(&ids)?.to_vec2::<f32>()?;
        let mut rows = hidden.as_slice();
        Ok(ids
            .iter()
            .map(|text| {
                let (own, rest) = rows.split_at(text.len());
                rows = rest;
                unit_mean(own)
            })
            .collect())
    }
}

/// The mean of one text's token states, scaled to unit length (so the sum serves).
fn unit_mean(tokens: &[Vec<f32>]) -> Vec<f32> {
    let mut mean = vec![0f32; tokens.first().map_or(0, Vec::len)];
    for token in tokens {
        for (m, v) in mean.iter_mut().zip(token) {
            *m += v;
        }
    }
    let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-12);
    for m in &mut mean {
        *m /= norm;
    }
    mean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_of_a_texts_tokens_becomes_unit_length() {
        // Tokens (1, 2) and (5, 6): mean (3, 4), of length 5.
        assert_eq!(unit_mean(&[vec![1., 2.], vec![5., 6.]]), vec![0.6, 0.8]);
        assert_eq!(unit_mean(&[vec![0., 0.]]), vec![0., 0.]);
    }
}
