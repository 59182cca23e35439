//! `GET /metrics`: the service's counters, gauges and histograms in Prometheus text.
//!
//! Code anywhere records through the `metrics` facade; this module installs the
//! Prometheus recorder, counts every HTTP answer by route and status, and renders.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::{AppState, Route};

/// Histogram buckets in seconds: from a quick retrieval to an hour-long selection.
const SECONDS_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 3600.0,
];

/// The route label of requests that match no route: their paths are the client's to
/// choose, and one series per path would grow without bound.
const UNMATCHED: &str = "unmatched";

/// Routes of this resource.
pub fn routes() -> Vec<Route> {
    vec![Route::get("/metrics", render).public()]
}

/// The process's Prometheus recorder, installed on the first call.
///
/// The recorder is global to the process; every router in it shares one handle.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then that one records
            // and this handle renders nothing, which is no reason to stop serving.
            if ::metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

/// Gives every metric the service records its `# HELP` line.
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "exemplar_requests_total",
        "HTTP answers by method, route and status"
    );
    describe_histogram!(
        "exemplar_request_duration_seconds",
        Unit::Seconds,
        "Time from request to answer, by route"
    );
    describe_gauge!("exemplar_ready", "1 once the models are loaded");
    describe_gauge!(
        "exemplar_resident_tasks",
        "Tasks whose examples and index are in memory"
    );
    describe_gauge!(
        "exemplar_resident_examples",
        "Annotated examples in memory over all tasks (bounded by --resident-examples)"
    );
    describe_counter!(
        "exemplar_task_loads_total",
        "Tasks read from the database into memory on a first use"
    );
    describe_counter!(
        "exemplar_task_unloads_total",
        "Tasks dropped from memory, least recently used past --resident-examples"
    );
    describe_gauge!(
        "exemplar_queue_waiting",
        "Jobs waiting for a model worker, by queue"
    );
    describe_gauge!(
        "exemplar_llm_running_jobs",
        "Jobs the LLM scheduler runs side by side"
    );
    describe_histogram!(
        "exemplar_llm_step_tokens",
        "Tokens of all running jobs packed into one forward pass"
    );
    describe_counter!(
        "exemplar_predictions_total",
        "Inputs predicted (API, evaluation and vote-k's stage 2)"
    );
    describe_counter!(
        "exemplar_prediction_prompt_tokens_total",
        "Prompt tokens of the inputs predicted"
    );
    describe_histogram!(
        "exemplar_prediction_duration_seconds",
        Unit::Seconds,
        "Time to predict one input: retrieval, prompt and model"
    );
    describe_counter!(
        "exemplar_job_queue_waits_total",
        "Pauses of background jobs, by kind, that met a full model queue and run again on their replica"
    );
    describe_counter!(
        "exemplar_sync_task_failures_total",
        "Tasks a replica sync could not bring up to date (retried at the next sync)"
    );
}

/// Counts the answer to every request, by method, route and status, and times it.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    // Only known methods become label values: a client inventing methods must not
    // grow the metrics without bound.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    ::metrics::histogram!("exemplar_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    ::metrics::counter!(
        "exemplar_requests_total",
        "method" => method,
        "route" => route,
        "status" => status
    )
    .increment(1);
    response
}

async fn render(State(state): State<AppState>) -> Response {
    let services = state.services().ok();
    ::metrics::gauge!("exemplar_ready").set(if services.is_some() { 1.0 } else { 0.0 });
    if let Some(services) = services {
        for (name, llm) in services.llms.iter() {
            ::metrics::gauge!("exemplar_queue_waiting", "queue" => "llm", "model" => name.to_owned())
                .set(llm.waiting() as f64);
        }
        ::metrics::gauge!("exemplar_queue_waiting", "queue" => "embedder")
            .set(services.embedder.waiting() as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics().render(),
    )
        .into_response()
}
