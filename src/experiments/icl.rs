//! `exemplar experiment icl`: in-context learning on SST-2, TREC and SUBJ with
//! zero-shot, random, kNN and MMR demonstrations (with and without calibration) and a
//! kNN majority vote without the LLM, on 1000 annotated train rows and 200 test rows.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::{write_section, Cache, Dataset, ExperimentArgs, Row, DATASETS, TEST_SEED, TRAIN_SEED};

use crate::predict::{PredictOptions, Predictor};
use crate::retrieve::Strategy;
use crate::store::{ItemKind, Store};
use crate::tasks::{self, Catalog, ItemInput, TaskSpec};

/// Inputs per prediction call.
const CHUNK: usize = 8;

/// Options of `exemplar experiment icl`.
#[derive(Debug, Args)]
pub struct IclArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    /// Where finished rows and the per-data-set databases are kept.
    #[arg(long, default_value = "results-cache/icl")]
    pub cache: PathBuf,
    /// Annotated examples drawn from each train set.
    #[arg(long, default_value_t = 1000)]
    pub examples: usize,
    /// Test rows drawn from each test set.
    #[arg(long, default_value_t = 200)]
    pub test_rows: usize,
    /// Write the table from finished rows only, leaving missing cells empty.
    #[arg(long)]
    pub cached_only: bool,
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Llm {
        k: usize,
        strategy: Strategy,
        calibrate: bool,
    },
    KnnMajority {
        k: usize,
    },
}

/// Which reading of a run a table row shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// The probabilities as the model gives them.
    Plain,
    /// After contextual calibration.
    Calibrated,
}

const fn llm(k: usize, strategy: Strategy, calibrate: bool) -> Method {
    Method::Llm {
        k,
        strategy,
        calibrate,
    }
}

/// Table rows: title, the run they read, how to run it, and which reading. A calibrated
/// run also gives the plain reading of the same prompts, so two rows share one run.
const ROWS: [(&str, &str, Method, Reading); 8] = [
    (
        "zero-shot",
        "zero-shot",
        llm(0, Strategy::Knn, false),
        Reading::Plain,
    ),
    (
        "random, k = 8",
        "random-8",
        llm(8, Strategy::Random { seed: 0 }, true),
        Reading::Plain,
    ),
    (
        "random, k = 8, calibrated",
        "random-8",
        llm(8, Strategy::Random { seed: 0 }, true),
        Reading::Calibrated,
    ),
    (
        "kNN, k = 4",
        "knn-4",
        llm(4, Strategy::Knn, false),
        Reading::Plain,
    ),
    (
        "kNN, k = 8",
        "knn-8",
        llm(8, Strategy::Knn, true),
        Reading::Plain,
    ),
    (
        "kNN, k = 8, calibrated",
        "knn-8",
        llm(8, Strategy::Knn, true),
        Reading::Calibrated,
    ),
    (
        "MMR (lambda 0.5), k = 8",
        "mmr-8",
        llm(8, Strategy::Mmr { lambda: 0.5 }, false),
        Reading::Plain,
    ),
    (
        "kNN majority vote, k = 8 (no LLM)",
        "knn-vote-8",
        Method::KnnMajority { k: 8 },
        Reading::Plain,
    ),
];

/// Both readings of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Run {
    plain: Outcome,
    calibrated: Outcome,
}

/// One finished table cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    n: usize,
    accuracy: f64,
    macro_f1: f64,
}

/// A progress bar of `len` steps.
pub(super) fn progress(len: usize, message: String) -> ProgressBar {
    ProgressBar::new(len as u64)
        .with_style(
            ProgressStyle::with_template("{msg:32} {bar:30} {pos}/{len} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
        .with_message(message)
}

/// Opens the data set's database in the cache, holding its task with the sampled
/// annotated examples (imported once).
pub(super) async fn prepare_task(
    cache: &Cache,
    dataset: &Dataset,
    train: &[Row],
    embedder: crate::embed::EmbedderHandle,
) -> anyhow::Result<Catalog> {
    let url = format!(
        "sqlite://{}",
        cache.path(&format!("{}.db", dataset.name)).display()
    );
    let catalog = Catalog::new(Store::connect(&url).await?, embedder);
    let complete = catalog
        .task(dataset.name)
        .await
        .map(|t| t.examples as usize == train.len())
        .unwrap_or(false);
    if complete {
        return Ok(catalog);
    }
    if catalog.task(dataset.name).await.is_ok() {
        catalog.delete_task(dataset.name).await?;
    }
    let spec: TaskSpec = serde_json::from_value(serde_json::json!({
        "labels": dataset.labels,
        "instruction": dataset.instruction,
        "template": {"input": dataset.input, "output": dataset.output},
        "separator": "\n\n"
    }))?;
    catalog.put_task(dataset.name, spec).await?;
    let bar = progress(train.len(), format!("{}: importing", dataset.title));
    for (c, chunk) in train.chunks(100).enumerate() {
        let items = chunk
            .iter()
            .enumerate()
            .map(|(i, row)| ItemInput {
                // Ids by position, not generated at random: the vote experiment draws
                // its tuning examples in id order, which must be the same every run.
                id: Some(format!("train-{:05}", c * 100 + i)),
                text: row.text.clone(),
                text_pair: None,
                label: Some(row.label.clone()),
            })
            .collect();
        catalog
            .add_items(dataset.name, ItemKind::Example, items)
            .await?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(catalog)
}

/// Runs one method over the test rows; answers the outcome as the model gives it and
/// the calibrated one (the same when the method does not calibrate).
async fn run_method(
    predictor: &Arc<Predictor>,
    dataset: &Dataset,
    test: &[Row],
    method: Method,
    title: &str,
) -> anyhow::Result<(Outcome, Outcome)> {
    let bar = progress(test.len(), format!("{}: {title}", dataset.title));
    let mut predicted = Vec::with_capacity(test.len());
    let mut uncalibrated = Vec::with_capacity(test.len());
    for chunk in test.chunks(CHUNK) {
        match method {
            Method::Llm {
                k,
                strategy,
                calibrate,
            } => {
                let options =
                    PredictOptions::classify_with(k, strategy, predicted.len() as u64, calibrate);
                let inputs = chunk.iter().map(Row::query).collect();
                for prediction in predictor.predict(dataset.name, inputs, &options).await? {
                    let raw = prediction
                        .uncalibrated
                        .iter()
                        .max_by(|a, b| a.1.total_cmp(&b.1))
                        .map(|(label, _)| label.clone())
                        .unwrap_or_default();
                    uncalibrated.push(raw);
                    predicted.push(prediction.label.unwrap_or_default());
                }
            }
            Method::KnnMajority { k } => {
                let catalog = predictor.catalog();
                let collection = catalog.examples(dataset.name).await?;
                let queries: Vec<(String, Option<String>)> =
                    chunk.iter().map(|r| (r.text.clone(), None)).collect();
                for vector in catalog.embed_queries(&queries).await? {
                    let neighbours = tasks::choose(&collection, &vector, k, Strategy::Knn, None);
                    let label = majority(&neighbours);
                    uncalibrated.push(label.clone());
                    predicted.push(label);
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    let outcome = |predicted: &[String]| {
        let evaluation = dataset.evaluate(test, predicted);
        Outcome {
            n: evaluation.n,
            accuracy: evaluation.accuracy,
            macro_f1: evaluation.macro_f1,
        }
    };
    Ok((outcome(&uncalibrated), outcome(&predicted)))
}

/// The most frequent label among neighbours; ties go to the label of the nearer one.
fn majority(neighbours: &[tasks::Demonstration]) -> String {
    let mut counts: Vec<(&str, usize, usize)> = Vec::new();
    for (rank, d) in neighbours.iter().enumerate() {
        match counts.iter_mut().find(|(l, _, _)| *l == d.example.label) {
            Some(entry) => entry.1 += 1,
            None => counts.push((&d.example.label, 1, rank)),
        }
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
        .map(|(label, _, _)| label.to_owned())
        .unwrap_or_default()
}

/// Where a run's result is cached: data set, run, and the sample sizes.
fn cache_key(args: &IclArgs, dataset: &Dataset, run_key: &str) -> String {
    format!(
        "{}-{run_key}-{}-{}",
        dataset.name, args.examples, args.test_rows
    )
}

/// Runs every missing cell and rewrites the table.
///
/// # Errors
/// When data, models or the database cannot be loaded.
pub async fn run(args: &IclArgs) -> anyhow::Result<()> {
    let cache = Cache::open(&args.cache)?;
    let (llm, embedder) = args.common.load_models().await?;
    let mut cells: Vec<Vec<Option<Outcome>>> = vec![vec![None; DATASETS.len()]; ROWS.len()];
    for (d, dataset) in DATASETS.iter().enumerate() {
        let (train, test) = args.common.splits(dataset, args.examples, args.test_rows)?;
        if args.cached_only {
            for (r, (_, run_key, _, reading)) in ROWS.iter().enumerate() {
                cells[r][d] = cache
                    .get::<Run>(&cache_key(args, dataset, run_key))
                    .map(|run| match reading {
                        Reading::Plain => run.plain,
                        Reading::Calibrated => run.calibrated,
                    });
            }
            continue;
        }
        let catalog = Arc::new(prepare_task(&cache, dataset, &train, embedder.clone()).await?);
        let predictor = Arc::new(Predictor::new(Arc::clone(&catalog), llm.clone()));
        for (r, (title, run_key, method, reading)) in ROWS.iter().enumerate() {
            let key = cache_key(args, dataset, run_key);
            let run = match cache.get::<Run>(&key) {
                Some(run) => run,
                None => {
                    let (plain, calibrated) =
                        run_method(&predictor, dataset, &test, *method, title).await?;
                    let run = Run { plain, calibrated };
                    cache.put(&key, &run)?;
                    run
                }
            };
            cells[r][d] = Some(match reading {
                Reading::Plain => run.plain,
                Reading::Calibrated => run.calibrated,
            });
        }
        catalog.close().await;
    }
    write_section(&args.common.out, "icl", &table(args, &cells))?;
    println!("wrote {}", args.common.out.display());
    Ok(())
}

fn table(args: &IclArgs, cells: &[Vec<Option<Outcome>>]) -> String {
    let mut out = format!(
        "### In-context learning on SST-2, TREC and SUBJ\n\n\
         Made by `cargo run -- experiment icl --threads 2` (model: SmolLM2-135M-Instruct, \
         weights `{:?}`; embedder all-MiniLM-L6-v2). Annotated examples: {} random train \
         rows (seed {TRAIN_SEED}); test: {} random test rows (seed {TEST_SEED}). Cells: \
         accuracy / macro-F1 in %. A calibrated row and the plain row above it score \
         the same prompts. Speed is measured by `exemplar bench --suite predict`, not \
         here: this run shared the machine with other work.\n\n\
         | method | SST-2 | TREC | SUBJ |\n|---|---|---|---|\n",
        args.common.models.weights, args.examples, args.test_rows
    );
    for ((title, _, _, _), row) in ROWS.iter().zip(cells) {
        let mut line = format!("| {title} |");
        for cell in row {
            match cell {
                Some(o) => line.push_str(&format!(
                    " {:.1} / {:.1} |",
                    100.0 * o.accuracy,
                    100.0 * o.macro_f1
                )),
                None => line.push_str(" - |"),
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
