//! API keys: `GET/POST /v1/keys` and `DELETE /v1/keys/{id}`, for admin keys that are
//! not limited to some tasks.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;

use super::{ApiError, ApiJson, AppState, Route};
use crate::auth::{Caller, KeyInfo, KeyRequest, Scope};

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/v1/keys", list).service(Scope::Admin),
        Route::post("/v1/keys", create).service(Scope::Admin),
        Route::delete("/v1/keys/{id}", revoke).service(Scope::Admin),
    ]
}

#[derive(Serialize)]
struct KeyList {
    keys: Vec<KeyInfo>,
}

/// A new key: the only answer that ever holds the key itself.
#[derive(Serialize)]
struct CreatedKey {
    key: String,
    #[serde(flatten)]
    info: KeyInfo,
}

async fn list(State(state): State<AppState>) -> Result<Json<KeyList>, ApiError> {
    let keys = state.services()?.keyring.list().await?;
    Ok(Json(KeyList { keys }))
}

async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<KeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let key = state.services()?.keyring.create(&request).await?;
    tracing::info!(id = %key.info.id, scope = key.info.scope.as_str(), "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: key.secret,
            info: key.info,
        }),
    ))
}

/// Revokes another key: a key revoking itself would lock its holder out, perhaps of the
/// last admin key.
async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if matches!(&caller, Caller::Key(key) if key.id == id) {
        return Err(ApiError::SelfRevocation);
    }
    if state.services()?.keyring.revoke(&id).await? {
        tracing::info!(%id, "API key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::KeyNotFound(id))
    }
}
