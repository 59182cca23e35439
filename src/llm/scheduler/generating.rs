//! Generation jobs: the prompt run in chunks (reusing a cached prefix), then a token
//! decoded every step, its settled text sent on as it comes.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{gone, lost, reply_once, Done, Task, Work};
use crate::llm::generate::Decoder;
use crate::llm::prefix_cache::CHUNK;
use crate::llm::{Delta, Generation, GenerationParams, Llm, LlmError, Piece, PrefixCache, Session};

/// A generation under way.
pub(in crate::llm) struct Generating {
    prompt: Vec<u32>,
    /// The prompt and `max_tokens` within the context window: the most it holds.
    most_tokens: usize,
    decoder: Option<Decoder>,
    deltas: Option<mpsc::UnboundedSender<Delta>>,
    reply: Option<oneshot::Sender<Result<Generation, LlmError>>>,
    phase: GeneratingPhase,
}

/// Where a generation is.
enum GeneratingPhase {
    /// Not looked up yet.
    Start,
    /// Running the prompt: `session` has seen its first `fed` tokens.
    Prompt { session: Session, fed: usize },
    /// Decoding: `next` is the token to run after what `session` has seen.
    Decoding { session: Session, next: u32 },
    /// Answered.
    Done,
}

impl Generating {
    /// A job that continues `prompt` and answers on `reply`, sending settled text to
    /// `deltas` when given.
    pub(in crate::llm) fn new(
        llm: &Llm,
        prompt: Vec<u32>,
        params: GenerationParams,
        deltas: Option<mpsc::UnboundedSender<Delta>>,
        reply: oneshot::Sender<Result<Generation, LlmError>>,
    ) -> Self {
        let most_tokens = prompt
            .len()
            .saturating_add(params.max_tokens)
            .min(llm.context_length())
            .max(prompt.len());
        let decoder = Decoder::new(
            Arc::clone(&llm.tokenizer),
            params,
            prompt.len(),
            llm.context_length(),
        );
        Self {
            prompt,
            most_tokens,
            decoder: Some(decoder),
            deltas,
            reply: Some(reply),
            phase: GeneratingPhase::Start,
        }
    }

    /// Sends settled text on; false when the caller has gone.
    fn send(
        deltas: &Option<mpsc::UnboundedSender<Delta>>,
        reply: &Option<oneshot::Sender<Result<Generation, LlmError>>>,
        delta: Delta,
    ) -> bool {
        match deltas {
            Some(tx) => tx.send(delta).is_ok(),
            None => reply.as_ref().is_some_and(|r| !r.is_closed()),
        }
    }

    fn answer(&mut self, result: Result<Generation, LlmError>) {
        reply_once(&mut self.reply, result);
        self.phase = GeneratingPhase::Done;
    }

    /// Ends the generation and answers with it.
    fn finish(&mut self) {
        if let Some(decoder) = self.decoder.take() {
            let (deltas, reply) = (&self.deltas, &self.reply);
            let generation = decoder.finish(&mut |d| Self::send(deltas, reply, d));
            self.answer(Ok(generation));
        }
    }
}

impl Task for Generating {
    fn abandoned(&self) -> bool {
        gone(&self.reply)
    }

    fn plan(
        &mut self,
        llm: &Llm,
        cache: &mut PrefixCache,
        _room: usize,
    ) -> Result<Vec<Work>, LlmError> {
        if matches!(self.phase, GeneratingPhase::Start) {
            let Some((_, start)) = self.prompt.split_last() else {
                return Err(LlmError::InvalidInput(
                    "cannot continue an empty prompt".into(),
                ));
            };
            let (session, fed) = cache.lookup(llm, start)?;
            self.phase = GeneratingPhase::Prompt { session, fed };
        }
        let (session, ids) = match &self.phase {
            GeneratingPhase::Start | GeneratingPhase::Done => return Ok(Vec::new()),
            GeneratingPhase::Prompt { session, fed } => {
                // The prompt but its last token runs in aligned chunks (so it can be
                // reused); the last token runs alone and gives the first logits.
                let start = self.prompt.len() - 1;
                let end = if *fed < start {
                    (*fed + CHUNK).min(start)
                } else {
                    self.prompt.len()
                };
                (session, &self.prompt[*fed..end])
            }
            GeneratingPhase::Decoding { session, next } => (session, std::slice::from_ref(next)),
        };
        Ok(vec![Work {
            piece: Piece::causal(session, ids),
            session: session.clone(),
        }])
    }

    fn absorb(&mut self, cache: &mut PrefixCache, done: Vec<Done>) -> Result<bool, LlmError> {
        let (session, mut logits) = done.into_iter().next().ok_or_else(lost)?;
        let start = self.prompt.len() - 1;
        if session.position < start {
            self.phase = GeneratingPhase::Prompt {
                fed: session.position,
                session,
            };
            return Ok(false);
        }
        if session.position == start {
            cache.remember(&self.prompt[..start], &session);
            self.phase = GeneratingPhase::Prompt {
                fed: start,
                session,
            };
            return Ok(false);
        }
        let logits = logits.pop().ok_or_else(lost)?;
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(true);
        };
        let (deltas, reply) = (&self.deltas, &self.reply);
        match decoder.accept(&logits, &mut |d| Self::send(deltas, reply, d))? {
            Some(next) => {
                self.phase = GeneratingPhase::Decoding { session, next };
                Ok(false)
            }
            None => {
                self.finish();
                Ok(true)
            }
        }
    }

    fn fail(mut self: Box<Self>, error: LlmError) {
        self.answer(Err(error));
    }

    fn kv_bytes(&self) -> usize {
        match &self.phase {
            GeneratingPhase::Prompt { session, .. } | GeneratingPhase::Decoding { session, .. } => {
                session.kv_bytes()
            }
            GeneratingPhase::Start | GeneratingPhase::Done => 0,
        }
    }

    fn kv_tokens(&self) -> usize {
        self.most_tokens
    }
}
