//! One task's annotated examples in memory: their texts and labels by point id, and the
//! HNSW index of their embeddings. Rebuilt from the database at start-up.

use std::collections::HashMap;
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
}

impl Examples {
    fn insert(&mut self, example: Example) {
        self.by_id.insert(example.id.clone(), example.point);
        self.by_point.insert(example.point, Arc::new(example));
    }

    fn remove(&mut self, point: usize) {
        if let Some(example) = self.by_point.remove(&point) {
            self.by_id.remove(&example.id);
        }
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

    /// Adds an example that the database has just stored.
    ///
    /// # Errors
    /// When the embedding is degenerate or of the wrong length.
    pub fn insert(&self, example: Example, embedding: &[f32]) -> Result<(), IndexError> {
        let point = example.point;
        // The example is visible before the index can return it.
        self.examples_mut().insert(example);
        self.index.insert(point, embedding).inspect_err(|_| {
            self.examples_mut().remove(point);
        })
    }

    /// Forgets an example; later searches never return it.
    pub fn remove(&self, point: usize) {
        self.index.remove(point);
        self.examples_mut().remove(point);
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
