//! `GET /v1/info`: which models run where (the default LLM; `GET /v1/models` lists
//! them all).

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
    let (model, llm) = services.llms.named(None)?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "device": format!("{:?}", settings.device).to_lowercase(),
        "model": {
            "id": model,
            "name": llm.name(),
            "architecture": llm.architecture(),
            "context_length": llm.context_length(),
            "vocab_size": llm.tokenizer().vocab_size(),
            "weights": format!("{:?}", settings.weights).to_lowercase(),
        },
        "embedder": {
            "name": services.embedder.name(),
            "dimension": services.embedder.dimension(),
        },
        "queued": {
            "llm": services.llms.iter().map(|(_, llm)| llm.waiting()).sum::<usize>(),
            "embedder": services.embedder.waiting(),
        },
        "limits": {
            "max_tokens": settings.max_tokens_cap,
            "embedding_inputs": super::limits::MAX_EMBEDDING_INPUTS,
        },
    })))
}
