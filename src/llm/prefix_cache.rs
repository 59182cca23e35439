//! Prompt prefixes' KV state kept across requests, under a memory budget, so that a new
//! prompt reuses the longest run of tokens it shares with a recent one (as SGLang's
//! RadixAttention does): the instruction always, and the demonstrations it shares with
//! an earlier prompt (fixed demonstrations, evaluation pages, vote-k's second stage).
//!
//! Prefixes are run in chunks of [`CHUNK`] tokens aligned to position 0, and only whole
//! chunks are reused. A chunk's keys and values then come out of a step of the same
//! shape over the same inputs whether they are computed now or were cached, so a
//! reused prefix gives bit for bit what a fresh one gives (with 8-bit activations a
//! step of another shape could round differently, and an answer would depend on what
//! ran before it).
//!
//! Entries are whole prefixes with their sessions; a continued session concatenates its
//! new keys and values onto the reused chunks, which copies them, so entries never
//! share storage and their sizes add up. When the budget is passed the least recently
//! used entries go first.
//!
//! A prompt whose demonstrations are to come from the demonstration cache (the
//! scheduler's scoring, [`super::scheduler`]) runs its head here and its demonstrations
//! there. The two share one budget and one clock: past the budget, the least recently
//! used entry of either goes first.

use super::demonstration_cache::Head;
use super::{DemonstrationCache, KvBudget, Llm, LlmError, Session};

/// Tokens per prefill step, and the unit of reuse.
pub const CHUNK: usize = 64;

/// Budget when none is given: about 5,000 tokens of SmolLM2-135M's KV.
const DEFAULT_BUDGET_BYTES: usize = 256 << 20;

/// One remembered prefix.
struct Entry {
    tokens: Vec<u32>,
    session: Session,
    last_used: u64,
}

/// Recent prefixes and their KV state.
pub struct PrefixCache {
    entries: Vec<Entry>,
    /// Demonstration blocks, for prompts that take them from the cache.
    pub(super) demonstrations: DemonstrationCache,
    /// Shared with the running jobs, whose share the scheduler sets.
    budget: KvBudget,
    clock: u64,
    hits: u64,
}

impl Default for PrefixCache {
    fn default() -> Self {
        Self::with_budget(DEFAULT_BUDGET_BYTES)
    }
}

impl PrefixCache {
    /// An empty cache that keeps at most `budget_bytes` of keys and values.
    pub fn with_budget(budget_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            demonstrations: DemonstrationCache::default(),
            budget: KvBudget::new(budget_bytes),
            clock: 0,
            hits: 0,
        }
    }

    /// A session that has run `prefix`: continued from the remembered prefix sharing
    /// the most whole chunks with it, else run afresh; then remembered itself.
    ///
    /// # Errors
    /// When the model fails on the prefix.
    pub fn session(&mut self, llm: &Llm, prefix: &[u32]) -> Result<Session, LlmError> {
        let (mut session, reused) = self.lookup(llm, prefix)?;
        if reused < prefix.len() {
            for chunk in prefix[reused..].chunks(CHUNK) {
                session.feed(chunk)?;
            }
            self.remember(prefix, &session);
        }
        Ok(session)
    }

    /// The remembered session sharing the most whole chunks with `prefix` (the whole
    /// of it when it is remembered), cut to them, and how many of its tokens that is;
    /// a fresh session and 0 when none shares a chunk. The rest of `prefix` is to be
    /// run in chunks of [`CHUNK`] tokens and the result remembered.
    ///
    /// # Errors
    /// When a remembered session cannot be cut.
    pub(super) fn lookup(
        &mut self,
        llm: &Llm,
        prefix: &[u32],
    ) -> Result<(Session, usize), LlmError> {
        self.clock += 1;
        let best = self
            .entries
            .iter_mut()
            .map(|entry| (common_prefix(&entry.tokens, prefix), entry))
            .max_by_key(|(shared, _)| *shared);
        let found = match best {
            Some((shared, entry)) if shared == prefix.len() && shared == entry.tokens.len() => {
                entry.last_used = self.clock;
                (entry.session.clone(), shared)
            }
            Some((shared, entry)) if shared >= CHUNK => {
                entry.last_used = self.clock;
                let whole_chunks = shared / CHUNK * CHUNK;
                (entry.session.truncated(whole_chunks)?, whole_chunks)
            }
            _ => (llm.session(), 0),
        };
        if found.1 > 0 {
            self.hits += 1;
        }
        record(prefix.len(), found.1);
        Ok(found)
    }

    /// Keys and values held by both caches.
    pub fn bytes(&self) -> usize {
        self.prefix_bytes() + self.demonstrations.bytes()
    }

    fn prefix_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.session.kv_bytes()).sum()
    }

    /// Begins assembling a prompt from demonstration `blocks` after `head_tokens`; the
    /// head's key in the demonstration cache.
    ///
    /// # Errors
    /// When a block is empty.
    pub(super) fn start_blocks(
        &mut self,
        head_tokens: &[u32],
        blocks: &[&[u32]],
    ) -> Result<Head, LlmError> {
        self.demonstrations.start(head_tokens, blocks, self.clock)
    }

    /// The KV budget the cache shares with the running jobs.
    pub(super) fn budget(&self) -> KvBudget {
        self.budget
    }

    /// Keeps what the cache holds within the budget less `running_bytes`, the keys and
    /// values of the jobs under way and of the step about to run (counted whole, though
    /// some of their blocks may be the cache's own), so that the budget bounds the
    /// model's KV memory as a whole.
    pub(super) fn make_room(&mut self, running_bytes: usize) {
        self.budget.set_running(running_bytes);
        self.trim();
    }

    /// Drops the least recently used prefixes and demonstration blocks, whichever is
    /// older, until both fit the budget; the prefix and blocks used last stay.
    pub(super) fn trim(&mut self) {
        while self.budget.exceeded_by(self.bytes()) {
            let prefix = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.last_used < self.clock)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, e)| (i, e.last_used));
            match (prefix, self.demonstrations.oldest()) {
                (None, None) => return,
                (Some((i, used)), Some(block)) if used <= block => {
                    self.entries.swap_remove(i);
                }
                (Some((i, _)), None) => {
                    self.entries.swap_remove(i);
                }
                (_, Some(_)) => self.demonstrations.evict_oldest(),
            }
        }
    }

    /// Keeps `session`, which has run `prefix`, then trims to the budget.
    pub(super) fn remember(&mut self, prefix: &[u32], session: &Session) {
        if prefix.is_empty() {
            return;
        }
        self.entries.push(Entry {
            tokens: prefix.to_vec(),
            session: session.clone(),
            last_used: self.clock,
        });
        self.trim();
    }

    /// How many requests reused at least one cached chunk (or the whole prefix).
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

/// Counts a lookup in `/metrics`: prefix tokens asked for and tokens reused.
fn record(asked: usize, reused: usize) {
    let outcome = if reused > 0 { "hit" } else { "miss" };
    ::metrics::counter!("exemplar_prefix_cache_lookups_total", "outcome" => outcome).increment(1);
    ::metrics::counter!("exemplar_prefix_cache_tokens_total", "kind" => "asked")
        .increment(asked as u64);
    ::metrics::counter!("exemplar_prefix_cache_tokens_total", "kind" => "reused")
        .increment(reused as u64);
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_jobs_keys_and_values_come_out_of_the_budget() {
        let llm = crate::llm::tests::llm(crate::config::WeightFormat::Q8_0);
        let mut cache = PrefixCache::default();
        cache.session(&llm, &[1, 2, 3]).expect("runs");
        cache.session(&llm, &[4, 5, 6, 7]).expect("runs");
        cache.budget = KvBudget::new(cache.bytes());

        cache.make_room(0);
        assert_eq!(cache.entries.len(), 2, "both fit with nothing running");
        cache.make_room(1);
        let kept: Vec<_> = cache.entries.iter().map(|e| e.tokens.clone()).collect();
        assert_eq!(kept, [vec![4, 5, 6, 7]], "the older prefix makes room");
        cache.make_room(usize::MAX);
        assert_eq!(cache.entries.len(), 1, "the prefix used last stays");
    }

    #[test]
    fn common_prefixes_are_counted_token_by_token() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
