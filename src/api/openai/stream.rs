//! A generation streamed as OpenAI's server-sent events: a chunk per settled piece of
//! text, the finish, then `data: [DONE]`; a failure mid-stream is an `error` event in
//! the error envelope.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::super::ApiError;
use super::Shape;
use crate::llm::{Delta, Generation, LlmError};

/// What the stream waits on next.
enum Step {
    Delta(Delta),
    Finished(Result<Result<Generation, LlmError>, oneshot::error::RecvError>),
}

fn data(value: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(value.to_string()))
}

/// The event that ends a failed stream: the error envelope.
fn failure(error: &ApiError) -> Result<Event, Infallible> {
    Ok(Event::default()
        .event("error")
        .data(error.body().to_string()))
}

/// The response streaming a generation whose settled text arrives on `deltas` and
/// whose end arrives on `answer`.
pub fn respond(
    deltas: mpsc::UnboundedReceiver<Delta>,
    answer: oneshot::Receiver<Result<Generation, LlmError>>,
    mut shape: impl Shape,
) -> Response {
    let opening: Vec<_> = shape.opening().iter().map(data).collect();
    let steps = stream::unfold(Some((deltas, answer)), |state| async move {
        let (mut deltas, answer) = state?;
        match deltas.recv().await {
            Some(delta) => Some((Step::Delta(delta), Some((deltas, answer)))),
            None => Some((Step::Finished(answer.await), None)),
        }
    });
    let events = steps.flat_map(move |step| {
        let events: Vec<_> = match step {
            Step::Delta(delta) => shape.delta(delta).iter().map(data).collect(),
            Step::Finished(Ok(Ok(generation))) => {
                shape.finish(&generation).iter().map(data).collect()
            }
            Step::Finished(Ok(Err(error))) => vec![failure(&ApiError::from(error))],
            Step::Finished(Err(_)) => vec![failure(&ApiError::Internal(
                "the model worker stopped".to_owned(),
            ))],
        };
        stream::iter(events)
    });
    let done = stream::once(std::future::ready(Ok(Event::default().data("[DONE]"))));
    Sse::new(stream::iter(opening).chain(events).chain(done))
        .keep_alive(KeepAlive::default())
        .into_response()
}
