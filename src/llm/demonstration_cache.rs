//! Demonstrations' keys and values, each computed once and placed anywhere in a prompt
//! (cached-demonstration attention, in the manner of parallel context windows and
//! prompt caches).
//!
//! A prompt is a head (the instruction) and blocks (its demonstrations). The head runs
//! exactly, through the prefix cache. Each block runs once, alone after the head, and its
//! keys and values are kept; a prompt is then assembled from the head and its blocks,
//! each block's keys rotated from the position it was computed at to the position it
//! takes. So a query costs its own tokens and labels, and a demonstration is computed
//! once for every prompt it appears in.
//!
//! It is an approximation, which is why it is an option: a demonstration never attends
//! to the demonstrations before it in the prompt, only to the head and itself. With one
//! block it is exact.

use std::collections::HashMap;
use std::sync::Arc;

use super::model::KvCache;
use super::{LlmError, Session};

/// One demonstration's keys and values after a head.
struct Block {
    kv: KvCache,
    last_used: u64,
}

/// The tokens of the head a block follows: with the block's own tokens, what a block
/// is looked up by (the whole sequences, not a hash of them, so that two prompts can
/// never be mistaken for each other).
pub(super) type Head = Arc<[u32]>;

/// Demonstration blocks by the head they follow and their tokens; the prefix cache
/// that owns it keeps the two within one memory budget.
#[derive(Default)]
pub struct DemonstrationCache {
    blocks: HashMap<(Head, Vec<u32>), Block>,
    bytes: usize,
    /// The prefix cache's clock when the last prompt began: its blocks carry it.
    clock: u64,
}

impl DemonstrationCache {
    /// Bytes of keys and values held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Begins assembling a prompt from `blocks` after `head_tokens` at time `now` (the
    /// prefix cache's clock): checks the blocks and returns the head for
    /// [`DemonstrationCache::get`] and [`DemonstrationCache::insert`].
    ///
    /// # Errors
    /// When a block is empty.
    pub(super) fn start(
        &mut self,
        head_tokens: &[u32],
        blocks: &[&[u32]],
        now: u64,
    ) -> Result<Head, LlmError> {
        if blocks.iter().any(|b| b.is_empty()) {
            return Err(LlmError::InvalidInput(
                "a demonstration block has no tokens".into(),
            ));
        }
        self.clock = now;
        Ok(head_tokens.into())
    }

    /// The keys and values of `block` after `head`, if held.
    pub(super) fn get(&mut self, head: &Head, block: &[u32]) -> Option<KvCache> {
        let held = self.blocks.get_mut(&(Arc::clone(head), block.to_vec()))?;
        held.last_used = self.clock;
        count("hit");
        Some(held.kv.clone())
    }

    /// Keeps the keys and values of `block` computed right after `head`.
    pub(super) fn insert(&mut self, head: &Head, block: &[u32], kv: KvCache) {
        count("miss");
        self.bytes += kv.bytes();
        let old = self.blocks.insert(
            (Arc::clone(head), block.to_vec()),
            Block {
                kv,
                last_used: self.clock,
            },
        );
        if let Some(old) = old {
            self.bytes -= old.kv.bytes();
        }
    }

    /// `head` followed by the `held` keys and values of `blocks`, each moved to its
    /// place.
    ///
    /// # Errors
    /// When a candle operation fails.
    pub(super) fn assemble(
        &mut self,
        head: &Session,
        blocks: &[&[u32]],
        held: &[KvCache],
    ) -> Result<Session, LlmError> {
        let mut placed = Vec::with_capacity(blocks.len());
        let mut shift = 0;
        for (block, kv) in blocks.iter().zip(held) {
            placed.push((kv, shift));
            shift += block.len();
        }
        head.followed_by(&placed, shift)
    }

    /// When the least recently used block that may go was last used; the blocks of
    /// the prompt begun last (used at the current clock) may not.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.blocks
            .values()
            .map(|b| b.last_used)
            .filter(|&used| used < self.clock)
            .min()
    }

    /// Drops the least recently used block that may go.
    pub(super) fn evict_oldest(&mut self) {
        let oldest = self
            .blocks
            .iter()
            .filter(|(_, b)| b.last_used < self.clock)
            .min_by_key(|(_, b)| b.last_used)
            .map(|(key, _)| key.clone());
        if let Some(block) = oldest.and_then(|key| self.blocks.remove(&key)) {
            self.bytes -= block.kv.bytes();
        }
    }
}

/// Counts a block lookup in `/metrics`.
fn count(outcome: &'static str) {
    ::metrics::counter!("exemplar_demonstration_cache_lookups_total", "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::super::model::KvCache;
    use super::super::{Llm, PrefixCache, ScoreRequest};
    use crate::config::WeightFormat;

    fn f32_llm() -> Llm {
        crate::llm::tests::llm(WeightFormat::F32)
    }

    /// Rotary embeddings compose: the first layer's keys of a block computed at one
    /// position and rotated by a shift are the keys computed at the shifted position.
    /// (Deeper layers' keys also depend on how far the block is from the head, which
    /// is the approximation: a cached block is computed right after the head.)
    #[test]
    fn shifted_keys_equal_keys_computed_at_the_shifted_position() {
        let llm = f32_llm();
        let tokenizer = llm.tokenizer();
        let head = tokenizer
            .encode("Classify the sentiment.")
            .expect("encodes");
        let block = tokenizer
            .encode("\n\nReview: dull.\nSentiment: negative")
            .expect("encodes");
        let mut after_head = llm.session();
        after_head.feed(&head).expect("runs");
        let first_layer_keys = |skip: usize| -> Tensor {
            let mut session = after_head.clone();
            session.position += skip;
            session.feed(&block).expect("runs");
            let kv = session.kv_slice(head.len(), block.len()).expect("slice");
            let mut first = kv.layers[0].clone().expect("a first layer");
            first.joined().expect("joins").0
        };
        let here = first_layer_keys(0);
        let there = first_layer_keys(7);
        let shifted = llm.model.shift_keys(0, &here, 7).expect("shifts");
        assert!(largest(&shifted, &there) < 1e-4);
        assert!(largest(&here, &there) > 1e-2, "the shift changes the keys");
    }

    /// The largest difference between two tensors of one shape.
    fn largest(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("compares")
    }

    /// Scores of `continuations` after `prefix` and `query`, the prefix's last blocks
    /// (of lengths `blocks`) taken from `cache`'s demonstration blocks.
    fn scores(
        llm: &Llm,
        cache: &mut PrefixCache,
        prefix: &[u32],
        blocks: &[usize],
        query: &[u32],
        continuations: &[Vec<u32>],
    ) -> Vec<f32> {
        let request = ScoreRequest {
            prefix: prefix.to_vec(),
            queries: vec![query.to_vec()],
            continuations: continuations.to_vec(),
            blocks: blocks.to_vec(),
        };
        llm.score_cached(&request, cache).expect("scores").remove(0)
    }

    /// Scores of `continuations` after the whole prompt run exactly, on a fresh cache.
    fn exact_scores(
        llm: &Llm,
        prefix: &[u32],
        query: &[u32],
        continuations: &[Vec<u32>],
    ) -> Vec<f32> {
        let mut fresh = PrefixCache::default();
        scores(llm, &mut fresh, prefix, &[], query, continuations)
    }

    fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Two blocks: the second is computed after the head alone, so the prompt is not
    /// the exact one; assembled from cached blocks it gives bit for bit what it gave
    /// when the blocks were computed.
    #[test]
    fn assembled_blocks_approximate_the_prompt_and_repeat_exactly() {
        let llm = f32_llm();
        let tokenizer = llm.tokenizer();
        let encode = |s: &str| tokenizer.encode(s).expect("encodes");
        let head = encode("Classify the sentiment of each review.");
        let first = encode("\n\nReview: a gorgeous, witty film.\nSentiment: positive");
        let second = encode("\n\nReview: dull and far too long.\nSentiment: negative");
        let query = encode("\n\nReview: a lovely surprise.\nSentiment:");
        let labels = vec![encode(" positive"), encode(" negative"), encode(" mixed")];
        let mut prefix = head.clone();
        prefix.extend(&first);
        prefix.extend(&second);
        let blocks = [first.len(), second.len()];
        let mut cache = PrefixCache::default();
        let computed = scores(&llm, &mut cache, &prefix, &blocks, &query, &labels);
        assert_eq!(cache.demonstrations.blocks.len(), 2);
        let reused = scores(&llm, &mut cache, &prefix, &blocks, &query, &labels);
        assert_eq!(cache.demonstrations.blocks.len(), 2);
        assert_eq!(computed, reused);

        let exact = exact_scores(&llm, &prefix, &query, &labels);
        let apart = largest_difference(&computed, &exact);
        assert!(
            apart > 1e-3,
            "cached blocks equal the exact prompt ({apart})"
        );
        // The same choice of label as the exact prompt.
        let argmax = |scores: &[f32]| {
            scores
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
        };
        assert_eq!(argmax(&computed), argmax(&exact));
    }

    /// A block with nothing before it has the same hidden states wherever it starts
    /// (attention sees relative positions only), so in every layer its keys computed
    /// at a later position are its keys moved there: both rotary bases of Gemma 3's
    /// layers, the NeoX pairing of Qwen and Gemma, and the sliding window included.
    #[test]
    fn every_layers_moved_keys_equal_keys_computed_there_in_every_architecture() {
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
        // Longer than Gemma 3's tiny window of 8.
        let block: Vec<u32> = (100..112).collect();
        let shift = 37;
        for architecture in ["llama", "qwen2", "qwen3", "gemma3"] {
            let path = tiny.join(format!("{architecture}.gguf"));
            let llm = Llm::load(&path, &candle_core::Device::Cpu, WeightFormat::F32)
                .expect("tiny fixture");
            let computed_at = |start: usize| {
                let mut session = llm.session();
                session.position = start;
                session.feed(&block).expect("runs");
                session.kv_slice(0, block.len()).expect("slice")
            };
            let (here, there) = (computed_at(0), computed_at(shift));
            let moved = KvCache::default()
                .followed_by(&llm.model, &[(&here, shift)])
                .expect("moves");
            for (layer, (moved, there)) in moved.layers.iter().zip(&there.layers).enumerate() {
                let (mut moved, mut there) = (
                    moved.clone().expect("a layer"),
                    there.clone().expect("a layer"),
                );
                let (moved_keys, moved_values) = moved.joined().expect("joins");
                let (keys, values) = there.joined().expect("joins");
                let gap = largest(&moved_keys, &keys).max(largest(&moved_values, &values));
                assert!(gap < 1e-4, "{architecture} layer {layer}: {gap}");
            }
        }
    }

    #[test]
    fn one_block_is_exact_and_a_second_use_is_a_hit() {
        let llm = f32_llm();
        let tokenizer = llm.tokenizer();
        let encode = |s: &str| tokenizer.encode(s).expect("encodes");
        let mut prefix = encode("Classify the question.");
        let block = encode("\n\nQuestion: Who wrote Hamlet?\nType: human");
        prefix.extend(&block);
        let query = encode("\n\nQuestion: What is the capital of Peru?\nType:");
        let labels = vec![encode(" location"), encode(" human"), encode(" number")];
        let mut cache = PrefixCache::default();
        let first = scores(&llm, &mut cache, &prefix, &[block.len()], &query, &labels);
        assert_eq!(cache.demonstrations.blocks.len(), 1);
        let again = scores(&llm, &mut cache, &prefix, &[block.len()], &query, &labels);
        assert_eq!(cache.demonstrations.blocks.len(), 1);
        let exact = exact_scores(&llm, &prefix, &query, &labels);
        assert!(largest_difference(&first, &exact) < 1e-4);
        assert_eq!(first, again);
    }

    #[test]
    fn blocks_past_the_budget_are_evicted_least_recently_used_first() {
        let llm = f32_llm();
        let tokenizer = llm.tokenizer();
        let encode = |s: &str| tokenizer.encode(s).expect("encodes");
        let head = encode("Instruction.");
        let query = encode("\n\nD?");
        let labels = vec![encode(" yes")];
        let blocks: Vec<Vec<u32>> = ["\n\nA one.", "\n\nB two two.", "\n\nC three."]
            .iter()
            .map(|t| encode(t))
            .collect();
        let run = |cache: &mut PrefixCache, block: &[u32]| {
            let mut prefix = head.clone();
            prefix.extend(block);
            scores(&llm, cache, &prefix, &[block.len()], &query, &labels);
        };
        // Room for about two blocks: the third evicts the first.
        let per_token = {
            let mut cache = PrefixCache::with_budget(usize::MAX);
            run(&mut cache, &blocks[0]);
            cache.demonstrations.bytes / blocks[0].len()
        };
        // The head's own prefix-cache entry shares the budget, and so does the running
        // job's reservation (its prefix, then its query's label tree).
        let cached = head.len() + blocks[0].len() + blocks[1].len() + blocks[2].len() - 1;
        let running = head.len() + blocks[2].len() + query.len() + labels[0].len();
        let budget = per_token * (cached + running);
        let mut cache = PrefixCache::with_budget(budget);
        for block in &blocks {
            run(&mut cache, block);
        }
        assert_eq!(cache.demonstrations.blocks.len(), 2);
        assert!(cache.bytes() <= budget);
    }
}
