//! `POST /v1/chat/completions`: a conversation rendered by the model's own chat
//! template, answered whole or streamed as OpenAI's chunks, with log-probabilities
//! on request.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::request::{token_budget, SharedFields};
use super::{created_now, generate, Answer, Shape, Usage, ValidGeneration};
use crate::api::{limits, ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;
use crate::llm::{ChatMessage, Delta, FinishReason, Generation, LlmHandle, Role, TokenLogprob};

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::post("/v1/chat/completions", chat_completions).service(Scope::Read)]
}

/// A message's content: a string, or OpenAI's list of parts (text parts only).
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    content: Option<Content>,
    /// Tool calls, names, audio...: refused unless null or empty.
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<MessageIn>,
    /// The budget's current name.
    max_completion_tokens: Option<usize>,
    /// Its older name, which OpenAI still accepts.
    max_tokens: Option<usize>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
    #[serde(flatten)]
    shared: SharedFields,
}

fn message(index: usize, message: MessageIn) -> Result<ChatMessage, ApiError> {
    let invalid = |what: String| ApiError::invalid("messages", format!("message {index}: {what}"));
    let role = match message.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(invalid(format!(
                "role `{other}` is not supported: give system, developer, user or assistant"
            )))
        }
    };
    let neutral = |value: &Value| {
        value.is_null()
            || value.as_array().is_some_and(Vec::is_empty)
            || value.as_object().is_some_and(serde_json::Map::is_empty)
    };
    if let Some((field, _)) = message.other.iter().find(|(_, value)| !neutral(value)) {
        return Err(invalid(format!("`{field}` is not supported")));
    }
    let content = match message.content {
        None => return Err(invalid("`content` is missing".to_owned())),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(part)) => text.push_str(&part),
                    (kind, _) => {
                        return Err(invalid(format!(
                            "content parts of type `{kind}` are not supported: give text parts"
                        )))
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage { role, content })
}

fn validate(
    request: ChatRequest,
    llm: &LlmHandle,
    model: &str,
    max_tokens_cap: usize,
) -> Result<ValidGeneration, ApiError> {
    let stream = request.shared.stream;
    let sampling = request.shared.validate()?;
    let template = llm
        .chat_template()
        .map_err(|reason| ApiError::NoChatTemplate {
            model: model.to_owned(),
            reason: reason.to_string(),
        })?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages", "give at least one message"));
    }
    limits::at_most(
        "messages",
        "messages",
        request.messages.len(),
        limits::MAX_MESSAGES,
    )?;
    let messages = request
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    if bytes > limits::MAX_QUERY_BYTES {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the messages hold {bytes} bytes of text; at most {}",
                limits::MAX_QUERY_BYTES
            ),
        ));
    }
    let top_logprobs = match (request.logprobs, request.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "only with `logprobs` set to true",
            ))
        }
        (true, Some(n)) => {
            limits::in_range("top_logprobs", n, 0, limits::MAX_LOGPROBS)?;
            Some(n)
        }
        (true, None) => Some(0),
        (false, None) => None,
    };
    let rendered = template
        .render(&messages)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let segments = rendered
        .segments()
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let prompt_ids = llm.tokenizer().encode_chat(&segments)?;
    let (field, asked) = match (request.max_completion_tokens, request.max_tokens) {
        (Some(n), _) => ("max_completion_tokens", Some(n)),
        (None, n) => ("max_tokens", n),
    };
    let max_tokens = token_budget(
        field,
        asked,
        max_tokens_cap,
        max_tokens_cap,
        prompt_ids.len(),
        llm.context_length(),
    )?;
    let include_usage = sampling.include_usage;
    Ok(ValidGeneration {
        prompt_ids,
        params: sampling.params(max_tokens, top_logprobs),
        stream,
        include_usage,
    })
}

#[derive(Serialize)]
struct Alternative {
    token: String,
    logprob: f32,
    bytes: Vec<u8>,
}

#[derive(Serialize)]
struct ContentLogprob {
    token: String,
    logprob: f32,
    bytes: Vec<u8>,
    top_logprobs: Vec<Alternative>,
}

#[derive(Serialize)]
struct Logprobs {
    content: Vec<ContentLogprob>,
}

impl Logprobs {
    fn new(tokens: &[TokenLogprob]) -> Self {
        let content = tokens
            .iter()
            .map(|token| ContentLogprob {
                token: token.token.clone(),
                logprob: token.logprob,
                bytes: token.token.as_bytes().to_vec(),
                top_logprobs: token
                    .top
                    .iter()
                    .map(|(text, logprob)| Alternative {
                        token: text.clone(),
                        logprob: *logprob,
                        bytes: text.as_bytes().to_vec(),
                    })
                    .collect(),
            })
            .collect();
        Self { content }
    }
}

/// A chat's answer, whole or streamed.
struct ChatShape {
    answer: Answer,
}

impl ChatShape {
    /// The answer's envelope around `choices`.
    fn body(&self, object: &str, choices: Value, usage: Option<Usage>) -> Value {
        let mut body = json!({
            "id": self.answer.id,
            "object": object,
            "created": created_now(),
            "model": self.answer.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = json!(usage);
        }
        body
    }

    fn chunk(
        &self,
        delta: Value,
        logprobs: Option<Logprobs>,
        finish: Option<FinishReason>,
    ) -> Value {
        let choice = json!([{
            "index": 0,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
        }]);
        self.body("chat.completion.chunk", choice, None)
    }
}

impl Shape for ChatShape {
    fn whole(&self, generation: &Generation) -> Value {
        let choice = json!([{
            "index": 0,
            "message": {"role": "assistant", "content": generation.text},
            "logprobs": self.answer.wants_logprobs.then(|| Logprobs::new(&generation.logprobs)),
            "finish_reason": generation.finish_reason,
        }]);
        self.body("chat.completion", choice, Some(Usage::of(generation)))
    }

    fn opening(&mut self) -> Vec<Value> {
        vec![self.chunk(json!({"role": "assistant", "content": ""}), None, None)]
    }

    fn delta(&mut self, delta: Delta) -> Option<Value> {
        if delta.text.is_empty() && delta.logprob.is_none() {
            return None;
        }
        let logprobs = delta
            .logprob
            .filter(|_| self.answer.wants_logprobs)
            .map(|lp| Logprobs::new(std::slice::from_ref(&lp)));
        Some(self.chunk(json!({"content": delta.text}), logprobs, None))
    }

    fn finish(&mut self, generation: &Generation) -> Vec<Value> {
        let mut chunks = vec![self.chunk(json!({}), None, Some(generation.finish_reason))];
        if self.answer.include_usage {
            let usage = Some(Usage::of(generation));
            chunks.push(self.body("chat.completion.chunk", json!([]), usage));
        }
        chunks
    }
}

async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let model = request.shared.model.clone();
    let check = move |llm: &LlmHandle, name: &str, cap| validate(request, llm, name, cap);
    generate(state, model, "chatcmpl", check, |answer| ChatShape {
        answer,
    })
    .await
}
