//! The key check in front of every guarded route: reads `Authorization: Bearer KEY`,
//! finds whose key it is, checks its scope and tasks against the route's [`Access`],
//! and leaves the [`Caller`] in the request for the handlers and the fair-share limits.
//! The key itself goes nowhere else: not into a log line, not into an answer.

use axum::extract::{RawPathParams, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, AppState};
use crate::auth::{Access, AuthError, Caller};

/// What the check of one route needs.
#[derive(Clone)]
pub struct Guard {
    state: AppState,
    access: Access,
}

impl Guard {
    /// The check for a route with `access`.
    pub fn new(state: AppState, access: Access) -> Self {
        Self { state, access }
    }
}

/// The key of an `Authorization: Bearer` header, if the request has one.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::Invalid)?;
    match value.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(key.trim())),
        _ => Err(AuthError::Invalid),
    }
}

/// The middleware: admits the request if its key allows the route, or answers 401/403.
pub async fn authenticate(
    State(guard): State<Guard>,
    params: RawPathParams,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let keyring = &guard.state.services()?.keyring;
    let caller = keyring.caller(bearer(request.headers())?)?;
    if let Caller::Key(key) = &caller {
        let task = params
            .iter()
            .find(|(name, _)| *name == "task")
            .map(|(_, value)| value);
        key.permits(guard.access, task)?;
    }
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    #[test]
    fn reads_bearer_keys_only() {
        assert_eq!(bearer(&HeaderMap::new()).unwrap(), None);
        assert_eq!(bearer(&headers("Bearer exm_1")).unwrap(), Some("exm_1"));
        assert_eq!(bearer(&headers("bearer  exm_1 ")).unwrap(), Some("exm_1"));
        assert!(matches!(
            bearer(&headers("Basic dXNlcjpwdw==")),
            Err(AuthError::Invalid)
        ));
        assert!(matches!(bearer(&headers("exm_1")), Err(AuthError::Invalid)));
    }
}
