//! Evaluation on labelled rows: inside the request for a few rows, as a background job
//! for many.
//!
//! A job stores its request (the rows with their gold labels, the prediction options)
//! and, batch by batch, the labels predicted so far and the seconds spent; its answer at
//! the end is the table a synchronous evaluation answers. It runs on the job runner
//! (`crate::jobs`) under a lease, so any replica answers a poll, a job whose replica
//! died is resumed from its last saved batch by another, and a cancelled job stops
//! after the row it is on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::jobs::{Interruption, JobRunner, JobState};
use crate::predict::metrics::{self, Evaluation};
use crate::predict::{PredictError, PredictOptions, Predictor, QueryInput, EMBED_CHUNK};
use crate::store::{JobRow, Leased, StoreError};
use crate::tasks::{Catalog, TaskError};

/// What the job table calls an evaluation.
const KIND: &str = "evaluation";
/// Rows predicted between saves: the prediction run's embedding chunk, so that a job
/// embeds its queries in the same batches as a synchronous evaluation.
const BATCH: usize = EMBED_CHUNK;

/// What can go wrong with an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    /// The task is unknown or a task operation failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The predictions failed.
    #[error(transparent)]
    Predict(#[from] PredictError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No evaluation with that id.
    #[error("evaluation `{id}` does not exist in task `{task}`")]
    NotFound {
        /// The task.
        task: String,
        /// The id asked for.
        id: String,
    },
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
    /// The server is shutting down; the job saved its progress and stopped.
    #[error("the evaluation stopped because the server is shutting down; it resumes on the next replica to start")]
    ShuttingDown,
    /// The job was cancelled.
    #[error("the evaluation was cancelled")]
    Cancelled,
    /// Another replica took the job over (this one's lease lapsed).
    #[error("another replica took over this evaluation")]
    LeaseLost,
}

impl Interruption for EvaluationError {
    fn lease_lost() -> Self {
        Self::LeaseLost
    }

    fn is_lease_lost(&self) -> bool {
        matches!(self, Self::LeaseLost)
    }

    fn is_resumable(&self) -> bool {
        match self {
            Self::ShuttingDown | Self::Store(_) => true,
            Self::Predict(error) => error.is_overloaded(),
            _ => false,
        }
    }
}

/// A row to evaluate: a query and its gold label.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelledRow {
    /// The query.
    #[serde(flatten)]
    pub input: QueryInput,
    /// Its gold label.
    pub label: String,
}

/// What an evaluation job was asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluationRequest {
    /// The rows, in order.
    pub rows: Vec<LabelledRow>,
    /// How each row is predicted.
    pub options: PredictOptions,
}

/// What a job saves as it goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    /// The labels predicted so far, for the first rows in order.
    predicted: Vec<String>,
    /// Seconds spent predicting them, over every run of the job.
    seconds: f64,
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

fn corrupt(e: serde_json::Error) -> EvaluationError {
    EvaluationError::Store(StoreError::Corrupt(format!("evaluation job: {e}")))
}

fn new_id() -> String {
    format!("eval-{:016x}", rand::random::<u64>())
}

/// Runs evaluations, in the request or as jobs.
pub struct Evaluations {
    catalog: Arc<Catalog>,
    predictor: Arc<Predictor>,
    runner: Arc<JobRunner>,
    /// The jobs this process runs, by id: cancelling one stops it after its current row.
    local: Mutex<HashMap<String, CancellationToken>>,
}

impl Evaluations {
    /// Evaluations over the catalog's tasks, predicting with `predictor`, whose jobs run
    /// on `runner`.
    pub fn new(catalog: Arc<Catalog>, predictor: Arc<Predictor>, runner: Arc<JobRunner>) -> Self {
        Self {
            catalog,
            predictor,
            runner,
            local: Mutex::new(HashMap::new()),
        }
    }

    /// The predictor that evaluations use.
    pub fn predictor(&self) -> &Arc<Predictor> {
        &self.predictor
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        // The map holds tokens only, whole after any panic.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
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
    pub fn leave_one_out_rows(&self, task: &str) -> Result<Vec<LabelledRow>, EvaluationError> {
        Ok(self
            .catalog
            .examples(task)?
            .all()
            .into_iter()
            .map(|e| LabelledRow {
                input: QueryInput {
                    text: e.text.clone(),
                    text_pair: e.text_pair.clone(),
                    exclude: Some(e.id.clone()),
                },
                label: e.label.clone(),
            })
            .collect())
    }

    /// Starts a job for `request` and answers it as it is then.
    ///
    /// # Errors
    /// When the task is unknown or has no labels, a row's label is unknown, or the
    /// database fails.
    pub async fn start(
        self: &Arc<Self>,
        task: &str,
        request: EvaluationRequest,
    ) -> Result<EvaluationJob, EvaluationError> {
        self.check(task, &request.rows).await?;
        let row = JobRow {
            id: new_id(),
            kind: KIND.to_owned(),
            state: JobState::Running.as_str().to_owned(),
            request: serde_json::to_string(&request).map_err(corrupt)?,
            result: serde_json::to_string(&Saved::default()).map_err(corrupt)?,
            error: None,
            lease: None,
            created_at: 0,
            updated_at: 0,
        };
        let store = self.catalog.store();
        store
            .insert_job(task, &row, self.runner.owner(), self.runner.lease_until())
            .await?;
        self.spawn_run(task, &row.id);
        self.get(task, &row.id).await
    }

    /// A job by id.
    ///
    /// # Errors
    /// When the task or the job does not exist.
    pub async fn get(&self, task: &str, id: &str) -> Result<EvaluationJob, EvaluationError> {
        let (row, request, saved) = self.load(task, id).await?;
        view(&row, &request, &saved)
    }

    /// The task's most recent jobs, newest first.
    ///
    /// # Errors
    /// When the task does not exist or the database fails.
    pub async fn list(&self, task: &str) -> Result<Vec<EvaluationJob>, EvaluationError> {
        self.catalog.definition(task).await?;
        let rows = self.catalog.store().jobs(task, KIND).await?;
        rows.iter()
            .map(|row| {
                let request = serde_json::from_str(&row.request).map_err(corrupt)?;
                let saved = serde_json::from_str(&row.result).map_err(corrupt)?;
                view(row, &request, &saved)
            })
            .collect()
    }

    /// Cancels a running job: it stops after the row it is on, wherever it runs, and
    /// nobody resumes it. A job that already ended is answered as it is.
    ///
    /// # Errors
    /// When the task or the job does not exist, or the database fails.
    pub async fn cancel(&self, task: &str, id: &str) -> Result<EvaluationJob, EvaluationError> {
        self.load(task, id).await?;
        self.catalog
            .store()
            .end_job(task, id, JobState::Cancelled.as_str())
            .await?;
        if let Some(token) = self.local().get(id) {
            token.cancel();
        }
        self.get(task, id).await
    }

    /// Resumes every job whose lease lapsed (its replica died or stopped); answers how
    /// many this replica took on.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn resume_lapsed(self: &Arc<Self>) -> Result<usize, EvaluationError> {
        let store = self.catalog.store();
        let mut resumed = 0;
        for lapsed in store
            .lapsed_leases(Leased::Jobs, crate::store::now())
            .await?
        {
            if self.runner.stopping() {
                break;
            }
            if !self
                .runner
                .take(Leased::Jobs, &lapsed.task, &lapsed.id)
                .await?
            {
                continue;
            }
            tracing::info!(
                task = lapsed.task,
                job = lapsed.id,
                "resuming an evaluation whose lease lapsed"
            );
            self.spawn_run(&lapsed.task, &lapsed.id);
            resumed += 1;
        }
        Ok(resumed)
    }

    async fn load(
        &self,
        task: &str,
        id: &str,
    ) -> Result<(JobRow, EvaluationRequest, Saved), EvaluationError> {
        self.catalog.definition(task).await?;
        let row = self
            .catalog
            .store()
            .job(task, id)
            .await?
            .filter(|row| row.kind == KIND)
            .ok_or_else(|| EvaluationError::NotFound {
                task: task.to_owned(),
                id: id.to_owned(),
            })?;
        let request = serde_json::from_str(&row.request).map_err(corrupt)?;
        let saved = serde_json::from_str(&row.result).map_err(corrupt)?;
        Ok((row, request, saved))
    }

    /// Runs the job `id`, whose lease this process holds, in the background.
    fn spawn_run(self: &Arc<Self>, task: &str, id: &str) {
        let cancel = CancellationToken::new();
        self.local().insert(id.to_owned(), cancel.clone());
        let this = Arc::clone(self);
        let (task, id) = (task.to_owned(), id.to_owned());
        self.runner.spawn(async move {
            let work = this.run(&task, &id, &cancel);
            let result = this.runner.run_leased(Leased::Jobs, &task, &id, work).await;
            this.local().remove(&id);
            match result {
                Ok(()) => {}
                Err(EvaluationError::ShuttingDown) => {
                    tracing::info!(task, job = id, "evaluation saved and stopped for shutdown");
                }
                Err(EvaluationError::Cancelled) => {
                    tracing::info!(task, job = id, "evaluation cancelled");
                }
                Err(e) => tracing::warn!(task, job = id, error = %e, "evaluation stopped"),
            }
        });
    }

    /// Predicts the rows not predicted yet, saving each batch, then stores the table; a
    /// failure that another run would meet again is stored as the job's error.
    async fn run(
        &self,
        task: &str,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<(), EvaluationError> {
        let (row, request, mut saved) = self.load(task, id).await?;
        if JobState::parse(&row.state) != Some(JobState::Running) {
            return Err(EvaluationError::Cancelled);
        }
        let result = self
            .predict_rows(task, &row, &request, &mut saved, cancel)
            .await;
        let ended = match result {
            Ok(evaluation) => JobRow {
                state: JobState::Complete.as_str().to_owned(),
                result: serde_json::to_string(&Saved {
                    evaluation: Some(evaluation),
                    ..saved
                })
                .map_err(corrupt)?,
                ..row
            },
            Err(e) if e.is_resumable() || e.is_lease_lost() => return Err(e),
            Err(EvaluationError::Cancelled) => return Err(EvaluationError::Cancelled),
            Err(e) => JobRow {
                state: JobState::Failed.as_str().to_owned(),
                error: Some(e.to_string()),
                ..row
            },
        };
        // Only while the lease is this process's: a run that lapsed and was taken over,
        // or was cancelled, never overwrites what is stored.
        let store = self.catalog.store();
        if store
            .save_leased_job(task, &ended, self.runner.owner(), None)
            .await?
        {
            Ok(())
        } else {
            Err(EvaluationError::LeaseLost)
        }
    }

    /// Predicts the rows after those saved, batch by batch, saving each; answers the
    /// table once all are predicted.
    async fn predict_rows(
        &self,
        task: &str,
        row: &JobRow,
        request: &EvaluationRequest,
        saved: &mut Saved,
        cancel: &CancellationToken,
    ) -> Result<Evaluation, EvaluationError> {
        let labels = self.check(task, &request.rows).await?;
        let store = self.catalog.store();
        while saved.predicted.len() < request.rows.len() {
            let start = saved.predicted.len();
            let batch = &request.rows[start..(start + BATCH).min(request.rows.len())];
            let inputs = batch.iter().map(|r| r.input.clone()).collect();
            let started = Instant::now();
            let mut run = self.predictor.start(task, inputs, &request.options).await?;
            // Stopped between rows: what is predicted is saved before the job stops.
            let mut stopped = None;
            loop {
                let next = tokio::select! {
                    next = run.next() => next,
                    () = self.runner.stopped() => {
                        stopped = Some(EvaluationError::ShuttingDown);
                        break;
                    }
                    () = cancel.cancelled() => {
                        stopped = Some(EvaluationError::Cancelled);
                        break;
                    }
                };
                match next {
                    Some(prediction) => saved.predicted.push(prediction?.label.unwrap_or_default()),
                    None => break,
                }
            }
            saved.seconds += started.elapsed().as_secs_f64();
            let progress = JobRow {
                result: serde_json::to_string(&saved).map_err(corrupt)?,
                ..row.clone()
            };
            if !store
                .save_leased_job(
                    task,
                    &progress,
                    self.runner.owner(),
                    Some(self.runner.lease_until()),
                )
                .await?
            {
                return Err(stopped.unwrap_or(EvaluationError::LeaseLost));
            }
            if let Some(stopped) = stopped {
                return Err(stopped);
            }
        }
        let gold: Vec<String> = request.rows.iter().map(|r| r.label.clone()).collect();
        Ok(metrics::evaluate(&labels, &gold, &saved.predicted))
    }
}

/// The job as answered to clients.
fn view(
    row: &JobRow,
    request: &EvaluationRequest,
    saved: &Saved,
) -> Result<EvaluationJob, EvaluationError> {
    let state = JobState::parse(&row.state).ok_or_else(|| {
        EvaluationError::Store(StoreError::Corrupt(format!(
            "job `{}` has the unknown state `{}`",
            row.id, row.state
        )))
    })?;
    let done = saved.predicted.len();
    let correct = saved
        .predicted
        .iter()
        .zip(&request.rows)
        .filter(|(predicted, row)| **predicted == row.label)
        .count();
    Ok(EvaluationJob {
        id: row.id.clone(),
        state,
        progress: EvaluationProgress {
            done,
            of: request.rows.len(),
            accuracy: (done > 0).then(|| correct as f64 / done as f64),
            rows_per_second: (saved.seconds > 0.0).then(|| done as f64 / saved.seconds),
        },
        result: saved.evaluation.clone(),
        error: row.error.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
