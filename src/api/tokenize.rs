//! `POST /v1/tokenize`: the LLM tokenizer's view of a text.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::limits;
use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::post("/v1/tokenize", tokenize).service(Scope::Read)]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    text: String,
    /// The model whose tokenizer to use; the default if absent.
    model: Option<String>,
}

#[derive(Serialize)]
struct TokenizeResponse {
    ids: Vec<u32>,
    tokens: Vec<String>,
}

async fn tokenize(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    limits::texts_at_most("text", [request.text.as_str()], limits::MAX_QUERY_BYTES)?;
    let llm = state
        .services()?
        .llms
        .get(request.model.as_deref())?
        .clone();
    let (ids, tokens) =
        tokio::task::spawn_blocking(move || llm.tokenizer().encode_with_pieces(&request.text))
            .await??;
    Ok(Json(TokenizeResponse { ids, tokens }))
}
