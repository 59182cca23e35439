//! `POST /v1/completions`: text continuation in the OpenAI shape, whole or streamed as
//! server-sent events, with each token's log-probability and alternatives on request.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::request::{token_budget, SharedFields};
use super::{created_now, generate, Answer, Shape, Usage, ValidGeneration};
use crate::api::{limits, ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;
use crate::llm::{Delta, FinishReason, Generation, LlmHandle, TokenLogprob};

/// Tokens generated when the request does not say (OpenAI's default).
const DEFAULT_MAX_TOKENS: usize = 16;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::post("/v1/completions", completions).service(Scope::Read)]
}

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: String,
    max_tokens: Option<usize>,
    /// Alternatives reported per generated token.
    logprobs: Option<usize>,
    #[serde(flatten)]
    shared: SharedFields,
}

fn validate(
    request: CompletionRequest,
    llm: &LlmHandle,
    max_tokens_cap: usize,
) -> Result<ValidGeneration, ApiError> {
    let stream = request.shared.stream;
    let sampling = request.shared.validate()?;
    if request.prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "must not be empty"));
    }
    limits::texts_at_most("prompt", [request.prompt.as_str()], limits::MAX_QUERY_BYTES)?;
    if let Some(n) = request.logprobs {
        limits::in_range("logprobs", n, 0, limits::MAX_LOGPROBS)?;
    }
    let prompt_ids = llm.tokenizer().encode_prompt(&request.prompt)?;
    let max_tokens = token_budget(
        "max_tokens",
        request.max_tokens,
        DEFAULT_MAX_TOKENS,
        max_tokens_cap,
        prompt_ids.len(),
        llm.context_length(),
    )?;
    let include_usage = sampling.include_usage;
    Ok(ValidGeneration {
        prompt_ids,
        params: sampling.params(max_tokens, request.logprobs),
        stream,
        include_usage,
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
struct CompletionResponse<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

impl<'a> CompletionResponse<'a> {
    fn new(id: &'a str, model: &'a str, choices: Vec<Choice>, usage: Option<Usage>) -> Self {
        Self {
            id,
            object: "text_completion",
            created: created_now(),
            model,
            choices,
            usage,
        }
    }

    fn json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A completion's answer, whole or streamed.
struct CompletionShape {
    answer: Answer,
    /// Bytes of text sent so far: where the next token's `text_offset` starts.
    offset: usize,
}

impl CompletionShape {
    fn body(&self, choices: Vec<Choice>, usage: Option<Usage>) -> Value {
        CompletionResponse::new(&self.answer.id, &self.answer.model, choices, usage).json()
    }
}

impl Shape for CompletionShape {
    fn whole(&self, generation: &Generation) -> Value {
        let choice = Choice {
            index: 0,
            logprobs: self
                .answer
                .wants_logprobs
                .then(|| Logprobs::new(&generation.logprobs, 0)),
            text: generation.text.clone(),
            finish_reason: Some(generation.finish_reason),
        };
        self.body(vec![choice], Some(Usage::of(generation)))
    }

    fn opening(&mut self) -> Vec<Value> {
        Vec::new()
    }

    fn delta(&mut self, delta: Delta) -> Option<Value> {
        if delta.text.is_empty() && delta.logprob.is_none() {
            return None;
        }
        let logprobs = delta
            .logprob
            .filter(|_| self.answer.wants_logprobs)
            .map(|lp| Logprobs::new(std::slice::from_ref(&lp), self.offset));
        self.offset += delta.text.len();
        let choice = Choice {
            index: 0,
            text: delta.text,
            logprobs,
            finish_reason: None,
        };
        Some(self.body(vec![choice], None))
    }

    fn finish(&mut self, generation: &Generation) -> Vec<Value> {
        let choice = Choice {
            index: 0,
            text: String::new(),
            logprobs: None,
            finish_reason: Some(generation.finish_reason),
        };
        let mut chunks = vec![self.body(vec![choice], None)];
        if self.answer.include_usage {
            chunks.push(self.body(Vec::new(), Some(Usage::of(generation))));
        }
        chunks
    }
}

async fn completions(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let model = request.shared.model.clone();
    let check = move |llm: &LlmHandle, _: &str, cap| validate(request, llm, cap);
    let shape = |answer| CompletionShape { answer, offset: 0 };
    generate(state, model, "cmpl", check, shape).await
}
