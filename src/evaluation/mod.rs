//! Evaluation on labelled rows: inside the request for a few rows, as a background job
//! for many.
//!
//! A job stores its request (the rows with their gold labels, the prediction options)
//! and, batch by batch, the labels predicted so far (and the job runner the seconds spent); its answer at
//! the end is the table a synchronous evaluation answers. It runs on the job runner
//! (`crate::jobs`) under a lease, so any replica answers a poll, a job whose replica
//! died is resumed from its last saved batch by another, and a cancelled job stops
//! after the row it is on.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::jobs::{JobKind, JobState, Jobs, Progress, RunError, StoredJob};
use crate::predict::metrics::{self, Evaluation};
use crate::predict::{PredictOptions, Predictor, QueryInput, EMBED_CHUNK};
use crate::tasks::{Catalog, Example};

/// Rows predicted between saves: the prediction run's embedding chunk, so that a job
/// embeds its queries in the same batches as a synchronous evaluation.
const BATCH: usize = EMBED_CHUNK;

/// What can go wrong with an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    /// The task, the predictions or the job failed.
    #[error(transparent)]
    Run(RunError),
    /// The task generates text, so there is nothing to compare labels with.
    #[error("evaluation measures classification; task `{0}` has no labels")]
    NeedsLabels(String),
    /// A row's gold label is not one of the task's.
    #[error("example {row}: label `{label}` is not one of the task's labels")]
    UnknownLabel {
        /// The row.
        row: usize,
        /// Its label.
        label: String,
    },
}

crate::jobs::job_error!(EvaluationError, Evaluator::KIND);

/// A row to evaluate: a query and its gold label.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelledRow {
    /// The query.
    #[serde(flatten)]
    pub input: QueryInput,
    /// Its gold label.
    pub label: String,
}

impl LabelledRow {
    /// An annotated example as a row that its own prediction does not see
    /// (leave-one-out).
    pub fn left_out(example: &Example) -> Self {
        Self {
            input: QueryInput {
                text: example.text.clone(),
                text_pair: example.text_pair.clone(),
                exclude: Some(example.id.clone()),
            },
            label: example.label.clone(),
        }
    }
}

/// What an evaluation job was asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluationRequest {
    /// The rows, in order.
    pub rows: Vec<LabelledRow>,
    /// How each row is predicted.
    pub options: PredictOptions,
}

/// What an evaluation job saves as it goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedRows {
    /// The labels predicted so far, for the first rows in order.
    predicted: Vec<String>,
    /// The answer, once every row is predicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    evaluation: Option<Evaluation>,
}

/// How far a job has got.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationProgress {
    /// Rows predicted.
    pub done: usize,
    /// Rows in all.
    pub of: usize,
    /// Accuracy over the rows predicted so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Rows predicted per second of work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_per_second: Option<f64>,
}

/// An evaluation job as answered to clients.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationJob {
    /// The job's id.
    pub id: String,
    /// Where it stands.
    pub state: JobState,
    /// How far it has got (as of its last saved batch).
    pub progress: EvaluationProgress,
    /// The evaluation, once complete: what the synchronous evaluation answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Evaluation>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since the epoch when it was asked for.
    pub created_at: i64,
    /// Seconds since the epoch when it last saved.
    pub updated_at: i64,
}

impl EvaluationJob {
    /// Whether it is still running.
    pub fn running(&self) -> bool {
        self.state == JobState::Running
    }
}

/// Evaluation jobs, polled at `/v1/tasks/{task}/evaluations/{id}`.
pub type Evaluations = Jobs<Evaluator>;

/// Evaluates: checks rows, writes leave-one-out rows, predicts them; the evaluation
/// kind of job.
pub struct Evaluator {
    catalog: Arc<Catalog>,
    predictor: Arc<Predictor>,
}

impl Evaluator {
    /// Evaluations over the catalog's tasks, predicting with `predictor`.
    pub fn new(catalog: Arc<Catalog>, predictor: Arc<Predictor>) -> Self {
        Self { catalog, predictor }
    }

    /// The predictor that evaluations use.
    pub fn predictor(&self) -> &Arc<Predictor> {
        &self.predictor
    }

    /// The task's labels, checked against every row's gold label.
    ///
    /// # Errors
    /// When the task is unknown, has no labels, or a row's label is not one of them.
    pub async fn check(
        &self,
        task: &str,
        rows: &[LabelledRow],
    ) -> Result<Vec<String>, EvaluationError> {
        let definition = self.catalog.definition(task).await?;
        if !definition.spec.is_classification() {
            return Err(EvaluationError::NeedsLabels(task.to_owned()));
        }
        let labels = definition.spec.labels.clone();
        if let Some((row, label)) = rows
            .iter()
            .enumerate()
            .find(|(_, r)| !labels.contains(&r.label))
        {
            return Err(EvaluationError::UnknownLabel {
                row,
                label: label.label.clone(),
            });
        }
        Ok(labels)
    }

    /// The task's annotated examples as rows, each kept out of its own demonstrations
    /// (leave-one-out).
    ///
    /// # Errors
    /// When the task is unknown.
    pub async fn leave_one_out_rows(
        &self,
        task: &str,
    ) -> Result<Vec<LabelledRow>, EvaluationError> {
        Ok(self
            .catalog
            .examples(task)
            .await?
            .all()
            .iter()
            .map(|e| LabelledRow::left_out(e))
            .collect())
    }

    /// Predicts the rows after those saved, batch by batch, saving each; answers the
    /// table once all are predicted.
    async fn predict_rows(
        &self,
        task: &str,
        request: &EvaluationRequest,
        progress: &mut Progress<Self>,
    ) -> Result<Evaluation, EvaluationError> {
        let labels = self.check(task, &request.rows).await?;
        while progress.saved.predicted.len() < request.rows.len() {
            let start = progress.saved.predicted.len();
            let batch = &request.rows[start..(start + BATCH).min(request.rows.len())];
            let inputs = batch.iter().map(|r| r.input.clone()).collect();
            progress
                .predict_batch(
                    &self.predictor,
                    task,
                    inputs,
                    &request.options,
                    |saved, p| {
                        saved.predicted.push(p.label.unwrap_or_default());
                    },
                )
                .await?;
        }
        let gold: Vec<String> = request.rows.iter().map(|r| r.label.clone()).collect();
        Ok(metrics::evaluate(&labels, &gold, &progress.saved.predicted))
    }
}

impl JobKind for Evaluator {
    const KIND: &'static str = "evaluation";
    const ID_PREFIX: &'static str = "eval";
    type Request = EvaluationRequest;
    type Saved = SavedRows;
    type View = EvaluationJob;
    type Error = EvaluationError;

    async fn check(&self, task: &str, request: &EvaluationRequest) -> Result<(), EvaluationError> {
        Evaluator::check(self, task, &request.rows)
            .await
            .map(|_| ())
    }

    async fn work(
        &self,
        task: &str,
        request: &EvaluationRequest,
        progress: &mut Progress<Self>,
    ) -> Result<(), EvaluationError> {
        let evaluation = self.predict_rows(task, request, progress).await?;
        progress.saved.evaluation = Some(evaluation);
        Ok(())
    }

    /// An evaluation changes nothing but its own row.
    async fn completed(
        &self,
        _: &str,
        _: &EvaluationRequest,
        _: &SavedRows,
    ) -> Result<(), EvaluationError> {
        Ok(())
    }

    fn view(job: &StoredJob<Self>) -> EvaluationJob {
        let (request, saved) = (&job.request, &job.saved);
        let done = saved.predicted.len();
        let correct = saved
            .predicted
            .iter()
            .zip(&request.rows)
            .filter(|(predicted, row)| **predicted == row.label)
            .count();
        EvaluationJob {
            id: job.id.clone(),
            state: job.state,
            progress: EvaluationProgress {
                done,
                of: request.rows.len(),
                accuracy: (done > 0).then(|| correct as f64 / done as f64),
                rows_per_second: job.per_second(done),
            },
            result: saved.evaluation.clone(),
            error: job.error.clone(),
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}
