//! The `exemplar` command line: `serve` runs the HTTP service, `import` loads data into
//! it, `eval` and `predict` run a file through it, `select` chooses pool items to
//! annotate, `keys` manages API keys, `bench` measures speed, `experiment` writes the result tables.

use std::io::IsTerminal;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use exemplar::auth::cli::KeysArgs;
use exemplar::bench::BenchArgs;
use exemplar::client::eval::EvalArgs;
use exemplar::client::import::ImportArgs;
use exemplar::client::predict::PredictArgs;
use exemplar::client::tune::TuneArgs;
use exemplar::config::Config;
use exemplar::experiments::icl::IclArgs;
use exemplar::experiments::order::OrderArgs;
use exemplar::experiments::selection::SelectionArgs;
use exemplar::experiments::vote::VoteArgs;
use exemplar::select::cli::SelectArgs;

/// jemalloc rather than glibc's allocator: the models' tensors come and go in every
/// step, on several threads, and glibc's arenas kept the freed memory resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the environment
/// still overrides them): freed pages go back to the system after a second unused
/// rather than ten, so a burst of requests' activations does not stay resident on top
/// of the KV budget (the predict bench's peak: 591 to 633 MB against 651 to 665 with
/// jemalloc's default, at the same throughput; docs/results.md, "The allocator").
#[export_name = "_rjem_malloc_conf"]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 20] = b"dirty_decay_ms:1000\0";

/// An HTTP service for in-context learning.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// How log lines are written: `json` (one object per line, for log collectors) or
    /// `text` (coloured only when standard error is a terminal).
    #[arg(long, global = true, env = "EXEMPLAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// The shape of log lines on standard error.
#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(Config),
    /// Load a JSON-lines or CSV file into a task of a running server.
    Import(ImportArgs),
    /// Evaluate a task on a labelled file through a running server: accuracy, macro-F1,
    /// per-label scores and the confusion matrix.
    Eval(EvalArgs),
    /// Label every row of a file through a running server, as JSON lines.
    Predict(PredictArgs),
    /// Tune a task's prediction defaults on a running server (k, strategy, calibration,
    /// vote weight, ...) by leave-one-out over its annotated examples, with a progress bar.
    Tune(TuneArgs),
    /// Choose which pool items of a task to annotate (vote-k, IDEAL, ...).
    Select(SelectArgs),
    /// Create, list and revoke API keys in the service's database.
    Keys(KeysArgs),
    /// Measure prompt, generation and embedding speed on this machine.
    Bench(BenchArgs),
    /// Run an experiment on the public data sets and write its table.
    #[command(subcommand)]
    Experiment(Experiment),
}

#[derive(Subcommand)]
enum Experiment {
    /// In-context learning on SST-2, TREC and SUBJ with each retrieval strategy.
    Icl(IclArgs),
    /// Selective annotation on SST-2 and TREC with each selection method.
    Selection(SelectionArgs),
    /// The LLM, its demonstrations' vote, and their mix with a weight tuned by
    /// leave-one-out, on SST-2, TREC and SUBJ.
    Vote(VoteArgs),
    /// Demonstration order (nearest last or first) against accuracy and prefix-cache
    /// reuse, on SST-2 and TREC.
    Order(OrderArgs),
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Runs the command; an error is printed as one line (its causes after colons, no
/// backtrace) and the process exits with status 1.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,hnsw_rs=warn")),
        );
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    match cli.command {
        Command::Serve(mut config) => {
            config.read_secret_files()?;
            config.check()?;
            config.models.apply_to_process();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let listener = TcpListener::bind(config.addr)
                    .await
                    .with_context(|| format!("binding {}", config.addr))?;
                exemplar::serve(listener, config, shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Import(args) => exemplar::client::import::run(&args),
        Command::Eval(args) => exemplar::client::eval::run(&args),
        Command::Predict(args) => exemplar::client::predict::run(&args),
        Command::Tune(args) => exemplar::client::tune::run(&args),
        Command::Select(args) => {
            args.models.apply_to_process();
            tokio::runtime::Runtime::new()?.block_on(exemplar::select::cli::run(&args))
        }
        Command::Keys(args) => {
            tokio::runtime::Runtime::new()?.block_on(exemplar::auth::cli::run(&args))
        }
        Command::Experiment(Experiment::Icl(args)) => {
            args.common.models.apply_to_process();
            tokio::runtime::Runtime::new()?.block_on(exemplar::experiments::icl::run(&args))
        }
        Command::Experiment(Experiment::Selection(args)) => {
            args.common.models.apply_to_process();
            tokio::runtime::Runtime::new()?.block_on(exemplar::experiments::selection::run(&args))
        }
        Command::Experiment(Experiment::Vote(args)) => {
            args.common.models.apply_to_process();
            tokio::runtime::Runtime::new()?.block_on(exemplar::experiments::vote::run(&args))
        }
        Command::Experiment(Experiment::Order(args)) => {
            args.common.models.apply_to_process();
            tokio::runtime::Runtime::new()?.block_on(exemplar::experiments::order::run(&args))
        }
        Command::Bench(args) => {
            args.models.apply_to_process();
            exemplar::bench::run(&args)
        }
    }
}
