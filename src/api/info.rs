//! `GET /v1/info`: which models run where.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState, Route};
use crate::auth::Scope;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::get("/v1/info", info).service(Scope::Read)]
}

async fn info(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    let settings = state.settings();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "device": format!("{:?}", settings.device).to_lowercase(),
        "model": {
            "name": services.llm.name(),
            "architecture": services.llm.architecture(),
            "context_length": services.llm.context_length(),
            "vocab_size": services.llm.tokenizer().vocab_size(),
            "weights": format!("{:?}", settings.weights).to_lowercase(),
        },
        "embedder": {
            "name": services.embedder.name(),
            "dimension": services.embedder.dimension(),
        },
        "queued": {
            "llm": services.llm.waiting(),
            "embedder": services.embedder.waiting(),
        },
        "limits": {
            "max_tokens": settings.max_tokens_cap,
            "embedding_inputs": super::limits::MAX_EMBEDDING_INPUTS,
        },
    })))
}
