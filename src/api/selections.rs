//! Selective annotation: `POST /v1/tasks/{task}/selections`,
//! `GET /v1/tasks/{task}/selections/{id}` and `POST .../selections/{id}/continue`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::fairness::Requester;
use super::limits;
use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;
use crate::select::selections::{Progress, SelectionRequest, SelectionView};
use crate::select::{Method, ParamOverrides};

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![
        Route::post("/v1/tasks/{task}/selections", create).task(Scope::Write),
        Route::get("/v1/tasks/{task}/selections/{id}", show).task(Scope::Read),
        Route::post("/v1/tasks/{task}/selections/{id}/continue", resume).task(Scope::Write),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    method: Method,
    budget: usize,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    params: ParamOverrides,
}

impl CreateBody {
    /// The request, once every size it controls is within its cap.
    fn validate(self) -> Result<SelectionRequest, ApiError> {
        limits::in_range("budget", self.budget, 1, limits::MAX_BUDGET)?;
        if let Some(k) = self.params.k {
            limits::in_range("params.k", k, 1, limits::MAX_GRAPH_K)?;
        }
        if let Some(runs) = self.params.runs {
            limits::in_range("params.runs", runs, 1, limits::MAX_RUNS)?;
        }
        if let Some(stage_one) = self.params.stage_one {
            limits::in_range("params.stage_one", stage_one, 1, self.budget)?;
        }
        Ok(SelectionRequest {
            method: self.method,
            budget: self.budget,
            seed: self.seed,
            params: self.params,
        })
    }
}

/// Progress of long selections goes to the log.
fn log_progress(task: String) -> Progress {
    Arc::new(move |phase: &str, done: usize, of: usize| {
        let step = (of / 10).max(1);
        if done.is_multiple_of(step) || done == of {
            tracing::info!(task = %task, phase, done, of, "selection progress");
        }
    })
}

/// 202 while vote-k's stage 2 runs in the background, else 200.
fn answer(view: SelectionView) -> (StatusCode, Json<SelectionView>) {
    let status = if view.running() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, Json(view))
}

async fn create(
    State(state): State<AppState>,
    Path(task): Path<String>,
    Extension(requester): Extension<Requester>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<SelectionView>), ApiError> {
    let request = body.validate()?;
    let progress = log_progress(task.clone());
    let view = state
        .services()?
        .selector
        .select(&task, &requester.0, request, progress)
        .await?;
    Ok(answer(view))
}

async fn show(
    State(state): State<AppState>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Json<SelectionView>, ApiError> {
    Ok(Json(state.services()?.selector.get(&task, &id).await?))
}

async fn resume(
    State(state): State<AppState>,
    Path((task, id)): Path<(String, String)>,
    Extension(requester): Extension<Requester>,
) -> Result<(StatusCode, Json<SelectionView>), ApiError> {
    let progress = log_progress(task.clone());
    let view = state
        .services()?
        .selector
        .continue_selection(&task, &id, &requester.0, progress)
        .await?;
    Ok(answer(view))
}
