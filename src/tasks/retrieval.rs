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

    /// The task's examples in memory (loaded if they are not), or
    /// [`TaskError::NoExamples`] when it has none.
    ///
    /// # Errors
    /// When the task does not exist, cannot be loaded or has no examples.
    pub async fn examples(&self, task: &str) -> Result<Arc<Collection>, TaskError> {
        let collection = self.resident(task).await?;
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
        let collection = self.examples(task).await?;
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
        Strategy::Random { seed } => {
            // The held-out example (leave-one-out) may not be its own demonstration.
            let ids: Vec<usize> = collection.index.ids().into_iter().filter(allowed).collect();
            retrieve::random_sample(&ids, k, seed)
                .into_iter()
                .filter_map(|id| {
                    let vector = collection.index.vector(id)?;
                    Some((id, crate::index::cosine(query, &vector)))
                })
                .collect()
        }
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

/// Makes every label of `labels` appear among `demonstrations` (most similar first, as
/// [`choose`] answers them) where there is room: for each label missing, the example of
/// that label most similar to `query` takes the place of the least similar demonstration
/// whose label is shown more than once. With fewer demonstrations than labels, or no
/// example of a label, the label stays missing.
pub fn cover_labels(
    collection: &Collection,
    query: &[f32],
    mut demonstrations: Vec<Demonstration>,
    labels: &[String],
    exclude: Option<usize>,
) -> Vec<Demonstration> {
    if demonstrations.len() < labels.len() {
        return demonstrations;
    }
    for label in labels {
        if demonstrations.iter().any(|d| d.example.label == *label) {
            continue;
        }
        let nearest = collection
            .all()
            .into_iter()
            .filter(|e| e.label == *label && Some(e.point) != exclude)
            .filter_map(|e| {
                let vector = collection.index.vector(e.point)?;
                Some((crate::index::cosine(query, &vector), e))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((similarity, example)) = nearest else {
            continue;
        };
        let shown_twice = |d: &Demonstration| {
            demonstrations
                .iter()
                .filter(|o| o.example.label == d.example.label)
                .count()
                > 1
        };
        let Some(replaced) = (0..demonstrations.len())
            .filter(|&i| shown_twice(&demonstrations[i]))
            .min_by(|&a, &b| {
                demonstrations[a]
                    .similarity
                    .total_cmp(&demonstrations[b].similarity)
            })
        else {
            break;
        };
        demonstrations.remove(replaced);
        demonstrations.push(Demonstration {
            example,
            similarity,
        });
        demonstrations.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn collection() -> Collection {
        // Three positives close to the query, a negative and a neutral further away.
        let rows = [
            ("p1", "positive", [1.0, 0.0]),
            ("p2", "positive", [0.9, 0.1]),
            ("p3", "positive", [0.8, 0.2]),
            ("n1", "negative", [0.1, 0.9]),
            ("u1", "neutral", [0.3, 0.7]),
        ];
        let rows = rows
            .iter()
            .enumerate()
            .map(|(point, (id, label, vector))| {
                let example = Example {
                    point,
                    id: (*id).to_owned(),
                    text: (*id).to_owned(),
                    text_pair: None,
                    label: (*label).to_owned(),
                };
                (example, vector.to_vec())
            })
            .collect();
        Collection::build(2, rows).expect("collection")
    }

    fn ids(demonstrations: &[Demonstration]) -> Vec<&str> {
        demonstrations
            .iter()
            .map(|d| d.example.id.as_str())
            .collect()
    }

    #[test]
    fn a_held_out_example_is_never_its_own_random_demonstration() {
        let collection = collection();
        let held_out = collection.by_id("p1").expect("p1").point;
        for seed in 0..20 {
            let chosen = choose(
                &collection,
                &[1.0, 0.0],
                4,
                Strategy::Random { seed },
                Some(held_out),
            );
            assert_eq!(
                chosen.len(),
                4,
                "seed {seed}: every other example is offered"
            );
            assert!(
                !ids(&chosen).contains(&"p1"),
                "seed {seed}: {:?}",
                ids(&chosen)
            );
        }
    }

    #[test]
    fn missing_labels_take_the_places_of_the_least_similar_repeated_ones() {
        let collection = collection();
        let labels: Vec<String> = ["negative", "positive", "neutral"]
            .map(String::from)
            .to_vec();
        let query = [1.0, 0.0];
        let nearest = choose(&collection, &query, 3, Strategy::Knn, None);
        assert_eq!(ids(&nearest), ["p1", "p2", "p3"]);
        let covered = cover_labels(&collection, &query, nearest.clone(), &labels, None);
        // Negative takes the place of p3 (the least similar repeated), then neutral p2's.
        assert_eq!(ids(&covered), ["p1", "u1", "n1"]);
        // Too few demonstrations to cover three labels: unchanged.
        let two = choose(&collection, &query, 2, Strategy::Knn, None);
        assert_eq!(
            ids(&cover_labels(&collection, &query, two, &labels, None)),
            ["p1", "p2"]
        );
        // The excluded example (leave-one-out) never comes back; a label without
        // examples stays missing.
        let excluded = cover_labels(&collection, &query, nearest, &labels, Some(3));
        assert_eq!(ids(&excluded), ["p1", "p2", "u1"]);
    }
}
