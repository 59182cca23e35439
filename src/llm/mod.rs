//! The LLM: our decoder forward ([`model`]) over GGUF weights of the supported
//! architectures ([`architecture`]), with its tokenizer.
//!
//! [`Llm`] holds the weights; a [`Session`] shares them and owns a KV cache, and is
//! cheap to clone (the cached tensors are shared, not copied), so a prompt prefix can
//! be run once and continued in several ways.

mod architecture;
mod attention;
mod chat;
mod demonstration_cache;
mod generate;
mod handle;
mod kv_budget;
mod model;
mod prefix_cache;
mod registry;
mod scheduler;
mod score;
mod tokenizer;
mod weights;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::Device;

pub use chat::{ChatMessage, ChatRenderError, ChatTemplate, NoChatTemplate, Role};
pub use generate::{Delta, FinishReason, Generation, GenerationParams, TokenLogprob};
pub use handle::LlmHandle;
pub use prefix_cache::PrefixCache;
pub use registry::{LlmRegistry, UnknownModel};
pub use score::ScoreRequest;
pub use tokenizer::{LlmTokenizer, Segment};
pub use weights::write_converted;

use crate::config::WeightFormat;
use crate::worker::QueueError;
use architecture::Architecture;
use demonstration_cache::DemonstrationCache;
use kv_budget::KvBudget;
use model::{KvCache, Step, Transformer};

/// What can go wrong loading or running the LLM.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// A candle operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tokenizer could not be built or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A step handed to the model is malformed: no tokens, or positions past its window.
    #[error("model input: {0}")]
    InvalidInput(String),
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

/// Context length assumed when the GGUF does not give one.
const DEFAULT_CONTEXT: usize = 4096;

/// A loaded LLM: weights, tokenizer and the facts a request is validated against.
pub struct Llm {
    model: Arc<Transformer>,
    tokenizer: Arc<LlmTokenizer>,
    context_length: usize,
    name: String,
    /// When the file was loaded, in Unix seconds.
    loaded_at: u64,
    /// How a conversation becomes a prompt, or why it cannot.
    chat_template: Result<ChatTemplate, NoChatTemplate>,
}

impl Llm {
    /// Loads a GGUF of a supported architecture onto `device`, holding its matrices as
    /// `format`.
    ///
    /// # Errors
    /// When the file is missing, its architecture or tokenizer is not supported, or a
    /// tensor is missing or malformed.
    pub fn load(path: &Path, device: &Device, format: WeightFormat) -> Result<Self, LlmError> {
        let mut file = File::open(path)?;
        let content = gguf_file::Content::read(&mut file)?;
        let tokenizer = LlmTokenizer::from_gguf(&content)?;
        let chat_template = ChatTemplate::from_gguf(&content);
        if let Err(reason) = &chat_template {
            tracing::info!(path = %path.display(), "no chat completions: {reason}");
        }
        let trained_context = Architecture::from_gguf(&content)?
            .context_length
            .unwrap_or(DEFAULT_CONTEXT);
        let name = content
            .metadata
            .get("general.name")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| {
                path.file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
            });
        let model = weights::into_model(content, &mut file, device, format, trained_context)?;
        Ok(Self {
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            context_length: trained_context,
            name,
            loaded_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            chat_template,
        })
    }

    /// The model's chat template, or why it has none.
    pub fn chat_template(&self) -> Result<&ChatTemplate, &NoChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The tokenizer, shareable with request validation.
    pub fn tokenizer(&self) -> Arc<LlmTokenizer> {
        Arc::clone(&self.tokenizer)
    }

    /// The most tokens (prompt and generated together) one sequence may hold.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// When the model was loaded, in Unix seconds.
    pub fn loaded_at(&self) -> u64 {
        self.loaded_at
    }

    /// The model's architecture (`general.architecture`).
    pub fn architecture(&self) -> &str {
        &self.model.architecture().name
    }

    /// The model's name from its metadata.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A fresh sequence with an empty KV cache.
    pub fn session(&self) -> Session {
        Session {
            model: Arc::clone(&self.model),
            cache: KvCache::default(),
            position: 0,
        }
    }
}

/// One sequence being run: the model with its own KV cache and position.
#[derive(Clone)]
pub struct Session {
    model: Arc<Transformer>,
    cache: KvCache,
    position: usize,
}

impl Session {
    /// The session as it was after its first `tokens` tokens.
    fn truncated(&self, tokens: usize) -> Result<Self, LlmError> {
        Ok(Self {
            model: Arc::clone(&self.model),
            cache: self.cache.truncated(tokens)?,
            position: tokens.min(self.position),
        })
    }

    /// The keys and values of the session's tokens `start..start + tokens`.
    fn kv_slice(&self, start: usize, tokens: usize) -> Result<KvCache, LlmError> {
        self.cache.slice(start, tokens)
    }

    /// This session followed by cached `blocks` of `tokens` tokens in all, each with
    /// the shift from where it was computed (right after this session) to its place.
    fn followed_by(&self, blocks: &[(&KvCache, usize)], tokens: usize) -> Result<Self, LlmError> {
        Ok(Self {
            model: Arc::clone(&self.model),
            cache: self.cache.followed_by(&self.model, blocks)?,
            position: self.position + tokens,
        })
    }

    /// Bytes of keys and values the session holds.
    fn kv_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Runs `ids` after what the session has seen and returns the next token's logits.
    ///
    /// # Errors
    /// When `ids` is empty or a candle operation fails.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>, LlmError> {
        let piece = Piece::causal(self, ids);
        let mut rows = run_together(&mut [(self, &piece)])?;
        rows.pop()
            .and_then(|mut r| r.pop())
            .ok_or_else(|| LlmError::InvalidInput("cannot run an empty token sequence".into()))
    }
}

impl Llm {
    /// Runs each session's tokens after what it has seen, all in one packed forward pass,
    /// and returns each session's next-token logits: the same as feeding them one by one.
    ///
    /// # Errors
    /// When a token list is empty or a candle operation fails.
    pub fn feed_batch(
        &self,
        batch: &mut [(&mut Session, &[u32])],
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        let pieces: Vec<Piece> = batch.iter().map(|(s, ids)| Piece::causal(s, ids)).collect();
        let mut work: Vec<(&mut Session, &Piece)> = batch
            .iter_mut()
            .map(|(s, _)| &mut **s)
            .zip(&pieces)
            .collect();
        run_together(&mut work)?
            .into_iter()
            .map(|mut rows| {
                rows.pop().ok_or_else(|| {
                    LlmError::InvalidInput("cannot run an empty token sequence".into())
                })
            })
            .collect()
    }
}

/// The tokens one session runs in a forward step.
#[derive(Debug, Clone)]
struct Piece {
    ids: Vec<u32>,
    positions: Vec<u32>,
    /// `ids.len()` rows over the session's tokens and these ones; `None` for causal.
    mask: Option<Vec<f32>>,
    /// The tokens whose next-token logits are wanted.
    outputs: Vec<usize>,
}

impl Piece {
    /// `ids` right after what `session` has seen, each after the one before; the last
    /// token's logits wanted.
    fn causal(session: &Session, ids: &[u32]) -> Self {
        let start = session.position as u32;
        Self {
            ids: ids.to_vec(),
            positions: (start..start + ids.len() as u32).collect(),
            mask: None,
            outputs: ids.len().checked_sub(1).into_iter().collect(),
        }
    }

    /// Tokens in the piece.
    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Runs every session's piece in one packed forward pass; per session, one logits row
/// per wanted output.
fn run_together(work: &mut [(&mut Session, &Piece)]) -> Result<Vec<Vec<Vec<f32>>>, LlmError> {
    let Some((first, _)) = work.first() else {
        return Ok(Vec::new());
    };
    let model = Arc::clone(&first.model);
    let device = model.device().clone();
    let mut steps = Vec::with_capacity(work.len());
    for (_, piece) in work.iter() {
        if piece.ids.is_empty() {
            return Err(LlmError::InvalidInput(
                "cannot run an empty token sequence".into(),
            ));
        }
        let mask = match &piece.mask {
            Some(values) => Some(candle_core::Tensor::from_slice(
                values,
                (piece.len(), values.len() / piece.len()),
                &device,
            )?),
            None => None,
        };
        steps.push(Step {
            ids: &piece.ids,
            positions: &piece.positions,
            mask,
            outputs: &piece.outputs,
        });
    }
    let mut batch: Vec<(&mut KvCache, &Step)> = work
        .iter_mut()
        .map(|(session, _)| &mut session.cache)
        .zip(&steps)
        .collect();
    let logits = model.forward_batch(&mut batch)?;
    for (session, piece) in work.iter_mut() {
        session.position += piece.len();
    }
    logits
        .into_iter()
        .map(|rows| Ok(rows.to_dtype(candle_core::DType::F32)?.to_vec2()?))
        .collect()
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
pub(crate) mod tests {
    use super::*;

    /// The shipped model file, which `scripts/fetch-models.sh` puts in place.
    pub(crate) fn model_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    /// The shipped model with its matrices as `format`.
    pub(crate) fn llm(format: WeightFormat) -> Llm {
        Llm::load(&model_path(), &Device::Cpu, format).expect("models: run scripts/fetch-models.sh")
    }

    /// The shipped model's tokenizer alone.
    pub(crate) fn tokenizer() -> LlmTokenizer {
        let mut file = File::open(model_path()).expect("models: run scripts/fetch-models.sh");
        let content = gguf_file::Content::read(&mut file).expect("a GGUF file");
        LlmTokenizer::from_gguf(&content).expect("its tokenizer")
    }

    #[test]
    fn log_softmax_matches_hand_computation() {
        // logits (0, ln 3): probabilities 1/4 and 3/4.
        let lp = log_softmax(&[0.0, 3f32.ln()]);
        assert!((lp[0] - 0.25f32.ln()).abs() < 1e-6);
        assert!((lp[1] - 0.75f32.ln()).abs() < 1e-6);
    }
}
