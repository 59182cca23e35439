//! Selections of a task's pool, stored and resumable.
//!
//! A selection remembers the pool it was made on. Asking again with the same method,
//! budget, seed and parameters on the same pool answers the stored items. For vote-k,
//! asking again once the stage-1 items have been annotated (posted as examples, which
//! takes them out of the pool) runs stage 2: the LLM predicts every remaining item with
//! demonstrations retrieved from the annotated examples only, and the least confident
//! are chosen bucket by bucket.
//!
//! Stage 2 predicts the whole pool (an hour for 3000 items on two cores), so it is a
//! background job like an evaluation (`stage_two.rs`, run by `crate::jobs`): the call
//! answers at once with state `predicting` and progress, and the selection is polled.
//! The job has one id per selection, so a repeated call answers the running job; its
//! saved batches survive a crash, and any replica resumes it where it stopped.

mod stage_two;
mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{first_pass, Method, ParamOverrides, Params, SelectError};
use crate::jobs::{JobRunner, JobState, Jobs, RunError};
use crate::predict::Predictor;
use crate::store::{ItemKind, SelectionRow, StoreError, StoredItem};
use crate::tasks::Catalog;

pub use stage_two::{stage_two_confidences, StageTwo, StageTwoProgress};
pub use state::SelectionState;

/// How often a stage 2 run inside the call is looked at for its progress.
const IN_CALL_POLL: Duration = Duration::from_millis(500);

/// What can go wrong with a selection.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// The task, stage 2's predictions, its job or the database failed.
    #[error(transparent)]
    Run(RunError),
    /// A parameter is invalid or the pool too small.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// No selection with that id.
    #[error("selection `{id}` does not exist in task `{task}`")]
    NotFound {
        /// The task.
        task: String,
        /// The id asked for.
        id: String,
    },
    /// Vote-k's stage 2 scores labels, which the task lacks.
    #[error("vote-k's stage 2 ranks items by label confidence, and task `{0}` has no labels: use fast-vote-k or ideal")]
    NeedsLabels(String),
    /// Stage-1 items were annotated and their examples deleted since.
    #[error("{missing} stage-1 items are no longer annotated: annotate them again, then continue the selection")]
    StageOneUnannotated {
        /// How many.
        missing: usize,
    },
    /// Work handed to a blocking thread died (it panicked).
    #[error("{0} was aborted")]
    Aborted(&'static str),
    /// A stored selection has a state this version does not know.
    #[error("selection `{id}` has the unknown state `{state}`")]
    UnknownState {
        /// The selection.
        id: String,
        /// What is stored.
        state: String,
    },
}

crate::jobs::job_error!(SelectionError, <StageTwo as crate::jobs::JobKind>::KIND);

/// A selection request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectionRequest {
    /// The method.
    pub method: Method,
    /// How many items to choose in all.
    pub budget: usize,
    /// The seed of the random parts.
    pub seed: u64,
    /// Overrides of the method's parameters.
    pub params: ParamOverrides,
}

/// What is stored as the selection's request: the request, the resolved parameters and
/// the pool as it was (ids in pool order).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    request: SelectionRequest,
    params: Params,
    pool: Vec<String>,
}

/// What is stored as the selection's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Outcome {
    stage_one: Vec<String>,
    items: Vec<String>,
    timings: BTreeMap<String, f64>,
    /// Stage 2's confidences saved by runs that stopped (a failed job, or a version
    /// whose stage 2 ran on the selection's row): the next job starts from them, and
    /// empties this once complete.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    stage_two: BTreeMap<String, f64>,
}

/// A selection as answered to clients.
#[derive(Debug, Clone, Serialize)]
pub struct SelectionView {
    /// The selection's id.
    pub id: String,
    /// The method.
    pub method: Method,
    /// The budget.
    pub budget: usize,
    /// The seed.
    pub seed: u64,
    /// The parameters used.
    pub params: Params,
    /// Where it stands.
    pub state: SelectionState,
    /// Whether the whole budget is chosen.
    pub complete: bool,
    /// The chosen items, in the order chosen.
    pub items: Vec<SelectedItem>,
    /// Seconds spent per phase.
    pub timings: BTreeMap<String, f64>,
    /// Stage 2's pool predictions: done so far, of how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<StageTwoProgress>,
    /// Why the last stage-2 run stopped, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do next, when something is awaited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl SelectionView {
    /// Whether vote-k's stage 2 is running for it in the background.
    pub fn running(&self) -> bool {
        self.state == SelectionState::Predicting
    }
}

/// A chosen item.
#[derive(Debug, Clone, Serialize)]
pub struct SelectedItem {
    /// The pool item's id.
    pub id: String,
    /// Its text.
    pub text: String,
    /// Whether it has been annotated since.
    pub annotated: bool,
}

/// Reports progress: phase, done, of.
pub type Progress = Arc<dyn Fn(&str, usize, usize) + Send + Sync>;

/// Where vote-k's stage 2 runs once a call starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageTwoRun {
    /// The call waits for it and answers the finished selection (the CLI).
    InCall,
    /// The call answers at once; the selection is polled (the server).
    Background,
}

/// Runs and stores selections.
pub struct Selector {
    catalog: Arc<Catalog>,
    stage_two_run: StageTwoRun,
    /// Vote-k's stage-2 jobs.
    stage_two: Arc<Jobs<StageTwo>>,
}

fn new_id() -> String {
    format!("sel-{:016x}", rand::random::<u64>())
}

fn corrupt(e: serde_json::Error) -> SelectionError {
    StoreError::Corrupt(format!("selection: {e}")).into()
}

/// A stored selection: its row, its request and what it chose so far.
async fn load_selection(
    catalog: &Catalog,
    task: &str,
    id: &str,
) -> Result<(SelectionRow, Recorded, Outcome), SelectionError> {
    catalog.definition(task).await?;
    let row =
        catalog
            .store()
            .selection(task, id)
            .await?
            .ok_or_else(|| SelectionError::NotFound {
                task: task.to_owned(),
                id: id.to_owned(),
            })?;
    let recorded = serde_json::from_str(&row.request).map_err(corrupt)?;
    let outcome = serde_json::from_str(&row.result).map_err(corrupt)?;
    Ok((row, recorded, outcome))
}

/// The stage-1 items already annotated, by id.
async fn annotated_stage_one(
    catalog: &Catalog,
    task: &str,
    outcome: &Outcome,
) -> Result<HashMap<String, StoredItem>, SelectionError> {
    let store = catalog.store();
    let mut annotated = HashMap::new();
    for item_id in &outcome.stage_one {
        if let Some(item) = store.item(task, ItemKind::Example, item_id).await? {
            annotated.insert(item_id.clone(), item);
        }
    }
    Ok(annotated)
}

impl Selector {
    /// A selector over the catalog's tasks, predicting with `predictor` for vote-k, whose
    /// stage-2 jobs run on `runner`.
    pub fn new(
        catalog: Arc<Catalog>,
        predictor: Arc<Predictor>,
        stage_two_run: StageTwoRun,
        runner: Arc<JobRunner>,
    ) -> Self {
        let stage_two = StageTwo::new(Arc::clone(&catalog), predictor);
        Self {
            stage_two: Arc::new(Jobs::new(stage_two, Arc::clone(&catalog), runner)),
            catalog,
            stage_two_run,
        }
    }

    /// Vote-k's stage-2 jobs, resumed with the other kinds.
    pub fn stage_two(&self) -> &Arc<Jobs<StageTwo>> {
        &self.stage_two
    }

    /// Makes a selection, answers a stored one for the same request and pool, or runs
    /// vote-k's stage 2 once stage 1 is annotated, as a job of `requester` (an API key's
    /// id or a client address).
    ///
    /// # Errors
    /// On an unknown task, invalid parameters, a pool too small for the graph, a
    /// requester, task or replica running as many jobs as it may, or a failing model or
    /// database.
    pub async fn select(
        &self,
        task: &str,
        requester: &str,
        request: SelectionRequest,
        progress: Progress,
    ) -> Result<SelectionView, SelectionError> {
        let definition = self.catalog.definition(task).await?;
        let store = self.catalog.store();
        let pool = self.catalog.pool(task).await?;
        let params = Params::resolve(request.method, request.budget, request.params);
        super::check(request.method, request.budget, &params, pool.len())?;
        if request.method == Method::VoteK && !definition.spec.is_classification() {
            return Err(SelectionError::NeedsLabels(task.to_owned()));
        }

        let current: HashSet<&str> = pool.iter().map(|p| p.id.as_str()).collect();
        for row in store
            .selections_by_method(task, &method_name(request.method))
            .await?
        {
            let recorded: Recorded = serde_json::from_str(&row.request).map_err(corrupt)?;
            if recorded.request.budget != request.budget
                || recorded.request.seed != request.seed
                || recorded.params != params
            {
                continue;
            }
            let outcome: Outcome = serde_json::from_str(&row.result).map_err(corrupt)?;
            let snapshot: HashSet<&str> = recorded.pool.iter().map(String::as_str).collect();
            if snapshot == current {
                return self.view(task, &row, &recorded, &outcome).await;
            }
            let stage_one: HashSet<&str> = outcome.stage_one.iter().map(String::as_str).collect();
            let only_stage_one_left = current.is_subset(&snapshot)
                && snapshot
                    .difference(&current)
                    .all(|id| stage_one.contains(id));
            if state_of(&row)? == SelectionState::AwaitingAnnotation && only_stage_one_left {
                return self
                    .continue_selection(task, &row.id, requester, progress)
                    .await;
            }
        }

        let started = Instant::now();
        let embeddings: Vec<Vec<f32>> = pool.iter().map(|p| p.embedding.clone()).collect();
        let (method, budget, seed) = (request.method, request.budget, request.seed);
        let reporter = Arc::clone(&progress);
        // A request dropped (its client left, or it timed out) breaks the pass off at
        // its next step instead of leaving it to run on a blocking thread.
        let dropped = CancellationToken::new();
        let _cancel_when_dropped = dropped.clone().drop_guard();
        let chosen = tokio::task::spawn_blocking(move || {
            first_pass(method, &embeddings, budget, &params, seed, |done, of| {
                reporter("selecting", done, of);
                if dropped.is_cancelled() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
        })
        .await
        .map_err(|_| SelectionError::Aborted("a selection pass"))??;
        let ids: Vec<String> = chosen.iter().map(|&i| pool[i].id.clone()).collect();
        let complete = request.method != Method::VoteK || ids.len() >= pool.len().min(budget);
        let mut outcome = Outcome {
            stage_one: if request.method == Method::VoteK {
                ids.clone()
            } else {
                Vec::new()
            },
            items: ids,
            ..Outcome::default()
        };
        outcome
            .timings
            .insert("first_pass_s".into(), started.elapsed().as_secs_f64());
        let recorded = Recorded {
            request,
            params,
            pool: pool.iter().map(|p| p.id.clone()).collect(),
        };
        let row = SelectionRow {
            id: new_id(),
            method: method_name(method),
            state: if complete {
                SelectionState::Complete
            } else {
                SelectionState::AwaitingAnnotation
            }
            .as_str()
            .to_owned(),
            request: serde_json::to_string(&recorded).map_err(corrupt)?,
            result: serde_json::to_string(&outcome).map_err(corrupt)?,
        };
        store.put_selection(task, &row).await?;
        self.view(task, &row, &recorded, &outcome).await
    }

    /// A stored selection.
    ///
    /// # Errors
    /// When the task or the selection does not exist.
    pub async fn get(&self, task: &str, id: &str) -> Result<SelectionView, SelectionError> {
        let (row, recorded, outcome) = load_selection(&self.catalog, task, id).await?;
        self.view(task, &row, &recorded, &outcome).await
    }

    /// Starts vote-k's stage 2 of a stored selection once its stage-1 items are
    /// annotated, as a job of `requester`, resuming from what its last run saved; inside
    /// the call or in the background as the selector was made. Answers the selection as
    /// it is then; while its job runs (on any replica), it answers that job's progress.
    ///
    /// # Errors
    /// When the selection does not exist, the requester, the task or this replica runs
    /// as many jobs as it may, or the model or the database fails.
    pub async fn continue_selection(
        &self,
        task: &str,
        id: &str,
        requester: &str,
        progress: Progress,
    ) -> Result<SelectionView, SelectionError> {
        let (row, recorded, outcome) = load_selection(&self.catalog, task, id).await?;
        if state_of(&row)? != SelectionState::AwaitingAnnotation
            || annotated_stage_one(&self.catalog, task, &outcome)
                .await?
                .len()
                < outcome.stage_one.len()
        {
            return self.view(task, &row, &recorded, &outcome).await;
        }
        let of = to_predict(&recorded, &outcome);
        let job_id = StageTwo::job_id(id);
        match self.stage_two.stored(task, &job_id).await? {
            Some(job) if job.running() => return self.get(task, id).await,
            Some(job) if job.state == JobState::Complete => {
                // It completed but its selection was not written (the replica died
                // in between): write it now.
                self.stage_two.kind().finish(task, id, &job.saved).await?;
                return self.get(task, id).await;
            }
            // A run that failed gives way to a new one, which starts from the
            // confidences it saved: they are kept on the selection meanwhile.
            Some(job) => {
                let mut kept = outcome;
                kept.stage_two.extend(job.saved.confidences);
                let row = SelectionRow {
                    result: serde_json::to_string(&kept).map_err(corrupt)?,
                    ..row
                };
                let store = self.catalog.store();
                store.put_selection(task, &row).await?;
                store.delete_stopped_job(task, &job_id).await?;
            }
            None => {}
        }
        let request = stage_two::StageTwoRequest {
            selection: id.to_owned(),
        };
        self.stage_two
            .start_as(task, requester, &job_id, request)
            .await?;
        if self.stage_two_run == StageTwoRun::InCall {
            self.wait_for_stage_two(task, &job_id, of, &progress)
                .await?;
        }
        self.get(task, id).await
    }

    /// Waits for a stage-2 job to end, reporting its saved progress of `of` items.
    async fn wait_for_stage_two(
        &self,
        task: &str,
        job_id: &str,
        of: usize,
        progress: &Progress,
    ) -> Result<(), SelectionError> {
        while let Some(job) = self.stage_two.stored(task, job_id).await? {
            progress("predicting the pool", job.saved.done(), of);
            if !job.running() {
                break;
            }
            tokio::time::sleep(IN_CALL_POLL).await;
        }
        Ok(())
    }

    async fn view(
        &self,
        task: &str,
        row: &SelectionRow,
        recorded: &Recorded,
        outcome: &Outcome,
    ) -> Result<SelectionView, SelectionError> {
        let store = self.catalog.store();
        let mut items = Vec::with_capacity(outcome.items.len());
        let mut waiting = Vec::new();
        for id in &outcome.items {
            let (text, annotated) = match store.item(task, ItemKind::Example, id).await? {
                Some(example) => (example.text, true),
                None => match store.item(task, ItemKind::PoolItem, id).await? {
                    Some(item) => (item.text, false),
                    None => (String::new(), false),
                },
            };
            if !annotated && outcome.stage_one.contains(id) {
                waiting.push(id.clone());
            }
            items.push(SelectedItem {
                id: id.clone(),
                text,
                annotated,
            });
        }
        let complete = state_of(row)? == SelectionState::Complete;
        let job = if complete || recorded.request.method != Method::VoteK {
            None
        } else {
            self.stage_two
                .stored(task, &StageTwo::job_id(&row.id))
                .await?
        };
        let progress = |done: usize| StageTwoProgress {
            done,
            of: to_predict(recorded, outcome),
        };
        let (state, progress, error) = match job {
            _ if complete => (SelectionState::Complete, None, None),
            Some(job) if job.running() => (
                SelectionState::Predicting,
                Some(progress(job.saved.done())),
                None,
            ),
            // Not running: how far the last run got, and why it stopped if it failed.
            Some(job) => (
                SelectionState::AwaitingAnnotation,
                (job.saved.done() > 0).then(|| progress(job.saved.done())),
                job.error,
            ),
            None => (
                SelectionState::AwaitingAnnotation,
                (!outcome.stage_two.is_empty()).then(|| progress(outcome.stage_two.len())),
                None,
            ),
        };
        let selection = format!("/v1/tasks/{task}/selections/{}", row.id);
        let next = match state {
            SelectionState::Complete => None,
            SelectionState::Predicting => Some(format!(
                "vote-k's stage 2 is predicting the pool: GET {selection} until it is complete"
            )),
            _ if waiting.is_empty() => Some(format!(
                "stage 1 is annotated: repeat this request or POST {selection}/continue to run \
                 stage 2 (it resumes from the predictions already saved)"
            )),
            _ => Some(format!(
                "annotate the {} stage-1 items (POST them to /v1/tasks/{task}/examples with the same ids), \
                 then repeat this request or POST {selection}/continue",
                waiting.len()
            )),
        };
        Ok(SelectionView {
            id: row.id.clone(),
            method: recorded.request.method,
            budget: recorded.request.budget,
            seed: recorded.request.seed,
            params: recorded.params,
            state,
            complete,
            items,
            timings: outcome.timings.clone(),
            progress,
            error,
            next,
        })
    }
}

/// Pool items stage 2 predicts: the pool as the selection recorded it, less stage 1's.
fn to_predict(recorded: &Recorded, outcome: &Outcome) -> usize {
    recorded.pool.len().saturating_sub(outcome.stage_one.len())
}

/// The state stored with `row`.
fn state_of(row: &SelectionRow) -> Result<SelectionState, SelectionError> {
    SelectionState::parse(&row.state).ok_or_else(|| SelectionError::UnknownState {
        id: row.id.clone(),
        state: row.state.clone(),
    })
}

fn method_name(method: Method) -> String {
    serde_json::to_value(method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
