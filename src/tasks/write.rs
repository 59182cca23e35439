//! The write path: validate a batch, embed it, store it in one transaction, index it;
//! and deletes, which leave the index at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::collection::{Collection, Example};
use super::retrieval::{embedding_text, example_from};
use super::validate::validate_rows;
use super::views::ItemInput;
use super::{kind_name, Catalog, TaskError};
use crate::store::{ItemKind, NewItem, Store, StoreError, StoredItem};

impl Catalog {
    /// Validates, embeds and stores a batch, all or nothing; answers the rows' ids.
    ///
    /// Examples whose ids are in the pool leave the pool in the same transaction.
    ///
    /// # Errors
    /// [`TaskError::InvalidRow`] naming the first bad row; nothing is stored then.
    pub async fn add_items(
        &self,
        task: &str,
        kind: ItemKind,
        rows: Vec<ItemInput>,
    ) -> Result<Vec<String>, TaskError> {
        let spec = self.spec(task).await?;
        let rows = validate_rows(&spec, kind, rows)?;
        let ids: Vec<String> = rows.iter().filter_map(|r| r.id.clone()).collect();
        if kind == ItemKind::PoolItem {
            self.refuse_existing(task, ItemKind::Example, &ids, "is already annotated")
                .await?;
        }
        let mut rows = distinct(rows)?;
        // A retry of a batch that was stored (its answer lost, or indexing cut short
        // after the commit) finds its rows there: identical rows count as written and
        // are indexed again below; the same id with other content is refused.
        let copies = take_stored_copies(&self.store, task, kind, &mut rows).await?;
        let texts = rows
            .iter()
            .map(|(_, r)| embedding_text(&r.text, r.text_pair.as_deref()))
            .collect();
        let vectors = if rows.is_empty() {
            Vec::new()
        } else {
            self.embedder.embed(texts).await?
        };
        let items = rows
            .into_iter()
            .zip(vectors)
            .map(|((row, input), embedding)| {
                let item = NewItem {
                    id: input.id.unwrap_or_default(),
                    text: input.text,
                    text_pair: input.text_pair,
                    label: input.label,
                    embedding,
                };
                (row, item)
            })
            .collect();
        let write = BatchWrite {
            store: self.store.clone(),
            embedder_id: self.embedder_id.clone(),
            task: task.to_owned(),
            kind,
            // The collection is taken (loaded if need be) before the commit, so that
            // the rows reach the index the next request reads, and held until after
            // it, so that it is not unloaded in between.
            collection: match kind {
                ItemKind::Example => Some(self.resident(task).await?),
                ItemKind::PoolItem => None,
            },
            copies,
            items,
        };
        // Stored rows must reach the index even when the caller stops waiting (a client
        // gone, a timeout, a shutdown): the write runs to its end on a task of its own.
        tokio::spawn(write.run())
            .await
            .map_err(|_| TaskError::Aborted("storing a batch"))??;
        if kind == ItemKind::Example {
            self.unload_past_budget(task);
        }
        Ok(ids)
    }

    /// Fails on the first of `ids` that the task already holds as `kind`.
    async fn refuse_existing(
        &self,
        task: &str,
        kind: ItemKind,
        ids: &[String],
        reason: &str,
    ) -> Result<(), TaskError> {
        let existing: HashSet<String> = self
            .store
            .existing_ids(task, kind, ids)
            .await?
            .into_iter()
            .collect();
        match ids.iter().position(|id| existing.contains(id)) {
            Some(row) => Err(TaskError::InvalidRow {
                row,
                message: format!("id `{}` {reason}", ids[row]),
            }),
            None => Ok(()),
        }
    }

    /// Deletes one row; a deleted example is never retrieved again.
    ///
    /// # Errors
    /// When the task or the row does not exist.
    pub async fn delete_item(&self, task: &str, kind: ItemKind, id: &str) -> Result<(), TaskError> {
        self.spec(task).await?;
        let seq = self
            .store
            .delete_item(task, kind, id)
            .await?
            .ok_or_else(|| TaskError::ItemNotFound {
                task: task.to_owned(),
                kind: kind_name(kind),
                id: id.to_owned(),
            })?;
        if kind == ItemKind::Example {
            if let Some(collection) = self.collection(task) {
                collection.remove(seq as usize);
                if collection.index.needs_compaction() {
                    tokio::task::spawn_blocking(move || collection.index.compact());
                }
            }
        }
        Ok(())
    }
}

/// A row of a write, before or after it is embedded.
trait Row {
    /// Its id (every row has one once validated).
    fn id(&self) -> &str;
    /// Its text, pair and label.
    fn content(&self) -> (&str, Option<&str>, Option<&str>);
    /// Whether `stored` holds the same text, pair and label.
    fn same_content(&self, stored: &StoredItem) -> bool {
        self.content()
            == (
                stored.text.as_str(),
                stored.text_pair.as_deref(),
                stored.label.as_deref(),
            )
    }
}

impl Row for ItemInput {
    fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    fn content(&self) -> (&str, Option<&str>, Option<&str>) {
        (&self.text, self.text_pair.as_deref(), self.label.as_deref())
    }
}

impl Row for NewItem {
    fn id(&self) -> &str {
        &self.id
    }

    fn content(&self) -> (&str, Option<&str>, Option<&str>) {
        (&self.text, self.text_pair.as_deref(), self.label.as_deref())
    }
}

/// The batch's rows, each with its place in the batch, those with an id seen before
/// left out (rows without ids and the same content share one: stored once).
fn distinct(rows: Vec<ItemInput>) -> Result<Vec<(usize, ItemInput)>, TaskError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<(usize, ItemInput)> = Vec::with_capacity(rows.len());
    for (row, input) in rows.into_iter().enumerate() {
        match seen.get(input.id()) {
            Some(&first) if kept[first].1.content() == input.content() => {}
            Some(_) => {
                return Err(TaskError::InvalidRow {
                    row,
                    message: format!("id `{}` appears twice in the batch", input.id()),
                })
            }
            None => {
                seen.insert(input.id().to_owned(), kept.len());
                kept.push((row, input));
            }
        }
    }
    Ok(kept)
}

/// An embedded batch on its way into the database and the index.
struct BatchWrite {
    store: Store,
    embedder_id: String,
    task: String,
    kind: ItemKind,
    /// The task's index (examples only).
    collection: Option<Arc<Collection>>,
    /// Rows stored already, to index again.
    copies: Vec<(Example, Vec<f32>)>,
    /// Rows to store, each with its place in the batch.
    items: Vec<(usize, NewItem)>,
}

impl BatchWrite {
    /// Stores the new rows in one transaction, then indexes them with the copies.
    async fn run(mut self) -> Result<(), TaskError> {
        let seqs = match self.insert().await {
            // A retry racing its first try: what the first try committed meanwhile is
            // there now, and is this batch's too.
            Err(TaskError::InvalidRow { .. }) => {
                let copies =
                    take_stored_copies(&self.store, &self.task, self.kind, &mut self.items).await?;
                self.copies.extend(copies);
                self.insert().await?
            }
            other => other?,
        };
        let mut indexed = self.copies;
        indexed.extend(self.items.into_iter().zip(seqs).map(|((_, item), seq)| {
            let example = Example {
                point: seq as usize,
                id: item.id,
                text: item.text,
                text_pair: item.text_pair,
                label: item.label.unwrap_or_default(),
            };
            (example, item.embedding)
        }));
        if let Some(collection) = self.collection {
            // Graph inserts of a large batch take a while: on a blocking thread they
            // leave the async workers free, and searches go on between inserts.
            // Inserting a point the index holds already does nothing.
            tokio::task::spawn_blocking(move || {
                indexed
                    .into_iter()
                    .try_for_each(|(example, embedding)| collection.insert(example, &embedding))
            })
            .await
            .map_err(|_| TaskError::Aborted("indexing a batch"))??;
        }
        Ok(())
    }

    /// Stores the rows in one transaction; their seqs.
    async fn insert(&self) -> Result<Vec<i64>, TaskError> {
        if self.items.is_empty() {
            return Ok(Vec::new());
        }
        // The rows themselves, not copies: a retry stores them again.
        let batch: Vec<&NewItem> = self.items.iter().map(|(_, item)| item).collect();
        match self
            .store
            .insert_items(&self.task, self.kind, &batch, &self.embedder_id)
            .await
        {
            Err(StoreError::DuplicateId { row, id }) => Err(TaskError::InvalidRow {
                row: self.items.get(row).map_or(row, |(row, _)| *row),
                message: format!("id `{id}` already exists"),
            }),
            other => Ok(other?),
        }
    }
}

/// Takes out of `rows` those stored already with the same id, text, pair and label,
/// and answers them as the index wants them; fails on a row whose id is stored with
/// other content.
async fn take_stored_copies<R: Row>(
    store: &Store,
    task: &str,
    kind: ItemKind,
    rows: &mut Vec<(usize, R)>,
) -> Result<Vec<(Example, Vec<f32>)>, TaskError> {
    let ids: Vec<String> = rows.iter().map(|(_, r)| r.id().to_owned()).collect();
    let existing: HashSet<String> = store
        .existing_ids(task, kind, &ids)
        .await?
        .into_iter()
        .collect();
    let mut copies = Vec::new();
    let mut kept = Vec::with_capacity(rows.len());
    for (row, input) in rows.drain(..) {
        if !existing.contains(input.id()) {
            kept.push((row, input));
            continue;
        }
        match store.item(task, kind, input.id()).await? {
            Some(mut item) if input.same_content(&item) => {
                let embedding = std::mem::take(&mut item.embedding);
                copies.push((example_from(item), embedding));
            }
            Some(_) => {
                return Err(TaskError::InvalidRow {
                    row,
                    message: format!("id `{}` already exists with other content", input.id()),
                })
            }
            // Deleted since: stored anew.
            None => kept.push((row, input)),
        }
    }
    *rows = kept;
    Ok(copies)
}
