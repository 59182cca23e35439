//! Re-embedding as rows are read: examples when their task is loaded, the pool when a
//! selection reads it. Rows that another embedder made get this one's vectors, in the
//! database too, so that a later read with the same embedder embeds nothing.

use super::{embedding_text, kind_name, Catalog, TaskError};
use crate::store::{ItemKind, StoredItem};

/// Texts embedded per call while re-embedding.
const REEMBED_BATCH: usize = 256;

impl Catalog {
    /// The task's pool, with embeddings from the current embedder.
    ///
    /// # Errors
    /// When the database or the embedder fails.
    pub async fn pool(&self, task: &str) -> Result<Vec<StoredItem>, TaskError> {
        self.reembed_stale(task, ItemKind::PoolItem).await
    }

    /// The task's rows of `kind`, with embeddings from the current embedder.
    pub(super) async fn reembed_stale(
        &self,
        task: &str,
        kind: ItemKind,
    ) -> Result<Vec<StoredItem>, TaskError> {
        let mut items = self.store.all_items(task, kind).await?;
        let stale: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| item.embedder != self.embedder_id)
            .map(|(i, _)| i)
            .collect();
        if stale.is_empty() {
            return Ok(items);
        }
        tracing::info!(
            task,
            kind = kind_name(kind),
            rows = stale.len(),
            embedder = %self.embedder_id,
            "re-embedding rows made by another embedder"
        );
        for (done, chunk) in stale.chunks(REEMBED_BATCH).enumerate() {
            let texts = chunk
                .iter()
                .map(|&i| embedding_text(&items[i].text, items[i].text_pair.as_deref()))
                .collect();
            let vectors = self.embedder.embed(texts).await?;
            let updates: Vec<(i64, Vec<f32>)> = chunk
                .iter()
                .zip(vectors)
                .map(|(&i, v)| (items[i].seq, v))
                .collect();
            self.store
                .update_embeddings(kind, &updates, &self.embedder_id)
                .await?;
            for (&i, (_, vector)) in chunk.iter().zip(updates) {
                items[i].embedding = vector;
                items[i].embedder.clone_from(&self.embedder_id);
            }
            tracing::info!(
                task,
                done = (done * REEMBED_BATCH + chunk.len()),
                of = stale.len(),
                "re-embedding"
            );
        }
        Ok(items)
    }
}
