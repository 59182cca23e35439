//! The HTTP API: one file per resource, each adding its routes to the router.
//!
//! Handlers extract and validate the request, call the model handles, and shape the
//! answer. Every failure is an [`ApiError`], turned into HTTP in `error.rs`.

mod auth;
mod embeddings;
mod error;
mod evaluations;
mod fairness;
mod health;
mod info;
mod items;
mod json;
mod keys;
mod limits;
mod metrics;
mod openai;
mod predict;
mod retrieve;
mod selections;
mod streaming;
mod tasks;
mod tokenize;
mod tunings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{self, MethodRouter};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

pub use error::ApiError;
pub use json::ApiJson;
pub use metrics::recorder as metrics_recorder;

use crate::auth::{Access, Keyring, Scope};
use crate::config::{Config, DeviceKind, WeightFormat};
use crate::embed::EmbedderHandle;
use crate::evaluation::Evaluations;
use crate::jobs::JobRunner;
use crate::llm::LlmRegistry;
use crate::predict::Predictor;
use crate::select::selections::Selector;
use crate::tasks::Catalog;
use crate::tuning::Tunings;

/// What start-up loads before the service is ready: the models, and the catalog that
/// loads each task on its first use.
#[derive(Clone)]
pub struct Services {
    /// The LLM workers, by name.
    pub llms: LlmRegistry,
    /// The sentence embedder worker.
    pub embedder: EmbedderHandle,
    /// Tasks, examples, pool items and their indexes.
    pub catalog: Arc<Catalog>,
    /// Predictions over the catalog's tasks.
    pub predictor: Arc<Predictor>,
    /// Selective annotation over the catalog's pools.
    pub selector: Arc<Selector>,
    /// Evaluations, in the request or as background jobs.
    pub evaluations: Arc<Evaluations>,
    /// Tunings of tasks' prediction defaults, as background jobs.
    pub tunings: Arc<Tunings>,
    /// Background jobs: vote-k's stage 2, evaluations and tunings.
    pub runner: Arc<JobRunner>,
    /// The API keys that requests are checked against.
    pub keyring: Arc<Keyring>,
}

/// Limits and facts that validation and `/v1/info` need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The largest `max_tokens` a completion may ask for.
    pub max_tokens_cap: usize,
    /// Where the models run.
    pub device: DeviceKind,
    /// How the LLM weights are held.
    pub weights: WeightFormat,
}

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    services: Arc<OnceLock<Services>>,
    draining: Arc<AtomicBool>,
    /// Cancelled when the grace after the drain is over: requests still running stop.
    shutdown: CancellationToken,
    settings: Arc<Settings>,
    metrics: PrometheusHandle,
}

impl AppState {
    /// A state whose models are not loaded yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            services: Arc::new(OnceLock::new()),
            draining: Arc::new(AtomicBool::new(false)),
            shutdown: CancellationToken::new(),
            settings: Arc::new(settings),
            metrics: metrics::recorder(),
        }
    }

    /// Makes the services available; the service becomes ready.
    pub fn set_services(&self, services: Services) {
        // Loading happens once at start-up, so a second call cannot occur.
        let _ = self.services.set(services);
    }

    /// The services, or [`ApiError::NotReady`] while they load.
    ///
    /// # Errors
    /// While start-up is still loading models or indexes.
    pub fn services(&self) -> Result<&Services, ApiError> {
        self.services.get().ok_or(ApiError::NotReady)
    }

    /// The worker of a model broken by a panic, if any: the server stops taking work.
    pub fn broken_model(&self) -> Option<&'static str> {
        let services = self.services.get()?;
        services
            .llms
            .iter()
            .find_map(|(_, llm)| llm.broken())
            .or_else(|| services.embedder.broken())
    }

    /// Marks the server as stopping: `/ready` answers 503 from now on, other routes
    /// go on serving.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the server is stopping.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Cuts short every request still running: their work is dropped and they answer
    /// 503 (streams end with an error line).
    pub fn cancel_requests(&self) {
        self.shutdown.cancel();
    }

    /// What [`AppState::cancel_requests`] cancels.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The configured limits.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What renders the recorded metrics.
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.metrics
    }
}

/// One endpoint: a method on a path, who may call it, and the handler that answers it.
pub struct Route {
    method: Method,
    path: &'static str,
    access: Access,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn new(method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Self {
        Self {
            method,
            path,
            // Until a route says otherwise it is the most guarded, so that a route whose
            // access was forgotten fails closed.
            access: Access::Service(Scope::Admin),
            handler,
        }
    }

    /// Who may call this route.
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// A key with `scope` that covers the `{task}` of the path.
    pub fn task(self, scope: Scope) -> Self {
        self.access(Access::Task(scope))
    }

    /// A key with `scope`, for a route that names no task.
    pub fn service(self, scope: Scope) -> Self {
        self.access(Access::Service(scope))
    }

    /// Anyone, without a key and without per-client limits.
    pub fn public(self) -> Self {
        self.access(Access::Public)
    }

    /// `GET path`.
    pub fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self::new(Method::GET, path, routing::get(handler))
    }

    /// `POST path`.
    pub fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self::new(Method::POST, path, routing::post(handler))
    }

    /// `PUT path`.
    pub fn put<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self::new(Method::PUT, path, routing::put(handler))
    }

    /// `DELETE path`.
    pub fn delete<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self::new(Method::DELETE, path, routing::delete(handler))
    }
}

/// Every route of the API, from the resource modules.
fn routes() -> Vec<Route> {
    [
        health::routes(),
        metrics::routes(),
        info::routes(),
        openai::routes(),
        keys::routes(),
        tokenize::routes(),
        embeddings::routes(),
        tasks::routes(),
        items::routes(),
        retrieve::routes(),
        predict::routes(),
        evaluations::routes(),
        tunings::routes(),
        selections::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The method, path and access of every route, as the router serves them
/// (`openapi.yaml` must describe exactly these).
pub fn endpoints() -> Vec<(Method, &'static str, Access)> {
    routes()
        .into_iter()
        .map(|r| (r.method, r.path, r.access))
        .collect()
}

/// The full router with its layers: tracing, metrics, a body limit, a request timeout
/// and the cut at shutdown on every route; on guarded routes the caller's key, then its
/// fair share.
pub fn router(state: AppState, config: &Config) -> Router {
    let limits = Arc::new(fairness::ClientLimits::new(
        config.client_max_in_flight,
        config.client_rate,
        config.trust_forwarded_for,
    ));
    routes()
        .into_iter()
        // Routes on one path with different methods merge into one method router.
        .fold(Router::new(), |router, route| {
            let handler = match route.access {
                Access::Public => route.handler,
                // The last layer runs first: the key is checked before it is counted.
                access => route
                    .handler
                    .route_layer(axum::middleware::from_fn_with_state(
                        Arc::clone(&limits),
                        fairness::limit,
                    ))
                    .route_layer(axum::middleware::from_fn_with_state(
                        auth::Guard::new(state.clone(), access),
                        auth::authenticate,
                    )),
            };
            router.route(route.path, handler)
        })
        .merge(crate::ui::routes())
        .fallback(|uri: Uri| async move { ApiError::UnknownRoute(uri.path().to_owned()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            streaming::cancel_at_shutdown,
        ))
        .with_state(state)
        // The configured limit below is the only one, not axum's 2 MB default.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(config.request_timeout_secs),
        ))
        .layer(axum::middleware::map_response(error::envelope_layer_errors))
        .layer(axum::middleware::from_fn(metrics::track))
        // Failures are logged once, by `ApiError`, with their cause; 503s while the
        // models load are expected and stay out of the error log.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)))
}
