//! Which tasks' examples are in memory. A task is loaded from the database on its first
//! use (a retrieval, a prediction, a write), and the least recently used tasks are
//! unloaded while the examples held exceed the budget (`--resident-examples`), so a
//! replica holds the tasks it serves, not every task of the database. The database
//! stays the source of truth: an unloaded task is read back whole when next used.
//!
//! A collection that a request still holds is never unloaded under it: a write that
//! took it before its commit indexes into the copy that the next load would not read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{example_from, Catalog, Collection, TaskError};
use crate::store::ItemKind;

/// The budget's bookkeeping: when each resident task was last used.
pub(super) struct Residency {
    /// Examples that may stay in memory over all tasks.
    budget: usize,
    /// A clock of uses: a task's last use is the tick it took.
    clock: AtomicU64,
    last_used: Mutex<HashMap<String, u64>>,
    /// One load at a time: two first requests for a task load it once, and loads do
    /// not compete for the database and the cores.
    loading: tokio::sync::Mutex<()>,
}

/// A resident task as the unloading rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Held {
    name: String,
    examples: usize,
    last_used: u64,
    /// Whether a request holds its collection now.
    in_use: bool,
}

impl Residency {
    /// A budget of `budget` examples in memory.
    pub(super) fn new(budget: usize) -> Self {
        Self {
            budget,
            clock: AtomicU64::new(0),
            last_used: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    fn last_used(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // Each update is one insert or remove, so a poisoned map is still whole.
        self.last_used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a use of `task` now.
    pub(super) fn touch(&self, task: &str) {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        self.last_used().insert(task.to_owned(), tick);
    }

    /// Forgets a task that left memory.
    pub(super) fn forget(&self, task: &str) {
        self.last_used().remove(task);
    }
}

/// The tasks to unload so that the examples held fit `budget`: least recently used
/// first, never `keep` (the task just loaded) nor one in use. Stops when the rest fit,
/// or when nothing more may go (a task larger than the budget stays, alone).
pub(super) fn to_unload(mut held: Vec<Held>, budget: usize, keep: &str) -> Vec<String> {
    let mut total: usize = held.iter().map(|h| h.examples).sum();
    held.sort_by_key(|h| h.last_used);
    let mut unload = Vec::new();
    for task in held {
        if total <= budget {
            break;
        }
        if task.name == keep || task.in_use {
            continue;
        }
        total -= task.examples;
        unload.push(task.name);
    }
    unload
}

impl Catalog {
    /// The task's collection, loaded from the database if it is not in memory; other
    /// tasks are unloaded if the budget is then exceeded.
    ///
    /// # Errors
    /// When the task does not exist, or its rows cannot be read, re-embedded or indexed.
    pub async fn resident(&self, task: &str) -> Result<Arc<Collection>, TaskError> {
        if let Some(collection) = self.collection(task) {
            self.residency.touch(task);
            return Ok(collection);
        }
        let _loading = self.residency.loading.lock().await;
        if let Some(collection) = self.collection(task) {
            self.residency.touch(task);
            return Ok(collection);
        }
        let collection = self.load(task).await?;
        self.residency.touch(task);
        self.unload_past_budget(task);
        Ok(collection)
    }

    /// Reads a task's examples (re-embedding rows another embedder made), builds its
    /// index and puts it in memory.
    async fn load(&self, task: &str) -> Result<Arc<Collection>, TaskError> {
        self.spec(task).await?;
        let started = Instant::now();
        // The version read before the rows: a change made during the load is applied
        // again by the next replica sync, where it is known already or missing.
        let version = self.store.examples_version(task).await?;
        let examples = self.reembed_stale(task, ItemKind::Example).await?;
        let count = examples.len();
        let dimension = self.embedder.dimension();
        let rows = examples
            .into_iter()
            .map(|item| {
                let embedding = item.embedding.clone();
                (example_from(item), embedding)
            })
            .collect();
        let collection = tokio::task::spawn_blocking(move || Collection::build(dimension, rows))
            .await
            .map_err(|_| TaskError::Aborted("an index build"))??;
        let collection = Arc::new(collection);
        self.collections_mut()
            .insert(task.to_owned(), Arc::clone(&collection));
        if let Some(version) = version {
            self.synced_versions().insert(task.to_owned(), version);
        }
        ::metrics::counter!("exemplar_task_loads_total").increment(1);
        tracing::info!(
            task,
            examples = count,
            seconds = started.elapsed().as_secs_f32(),
            "index loaded"
        );
        self.record_resident();
        Ok(collection)
    }

    /// Unloads least recently used tasks, other than `keep`, while the examples held
    /// exceed the budget: after a load, and after writes or a sync grew a task.
    pub(super) fn unload_past_budget(&self, keep: &str) {
        let mut collections = self.collections_mut();
        let held = {
            let last_used = self.residency.last_used();
            collections
                .iter()
                .map(|(name, collection)| Held {
                    name: name.clone(),
                    examples: collection.index.len(),
                    last_used: last_used.get(name).copied().unwrap_or(0),
                    // The map's own reference is the only one of a task nobody uses;
                    // nobody can take another while the map is locked for writing.
                    in_use: Arc::strong_count(collection) > 1,
                })
                .collect()
        };
        for name in to_unload(held, self.residency.budget, keep) {
            collections.remove(&name);
            self.synced_versions().remove(&name);
            self.residency.forget(&name);
            ::metrics::counter!("exemplar_task_unloads_total").increment(1);
            tracing::info!(task = %name, "index unloaded: least recently used past the budget");
        }
        drop(collections);
        self.record_resident();
    }

    /// Sets the gauges of what memory holds.
    pub(super) fn record_resident(&self) {
        let collections = self.collections.read().unwrap_or_else(|p| p.into_inner());
        let examples: usize = collections.values().map(|c| c.index.len()).sum();
        ::metrics::gauge!("exemplar_resident_tasks").set(collections.len() as f64);
        ::metrics::gauge!("exemplar_resident_examples").set(examples as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(name: &str, examples: usize, last_used: u64, in_use: bool) -> Held {
        Held {
            name: name.to_owned(),
            examples,
            last_used,
            in_use,
        }
    }

    #[test]
    fn the_least_recently_used_go_first_until_the_rest_fit() {
        let tasks = vec![
            held("c", 30, 3, false),
            held("a", 30, 1, false),
            held("b", 30, 2, false),
            held("d", 30, 4, false),
        ];
        // 120 held, 70 allowed: a (oldest) then b go; c and d fit.
        assert_eq!(to_unload(tasks.clone(), 70, "d"), ["a", "b"]);
        assert_eq!(to_unload(tasks.clone(), 120, "d"), Vec::<String>::new());
        assert_eq!(to_unload(tasks, 0, "d"), ["a", "b", "c"]);
    }

    #[test]
    fn the_task_just_loaded_and_tasks_in_use_stay() {
        let tasks = vec![
            held("new", 50, 0, false),
            held("busy", 30, 1, true),
            held("idle", 30, 2, false),
        ];
        // 110 held, 40 allowed: only idle may go, and the rest stay over the budget.
        assert_eq!(to_unload(tasks, 40, "new"), ["idle"]);
        // A task larger than the budget stays alone.
        assert_eq!(
            to_unload(vec![held("big", 500, 0, false)], 100, "big"),
            Vec::<String>::new()
        );
    }
}
