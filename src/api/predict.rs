//! Predictions: `POST /v1/tasks/{task}/predict`, answered whole or streamed input by
//! input; and the prediction options that evaluations share.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream;
use serde::{Deserialize, Serialize};

use super::limits;
use super::retrieve::{StrategyName, DEFAULT_K};
use super::streaming::{self, Format, Line};
use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;
use crate::predict::defaults::{Calibration, PredictDefaults, StrategyChoice};
use crate::predict::{GenerationOptions, Order, PredictOptions, Prediction, QueryInput, Selection};
use crate::tasks::MAX_ID_BYTES;

/// Tokens generated for tasks without labels when the request does not say.
const DEFAULT_MAX_NEW_TOKENS: usize = 32;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::post("/v1/tasks/{task}/predict", predict).task(Scope::Read)]
}

/// How a request chooses demonstrations: a retrieval strategy or fixed ids.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SelectionName {
    Knn,
    Mmr,
    Random,
    Fixed,
}

impl From<StrategyChoice> for SelectionName {
    fn from(choice: StrategyChoice) -> Self {
        match choice {
            StrategyChoice::Knn => Self::Knn,
            StrategyChoice::Mmr => Self::Mmr,
        }
    }
}

/// Options shared by predict and evaluate. What a request leaves out comes from the
/// task's defaults, then from the service's.
#[derive(Deserialize)]
pub(super) struct OptionsBody {
    k: Option<usize>,
    strategy: Option<SelectionName>,
    ids: Option<Vec<String>>,
    lambda: Option<f32>,
    seed: Option<u64>,
    order: Option<Order>,
    calibrate: Option<bool>,
    calibration: Option<Calibration>,
    vote_weight: Option<f64>,
    #[serde(default)]
    cover_labels: bool,
    cached_demonstrations: Option<bool>,
    #[serde(default)]
    return_prompt: bool,
    max_prompt_tokens: Option<usize>,
    max_new_tokens: Option<usize>,
    stop: Option<Vec<String>>,
    temperature: Option<f64>,
}

impl OptionsBody {
    /// The options, checked, with the task's `defaults` and then the service's filled
    /// in.
    pub(super) fn validate(
        self,
        max_tokens_cap: usize,
        defaults: Option<&PredictDefaults>,
    ) -> Result<PredictOptions, ApiError> {
        let defaults = defaults.cloned().unwrap_or_default();
        let seed = self.seed.unwrap_or(0);
        let strategy = self.strategy.unwrap_or_else(|| {
            defaults
                .strategy
                .map_or(SelectionName::Knn, SelectionName::from)
        });
        let selection = match strategy {
            SelectionName::Fixed => {
                let ids = self.ids.unwrap_or_default();
                if self.cover_labels {
                    return Err(ApiError::invalid(
                        "cover_labels",
                        "fixed demonstrations are the ones given: cover_labels needs a retrieval strategy",
                    ));
                }
                if ids.is_empty() {
                    return Err(ApiError::invalid(
                        "ids",
                        "strategy `fixed` needs the example ids",
                    ));
                }
                limits::at_most("ids", "ids", ids.len(), limits::MAX_K)?;
                limits::texts_at_most("ids", ids.iter().map(String::as_str), MAX_ID_BYTES)?;
                Selection::Fixed(ids)
            }
            other => {
                if self.ids.is_some() {
                    return Err(ApiError::invalid("ids", "only strategy `fixed` takes ids"));
                }
                let name = match other {
                    SelectionName::Mmr => StrategyName::Mmr,
                    SelectionName::Random => StrategyName::Random,
                    _ => StrategyName::Knn,
                };
                Selection::Retrieve(name.with(self.lambda, Some(seed)))
            }
        };
        let k = self.k.or(defaults.k).unwrap_or(DEFAULT_K);
        limits::in_range("k", k, 0, limits::MAX_K)?;
        let stop = self.stop.unwrap_or_default();
        limits::stop_strings(&stop)?;
        let max_new_tokens = self.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS);
        if max_new_tokens == 0 || max_new_tokens > max_tokens_cap {
            return Err(ApiError::invalid(
                "max_new_tokens",
                format!("{max_new_tokens} is out of range: give 1 to {max_tokens_cap}"),
            ));
        }
        let temperature = limits::temperature(self.temperature)?;
        let vote_weight = self.vote_weight.or(defaults.vote_weight);
        if let Some(weight) = vote_weight {
            if !(0.0..=1.0).contains(&weight) {
                return Err(ApiError::invalid(
                    "vote_weight",
                    format!(
                        "{weight} is out of range: give 0 (the LLM alone) to 1 (the vote alone)"
                    ),
                ));
            }
        }
        if self.max_prompt_tokens == Some(0) {
            return Err(ApiError::invalid("max_prompt_tokens", "must be at least 1"));
        }
        let calibration = match (self.calibrate, self.calibration) {
            (Some(calibrate), Some(calibration))
                if calibrate != (calibration == Calibration::Contextual) =>
            {
                return Err(ApiError::invalid(
                    "calibrate",
                    "`calibrate` and `calibration` disagree: give one of them",
                ));
            }
            (_, Some(calibration)) => calibration,
            (Some(true), None) => Calibration::Contextual,
            (Some(false), None) => Calibration::None,
            (None, None) => defaults.calibration.unwrap_or_default(),
        };
        let label_prior = match calibration {
            Calibration::Batch => Some(defaults.label_prior.ok_or_else(|| {
                ApiError::invalid(
                    "calibration",
                    "batch calibration divides by the task's mean label distribution, which \
                     the tune job measures: run POST /v1/tasks/{task}/tune first",
                )
            })?),
            _ => None,
        };
        Ok(PredictOptions {
            k,
            selection,
            order: self.order.or(defaults.order).unwrap_or_default(),
            seed,
            calibrate: calibration == Calibration::Contextual,
            label_prior,
            vote_weight,
            cover_labels: self.cover_labels,
            cached_demonstrations: self
                .cached_demonstrations
                .or(defaults.cached_demonstrations)
                .unwrap_or(false),
            return_prompt: self.return_prompt,
            max_prompt_tokens: self.max_prompt_tokens,
            generation: GenerationOptions {
                max_new_tokens,
                stop,
                temperature,
            },
            model: None,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    text: String,
    text_pair: Option<String>,
}

#[derive(Deserialize)]
struct PredictRequest {
    inputs: Vec<InputBody>,
    #[serde(flatten)]
    options: OptionsBody,
}

#[derive(Serialize)]
struct DemonstrationRef {
    id: String,
    similarity: f32,
}

#[derive(Serialize)]
struct PredictionBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    probabilities: BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    llm_probabilities: Option<BTreeMap<String, f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vote_probabilities: Option<BTreeMap<String, f64>>,
    demonstrations: Vec<DemonstrationRef>,
    prompt_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
}

impl From<Prediction> for PredictionBody {
    fn from(p: Prediction) -> Self {
        Self {
            label: p.label,
            output: p.output,
            probabilities: p.probabilities.into_iter().collect(),
            llm_probabilities: p.llm_probabilities.map(|l| l.into_iter().collect()),
            vote_probabilities: p.vote_probabilities.map(|v| v.into_iter().collect()),
            demonstrations: p
                .demonstrations
                .into_iter()
                .map(|d| DemonstrationRef {
                    id: d.example.id.clone(),
                    similarity: d.similarity,
                })
                .collect(),
            prompt_tokens: p.prompt_tokens,
            prompt: p.prompt,
        }
    }
}

#[derive(Serialize)]
struct PredictResponse {
    predictions: Vec<PredictionBody>,
}

/// A streamed prediction: which input it answers, then the prediction.
#[derive(Serialize)]
struct IndexedPrediction {
    index: usize,
    #[serde(flatten)]
    prediction: PredictionBody,
}

/// Refuses empty texts and texts over the query size limit.
pub(super) fn check_texts<'a>(
    texts: impl Iterator<Item = &'a str>,
    field: &'static str,
) -> Result<(), ApiError> {
    for (i, text) in texts.enumerate() {
        if text.trim().is_empty() {
            return Err(ApiError::invalid(field, format!("text {i} is empty")));
        }
        limits::text_at_most(field, i, text, limits::MAX_QUERY_BYTES)?;
    }
    Ok(())
}

async fn predict(
    State(state): State<AppState>,
    Path(task): Path<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<PredictRequest>,
) -> Result<Response, ApiError> {
    if request.inputs.is_empty() || request.inputs.len() > limits::MAX_INPUTS {
        return Err(ApiError::invalid(
            "inputs",
            format!(
                "{} inputs given; give 1 to {}",
                request.inputs.len(),
                limits::MAX_INPUTS
            ),
        ));
    }
    check_texts(request.inputs.iter().map(|i| i.text.as_str()), "inputs")?;
    limits::texts_at_most(
        "inputs",
        request.inputs.iter().filter_map(|i| i.text_pair.as_deref()),
        limits::MAX_QUERY_BYTES,
    )?;
    let defaults = state
        .services()?
        .catalog
        .definition(&task)
        .await?
        .spec
        .defaults;
    let options = request
        .options
        .validate(state.settings().max_tokens_cap, defaults.as_ref())?;
    let inputs = request
        .inputs
        .into_iter()
        .map(|i| QueryInput {
            text: i.text,
            text_pair: i.text_pair,
            exclude: None,
        })
        .collect();
    let mut run = state
        .services()?
        .predictor
        .start(&task, inputs, &options)
        .await?;
    let format = Format::of(&headers);
    if !format.streams() {
        let mut predictions = Vec::with_capacity(run.remaining());
        while let Some(prediction) = run.next().await {
            predictions.push(prediction?.into());
        }
        return Ok(Json(PredictResponse { predictions }).into_response());
    }
    // One line per input as it is scored; an error is the last line.
    let lines = stream::unfold(Some((run, 0)), |state| async move {
        let (mut run, index) = state?;
        match run.next().await? {
            Ok(prediction) => {
                let line = IndexedPrediction {
                    index,
                    prediction: prediction.into(),
                };
                let data = serde_json::to_value(line).unwrap_or_default();
                let line = Line {
                    event: "prediction",
                    data,
                };
                Some((line, Some((run, index + 1))))
            }
            Err(e) => Some((Line::error(&e.into()), None)),
        }
    });
    Ok(streaming::respond(format, lines, state.shutdown_token()))
}
