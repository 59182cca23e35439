//! Task rows: a name and its definition, kept as JSON.

use sqlx::Row;

use super::{now, Store, StoreError};

/// A task as stored.
#[derive(Debug, Clone)]
pub struct TaskRow {
    /// The task's name.
    pub name: String,
    /// The task definition as JSON.
    pub spec: String,
    /// Annotated examples.
    pub examples: i64,
    /// Unlabeled pool items.
    pub pool: i64,
}

const SELECT_TASK: &str = "SELECT t.name, t.spec, \
     (SELECT COUNT(*) FROM examples e WHERE e.task = t.name) AS examples, \
     (SELECT COUNT(*) FROM pool_items p WHERE p.task = t.name) AS pool \
     FROM tasks t";

fn task_row(row: &sqlx::any::AnyRow) -> Result<TaskRow, sqlx::Error> {
    Ok(TaskRow {
        name: row.try_get("name")?,
        spec: row.try_get("spec")?,
        examples: row.try_get("examples")?,
        pool: row.try_get("pool")?,
    })
}

impl Store {
    /// Creates or replaces a task; answers whether it was created.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn put_task(&self, name: &str, spec: &str) -> Result<bool, StoreError> {
        let now = now();
        // Insert first, then update: two replicas creating the same task at once both
        // succeed (the second insert waits for the first and does nothing), where an
        // update-then-insert lets both inserts run and one fail on the primary key.
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query(
            "INSERT INTO tasks (name, spec, created_at, updated_at, incarnation) \
             VALUES ($1, $2, $3, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(spec)
        .bind(now)
        .bind(rand::random::<i64>())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !created {
            sqlx::query("UPDATE tasks SET spec = $1, updated_at = $2 WHERE name = $3")
                .bind(spec)
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    /// The task named `name`, with its counts.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn task(&self, name: &str) -> Result<Option<TaskRow>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_TASK} WHERE t.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(task_row).transpose()?)
    }

    /// Every task, by name.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT_TASK} ORDER BY t.name"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(task_row).collect::<Result<_, _>>()?)
    }

    /// Deletes a task with its examples, pool, selections and jobs; answers whether it
    /// existed.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_task(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Explicit deletes, so that no database setting (SQLite's foreign_keys) matters.
        for table in [
            "examples",
            "pool_items",
            "selections",
            "jobs",
            "example_changes",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE task = $1"))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM tasks WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// The distinct labels that the task's examples use.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn labels_in_use(&self, task: &str) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT label FROM examples WHERE task = $1 ORDER BY label")
                .bind(task)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("label"))
            .collect::<Result<_, _>>()?)
    }
}
