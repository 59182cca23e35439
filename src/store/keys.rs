//! API key rows: a key's hash, never the key, with its scope and tasks.

use sqlx::Row;

use super::{now, Store, StoreError};

/// An API key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// The key's public id.
    pub id: String,
    /// The SHA-256 of the key, as hex.
    pub hash: String,
    /// What the key is for, as its creator wrote it.
    pub name: String,
    /// `read`, `write` or `admin`.
    pub scope: String,
    /// The tasks the key is limited to, as a JSON array; `None` for every task.
    pub tasks: Option<String>,
    /// Seconds since the epoch when it was created.
    pub created_at: i64,
    /// Seconds since the epoch when it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

fn key_row(row: &sqlx::any::AnyRow) -> Result<KeyRow, sqlx::Error> {
    Ok(KeyRow {
        id: row.try_get("id")?,
        hash: row.try_get("hash")?,
        name: row.try_get("name")?,
        scope: row.try_get("scope")?,
        tasks: row.try_get("tasks")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// Stores a key unless one with the same hash exists; answers whether it was added.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn add_key(&self, key: &KeyRow) -> Result<bool, StoreError> {
        let added = sqlx::query(
            "INSERT INTO api_keys (id, hash, name, scope, tasks, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&key.id)
        .bind(&key.hash)
        .bind(&key.name)
        .bind(&key.scope)
        .bind(key.tasks.as_deref())
        .bind(key.created_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(added == 1)
    }

    /// Every key ever created, revoked ones included, oldest first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, hash, name, scope, tasks, created_at, revoked_at \
             FROM api_keys ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(key_row).collect::<Result<_, _>>()?)
    }

    /// Marks the key `id` revoked; answers whether a live key had that id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let revoked =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now())
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(revoked == 1)
    }
}
