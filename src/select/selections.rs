//! Selections of a task's pool, stored and resumable.
//!
//! A selection remembers the pool it was made on. Asking again with the same method,
//! budget, seed and parameters on the same pool answers the stored items. For vote-k,
//! asking again once the stage-1 items have been annotated (posted as examples, which
//! takes them out of the pool) runs stage 2: the LLM predicts every remaining item with
//! demonstrations retrieved from the annotated examples only, and the least confident
//! are chosen bucket by bucket.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

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
    /// `awaiting_annotation` (vote-k after stage 1) or `complete`.
    pub state: String,
    /// Whether the whole budget is chosen.
    pub complete: bool,
    /// The chosen items, in the order chosen.
    pub items: Vec<SelectedItem>,
    /// Seconds spent per phase.
    pub timings: BTreeMap<String, f64>,
    /// What to do next, when something is awaited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
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
const COMPLETE: &str = "complete";

/// Reports progress: phase, done, of.
pub type Progress = Arc<dyn Fn(&str, usize, usize) + Send + Sync>;

/// Runs and stores selections.
pub struct Selector {
    catalog: Arc<Catalog>,
    predictor: Arc<Predictor>,
}

fn new_id() -> String {
    format!("sel-{:016x}", rand::random::<u64>())
}

fn corrupt(e: serde_json::Error) -> SelectionError {
    SelectionError::Store(StoreError::Corrupt(format!("selection: {e}")))
}

impl Selector {
    /// A selector over the catalog's tasks, predicting with `predictor` for vote-k.
    pub fn new(catalog: Arc<Catalog>, predictor: Arc<Predictor>) -> Self {
        Self { catalog, predictor }
    }

    /// Makes a selection, answers a stored one for the same request and pool, or runs
    /// vote-k's stage 2 once stage 1 is annotated.
    ///
    /// # Errors
    /// On an unknown task, invalid parameters, a pool too small for the graph, or a
    /// failing model or database.
    pub async fn select(
        &self,
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
            timings: BTreeMap::new(),
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

    /// Runs vote-k's stage 2 of a stored selection, once its stage-1 items are
    /// annotated; answers the selection as it is otherwise.
    ///
    /// # Errors
    /// When the selection does not exist, or the model or database fails.
    pub async fn continue_selection(
        &self,
        task: &str,
        id: &str,
        progress: Progress,
    ) -> Result<SelectionView, SelectionError> {
        let (row, recorded, mut outcome) = self.load(task, id).await?;
        if row.state != AWAITING {
            return self.view(task, &row, &recorded, &outcome).await;
        }
        let store = self.catalog.store();
        let mut annotated: HashMap<String, StoredItem> = HashMap::new();
        for item_id in &outcome.stage_one {
            if let Some(item) = store.item(task, ItemKind::Example, item_id).await? {
                annotated.insert(item_id.clone(), item);
            }
        }
        if annotated.len() < outcome.stage_one.len() {
            return self.view(task, &row, &recorded, &outcome).await;
        }
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
        let remaining: Vec<usize> = (0..items.len()).filter(|i| !selected.contains(i)).collect();
        let mut confidence = vec![1.0f64; items.len()];
        let options =
            PredictOptions::classify_with(STAGE_TWO_K, Strategy::Knn, recorded.request.seed, false);
        for (done, chunk) in remaining.chunks(STAGE_TWO_CHUNK).enumerate() {
            let inputs = chunk
                .iter()
                .map(|&i| QueryInput {
                    text: items[i].text.clone(),
                    text_pair: items[i].text_pair.clone(),
                    exclude: None,
                })
                .collect();
            let predictions = self.predictor.predict(task, inputs, &options).await?;
            for (&i, prediction) in chunk.iter().zip(predictions) {
                confidence[i] = prediction
                    .probabilities
                    .iter()
                    .map(|(_, p)| *p)
                    .fold(0.0, f64::max);
            }
            progress(
                "predicting the pool",
                (done * STAGE_TWO_CHUNK + chunk.len()).min(remaining.len()),
                remaining.len(),
            );
        }
        outcome.timings.insert(
            "stage_two_predict_s".into(),
            started.elapsed().as_secs_f64(),
        );

        let started = Instant::now();
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
        let row = SelectionRow {
            state: COMPLETE.to_owned(),
            result: serde_json::to_string(&outcome).map_err(corrupt)?,
            ..row
        };
        store.put_selection(task, &row).await?;
        self.view(task, &row, &recorded, &outcome).await
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
        let next = (!complete).then(|| {
            format!(
                "annotate the {} stage-1 items (POST them to /v1/tasks/{task}/examples with the same ids), \
                 then repeat this request or POST /v1/tasks/{task}/selections/{}/continue",
                waiting.len(),
                row.id
            )
        });
        Ok(SelectionView {
            id: row.id.clone(),
            method: recorded.request.method,
            budget: recorded.request.budget,
            seed: recorded.request.seed,
            params: recorded.params,
            state: row.state.clone(),
            complete,
            items,
            timings: outcome.timings.clone(),
            next,
        })
    }
}

fn method_name(method: Method) -> String {
    serde_json::to_value(method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
