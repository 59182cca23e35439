//! The write path: validate a batch, embed it, store it in one transaction, index it;
//! and deletes, which leave the index at once.

use std::collections::HashSet;

use super::collection::Example;
use super::retrieval::{embedding_text, example_from};
use super::validate::validate_rows;
use super::views::ItemInput;
use super::{kind_name, Catalog, TaskError};
use crate::store::{ItemKind, NewItem, StoredItem};

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
        // A retry of a batch that was stored (its answer lost, or indexing cut short
        // after the commit) finds its rows there: identical rows count as written and
        // are indexed again below; the same id with other content is refused.
        let copies = self.stored_copies(task, kind, &rows).await?;
        let copied: HashSet<&str> = copies.iter().map(|c| c.id.as_str()).collect();
        let rows: Vec<ItemInput> = rows
            .into_iter()
            .filter(|r| !r.id.as_deref().is_some_and(|id| copied.contains(id)))
            .collect();

        let mut indexed: Vec<(Example, Vec<f32>)> = copies
            .into_iter()
            .map(|mut item| {
                let embedding = std::mem::take(&mut item.embedding);
                (example_from(item), embedding)
            })
            .collect();
        if !rows.is_empty() {
            let texts = rows
                .iter()
                .map(|r| embedding_text(&r.text, r.text_pair.as_deref()))
                .collect();
            let vectors = self.embedder.embed(texts).await?;
            let items: Vec<NewItem> = rows
                .into_iter()
                .zip(vectors)
                .map(|(row, embedding)| NewItem {
                    id: row.id.unwrap_or_default(),
                    text: row.text,
                    text_pair: row.text_pair,
                    label: row.label,
                    embedding,
                })
                .collect();
            let seqs = self
                .store
                .insert_items(task, kind, &items, &self.embedder_id)
                .await?;
            indexed.extend(items.into_iter().zip(seqs).map(|(item, seq)| {
                let example = Example {
                    point: seq as usize,
                    id: item.id,
                    text: item.text,
                    text_pair: item.text_pair,
                    label: item.label.unwrap_or_default(),
                };
                (example, item.embedding)
            }));
        }
        if kind == ItemKind::Example {
            if let Some(collection) = self.collection(task) {
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
        }
        Ok(ids)
    }

    /// The stored rows of the batch whose id, text, pair and label are all the same as
    /// the batch's; fails on a row whose id is stored with other content.
    async fn stored_copies(
        &self,
        task: &str,
        kind: ItemKind,
        rows: &[ItemInput],
    ) -> Result<Vec<StoredItem>, TaskError> {
        let ids: Vec<String> = rows.iter().filter_map(|r| r.id.clone()).collect();
        let existing: HashSet<String> = self
            .store
            .existing_ids(task, kind, &ids)
            .await?
            .into_iter()
            .collect();
        let mut copies = Vec::new();
        for (row, input) in rows.iter().enumerate() {
            let Some(id) = input.id.as_deref().filter(|id| existing.contains(*id)) else {
                continue;
            };
            match self.store.item(task, kind, id).await? {
                Some(item)
                    if item.text == input.text
                        && item.text_pair == input.text_pair
                        && item.label == input.label =>
                {
                    copies.push(item);
                }
                Some(_) => {
                    return Err(TaskError::InvalidRow {
                        row,
                        message: format!("id `{id}` already exists with other content"),
                    })
                }
                // Deleted since: stored anew.
                None => {}
            }
        }
        Ok(copies)
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
