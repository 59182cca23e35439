//! Annotated examples and unlabeled pool items: texts with their embeddings.
//!
//! Both tables share one shape (pool items have no label), so one set of queries
//! serves both, keyed by [`ItemKind`].

use sqlx::Row;

use super::{now, Store, StoreError};

/// Which table a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// An annotated example (has a label).
    Example,
    /// An unlabeled pool item waiting for selective annotation.
    PoolItem,
}

impl ItemKind {
    fn table(self) -> &'static str {
        match self {
            Self::Example => "examples",
            Self::PoolItem => "pool_items",
        }
    }

    fn columns(self) -> &'static str {
        match self {
            Self::Example => "seq, id, text, text_pair, label, embedding, embedder",
            Self::PoolItem => "seq, id, text, text_pair, NULL AS label, embedding, embedder",
        }
    }
}

/// A row to insert.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// The caller's id, unique within the task.
    pub id: String,
    /// The text.
    pub text: String,
    /// The second text of a pair task, if any.
    pub text_pair: Option<String>,
    /// The label (examples only).
    pub label: Option<String>,
    /// The unit-length embedding.
    pub embedding: Vec<f32>,
}

/// A stored row.
#[derive(Debug, Clone)]
pub struct StoredItem {
    /// Insertion order, unique across the table; also the index's point id.
    pub seq: i64,
    /// The caller's id.
    pub id: String,
    /// The text.
    pub text: String,
    /// The second text of a pair task, if any.
    pub text_pair: Option<String>,
    /// The label (examples only).
    pub label: Option<String>,
    /// The stored embedding.
    pub embedding: Vec<f32>,
    /// The embedder that made it.
    pub embedder: String,
}

fn to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt(format!(
            "embedding of {} bytes is not a whole number of f32",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn stored_item(row: &sqlx::any::AnyRow) -> Result<StoredItem, StoreError> {
    let bytes: Vec<u8> = row.try_get("embedding")?;
    Ok(StoredItem {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        text: row.try_get("text")?,
        text_pair: row.try_get("text_pair")?,
        label: row.try_get("label")?,
        embedding: from_bytes(&bytes)?,
        embedder: row.try_get("embedder")?,
    })
}

/// Values bound per `IN (...)` query: well under SQLite's and PostgreSQL's limits.
const IN_LIST_CHUNK: usize = 500;

/// `$2, $3, ...`: the placeholders of `count` values bound after the task (`$1`).
fn placeholders_after_task(count: usize) -> String {
    (2..count + 2)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

impl Store {
    /// Inserts a batch in one transaction and answers each row's `seq`.
    ///
    /// Examples whose ids are in the pool leave the pool in the same transaction.
    ///
    /// # Errors
    /// [`StoreError::DuplicateId`] naming the first row whose id exists; nothing of the
    /// batch is stored then.
    pub async fn insert_items(
        &self,
        task: &str,
        kind: ItemKind,
        items: &[&NewItem],
        embedder: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let now = now();
        let mut tx = self.pool.begin().await?;
        let mut seqs = Vec::with_capacity(items.len());
        let insert = match kind {
            ItemKind::Example => {
                "INSERT INTO examples (task, id, text, text_pair, label, embedding, embedder, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq"
            }
            ItemKind::PoolItem => {
                "INSERT INTO pool_items (task, id, text, text_pair, embedding, embedder, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq"
            }
        };
        for (row, item) in items.iter().enumerate() {
            let mut query = sqlx::query(insert)
                .bind(task)
                .bind(&item.id)
                .bind(&item.text)
                .bind(item.text_pair.clone());
            if kind == ItemKind::Example {
                query = query.bind(item.label.clone().unwrap_or_default());
            }
            let inserted = query
                .bind(to_bytes(&item.embedding))
                .bind(embedder)
                .bind(now)
                .fetch_one(&mut *tx)
                .await;
            match inserted {
                Ok(r) => seqs.push(r.try_get("seq")?),
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::DuplicateId {
                        row,
                        id: item.id.clone(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
            if kind == ItemKind::Example {
                sqlx::query("DELETE FROM pool_items WHERE task = $1 AND id = $2")
                    .bind(task)
                    .bind(&item.id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if kind == ItemKind::Example {
            record_example_change(&mut tx, task, &seqs, &[]).await?;
        }
        tx.commit().await?;
        Ok(seqs)
    }

    /// Which of `ids` the task already holds as `kind`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn existing_ids(
        &self,
        task: &str,
        kind: ItemKind,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(IN_LIST_CHUNK) {
            let sql = format!(
                "SELECT id FROM {} WHERE task = $1 AND id IN ({})",
                kind.table(),
                placeholders_after_task(chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(task);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await? {
                found.push(row.try_get("id")?);
            }
        }
        Ok(found)
    }

    /// A page of rows after `after_seq`, in insertion order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn items_page(
        &self,
        task: &str,
        kind: ItemKind,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredItem>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE task = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            kind.columns(),
            kind.table()
        );
        let rows = sqlx::query(&sql)
            .bind(task)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_item).collect()
    }

    /// Every row of a task, in insertion order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn all_items(
        &self,
        task: &str,
        kind: ItemKind,
    ) -> Result<Vec<StoredItem>, StoreError> {
        self.items_page(task, kind, 0, i64::MAX).await
    }

    /// The `seq` of every row of a task, ascending.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn item_seqs(&self, task: &str, kind: ItemKind) -> Result<Vec<i64>, StoreError> {
        let sql = format!(
            "SELECT seq FROM {} WHERE task = $1 ORDER BY seq",
            kind.table()
        );
        let rows = sqlx::query(&sql).bind(task).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| row.try_get("seq").map_err(StoreError::from))
            .collect()
    }

    /// The rows of a task whose `seq` is one of `seqs` (those still stored), in order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn items_by_seq(
        &self,
        task: &str,
        kind: ItemKind,
        seqs: &[i64],
    ) -> Result<Vec<StoredItem>, StoreError> {
        let mut items = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(IN_LIST_CHUNK) {
            let sql = format!(
                "SELECT {} FROM {} WHERE task = $1 AND seq IN ({}) ORDER BY seq",
                kind.columns(),
                kind.table(),
                placeholders_after_task(chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(task);
            for seq in chunk {
                query = query.bind(*seq);
            }
            for row in query.fetch_all(&self.pool).await? {
                items.push(stored_item(&row)?);
            }
        }
        Ok(items)
    }

    /// One row by the caller's id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn item(
        &self,
        task: &str,
        kind: ItemKind,
        id: &str,
    ) -> Result<Option<StoredItem>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE task = $1 AND id = $2",
            kind.columns(),
            kind.table()
        );
        let row = sqlx::query(&sql)
            .bind(task)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(stored_item).transpose()
    }

    /// Deletes one row; answers its `seq` when it existed.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_item(
        &self,
        task: &str,
        kind: ItemKind,
        id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let sql = format!(
            "DELETE FROM {} WHERE task = $1 AND id = $2 RETURNING seq",
            kind.table()
        );
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&sql)
            .bind(task)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let seq: Option<i64> = row.map(|r| r.try_get("seq")).transpose()?;
        if let (Some(seq), ItemKind::Example) = (seq, kind) {
            record_example_change(&mut tx, task, &[], &[seq]).await?;
        }
        tx.commit().await?;
        Ok(seq)
    }

    /// The changes to the task's examples after `version` up to `until`, in order, if
    /// the log still holds every one of them; `None` when some were pruned.
    ///
    /// # Errors
    /// When the database fails or a logged change is not well-formed.
    pub async fn example_changes(
        &self,
        task: &str,
        version: i64,
        until: i64,
    ) -> Result<Option<Vec<ExampleChange>>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, added, removed FROM example_changes \
             WHERE task = $1 AND version > $2 AND version <= $3 ORDER BY version",
        )
        .bind(task)
        .bind(version)
        .bind(until)
        .fetch_all(&self.pool)
        .await?;
        let seqs = |text: String| {
            serde_json::from_str::<Vec<i64>>(&text)
                .map_err(|e| StoreError::Corrupt(format!("example change of `{task}`: {e}")))
        };
        let mut changes = Vec::with_capacity(rows.len());
        for (expected, row) in (version + 1..).zip(&rows) {
            if row.try_get::<i64, _>("version")? != expected {
                return Ok(None);
            }
            changes.push(ExampleChange {
                added: seqs(row.try_get("added")?)?,
                removed: seqs(row.try_get("removed")?)?,
            });
        }
        let complete = i64::try_from(changes.len()).is_ok_and(|n| version + n == until);
        Ok(complete.then_some(changes))
    }

    /// Every task's examples version (see [`record_example_change`]) with the task's
    /// incarnation, by name: a task deleted and made again restarts its count.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn examples_versions(&self) -> Result<Vec<(String, ExamplesVersion)>, StoreError> {
        let rows = sqlx::query("SELECT name, incarnation, examples_version FROM tasks")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let version = ExamplesVersion {
                    incarnation: r.try_get("incarnation")?,
                    changes: r.try_get("examples_version")?,
                };
                Ok((r.try_get("name")?, version))
            })
            .collect()
    }

    /// One task's examples version; `None` when the task does not exist.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn examples_version(
        &self,
        task: &str,
    ) -> Result<Option<ExamplesVersion>, StoreError> {
        let row = sqlx::query("SELECT incarnation, examples_version FROM tasks WHERE name = $1")
            .bind(task)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(ExamplesVersion {
                incarnation: r.try_get("incarnation")?,
                changes: r.try_get("examples_version")?,
            })
        })
        .transpose()
    }

    /// Replaces the embeddings of rows made by another embedder.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn update_embeddings(
        &self,
        kind: ItemKind,
        updates: &[(i64, Vec<f32>)],
        embedder: &str,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE {} SET embedding = $1, embedder = $2 WHERE seq = $3",
            kind.table()
        );
        let mut tx = self.pool.begin().await?;
        for (seq, embedding) in updates {
            sqlx::query(&sql)
                .bind(to_bytes(embedding))
                .bind(embedder)
                .bind(*seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Changes to a task's examples kept in the log; a replica further behind compares
/// every seq instead.
const KEPT_CHANGES: i64 = 1000;

/// Where a task's examples stand: which task of its name, and how many changes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExamplesVersion {
    /// Drawn at random when the task was created.
    pub incarnation: i64,
    /// Changes made to its examples since.
    pub changes: i64,
}

/// One logged change to a task's examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleChange {
    /// The seqs it stored.
    pub added: Vec<i64>,
    /// The seqs it deleted.
    pub removed: Vec<i64>,
}

/// Counts a change to the task's examples and logs what it did, in the transaction
/// that makes it: replicas compare the count to learn, in one read, whether the task's
/// examples changed, and read the log to learn how. The count's row lock orders the
/// task's writers, so the versions are in commit order.
async fn record_example_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    task: &str,
    added: &[i64],
    removed: &[i64],
) -> Result<(), StoreError> {
    let version: i64 = sqlx::query(
        "UPDATE tasks SET examples_version = examples_version + 1 WHERE name = $1 \
         RETURNING examples_version",
    )
    .bind(task)
    .fetch_one(&mut **tx)
    .await?
    .try_get("examples_version")?;
    let json = |seqs: &[i64]| serde_json::to_string(seqs).unwrap_or_else(|_| "[]".to_owned());
    sqlx::query(
        "INSERT INTO example_changes (task, version, added, removed) VALUES ($1, $2, $3, $4)",
    )
    .bind(task)
    .bind(version)
    .bind(json(added))
    .bind(json(removed))
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM example_changes WHERE task = $1 AND version <= $2")
        .bind(task)
        .bind(version - KEPT_CHANGES)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_round_trip_through_bytes() {
        let v = vec![0.5f32, -1.25, 3.0e-7];
        assert_eq!(from_bytes(&to_bytes(&v)).expect("decodes"), v);
        assert!(from_bytes(&[0, 1, 2]).is_err());
    }
}
