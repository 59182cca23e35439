//! Tuning: `POST /v1/tasks/{task}/tune` starts a job that measures a grid of
//! prediction options by leave-one-out over the task's annotated examples and stores
//! the best as the task's defaults; it is polled at `/v1/tasks/{task}/tunings/{id}`.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::evaluations::accepted;
use super::fairness::Requester;
use super::limits::MAX_EVALUATION_EXAMPLES;
use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;
use crate::predict::defaults::{Calibration, StrategyChoice};
use crate::predict::Order;
use crate::tuning::{Grid, TuneRequest, TuningJob, MIN_EXAMPLES};

/// Annotated examples left out one at a time when the request does not say.
const DEFAULT_MAX_EXAMPLES: usize = 100;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![
        Route::post("/v1/tasks/{task}/tune", tune).task(Scope::Admin),
        Route::get("/v1/tasks/{task}/tunings", list).task(Scope::Read),
        Route::get("/v1/tasks/{task}/tunings/{id}", get).task(Scope::Read),
        Route::delete("/v1/tasks/{task}/tunings/{id}", cancel).task(Scope::Admin),
    ]
}

/// A tune request: how many examples, which seed draws them, and the grid (each list
/// defaults to the default grid's).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TuneBody {
    max_examples: Option<usize>,
    seed: Option<u64>,
    k: Option<Vec<usize>>,
    strategy: Option<Vec<StrategyChoice>>,
    order: Option<Vec<Order>>,
    calibration: Option<Vec<Calibration>>,
    vote_weight: Option<Vec<f64>>,
    cached_demonstrations: Option<Vec<bool>>,
    model: Option<Vec<String>>,
}

impl TuneBody {
    fn grid(&mut self) -> Result<Grid, ApiError> {
        let default = Grid::default();
        let model = match self.model.take() {
            Some(models) if models.is_empty() => {
                return Err(ApiError::invalid(
                    "model",
                    "0 values; name 1 to 21 loaded models, or leave it out for the task's own",
                ))
            }
            models => models.unwrap_or_default(),
        };
        let grid = Grid {
            k: self.k.take().unwrap_or(default.k),
            strategy: self.strategy.take().unwrap_or(default.strategy),
            order: self.order.take().unwrap_or(default.order),
            calibration: self.calibration.take().unwrap_or(default.calibration),
            vote_weight: self.vote_weight.take().unwrap_or(default.vote_weight),
            cached_demonstrations: self
                .cached_demonstrations
                .take()
                .unwrap_or(default.cached_demonstrations),
            model,
        };
        grid.check()
            .map_err(|(field, message)| ApiError::invalid(field, message))?;
        Ok(grid)
    }
}

async fn tune(
    State(state): State<AppState>,
    Path(task): Path<String>,
    Extension(requester): Extension<Requester>,
    ApiJson(mut body): ApiJson<TuneBody>,
) -> Result<Response, ApiError> {
    let services = state.services()?;
    let max_examples = body.max_examples.unwrap_or(DEFAULT_MAX_EXAMPLES);
    if !(MIN_EXAMPLES..=MAX_EVALUATION_EXAMPLES).contains(&max_examples) {
        return Err(ApiError::invalid(
            "max_examples",
            format!(
                "{max_examples} is out of range: give {MIN_EXAMPLES} to {MAX_EVALUATION_EXAMPLES}"
            ),
        ));
    }
    let grid = body.grid()?;
    let rows = services
        .tunings
        .kind()
        .rows(&task, max_examples, body.seed.unwrap_or(0))
        .await?;
    let job = services
        .tunings
        .start(&task, &requester.0, TuneRequest { rows, grid })
        .await?;
    let location = format!("/v1/tasks/{task}/tunings/{}", job.id);
    Ok(accepted(job, &location))
}

#[derive(Serialize)]
struct TuningList {
    tunings: Vec<TuningJob>,
}

async fn list(
    State(state): State<AppState>,
    Path(task): Path<String>,
) -> Result<Json<TuningList>, ApiError> {
    let tunings = state.services()?.tunings.list(&task).await?;
    Ok(Json(TuningList { tunings }))
}

async fn get(
    State(state): State<AppState>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Json<TuningJob>, ApiError> {
    Ok(Json(state.services()?.tunings.get(&task, &id).await?))
}

async fn cancel(
    State(state): State<AppState>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Json<TuningJob>, ApiError> {
    // The route admits admin keys only, and an admin may cancel any tuning.
    Ok(Json(
        state.services()?.tunings.cancel(&task, &id, None).await?,
    ))
}
