//! Selections of a task's pool, stored and resumable.
//!
//! A selection remembers the pool it was made on. Asking again with the same method,
//! budget, seed and parameters on the same pool answers the stored items. For vote-k,
//! asking again once the stage-1 items have been annotated (posted as examples, which
//! takes them out of the pool) runs stage 2: the LLM predicts every remaining item with
//! demonstrations retrieved from the annotated examples only, and the least confident
//! are chosen bucket by bucket.
//!
//! Stage 2 predicts the whole pool (an hour for 3000 items on two cores), so the
//! server runs it in the background: the call answers at once with state `predicting`
//! and progress, and the selection is polled. Every batch of predictions is saved with
//! the selection, so a stage 2 cut short by a crash resumes where it stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;

use super::{first_pass, second_pass, Method, ParamOverrides, Params, SelectError};
use crate::predict::{PredictError, PredictOptions, Predictor, QueryInput};
use crate::retrieve::Strategy;
use crate::store::{ItemKind, SelectionRow, StoreError, StoredItem};
use crate::tasks::{Catalog, TaskError};

/// Demonstrations per prediction in vote-k's stage 2.
const STAGE_TWO_K: usize = 8;
/// Pool items predicted per call in stage 2.
const STAGE_TWO_CHUNK: usize = 16;

/// What can go wrong with a selection.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// The task is unknown or a task operation failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A parameter is invalid or the pool too small.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// Stage 2's predictions failed.
    #[error(transparent)]
    Predict(#[from] PredictError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// The server is shutting down; stage 2 stopped after saving its last batch.
    #[error(
        "stage 2 stopped because the server is shutting down; continue the selection to resume it"
    )]
    ShuttingDown,
}

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
    /// Stage 2's confidence per pool item so far; emptied once the stage is done.
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
    /// `awaiting_annotation` (vote-k after stage 1), `predicting` (its stage 2 is
    /// running) or `complete`.
    pub state: String,
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
        self.state == PREDICTING
    }
}

/// How far vote-k's stage 2 has predicted the pool.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTwoProgress {
    /// Pool items predicted.
    pub done: usize,
    /// Pool items to predict in all.
    pub of: usize,
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

const AWAITING: &str = "awaiting_annotation";
const PREDICTING: &str = "predicting";
const COMPLETE: &str = "complete";

/// Reports progress: phase, done, of.
pub type Progress = Arc<dyn Fn(&str, usize, usize) + Send + Sync>;

/// Where vote-k's stage 2 runs once a call starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageTwoRun {
    /// Inside the call, which answers the finished selection (the CLI).
    InCall,
    /// In a background task; the call answers at once (the server).
    Background,
}

/// A stage 2 running in the background, or the reason the last one stopped.
#[derive(Debug, Clone, Default)]
struct Job {
    progress: StageTwoProgress,
    error: Option<String>,
}

/// Runs and stores selections.
pub struct Selector {
    catalog: Arc<Catalog>,
    predictor: Arc<Predictor>,
    stage_two_run: StageTwoRun,
    /// Background stage-2 runs of this process, by selection id.
    jobs: std::sync::Mutex<HashMap<String, Job>>,
    /// The background stage-2 tasks, awaited at shutdown.
    runs: TaskTracker,
    /// Set at shutdown: stage 2 stops after the batch it is predicting.
    stopping: AtomicBool,
}

/// Vote-k's stage-2 confidence in each input: the probability of its most likely label
/// with the task's annotated examples as demonstrations, the nearest eight by kNN.
///
/// # Errors
/// When the task is unknown, has no examples, or the model fails.
pub async fn stage_two_confidences(
    predictor: &Predictor,
    task: &str,
    inputs: Vec<QueryInput>,
    seed: u64,
) -> Result<Vec<f64>, PredictError> {
    let options = PredictOptions::classify_with(STAGE_TWO_K, Strategy::Knn, seed, false);
    let predictions = predictor.predict(task, inputs, &options).await?;
    Ok(predictions
        .iter()
        .map(|prediction| {
            prediction
                .probabilities
                .iter()
                .map(|(_, p)| *p)
                .fold(0.0, f64::max)
        })
        .collect())
}

fn new_id() -> String {
    format!("sel-{:016x}", rand::random::<u64>())
}

fn corrupt(e: serde_json::Error) -> SelectionError {
    SelectionError::Store(StoreError::Corrupt(format!("selection: {e}")))
}

impl Selector {
    /// A selector over the catalog's tasks, predicting with `predictor` for vote-k.
    pub fn new(
        catalog: Arc<Catalog>,
        predictor: Arc<Predictor>,
        stage_two_run: StageTwoRun,
    ) -> Self {
        Self {
            catalog,
            predictor,
            stage_two_run,
            jobs: std::sync::Mutex::new(HashMap::new()),
            runs: TaskTracker::new(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Stops the background stage-2 runs once each has saved the batch it is
    /// predicting, and waits for them; a later `continue` resumes from there.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.runs.close();
        self.runs.wait().await;
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        // The map holds plain progress records, whole after any panic.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a selection, answers a stored one for the same request and pool, or runs
    /// vote-k's stage 2 once stage 1 is annotated.
    ///
    /// # Errors
    /// On an unknown task, invalid parameters, a pool too small for the graph, or a
    /// failing model or database.
    pub async fn select(
        self: &Arc<Self>,
        task: &str,
        request: SelectionRequest,
        progress: Progress,
    ) -> Result<SelectionView, SelectionError> {
        let definition = self.catalog.definition(task).await?;
        let store = self.catalog.store();
        let pool = store.all_items(task, ItemKind::PoolItem).await?;
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
            if row.state == AWAITING && only_stage_one_left {
                return self.continue_selection(task, &row.id, progress).await;
            }
        }

        let started = Instant::now();
        let embeddings: Vec<Vec<f32>> = pool.iter().map(|p| p.embedding.clone()).collect();
        let (method, budget, seed) = (request.method, request.budget, request.seed);
        let reporter = Arc::clone(&progress);
        let chosen = tokio::task::spawn_blocking(move || {
            first_pass(method, &embeddings, budget, &params, seed, |done, of| {
                reporter("selecting", done, of)
            })
        })
        .await
        .map_err(|e| SelectError::Graph(format!("selection aborted: {e}")))??;
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
            state: if complete { COMPLETE } else { AWAITING }.to_owned(),
            request: serde_json::to_string(&recorded).map_err(corrupt)?,
            result: serde_json::to_string(&outcome).map_err(corrupt)?,
        };
        store.put_selection(task, &row).await?;
        self.view(task, &row, &recorded, &outcome).await
    }

    /// Runs vote-k's stage 2 of a stored selection once its stage-1 items are annotated
    /// (resuming a run that was cut short), inside the call or in the background as the
    /// selector was made; answers the selection as it is then.
    ///
    /// # Errors
    /// When the selection does not exist, or the model or database fails.
    pub async fn continue_selection(
        self: &Arc<Self>,
        task: &str,
        id: &str,
        progress: Progress,
    ) -> Result<SelectionView, SelectionError> {
        let (row, recorded, outcome) = self.load(task, id).await?;
        if row.state != AWAITING
            || self.annotated_stage_one(task, &outcome).await?.len() < outcome.stage_one.len()
        {
            return self.view(task, &row, &recorded, &outcome).await;
        }
        if self.stage_two_run == StageTwoRun::InCall {
            self.run_stage_two(task, id, progress).await?;
            return self.get(task, id).await;
        }
        let start = {
            let mut jobs = self.jobs();
            let running = jobs.get(id).is_some_and(|job| job.error.is_none());
            if !running {
                let job = Job {
                    progress: saved_progress(&recorded, &outcome),
                    error: None,
                };
                jobs.insert(id.to_owned(), job);
            }
            !running
        };
        let view = match self.view(task, &row, &recorded, &outcome).await {
            Ok(view) => view,
            Err(e) => {
                if start {
                    // Nothing was started: leave no record that says otherwise.
                    self.jobs().remove(id);
                }
                return Err(e);
            }
        };
        if start {
            let this = Arc::clone(self);
            let (task, id) = (task.to_owned(), id.to_owned());
            self.runs.spawn(async move {
                let tracker = Arc::clone(&this);
                let job_id = id.clone();
                let tracked: Progress = Arc::new(move |phase: &str, done: usize, of: usize| {
                    if let Some(job) = tracker.jobs().get_mut(&job_id) {
                        job.progress = StageTwoProgress { done, of };
                    }
                    progress(phase, done, of);
                });
                let result = this.run_stage_two(&task, &id, tracked).await;
                let mut jobs = this.jobs();
                match result {
                    Ok(()) => {
                        jobs.remove(&id);
                    }
                    Err(SelectionError::ShuttingDown) => {
                        tracing::info!(task = %task, selection = %id, "vote-k stage 2 saved and stopped for shutdown");
                    }
                    Err(e) => {
                        tracing::warn!(task = %task, selection = %id, error = %e, "vote-k stage 2 failed");
                        if let Some(job) = jobs.get_mut(&id) {
                            job.error = Some(e.to_string());
                        }
                    }
                }
            });
        }
        Ok(view)
    }

    /// The stage-1 items already annotated, by id.
    async fn annotated_stage_one(
        &self,
        task: &str,
        outcome: &Outcome,
    ) -> Result<HashMap<String, StoredItem>, SelectionError> {
        let store = self.catalog.store();
        let mut annotated = HashMap::new();
        for item_id in &outcome.stage_one {
            if let Some(item) = store.item(task, ItemKind::Example, item_id).await? {
                annotated.insert(item_id.clone(), item);
            }
        }
        Ok(annotated)
    }

    /// Vote-k's stage 2: predicts the pool items it has not predicted yet, saving each
    /// batch with the selection, then takes the rest of the budget and stores the
    /// selection complete.
    async fn run_stage_two(
        &self,
        task: &str,
        id: &str,
        progress: Progress,
    ) -> Result<(), SelectionError> {
        let (row, recorded, mut outcome) = self.load(task, id).await?;
        let store = self.catalog.store();
        let annotated = self.annotated_stage_one(task, &outcome).await?;
        let pool: HashMap<String, StoredItem> = store
            .all_items(task, ItemKind::PoolItem)
            .await?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        // The pool as it was, in its order; items deleted since are left out.
        let items: Vec<&StoredItem> = recorded
            .pool
            .iter()
            .filter_map(|id| pool.get(id).or_else(|| annotated.get(id)))
            .collect();
        let selected: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| annotated.contains_key(&item.id))
            .map(|(i, _)| i)
            .collect();

        let started = Instant::now();
        let unlabelled = items.len() - selected.len();
        let remaining: Vec<usize> = (0..items.len())
            .filter(|i| !selected.contains(i) && !outcome.stage_two.contains_key(&items[*i].id))
            .collect();
        let mut done = unlabelled - remaining.len();
        for chunk in remaining.chunks(STAGE_TWO_CHUNK) {
            if self.stopping.load(Ordering::Relaxed) {
                return Err(SelectionError::ShuttingDown);
            }
            let inputs = chunk
                .iter()
                .map(|&i| QueryInput {
                    text: items[i].text.clone(),
                    text_pair: items[i].text_pair.clone(),
                    exclude: None,
                })
                .collect();
            let confidences =
                stage_two_confidences(&self.predictor, task, inputs, recorded.request.seed).await?;
            for (&i, confidence) in chunk.iter().zip(confidences) {
                outcome.stage_two.insert(items[i].id.clone(), confidence);
            }
            let saved = SelectionRow {
                result: serde_json::to_string(&outcome).map_err(corrupt)?,
                ..row.clone()
            };
            store.put_selection(task, &saved).await?;
            done += chunk.len();
            progress("predicting the pool", done, unlabelled);
        }
        *outcome
            .timings
            .entry("stage_two_predict_s".into())
            .or_default() += started.elapsed().as_secs_f64();

        let started = Instant::now();
        let confidence: Vec<f64> = items
            .iter()
            .map(|item| outcome.stage_two.get(&item.id).copied().unwrap_or(1.0))
            .collect();
        let embeddings: Vec<Vec<f32>> = items.iter().map(|i| i.embedding.clone()).collect();
        let (budget, params) = (recorded.request.budget, recorded.params);
        let chosen = tokio::task::spawn_blocking(move || {
            second_pass(&embeddings, &selected, &confidence, budget, &params)
        })
        .await
        .map_err(|e| SelectError::Graph(format!("selection aborted: {e}")))??;
        outcome
            .timings
            .insert("stage_two_select_s".into(), started.elapsed().as_secs_f64());
        outcome.items = outcome
            .stage_one
            .iter()
            .cloned()
            .chain(chosen.into_iter().map(|i| items[i].id.clone()))
            .collect();
        outcome.stage_two.clear();
        let row = SelectionRow {
            state: COMPLETE.to_owned(),
            result: serde_json::to_string(&outcome).map_err(corrupt)?,
            ..row
        };
        store.put_selection(task, &row).await?;
        Ok(())
    }

    /// A stored selection.
    ///
    /// # Errors
    /// When the task or the selection does not exist.
    pub async fn get(&self, task: &str, id: &str) -> Result<SelectionView, SelectionError> {
        let (row, recorded, outcome) = self.load(task, id).await?;
        self.view(task, &row, &recorded, &outcome).await
    }

    async fn load(
        &self,
        task: &str,
        id: &str,
    ) -> Result<(SelectionRow, Recorded, Outcome), SelectionError> {
        self.catalog.definition(task).await?;
        let row = self
            .catalog
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
        let complete = row.state == COMPLETE;
        let job = self.jobs().get(&row.id).cloned();
        let saved = (!outcome.stage_two.is_empty()).then(|| saved_progress(recorded, outcome));
        let (state, progress, error) = match job {
            _ if complete => (COMPLETE, None, None),
            Some(Job {
                progress,
                error: None,
            }) => (PREDICTING, Some(progress), None),
            Some(Job { error, .. }) => (AWAITING, saved, error),
            None => (AWAITING, saved, None),
        };
        let selection = format!("/v1/tasks/{task}/selections/{}", row.id);
        let next = match state {
            COMPLETE => None,
            PREDICTING => Some(format!(
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
            state: state.to_owned(),
            complete,
            items,
            timings: outcome.timings.clone(),
            progress,
            error,
            next,
        })
    }
}

/// Stage 2's progress as saved with the selection.
fn saved_progress(recorded: &Recorded, outcome: &Outcome) -> StageTwoProgress {
    StageTwoProgress {
        done: outcome.stage_two.len(),
        of: recorded.pool.len().saturating_sub(outcome.stage_one.len()),
    }
}

fn method_name(method: Method) -> String {
    serde_json::to_value(method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
