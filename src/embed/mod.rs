//! The sentence embedder: candle's BERT with mean pooling over the attention mask and
//! L2 normalisation, as sentence-transformers computes all-MiniLM-L6-v2.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingStrategy, Tokenizer, TruncationParams};

mod handle;

pub use handle::EmbedderHandle;

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
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimension: usize,
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
        // The file pads every input to 128; pad to the batch's longest instead.
        if let Some(padding) = tokenizer.get_padding_mut() {
            padding.strategy = PaddingStrategy::BatchLongest;
        }
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_INPUT_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // SAFETY: the weights file is not modified while the process runs.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&files.weights], DType::F32, device)? };
        let model = BertModel::load(vb, &config)?;
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            dimension: config.hidden_size,
        })
    }

    /// The length of every embedding.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Unit-length embeddings of `texts`, in the same order.
    ///
    /// Texts are batched by length so that little compute goes to padding.
    ///
    /// # Errors
    /// When tokenization or a forward pass fails.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].as_ref().len());
        let mut embeddings = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH_SIZE) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_ref()).collect();
            for (&i, embedding) in chunk.iter().zip(self.embed_batch(&batch)?) {
                embeddings[i] = embedding;
            }
        }
        Ok(embeddings)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let ids: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &self.device))
            .collect::<Result<_, _>>()?;
        let masks: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &self.device))
            .collect::<Result<_, _>>()?;
        let input_ids = Tensor::stack(&ids, 0)?;
        let attention_mask = Tensor::stack(&masks, 0)?;
        let token_type_ids = input_ids.zeros_like()?;
        let hidden = self
            .model
            .forward(&input_ids, &token_type_ids, Some(&attention_mask))?;
        let pooled = mean_pool(&hidden, &attention_mask)?;
        Ok(l2_normalize(&pooled)?.to_vec2()?)
    }
}

/// Averages each sequence's hidden states over its real (unpadded) tokens.
fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    summed.broadcast_div(&counts)
}

/// Scales each row to unit length.
fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_padding_and_rows_become_unit_length() -> candle_core::Result<()> {
        let device = Device::Cpu;
        // One sequence: tokens (1, 2) and (3, 4) are real, (100, 100) is padding.
        let hidden = Tensor::new(&[[[1f32, 2.], [3., 4.], [100., 100.]]], &device)?;
        let mask = Tensor::new(&[[1u32, 1, 0]], &device)?;
        let pooled = mean_pool(&hidden, &mask)?;
        assert_eq!(pooled.to_vec2::<f32>()?, vec![vec![2.0, 3.0]]);
        let unit = l2_normalize(&Tensor::new(&[[3f32, 4.]], &device)?)?;
        assert_eq!(unit.to_vec2::<f32>()?, vec![vec![0.6, 0.8]]);
        Ok(())
    }
}
