//! Predictions and evaluation: `POST /v1/tasks/{task}/predict` and
//! `POST /v1/tasks/{task}/evaluate`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::limits;
use super::retrieve::{StrategyName, DEFAULT_K};
use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;
use crate::predict::metrics::{self, Evaluation};
use crate::predict::{GenerationOptions, Order, PredictOptions, Prediction, QueryInput, Selection};
use crate::tasks::MAX_ID_BYTES;

/// The most inputs one predict request may carry.
pub const MAX_INPUTS: usize = 64;
/// The most examples one evaluate request may carry.
pub const MAX_EVALUATION_EXAMPLES: usize = 2000;
/// Tokens generated for tasks without labels when the request does not say.
const DEFAULT_MAX_NEW_TOKENS: usize = 32;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![
        Route::post("/v1/tasks/{task}/predict", predict).task(Scope::Read),
        Route::post("/v1/tasks/{task}/evaluate", evaluate).task(Scope::Read),
    ]
}

/// How a request chooses demonstrations: a retrieval strategy or fixed ids.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SelectionName {
    #[default]
    Knn,
    Mmr,
    Random,
    Fixed,
}

/// Options shared by predict and evaluate.
#[derive(Deserialize)]
struct OptionsBody {
    k: Option<usize>,
    #[serde(default)]
    strategy: SelectionName,
    ids: Option<Vec<String>>,
    lambda: Option<f32>,
    seed: Option<u64>,
    #[serde(default)]
    order: Order,
    #[serde(default)]
    calibrate: bool,
    #[serde(default)]
    return_prompt: bool,
    max_prompt_tokens: Option<usize>,
    max_new_tokens: Option<usize>,
    stop: Option<Vec<String>>,
    temperature: Option<f64>,
}

impl OptionsBody {
    fn validate(self, max_tokens_cap: usize) -> Result<PredictOptions, ApiError> {
        let seed = self.seed.unwrap_or(0);
        let selection = match self.strategy {
            SelectionName::Fixed => {
                let ids = self.ids.unwrap_or_default();
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
        let k = self.k.unwrap_or(DEFAULT_K);
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
        let temperature = self.temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("{temperature} is out of range: give 0 (greedy) to 2"),
            ));
        }
        if self.max_prompt_tokens == Some(0) {
            return Err(ApiError::invalid("max_prompt_tokens", "must be at least 1"));
        }
        Ok(PredictOptions {
            k,
            selection,
            order: self.order,
            seed,
            calibrate: self.calibrate,
            return_prompt: self.return_prompt,
            max_prompt_tokens: self.max_prompt_tokens,
            generation: GenerationOptions {
                max_new_tokens,
                stop,
                temperature,
            },
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

fn check_texts<'a>(
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
    ApiJson(request): ApiJson<PredictRequest>,
) -> Result<Json<PredictResponse>, ApiError> {
    if request.inputs.is_empty() || request.inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "inputs",
            format!(
                "{} inputs given; give 1 to {MAX_INPUTS}",
                request.inputs.len()
            ),
        ));
    }
    check_texts(request.inputs.iter().map(|i| i.text.as_str()), "inputs")?;
    limits::texts_at_most(
        "inputs",
        request.inputs.iter().filter_map(|i| i.text_pair.as_deref()),
        limits::MAX_QUERY_BYTES,
    )?;
    let options = request.options.validate(state.settings().max_tokens_cap)?;
    let inputs = request
        .inputs
        .into_iter()
        .map(|i| QueryInput {
            text: i.text,
            text_pair: i.text_pair,
            exclude: None,
        })
        .collect();
    let predictions = state
        .services()?
        .predictor
        .predict(&task, inputs, &options)
        .await?;
    Ok(Json(PredictResponse {
        predictions: predictions.into_iter().map(Into::into).collect(),
    }))
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
    #[serde(flatten)]
    options: OptionsBody,
}

async fn evaluate(
    State(state): State<AppState>,
    Path(task): Path<String>,
    ApiJson(request): ApiJson<EvaluateRequest>,
) -> Result<Json<Evaluation>, ApiError> {
    let services = state.services()?;
    let options = request.options.validate(state.settings().max_tokens_cap)?;
    let definition = services.catalog.definition(&task).await?;
    if !definition.spec.is_classification() {
        return Err(ApiError::invalid(
            "task",
            "evaluation measures classification; this task has no labels",
        ));
    }
    let (inputs, gold): (Vec<QueryInput>, Vec<String>) = if request.leave_one_out {
        if !request.examples.is_empty() {
            return Err(ApiError::invalid(
                "examples",
                "give examples or leave_one_out, not both",
            ));
        }
        services
            .catalog
            .examples(&task)?
            .all()
            .into_iter()
            .map(|e| {
                let input = QueryInput {
                    text: e.text.clone(),
                    text_pair: e.text_pair.clone(),
                    exclude: Some(e.id.clone()),
                };
                (input, e.label.clone())
            })
            .unzip()
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
            .map(|e| {
                let input = QueryInput {
                    text: e.text,
                    text_pair: e.text_pair,
                    exclude: None,
                };
                (input, e.label)
            })
            .unzip()
    };
    if inputs.is_empty() || inputs.len() > MAX_EVALUATION_EXAMPLES {
        return Err(ApiError::invalid(
            "examples",
            format!(
                "{} examples; give 1 to {MAX_EVALUATION_EXAMPLES}",
                inputs.len()
            ),
        ));
    }
    if let Some((i, label)) = gold
        .iter()
        .enumerate()
        .find(|(_, l)| !definition.spec.labels.contains(l))
    {
        return Err(ApiError::invalid(
            "examples",
            format!("example {i}: label `{label}` is not one of the task's labels"),
        ));
    }
    let predictions = services.predictor.predict(&task, inputs, &options).await?;
    let predicted: Vec<String> = predictions
        .into_iter()
        .map(|p| p.label.unwrap_or_default())
        .collect();
    Ok(Json(metrics::evaluate(
        &definition.spec.labels,
        &gold,
        &predicted,
    )))
}
