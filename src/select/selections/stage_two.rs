//! Vote-k's stage 2: the LLM predicts the pool with the annotated stage-1 items as
//! demonstrations, batch by batch, and the least confident items fill the budget.
//!
//! Stage 2 runs on the job runner (`crate::jobs`): one replica at a time, the holder of
//! the selection's lease, saves every batch under it; a runner whose lease lapsed (it
//! stalled, or its replica died) finds its next save refused and stops, so a slow
//! duplicate never overwrites the new runner's result. Every replica looks for lapsed
//! leases every half lease and resumes those runs from their last saved batch, so a
//! stage 2 outlives the replica that started it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::jobs::StageTwoProgress;
use super::{
    corrupt, saved_progress, state_of, Outcome, Progress, SelectionError, SelectionState,
    SelectionView, Selector, StageTwoRun,
};
use crate::predict::{PredictError, PredictOptions, Predictor, QueryInput};
use crate::retrieve::Strategy;
use crate::select::second_pass;
use crate::store::{ItemKind, LapsedLease, Leased, SelectionRow, StoredItem};

/// Demonstrations per prediction in vote-k's stage 2.
const STAGE_TWO_K: usize = 8;
/// Pool items predicted per call in stage 2.
const STAGE_TWO_CHUNK: usize = 16;

/// Vote-k's stage-2 confidence in each input: the probability of its most likely label
/// with the task's annotated examples as demonstrations, the nearest eight by kNN.
///
/// The demonstrations are cached (`crate::llm::demonstration_cache`): stage 1 annotates
/// a tenth of the budget, so a few demonstrations recur in every prompt, each is
/// computed once, and an item costs its own tokens. Stage 2 only ranks the items by
/// confidence, which the approximation keeps (`exemplar bench --suite stage-two`
/// measures how closely, against whole prompts).
///
/// # Errors
/// When the task is unknown, has no examples, or the model fails.
pub async fn stage_two_confidences(
    predictor: &Arc<Predictor>,
    task: &str,
    inputs: Vec<QueryInput>,
    seed: u64,
) -> Result<Vec<f64>, PredictError> {
    let options = PredictOptions {
        cached_demonstrations: true,
        ..PredictOptions::classify_with(STAGE_TWO_K, Strategy::Knn, seed, false)
    };
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

impl Selector {
    /// Runs vote-k's stage 2 of a stored selection once its stage-1 items are annotated
    /// (resuming a run that was cut short), inside the call or in the background as the
    /// selector was made; answers the selection as it is then. While another replica
    /// holds the selection's lease, it answers that run's saved progress instead.
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
        if state_of(&row)? != SelectionState::AwaitingAnnotation
            || self.annotated_stage_one(task, &outcome).await?.len() < outcome.stage_one.len()
            || !self.jobs.start(id, saved_progress(&recorded, &outcome))
        {
            return self.view(task, &row, &recorded, &outcome).await;
        }
        match self.runner.take(Leased::Selections, task, id).await {
            Ok(true) => {}
            Ok(false) => {
                // Another replica runs it; its saved batches are the progress.
                self.jobs.forget(id);
                return self.get(task, id).await;
            }
            Err(e) => {
                self.jobs.forget(id);
                return Err(e.into());
            }
        }
        if self.stage_two_run == StageTwoRun::InCall {
            let result = self.run_leased(task, id, progress).await;
            self.jobs.forget(id);
            result?;
            return self.get(task, id).await;
        }
        let this = Arc::clone(self);
        let (job_task, job_id) = (task.to_owned(), id.to_owned());
        self.runner.spawn(async move {
            let tracker = Arc::clone(&this);
            let tracked_id = job_id.clone();
            let tracked: Progress = Arc::new(move |phase: &str, done: usize, of: usize| {
                tracker
                    .jobs
                    .advance(&tracked_id, StageTwoProgress { done, of });
                progress(phase, done, of);
            });
            let (task, id) = (job_task.as_str(), job_id.as_str());
            match this.run_leased(task, id, tracked).await {
                Ok(()) => this.jobs.forget(id),
                Err(SelectionError::ShuttingDown) => {
                    tracing::info!(
                        task,
                        selection = id,
                        "vote-k stage 2 saved and stopped for shutdown"
                    );
                    this.jobs.forget(id);
                }
                Err(SelectionError::LeaseLost) => {
                    tracing::warn!(
                        task,
                        selection = id,
                        "vote-k stage 2 lost its lease to another replica; stopped"
                    );
                    this.jobs.forget(id);
                }
                Err(e) => {
                    tracing::warn!(task, selection = id, error = %e, "vote-k stage 2 failed");
                    this.jobs.fail(id, e.to_string());
                }
            }
        });
        self.view(task, &row, &recorded, &outcome).await
    }

    /// Resumes every stage 2 whose lease lapsed (its replica died or stopped);
    /// answers how many this replica took on.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn resume_lapsed(self: &Arc<Self>) -> Result<usize, SelectionError> {
        let lapsed = self
            .catalog
            .store()
            .lapsed_leases(Leased::Selections)
            .await?;
        let mut resumed = 0;
        for LapsedLease { task, id, owner } in lapsed {
            let quiet: Progress = Arc::new(|_: &str, _: usize, _: usize| {});
            match self.continue_selection(&task, &id, quiet).await {
                Ok(view) if view.running() && self.jobs.get(&id).is_some() => {
                    tracing::info!(
                        task,
                        selection = id,
                        "resumed a vote-k stage 2 whose lease lapsed"
                    );
                    resumed += 1;
                }
                Ok(_) if self.jobs.get(&id).is_none() => {
                    // It cannot go on (its stage-1 annotations were deleted, or it is
                    // complete): clear the lapsed lease, unless another replica took it
                    // meanwhile, so that the selection says what it waits for.
                    let store = self.catalog.store();
                    store
                        .release_lease(Leased::Selections, &task, &id, &owner, false)
                        .await?;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(task, selection = id, error = %e, "resuming vote-k stage 2 failed");
                }
            }
        }
        Ok(resumed)
    }

    /// Runs stage 2 under the lease this process took.
    async fn run_leased(
        &self,
        task: &str,
        id: &str,
        progress: Progress,
    ) -> Result<(), SelectionError> {
        let work = self.run_stage_two(task, id, progress);
        self.runner
            .run_leased(Leased::Selections, task, id, work)
            .await
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
        let owner = self.runner.owner();
        if state_of(&row)? == SelectionState::Complete {
            // Finished elsewhere between the caller's look and the lease.
            store
                .release_lease(Leased::Selections, task, id, self.runner.owner(), false)
                .await?;
            return Ok(());
        }
        let annotated = self.annotated_stage_one(task, &outcome).await?;
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

        let started = Instant::now();
        let unlabelled = items.len() - selected.len();
        let remaining: Vec<usize> = (0..items.len())
            .filter(|i| !selected.contains(i) && !outcome.stage_two.contains_key(&items[*i].id))
            .collect();
        let mut done = unlabelled - remaining.len();
        for chunk in remaining.chunks(STAGE_TWO_CHUNK) {
            if self.runner.stopping() {
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
            if !store
                .save_leased(task, &saved, owner, Some(self.runner.lease_seconds()))
                .await?
            {
                return Err(SelectionError::LeaseLost);
            }
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
        .map_err(|_| SelectionError::Aborted("a selection pass"))??;
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
            state: SelectionState::Complete.as_str().to_owned(),
            result: serde_json::to_string(&outcome).map_err(corrupt)?,
            ..row
        };
        // Only while the lease is this process's: a run that lapsed and was taken over
        // never overwrites what the new runner saves.
        if !store.save_leased(task, &row, owner, None).await? {
            return Err(SelectionError::LeaseLost);
        }
        Ok(())
    }
}
