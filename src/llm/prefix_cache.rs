//! The KV state of the last prompt prefix, kept by the LLM worker for the next request.
//!
//! Consecutive score requests often share their prefix: fixed demonstrations, the
//! pages of a batch evaluation, or vote-k's second stage when few examples are
//! annotated. Keeping the last prefix's session turns the second and later prefix
//! passes into a clone of its KV cache, which candle shares rather than copies.

use super::{Llm, LlmError, Session};

/// One remembered prefix and the session that has run it.
#[derive(Default)]
pub struct PrefixCache {
    last: Option<(Vec<u32>, Session)>,
    hits: u64,
}

impl PrefixCache {
    /// A session that has run `prefix`: the remembered one when it is the same prefix,
    /// else a fresh pass, which is then remembered in its place.
    ///
    /// # Errors
    /// When the model fails on the prefix.
    pub fn session(&mut self, llm: &Llm, prefix: &[u32]) -> Result<Session, LlmError> {
        if let Some((tokens, session)) = &self.last {
            if tokens == prefix {
                self.hits += 1;
                return Ok(session.clone());
            }
        }
        let mut session = llm.session();
        if !prefix.is_empty() {
            session.feed(prefix)?;
        }
        self.last = Some((prefix.to_vec(), session.clone()));
        Ok(session)
    }

    /// How many requests found their prefix already run.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}
