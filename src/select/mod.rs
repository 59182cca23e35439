//! Selective annotation: which unlabeled pool items are worth a person's time.
//!
//! - `random`: a seeded sample.
//! - `fast-vote-k`: vote-k's greedy stage 1 for the whole budget.
//! - `vote-k`: stage 1 for a tenth of the budget; once those are annotated, stage 2
//!   spends the rest on items the model is least sure about (see [`votek`]).
//! - `ideal`: greedy influence maximisation over a diffusion graph (see [`ideal`]).
//!
//! The algorithms work on pool positions; [`selections`] ties them to stored pools,
//! the LLM, and the selections table.

pub mod cli;
pub mod graph;
pub mod ideal;
pub mod selections;
pub mod votek;

use std::ops::ControlFlow;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// A selection method.
/// The most diffusion runs of IDEAL, from the API or the command line.
pub const MAX_RUNS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// A seeded random sample.
    Random,
    /// Vote-k stage 1 for the whole budget.
    FastVoteK,
    /// Vote-k with both stages.
    VoteK,
    /// IDEAL influence maximisation.
    Ideal,
}

/// Parameters of the graph methods, with the papers' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Neighbours per item in the graph (vote-k 150, IDEAL 10).
    pub k: usize,
    /// Vote-k's discount base.
    pub rho: f64,
    /// Vote-k's stage-1 size (a tenth of the budget).
    pub stage_one: usize,
    /// IDEAL's Monte-Carlo diffusion runs.
    pub runs: usize,
}

/// Optional overrides of [`Params`], as a request gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamOverrides {
    /// Neighbours per item.
    pub k: Option<usize>,
    /// Vote-k's discount base.
    pub rho: Option<f64>,
    /// Vote-k's stage-1 size.
    pub stage_one: Option<usize>,
    /// IDEAL's diffusion runs.
    pub runs: Option<usize>,
}

impl Params {
    /// The papers' defaults for `method` and `budget`, then the overrides.
    pub fn resolve(method: Method, budget: usize, overrides: ParamOverrides) -> Self {
        let k = match method {
            Method::Ideal => 10,
            _ => 150,
        };
        Self {
            k: overrides.k.unwrap_or(k),
            rho: overrides.rho.unwrap_or(10.0),
            stage_one: overrides.stage_one.unwrap_or((budget / 10).max(1)),
            runs: overrides.runs.unwrap_or(10),
        }
    }
}

/// Why a selection cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    /// A parameter is out of range.
    #[error("`{field}`: {message}")]
    InvalidParameter {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The pool is too small for the graph.
    #[error("the pool has {pool} items; the {method} graph needs more than k = {k}: lower `k` or add items")]
    PoolTooSmall {
        /// Items in the pool.
        pool: usize,
        /// The method's name.
        method: &'static str,
        /// The graph's k.
        k: usize,
    },
    /// A matrix product failed.
    #[error("graph: {0}")]
    Graph(String),
    /// The caller broke the work off (its request was dropped).
    #[error("the selection was broken off")]
    Cancelled,
}

/// Checks parameters against the pool before any work.
///
/// # Errors
/// When the budget is 0, a parameter is out of range, or a graph method's pool is not
/// larger than its k (a budget that covers the pool needs no graph and passes).
pub fn check(
    method: Method,
    budget: usize,
    params: &Params,
    pool: usize,
) -> Result<(), SelectError> {
    let invalid = |field, message: String| Err(SelectError::InvalidParameter { field, message });
    if budget == 0 {
        return invalid("budget", "must be at least 1".into());
    }
    if params.k == 0 {
        return invalid("k", "must be at least 1".into());
    }
    if params.rho <= 1.0 || !params.rho.is_finite() {
        return invalid(
            "rho",
            format!("{} is out of range: give a number above 1", params.rho),
        );
    }
    if params.runs == 0 || params.runs > MAX_RUNS {
        return invalid(
            "runs",
            format!("{} is out of range: give 1 to {MAX_RUNS}", params.runs),
        );
    }
    if method == Method::VoteK && (params.stage_one == 0 || params.stage_one > budget) {
        return invalid(
            "stage_one",
            format!(
                "{} is out of range: give 1 to the budget ({budget})",
                params.stage_one
            ),
        );
    }
    let needs_graph = matches!(method, Method::FastVoteK | Method::VoteK | Method::Ideal);
    if needs_graph && budget < pool && pool <= params.k {
        return Err(SelectError::PoolTooSmall {
            pool,
            method: match method {
                Method::Ideal => "IDEAL",
                _ => "vote-k",
            },
            k: params.k,
        });
    }
    Ok(())
}

/// The first selection over a pool's embeddings: the whole answer for random,
/// fast vote-k and IDEAL, stage 1 for vote-k. Answers pool positions in order.
///
/// `on_progress(done, of)` is told as items are chosen (and polled while IDEAL computes
/// its first gains); breaking from it stops the work with [`SelectError::Cancelled`].
///
/// # Errors
/// When a parameter is invalid or the graph cannot be built.
pub fn first_pass(
    method: Method,
    embeddings: &[Vec<f32>],
    budget: usize,
    params: &Params,
    seed: u64,
    mut on_progress: impl FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<Vec<usize>, SelectError> {
    check(method, budget, params, embeddings.len())?;
    let n = embeddings.len();
    if budget >= n {
        return Ok((0..n).collect());
    }
    let graph_error = |e: candle_core::Error| SelectError::Graph(e.to_string());
    let chosen = match method {
        Method::Random => {
            let mut positions: Vec<usize> = (0..n).collect();
            positions.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            positions.truncate(budget);
            positions
        }
        Method::FastVoteK | Method::VoteK => {
            let size = if method == Method::VoteK {
                params.stage_one
            } else {
                budget
            };
            let graph = graph::knn_graph(embeddings, params.k).map_err(graph_error)?;
            let votes = votek::Votes::from_graph(&graph);
            let mut greedy = votek::Greedy::new(&votes, params.rho);
            while greedy.selected().len() < size {
                if greedy.step().is_none() {
                    break;
                }
                if on_progress(greedy.selected().len(), size).is_break() {
                    return Err(SelectError::Cancelled);
                }
            }
            greedy.selected().to_vec()
        }
        Method::Ideal => {
            let graph = graph::knn_graph(embeddings, params.k).map_err(graph_error)?;
            let diffusion = ideal::Diffusion::new(&graph, params.runs, seed);
            ideal::select(&diffusion, budget, |done| on_progress(done, budget))
                .ok_or(SelectError::Cancelled)?
                .into_iter()
                .map(|(item, _)| item)
                .collect()
        }
    };
    Ok(chosen)
}

/// Vote-k stage 2 over the same pool positions: `selected` are the stage-1 items,
/// `confidence[i]` the model's confidence for every position (ignored for selected).
///
/// # Errors
/// When the graph cannot be built.
pub fn second_pass(
    embeddings: &[Vec<f32>],
    selected: &[usize],
    confidence: &[f64],
    budget: usize,
    params: &Params,
) -> Result<Vec<usize>, SelectError> {
    let graph =
        graph::knn_graph(embeddings, params.k).map_err(|e| SelectError::Graph(e.to_string()))?;
    let votes = votek::Votes::from_graph(&graph);
    let mut greedy = votek::Greedy::new(&votes, params.rho);
    for &u in selected {
        greedy.select(u);
    }
    let candidates: Vec<(usize, f64, f64)> = (0..embeddings.len())
        .filter(|u| !selected.contains(u))
        .map(|u| (u, confidence[u], greedy.score(u)))
        .collect();
    Ok(votek::stage_two(
        &candidates,
        budget.saturating_sub(selected.len()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_and_small_pools_get_clear_answers() {
        let params = Params::resolve(Method::VoteK, 10, ParamOverrides::default());
        assert_eq!((params.k, params.stage_one, params.runs), (150, 1, 10));
        assert_eq!(
            Params::resolve(Method::Ideal, 100, ParamOverrides::default()).k,
            10
        );
        let embeddings: Vec<Vec<f32>> = (0..20).map(|i| vec![1.0, i as f32]).collect();
        // Budget 0: refused.
        assert!(matches!(
            first_pass(Method::Random, &embeddings, 0, &params, 0, |_, _| {
                ControlFlow::Continue(())
            }),
            Err(SelectError::InvalidParameter {
                field: "budget",
                ..
            })
        ));
        // A pool smaller than the graph's k: refused with the numbers.
        let small = first_pass(Method::FastVoteK, &embeddings, 5, &params, 0, |_, _| {
            ControlFlow::Continue(())
        });
        assert_eq!(
            small,
            Err(SelectError::PoolTooSmall {
                pool: 20,
                method: "vote-k",
                k: 150
            })
        );
        // A budget that covers the pool takes the whole pool, whatever the method.
        for method in [
            Method::Random,
            Method::FastVoteK,
            Method::VoteK,
            Method::Ideal,
        ] {
            let all = first_pass(method, &embeddings, 25, &params, 0, |_, _| {
                ControlFlow::Continue(())
            })
            .expect("whole pool");
            assert_eq!(all, (0..20).collect::<Vec<_>>());
        }
        // Same seed, same items.
        let a = first_pass(Method::Random, &embeddings, 5, &params, 9, |_, _| {
            ControlFlow::Continue(())
        })
        .expect("sample");
        assert_eq!(
            a,
            first_pass(Method::Random, &embeddings, 5, &params, 9, |_, _| {
                ControlFlow::Continue(())
            })
            .expect("sample")
        );
    }

    #[test]
    fn a_pass_broken_off_by_its_caller_stops_at_its_next_step() {
        let embeddings: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![(i as f32).cos(), (i as f32).sin(), 1.0])
            .collect();
        let overrides = ParamOverrides {
            k: Some(5),
            ..ParamOverrides::default()
        };
        for method in [Method::FastVoteK, Method::Ideal] {
            let params = Params::resolve(method, 10, overrides);
            let mut steps = 0;
            let stopped = first_pass(method, &embeddings, 10, &params, 0, |done, _| {
                steps += 1;
                if done == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            assert_eq!(stopped, Err(SelectError::Cancelled), "{method:?}");
            let picks = first_pass(method, &embeddings, 10, &params, 0, |_, _| {
                ControlFlow::Continue(())
            });
            assert_eq!(picks.map(|p| p.len()), Ok(10), "{method:?}");
            assert!(steps <= 2, "{method:?} went on for {steps} steps");
        }
    }
}
