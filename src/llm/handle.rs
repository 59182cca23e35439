//! The async face of the LLM: jobs go to its scheduler thread, answers come back on
//! channels.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::scheduler::{self, Generating, Scoring, Task};
use super::{
    ChatTemplate, Delta, Generation, GenerationParams, Llm, LlmError, LlmTokenizer, NoChatTemplate,
    PrefixCache, ScoreRequest,
};
use crate::worker::Worker;

/// A cloneable handle on the LLM worker thread.
#[derive(Clone)]
pub struct LlmHandle {
    worker: Worker<Box<dyn Task>>,
    /// The model, shared with the scheduler thread: its facts, and jobs are built on it.
    llm: Arc<Llm>,
}

impl LlmHandle {
    /// Starts the scheduler thread for `llm`, with a queue of `capacity` waiting jobs
    /// and a prefix cache of at most `kv_cache_bytes`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(llm: Llm, capacity: usize, kv_cache_bytes: usize) -> std::io::Result<Self> {
        let llm = Arc::new(llm);
        let cache = PrefixCache::with_budget(kv_cache_bytes);
        let model = Arc::clone(&llm);
        let worker = Worker::spawn_with("exemplar-llm", capacity, move |queue| {
            scheduler::run(&model, cache, queue)
        })?;
        Ok(Self { worker, llm })
    }

    /// The tokenizer, for validating requests before they queue.
    pub fn tokenizer(&self) -> &Arc<LlmTokenizer> {
        &self.llm.tokenizer
    }

    /// The most tokens one sequence may hold.
    pub fn context_length(&self) -> usize {
        self.llm.context_length()
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        self.llm.name()
    }

    /// When the model was loaded, in Unix seconds.
    pub fn loaded_at(&self) -> u64 {
        self.llm.loaded_at()
    }

    /// The model's architecture (`general.architecture`: llama, qwen2, qwen3, gemma3).
    pub fn architecture(&self) -> &str {
        self.llm.architecture()
    }

    /// The model's chat template, or why it has none.
    pub fn chat_template(&self) -> Result<&ChatTemplate, &NoChatTemplate> {
        self.llm.chat_template()
    }

    /// The worker's name if a panic broke it.
    pub fn broken(&self) -> Option<&'static str> {
        self.worker.broken()
    }

    /// Jobs waiting for the model.
    pub fn waiting(&self) -> usize {
        self.worker.waiting()
    }

    /// Generates a continuation of `prompt`.
    ///
    /// # Errors
    /// [`LlmError::Queue`] when the queue is full, or the model's own error.
    pub async fn generate(
        &self,
        prompt: Vec<u32>,
        params: GenerationParams,
        deltas: Option<mpsc::UnboundedSender<Delta>>,
    ) -> Result<Generation, LlmError> {
        self.start_generate(prompt, params, deltas)?
            .await
            .map_err(|_| LlmError::Queue(self.worker.lost()))?
    }

    /// Scores continuations after queries that share a prefix.
    ///
    /// # Errors
    /// [`LlmError::Queue`] when the queue is full, or the model's own error.
    pub async fn score(&self, request: ScoreRequest) -> Result<Vec<Vec<f32>>, LlmError> {
        let (reply, answer) = oneshot::channel();
        self.worker.submit(Box::new(Scoring::new(request, reply)))?;
        answer
            .await
            .map_err(|_| LlmError::Queue(self.worker.lost()))?
    }

    /// Queues a generation and returns where its result will arrive.
    ///
    /// With `deltas`, settled text is sent there as it is produced; dropping its
    /// receiver cancels the generation. Queueing is decided before this returns, so a
    /// full queue is known before a stream is opened.
    ///
    /// # Errors
    /// [`LlmError::Queue`] when the queue is full or the worker has stopped.
    pub fn start_generate(
        &self,
        prompt: Vec<u32>,
        params: GenerationParams,
        deltas: Option<mpsc::UnboundedSender<Delta>>,
    ) -> Result<oneshot::Receiver<Result<Generation, LlmError>>, LlmError> {
        let (reply, answer) = oneshot::channel();
        self.worker.submit(Box::new(Generating::new(
            &self.llm, prompt, params, deltas, reply,
        )))?;
        Ok(answer)
    }
}
