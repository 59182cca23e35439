//! `POST /v1/embeddings`: sentence embeddings in the OpenAI shape.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::limits;
use super::limits::MAX_EMBEDDING_INPUTS;
use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::post("/v1/embeddings", embeddings).service(Scope::Read)]
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

/// Other OpenAI fields (`model`, `user`) are ignored: the service has one embedder.
#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: EmbeddingInput,
}

#[derive(Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingData>,
    model: String,
}

fn validate(input: EmbeddingInput) -> Result<Vec<String>, ApiError> {
    let texts = match input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("input", "give at least one text"));
    }
    if texts.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!(
                "{} texts given; at most {MAX_EMBEDDING_INPUTS} per request",
                texts.len()
            ),
        ));
    }
    if let Some(index) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::invalid("input", format!("text {index} is empty")));
    }
    limits::texts_at_most(
        "input",
        texts.iter().map(String::as_str),
        limits::MAX_QUERY_BYTES,
    )?;
    Ok(texts)
}

async fn embeddings(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EmbeddingsRequest>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let texts = validate(request.input)?;
    let embedder = &state.services()?.embedder;
    let vectors = embedder.embed(texts).await?;
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data: vectors
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| EmbeddingData {
                object: "embedding",
                index,
                embedding,
            })
            .collect(),
        model: embedder.name().to_owned(),
    }))
}
