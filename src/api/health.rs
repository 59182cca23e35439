//! Liveness and readiness: `GET /health` and `GET /ready`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState, Route};

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/health", health).public(),
        Route::get("/ready", ready).public(),
    ]
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    // A broken model is said first: it is why a replica drains after a break.
    if let Some(worker) = state.broken_model() {
        return Err(ApiError::ModelBroken(worker));
    }
    if state.draining() {
        return Err(ApiError::Draining);
    }
    state.services()?;
    Ok(Json(json!({"status": "ready"})))
}
