//! Tasks and their data: the write path (validate, embed, store in one transaction,
//! index) and the read paths (pages, retrieval). The database is the source of truth;
//! every in-memory collection can be rebuilt from it.

mod collection;
mod replicas;
mod spec;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

pub use collection::{Collection, Example};
pub use replicas::SyncReport;
pub use spec::{check_name, SpecError, TaskSpec, ValidTask, MAX_LABELS};

use crate::embed::{EmbedError, EmbedderHandle};
use crate::index::IndexError;
use crate::retrieve::{self, Candidate, Strategy, MMR_CANDIDATE_FACTOR};
use crate::store::{ItemKind, NewItem, Store, StoreError, StoredItem};

/// The most rows one write may carry.
pub const MAX_BATCH: usize = 1000;
/// The longest text (and text pair) accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// The longest caller id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The most demonstrations one retrieval may ask for.
pub const MAX_K: usize = 100;
/// Texts embedded per call while re-embedding at start-up.
const REEMBED_BATCH: usize = 256;

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

/// The text that is embedded for an input: pairs are joined by a newline.
pub fn embedding_text(text: &str, text_pair: Option<&str>) -> String {
    match text_pair {
        Some(pair) => format!("{text}\n{pair}"),
        None => text.to_owned(),
    }
}

fn kind_name(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Example => "example",
        ItemKind::PoolItem => "pool item",
    }
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn check_text(row: usize, field: &str, text: &str) -> Result<(), TaskError> {
    if text.trim().is_empty() {
        return Err(TaskError::InvalidRow {
            row,
            message: format!("`{field}` is empty"),
        });
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(TaskError::InvalidRow {
            row,
            message: format!(
                "`{field}` has {} bytes; at most {MAX_TEXT_BYTES}",
                text.len()
            ),
        });
    }
    Ok(())
}

fn check_id(row: usize, id: &str) -> Result<(), TaskError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.contains('/')
        && !id.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(TaskError::InvalidRow {
            row,
            message: format!(
                "id `{id}` is invalid: give 1 to {MAX_ID_BYTES} bytes without `/` or control characters"
            ),
        })
    }
}

/// Checks a batch against the task and gives every row an id.
fn validate_rows(
    spec: &TaskSpec,
    kind: ItemKind,
    rows: Vec<ItemInput>,
) -> Result<Vec<ItemInput>, TaskError> {
    if rows.is_empty() {
        return Err(TaskError::InvalidBatch("the batch is empty".into()));
    }
    if rows.len() > MAX_BATCH {
        let field = match kind {
            ItemKind::Example => "examples",
            ItemKind::PoolItem => "items",
        };
        return Err(TaskError::InvalidBatch(format!(
            "`{field}`: {} rows given; at most {MAX_BATCH} per request",
            rows.len()
        )));
    }
    let mut seen = HashSet::new();
    rows.into_iter()
        .enumerate()
        .map(|(row, mut item)| {
            check_text(row, "text", &item.text)?;
            if let Some(pair) = &item.text_pair {
                check_text(row, "text_pair", pair)?;
            }
            let id = item.id.take().unwrap_or_else(new_id);
            check_id(row, &id)?;
            if !seen.insert(id.clone()) {
                return Err(TaskError::InvalidRow {
                    row,
                    message: format!("id `{id}` appears twice in the batch"),
                });
            }
            item.id = Some(id);
            match (kind, &item.label) {
                (ItemKind::Example, None) => Err(TaskError::InvalidRow {
                    row,
                    message: "`label` is missing".into(),
                }),
                (ItemKind::Example, Some(label)) if label.trim().is_empty() => {
                    Err(TaskError::InvalidRow {
                        row,
                        message: "`label` is empty".into(),
                    })
                }
                (ItemKind::Example, Some(label))
                    if spec.is_classification() && !spec.labels.contains(label) =>
                {
                    Err(TaskError::InvalidRow {
                        row,
                        message: format!(
                            "label `{label}` is not one of the task's labels ({})",
                            spec.labels.join(", ")
                        ),
                    })
                }
                (ItemKind::PoolItem, Some(_)) => Err(TaskError::InvalidRow {
                    row,
                    message: "pool items are unlabeled: post labelled rows as examples".into(),
                }),
                _ => Ok(item),
            }
        })
        .collect()
}

/// Every task's data: the database, the embedder, and the in-memory collections.
pub struct Catalog {
    store: Store,
    embedder: EmbedderHandle,
    embedder_id: String,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Each task's creation time and examples version as of its last replica sync.
    synced_versions: std::sync::Mutex<HashMap<String, (i64, i64)>>,
}

impl Catalog {
    /// Loads every task's examples into memory, re-embedding rows that another
    /// embedder made, and builds their indexes.
    ///
    /// # Errors
    /// When the database or the embedder fails.
    pub async fn open(store: Store, embedder: EmbedderHandle) -> Result<Self, TaskError> {
        let embedder_id = embedder.name().to_owned();
        let catalog = Self {
            store,
            embedder,
            embedder_id,
            collections: RwLock::new(HashMap::new()),
            synced_versions: std::sync::Mutex::new(HashMap::new()),
        };
        for task in catalog.store.tasks().await? {
            catalog
                .reembed_stale(&task.name, ItemKind::PoolItem)
                .await?;
            let examples = catalog.reembed_stale(&task.name, ItemKind::Example).await?;
            let started = Instant::now();
            let count = examples.len();
            let dimension = catalog.embedder.dimension();
            let rows = examples
                .into_iter()
                .map(|item| {
                    let embedding = item.embedding.clone();
                    (example_from(item), embedding)
                })
                .collect();
            let collection =
                tokio::task::spawn_blocking(move || Collection::build(dimension, rows))
                    .await
                    .map_err(|_| TaskError::Aborted("an index build"))??;
            tracing::info!(
                task = %task.name,
                examples = count,
                seconds = started.elapsed().as_secs_f32(),
                "index loaded"
            );
            catalog
                .collections_mut()
                .insert(task.name, Arc::new(collection));
        }
        Ok(catalog)
    }

    /// The database, for the modules that keep their own records in it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Closes the database connections.
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// The task's rows of `kind`, with embeddings from the current embedder.
    async fn reembed_stale(
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

    fn collections_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Collection>>> {
        // Each update is one insert or remove, so a poisoned map is still whole.
        self.collections.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-memory collection of a task.
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
        if created {
            let collection = Collection::build(self.embedder.dimension(), Vec::new())?;
            self.collections_mut()
                .insert(name.to_owned(), Arc::new(collection));
        }
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
        Ok(())
    }

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

    /// The task's checked definition.
    ///
    /// # Errors
    /// When the task does not exist.
    pub async fn definition(&self, task: &str) -> Result<ValidTask, TaskError> {
        Ok(self.spec(task).await?.validate()?)
    }

    /// Embeds query inputs as examples are embedded.
    ///
    /// # Errors
    /// When the embedder fails or is overloaded.
    pub async fn embed_queries(
        &self,
        inputs: &[(String, Option<String>)],
    ) -> Result<Vec<Vec<f32>>, TaskError> {
        let texts = inputs
            .iter()
            .map(|(text, pair)| embedding_text(text, pair.as_deref()))
            .collect();
        Ok(self.embedder.embed(texts).await?)
    }

    /// The task's in-memory examples, or [`TaskError::NoExamples`] when it has none.
    ///
    /// # Errors
    /// When the task does not exist or has no examples.
    pub fn examples(&self, task: &str) -> Result<Arc<Collection>, TaskError> {
        let collection = self
            .collection(task)
            .ok_or_else(|| TaskError::TaskNotFound(task.to_owned()))?;
        if collection.index.is_empty() {
            return Err(TaskError::NoExamples(task.to_owned()));
        }
        Ok(collection)
    }

    /// Chooses demonstrations for a query, most similar first.
    ///
    /// # Errors
    /// When the task does not exist, has no examples, or `k` is out of range.
    pub async fn retrieve(
        &self,
        task: &str,
        query: RetrieveQuery,
    ) -> Result<Vec<Demonstration>, TaskError> {
        self.spec(task).await?;
        check_k(query.k, 1)?;
        check_strategy(query.strategy)?;
        let collection = self.examples(task)?;
        let vector = self
            .embed_queries(&[(query.text, query.text_pair)])
            .await?
            .pop()
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            choose(&collection, &vector, query.k, query.strategy, None)
        })
        .await
        .map_err(|_| TaskError::Aborted("retrieval"))
    }
}

/// Checks that `k` lies in `min..=MAX_K`.
///
/// # Errors
/// When it does not.
pub fn check_k(k: usize, min: usize) -> Result<(), TaskError> {
    if (min..=MAX_K).contains(&k) {
        Ok(())
    } else {
        Err(TaskError::InvalidParameter {
            field: "k",
            message: format!("{k} is out of range: give {min} to {MAX_K}"),
        })
    }
}

/// Checks a strategy's parameters.
///
/// # Errors
/// When MMR's `lambda` lies outside 0 to 1.
pub fn check_strategy(strategy: Strategy) -> Result<(), TaskError> {
    match strategy {
        Strategy::Mmr { lambda } if !(0.0..=1.0).contains(&lambda) => {
            Err(TaskError::InvalidParameter {
                field: "lambda",
                message: format!("{lambda} is out of range: give 0 to 1"),
            })
        }
        _ => Ok(()),
    }
}

/// Runs a strategy over the collection, never choosing `exclude` (leave-one-out
/// evaluation); the answer is ordered most similar first.
pub fn choose(
    collection: &Collection,
    query: &[f32],
    k: usize,
    strategy: Strategy,
    exclude: Option<usize>,
) -> Vec<Demonstration> {
    let extra = usize::from(exclude.is_some());
    let allowed = |id: &usize| Some(*id) != exclude;
    let points: Vec<(usize, f32)> = match strategy {
        Strategy::Knn => collection
            .index
            .search(query, k + extra)
            .into_iter()
            .filter(|h| allowed(&h.id))
            .take(k)
            .map(|h| (h.id, h.similarity))
            .collect(),
        Strategy::Mmr { lambda } => {
            let candidates: Vec<Candidate> = collection
                .index
                .search(query, k * MMR_CANDIDATE_FACTOR + extra)
                .into_iter()
                .filter(|h| allowed(&h.id))
                .filter_map(|h| {
                    Some(Candidate {
                        id: h.id,
                        similarity: h.similarity,
                        vector: collection.index.vector(h.id)?,
                    })
                })
                .collect();
            retrieve::mmr(&candidates, k, lambda)
                .into_iter()
                .map(|i| (candidates[i].id, candidates[i].similarity))
                .collect()
        }
        Strategy::Random { seed } => retrieve::random_sample(&collection.index.ids(), k, seed)
            .into_iter()
            .filter_map(|id| {
                let vector = collection.index.vector(id)?;
                Some((id, crate::index::cosine(query, &vector)))
            })
            .collect(),
    };
    let mut demonstrations: Vec<Demonstration> = points
        .into_iter()
        .filter_map(|(point, similarity)| {
            Some(Demonstration {
                example: collection.example(point)?,
                similarity,
            })
        })
        .collect();
    demonstrations.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    demonstrations
}

fn example_from(item: StoredItem) -> Example {
    Example {
        point: item.seq as usize,
        id: item.id,
        text: item.text,
        text_pair: item.text_pair,
        label: item.label.unwrap_or_default(),
    }
}
