//! The one place where errors become HTTP answers.
//!
//! Every failure a request can meet is an [`ApiError`]; each variant has a status and a
//! stable snake_case code, written in OpenAI's error shape,
//! `{"error":{"code":...,"message":...,"type":...,"param":...}}`, so that OpenAI's
//! clients raise their own error types from it.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::AuthError;
use crate::embed::EmbedError;
use crate::evaluation::EvaluationError;
use crate::jobs::{JobError, RunError};
use crate::llm::{LlmError, UnknownModel};
use crate::predict::PredictError;
use crate::select::selections::SelectionError;
use crate::select::SelectError;
use crate::store::StoreError;
use crate::tasks::TaskError;
use crate::tuning::TuningError;
use crate::worker::QueueError;

/// Seconds a client is asked to wait after a 429.
const RETRY_AFTER_SECS: &str = "1";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not well-formed JSON.
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    /// The body is JSON but not the expected shape (missing field, wrong type).
    #[error("{0}")]
    InvalidBody(String),
    /// A field holds a value outside its rules.
    #[error("`{field}`: {message}")]
    InvalidValue {
        /// The offending field, as named in the request.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A field the request may carry in OpenAI's API that is not served here.
    #[error("`{0}` is not supported")]
    UnsupportedField(String),
    /// A chat was sent to a model that has no chat template.
    #[error("the model `{model}` cannot chat: {reason}; send a prompt to /v1/completions instead")]
    NoChatTemplate {
        /// The model's name.
        model: String,
        /// Why it has no template.
        reason: String,
    },
    /// Prompt and requested tokens do not fit the model's context window.
    #[error("{0}")]
    ContextLengthExceeded(String),
    /// The body is not JSON (wrong or missing content type).
    #[error("expected a JSON body with `content-type: application/json`")]
    UnsupportedMediaType,
    /// The body is larger than the configured limit.
    #[error("the request body is larger than the server accepts")]
    PayloadTooLarge,
    /// The request took longer than the configured timeout.
    #[error("the request took longer than the server allows")]
    Timeout,
    /// No route matches the path.
    #[error("no such endpoint: {0}")]
    UnknownRoute(String),
    /// The model queue is full.
    #[error("the server is busy: the model queue is full, retry shortly")]
    Overloaded,
    /// The client has as many requests in flight as it may.
    #[error(
        "this client has {0} requests in flight, as many as it may; retry when one has finished"
    )]
    TooManyInFlight(usize),
    /// The client sends faster than it may.
    #[error("this client sends requests faster than it may; retry after Retry-After seconds")]
    RateLimited,
    /// The models are still loading.
    #[error("the models are still loading; poll GET /ready")]
    NotReady,
    /// A panic broke a model: the server takes no more model work and restarts.
    #[error("the model is broken ({0}); the server is restarting, retry on another replica")]
    ModelBroken(&'static str),
    /// The server is stopping; the load balancer should send elsewhere.
    #[error("the server is shutting down")]
    Draining,
    /// The caller's key is missing, wrong, or does not allow the route.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No live key has this id.
    #[error("no live API key has the id `{0}`")]
    KeyNotFound(String),
    /// A key asked to revoke itself.
    #[error(
        "a key cannot revoke itself: revoke it with another admin key or `exemplar keys revoke`"
    )]
    SelfRevocation,
    /// A request or task names a model the server has not loaded.
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),
    /// A task operation failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A prediction failed.
    #[error(transparent)]
    Predict(#[from] PredictError),
    /// A selection failed.
    #[error(transparent)]
    Selection(#[from] SelectionError),
    /// An evaluation failed.
    #[error(transparent)]
    Evaluation(#[from] EvaluationError),
    /// A tuning failed.
    #[error(transparent)]
    Tuning(#[from] TuningError),
    /// A failure inside the service; details go to the log, not to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 422 for `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidValue {
            field,
            message: message.into(),
        }
    }

    /// The HTTP status and the stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::InvalidBody(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            Self::InvalidValue { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value"),
            Self::UnsupportedField(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_field"),
            Self::NoChatTemplate { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "no_chat_template"),
            Self::ContextLengthExceeded(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "context_length_exceeded")
            }
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Timeout => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            Self::UnknownRoute(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            Self::TooManyInFlight(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_in_flight"),
            Self::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Self::Draining => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Self::ModelBroken(_) => (StatusCode::SERVICE_UNAVAILABLE, "model_broken"),
            Self::Auth(AuthError::Missing | AuthError::Invalid) => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Self::Auth(AuthError::Scope { .. } | AuthError::Task(_) | AuthError::TaskLimited) => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            Self::Auth(AuthError::InvalidKey(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
            }
            Self::Auth(AuthError::Store(store)) => store_status_and_code(store),
            Self::KeyNotFound(_) => (StatusCode::NOT_FOUND, "key_not_found"),
            Self::SelfRevocation => (StatusCode::CONFLICT, "conflict"),
            Self::UnknownModel(_) => (StatusCode::NOT_FOUND, "model_not_found"),
            Self::Task(error) => task_status_and_code(error),
            Self::Predict(error) => predict_status_and_code(error),
            Self::Selection(error) => match error {
                SelectionError::Run(error) => run_status_and_code(error),
                SelectionError::Select(SelectError::InvalidParameter { .. }) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
                }
                SelectionError::Select(SelectError::PoolTooSmall { .. }) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "pool_too_small")
                }
                SelectionError::NeedsLabels(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
                }
                SelectionError::NotFound { .. } => (StatusCode::NOT_FOUND, "selection_not_found"),
                SelectionError::StageOneUnannotated { .. } => (StatusCode::CONFLICT, "conflict"),
                SelectionError::UnknownState { .. } => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
                SelectionError::Select(SelectError::Graph(_) | SelectError::Cancelled)
                | SelectionError::Aborted(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            Self::Evaluation(error) => match error {
                EvaluationError::Run(error) => run_status_and_code(error),
                EvaluationError::NeedsLabels(_) | EvaluationError::UnknownLabel { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
                }
            },
            Self::Tuning(error) => match error {
                TuningError::Run(error) => run_status_and_code(error),
                TuningError::TooFewExamples { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "no_examples")
                }
                TuningError::NeedsLabels(_) | TuningError::InvalidGrid { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
                }
            },
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The field of the request that is at fault, where one is.
    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidValue { field, .. } => Some(field),
            Self::UnsupportedField(field) => Some(field),
            Self::NoChatTemplate { .. } => Some("model"),
            Self::UnknownModel(_) => Some("model"),
            _ => None,
        }
    }

    /// The answer's body, `{"error":{"code":...,"message":...,"type":...,"param":...}}`;
    /// causes of server faults go to the log instead.
    pub fn body(&self) -> serde_json::Value {
        let (status, code) = self.status_and_code();
        let message = if code == "database_unavailable" {
            tracing::warn!(cause = %self, "the database is unreachable");
            "the database is unreachable; retry shortly".to_owned()
        } else if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            // Causes go to the log; clients learn only that it was not their fault.
            tracing::error!(cause = %self, "request failed");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let mut error = json!({
            "code": code,
            "message": message,
            "type": error_type(status),
            "param": self.param(),
        });
        // Batch writes name the failing row as a number too, for clients that map rows
        // back to their source (`exemplar import` reports line numbers).
        if let Self::Task(TaskError::InvalidRow { row, .. }) = self {
            error["row"] = json!(row);
        }
        json!({ "error": error })
    }
}

/// OpenAI's class of an error, from its status.
fn error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        status if status.is_server_error() => "server_error",
        _ => "invalid_request_error",
    }
}

fn predict_status_and_code(error: &PredictError) -> (StatusCode, &'static str) {
    match error {
        PredictError::Task(error) => task_status_and_code(error),
        PredictError::Llm(LlmError::Queue(QueueError::Full)) => {
            (StatusCode::TOO_MANY_REQUESTS, "overloaded")
        }
        PredictError::Llm(LlmError::Queue(QueueError::Broken(_))) => {
            (StatusCode::SERVICE_UNAVAILABLE, "model_broken")
        }
        PredictError::Llm(_) | PredictError::Aborted(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
        PredictError::InvalidParameter { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value")
        }
        PredictError::UnknownModel(_) => (StatusCode::NOT_FOUND, "model_not_found"),
        PredictError::InputTooLong { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "context_length_exceeded")
        }
    }
}

fn store_status_and_code(error: &StoreError) -> (StatusCode, &'static str) {
    if error.is_unavailable() {
        (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "internal")
    }
}

fn run_status_and_code(error: &RunError) -> (StatusCode, &'static str) {
    match error {
        RunError::Task(error) => task_status_and_code(error),
        RunError::Predict(error) => predict_status_and_code(error),
        RunError::Job(error) => job_status_and_code(error),
    }
}

fn job_status_and_code(error: &JobError) -> (StatusCode, &'static str) {
    match error {
        JobError::Store(store) => store_status_and_code(store),
        JobError::NotFound { kind, .. } => (StatusCode::NOT_FOUND, job_not_found_code(kind)),
        JobError::ShuttingDown(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        JobError::Cancelled(_) | JobError::LeaseLost(_) => (StatusCode::CONFLICT, "conflict"),
        JobError::TooMany { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_jobs"),
        JobError::NotYours(_) => (StatusCode::FORBIDDEN, "forbidden"),
    }
}

/// The code of an unknown job: `evaluation_not_found`, `tuning_not_found`.
fn job_not_found_code(kind: &str) -> &'static str {
    match kind {
        "tuning" => "tuning_not_found",
        "stage_two" => "selection_not_found",
        _ => "evaluation_not_found",
    }
}

fn task_status_and_code(error: &TaskError) -> (StatusCode, &'static str) {
    match error {
        TaskError::TaskNotFound(_) => (StatusCode::NOT_FOUND, "task_not_found"),
        TaskError::ItemNotFound { .. } => (StatusCode::NOT_FOUND, "item_not_found"),
        TaskError::InvalidSpec(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_task"),
        TaskError::InvalidRow { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_row"),
        TaskError::InvalidBatch(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_batch"),
        TaskError::InvalidParameter { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value"),
        TaskError::NoExamples(_) => (StatusCode::UNPROCESSABLE_ENTITY, "no_examples"),
        TaskError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        TaskError::Embed(EmbedError::Queue(QueueError::Full)) => {
            (StatusCode::TOO_MANY_REQUESTS, "overloaded")
        }
        TaskError::Embed(EmbedError::Queue(QueueError::Broken(_))) => {
            (StatusCode::SERVICE_UNAVAILABLE, "model_broken")
        }
        TaskError::Store(store) => store_status_and_code(store),
        TaskError::Embed(_) | TaskError::Index(_) | TaskError::Aborted(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = Json(self.body());
        let mut response = (status, body).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || code == "database_unavailable" {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, Self::PayloadTooLarge | Self::Timeout) {
            // The request body may be left unread, so the server drops the connection;
            // saying so keeps clients from sending their next request on it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::InvalidBody(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => Self::MalformedJson(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge
            }
            other => Self::MalformedJson(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidBody(rejection.body_text())
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::Full => Self::Overloaded,
            QueueError::Broken(worker) => Self::ModelBroken(worker),
            QueueError::Stopped => Self::Internal(error.to_string()),
        }
    }
}

impl From<LlmError> for ApiError {
    fn from(error: LlmError) -> Self {
        match error {
            LlmError::Queue(queue) => queue.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<EmbedError> for ApiError {
    fn from(error: EmbedError) -> Self {
        match error {
            EmbedError::Queue(queue) => queue.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> Self {
        Self::Internal(error.to_string())
    }
}

/// Gives the envelope to bare errors that layers answer on their own (the body limit's
/// 413 and the timeout's 408), so every error a client sees has the same shape.
pub async fn envelope_layer_errors(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge.into_response(),
        StatusCode::REQUEST_TIMEOUT => ApiError::Timeout.into_response(),
        _ => response,
    }
}
