//! `exemplar select`: runs a selection on a task's pool in this process, against the
//! service's database, with a progress bar, and prints the chosen ids. The selection is
//! stored, so a running server answers it at `GET /v1/tasks/{task}/selections/{id}`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::selections::{Progress, SelectionRequest, Selector, StageTwoRun};
use super::{Method, ParamOverrides};
use crate::config::{ModelConfig, DEFAULT_DATABASE_URL, DEFAULT_JOB_LEASE_SECS};
use crate::jobs::{JobLimits, JobRunner};
use crate::predict::Predictor;
use crate::server::load_models;
use crate::store::Store;
use crate::tasks::Catalog;

/// Options of `exemplar select`.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The task whose pool to select from.
    #[arg(long)]
    pub task: String,
    /// The selection method.
    #[arg(long, value_enum)]
    pub method: Method,
    /// How many items to choose.
    #[arg(long)]
    pub budget: usize,
    /// Seed of the random parts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Neighbours per item in the graph (default: vote-k 150, IDEAL 10).
    #[arg(long)]
    pub k: Option<usize>,
    /// IDEAL's diffusion runs (default 10).
    #[arg(long)]
    pub runs: Option<usize>,
    /// The service's database.
    #[arg(long, env = "EXEMPLAR_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    #[command(flatten)]
    pub models: ModelConfig,
}

/// Runs the selection and prints the chosen ids, one per line.
///
/// # Errors
/// When the database, the models or the selection fail.
pub async fn run(args: &SelectArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.database_url).await?;
    let models = args.models.clone();
    let (llm, embedder) = tokio::task::spawn_blocking(move || load_models(&models, 64))
        .await
        .context("loading models")??;
    let runner = Arc::new(JobRunner::new(
        store.clone(),
        Duration::from_secs(DEFAULT_JOB_LEASE_SECS),
        JobLimits::NONE,
    ));
    let catalog = Arc::new(Catalog::new(store, embedder));
    let predictor = Arc::new(Predictor::new(Arc::clone(&catalog), llm));
    let selector = Arc::new(Selector::new(
        Arc::clone(&catalog),
        predictor,
        StageTwoRun::InCall,
        runner,
    ));
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg:20} {bar:40} {pos}/{len} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let shown = bar.clone();
    let progress: Progress = Arc::new(move |phase: &str, done: usize, of: usize| {
        shown.set_message(phase.to_owned());
        shown.set_length(of as u64);
        shown.set_position(done as u64);
    });
    let request = SelectionRequest {
        method: args.method,
        budget: args.budget,
        seed: args.seed,
        params: ParamOverrides {
            k: args.k,
            runs: args.runs,
            ..ParamOverrides::default()
        },
    };
    let view = selector
        .select(&args.task, "cli", request, progress)
        .await?;
    bar.finish_and_clear();
    catalog.close().await;
    eprintln!(
        "selection {} ({}): {} items, timings {:?}",
        view.id,
        view.state.as_str(),
        view.items.len(),
        view.timings
    );
    if let Some(error) = &view.error {
        anyhow::bail!("vote-k's stage 2 failed: {error}");
    }
    if let Some(next) = &view.next {
        eprintln!("next: {next}");
    }
    for item in &view.items {
        println!("{}", item.id);
    }
    Ok(())
}
