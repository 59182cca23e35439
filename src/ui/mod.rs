//! The annotation page at `/ui`: plain HTML, CSS and JavaScript compiled into the binary,
//! speaking only the public API, so the page can do nothing a curl user cannot and needs
//! no build step.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// One file of the page.
struct Asset {
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/index.html"),
};
const SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("assets/app.js"),
};
const STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("assets/style.css"),
};

/// Only the page's own files may run or style it: text from the API is never markup.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

impl IntoResponse for &'static Asset {
    fn into_response(self) -> Response {
        (
            [
                (CONTENT_TYPE, HeaderValue::from_static(self.content_type)),
                // The files change only with the binary; a restarted server must not
                // be paired with an old script.
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            ],
            self.body,
        )
            .into_response()
    }
}

/// The page's routes, public like `/health`: the API key is entered in the page and
/// sent by it with every API call.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { &INDEX }))
        .route("/ui/app.js", get(|| async { &SCRIPT }))
        .route("/ui/style.css", get(|| async { &STYLE }))
}
