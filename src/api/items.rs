//! Annotated examples and unlabeled pool items of a task:
//! `POST/GET /v1/tasks/{task}/examples`, `GET/DELETE .../examples/{id}`, and the same
//! under `.../pool`. Both resources share one shape, so one set of handlers serves
//! both, told apart by [`ItemKind`].

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;
use crate::store::ItemKind;
use crate::tasks::{ItemInput, ItemView};

/// Rows per page when the request does not say.
const DEFAULT_PAGE_SIZE: usize = 100;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/v1/tasks/{task}/examples", |s, p, q| {
            page(ItemKind::Example, s, p, q)
        })
        .task(Scope::Read),
        Route::post(
            "/v1/tasks/{task}/examples",
            |s, p, ApiJson(b): ApiJson<ExampleBatch>| add(ItemKind::Example, s, p, b),
        )
        .task(Scope::Write),
        Route::get("/v1/tasks/{task}/examples/{id}", |s, p| {
            show(ItemKind::Example, s, p)
        })
        .task(Scope::Read),
        Route::delete("/v1/tasks/{task}/examples/{id}", |s, p| {
            delete(ItemKind::Example, s, p)
        })
        .task(Scope::Write),
        Route::get("/v1/tasks/{task}/pool", |s, p, q| {
            page(ItemKind::PoolItem, s, p, q)
        })
        .task(Scope::Read),
        Route::post(
            "/v1/tasks/{task}/pool",
            |s, p, ApiJson(b): ApiJson<PoolBatch>| add(ItemKind::PoolItem, s, p, b),
        )
        .task(Scope::Write),
        Route::get("/v1/tasks/{task}/pool/{id}", |s, p| {
            show(ItemKind::PoolItem, s, p)
        })
        .task(Scope::Read),
        Route::delete("/v1/tasks/{task}/pool/{id}", |s, p| {
            delete(ItemKind::PoolItem, s, p)
        })
        .task(Scope::Write),
    ]
}

/// The JSON field that holds the rows of each resource.
fn field(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Example => "examples",
        ItemKind::PoolItem => "items",
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    id: Option<String>,
    text: String,
    text_pair: Option<String>,
    label: Option<String>,
}

/// A write's body: `{"examples": [...]}` or `{"items": [...]}`.
trait Batch {
    fn into_rows(self) -> Vec<Row>;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExampleBatch {
    examples: Vec<Row>,
}

impl Batch for ExampleBatch {
    fn into_rows(self) -> Vec<Row> {
        self.examples
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolBatch {
    items: Vec<Row>,
}

impl Batch for PoolBatch {
    fn into_rows(self) -> Vec<Row> {
        self.items
    }
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct RowBody {
    id: String,
    text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_pair: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

impl From<ItemView> for RowBody {
    fn from(item: ItemView) -> Self {
        Self {
            id: item.id,
            text: item.text,
            text_pair: item.text_pair,
            label: item.label,
        }
    }
}

async fn add(
    kind: ItemKind,
    State(state): State<AppState>,
    Path(task): Path<String>,
    batch: impl Batch,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let rows = batch
        .into_rows()
        .into_iter()
        .map(|r| ItemInput {
            id: r.id,
            text: r.text,
            text_pair: r.text_pair,
            label: r.label,
        })
        .collect();
    let ids = state
        .services()?
        .catalog
        .add_items(&task, kind, rows)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "ids": ids }))))
}

async fn page(
    kind: ItemKind,
    State(state): State<AppState>,
    Path(task): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let page = state
        .services()?
        .catalog
        .items_page(
            &task,
            kind,
            query.cursor.as_deref(),
            query.limit.unwrap_or(DEFAULT_PAGE_SIZE),
        )
        .await?;
    let rows: Vec<RowBody> = page.items.into_iter().map(RowBody::from).collect();
    Ok(Json(
        json!({ field(kind): rows, "next_cursor": page.next_cursor }),
    ))
}

async fn show(
    kind: ItemKind,
    State(state): State<AppState>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Json<RowBody>, ApiError> {
    let item = state.services()?.catalog.item(&task, kind, &id).await?;
    Ok(Json(item.into()))
}

async fn delete(
    kind: ItemKind,
    State(state): State<AppState>,
    Path((task, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .services()?
        .catalog
        .delete_item(&task, kind, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
