//! Tasks and their data. The database is the source of truth; every in-memory
//! collection can be rebuilt from it.
//!
//! - `mod.rs`: the catalog and the tasks themselves (create, read, delete).
//! - `spec.rs`: a task's definition and its checks.
//! - `views.rs`: what the catalog takes and answers.
//! - `validate.rs`: the rules of writes and retrievals.
//! - `write.rs`: validate, embed, store in one transaction, index; deletes.
//! - `read.rs`: pages of rows and single rows.
//! - `retrieval.rs`: query embeddings and the choice of demonstrations.
//! - `reembed.rs`: rows of another embedder, re-embedded as they are read.
//! - `collection.rs`: a task's examples in memory with their HNSW index.
//! - `residency.rs`: which tasks are in memory: loaded on first use, unloaded past
//!   the budget.
//! - `replicas.rs`: applying other replicas' writes to the tasks in memory.

mod collection;
mod read;
mod reembed;
mod replicas;
mod residency;
mod retrieval;
mod spec;
mod validate;
mod views;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use collection::{Collection, Example};
pub use replicas::SyncReport;
pub use retrieval::{choose, cover_labels, embedding_text};
pub use spec::{check_name, SpecError, TaskSpec, ValidTask, MAX_LABELS};
pub use validate::{check_k, check_strategy, MAX_BATCH, MAX_ID_BYTES, MAX_K, MAX_TEXT_BYTES};
pub use views::{Demonstration, ItemInput, ItemView, Page, RetrieveQuery, TaskView};

use crate::embed::{EmbedError, EmbedderHandle};
use crate::index::IndexError;
use crate::store::{ExamplesVersion, ItemKind, Store, StoreError};
use residency::Residency;
use retrieval::example_from;

/// What can go wrong with a task operation.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No task of that name.
    #[error("task `{0}` does not exist")]
    TaskNotFound(String),
    /// No example or pool item of that id.
    #[error("{kind} `{id}` does not exist in task `{task}`")]
    ItemNotFound {
        /// The task.
        task: String,
        /// "example" or "pool item".
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The task definition is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// A row of a batch is invalid; nothing of the batch was stored.
    #[error("row {row}: {message}")]
    InvalidRow {
        /// Index of the row in the batch.
        row: usize,
        /// What is wrong.
        message: String,
    },
    /// A batch is empty or too large.
    #[error("{0}")]
    InvalidBatch(String),
    /// A request parameter is out of range.
    #[error("`{field}`: {message}")]
    InvalidParameter {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Retrieval needs annotated examples and the task has none.
    #[error("task `{0}` has no annotated examples yet: POST some to /v1/tasks/{0}/examples")]
    NoExamples(String),
    /// The change contradicts stored data.
    #[error("{0}")]
    Conflict(String),
    /// Work handed to a blocking thread died.
    #[error("{0} was aborted")]
    Aborted(&'static str),
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
    /// The embedder failed or is overloaded.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// A stored embedding could not be indexed.
    #[error("index: {0}")]
    Index(#[from] IndexError),
}

impl From<StoreError> for TaskError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::DuplicateId { row, id } => Self::InvalidRow {
                row,
                message: format!("id `{id}` already exists"),
            },
            other => Self::Store(other),
        }
    }
}

fn kind_name(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Example => "example",
        ItemKind::PoolItem => "pool item",
    }
}

/// Every task's data: the database, the embedder, and the in-memory collections of
/// the tasks in use.
pub struct Catalog {
    store: Store,
    embedder: EmbedderHandle,
    embedder_id: String,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    residency: Residency,
    /// Each resident task's examples version as of its load or last replica sync.
    synced_versions: std::sync::Mutex<HashMap<String, ExamplesVersion>>,
}

impl Catalog {
    /// A catalog over the database's tasks, none of them in memory yet: each is loaded
    /// on its first use. Holds every task it loads until
    /// [`Catalog::with_resident_examples`] sets a budget.
    pub fn new(store: Store, embedder: EmbedderHandle) -> Self {
        let embedder_id = embedder.name().to_owned();
        Self {
            store,
            embedder,
            embedder_id,
            collections: RwLock::new(HashMap::new()),
            residency: Residency::new(usize::MAX),
            synced_versions: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Unloads the least recently used tasks while more than `budget` examples are in
    /// memory over all tasks.
    #[must_use]
    pub fn with_resident_examples(mut self, budget: usize) -> Self {
        self.residency = Residency::new(budget);
        self
    }

    /// The database, for the modules that keep their own records in it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Closes the database connections.
    pub async fn close(&self) {
        self.store.close().await;
    }

    fn collections_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Collection>>> {
        // Each update is one insert or remove, so a poisoned map is still whole.
        self.collections.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-memory collection of a task, if it is resident.
    pub fn collection(&self, task: &str) -> Option<Arc<Collection>> {
        self.collections
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(task)
            .cloned()
    }

    async fn spec(&self, task: &str) -> Result<TaskSpec, TaskError> {
        let row = self
            .store
            .task(task)
            .await?
            .ok_or_else(|| TaskError::TaskNotFound(task.to_owned()))?;
        serde_json::from_str(&row.spec)
            .map_err(|e| TaskError::Store(StoreError::Corrupt(format!("task `{task}`: {e}"))))
    }

    fn view(row: crate::store::TaskRow) -> Result<TaskView, TaskError> {
        let spec = serde_json::from_str(&row.spec).map_err(|e| {
            TaskError::Store(StoreError::Corrupt(format!("task `{}`: {e}", row.name)))
        })?;
        Ok(TaskView {
            name: row.name,
            spec,
            examples: row.examples,
            pool: row.pool,
        })
    }

    /// Creates or replaces a task; answers it and whether it was created.
    ///
    /// # Errors
    /// When the name or definition is invalid, or stored examples use a label that the
    /// new definition drops.
    pub async fn put_task(
        &self,
        name: &str,
        spec: TaskSpec,
    ) -> Result<(TaskView, bool), TaskError> {
        check_name(name)?;
        let valid = spec.validate()?;
        if valid.spec.is_classification() {
            let dropped: Vec<String> = self
                .store
                .labels_in_use(name)
                .await?
                .into_iter()
                .filter(|l| !valid.spec.labels.contains(l))
                .collect();
            if !dropped.is_empty() {
                return Err(TaskError::Conflict(format!(
                    "stored examples use labels the new definition drops: {}; delete them first",
                    dropped.join(", ")
                )));
            }
        }
        let json = serde_json::to_string(&valid.spec)
            .map_err(|e| TaskError::Store(StoreError::Corrupt(e.to_string())))?;
        let created = self.store.put_task(name, &json).await?;
        Ok((self.task(name).await?, created))
    }

    /// The task with its counts.
    ///
    /// # Errors
    /// When the task does not exist.
    pub async fn task(&self, name: &str) -> Result<TaskView, TaskError> {
        let row = self
            .store
            .task(name)
            .await?
            .ok_or_else(|| TaskError::TaskNotFound(name.to_owned()))?;
        Self::view(row)
    }

    /// Every task, by name.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn tasks(&self) -> Result<Vec<TaskView>, TaskError> {
        self.store
            .tasks()
            .await?
            .into_iter()
            .map(Self::view)
            .collect()
    }

    /// Deletes a task and everything it holds.
    ///
    /// # Errors
    /// When the task does not exist.
    pub async fn delete_task(&self, name: &str) -> Result<(), TaskError> {
        if !self.store.delete_task(name).await? {
            return Err(TaskError::TaskNotFound(name.to_owned()));
        }
        self.collections_mut().remove(name);
        self.residency.forget(name);
        self.record_resident();
        Ok(())
    }

    /// The task's checked definition.
    ///
    /// # Errors
    /// When the task does not exist.
    pub async fn definition(&self, task: &str) -> Result<ValidTask, TaskError> {
        Ok(self.spec(task).await?.validate()?)
    }
}
