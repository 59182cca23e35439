//! Tuning: the prediction options that suit a task, measured by leave-one-out over its
//! annotated examples and stored as the task's defaults.
//!
//! Each LLM configuration of the grid (k, strategy, order, contextual calibration or
//! not, cached demonstrations or not) predicts the same rows once, keeping each row's
//! LLM and vote distributions. The rest of the grid costs no model pass: batch
//! calibration divides the uncalibrated distributions by their mean over the rows (Zhou
//! et al., 2023), and every vote weight mixes the two distributions. Every combination
//! is scored; the best (accuracy, then macro-F1, then the earlier in the grid) becomes
//! the task's defaults, used by requests that leave those options out.
//!
//! A tuning is a job (`crate::jobs`): it saves the rows of each configuration as it
//! goes, and a crash or a shutdown costs at most one batch.

mod grid;

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::evaluation::LabelledRow;
use crate::jobs::{JobKind, JobState, Jobs, Progress, RunError, StoredJob};
use crate::predict::calibration;
use crate::predict::defaults::{Calibration, PredictDefaults};
use crate::predict::metrics;
use crate::predict::vote;
use crate::predict::{Predictor, EMBED_CHUNK};
use crate::tasks::Catalog;

pub use grid::{Configuration, Grid, Run};

/// Rows predicted between saves.
const BATCH: usize = EMBED_CHUNK;
/// The fewest annotated examples worth tuning on.
pub const MIN_EXAMPLES: usize = 2;

/// What can go wrong with a tuning.
#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    /// The task, the predictions or the job failed.
    #[error(transparent)]
    Run(RunError),
    /// The task generates text: there are no labels to choose among.
    #[error("tuning measures classification; task `{0}` has no labels")]
    NeedsLabels(String),
    /// Too few annotated examples to leave one out.
    #[error(
        "task `{task}` has {examples} annotated examples; tuning needs at least {MIN_EXAMPLES}"
    )]
    TooFewExamples {
        /// The task.
        task: String,
        /// Its annotated examples.
        examples: usize,
    },
    /// The grid is malformed.
    #[error("`{field}`: {message}")]
    InvalidGrid {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

crate::jobs::job_error!(TuningError, Tuner::KIND);

/// What a tuning was asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneRequest {
    /// The leave-one-out rows, in order.
    pub rows: Vec<LabelledRow>,
    /// What to try.
    pub grid: Grid,
}

/// One row's distributions under one LLM configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowScores {
    /// The LLM's label probabilities (calibrated when the configuration says so).
    pub llm: Vec<f64>,
    /// The demonstrations' similarity-weighted vote.
    pub vote: Vec<f64>,
}

/// What a tuning saves as it goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedScores {
    /// Per LLM run of the grid, in order: the rows scored so far.
    runs: Vec<Vec<RowScores>>,
    /// The answer, once every run is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<TuneResult>,
}

/// One measured combination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneRow {
    /// The options.
    #[serde(flatten)]
    pub configuration: Configuration,
    /// Leave-one-out accuracy.
    pub accuracy: f64,
    /// Leave-one-out macro-F1.
    pub macro_f1: f64,
}

/// What a tuning answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TuneResult {
    /// Annotated examples it left out one at a time.
    pub examples: usize,
    /// Every combination measured, best first.
    pub table: Vec<TuneRow>,
    /// The winner.
    pub best: TuneRow,
    /// The task's defaults it wrote.
    pub defaults: PredictDefaults,
}

/// How far a tuning has got.
#[derive(Debug, Clone, Serialize)]
pub struct TuningProgress {
    /// Row predictions made.
    pub done: usize,
    /// Row predictions in all (rows times LLM runs).
    pub of: usize,
    /// Row predictions per second of work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_per_second: Option<f64>,
}

/// A tuning job as answered to clients.
#[derive(Debug, Clone, Serialize)]
pub struct TuningJob {
    /// The job's id.
    pub id: String,
    /// Where it stands.
    pub state: JobState,
    /// How far it has got (as of its last saved batch).
    pub progress: TuningProgress,
    /// The table and the winner, once complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<TuneResult>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since the epoch when it was asked for.
    pub created_at: i64,
    /// Seconds since the epoch when it last saved.
    pub updated_at: i64,
}

/// Tuning jobs, polled at `/v1/tasks/{task}/tunings/{id}`.
pub type Tunings = Jobs<Tuner>;

/// Tunes tasks: the tuning kind of job.
pub struct Tuner {
    catalog: Arc<Catalog>,
    predictor: Arc<Predictor>,
}

impl Tuner {
    /// Tunings over the catalog's tasks, predicting with `predictor`.
    pub fn new(catalog: Arc<Catalog>, predictor: Arc<Predictor>) -> Self {
        Self { catalog, predictor }
    }

    /// Up to `max_examples` of the task's annotated examples, chosen by `seed`, as
    /// leave-one-out rows.
    ///
    /// # Errors
    /// When the task is unknown, has no labels or too few examples.
    pub async fn rows(
        &self,
        task: &str,
        max_examples: usize,
        seed: u64,
    ) -> Result<Vec<LabelledRow>, TuningError> {
        let definition = self.catalog.definition(task).await?;
        if !definition.spec.is_classification() {
            return Err(TuningError::NeedsLabels(task.to_owned()));
        }
        let mut examples = self.catalog.examples(task).await?.all();
        if examples.len() < MIN_EXAMPLES {
            return Err(TuningError::TooFewExamples {
                task: task.to_owned(),
                examples: examples.len(),
            });
        }
        // Sorted first, so that the same seed draws the same rows whatever the index's
        // order.
        examples.sort_by(|a, b| a.id.cmp(&b.id));
        examples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        examples.truncate(max_examples);
        Ok(examples.iter().map(|e| LabelledRow::left_out(e)).collect())
    }

    /// Predicts the rows of every LLM run not done yet, batch by batch, saving each.
    async fn score_runs(
        &self,
        task: &str,
        request: &TuneRequest,
        progress: &mut Progress<Self>,
    ) -> Result<(), TuningError> {
        let runs = request.grid.runs();
        for (index, run) in runs.iter().enumerate() {
            if progress.saved.runs.len() <= index {
                progress.saved.runs.push(Vec::new());
            }
            let options = run.options();
            while progress.saved.runs[index].len() < request.rows.len() {
                let start = progress.saved.runs[index].len();
                let batch = &request.rows[start..(start + BATCH).min(request.rows.len())];
                let inputs = batch.iter().map(|r| r.input.clone()).collect();
                progress
                    .predict_batch(&self.predictor, task, inputs, &options, |saved, p| {
                        let values = |pairs: Option<Vec<(String, f64)>>| {
                            pairs
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(_, p)| p)
                                .collect()
                        };
                        saved.runs[index].push(RowScores {
                            llm: values(p.llm_probabilities),
                            vote: values(p.vote_probabilities),
                        });
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Writes `defaults` (and `model`, when given) into the task's definition.
    async fn store_defaults(
        &self,
        task: &str,
        defaults: &PredictDefaults,
        model: Option<&str>,
    ) -> Result<(), TuningError> {
        let mut spec = self.catalog.definition(task).await?.spec;
        spec.defaults = Some(defaults.clone());
        if let Some(model) = model {
            spec.model = Some(model.to_owned());
        }
        self.catalog.put_task(task, spec).await?;
        Ok(())
    }
}

/// Every combination of `grid` measured on its runs' scores of rows whose labels are
/// `gold`, best first; with each batch-calibrated one, the mean LLM distribution of its
/// run (batch calibration's prior).
pub fn measure(
    labels: &[String],
    gold: &[String],
    grid: &Grid,
    runs: &[Vec<RowScores>],
) -> Vec<(TuneRow, Option<Vec<f64>>)> {
    let mut measured = Vec::new();
    for (run, scores) in grid.runs().iter().zip(runs) {
        let llm: Vec<Vec<f64>> = scores.iter().map(|s| s.llm.clone()).collect();
        let prior = calibration::mean(&llm);
        for calibration in run.calibrations(grid) {
            let calibrated: Vec<Vec<f64>> = match calibration {
                Calibration::Batch => llm
                    .iter()
                    .map(|p| calibration::calibrate(p, &prior))
                    .collect(),
                _ => llm.clone(),
            };
            for &weight in &grid.vote_weight {
                let predicted: Vec<String> = calibrated
                    .iter()
                    .zip(scores)
                    .map(|(p, s)| {
                        let mixed = vote::mix(p, &s.vote, weight);
                        let best = mixed
                            .iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map_or(0, |(i, _)| i);
                        labels.get(best).cloned().unwrap_or_default()
                    })
                    .collect();
                let evaluation = metrics::evaluate(labels, gold, &predicted);
                let row = TuneRow {
                    configuration: run.with(calibration, weight),
                    accuracy: evaluation.accuracy,
                    macro_f1: evaluation.macro_f1,
                };
                let batch_prior = (calibration == Calibration::Batch).then(|| prior.clone());
                measured.push((row, batch_prior));
            }
        }
    }
    // Stable: among equals, the earlier in the grid stays first.
    measured.sort_by(|(a, _), (b, _)| {
        b.accuracy
            .total_cmp(&a.accuracy)
            .then(b.macro_f1.total_cmp(&a.macro_f1))
    });
    measured
}

impl JobKind for Tuner {
    const KIND: &'static str = "tuning";
    const ID_PREFIX: &'static str = "tune";
    type Request = TuneRequest;
    type Saved = SavedScores;
    type View = TuningJob;
    type Error = TuningError;

    async fn check(&self, task: &str, request: &TuneRequest) -> Result<(), TuningError> {
        let definition = self.catalog.definition(task).await?;
        if !definition.spec.is_classification() {
            return Err(TuningError::NeedsLabels(task.to_owned()));
        }
        if request.rows.len() < MIN_EXAMPLES {
            return Err(TuningError::TooFewExamples {
                task: task.to_owned(),
                examples: request.rows.len(),
            });
        }
        request
            .grid
            .check()
            .map_err(|(field, message)| TuningError::InvalidGrid { field, message })?;
        for model in &request.grid.model {
            self.predictor
                .llms()
                .get(Some(model))
                .map_err(|unknown| TuningError::InvalidGrid {
                    field: "model",
                    message: unknown.to_string(),
                })?;
        }
        Ok(())
    }

    async fn work(
        &self,
        task: &str,
        request: &TuneRequest,
        progress: &mut Progress<Self>,
    ) -> Result<(), TuningError> {
        self.score_runs(task, request, progress).await?;
        let labels = self.catalog.definition(task).await?.spec.labels;
        let gold: Vec<String> = request.rows.iter().map(|r| r.label.clone()).collect();
        let measured = measure(&labels, &gold, &request.grid, &progress.saved.runs);
        let Some((best, prior)) = measured.first().cloned() else {
            return Err(TuningError::InvalidGrid {
                field: "grid",
                message: "nothing to measure".to_owned(),
            });
        };
        let defaults = best.configuration.defaults(prior);
        progress.saved.result = Some(TuneResult {
            examples: request.rows.len(),
            table: measured.into_iter().map(|(row, _)| row).collect(),
            best,
            defaults,
        });
        Ok(())
    }

    /// Writes the winner as the task's defaults (and its model as the task's, when the
    /// grid compared models).
    async fn completed(
        &self,
        task: &str,
        _: &TuneRequest,
        saved: &SavedScores,
    ) -> Result<(), TuningError> {
        match &saved.result {
            Some(result) => {
                let model = result.best.configuration.model.as_deref();
                self.store_defaults(task, &result.defaults, model).await
            }
            None => Ok(()),
        }
    }

    fn view(job: &StoredJob<Self>) -> TuningJob {
        let (request, saved) = (&job.request, &job.saved);
        let done: usize = saved.runs.iter().map(Vec::len).sum();
        TuningJob {
            id: job.id.clone(),
            state: job.state,
            progress: TuningProgress {
                done,
                of: request.rows.len() * request.grid.runs().len(),
                rows_per_second: job.per_second(done),
            },
            result: saved.result.clone(),
            error: job.error.clone(),
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::defaults::StrategyChoice;
    use crate::predict::{Order, QueryInput};

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    fn row(label: &str) -> LabelledRow {
        LabelledRow {
            input: QueryInput {
                text: "t".into(),
                text_pair: None,
                exclude: None,
            },
            label: label.into(),
        }
    }

    fn scores(llm: [f64; 2], vote: [f64; 2]) -> RowScores {
        RowScores {
            llm: llm.to_vec(),
            vote: vote.to_vec(),
        }
    }

    /// Hand-checked: the LLM leans to `a` everywhere (right on rows 0 and 1); the vote
    /// is right on rows 1 to 3. Alone, the LLM scores 2/4 and the vote 3/4; a mix at
    /// 0.5 follows the vote where it is confident and scores 4/4; batch calibration
    /// removes the LLM's lean.
    #[test]
    fn the_best_mix_wins_and_batch_calibration_uses_the_runs_mean() {
        let grid = Grid {
            k: vec![8],
            strategy: vec![StrategyChoice::Knn],
            order: vec![Order::NearestLast],
            calibration: vec![Calibration::None, Calibration::Batch],
            vote_weight: vec![0.0, 0.5, 1.0],
            cached_demonstrations: vec![false],
            model: Vec::new(),
        };
        let request = TuneRequest {
            rows: vec![row("a"), row("a"), row("b"), row("b")],
            grid,
        };
        let saved = SavedScores {
            runs: vec![vec![
                scores([0.9, 0.1], [0.4, 0.6]),
                scores([0.8, 0.2], [0.7, 0.3]),
                scores([0.7, 0.3], [0.1, 0.9]),
                scores([0.6, 0.4], [0.2, 0.8]),
            ]],
            result: None,
        };
        let gold: Vec<String> = request.rows.iter().map(|r| r.label.clone()).collect();
        let measured = measure(&labels(), &gold, &request.grid, &saved.runs);
        assert_eq!(measured.len(), 6);
        let accuracy = |calibration: Calibration, weight: f64| {
            measured
                .iter()
                .find(|(r, _)| {
                    r.configuration.calibration == calibration
                        && r.configuration.vote_weight == weight
                })
                .map(|(r, _)| r.accuracy)
        };
        assert_eq!(accuracy(Calibration::None, 0.0), Some(0.5));
        assert_eq!(accuracy(Calibration::None, 1.0), Some(0.75));
        assert_eq!(accuracy(Calibration::None, 0.5), Some(1.0));
        // Mean LLM distribution (0.75, 0.25): calibrated, rows 2 and 3 turn to `b`
        // (0.7/0.75 < 0.3/0.25 and 0.6/0.75 < 0.4/0.25), row 0 stays `a`
        // (0.9/0.75 > 0.1/0.25), row 1 stays `a` (0.8/0.75 > 0.2/0.25): 4/4.
        assert_eq!(accuracy(Calibration::Batch, 0.0), Some(1.0));
        let (best, prior) = &measured[0];
        assert_eq!(best.accuracy, 1.0);
        // Among the perfect ones, the earliest in the grid: no calibration, w = 0.5.
        assert_eq!(best.configuration.calibration, Calibration::None);
        assert_eq!(best.configuration.vote_weight, 0.5);
        assert!(prior.is_none());
        let batch = measured
            .iter()
            .find(|(r, _)| r.configuration.calibration == Calibration::Batch)
            .and_then(|(_, p)| p.clone())
            .unwrap_or_default();
        assert!((batch[0] - 0.75).abs() < 1e-12 && (batch[1] - 0.25).abs() < 1e-12);
    }
}
