//! Demonstration retrieval strategies over candidates that the index found.
//!
//! - knn: the index's top-k, most similar first.
//! - mmr: maximal marginal relevance, `lambda * sim(query, e) - (1 - lambda) * max
//!   sim(e, chosen)`, over the top `4k` candidates.
//! - random: a seeded sample of all examples.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::index::cosine;

/// Default trade-off between relevance and diversity for MMR.
pub const DEFAULT_MMR_LAMBDA: f32 = 0.5;
/// MMR chooses among this many times `k` nearest candidates.
pub const MMR_CANDIDATE_FACTOR: usize = 4;

/// How demonstrations are chosen.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "name")]
pub enum Strategy {
    /// The k most similar examples.
    Knn,
    /// Similar but diverse examples.
    Mmr {
        /// 1 = pure relevance, 0 = pure diversity.
        lambda: f32,
    },
    /// A seeded random sample.
    Random {
        /// The sampler's seed.
        seed: u64,
    },
}

/// An example the index proposed, with what MMR needs to compare it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The example's point id.
    pub id: usize,
    /// Cosine similarity to the query.
    pub similarity: f32,
    /// The example's embedding.
    pub vector: Arc<[f32]>,
}

/// Chooses `k` of `candidates` (most similar first) by maximal marginal relevance and
/// answers their positions in `candidates`, in the order chosen.
pub fn mmr(candidates: &[Candidate], k: usize, lambda: f32) -> Vec<usize> {
    let mut chosen: Vec<usize> = Vec::with_capacity(k.min(candidates.len()));
    // The highest similarity of each candidate to anything chosen so far.
    let mut redundancy = vec![f32::NEG_INFINITY; candidates.len()];
    while chosen.len() < k.min(candidates.len()) {
        let best = (0..candidates.len())
            .filter(|i| !chosen.contains(i))
            .map(|i| {
                let penalty = if chosen.is_empty() {
                    0.0
                } else {
                    redundancy[i]
                };
                (
                    i,
                    lambda * candidates[i].similarity - (1.0 - lambda) * penalty,
                )
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some((pick, _)) = best else { break };
        chosen.push(pick);
        for (i, candidate) in candidates.iter().enumerate() {
            let similarity = cosine(&candidate.vector, &candidates[pick].vector);
            redundancy[i] = redundancy[i].max(similarity);
        }
    }
    chosen
}

/// A seeded sample of `k` of `ids` (all of them when there are fewer).
pub fn random_sample(ids: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let mut sorted = ids.to_vec();
    // The index hands ids out in hash order; sorting first makes the seed decide alone.
    sorted.sort_unstable();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    sorted
        .partial_shuffle(&mut rng, k.min(ids.len()))
        .0
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: usize, similarity: f32, vector: &[f32]) -> Candidate {
        Candidate {
            id,
            similarity,
            vector: Arc::from(vector),
        }
    }

    #[test]
    fn mmr_trades_relevance_for_diversity() {
        // a and b are near-duplicates; c is less relevant but different.
        let candidates = [
            candidate(1, 0.90, &[1.0, 0.0]),
            candidate(2, 0.89, &[0.999, 0.0447]),
            candidate(3, 0.60, &[0.0, 1.0]),
        ];
        // lambda 0.5: after a (0.45), b scores 0.445 - 0.5 * 0.999 = -0.054 and c
        // scores 0.30 - 0.5 * 0 = 0.30, so c comes second.
        assert_eq!(mmr(&candidates, 2, 0.5), vec![0, 2]);
        // lambda 1 is plain kNN.
        assert_eq!(mmr(&candidates, 3, 1.0), vec![0, 1, 2]);
        assert_eq!(mmr(&candidates, 10, 0.5).len(), 3);
    }

    #[test]
    fn random_samples_repeat_with_their_seed() {
        let ids: Vec<usize> = (0..50).collect();
        let a = random_sample(&ids, 5, 42);
        assert_eq!(a, random_sample(&ids, 5, 42));
        assert_ne!(a, random_sample(&ids, 5, 43));
        assert_eq!(random_sample(&ids[..3], 5, 1).len(), 3);
    }
}
