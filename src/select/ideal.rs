//! IDEAL (Zhang et al., ICLR 2024): influence-driven selective annotation.
//!
//! Each item points to its k most similar items; edge weights are the similarities
//! normalised to sum to 1 per item. The influence of a set is the mean number of items
//! that independent-cascade diffusion from it activates over several Monte-Carlo runs.
//! Selection is greedy on marginal influence.
//!
//! Each run's random draws are fixed up front (an edge is live in a run when its draw
//! falls below its weight), so a set's influence in a run is plain reachability over
//! that run's live edges: reproducible, and submodular, which makes lazy greedy
//! evaluation exact. The reference code re-simulated every candidate every round.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::ControlFlow;

use rand::{Rng, SeedableRng};

use super::graph::Neighbours;

/// Each run's live edges: `live[run][u]` lists the items `u` activates.
pub struct Diffusion {
    live: Vec<Vec<Vec<usize>>>,
}

/// Edge weights from similarities: clipped at 0 and normalised to sum to 1 per item
/// (uniform when every similarity is 0).
fn weights(neighbours: &[(usize, f32)]) -> Vec<f64> {
    let clipped: Vec<f64> = neighbours
        .iter()
        .map(|&(_, s)| f64::from(s.max(0.0)))
        .collect();
    let total: f64 = clipped.iter().sum();
    if total > 0.0 {
        clipped.into_iter().map(|w| w / total).collect()
    } else {
        vec![1.0 / neighbours.len().max(1) as f64; neighbours.len()]
    }
}

impl Diffusion {
    /// Draws `runs` live-edge graphs from `graph` with `seed`.
    pub fn new(graph: &Neighbours, runs: usize, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let live = (0..runs.max(1))
            .map(|_| {
                graph
                    .iter()
                    .map(|neighbours| {
                        neighbours
                            .iter()
                            .zip(weights(neighbours))
                            .filter(|(_, w)| rng.gen::<f64>() < *w)
                            .map(|(&(v, _), _)| v)
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Self { live }
    }

    fn runs(&self) -> usize {
        self.live.len()
    }

    fn len(&self) -> usize {
        self.live.first().map_or(0, Vec::len)
    }

    /// Marks everything `start` reaches in `run` that is not marked yet; answers how
    /// many items it marked.
    fn spread(&self, run: usize, start: usize, reached: &mut [bool]) -> usize {
        if reached[start] {
            return 0;
        }
        reached[start] = true;
        let mut stack = vec![start];
        let mut count = 1;
        while let Some(u) = stack.pop() {
            for &v in &self.live[run][u] {
                if !reached[v] {
                    reached[v] = true;
                    count += 1;
                    stack.push(v);
                }
            }
        }
        count
    }

    /// The influence of `set`: mean items activated over the runs.
    pub fn influence(&self, set: &[usize]) -> f64 {
        let mut total = 0usize;
        for run in 0..self.runs() {
            let mut reached = vec![false; self.len()];
            for &u in set {
                total += self.spread(run, u, &mut reached);
            }
        }
        total as f64 / self.runs() as f64
    }
}

/// A candidate in the lazy-greedy queue.
#[derive(PartialEq)]
struct Candidate {
    gain: f64,
    item: usize,
    round: usize,
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    // Highest gain first; ties go to the lower index.
    fn cmp(&self, other: &Self) -> Ordering {
        self.gain
            .total_cmp(&other.gain)
            .then(other.item.cmp(&self.item))
    }
}

/// Greedy selection of `budget` items by marginal influence, evaluated lazily, with
/// each selected item's marginal gain; `None` when `on_pick` (told the picks so far, and
/// also polled while the first gains are computed) breaks off the work.
pub fn select(
    diffusion: &Diffusion,
    budget: usize,
    mut on_pick: impl FnMut(usize) -> ControlFlow<()>,
) -> Option<Vec<(usize, f64)>> {
    let n = diffusion.len();
    let runs = diffusion.runs();
    let mut reached = vec![vec![false; n]; runs];
    let mut scratch = vec![false; n];
    // Marginal gain of `item` given what is reached: a spread into a scratch copy.
    let mut gain = |item: usize, reached: &[Vec<bool>]| -> f64 {
        let mut total = 0usize;
        for (run, already) in reached.iter().enumerate() {
            scratch.copy_from_slice(already);
            total += diffusion.spread(run, item, &mut scratch);
        }
        total as f64 / runs as f64
    };
    let mut queue = BinaryHeap::with_capacity(n);
    for item in 0..n {
        // Every item's first gain is most of the work on a large pool.
        if item % 64 == 63 && on_pick(0).is_break() {
            return None;
        }
        queue.push(Candidate {
            gain: gain(item, &reached),
            item,
            round: 0,
        });
    }
    let mut chosen = Vec::with_capacity(budget.min(n));
    while chosen.len() < budget.min(n) {
        let Some(top) = queue.pop() else { break };
        if top.round == chosen.len() {
            for (run, reached_in_run) in reached.iter_mut().enumerate() {
                diffusion.spread(run, top.item, reached_in_run);
            }
            chosen.push((top.item, top.gain));
            if on_pick(chosen.len()).is_break() {
                return None;
            }
        } else {
            // Gains only shrink as the set grows, so a stale bound that still tops the
            // queue after refreshing is the true best.
            queue.push(Candidate {
                gain: gain(top.item, &reached),
                item: top.item,
                round: chosen.len(),
            });
        }
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(lists: &[&[(usize, f32)]]) -> Neighbours {
        lists.iter().map(|l| l.to_vec()).collect()
    }

    #[test]
    fn single_edges_are_always_live_and_greedy_covers_the_graph() {
        // Out-degree 1, so each edge has weight 1 and is live in every run:
        // 0 -> 1 -> 2 <-> 3 <- 4 <- 5.
        let graph = edges(&[
            &[(1, 0.9)],
            &[(2, 0.9)],
            &[(3, 0.9)],
            &[(2, 0.9)],
            &[(3, 0.9)],
            &[(4, 0.9)],
        ]);
        let diffusion = Diffusion::new(&graph, 10, 1);
        // Single influences: 0 reaches {0,1,2,3} = 4, 5 reaches {5,4,3,2} = 4, 1 and 4
        // reach 3, 2 and 3 reach 2.
        assert_eq!(diffusion.influence(&[0]), 4.0);
        assert_eq!(diffusion.influence(&[5]), 4.0);
        assert_eq!(diffusion.influence(&[2]), 2.0);
        // Greedy: 0 and 5 tie at 4, the lower index goes first; then 5 adds {5, 4} = 2;
        // then nothing is left to gain and the lowest index, 1, comes with gain 0.
        let mut picks = 0;
        let chosen = select(&diffusion, 3, |_| {
            picks += 1;
            ControlFlow::Continue(())
        });
        assert_eq!(chosen, Some(vec![(0, 4.0), (5, 2.0), (1, 0.0)]));
        assert_eq!(picks, 3);
        // Broken off after the first pick: no selection.
        let stopped = select(&diffusion, 3, |done| {
            if done == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(stopped, None);
        assert_eq!(diffusion.influence(&[0, 5]), 6.0);
    }

    #[test]
    fn independent_cascade_follows_the_normalised_weights() {
        // 0 points to 1 and 2 with similarities 1 and 3: weights 0.25 and 0.75, so the
        // expected influence of {0} is 1 + 0.25 + 0.75 = 2.
        let graph = edges(&[&[(1, 1.0), (2, 3.0)], &[], &[]]);
        let influence = Diffusion::new(&graph, 20_000, 7).influence(&[0]);
        assert!((influence - 2.0).abs() < 0.02, "influence {influence}");
        // The same seed draws the same runs.
        let again = Diffusion::new(&graph, 20_000, 7).influence(&[0]);
        assert_eq!(influence, again);
    }

    #[test]
    fn lazy_greedy_equals_plain_greedy() {
        // A random 3-out graph over 60 items.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let graph: Neighbours = (0..60)
            .map(|u| {
                (0..3)
                    .map(|_| ((u + rng.gen_range(1..60)) % 60, rng.gen_range(0.1f32..1.0)))
                    .collect()
            })
            .collect();
        let diffusion = Diffusion::new(&graph, 10, 11);
        let lazy: Vec<usize> = select(&diffusion, 8, |_| ControlFlow::Continue(()))
            .expect("never broken off")
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        let mut plain: Vec<usize> = Vec::new();
        // Influences are multiples of 1/10 (10 runs): compare them as whole tenths.
        let tenths = |set: &[usize]| (diffusion.influence(set) * 10.0).round() as i64;
        for _ in 0..8 {
            let base = tenths(&plain);
            let best = (0..60)
                .filter(|u| !plain.contains(u))
                .map(|u| {
                    let mut with = plain.clone();
                    with.push(u);
                    (u, tenths(&with) - base)
                })
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                .map(|(u, _)| u)
                .expect("candidates");
            plain.push(best);
        }
        assert_eq!(lazy, plain);
    }
}
