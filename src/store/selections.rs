//! Selective-annotation runs: what was asked (method, budget, seed, the pool as it was)
//! and what was chosen, as JSON, with a state.

use sqlx::Row;

use super::{now, Store, StoreError};

/// A stored selection.
#[derive(Debug, Clone)]
pub struct SelectionRow {
    /// The selection's id.
    pub id: String,
    /// The method's name.
    pub method: String,
    /// `awaiting_annotation` or `complete`.
    pub state: String,
    /// The request, as JSON.
    pub request: String,
    /// The result so far, as JSON.
    pub result: String,
}

// The table's lease columns are left from the versions whose stage 2 ran on the
// selection's row; it runs as a job now (`crate::select::selections`).
const SELECT_SELECTION: &str = "SELECT id, method, state, request, result FROM selections";

fn selection_row(row: &sqlx::any::AnyRow) -> Result<SelectionRow, sqlx::Error> {
    Ok(SelectionRow {
        id: row.try_get("id")?,
        method: row.try_get("method")?,
        state: row.try_get("state")?,
        request: row.try_get("request")?,
        result: row.try_get("result")?,
    })
}

impl Store {
    /// Stores a new selection, or replaces one with the same id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn put_selection(&self, task: &str, row: &SelectionRow) -> Result<(), StoreError> {
        let now = now();
        // One statement, so that replicas writing the same selection at once never
        // both insert.
        sqlx::query(
            "INSERT INTO selections (task, id, method, state, request, result, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (task, id) DO UPDATE \
             SET state = excluded.state, result = excluded.result, updated_at = excluded.updated_at",
        )
        .bind(task)
        .bind(&row.id)
        .bind(&row.method)
        .bind(&row.state)
        .bind(&row.request)
        .bind(&row.result)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One selection by id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn selection(
        &self,
        task: &str,
        id: &str,
    ) -> Result<Option<SelectionRow>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_SELECTION} WHERE task = $1 AND id = $2"))
            .bind(task)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(selection_row).transpose()?)
    }

    /// The task's selections made with `method`, oldest first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn selections_by_method(
        &self,
        task: &str,
        method: &str,
    ) -> Result<Vec<SelectionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_SELECTION} WHERE task = $1 AND method = $2 ORDER BY created_at, id"
        ))
        .bind(task)
        .bind(method)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(selection_row).collect::<Result<_, _>>()?)
    }
}
