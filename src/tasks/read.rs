//! The read path of rows: pages in insertion order, and one row by id.

use super::validate::MAX_BATCH;
use super::views::{ItemView, Page};
use super::{kind_name, Catalog, TaskError};
use crate::store::ItemKind;

impl Catalog {
    /// A page of rows in insertion order, starting after `cursor`.
    ///
    /// # Errors
    /// When the task does not exist or the cursor or limit is invalid.
    pub async fn items_page(
        &self,
        task: &str,
        kind: ItemKind,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, TaskError> {
        self.spec(task).await?;
        let after = match cursor {
            None => 0,
            Some(c) => c.parse::<i64>().map_err(|_| TaskError::InvalidParameter {
                field: "cursor",
                message: format!("`{c}` is not a cursor from a previous page"),
            })?,
        };
        if !(1..=MAX_BATCH).contains(&limit) {
            return Err(TaskError::InvalidParameter {
                field: "limit",
                message: format!("{limit} is out of range: give 1 to {MAX_BATCH}"),
            });
        }
        let mut rows = self
            .store
            .items_page(task, kind, after, limit as i64 + 1)
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = more
            .then(|| rows.last().map(|r| r.seq.to_string()))
            .flatten();
        Ok(Page {
            items: rows.into_iter().map(ItemView::from).collect(),
            next_cursor,
        })
    }

    /// One row by id.
    ///
    /// # Errors
    /// When the task or the row does not exist.
    pub async fn item(&self, task: &str, kind: ItemKind, id: &str) -> Result<ItemView, TaskError> {
        self.spec(task).await?;
        self.store
            .item(task, kind, id)
            .await?
            .map(ItemView::from)
            .ok_or_else(|| TaskError::ItemNotFound {
                task: task.to_owned(),
                kind: kind_name(kind),
                id: id.to_owned(),
            })
    }
}
