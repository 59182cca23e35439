//! The routes in the OpenAI API's shape, for the clients practitioners already use
//! (the `openai` SDK and what builds on it): the loaded models, text completions and
//! chat completions. They share one request validation ([`request`]) and one way of
//! streaming ([`stream`]), and go through the same scheduler, prefix cache, keys and
//! caps as every other route.

mod chat;
mod completions;
mod models;
mod request;
mod stream;

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{ApiError, AppState, Route};
use crate::llm::{Delta, Generation, GenerationParams, LlmHandle};

/// Routes of these resources.
pub fn routes() -> Vec<Route> {
    [models::routes(), completions::routes(), chat::routes()]
        .into_iter()
        .flatten()
        .collect()
}

/// Token counts of a generation.
#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

impl Usage {
    fn of(generation: &Generation) -> Self {
        Self {
            prompt_tokens: generation.prompt_tokens,
            completion_tokens: generation.completion_tokens,
            total_tokens: generation.prompt_tokens + generation.completion_tokens,
        }
    }
}

/// Now, in Unix seconds: a response's `created`.
fn created_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A generation request that passed validation: tokenized and within every limit.
struct ValidGeneration {
    prompt_ids: Vec<u32>,
    params: GenerationParams,
    stream: bool,
    include_usage: bool,
}

/// What every answer to one request carries.
struct Answer {
    id: String,
    model: String,
    wants_logprobs: bool,
    include_usage: bool,
}

/// How a route writes a generation: whole, or each moment of its stream.
trait Shape: Send + 'static {
    /// The whole answer.
    fn whole(&self, generation: &Generation) -> Value;
    /// The chunks sent before any text (the chat's assistant role).
    fn opening(&mut self) -> Vec<Value>;
    /// The chunk for a piece of settled text, if it carries anything.
    fn delta(&mut self, delta: Delta) -> Option<Value>;
    /// The chunks after the text: the finish reason, then the usage if asked.
    fn finish(&mut self, generation: &Generation) -> Vec<Value>;
}

/// Runs a request of either route: finds `model`, validates the request off the async
/// threads (`validate` gets the model, its name and the token cap), runs the generation
/// and answers it whole or streamed, as `shape` writes it.
async fn generate<S: Shape>(
    state: AppState,
    model: Option<String>,
    id_prefix: &str,
    validate: impl FnOnce(&LlmHandle, &str, usize) -> Result<ValidGeneration, ApiError> + Send + 'static,
    shape: impl FnOnce(Answer) -> S,
) -> Result<Response, ApiError> {
    let (name, llm) = state.services()?.llms.named(model.as_deref())?;
    let (name, llm) = (name.to_owned(), llm.clone());
    let cap = state.settings().max_tokens_cap;
    let (checker, checked) = (llm.clone(), name.clone());
    let valid = tokio::task::spawn_blocking(move || validate(&checker, &checked, cap)).await??;
    let shape = shape(Answer {
        id: format!("{id_prefix}-{:016x}", rand::random::<u64>()),
        model: name,
        wants_logprobs: valid.params.logprobs.is_some(),
        include_usage: valid.include_usage,
    });
    if !valid.stream {
        let generation = llm.generate(valid.prompt_ids, valid.params, None).await?;
        return Ok(Json(shape.whole(&generation)).into_response());
    }
    let (delta_tx, delta_rx) = mpsc::unbounded_channel();
    let finished = llm.start_generate(valid.prompt_ids, valid.params, Some(delta_tx))?;
    Ok(stream::respond(delta_rx, finished, shape))
}
