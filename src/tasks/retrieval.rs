//! Retrieval: embedding queries as examples are embedded, and choosing demonstrations
//! from a task's collection by a strategy.

use std::sync::Arc;

use super::collection::{Collection, Example};
use super::validate::{check_k, check_strategy};
use super::views::{Demonstration, RetrieveQuery};
use super::{Catalog, TaskError};
use crate::retrieve::{self, Candidate, Strategy, MMR_CANDIDATE_FACTOR};
use crate::store::StoredItem;

/// The text that is embedded for an input: pairs are joined by a newline.
pub fn embedding_text(text: &str, text_pair: Option<&str>) -> String {
    match text_pair {
        Some(pair) => format!("{text}\n{pair}"),
        None => text.to_owned(),
    }
}

impl Catalog {
    /// Embeds query inputs as examples are embedded.
    ///
    /// # Errors
    /// When the embedder fails or is overloaded.
    pub async fn embed_queries(
        &self,
        inputs: &[(String, Option<String>)],
    ) -> Result<Vec<Vec<f32>>, TaskError> {
        let texts = inputs
            .iter()
            .map(|(text, pair)| embedding_text(text, pair.as_deref()))
            .collect();
        Ok(self.embedder.embed(texts).await?)
    }

    /// The task's in-memory examples, or [`TaskError::NoExamples`] when it has none.
    ///
    /// # Errors
    /// When the task does not exist or has no examples.
    pub fn examples(&self, task: &str) -> Result<Arc<Collection>, TaskError> {
        let collection = self
            .collection(task)
            .ok_or_else(|| TaskError::TaskNotFound(task.to_owned()))?;
        if collection.index.is_empty() {
            return Err(TaskError::NoExamples(task.to_owned()));
        }
        Ok(collection)
    }

    /// Chooses demonstrations for a query, most similar first.
    ///
    /// # Errors
    /// When the task does not exist, has no examples, or `k` is out of range.
    pub async fn retrieve(
        &self,
        task: &str,
        query: RetrieveQuery,
    ) -> Result<Vec<Demonstration>, TaskError> {
        self.spec(task).await?;
        check_k(query.k, 1)?;
        check_strategy(query.strategy)?;
        let collection = self.examples(task)?;
        let vector = self
            .embed_queries(&[(query.text, query.text_pair)])
            .await?
            .pop()
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            choose(&collection, &vector, query.k, query.strategy, None)
        })
        .await
        .map_err(|_| TaskError::Aborted("retrieval"))
    }
}

/// Runs a strategy over the collection, never choosing `exclude` (leave-one-out
/// evaluation); the answer is ordered most similar first.
pub fn choose(
    collection: &Collection,
    query: &[f32],
    k: usize,
    strategy: Strategy,
    exclude: Option<usize>,
) -> Vec<Demonstration> {
    let extra = usize::from(exclude.is_some());
    let allowed = |id: &usize| Some(*id) != exclude;
    let points: Vec<(usize, f32)> = match strategy {
        Strategy::Knn => collection
            .index
            .search(query, k + extra)
            .into_iter()
            .filter(|h| allowed(&h.id))
            .take(k)
            .map(|h| (h.id, h.similarity))
            .collect(),
        Strategy::Mmr { lambda } => {
            let candidates: Vec<Candidate> = collection
                .index
                .search(query, k * MMR_CANDIDATE_FACTOR + extra)
                .into_iter()
                .filter(|h| allowed(&h.id))
                .filter_map(|h| {
                    Some(Candidate {
                        id: h.id,
                        similarity: h.similarity,
                        vector: collection.index.vector(h.id)?,
                    })
                })
                .collect();
            retrieve::mmr(&candidates, k, lambda)
                .into_iter()
                .map(|i| (candidates[i].id, candidates[i].similarity))
                .collect()
        }
        Strategy::Random { seed } => retrieve::random_sample(&collection.index.ids(), k, seed)
            .into_iter()
            .filter_map(|id| {
                let vector = collection.index.vector(id)?;
                Some((id, crate::index::cosine(query, &vector)))
            })
            .collect(),
    };
    let mut demonstrations: Vec<Demonstration> = points
        .into_iter()
        .filter_map(|(point, similarity)| {
            Some(Demonstration {
                example: collection.example(point)?,
                similarity,
            })
        })
        .collect();
    demonstrations.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    demonstrations
}

pub(super) fn example_from(item: StoredItem) -> Example {
    Example {
        point: item.seq as usize,
        id: item.id,
        text: item.text,
        text_pair: item.text_pair,
        label: item.label.unwrap_or_default(),
    }
}
