//! Tasks: `PUT/GET/DELETE /v1/tasks/{task}` and `GET /v1/tasks`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use serde::Serialize;

use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::{Caller, Scope};
use crate::tasks::{TaskSpec, TaskView};

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/v1/tasks", list).service(Scope::Read),
        Route::get("/v1/tasks/{task}", show).task(Scope::Read),
        Route::put("/v1/tasks/{task}", put).task(Scope::Admin),
        Route::delete("/v1/tasks/{task}", delete).task(Scope::Admin),
    ]
}

#[derive(Serialize)]
struct Counts {
    examples: i64,
    pool: i64,
}

#[derive(Serialize)]
struct TaskBody {
    name: String,
    #[serde(flatten)]
    spec: TaskSpec,
    counts: Counts,
}

impl From<TaskView> for TaskBody {
    fn from(view: TaskView) -> Self {
        Self {
            name: view.name,
            spec: view.spec,
            counts: Counts {
                examples: view.examples,
                pool: view.pool,
            },
        }
    }
}

#[derive(Serialize)]
struct TaskList {
    tasks: Vec<TaskBody>,
}

async fn put(
    State(state): State<AppState>,
    Path(task): Path<String>,
    ApiJson(spec): ApiJson<TaskSpec>,
) -> Result<(StatusCode, Json<TaskBody>), ApiError> {
    let services = state.services()?;
    if let Some(model) = &spec.model {
        services
            .llms
            .get(Some(model))
            .map_err(|e| ApiError::invalid("model", e.to_string()))?;
    }
    let (view, created) = services.catalog.put_task(&task, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view.into())))
}

async fn show(
    State(state): State<AppState>,
    Path(task): Path<String>,
) -> Result<Json<TaskBody>, ApiError> {
    Ok(Json(state.services()?.catalog.task(&task).await?.into()))
}

/// The tasks the caller's key covers.
async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<TaskList>, ApiError> {
    let tasks = state.services()?.catalog.tasks().await?;
    Ok(Json(TaskList {
        tasks: tasks
            .into_iter()
            .filter(|task| caller.sees(&task.name))
            .map(TaskBody::from)
            .collect(),
    }))
}

async fn delete(
    State(state): State<AppState>,
    Path(task): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.services()?.catalog.delete_task(&task).await?;
    Ok(StatusCode::NO_CONTENT)
}
