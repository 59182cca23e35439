//! What the catalog takes and answers: tasks, rows, pages, retrieval queries and the
//! demonstrations they find.

use std::sync::Arc;

use super::collection::Example;
use super::spec::TaskSpec;
use crate::retrieve::Strategy;
use crate::store::StoredItem;

/// A task as answered to clients.
#[derive(Debug, Clone)]
pub struct TaskView {
    /// The task's name.
    pub name: String,
    /// Its definition.
    pub spec: TaskSpec,
    /// Annotated examples.
    pub examples: i64,
    /// Unlabeled pool items.
    pub pool: i64,
}

/// A row to write, as the client sent it.
#[derive(Debug, Clone)]
pub struct ItemInput {
    /// The caller's id; generated when absent.
    pub id: Option<String>,
    /// The text.
    pub text: String,
    /// The second text of a pair task.
    pub text_pair: Option<String>,
    /// The label (examples only).
    pub label: Option<String>,
}

/// A stored row as answered to clients.
#[derive(Debug, Clone)]
pub struct ItemView {
    /// The caller's id.
    pub id: String,
    /// The text.
    pub text: String,
    /// The second text, if any.
    pub text_pair: Option<String>,
    /// The label (examples only).
    pub label: Option<String>,
}

impl From<StoredItem> for ItemView {
    fn from(item: StoredItem) -> Self {
        Self {
            id: item.id,
            text: item.text,
            text_pair: item.text_pair,
            label: item.label,
        }
    }
}

/// A page of rows and where the next page starts.
#[derive(Debug, Clone)]
pub struct Page {
    /// The rows.
    pub items: Vec<ItemView>,
    /// Cursor of the next page, when there is one.
    pub next_cursor: Option<String>,
}

/// A retrieval request.
#[derive(Debug, Clone)]
pub struct RetrieveQuery {
    /// The query text.
    pub text: String,
    /// The query's second text, if any.
    pub text_pair: Option<String>,
    /// How many demonstrations.
    pub k: usize,
    /// How to choose them.
    pub strategy: Strategy,
}

/// A retrieved example and its similarity to the query.
#[derive(Debug, Clone)]
pub struct Demonstration {
    /// The example.
    pub example: Arc<Example>,
    /// Cosine similarity to the query.
    pub similarity: f32,
}
