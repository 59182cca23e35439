//! Scoring continuations: the sum of each continuation's token log-probabilities after
//! a prompt, with shared work done once.
//!
//! The prefix (instruction and demonstrations) runs once; each query continues a clone
//! of its KV cache; the continuations are walked as a trie, so a token shared by several
//! labels ("very" in "very good" and "very bad") is run once too.

use super::{log_softmax, Llm, LlmError, PrefixCache, Session};

/// What to score: several queries after one prefix, each against every continuation.
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    /// Tokens every query follows; may be empty.
    pub prefix: Vec<u32>,
    /// Each query's tokens after the prefix; none may be empty.
    pub queries: Vec<Vec<u32>>,
    /// The continuations to score after each query; none may be empty.
    pub continuations: Vec<Vec<u32>>,
}

impl Llm {
    /// Sum of log-probabilities of every continuation after every query: one row per
    /// query, one column per continuation.
    ///
    /// # Errors
    /// When a query or continuation is empty, or the model fails.
    pub fn score(&self, request: &ScoreRequest) -> Result<Vec<Vec<f32>>, LlmError> {
        self.score_cached(request, &mut PrefixCache::default())
    }

    /// Like [`Llm::score`], taking the prefix's KV state from `cache` when it holds it.
    ///
    /// # Errors
    /// When a query or continuation is empty, or the model fails.
    pub fn score_cached(
        &self,
        request: &ScoreRequest,
        cache: &mut PrefixCache,
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        if request.continuations.iter().any(Vec::is_empty) {
            return Err(LlmError::Tokenizer("a continuation has no tokens".into()));
        }
        let base = cache.session(self, &request.prefix)?;
        let all: Vec<usize> = (0..request.continuations.len()).collect();
        request
            .queries
            .iter()
            .map(|query| {
                let mut session = base.clone();
                let logits = session.feed(query)?;
                let mut sums = vec![0f32; request.continuations.len()];
                score_trie(
                    &session,
                    &logits,
                    &request.continuations,
                    &all,
                    0,
                    &mut sums,
                )?;
                Ok(sums)
            })
            .collect()
    }
}

/// Adds, for the continuations in `members` (which agree on their first `depth`
/// tokens), the log-probability of each next token, and recurses into longer ones.
fn score_trie(
    session: &Session,
    logits: &[f32],
    continuations: &[Vec<u32>],
    members: &[usize],
    depth: usize,
    sums: &mut [f32],
) -> Result<(), LlmError> {
    let logprobs = log_softmax(logits);
    let mut next_tokens: Vec<u32> = members.iter().map(|&m| continuations[m][depth]).collect();
    next_tokens.sort_unstable();
    next_tokens.dedup();
    for token in next_tokens {
        let group: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&m| continuations[m][depth] == token)
            .collect();
        let logprob = logprobs
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        for &m in &group {
            sums[m] += logprob;
        }
        let longer: Vec<usize> = group
            .into_iter()
            .filter(|&m| continuations[m].len() > depth + 1)
            .collect();
        if !longer.is_empty() {
            let mut branch = session.clone();
            let next_logits = branch.feed(&[token])?;
            score_trie(
                &branch,
                &next_logits,
                continuations,
                &longer,
                depth + 1,
                sums,
            )?;
        }
    }
    Ok(())
}
