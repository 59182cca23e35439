//! `POST /v1/completions`: text continuation in the OpenAI shape, whole or streamed as
//! server-sent events.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::limits;
use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;
use crate::llm::{FinishReason, Generation, GenerationParams, LlmHandle, TokenLogprob};

/// Tokens generated when the request does not say.
const DEFAULT_MAX_TOKENS: usize = 16;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::post("/v1/completions", completions).service(Scope::Read)]
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopStrings {
    One(String),
    Many(Vec<String>),
}

/// Other OpenAI fields (`user`, ...) are ignored.
#[derive(Deserialize)]
struct CompletionRequest {
    /// The model to run; the default if absent.
    model: Option<String>,
    prompt: String,
    max_tokens: Option<usize>,
    temperature: Option<f64>,
    seed: Option<u64>,
    stop: Option<StopStrings>,
    logprobs: Option<usize>,
    #[serde(default)]
    stream: bool,
}

/// A request that passed validation: tokenized and within every limit.
struct ValidCompletion {
    prompt_ids: Vec<u32>,
    params: GenerationParams,
    stream: bool,
}

fn validate(
    request: CompletionRequest,
    llm: &LlmHandle,
    max_tokens_cap: usize,
) -> Result<ValidCompletion, ApiError> {
    if request.prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "must not be empty"));
    }
    limits::texts_at_most("prompt", [request.prompt.as_str()], limits::MAX_QUERY_BYTES)?;
    let max_tokens = request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 || max_tokens > max_tokens_cap {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("{max_tokens} is out of range: give 1 to {max_tokens_cap}"),
        ));
    }
    let temperature = request.temperature.unwrap_or(0.0);
    if !(0.0..=limits::MAX_TEMPERATURE).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!(
                "{temperature} is out of range: give 0 (greedy) to {}",
                limits::MAX_TEMPERATURE
            ),
        ));
    }
    let stop = match request.stop {
        None => Vec::new(),
        Some(StopStrings::One(s)) => vec![s],
        Some(StopStrings::Many(v)) => v,
    };
    limits::stop_strings(&stop)?;
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    if let Some(n) = request.logprobs.filter(|&n| n > limits::MAX_LOGPROBS) {
        return Err(ApiError::invalid(
            "logprobs",
            format!("{n} is out of range: give 0 to {}", limits::MAX_LOGPROBS),
        ));
    }
    let prompt_ids = llm.tokenizer().encode_prompt(&request.prompt)?;
    let context = llm.context_length();
    if prompt_ids.len() + max_tokens > context {
        return Err(ApiError::ContextLengthExceeded(format!(
            "the prompt has {} tokens and max_tokens is {max_tokens}, but the model's \
             context window is {context} tokens",
            prompt_ids.len()
        )));
    }
    Ok(ValidCompletion {
        prompt_ids,
        params: GenerationParams {
            max_tokens,
            temperature,
            seed: request.seed.unwrap_or_else(rand::random),
            stop,
            logprobs: request.logprobs,
        },
        stream: request.stream,
    })
}

#[derive(Serialize, Default)]
struct Logprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<BTreeMap<String, f32>>,
    text_offset: Vec<usize>,
}

impl Logprobs {
    fn new(tokens: &[TokenLogprob], start_offset: usize) -> Self {
        let mut logprobs = Self::default();
        let mut offset = start_offset;
        for token in tokens {
            logprobs.text_offset.push(offset);
            offset += token.token.len();
            logprobs.tokens.push(token.token.clone());
            logprobs.token_logprobs.push(token.logprob);
            logprobs
                .top_logprobs
                .push(token.top.iter().cloned().collect());
        }
        logprobs
    }
}

#[derive(Serialize)]
struct Choice {
    index: usize,
    text: String,
    logprobs: Option<Logprobs>,
    finish_reason: Option<FinishReason>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct CompletionResponse {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

impl CompletionResponse {
    fn new(id: &str, model: &str, choice: Choice, usage: Option<Usage>) -> Self {
        Self {
            id: id.to_owned(),
            object: "text_completion",
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            choices: vec![choice],
            usage,
        }
    }
}

fn usage(generation: &Generation) -> Usage {
    Usage {
        prompt_tokens: generation.prompt_tokens,
        completion_tokens: generation.completion_tokens,
        total_tokens: generation.prompt_tokens + generation.completion_tokens,
    }
}

async fn completions(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let (model, llm) = state.services()?.llms.named(request.model.as_deref())?;
    let (model, llm) = (model.to_owned(), llm.clone());
    let cap = state.settings().max_tokens_cap;
    let checker = llm.clone();
    let valid = tokio::task::spawn_blocking(move || validate(request, &checker, cap)).await??;
    let id = format!("cmpl-{:016x}", rand::random::<u64>());
    let wants_logprobs = valid.params.logprobs.is_some();

    if !valid.stream {
        let generation = llm.generate(valid.prompt_ids, valid.params, None).await?;
        let choice = Choice {
            index: 0,
            logprobs: wants_logprobs.then(|| Logprobs::new(&generation.logprobs, 0)),
            text: generation.text.clone(),
            finish_reason: Some(generation.finish_reason),
        };
        let body = CompletionResponse::new(&id, &model, choice, Some(usage(&generation)));
        return Ok(Json(body).into_response());
    }

    let (delta_tx, delta_rx) = mpsc::unbounded_channel();
    let answer = llm.start_generate(valid.prompt_ids, valid.params, Some(delta_tx))?;
    let mut offset = 0usize;
    let chunk = move |choice: Choice, usage: Option<Usage>| -> Result<Event, Infallible> {
        let body = CompletionResponse::new(&id, &model, choice, usage);
        Ok(Event::default().data(serde_json::to_string(&body).unwrap_or_default()))
    };
    let events = stream::unfold(Some((delta_rx, answer)), |state| async move {
        let (mut deltas, answer) = state?;
        match deltas.recv().await {
            Some(delta) => Some((Ok(delta), Some((deltas, answer)))),
            None => Some((Err(answer.await), None)),
        }
    })
    .filter_map(move |item| {
        let event = match item {
            Ok(delta) if delta.text.is_empty() && delta.logprob.is_none() => None,
            Ok(delta) => {
                let logprobs = delta
                    .logprob
                    .filter(|_| wants_logprobs)
                    .map(|lp| Logprobs::new(std::slice::from_ref(&lp), offset));
                offset += delta.text.len();
                let choice = Choice {
                    index: 0,
                    text: delta.text,
                    logprobs,
                    finish_reason: None,
                };
                Some(chunk(choice, None))
            }
            Err(Ok(Ok(generation))) => {
                let choice = Choice {
                    index: 0,
                    text: String::new(),
                    logprobs: None,
                    finish_reason: Some(generation.finish_reason),
                };
                Some(chunk(choice, Some(usage(&generation))))
            }
            Err(failed) => {
                let message = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the model worker stopped".to_owned(),
                };
                tracing::error!(%message, "streamed completion failed");
                Some(Ok(Event::default().event("error").data(
                    serde_json::json!({"error": {"code": "internal", "message": "internal error"}})
                        .to_string(),
                )))
            }
        };
        std::future::ready(event)
    })
    .chain(stream::once(std::future::ready(Ok(
        Event::default().data("[DONE]")
    ))));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
