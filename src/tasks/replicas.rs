//! Replicas on one database: each keeps its own in-memory collections, so each must
//! learn the writes the others make. [`Catalog::sync`] compares the database with memory
//! and applies the difference; the server calls it on an interval.
//!
//! The comparison is by `seq`, which the database never reuses: a row stored and not
//! in memory is added, a point in memory and no longer stored is removed. Points are
//! read from memory *before* the database is, so a row written here meanwhile is never
//! mistaken for one deleted elsewhere; and a removed point is never added again, so a
//! row read just before its delete cannot come back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{example_from, Catalog, Collection, TaskError};
use crate::store::ItemKind;

/// What one sync changed in memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Tasks whose collections appeared or went away.
    pub tasks: usize,
    /// Examples added.
    pub added: usize,
    /// Examples removed.
    pub removed: usize,
}

impl SyncReport {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Catalog {
    fn synced_versions(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, i64)>> {
        // Each update is one insert or retain; a poisoned map is still whole.
        self.synced_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Brings every in-memory collection up to date with the database, which other
    /// replicas may have written.
    ///
    /// # Errors
    /// When the database fails or a stored embedding cannot be indexed.
    pub async fn sync(&self) -> Result<SyncReport, TaskError> {
        let mut report = SyncReport::default();
        let before: HashMap<String, Arc<Collection>> = self
            .collections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // One number per task says whether its examples changed since the last sync:
        // an idle sync reads nothing else.
        let versions: HashMap<String, (i64, i64)> =
            self.store.examples_versions().await?.into_iter().collect();
        for (name, collection) in &before {
            if !versions.contains_key(name) {
                let mut collections = self.collections_mut();
                // Only the collection that was here before the listing: one made since
                // belongs to a task created after it.
                if collections
                    .get(name)
                    .is_some_and(|c| Arc::ptr_eq(c, collection))
                {
                    collections.remove(name);
                    report.tasks += 1;
                }
            }
        }
        self.synced_versions()
            .retain(|name, _| versions.contains_key(name));
        for (name, &version) in &versions {
            let collection = match self.collection(name) {
                Some(collection) => collection,
                None => {
                    report.tasks += 1;
                    let empty = Arc::new(Collection::build(self.embedder.dimension(), Vec::new())?);
                    Arc::clone(self.collections_mut().entry(name.clone()).or_insert(empty))
                }
            };
            let unchanged = self.synced_versions().get(name) == Some(&version);
            if unchanged {
                continue;
            }
            ::metrics::counter!("exemplar_sync_task_scans_total").increment(1);
            let (added, removed) = self.sync_examples(name, collection).await?;
            report.added += added;
            report.removed += removed;
            // The version read before the scan: a change made during it is scanned
            // again next time.
            self.synced_versions().insert(name.clone(), version);
        }
        Ok(report)
    }

    /// Applies one task's added and deleted examples; answers how many of each.
    async fn sync_examples(
        &self,
        task: &str,
        collection: Arc<Collection>,
    ) -> Result<(usize, usize), TaskError> {
        let known = collection.points();
        let stored = self.store.item_seqs(task, ItemKind::Example).await?;
        let stored_points: HashSet<usize> = stored.iter().map(|&seq| seq as usize).collect();
        let gone: Vec<usize> = known.difference(&stored_points).copied().collect();
        for &point in &gone {
            collection.remove(point);
        }
        let missing: Vec<i64> = stored
            .into_iter()
            .filter(|&seq| !collection.knows(seq as usize))
            .collect();
        if missing.is_empty() && gone.is_empty() {
            // The common case, every interval: no index work to hand to a thread.
            return Ok((0, 0));
        }
        let rows = self
            .store
            .items_by_seq(task, ItemKind::Example, &missing)
            .await?;
        let embedder_id = self.embedder_id.clone();
        let task_name = task.to_owned();
        let added = tokio::task::spawn_blocking(move || {
            let mut added = 0;
            for item in rows {
                if item.embedder != embedder_id {
                    // Another embedder's vectors cannot share this index; the rows are
                    // re-embedded when this replica next starts.
                    tracing::warn!(task = %task_name, id = %item.id, embedder = %item.embedder, "skipping an example embedded by another embedder");
                    continue;
                }
                let embedding = item.embedding.clone();
                collection.insert(example_from(item), &embedding)?;
                added += 1;
            }
            if collection.index.needs_compaction() {
                collection.index.compact();
            }
            Ok::<_, TaskError>(added)
        })
        .await
        .map_err(|_| TaskError::Aborted("a replica sync"))??;
        Ok((added, gone.len()))
    }
}
