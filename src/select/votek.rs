//! Vote-k (Su et al., ICLR 2023).
//!
//! Every item votes for its k most similar items. Stage 1 greedily picks the item with
//! the highest score, where a voter v that already voted for s(v) selected items counts
//! rho^-s(v), and voters already selected count nothing. Stage 2 (after stage 1 is
//! annotated) ranks the rest by the model's confidence, splits the least confident 90%
//! into equal buckets and takes from each the item with the highest stage-1 score.

use super::graph::Neighbours;

/// Share of the least-confident items that stage 2 chooses from.
const UNCERTAIN_SHARE: f64 = 0.9;

/// Who votes for whom.
pub struct Votes {
    /// `voters[u]`: the items that have `u` among their nearest.
    voters: Vec<Vec<usize>>,
}

impl Votes {
    /// Votes from a kNN graph: each item votes for its neighbours.
    pub fn from_graph(graph: &Neighbours) -> Self {
        let mut voters = vec![Vec::new(); graph.len()];
        for (v, neighbours) in graph.iter().enumerate() {
            for &(u, _) in neighbours {
                voters[u].push(v);
            }
        }
        Self { voters }
    }

    /// Items in the graph.
    pub fn len(&self) -> usize {
        self.voters.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }
}

/// The greedy state: what is selected and how often each voter's votes were used.
pub struct Greedy<'a> {
    votes: &'a Votes,
    rho: f64,
    selected: Vec<bool>,
    /// `times[v]`: selected items that `v` voted for.
    times: Vec<i32>,
    order: Vec<usize>,
}

impl<'a> Greedy<'a> {
    /// Nothing selected yet.
    pub fn new(votes: &'a Votes, rho: f64) -> Self {
        Self {
            votes,
            rho,
            selected: vec![false; votes.len()],
            times: vec![0; votes.len()],
            order: Vec::new(),
        }
    }

    /// Marks `u` selected and discounts its voters.
    pub fn select(&mut self, u: usize) {
        if self.selected[u] {
            return;
        }
        self.selected[u] = true;
        self.order.push(u);
        for &v in &self.votes.voters[u] {
            self.times[v] += 1;
        }
    }

    /// The vote-k score of `u`: 0 for selected items.
    pub fn score(&self, u: usize) -> f64 {
        if self.selected[u] {
            return f64::NEG_INFINITY;
        }
        self.votes.voters[u]
            .iter()
            .filter(|&&v| !self.selected[v])
            .map(|&v| self.rho.powi(-self.times[v]))
            .sum()
    }

    /// Picks the best unselected item (ties: more voters, then the lower index).
    pub fn step(&mut self) -> Option<usize> {
        let best = (0..self.votes.len())
            .filter(|&u| !self.selected[u])
            .max_by(|&a, &b| {
                self.score(a)
                    .total_cmp(&self.score(b))
                    .then(self.votes.voters[a].len().cmp(&self.votes.voters[b].len()))
                    .then(b.cmp(&a))
            })?;
        self.select(best);
        Some(best)
    }

    /// The items selected so far, in order.
    pub fn selected(&self) -> &[usize] {
        &self.order
    }
}

/// Stage 1 for `budget` items (fast vote-k is this for the whole budget).
pub fn stage_one(votes: &Votes, budget: usize, rho: f64) -> Vec<usize> {
    let mut greedy = Greedy::new(votes, rho);
    while greedy.selected().len() < budget.min(votes.len()) {
        if greedy.step().is_none() {
            break;
        }
    }
    greedy.order
}

/// Stage 2: `candidates` are the unselected items with the model's confidence in each
/// and their stage-1 score; answers `slots` of them.
///
/// The least confident 90% are split, least confident first, into `slots` equal
/// buckets; each bucket gives its item of highest score.
pub fn stage_two(candidates: &[(usize, f64, f64)], slots: usize) -> Vec<usize> {
    let mut by_confidence: Vec<&(usize, f64, f64)> = candidates.iter().collect();
    by_confidence.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let uncertain = ((by_confidence.len() as f64) * UNCERTAIN_SHARE).floor() as usize;
    let pool = &by_confidence[..uncertain.max(slots.min(by_confidence.len()))];
    let slots = slots.min(pool.len());
    (0..slots)
        .filter_map(|b| {
            let start = b * pool.len() / slots;
            let end = (b + 1) * pool.len() / slots;
            pool[start..end]
                .iter()
                .max_by(|x, y| x.2.total_cmp(&y.2).then(y.0.cmp(&x.0)))
                .map(|c| c.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graph given as ballots: `ballots[v]` = the items v votes for.
    fn graph(ballots: &[&[usize]]) -> Neighbours {
        ballots
            .iter()
            .map(|b| b.iter().map(|&u| (u, 1.0)).collect())
            .collect()
    }

    #[test]
    fn greedy_scores_discount_voters_by_rho() {
        // Voters: 0 -> {1, 2}, 1 -> {2}, 3 -> {2, 1}, 4 -> {1}, 2 -> {0}.
        // voters(1) = {0, 3, 4}, voters(2) = {0, 1, 3}, voters(0) = {2}.
        let votes = Votes::from_graph(&graph(&[&[1, 2], &[2], &[0], &[2, 1], &[1]]));
        let mut greedy = Greedy::new(&votes, 10.0);
        // Round 1: score(1) = 3 (voters 0, 3, 4), score(2) = 3 (voters 0, 1, 3),
        // score(0) = 1. Tie between 1 and 2, both with 3 voters: the lower index, 1.
        assert_eq!(greedy.score(1), 3.0);
        assert_eq!(greedy.score(2), 3.0);
        assert_eq!(greedy.step(), Some(1));
        // Voters of 1 (0, 3, 4) have now used one vote: each counts 10^-1.
        // score(2) = voter 0: 0.1 + voter 1: selected, counts 0 + voter 3: 0.1 = 0.2.
        // score(0) = voter 2: 10^0 = 1. So 0 wins round 2.
        assert!((greedy.score(2) - 0.2).abs() < 1e-12);
        assert_eq!(greedy.score(0), 1.0);
        assert_eq!(greedy.step(), Some(0));
        // Round 3: voter 0 is now selected and counts nothing; item 2 keeps voter 3's
        // 0.1, items 3 and 4 have no voters.
        assert!((greedy.score(2) - 0.1).abs() < 1e-12);
        assert_eq!(greedy.step(), Some(2));
        assert_eq!(stage_one(&votes, 3, 10.0), vec![1, 0, 2]);
    }

    #[test]
    fn stage_two_takes_the_best_scored_item_of_each_uncertain_bucket() {
        // Ten candidates (id, confidence, score); confidence rises with the id.
        let candidates: Vec<(usize, f64, f64)> = (0..10)
            .map(|i| {
                (
                    i,
                    0.1 * i as f64,
                    [5.0, 1.0, 2.0, 9.0, 3.0, 4.0, 0.0, 8.0, 7.0, 6.0][i],
                )
            })
            .collect();
        // The least confident 90% are ids 0..9 (9 items); 3 buckets of 3:
        // {0, 1, 2} -> 0 (score 5); {3, 4, 5} -> 3 (score 9); {6, 7, 8} -> 7 (score 8).
        // Id 9, the most confident, is never taken.
        assert_eq!(stage_two(&candidates, 3), vec![0, 3, 7]);
        assert_eq!(
            stage_two(&candidates, 20).len(),
            10,
            "at most every candidate"
        );
    }
}
