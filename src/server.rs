//! Starts the service: binds the router at once, opens the database and loads the
//! models in the background (`/ready` answers 503 until they are in; each task is loaded
//! on its first request), and shuts down when told.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::api::{self, AppState, Services, Settings};
use crate::auth::{AuthError, Keyring};
use crate::config::{Config, ConfigError, DeviceKind, ModelConfig};
use crate::embed::{EmbedError, Embedder, EmbedderHandle};
use crate::evaluation::{Evaluations, Evaluator};
use crate::jobs::JobRunner;
use crate::llm::{Llm, LlmError, LlmHandle, LlmRegistry};
use crate::model_source::{self, SourceError};
use crate::predict::Predictor;
use crate::select::selections::{Selector, StageTwoRun};
use crate::store::{Store, StoreError};
use crate::tasks::{Catalog, TaskError};
use crate::tuning::{Tuner, Tunings};

/// How often each replica reads the key table again: the longest a key revoked
/// elsewhere still works here.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why the service could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A model reference could not be resolved to files.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The LLM failed to load.
    #[error("loading the LLM: {0}")]
    Llm(#[from] LlmError),
    /// The embedder failed to load.
    #[error("loading the embedder: {0}")]
    Embed(#[from] EmbedError),
    /// The requested device is not available in this build or on this machine.
    #[error("device {device:?} is not available: {reason}")]
    Device {
        /// The device asked for.
        device: DeviceKind,
        /// What candle said.
        reason: String,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API keys could not be read, or the bootstrap key is not acceptable.
    #[error("API keys: {0}")]
    Auth(#[from] AuthError),
    /// Tasks could not be loaded into memory.
    #[error("loading tasks: {0}")]
    Tasks(#[from] TaskError),
    /// A model's work panicked; the process stopped so that a fresh one takes over.
    #[error("the {0} worker panicked: stopped so that the supervisor starts a fresh process")]
    ModelBroken(&'static str),
    /// Listening or a worker thread failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The loading task died.
    #[error("model loading was aborted: {0}")]
    Aborted(String),
}

/// Opens the candle device for `kind`.
///
/// # Errors
/// When CUDA is asked for in a build without the `cuda` feature or without a GPU.
pub fn open_device(kind: DeviceKind) -> Result<candle_core::Device, ServerError> {
    match kind {
        DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
        DeviceKind::Cuda => candle_core::Device::new_cuda(0).map_err(|e| ServerError::Device {
            device: kind,
            reason: if cfg!(feature = "cuda") {
                e.to_string()
            } else {
                "this build has no CUDA support; rebuild with `--features cuda`".to_owned()
            },
        }),
    }
}

/// Loads the LLMs and the embedder and starts their worker threads; the LLMs share
/// the KV budget equally.
///
/// # Errors
/// When a model cannot be found, read, or placed on the device.
pub fn load_models(
    config: &ModelConfig,
    queue_capacity: usize,
) -> Result<(LlmRegistry, EmbedderHandle), ServerError> {
    config.check()?;
    let device = open_device(config.device)?;

    let entries = config.model_entries()?;
    let kv_bytes = (config.kv_cache_mb << 20) / entries.len().max(1);
    let mut llms = Vec::with_capacity(entries.len());
    for entry in entries {
        let started = Instant::now();
        let model_path = model_source::resolve_gguf(&entry.reference)?;
        let llm = Llm::load(&model_path, &device, config.weights)?;
        tracing::info!(
            model = %entry.name,
            name = llm.name(),
            architecture = llm.architecture(),
            path = %model_path.display(),
            weights = ?config.weights,
            kernels = crate::quant::Isa::detect().name(),
            seconds = started.elapsed().as_secs_f32(),
            "LLM loaded"
        );
        llms.push((entry.name, LlmHandle::spawn(llm, queue_capacity, kv_bytes)?));
    }

    let started = Instant::now();
    let embedder_ref = config.embedder_ref();
    let files = model_source::resolve_embedder(&embedder_ref)?;
    let embedder = Embedder::load(&files, &device)?;
    let embedder_name = std::path::Path::new(&embedder_ref).file_name().map_or_else(
        || embedder_ref.clone(),
        |n| n.to_string_lossy().into_owned(),
    );
    tracing::info!(
        embedder = %embedder_name,
        seconds = started.elapsed().as_secs_f32(),
        "embedder loaded"
    );

    Ok((
        LlmRegistry::new(llms),
        EmbedderHandle::spawn(embedder, &embedder_name, queue_capacity)?,
    ))
}

/// Opens the database and loads the models; tasks are loaded on their first request.
async fn start_services(config: &Config) -> Result<Services, ServerError> {
    let store = Store::connect(&config.database_url).await?;
    let keyring = Keyring::open(
        store.clone(),
        config.require_auth,
        config.bootstrap_key.as_ref().map(|k| k.0.as_str()),
    )
    .await?;
    if !keyring.required() {
        tracing::warn!(
            addr = %config.addr,
            "auth is off: the database holds no API key and --require-auth is not set, so \
             whoever reaches this address may use every route; create a key with \
             `exemplar keys create --scope admin` before exposing it"
        );
    }
    let models = config.models.clone();
    let capacity = config.queue_capacity;
    let (llms, embedder) = tokio::task::spawn_blocking(move || load_models(&models, capacity))
        .await
        .map_err(|e| ServerError::Aborted(e.to_string()))??;
    let runner = Arc::new(JobRunner::new(
        store.clone(),
        Duration::from_secs(config.job_lease_seconds),
        config.job_limits(),
    ));
    let catalog = Arc::new(
        Catalog::new(store, embedder.clone()).with_resident_examples(config.resident_examples),
    );
    let predictor = Arc::new(Predictor::new(Arc::clone(&catalog), llms.clone()));
    Ok(Services {
        keyring: Arc::new(keyring),
        selector: Arc::new(Selector::new(
            Arc::clone(&catalog),
            Arc::clone(&predictor),
            StageTwoRun::Background,
            Arc::clone(&runner),
        )),
        evaluations: Arc::new(Evaluations::new(
            Evaluator::new(Arc::clone(&catalog), Arc::clone(&predictor)),
            Arc::clone(&catalog),
            Arc::clone(&runner),
        )),
        tunings: Arc::new(Tunings::new(
            Tuner::new(Arc::clone(&catalog), Arc::clone(&predictor)),
            Arc::clone(&catalog),
            Arc::clone(&runner),
        )),
        runner,
        predictor,
        llms,
        embedder,
        catalog,
    })
}

/// Runs `tick` every `interval`, the first time at once, for as long as the task lives;
/// a failed tick is logged as `what` and tried again at the next.
async fn every<F, Fut, E>(interval: Duration, what: &'static str, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = tick().await {
            tracing::warn!(error = %e, "{what} failed; retrying");
        }
    }
}

/// Applies what other replicas wrote to the shared database.
async fn sync_replicas(catalog: Arc<Catalog>) -> Result<(), TaskError> {
    let report = catalog.sync().await?;
    if !report.is_empty() {
        tracing::info!(
            tasks = report.tasks,
            added = report.added,
            removed = report.removed,
            failed = report.failed,
            "applied other replicas' writes"
        );
    }
    Ok(())
}

/// How often the server looks for a broken model.
const BROKEN_POLL: Duration = Duration::from_millis(200);

/// Serves the API on `listener` until `shutdown` completes or a model breaks (a panic
/// in its work: then it returns [`ServerError::ModelBroken`] at the end); then answers
/// `/ready` with 503 while serving on for the configured drain period, closes the listener, gives the
/// requests in flight the configured grace before cancelling them, and lets background
/// jobs save their progress.
///
/// # Errors
/// When the configuration cannot work, the models fail to load or the listener fails.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.check()?;
    let state = AppState::new(Settings {
        max_tokens_cap: config.max_tokens_cap,
        device: config.models.device,
        weights: config.models.weights,
    });
    let app = api::router(state.clone(), &config);
    tracing::info!(addr = %listener.local_addr()?, "listening");

    let draining = state.clone();
    let drain = Duration::from_secs(config.drain_seconds);
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let watched = state.clone();
    let broken = async move {
        while watched.broken_model().is_none() {
            tokio::time::sleep(BROKEN_POLL).await;
        }
    };
    let stop_accepting = async move {
        tokio::select! {
            () = shutdown => {}
            () = broken => tracing::error!("a model is broken: shutting down so that the supervisor starts a fresh process"),
        }
        draining.begin_drain();
        tracing::info!(
            drain_seconds = drain.as_secs(),
            "shutting down: /ready answers 503, requests are still served"
        );
        tokio::time::sleep(drain).await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "closing the listener; the requests in flight have the grace to finish"
        );
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tracing::info!("the grace is over: cancelling the requests still running");
            draining.cancel_requests();
        });
    };
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(stop_accepting);
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));

    let services = tokio::select! {
        finished = &mut server => return Ok(finished?),
        loaded = start_services(&config) => loaded?,
    };
    state.set_services(services.clone());
    tracing::info!("ready");
    let sync = (config.sync_interval_ms > 0).then(|| {
        let interval = Duration::from_millis(config.sync_interval_ms);
        let catalog = Arc::clone(&services.catalog);
        tokio::spawn(every(interval, "replica sync", move || {
            sync_replicas(Arc::clone(&catalog))
        }))
    });
    // Keys created or revoked through another replica or `exemplar keys` take effect.
    let keyring = Arc::clone(&services.keyring);
    let keys = tokio::spawn(every(
        KEY_RELOAD_INTERVAL,
        "reading the API keys",
        move || {
            let keyring = Arc::clone(&keyring);
            async move { keyring.reload().await }
        },
    ));
    // Jobs whose lease lapsed because their replica died or stopped.
    // Ended jobs past their retention go at the same pace.
    let (selector, evaluations, tunings, runner) = (
        Arc::clone(&services.selector),
        Arc::clone(&services.evaluations),
        Arc::clone(&services.tunings),
        Arc::clone(&services.runner),
    );
    let resumer = tokio::spawn(every(
        services.runner.resume_interval(),
        "resuming lapsed jobs",
        move || {
            let (selector, evaluations, tunings, runner) = (
                Arc::clone(&selector),
                Arc::clone(&evaluations),
                Arc::clone(&tunings),
                Arc::clone(&runner),
            );
            async move {
                runner.forget_ended().await.map_err(|e| e.to_string())?;
                selector
                    .stage_two()
                    .resume_lapsed()
                    .await
                    .map_err(|e| e.to_string())?;
                evaluations
                    .resume_lapsed()
                    .await
                    .map_err(|e| e.to_string())?;
                tunings.resume_lapsed().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
        },
    ));
    server.await?;
    // No new jobs from here on; the running ones save their progress and stop.
    resumer.abort();
    services.runner.stop().await;
    // Before the database closes under them.
    keys.abort();
    if let Some(sync) = sync {
        sync.abort();
    }
    services.catalog.close().await;
    match state.broken_model() {
        Some(worker) => Err(ServerError::ModelBroken(worker)),
        None => Ok(()),
    }
}
