//! What a tuning tries: the grid of options, the LLM runs it needs, and one measured
//! combination of it.

use serde::{Deserialize, Serialize};

use crate::predict::defaults::{Calibration, PredictDefaults, StrategyChoice};
use crate::predict::{Order, PredictOptions};
use crate::tasks::MAX_K;

/// The most values one option of the grid may list.
pub const MAX_VALUES: usize = 21;
/// The most LLM runs a grid may need.
pub const MAX_RUNS: usize = 64;

/// The options to try, each a list of values; every combination is measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    /// Demonstrations per query.
    pub k: Vec<usize>,
    /// How they are found.
    pub strategy: Vec<StrategyChoice>,
    /// How they are ordered.
    pub order: Vec<Order>,
    /// How the LLM's probabilities are calibrated.
    pub calibration: Vec<Calibration>,
    /// The vote's weights in the mix.
    pub vote_weight: Vec<f64>,
    /// Exact prompts (`false`), cached demonstrations (`true`), or both.
    pub cached_demonstrations: Vec<bool>,
    /// Loaded models to compare; empty: the task's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model: Vec<String>,
}

impl Default for Grid {
    /// 8 LLM runs: k 4 and 8, kNN and MMR, nearest last, with and without contextual
    /// calibration; batch calibration and the vote weights 0, 0.1, ..., 1 on top.
    fn default() -> Self {
        Self {
            k: vec![4, 8],
            strategy: vec![StrategyChoice::Knn, StrategyChoice::Mmr],
            order: vec![Order::NearestLast],
            calibration: vec![
                Calibration::None,
                Calibration::Contextual,
                Calibration::Batch,
            ],
            vote_weight: (0..=10).map(|w| f64::from(w) / 10.0).collect(),
            cached_demonstrations: vec![false],
            model: Vec::new(),
        }
    }
}

/// One LLM run of the grid: what changes the prompts or the model's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    k: usize,
    strategy: StrategyChoice,
    order: Order,
    contextual: bool,
    cached_demonstrations: bool,
    model: Option<String>,
}

/// One combination of the grid's options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    /// Demonstrations per query.
    pub k: usize,
    /// How they are found.
    pub strategy: StrategyChoice,
    /// How they are ordered.
    pub order: Order,
    /// How the LLM's probabilities are calibrated.
    pub calibration: Calibration,
    /// The vote's weight in the mix.
    pub vote_weight: f64,
    /// Whether demonstrations come from the demonstration cache.
    pub cached_demonstrations: bool,
    /// The model, when the grid compares models (else the task's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Configuration {
    /// The prediction options of this combination; batch calibration divides by
    /// `prior`.
    pub fn options(&self, prior: Option<Vec<f64>>) -> PredictOptions {
        let mut options = PredictOptions::classify_with(
            self.k,
            self.strategy.strategy(),
            0,
            self.calibration == Calibration::Contextual,
        );
        options.order = self.order;
        options.cached_demonstrations = self.cached_demonstrations;
        options.vote_weight = Some(self.vote_weight);
        options.model.clone_from(&self.model);
        if self.calibration == Calibration::Batch {
            options.label_prior = prior;
        }
        options
    }

    /// The task defaults that ask for this combination; batch calibration's `prior`
    /// goes with it.
    pub fn defaults(&self, prior: Option<Vec<f64>>) -> PredictDefaults {
        PredictDefaults {
            k: Some(self.k),
            strategy: Some(self.strategy),
            order: Some(self.order),
            calibration: Some(self.calibration),
            vote_weight: Some(self.vote_weight),
            cached_demonstrations: Some(self.cached_demonstrations),
            label_prior: prior,
        }
    }
}

fn distinct<T: PartialEq>(values: &[T]) -> bool {
    values
        .iter()
        .enumerate()
        .all(|(i, v)| !values[..i].contains(v))
}

impl Grid {
    /// Checks every list: 1 to [`MAX_VALUES`] distinct values in range, and at most
    /// [`MAX_RUNS`] LLM runs in all; answers the field and what is wrong.
    ///
    /// # Errors
    /// The first list that is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let lists = [
            ("k", self.k.len(), distinct(&self.k)),
            ("strategy", self.strategy.len(), distinct(&self.strategy)),
            ("order", self.order.len(), distinct(&self.order)),
            (
                "calibration",
                self.calibration.len(),
                distinct(&self.calibration),
            ),
            (
                "vote_weight",
                self.vote_weight.len(),
                distinct(&self.vote_weight),
            ),
            (
                "cached_demonstrations",
                self.cached_demonstrations.len(),
                distinct(&self.cached_demonstrations),
            ),
            // No models: the task's own.
            ("model", self.model.len().max(1), distinct(&self.model)),
        ];
        for (field, len, distinct) in lists {
            if len == 0 || len > MAX_VALUES {
                return Err((field, format!("{len} values; give 1 to {MAX_VALUES}")));
            }
            if !distinct {
                return Err((field, "a value is repeated".to_owned()));
            }
        }
        if let Some(k) = self.k.iter().find(|&&k| k == 0 || k > MAX_K) {
            return Err(("k", format!("{k} is out of range: give 1 to {MAX_K}")));
        }
        if let Some(w) = self.vote_weight.iter().find(|w| !(0.0..=1.0).contains(*w)) {
            return Err(("vote_weight", format!("{w} is out of range: give 0 to 1")));
        }
        if self.order.contains(&Order::Random) {
            return Err((
                "order",
                "a random order is not a default worth tuning: give nearest_last or nearest_first"
                    .to_owned(),
            ));
        }
        let runs = self.runs().len();
        if runs > MAX_RUNS {
            return Err((
                "grid",
                format!("{runs} LLM runs (k x strategy x order x cached x contextual or not x model); at most {MAX_RUNS}"),
            ));
        }
        Ok(())
    }

    /// The LLM runs the grid needs: one per model, k, strategy, order and cached
    /// choice, with contextual calibration and without (batch calibration reuses the
    /// run without).
    pub fn runs(&self) -> Vec<Run> {
        let models: Vec<Option<String>> = if self.model.is_empty() {
            vec![None]
        } else {
            self.model.iter().cloned().map(Some).collect()
        };
        let mut contextual = Vec::new();
        if self
            .calibration
            .iter()
            .any(|c| *c != Calibration::Contextual)
        {
            contextual.push(false);
        }
        if self.calibration.contains(&Calibration::Contextual) {
            contextual.push(true);
        }
        let mut runs = Vec::new();
        for model in &models {
            for &k in &self.k {
                for &strategy in &self.strategy {
                    for &order in &self.order {
                        for &cached_demonstrations in &self.cached_demonstrations {
                            for &contextual in &contextual {
                                runs.push(Run {
                                    k,
                                    strategy,
                                    order,
                                    contextual,
                                    cached_demonstrations,
                                    model: model.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        runs
    }
}

impl Run {
    /// The prediction options of this run; the vote comes back beside the LLM's
    /// distribution (weight 0 leaves the LLM's answer as it is).
    pub fn options(&self) -> PredictOptions {
        let calibration = if self.contextual {
            Calibration::Contextual
        } else {
            Calibration::None
        };
        self.with(calibration, 0.0).options(None)
    }

    /// The grid's calibrations this run measures, in the grid's order.
    pub fn calibrations(&self, grid: &Grid) -> Vec<Calibration> {
        grid.calibration
            .iter()
            .copied()
            .filter(|c| (*c == Calibration::Contextual) == self.contextual)
            .collect()
    }

    /// This run with a calibration and a vote weight.
    pub fn with(&self, calibration: Calibration, vote_weight: f64) -> Configuration {
        Configuration {
            k: self.k,
            strategy: self.strategy,
            order: self.order,
            calibration,
            vote_weight,
            cached_demonstrations: self.cached_demonstrations,
            model: self.model.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_grid_needs_eight_runs_and_batch_calibration_needs_none_of_its_own() {
        let grid = Grid::default();
        assert_eq!(grid.check(), Ok(()));
        let runs = grid.runs();
        assert_eq!(runs.len(), 8);
        let plain = runs
            .iter()
            .find(|r| !r.contextual)
            .map(|r| r.calibrations(&grid));
        assert_eq!(plain, Some(vec![Calibration::None, Calibration::Batch]));
        let contextual = runs
            .iter()
            .find(|r| r.contextual)
            .map(|r| r.calibrations(&grid));
        assert_eq!(contextual, Some(vec![Calibration::Contextual]));

        let only_batch = Grid {
            calibration: vec![Calibration::Batch],
            ..Grid::default()
        };
        assert_eq!(only_batch.runs().len(), 4);
    }

    #[test]
    fn each_model_of_the_grid_is_a_run_of_its_own_whose_options_name_it() {
        let grid = Grid {
            model: vec!["small".into(), "large".into()],
            ..Grid::default()
        };
        let runs = grid.runs();
        assert_eq!(runs.len(), 16);
        assert_eq!(runs[0].options().model.as_deref(), Some("small"));
        assert_eq!(runs[8].options().model.as_deref(), Some("large"));
        let configuration = runs[8].with(Calibration::None, 0.5);
        assert_eq!(configuration.options(None).model.as_deref(), Some("large"));
        assert_eq!(Grid::default().runs()[0].options().model, None);
        let repeated = Grid {
            model: vec!["small".into(), "small".into()],
            ..Grid::default()
        };
        assert_eq!(repeated.check().err().map(|e| e.0), Some("model"));
    }

    #[test]
    fn grids_are_checked() {
        let field = |grid: Grid| grid.check().err().map(|e| e.0);
        assert_eq!(
            field(Grid {
                k: vec![],
                ..Grid::default()
            }),
            Some("k")
        );
        assert_eq!(
            field(Grid {
                k: vec![4, 4],
                ..Grid::default()
            }),
            Some("k")
        );
        assert_eq!(
            field(Grid {
                vote_weight: vec![1.5],
                ..Grid::default()
            }),
            Some("vote_weight")
        );
        assert_eq!(
            field(Grid {
                order: vec![Order::Random],
                ..Grid::default()
            }),
            Some("order")
        );
        assert_eq!(
            field(Grid {
                k: (1..=9).collect(),
                strategy: vec![StrategyChoice::Knn, StrategyChoice::Mmr],
                order: vec![Order::NearestLast, Order::NearestFirst],
                cached_demonstrations: vec![false, true],
                ..Grid::default()
            }),
            Some("grid")
        );
    }
}
