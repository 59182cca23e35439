//! Replicas on one database: each keeps its own in-memory collections of the tasks it
//! has loaded, so each must learn the writes the others make to them. [`Catalog::sync`]
//! applies them; the server calls it on an interval. A task not in memory needs nothing:
//! it is read whole from the database when it is loaded.
//!
//! Every change to a task's examples bumps the task's version and logs the seqs it
//! added and removed, in its own transaction. A sync reads every task's version (one
//! query); for a task that moved it reads the logged changes since the version it last
//! applied and applies just those, so a busy sync costs what changed. When the log no
//! longer reaches back that far (a replica far behind, or a first sync), it compares
//! every seq instead: a row stored and not in memory is added, a point in memory and no
//! longer stored is removed. Points are read from memory *before* the database is, so a
//! row written here meanwhile is never mistaken for one deleted elsewhere; and a
//! removed point is never added again, so a row read just before its delete cannot
//! come back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{example_from, Catalog, Collection, TaskError};
use crate::store::{ExampleChange, ExamplesVersion, ItemKind};

/// What one sync changed in memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Tasks deleted elsewhere whose collections went away.
    pub tasks: usize,
    /// Examples added.
    pub added: usize,
    /// Examples removed.
    pub removed: usize,
    /// Tasks that could not be brought up to date (retried at the next sync).
    pub failed: usize,
}

impl SyncReport {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Catalog {
    pub(super) fn synced_versions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, ExamplesVersion>> {
        // Each update is one insert or retain; a poisoned map is still whole.
        self.synced_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Brings every in-memory collection up to date with the database, which other
    /// replicas may have written; drops those of tasks deleted elsewhere.
    ///
    /// A task whose examples cannot be read or indexed is counted in the report's
    /// `failed` and left for the next sync; the others go on.
    ///
    /// # Errors
    /// When the database fails to list the tasks.
    pub async fn sync(&self) -> Result<SyncReport, TaskError> {
        let mut report = SyncReport::default();
        let before: HashMap<String, Arc<Collection>> = self
            .collections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // One number per task says whether its examples changed since the last sync:
        // an idle sync reads nothing else.
        let versions: HashMap<String, ExamplesVersion> =
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
                    self.residency.forget(name);
                    report.tasks += 1;
                }
            }
        }
        self.synced_versions()
            .retain(|name, _| versions.contains_key(name));
        for (name, &version) in &versions {
            if self.synced_versions().get(name) == Some(&version) {
                continue;
            }
            let Some(collection) = self.collection(name) else {
                continue;
            };
            match self.sync_task(name, collection, version).await {
                Ok((added, removed)) => {
                    report.added += added;
                    report.removed += removed;
                    if added > 0 {
                        self.unload_past_budget(name);
                    }
                }
                Err(error) => {
                    // One task that cannot be read or indexed must not keep every other
                    // task's writes from this replica: it is retried next time.
                    ::metrics::counter!("exemplar_sync_task_failures_total").increment(1);
                    tracing::warn!(task = %name, %error, "replica sync failed for a task");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// Brings one task's resident collection up to `version`; answers how many examples
    /// were added and removed.
    async fn sync_task(
        &self,
        name: &str,
        collection: Arc<Collection>,
        version: ExamplesVersion,
    ) -> Result<(usize, usize), TaskError> {
        // The same task (not one deleted and made again) moved forward.
        let applied = self.synced_versions().get(name).copied().filter(|applied| {
            applied.incarnation == version.incarnation && applied.changes < version.changes
        });
        let logged = match applied {
            Some(applied) => {
                self.store
                    .example_changes(name, applied.changes, version.changes)
                    .await?
            }
            None => None,
        };
        let synced = match logged {
            Some(changes) => {
                ::metrics::counter!("exemplar_sync_changes_applied_total")
                    .increment(changes.len() as u64);
                self.apply_changes(name, collection, changes).await?
            }
            None => {
                ::metrics::counter!("exemplar_sync_task_scans_total").increment(1);
                self.sync_examples(name, collection).await?
            }
        };
        // The version read before the scan: a change made during it is scanned again
        // next time.
        self.synced_versions().insert(name.to_owned(), version);
        Ok(synced)
    }

    /// Applies logged changes to one task's examples; answers how many were added and
    /// removed here.
    async fn apply_changes(
        &self,
        task: &str,
        collection: Arc<Collection>,
        changes: Vec<ExampleChange>,
    ) -> Result<(usize, usize), TaskError> {
        let mut removed = 0;
        for &seq in changes.iter().flat_map(|c| &c.removed) {
            let point = seq as usize;
            removed += usize::from(collection.example(point).is_some());
            // Removing also remembers the point, so that its add below is skipped.
            collection.remove(point);
        }
        let missing: Vec<i64> = changes
            .iter()
            .flat_map(|c| &c.added)
            .copied()
            .filter(|&seq| !collection.knows(seq as usize))
            .collect();
        let added = self.index_stored(task, collection, &missing).await?;
        Ok((added, removed))
    }

    /// Applies one task's added and deleted examples, found by comparing every stored
    /// seq with memory; answers how many of each.
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
        let added = self.index_stored(task, collection, &missing).await?;
        Ok((added, gone.len()))
    }

    /// Reads the stored examples `seqs` (those still stored) and indexes them; answers
    /// how many were added.
    async fn index_stored(
        &self,
        task: &str,
        collection: Arc<Collection>,
        seqs: &[i64],
    ) -> Result<usize, TaskError> {
        if seqs.is_empty() {
            // No index work to hand to a thread.
            return Ok(0);
        }
        let rows = self
            .store
            .items_by_seq(task, ItemKind::Example, seqs)
            .await?;
        let embedder_id = self.embedder_id.clone();
        let task_name = task.to_owned();
        tokio::task::spawn_blocking(move || {
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
        .map_err(|_| TaskError::Aborted("a replica sync"))?
    }
}
