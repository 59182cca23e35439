//! `GET /v1/models`: the loaded LLMs, in the OpenAI API's shape (`id` is the name a
//! task's `model` and a request's `model` use; the first is the default).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::api::{ApiError, AppState, Route};
use crate::auth::Scope;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::get("/v1/models", models).service(Scope::Read)]
}

async fn models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    let data: Vec<Value> = services
        .llms
        .iter()
        .enumerate()
        .map(|(i, (name, llm))| {
            json!({
                "id": name,
                "object": "model",
                "created": llm.loaded_at(),
                "owned_by": "exemplar",
                "default": i == 0,
                "architecture": llm.architecture(),
                "context_length": llm.context_length(),
                "queued": llm.waiting(),
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
