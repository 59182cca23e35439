//! Vote-k's stage 2, a kind of job (`crate::jobs`): the LLM predicts the pool with the
//! annotated stage-1 items as demonstrations, batch by batch, and the least confident
//! items fill the budget.
//!
//! It runs like an evaluation or a tuning: stored in the job table with its selection's
//! id as its request, capped per requester, task and replica, run on one replica at a
//! time under a lease, every batch of confidences saved, resumed by any replica from its
//! last save when its lease lapses, and failed (never resumed) on an error that every
//! run would meet. Once complete, the chosen items are written to the selection.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::SelectionState;
use super::{annotated_stage_one, corrupt, load_selection, state_of, SelectionError};
use crate::jobs::{JobKind, JobState, Progress, StoredJob};
use crate::predict::{PredictError, PredictOptions, Prediction, Predictor, QueryInput};
use crate::retrieve::Strategy;
use crate::select::second_pass;
use crate::store::{SelectionRow, StoredItem};
use crate::tasks::Catalog;

/// Demonstrations per prediction in vote-k's stage 2.
const STAGE_TWO_K: usize = 8;
/// Pool items predicted between saves.
const STAGE_TWO_CHUNK: usize = 16;

/// How stage 2 predicts: the nearest eight annotated examples by kNN, as cached
/// demonstrations.
///
/// The demonstrations are cached (`crate::llm::demonstration_cache`): stage 1 annotates
/// a tenth of the budget, so a few demonstrations recur in every prompt, each is
/// computed once, and an item costs its own tokens. Stage 2 only ranks the items by
/// confidence, which the approximation keeps (`exemplar bench --suite stage-two`
/// measures how closely, against whole prompts).
fn stage_two_options(seed: u64) -> PredictOptions {
    PredictOptions {
        cached_demonstrations: true,
        ..PredictOptions::classify_with(STAGE_TWO_K, Strategy::Knn, seed, false)
    }
}

/// Vote-k's confidence in a prediction: the probability of its most likely label.
fn confidence(prediction: &Prediction) -> f64 {
    prediction
        .probabilities
        .iter()
        .map(|(_, p)| *p)
        .fold(0.0, f64::max)
}

/// Vote-k's stage-2 confidence in each input, with the task's annotated examples as
/// demonstrations (see [`stage_two_options`]).
///
/// # Errors
/// When the task is unknown, has no examples, or the model fails.
pub async fn stage_two_confidences(
    predictor: &Arc<Predictor>,
    task: &str,
    inputs: Vec<QueryInput>,
    seed: u64,
) -> Result<Vec<f64>, PredictError> {
    let predictions = predictor
        .predict(task, inputs, &stage_two_options(seed))
        .await?;
    Ok(predictions.iter().map(confidence).collect())
}

/// How far vote-k's stage 2 has predicted the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StageTwoProgress {
    /// Pool items predicted.
    pub done: usize,
    /// Pool items to predict in all.
    pub of: usize,
}

/// What a stage-2 job is asked: the selection whose stage 2 it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageTwoRequest {
    /// The selection's id.
    pub selection: String,
}

/// What a stage-2 job saves as it goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageTwoSaved {
    /// The confidence in each pool item predicted so far, by id.
    pub(super) confidences: BTreeMap<String, f64>,
    /// Seconds spent predicting, over every run, once done.
    #[serde(default)]
    predict_seconds: f64,
    /// Seconds spent choosing, once done.
    #[serde(default)]
    select_seconds: f64,
    /// The chosen items, stage 1's first, once done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    items: Vec<String>,
}

impl StageTwoSaved {
    /// Pool items predicted so far.
    pub fn done(&self) -> usize {
        self.confidences.len()
    }
}

/// A stage-2 job as answered (its selection answers for it to clients).
#[derive(Debug, Clone, Serialize)]
pub struct StageTwoJob {
    /// The job's id.
    pub id: String,
    /// The selection.
    pub selection: String,
    /// Where it stands.
    pub state: JobState,
    /// Pool items predicted so far.
    pub done: usize,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Vote-k's stage 2, the kind of job.
pub struct StageTwo {
    catalog: Arc<Catalog>,
    predictor: Arc<Predictor>,
}

impl StageTwo {
    /// Stage 2 over the catalog's tasks, predicting with `predictor`.
    pub fn new(catalog: Arc<Catalog>, predictor: Arc<Predictor>) -> Self {
        Self { catalog, predictor }
    }

    /// The id of the stage-2 job of `selection`: one per selection, so that a retry or
    /// a racing replica finds the job already started.
    pub fn job_id(selection: &str) -> String {
        format!("{}-{selection}", Self::ID_PREFIX)
    }

    /// Writes what a complete job chose into its selection, which is then complete;
    /// a selection already complete is left as it is.
    ///
    /// # Errors
    /// When the selection cannot be read or the database fails.
    pub async fn finish(
        &self,
        task: &str,
        selection: &str,
        saved: &StageTwoSaved,
    ) -> Result<(), SelectionError> {
        let (row, _, mut outcome) = load_selection(&self.catalog, task, selection).await?;
        if state_of(&row)? == SelectionState::Complete {
            return Ok(());
        }
        outcome.items.clone_from(&saved.items);
        outcome.stage_two.clear();
        outcome
            .timings
            .insert("stage_two_predict_s".into(), saved.predict_seconds);
        outcome
            .timings
            .insert("stage_two_select_s".into(), saved.select_seconds);
        let row = SelectionRow {
            state: SelectionState::Complete.as_str().to_owned(),
            result: serde_json::to_string(&outcome).map_err(corrupt)?,
            ..row
        };
        self.catalog.store().put_selection(task, &row).await?;
        Ok(())
    }
}

impl JobKind for StageTwo {
    const KIND: &'static str = "stage_two";
    const ID_PREFIX: &'static str = "stage2";
    type Request = StageTwoRequest;
    type Saved = StageTwoSaved;
    type View = StageTwoJob;
    type Error = SelectionError;

    async fn check(&self, task: &str, request: &StageTwoRequest) -> Result<(), SelectionError> {
        load_selection(&self.catalog, task, &request.selection)
            .await
            .map(|_| ())
    }

    /// Predicts the pool items not predicted yet, saving each batch, then takes the rest
    /// of the budget.
    async fn work(
        &self,
        task: &str,
        request: &StageTwoRequest,
        progress: &mut Progress<Self>,
    ) -> Result<(), SelectionError> {
        let (_, recorded, outcome) =
            load_selection(&self.catalog, task, &request.selection).await?;
        let annotated = annotated_stage_one(&self.catalog, task, &outcome).await?;
        if annotated.len() < outcome.stage_one.len() {
            return Err(SelectionError::StageOneUnannotated {
                missing: outcome.stage_one.len() - annotated.len(),
            });
        }
        let pool: HashMap<String, StoredItem> = self
            .catalog
            .pool(task)
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
        if progress.saved.confidences.is_empty() {
            // What earlier runs saved on the selection.
            progress.saved.confidences.clone_from(&outcome.stage_two);
        }
        let remaining: Vec<usize> = (0..items.len())
            .filter(|i| {
                !selected.contains(i) && !progress.saved.confidences.contains_key(&items[*i].id)
            })
            .collect();
        let options = stage_two_options(recorded.request.seed);
        for chunk in remaining.chunks(STAGE_TWO_CHUNK) {
            let inputs = chunk
                .iter()
                .map(|&i| QueryInput {
                    text: items[i].text.clone(),
                    text_pair: items[i].text_pair.clone(),
                    exclude: None,
                })
                .collect();
            let mut ids = chunk.iter().map(|&i| items[i].id.clone());
            progress
                .predict_batch(&self.predictor, task, inputs, &options, |saved, p| {
                    if let Some(id) = ids.next() {
                        saved.confidences.insert(id, confidence(&p));
                    }
                })
                .await?;
        }
        progress.saved.predict_seconds = progress.seconds();

        let started = Instant::now();
        let confidences: Vec<f64> = items
            .iter()
            .map(|item| {
                progress
                    .saved
                    .confidences
                    .get(&item.id)
                    .copied()
                    .unwrap_or(1.0)
            })
            .collect();
        let embeddings: Vec<Vec<f32>> = items.iter().map(|i| i.embedding.clone()).collect();
        let (budget, params) = (recorded.request.budget, recorded.params);
        let chosen = tokio::task::spawn_blocking(move || {
            second_pass(&embeddings, &selected, &confidences, budget, &params)
        })
        .await
        .map_err(|_| SelectionError::Aborted("a selection pass"))??;
        progress.saved.select_seconds = started.elapsed().as_secs_f64();
        progress.saved.items = outcome
            .stage_one
            .iter()
            .cloned()
            .chain(chosen.into_iter().map(|i| items[i].id.clone()))
            .collect();
        Ok(())
    }

    async fn completed(
        &self,
        task: &str,
        request: &StageTwoRequest,
        saved: &StageTwoSaved,
    ) -> Result<(), SelectionError> {
        self.finish(task, &request.selection, saved).await
    }

    fn view(job: &StoredJob<Self>) -> StageTwoJob {
        StageTwoJob {
            id: job.id.clone(),
            selection: job.request.selection.clone(),
            state: job.state,
            done: job.saved.done(),
            error: job.error.clone(),
        }
    }
}
