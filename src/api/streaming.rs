//! Answers line by line: predict and evaluate answer one JSON line per input as soon as
//! it is scored, as NDJSON (`Accept: application/x-ndjson`) or server-sent events
//! (`Accept: text/event-stream`), so that a client sees progress and a proxy never
//! times out on silence. And the end of work at shutdown: requests still running when
//! the grace after the drain is over are cut short, streams with an error line.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState};

/// The media type of newline-delimited JSON.
pub const NDJSON: &str = "application/x-ndjson";
/// The media type of server-sent events.
const EVENT_STREAM: &str = "text/event-stream";

/// How the client asked to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON document at the end.
    Json,
    /// One JSON object per line, as each is ready.
    Ndjson,
    /// One server-sent event per object, as each is ready.
    Sse,
}

impl Format {
    /// The format the `Accept` header asks for; JSON unless it names a streaming type.
    pub fn of(headers: &HeaderMap) -> Self {
        let accept = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect::<Vec<_>>();
        if accept.iter().any(|t| t == NDJSON) {
            Self::Ndjson
        } else if accept.iter().any(|t| t == EVENT_STREAM) {
            Self::Sse
        } else {
            Self::Json
        }
    }

    /// Whether the answer is a stream.
    pub fn streams(self) -> bool {
        self != Self::Json
    }
}

/// One object of a streamed answer: the SSE event name and the JSON written.
pub struct Line {
    /// The event's name (SSE only; an NDJSON line is the data alone).
    pub event: &'static str,
    /// The object.
    pub data: serde_json::Value,
}

impl Line {
    /// A line carrying `error` as the error envelope, the stream's last.
    pub fn error(error: &ApiError) -> Self {
        Self {
            event: "error",
            data: error.body(),
        }
    }
}

/// Answers `lines` in `format` (NDJSON or SSE), ending the stream with an error line
/// if the server's shutdown cuts it short.
pub fn respond(
    format: Format,
    lines: impl Stream<Item = Line> + Send + 'static,
    shutdown: CancellationToken,
) -> Response {
    let cut_short = shutdown.clone();
    let lines = lines.take_until(shutdown.cancelled_owned()).chain(
        stream::once(async move {
            cut_short
                .is_cancelled()
                .then(|| Line::error(&ApiError::Draining))
        })
        .filter_map(std::future::ready),
    );
    match format {
        Format::Sse => Sse::new(lines.map(|line| {
            Ok::<_, Infallible>(
                Event::default()
                    .event(line.event)
                    .data(line.data.to_string()),
            )
        }))
        .keep_alive(KeepAlive::default())
        .into_response(),
        _ => {
            let body = Body::from_stream(lines.map(|line| {
                let mut text = line.data.to_string();
                text.push('\n');
                Ok::<_, Infallible>(text)
            }));
            let mut response = body.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
            response
        }
    }
}

/// Cuts a request short once the server's grace after the drain is over: the handler's
/// work is dropped (so nothing of it stays queued for the models) and it answers 503.
pub async fn cancel_at_shutdown(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let shutdown = state.shutdown_token();
    tokio::select! {
        response = next.run(request) => response,
        () = shutdown.cancelled() => ApiError::Draining.into_response(),
    }
}
