//! Scoring continuations: the sum of each continuation's token log-probabilities after
//! a prompt, in one forward pass after the shared prefix.
//!
//! The prefix (instruction and demonstrations) runs once, or comes from the worker's
//! prefix cache. Then a query and every continuation's tokens are packed into one
//! step with a tree attention mask: a query's tokens see the prefix and their own
//! query; a continuation token sees the prefix, its query and its own earlier tokens.
//! ([`Llm::score_packed`] packs several queries into the step the same way.)
//! Continuations are merged as a trie, so a token shared by several labels ("very" in
//! "very good" and "very bad") is run once; a continuation's last token is never run,
//! since only the logits *before* each token are needed.

use std::collections::HashMap;

use super::scheduler::{self, Scoring};
use super::{log_softmax, run_together, Llm, LlmError, Piece, PrefixCache};

/// What to score: several queries after one prefix, each against every continuation.
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    /// Tokens every query follows; may be empty.
    pub prefix: Vec<u32>,
    /// Each query's tokens after the prefix; none may be empty.
    pub queries: Vec<Vec<u32>>,
    /// The continuations to score after each query; none may be empty.
    pub continuations: Vec<Vec<u32>>,
    /// Lengths of the demonstration blocks that end the prefix, to take from the
    /// demonstration cache (approximate); empty to run the prefix exactly.
    pub blocks: Vec<usize>,
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
    /// Each query runs in its own step (its tokens and its continuation trie), so a
    /// query's scores never depend on which other queries share the request: with
    /// 8-bit activations a differently shaped step can round differently, and the same
    /// request must always get the same answer. This is the scheduler's scoring, run
    /// alone.
    ///
    /// # Errors
    /// When a query or continuation is empty, or the model fails.
    pub fn score_cached(
        &self,
        request: &ScoreRequest,
        cache: &mut PrefixCache,
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        scheduler::run_alone(self, cache, Box::new(Scoring::new(request.clone(), reply)));
        answer
            .try_recv()
            .map_err(|_| LlmError::InvalidInput("the scoring ended without an answer".into()))?
    }

    /// Like [`Llm::score`] with every query packed into one step after the prefix:
    /// fewer, larger steps, faster when many short queries share a prefix, but each
    /// query's scores then depend (by float rounding) on what it was packed with.
    ///
    /// # Errors
    /// When a query or continuation is empty, or the model fails.
    pub fn score_packed(&self, request: &ScoreRequest) -> Result<Vec<Vec<f32>>, LlmError> {
        check(request)?;
        if request.queries.is_empty() {
            return Ok(Vec::new());
        }
        let mut session = PrefixCache::default().session(self, &request.prefix)?;
        let tree = Tree::pack(&request.queries, &request.continuations, session.position);
        let piece = tree.piece(session.position);
        let logits = run_together(&mut [(&mut session, &piece)])?.remove(0);
        Ok(tree.sums(&logits))
    }
}

/// Refuses empty queries and continuations.
pub(super) fn check(request: &ScoreRequest) -> Result<(), LlmError> {
    if request.continuations.iter().any(Vec::is_empty) {
        return Err(LlmError::InvalidInput(
            "a continuation has no tokens".into(),
        ));
    }
    if request.queries.iter().any(Vec::is_empty) {
        return Err(LlmError::InvalidInput("a query has no tokens".into()));
    }
    Ok(())
}

/// The queries and continuation tries of one request, packed into one forward step.
#[derive(Debug)]
pub(super) struct Tree {
    ids: Vec<u32>,
    positions: Vec<u32>,
    /// The packed token each token directly follows; `None` for a query's first token,
    /// which follows the cached prefix.
    parents: Vec<Option<usize>>,
    /// The packed tokens whose next-token logits are needed, in output-row order.
    outputs: Vec<usize>,
    /// Per query, per continuation: the (output row, token) pairs whose
    /// log-probabilities add up to its score.
    picks: Vec<Vec<Vec<(usize, u32)>>>,
}

impl Tree {
    /// Packs `queries` and their continuation tries after `past` tokens.
    pub(super) fn pack(queries: &[Vec<u32>], continuations: &[Vec<u32>], past: usize) -> Self {
        let mut tree = Self {
            ids: Vec::new(),
            positions: Vec::new(),
            parents: Vec::new(),
            outputs: Vec::new(),
            picks: Vec::with_capacity(queries.len()),
        };
        for query in queries {
            let mut previous = None;
            for (offset, &id) in query.iter().enumerate() {
                previous = Some(tree.push(id, past + offset, previous));
            }
            let last = previous.unwrap_or_default();
            let query_row = tree.output_row(last);
            let start = past + query.len();
            // Trie node (a continuation's first d + 1 tokens) -> its output row.
            let mut nodes: HashMap<&[u32], (usize, usize)> = HashMap::new();
            let picks = continuations
                .iter()
                .map(|continuation| {
                    let mut picks = vec![(query_row, continuation[0])];
                    let mut parent = last;
                    for depth in 1..continuation.len() {
                        let key = &continuation[..depth];
                        let row;
                        (parent, row) = match nodes.get(key) {
                            Some(&node) => node,
                            None => {
                                let index =
                                    tree.push(key[depth - 1], start + depth - 1, Some(parent));
                                let node = (index, tree.output_row(index));
                                nodes.insert(key, node);
                                node
                            }
                        };
                        picks.push((row, continuation[depth]));
                    }
                    picks
                })
                .collect();
            tree.picks.push(picks);
        }
        tree
    }

    /// Each query's continuation scores from the step's logits (one row per output).
    pub(super) fn sums(&self, logits: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let logprobs: Vec<Vec<f32>> = logits.iter().map(|row| log_softmax(row)).collect();
        self.picks
            .iter()
            .map(|per_continuation| {
                per_continuation
                    .iter()
                    .map(|picks| {
                        picks
                            .iter()
                            .map(|&(row, token)| {
                                logprobs[row]
                                    .get(token as usize)
                                    .copied()
                                    .unwrap_or(f32::NEG_INFINITY)
                            })
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    fn push(&mut self, id: u32, position: usize, parent: Option<usize>) -> usize {
        self.ids.push(id);
        self.positions.push(position as u32);
        self.parents.push(parent);
        self.ids.len() - 1
    }

    fn output_row(&mut self, index: usize) -> usize {
        self.outputs.push(index);
        self.outputs.len() - 1
    }

    /// The tree as one session's step after `past` tokens, its mask included.
    pub(super) fn piece(&self, past: usize) -> Piece {
        Piece {
            ids: self.ids.clone(),
            positions: self.positions.clone(),
            mask: Some(self.mask(past)),
            outputs: self.outputs.clone(),
        }
    }

    /// 0 where packed token `row` may attend (the `past` cached tokens, itself and its
    /// ancestors), `-inf` elsewhere: `n` rows of `past + n` columns.
    fn mask(&self, past: usize) -> Vec<f32> {
        let n = self.ids.len();
        let mut mask = vec![f32::NEG_INFINITY; n * (past + n)];
        for row in 0..n {
            let line = &mut mask[row * (past + n)..(row + 1) * (past + n)];
            line[..past].fill(0.0);
            let mut at = Some(row);
            while let Some(token) = at {
                line[past + token] = 0.0;
                at = self.parents[token];
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_label_tokens_are_packed_once_and_last_tokens_never() {
        // Two queries; labels "a b", "a c", "d": only "a" is fed after each query.
        let request = ScoreRequest {
            prefix: vec![1, 2],
            queries: vec![vec![10, 11], vec![20]],
            continuations: vec![vec![5, 6], vec![5, 7], vec![8]],
            blocks: Vec::new(),
        };
        let tree = Tree::pack(&request.queries, &request.continuations, 2);
        assert_eq!(tree.ids, vec![10, 11, 5, 20, 5]);
        assert_eq!(tree.positions, vec![2, 3, 4, 2, 3]);
        assert_eq!(tree.parents, vec![None, Some(0), Some(1), None, Some(3)]);
        // Output rows: query 0's last token, its "a", query 1's token, its "a".
        assert_eq!(tree.outputs, vec![1, 2, 3, 4]);
        assert_eq!(
            tree.picks[0],
            vec![vec![(0, 5), (1, 6)], vec![(0, 5), (1, 7)], vec![(0, 8)]]
        );
        assert_eq!(tree.picks[1][1], vec![(2, 5), (3, 7)]);
    }

    #[test]
    fn a_token_sees_the_prefix_its_ancestors_and_nothing_else() {
        let request = ScoreRequest {
            prefix: vec![1],
            queries: vec![vec![10], vec![20]],
            continuations: vec![vec![5, 6]],
            blocks: Vec::new(),
        };
        let tree = Tree::pack(&request.queries, &request.continuations, 1);
        let inf = f32::NEG_INFINITY;
        let mask = tree.mask(1);
        let rows: Vec<&[f32]> = mask.chunks(5).collect();
        // Columns: the cached token, then packed tokens 10, 5, 20, 5.
        assert_eq!(rows[0], &[0.0, 0.0, inf, inf, inf]);
        assert_eq!(rows[1], &[0.0, 0.0, 0.0, inf, inf]);
        assert_eq!(rows[2], &[0.0, inf, inf, 0.0, inf]);
        assert_eq!(rows[3], &[0.0, inf, inf, 0.0, 0.0]);
    }
}
