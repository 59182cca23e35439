//! One task's annotated examples in memory: their texts and labels by point id, and the
//! HNSW index of their embeddings. Rebuilt from the database when its task is loaded.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::index::{IndexError, VectorIndex};

/// An annotated example as retrieval hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The database `seq`, also the index's point id.
    pub point: usize,
    /// The caller's id.
    pub id: String,
    /// The text.
    pub text: String,
    /// The second text of a pair task, if any.
    pub text_pair: Option<String>,
    /// The label.
    pub label: String,
}

/// A task's examples and their index.
pub struct Collection {
    /// The HNSW index over the examples' embeddings.
    pub index: VectorIndex,
    examples: RwLock<Examples>,
}

#[derive(Default)]
struct Examples {
    by_point: HashMap<usize, Arc<Example>>,
    by_id: HashMap<String, usize>,
    /// Points removed since the build. The database never reuses a `seq`, so a removed
    /// point that arrives again is a stale copy (from a replica sync that read the row
    /// before its delete) and must stay out.
    removed: HashSet<usize>,
}

impl Examples {
    fn insert(&mut self, example: Example) {
        self.by_id.insert(example.id.clone(), example.point);
        self.by_point.insert(example.point, Arc::new(example));
    }

    /// Drops `point` from the live examples without marking it removed.
    fn forget(&mut self, point: usize) {
        if let Some(example) = self.by_point.remove(&point) {
            self.by_id.remove(&example.id);
        }
    }

    fn remove(&mut self, point: usize) {
        self.removed.insert(point);
        self.forget(point);
    }

    fn knows(&self, point: usize) -> bool {
        self.by_point.contains_key(&point) || self.removed.contains(&point)
    }
}

impl Collection {
    /// Builds the collection from stored examples and their embeddings.
    ///
    /// # Errors
    /// When a stored embedding is degenerate or of the wrong length.
    pub fn build(dimension: usize, rows: Vec<(Example, Vec<f32>)>) -> Result<Self, IndexError> {
        let mut examples = Examples::default();
        let mut points = Vec::with_capacity(rows.len());
        for (example, embedding) in rows {
            points.push((example.point, embedding));
            examples.insert(example);
        }
        Ok(Self {
            index: VectorIndex::build(dimension, points)?,
            examples: RwLock::new(examples),
        })
    }

    /// Adds an example that the database has stored; one already here, or removed
    /// before, is left as it is.
    ///
    /// # Errors
    /// When the embedding is degenerate or of the wrong length.
    pub fn insert(&self, example: Example, embedding: &[f32]) -> Result<(), IndexError> {
        let point = example.point;
        {
            let mut examples = self.examples_mut();
            if examples.knows(point) {
                return Ok(());
            }
            // The example is visible before the index can return it.
            examples.insert(example);
        }
        // A failed insert is not a delete: the point may be offered again.
        self.index
            .insert(point, embedding)
            .inspect_err(|_| self.examples_mut().forget(point))
    }

    /// Forgets an example; later searches never return it, and it is never added again.
    pub fn remove(&self, point: usize) {
        self.index.remove(point);
        self.examples_mut().remove(point);
    }

    /// Whether `point` is live here or was removed.
    pub fn knows(&self, point: usize) -> bool {
        self.examples().knows(point)
    }

    /// The live points.
    pub fn points(&self) -> HashSet<usize> {
        self.examples().by_point.keys().copied().collect()
    }

    /// The example stored under `point`, if it is live.
    pub fn example(&self, point: usize) -> Option<Arc<Example>> {
        self.examples().by_point.get(&point).cloned()
    }

    /// The live example with the caller's `id`.
    pub fn by_id(&self, id: &str) -> Option<Arc<Example>> {
        let examples = self.examples();
        examples
            .by_id
            .get(id)
            .and_then(|point| examples.by_point.get(point))
            .cloned()
    }

    /// Every live example, in insertion order.
    pub fn all(&self) -> Vec<Arc<Example>> {
        let mut all: Vec<Arc<Example>> = self.examples().by_point.values().cloned().collect();
        all.sort_by_key(|e| e.point);
        all
    }

    fn examples(&self) -> std::sync::RwLockReadGuard<'_, Examples> {
        self.examples.read().unwrap_or_else(|p| p.into_inner())
    }

    fn examples_mut(&self) -> std::sync::RwLockWriteGuard<'_, Examples> {
        // Each update is a single insert or remove, so a poisoned map is still whole.
        self.examples.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(point: usize) -> Example {
        Example {
            point,
            id: format!("e{point}"),
            text: format!("text {point}"),
            text_pair: None,
            label: "positive".to_owned(),
        }
    }

    fn unit(angle: f32) -> Vec<f32> {
        vec![angle.cos(), angle.sin()]
    }

    #[test]
    fn inserts_are_idempotent_and_a_removed_point_never_returns() {
        let collection = Collection::build(2, Vec::new()).expect("empty");
        collection.insert(example(1), &unit(0.1)).expect("insert");
        collection.insert(example(2), &unit(0.2)).expect("insert");
        // The same point offered twice (a local write and a sync) is stored once.
        collection.insert(example(1), &unit(0.1)).expect("again");
        assert_eq!(collection.index.search(&unit(0.1), 5).len(), 2);
        assert_eq!(collection.points(), HashSet::from([1, 2]));

        collection.remove(1);
        // A sync that read the row before its delete offers it again: it stays out.
        collection
            .insert(example(1), &unit(0.1))
            .expect("stale copy");
        assert!(collection.example(1).is_none());
        assert!(collection.by_id("e1").is_none());
        let hits = collection.index.search(&unit(0.1), 5);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [2]);
        assert!(collection.knows(1) && collection.knows(2) && !collection.knows(3));
        assert_eq!(collection.points(), HashSet::from([2]));
    }

    #[test]
    fn a_failed_insert_leaves_the_point_free_to_be_offered_again() {
        let collection = Collection::build(2, Vec::new()).expect("empty");
        assert!(collection.insert(example(1), &[1.0, 0.0, 0.0]).is_err());
        assert!(!collection.knows(1));
        collection
            .insert(example(1), &unit(0.0))
            .expect("right dimension");
        assert!(collection.example(1).is_some());
    }
}
