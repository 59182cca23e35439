//! Evaluation on labelled rows: `POST /v1/tasks/{task}/evaluate` answers the table in
//! the request for a few rows, streams it row by row when asked, and for many rows (or
//! `"background": true`) starts a job polled at `/v1/tasks/{task}/evaluations/{id}`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use futures::stream;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::fairness::Requester;
use super::limits;
use super::limits::{MAX_EVALUATION_EXAMPLES, MAX_INPUTS};
use super::predict::{check_texts, OptionsBody};
use super::streaming::{self, Format, Line};
use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::{Access, Caller, Scope};
use crate::evaluation::{EvaluationJob, EvaluationRequest, LabelledRow};
use crate::predict::metrics;
use crate::predict::QueryInput;

/// The most rows evaluated inside the request when the request does not say: as many
/// as one predict request carries. More become a background job.
const SYNC_EVALUATION_ROWS: usize = MAX_INPUTS;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![
        Route::post("/v1/tasks/{task}/evaluate", evaluate).task(Scope::Read),
        Route::get("/v1/tasks/{task}/evaluations", list).task(Scope::Read),
        Route::get("/v1/tasks/{task}/evaluations/{id}", get).task(Scope::Read),
        Route::delete("/v1/tasks/{task}/evaluations/{id}", cancel).task(Scope::Read),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelledBody {
    text: String,
    text_pair: Option<String>,
    label: String,
}

#[derive(Deserialize)]
struct EvaluateRequest {
    #[serde(default)]
    examples: Vec<LabelledBody>,
    #[serde(default)]
    leave_one_out: bool,
    /// Run as a job (`true`), in the request (`false`), or by size (absent).
    background: Option<bool>,
    #[serde(flatten)]
    options: OptionsBody,
}

/// A streamed row: the gold label, the prediction, and the accuracy so far.
#[derive(Serialize)]
struct RowLine<'a> {
    index: usize,
    label: &'a str,
    predicted: &'a str,
    correct: bool,
    probabilities: serde_json::Map<String, serde_json::Value>,
    accuracy: f64,
}

async fn evaluate(
    State(state): State<AppState>,
    Path(task): Path<String>,
    Extension(requester): Extension<Requester>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<EvaluateRequest>,
) -> Result<Response, ApiError> {
    let services = state.services()?;
    let defaults = services.catalog.definition(&task).await?.spec.defaults;
    let options = request
        .options
        .validate(state.settings().max_tokens_cap, defaults.as_ref())?;
    let rows = if request.leave_one_out {
        if !request.examples.is_empty() {
            return Err(ApiError::invalid(
                "examples",
                "give examples or leave_one_out, not both",
            ));
        }
        services
            .evaluations
            .kind()
            .leave_one_out_rows(&task)
            .await?
    } else {
        check_texts(request.examples.iter().map(|e| e.text.as_str()), "examples")?;
        limits::texts_at_most(
            "examples",
            request
                .examples
                .iter()
                .filter_map(|e| e.text_pair.as_deref()),
            limits::MAX_QUERY_BYTES,
        )?;
        request
            .examples
            .into_iter()
            .map(|e| LabelledRow {
                input: QueryInput {
                    text: e.text,
                    text_pair: e.text_pair,
                    exclude: None,
                },
                label: e.label,
            })
            .collect()
    };
    if rows.is_empty() || rows.len() > MAX_EVALUATION_EXAMPLES {
        return Err(ApiError::invalid(
            "examples",
            format!(
                "{} examples; give 1 to {MAX_EVALUATION_EXAMPLES}",
                rows.len()
            ),
        ));
    }
    let format = Format::of(&headers);
    let background = request
        .background
        .unwrap_or(!format.streams() && rows.len() > SYNC_EVALUATION_ROWS);
    if background {
        if format.streams() {
            return Err(ApiError::invalid(
                "background",
                "a background evaluation is polled, not streamed: drop the streaming Accept \
                 header or `background`",
            ));
        }
        let job = services
            .evaluations
            .start(&task, &requester.0, EvaluationRequest { rows, options })
            .await?;
        let location = format!("/v1/tasks/{task}/evaluations/{}", job.id);
        return Ok(accepted(job, &location));
    }

    let labels = services.evaluations.kind().check(&task, &rows).await?;
    let (inputs, gold): (Vec<QueryInput>, Vec<String>) =
        rows.into_iter().map(|r| (r.input, r.label)).unzip();
    let mut run = services
        .evaluations
        .kind()
        .predictor()
        .start(&task, inputs, &options)
        .await?;
    if !format.streams() {
        let mut predicted = Vec::with_capacity(gold.len());
        while let Some(prediction) = run.next().await {
            predicted.push(prediction?.label.unwrap_or_default());
        }
        return Ok(Json(metrics::evaluate(&labels, &gold, &predicted)).into_response());
    }
    // One line per row as it is scored, then the table; an error is the last line.
    let lines = stream::unfold(Some((run, labels, gold, Vec::new())), |state| async move {
        let (mut run, labels, gold, mut predicted) = state?;
        let Some(next) = run.next().await else {
            let table = metrics::evaluate(&labels, &gold, &predicted);
            let data = json!({ "evaluation": table });
            return Some((
                Line {
                    event: "evaluation",
                    data,
                },
                None,
            ));
        };
        let prediction = match next {
            Ok(prediction) => prediction,
            Err(e) => return Some((Line::error(&e.into()), None)),
        };
        let index = predicted.len();
        let label = prediction.label.unwrap_or_default();
        predicted.push(label);
        let correct = predicted.iter().zip(&gold).filter(|(p, g)| p == g).count();
        let line = RowLine {
            index,
            label: &gold[index],
            predicted: &predicted[index],
            correct: predicted[index] == gold[index],
            probabilities: prediction
                .probabilities
                .into_iter()
                .map(|(label, p)| (label, json!(p)))
                .collect(),
            accuracy: correct as f64 / predicted.len() as f64,
        };
        let data = serde_json::to_value(line).unwrap_or_default();
        Some((
            Line { event: "row", data },
            Some((run, labels, gold, predicted)),
        ))
    });
    Ok(streaming::respond(format, lines, state.shutdown_token()))
}

/// 202 with the started job and its `Location`, where it is polled.
pub(super) fn accepted(job: impl Serialize, location: &str) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(job)).into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[derive(Serialize)]
struct EvaluationList {
    evaluations: Vec<EvaluationJob>,
}

async fn list(
    State(state): State<AppState>,
    Path(task): Path<String>,
) -> Result<Json<EvaluationList>, ApiError> {
    let evaluations = state.services()?.evaluations.list(&task).await?;
    Ok(Json(EvaluationList { evaluations }))
}

async fn get(
    State(state): State<AppState>,
    Path((task, id)): Path<(String, String)>,
) -> Result<Json<EvaluationJob>, ApiError> {
    Ok(Json(state.services()?.evaluations.get(&task, &id).await?))
}

/// Cancels an evaluation: the client that started it may, and so may a key with the
/// admin scope over the task (a read-scoped key may not stop another's work).
async fn cancel(
    State(state): State<AppState>,
    Path((task, id)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    Extension(requester): Extension<Requester>,
) -> Result<Json<EvaluationJob>, ApiError> {
    let only = match &caller {
        Caller::Key(key)
            if key
                .permits(Access::Task(Scope::Admin), Some(&task))
                .is_err() =>
        {
            Some(requester.0.as_str())
        }
        // An admin, or anyone where no key is needed.
        Caller::Key(_) | Caller::Anonymous => None,
    };
    Ok(Json(
        state
            .services()?
            .evaluations
            .cancel(&task, &id, only)
            .await?,
    ))
}
