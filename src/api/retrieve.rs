//! `POST /v1/tasks/{task}/retrieve`: the demonstrations a query would get.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::limits;
use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::Scope;
use crate::retrieve::{Strategy, DEFAULT_MMR_LAMBDA};
use crate::tasks::{Demonstration, RetrieveQuery};

/// Demonstrations returned when the request does not say.
pub const DEFAULT_K: usize = 8;

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::post("/v1/tasks/{task}/retrieve", retrieve).task(Scope::Read)]
}

/// The strategies a request may name.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyName {
    /// The k most similar.
    #[default]
    Knn,
    /// Maximal marginal relevance.
    Mmr,
    /// A seeded random sample.
    Random,
}

impl StrategyName {
    /// The strategy with its parameters; a missing seed draws one.
    pub fn with(self, lambda: Option<f32>, seed: Option<u64>) -> Strategy {
        match self {
            Self::Knn => Strategy::Knn,
            Self::Mmr => Strategy::Mmr {
                lambda: lambda.unwrap_or(DEFAULT_MMR_LAMBDA),
            },
            Self::Random => Strategy::Random {
                seed: seed.unwrap_or_else(rand::random),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrieveRequest {
    text: String,
    text_pair: Option<String>,
    k: Option<usize>,
    #[serde(default)]
    strategy: StrategyName,
    lambda: Option<f32>,
    seed: Option<u64>,
}

impl RetrieveRequest {
    /// The query, once its texts and `k` are within their caps.
    fn validate(self) -> Result<RetrieveQuery, ApiError> {
        if self.text.trim().is_empty() {
            return Err(ApiError::invalid("text", "must not be empty"));
        }
        let texts = std::iter::once(self.text.as_str()).chain(self.text_pair.as_deref());
        limits::texts_at_most("text", texts, limits::MAX_QUERY_BYTES)?;
        let k = self.k.unwrap_or(DEFAULT_K);
        limits::in_range("k", k, 0, limits::MAX_K)?;
        Ok(RetrieveQuery {
            text: self.text,
            text_pair: self.text_pair,
            k,
            strategy: self.strategy.with(self.lambda, self.seed),
        })
    }
}

#[derive(Serialize)]
struct DemonstrationBody {
    id: String,
    text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_pair: Option<String>,
    label: String,
    similarity: f32,
}

impl From<Demonstration> for DemonstrationBody {
    fn from(d: Demonstration) -> Self {
        Self {
            id: d.example.id.clone(),
            text: d.example.text.clone(),
            text_pair: d.example.text_pair.clone(),
            label: d.example.label.clone(),
            similarity: d.similarity,
        }
    }
}

#[derive(Serialize)]
struct RetrieveResponse {
    demonstrations: Vec<DemonstrationBody>,
}

async fn retrieve(
    State(state): State<AppState>,
    Path(task): Path<String>,
    ApiJson(request): ApiJson<RetrieveRequest>,
) -> Result<Json<RetrieveResponse>, ApiError> {
    let query = request.validate()?;
    let demonstrations = state.services()?.catalog.retrieve(&task, query).await?;
    Ok(Json(RetrieveResponse {
        demonstrations: demonstrations.into_iter().map(Into::into).collect(),
    }))
}
