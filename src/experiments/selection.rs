//! `exemplar experiment selection`: the selective-annotation experiment of the vote-k
//! and IDEAL papers on our model. For SST-2 and TREC: a pool of 3000 random train rows,
//! budgets 18 and 100, kNN prompt retrieval (k = 8) from the selected examples only,
//! 100 test rows; random, fast vote-k and IDEAL with 3 seeds, vote-k (whose stage 2
//! runs the LLM over the whole pool) with 1 seed.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::{write_section, Cache, Dataset, ExperimentArgs, Row, DATASETS, TEST_SEED};

use crate::embed::EmbedderHandle;
use crate::plot;
use crate::predict::{PredictOptions, Predictor, QueryInput};
use crate::retrieve::Strategy;
use crate::select::selections::stage_two_confidences;
use crate::select::{first_pass, second_pass, Method, ParamOverrides, Params};
use crate::store::{ItemKind, Store};
use crate::tasks::{Catalog, ItemInput, TaskSpec};

/// Seed of the pool sample.
const POOL_SEED: u64 = 0;
/// Demonstrations per prediction.
const K: usize = 8;
/// Inputs per prediction call.
const CHUNK: usize = 16;

/// Options of `exemplar experiment selection`.
#[derive(Debug, Args)]
pub struct SelectionArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    /// Where finished runs (JSON, committed: the whole experiment outlasts a session)
    /// and the scratch databases (ignored by git) are kept.
    #[arg(long, default_value = "results/selection")]
    pub cache: PathBuf,
    /// Unlabeled pool size drawn from each train set.
    #[arg(long, default_value_t = 3000)]
    pub pool: usize,
    /// Test rows drawn from each test set.
    #[arg(long, default_value_t = 100)]
    pub test_rows: usize,
    /// Annotation budgets.
    #[arg(long, value_delimiter = ',', default_values_t = [18, 100])]
    pub budgets: Vec<usize>,
    /// Seeds of random, fast vote-k and IDEAL (vote-k runs the first only).
    #[arg(long, value_delimiter = ',', default_values_t = [0, 1, 2])]
    pub seeds: Vec<u64>,
    /// Methods to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Method::Random, Method::FastVoteK, Method::Ideal, Method::VoteK])]
    pub methods: Vec<Method>,
    /// Data sets to run, by folder name (`sst2`, `trec`).
    #[arg(long, value_delimiter = ',', default_values_t = ["sst2".to_owned(), "trec".to_owned()])]
    pub datasets: Vec<String>,
    /// Write the table from finished runs only: a row averages the seeds it has.
    #[arg(long)]
    pub cached_only: bool,
}

/// One finished run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    accuracy: f64,
    macro_f1: f64,
    selection_seconds: f64,
}

fn spec(dataset: &Dataset) -> anyhow::Result<TaskSpec> {
    Ok(serde_json::from_value(serde_json::json!({
        "labels": dataset.labels,
        "instruction": dataset.instruction,
        "template": {"input": dataset.input, "output": dataset.output},
        "separator": "\n\n"
    }))?)
}

/// Replaces the task with one whose examples are `rows`.
async fn annotate(
    catalog: &Catalog,
    task: &str,
    dataset: &Dataset,
    rows: &[&Row],
) -> anyhow::Result<()> {
    if catalog.task(task).await.is_ok() {
        catalog.delete_task(task).await?;
    }
    catalog.put_task(task, spec(dataset)?).await?;
    for chunk in rows.chunks(100) {
        let items = chunk
            .iter()
            .map(|row| ItemInput {
                id: None,
                text: row.text.clone(),
                text_pair: None,
                label: Some(row.label.clone()),
            })
            .collect();
        catalog.add_items(task, ItemKind::Example, items).await?;
    }
    Ok(())
}

/// The queries of `rows`.
fn query_inputs<'a>(rows: impl Iterator<Item = &'a Row>) -> Vec<QueryInput> {
    rows.map(Row::query).collect()
}

/// Predicts the labels of `rows` with demonstrations from the task.
async fn predict_labels(
    predictor: &Arc<Predictor>,
    task: &str,
    rows: &[Row],
) -> anyhow::Result<Vec<String>> {
    let options = PredictOptions::classify_with(K, Strategy::Knn, 0, false);
    let mut labels = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(CHUNK) {
        let predictions = predictor
            .predict(task, query_inputs(chunk.iter()), &options)
            .await?;
        labels.extend(predictions.into_iter().map(|p| p.label.unwrap_or_default()));
    }
    Ok(labels)
}

/// One stage-2 prediction of vote-k, as saved in its log.
#[derive(Debug, Serialize, Deserialize)]
struct Confidence {
    /// Index in the pool.
    item: usize,
    /// The top label's probability.
    confidence: f64,
    /// This item's share of its batch's prediction time.
    seconds: f64,
}

/// Vote-k's stage-2 predictions, appended as JSON lines while they are made, so that an
/// interrupted run (the stage predicts the whole pool: over an hour here) resumes.
struct StageTwoLog {
    path: PathBuf,
}

impl StageTwoLog {
    /// The predictions saved so far. A line cut short by a crash is dropped, and the
    /// log rewritten without it so that the next append starts on a line of its own.
    fn resume(&self) -> anyhow::Result<Vec<Confidence>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let saved: Vec<Confidence> = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let partial = self.path.with_extension("partial");
        std::fs::write(&partial, "")?;
        let clean = StageTwoLog { path: partial };
        clean.append(&saved)?;
        std::fs::rename(&clean.path, &self.path)?;
        Ok(saved)
    }

    /// Deletes the log once its run is finished and cached.
    fn remove(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Appends `batch` and waits until it is on disk.
    fn append(&self, batch: &[Confidence]) -> anyhow::Result<()> {
        use std::io::Write;
        let mut lines = String::new();
        for entry in batch {
            lines.push_str(&serde_json::to_string(entry)?);
            lines.push('\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        file.write_all(lines.as_bytes())?;
        file.sync_data()?;
        Ok(())
    }
}

/// Vote-k's stage 2 over the pool items `rest`: each one's confidence and the
/// prediction time they took, resuming from (and extending) `log`.
async fn stage_two(
    predictor: &Arc<Predictor>,
    task: &str,
    pool: &[Row],
    rest: &[usize],
    log: &StageTwoLog,
) -> anyhow::Result<(Vec<(usize, f64)>, f64)> {
    let mut done: std::collections::HashMap<usize, Confidence> = log
        .resume()?
        .into_iter()
        .filter(|c| rest.contains(&c.item))
        .map(|c| (c.item, c))
        .collect();
    let todo: Vec<usize> = rest
        .iter()
        .copied()
        .filter(|i| !done.contains_key(i))
        .collect();
    let bar = ProgressBar::new(rest.len() as u64).with_style(
        ProgressStyle::with_template("vote-k stage 2 {bar:40} {pos}/{len} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done.len() as u64);
    for chunk in todo.chunks(CHUNK) {
        let started = Instant::now();
        let confidences = stage_two_confidences(
            predictor,
            task,
            query_inputs(chunk.iter().map(|&i| &pool[i])),
            0,
        )
        .await?;
        let share = started.elapsed().as_secs_f64() / chunk.len() as f64;
        let batch: Vec<Confidence> = chunk
            .iter()
            .zip(confidences)
            .map(|(&item, confidence)| Confidence {
                item,
                confidence,
                seconds: share,
            })
            .collect();
        log.append(&batch)?;
        bar.inc(batch.len() as u64);
        done.extend(batch.into_iter().map(|c| (c.item, c)));
    }
    bar.finish_and_clear();
    let seconds = done.values().map(|c| c.seconds).sum();
    let confidences = rest.iter().map(|i| (*i, done[i].confidence)).collect();
    Ok((confidences, seconds))
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    catalog: &Catalog,
    predictor: &Arc<Predictor>,
    dataset: &Dataset,
    pool: &[Row],
    embeddings: &[Vec<f32>],
    test: &[Row],
    method: Method,
    budget: usize,
    seed: u64,
    stage_two_log: &StageTwoLog,
) -> anyhow::Result<Outcome> {
    let task = format!("{}-run", dataset.name);
    let params = Params::resolve(method, budget, ParamOverrides::default());
    let started = Instant::now();
    let pool_embeddings = embeddings.to_vec();
    let mut chosen = tokio::task::spawn_blocking(move || {
        first_pass(method, &pool_embeddings, budget, &params, seed, |_, _| {
            ControlFlow::Continue(())
        })
    })
    .await??;
    let mut selection_seconds = started.elapsed().as_secs_f64();
    if method == Method::VoteK {
        // Stage 2: annotate stage 1, predict the rest of the pool from it alone.
        let stage_one: Vec<&Row> = chosen.iter().map(|&i| &pool[i]).collect();
        annotate(catalog, &task, dataset, &stage_one).await?;
        let rest: Vec<usize> = (0..pool.len()).filter(|i| !chosen.contains(i)).collect();
        let (answers, predicting) = stage_two(predictor, &task, pool, &rest, stage_two_log).await?;
        let started = Instant::now();
        let mut confidence = vec![1.0; pool.len()];
        for (i, c) in answers {
            confidence[i] = c;
        }
        let pool_embeddings = embeddings.to_vec();
        let selected = chosen.clone();
        let more = tokio::task::spawn_blocking(move || {
            second_pass(&pool_embeddings, &selected, &confidence, budget, &params)
        })
        .await??;
        chosen.extend(more);
        selection_seconds += predicting + started.elapsed().as_secs_f64();
    }
    let annotated: Vec<&Row> = chosen.iter().map(|&i| &pool[i]).collect();
    annotate(catalog, &task, dataset, &annotated).await?;
    let predicted = predict_labels(predictor, &task, test).await?;
    let evaluation = dataset.evaluate(test, &predicted);
    Ok(Outcome {
        accuracy: evaluation.accuracy,
        macro_f1: evaluation.macro_f1,
        selection_seconds,
    })
}

/// One table row: a method at a budget on a data set, over its seeds.
struct Planned {
    dataset: &'static Dataset,
    method: Method,
    budget: usize,
    seeds: Vec<u64>,
}

/// The rows `args` asks for, data set by data set.
fn plan(args: &SelectionArgs) -> anyhow::Result<Vec<Planned>> {
    let mut rows = Vec::new();
    for name in &args.datasets {
        let dataset = DATASETS[..2]
            .iter()
            .find(|d| d.name == name)
            .with_context(|| format!("unknown data set {name:?}: sst2 or trec"))?;
        for &method in &args.methods {
            for &budget in &args.budgets {
                let seeds = if method == Method::VoteK {
                    args.seeds.iter().take(1).copied().collect()
                } else {
                    args.seeds.clone()
                };
                rows.push(Planned {
                    dataset,
                    method,
                    budget,
                    seeds,
                });
            }
        }
    }
    Ok(rows)
}

/// The cache key of one run.
fn key(args: &SelectionArgs, row: &Planned, seed: u64) -> String {
    format!(
        "{}-{:?}-{}-{seed}-{}-{}",
        row.dataset.name, row.method, row.budget, args.pool, args.test_rows
    )
}

/// Runs every missing run (none with `--cached-only`) and rewrites the table.
///
/// # Errors
/// When data, models or the database cannot be loaded.
pub async fn run(args: &SelectionArgs) -> anyhow::Result<()> {
    let cache = Cache::open(&args.cache)?;
    let rows = plan(args)?;
    if !args.cached_only {
        run_missing(args, &cache, &rows).await?;
    }
    let results: Vec<(&Planned, Vec<Outcome>)> = rows
        .iter()
        .map(|row| {
            let outcomes = row
                .seeds
                .iter()
                .filter_map(|&seed| cache.get::<Outcome>(&key(args, row, seed)))
                .collect();
            (row, outcomes)
        })
        .collect();
    write_section(&args.common.out, "selection", &table(args, &results))?;
    println!("wrote {}", args.common.out.display());
    for picture in plots(args, &results)? {
        println!("wrote {}", picture.display());
    }
    Ok(())
}

/// Runs and caches every run of `rows` that the cache lacks.
async fn run_missing(args: &SelectionArgs, cache: &Cache, rows: &[Planned]) -> anyhow::Result<()> {
    let (llm, embedder) = args.common.load_models().await?;
    for dataset in &DATASETS[..2] {
        let missing: Vec<(&Planned, u64)> = rows
            .iter()
            .filter(|row| row.dataset.name == dataset.name)
            .flat_map(|row| row.seeds.iter().map(move |&seed| (row, seed)))
            .filter(|&(row, seed)| cache.get::<Outcome>(&key(args, row, seed)).is_none())
            .collect();
        if missing.is_empty() {
            continue;
        }
        let pool = args.common.draw(dataset, "train", args.pool, POOL_SEED)?;
        let test = args
            .common
            .draw(dataset, "test", args.test_rows, TEST_SEED)?;
        let embeddings = embed(&embedder, &pool).await?;
        let url = format!(
            "sqlite://{}",
            cache.path(&format!("{}.db", dataset.name)).display()
        );
        let catalog = Arc::new(Catalog::new(Store::connect(&url).await?, embedder.clone()));
        let predictor = Arc::new(Predictor::new(Arc::clone(&catalog), llm.clone()));
        for (row, seed) in missing {
            eprintln!(
                "{}: {:?}, budget {}, seed {seed}",
                dataset.title, row.method, row.budget
            );
            let key = key(args, row, seed);
            let stage_two_log = StageTwoLog {
                path: cache.path(&format!("{key}.stage2.jsonl")),
            };
            let outcome = run_one(
                &catalog,
                &predictor,
                dataset,
                &pool,
                &embeddings,
                &test,
                row.method,
                row.budget,
                seed,
                &stage_two_log,
            )
            .await?;
            cache.put(&key, &outcome)?;
            stage_two_log.remove()?;
        }
        catalog.close().await;
    }
    Ok(())
}

async fn embed(embedder: &EmbedderHandle, rows: &[Row]) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut embeddings = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(256) {
        embeddings.extend(
            embedder
                .embed(chunk.iter().map(|r| r.text.clone()).collect())
                .await?,
        );
    }
    Ok(embeddings)
}

fn mean_and_spread(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let variance =
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len().max(1) as f64;
    (mean, variance.sqrt())
}

/// The name the API and the CLI use.
fn method_name(method: Method) -> String {
    clap::ValueEnum::to_possible_value(&method)
        .map_or_else(|| format!("{method:?}"), |v| v.get_name().to_owned())
}

/// The table as two pictures next to the results file: accuracy against the budget per
/// method and data set (bars from the lowest to the highest seed), and accuracy per
/// method and data set at the largest budget.
fn plots(
    args: &SelectionArgs,
    results: &[(&Planned, Vec<Outcome>)],
) -> anyhow::Result<Vec<PathBuf>> {
    let folder = args
        .common
        .out
        .parent()
        .unwrap_or(std::path::Path::new("."));
    let finished = || results.iter().filter(|(_, outcomes)| !outcomes.is_empty());
    let mut datasets: Vec<&Dataset> = Vec::new();
    let mut methods: Vec<Method> = Vec::new();
    for (row, _) in finished() {
        if !datasets.iter().any(|d| d.name == row.dataset.name) {
            datasets.push(row.dataset);
        }
        if !methods.contains(&row.method) {
            methods.push(row.method);
        }
    }
    let accuracies = |outcomes: &[Outcome]| -> Vec<f64> {
        outcomes.iter().map(|o| 100.0 * o.accuracy).collect()
    };
    let panels: Vec<plot::Panel> = datasets
        .iter()
        .map(|dataset| plot::Panel {
            title: dataset.title.to_owned(),
            series: methods
                .iter()
                .map(|&method| plot::Series {
                    name: method_name(method),
                    values: finished()
                        .filter(|(row, _)| row.dataset.name == dataset.name && row.method == method)
                        .map(|(row, outcomes)| {
                            let accuracy = accuracies(outcomes);
                            plot::Point {
                                x: row.budget as f64,
                                mean: mean_and_spread(&accuracy).0,
                                low: accuracy.iter().copied().fold(f64::MAX, f64::min),
                                high: accuracy.iter().copied().fold(f64::MIN, f64::max),
                            }
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let budget_plot = folder.join("selection-budget.svg");
    plot::lines(
        &budget_plot,
        &panels,
        "annotation budget",
        "test accuracy %",
    )?;
    let largest = finished()
        .map(|(row, _)| row.budget)
        .max()
        .unwrap_or_default();
    let methods_plot = folder.join("selection-methods.svg");
    plot::bars(
        &methods_plot,
        &format!("Accuracy at budget {largest} (mean of the seeds)"),
        &datasets
            .iter()
            .map(|d| d.title.to_owned())
            .collect::<Vec<_>>(),
        &methods
            .iter()
            .map(|&method| plot::Series {
                name: method_name(method),
                values: datasets
                    .iter()
                    .map(|dataset| {
                        finished()
                            .find(|(row, _)| {
                                row.dataset.name == dataset.name
                                    && row.method == method
                                    && row.budget == largest
                            })
                            .map_or(0.0, |(_, outcomes)| {
                                mean_and_spread(&accuracies(outcomes)).0
                            })
                    })
                    .collect(),
            })
            .collect::<Vec<_>>(),
        "test accuracy %",
    )?;
    Ok(vec![budget_plot, methods_plot])
}

fn table(args: &SelectionArgs, results: &[(&Planned, Vec<Outcome>)]) -> String {
    let mut out = format!(
        "### Selective annotation on SST-2 and TREC\n\n\
         Made by `cargo run -- experiment selection --threads 2`. Pool: {} random train \
         rows (seed {POOL_SEED}); kNN prompt retrieval (k = {K}) from the selected, \
         annotated examples only; {} random test rows (seed {TEST_SEED}). Accuracy and \
         macro-F1 in %, mean ± standard deviation over the seeds finished of {:?} \
         (vote-k: the first seed only); selection time in seconds on the 2-core \
         machine, which other work shared (vote-k's includes its stage-2 predictions over \
         the pool; `exemplar bench --suite select` times the methods alone).\n\n\
         | method | data set | budget | accuracy | macro-F1 | seeds | selection s |\n\
         |---|---|---|---|---|---|---|\n",
        args.pool, args.test_rows, args.seeds
    );
    for (row, outcomes) in results {
        let (dataset, budget) = (row.dataset.title, row.budget);
        let method = method_name(row.method);
        if outcomes.is_empty() {
            out.push_str(&format!(
                "| {method} | {dataset} | {budget} | - | - | 0 | - |\n"
            ));
            continue;
        }
        let accuracy: Vec<f64> = outcomes.iter().map(|o| 100.0 * o.accuracy).collect();
        let f1: Vec<f64> = outcomes.iter().map(|o| 100.0 * o.macro_f1).collect();
        let seconds: Vec<f64> = outcomes.iter().map(|o| o.selection_seconds).collect();
        let (a, a_spread) = mean_and_spread(&accuracy);
        let (f, f_spread) = mean_and_spread(&f1);
        let (s, _) = mean_and_spread(&seconds);
        out.push_str(&format!(
            "| {method} | {dataset} | {budget} | {a:.1} ± {a_spread:.1} | {f:.1} ± {f_spread:.1} | {} | {s:.1} |\n",
            outcomes.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_two_log_reads_back_what_was_appended_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = StageTwoLog {
            path: dir.path().join("run.stage2.jsonl"),
        };
        assert!(log.resume().expect("no log yet").is_empty());
        let entry = |item, confidence| Confidence {
            item,
            confidence,
            seconds: 0.5,
        };
        // serde_json's default float parser reads this value back one ulp off; a resumed
        // run must see exactly the confidences an uninterrupted one would.
        let exact = 0.933_306_139_068_843_1;
        log.append(&[entry(3, 0.9), entry(7, exact)])
            .expect("append");
        log.append(&[entry(1, 0.7)]).expect("append");
        // A crash in the middle of a write leaves a partial last line.
        let mut text = std::fs::read_to_string(&log.path).expect("log");
        text.push_str("{\"item\": 4, \"confid");
        std::fs::write(&log.path, text).expect("write");

        let items = |log: &StageTwoLog| -> Vec<(usize, f64)> {
            let saved = log.resume().expect("resume");
            saved.iter().map(|c| (c.item, c.confidence)).collect()
        };
        assert_eq!(items(&log), [(3, 0.9), (7, exact), (1, 0.7)]);
        log.append(&[entry(4, 0.8)])
            .expect("append after the torn line");
        assert_eq!(items(&log), [(3, 0.9), (7, exact), (1, 0.7), (4, 0.8)]);
        log.remove().expect("remove");
        assert!(!log.path.exists());
        log.remove().expect("removing twice is fine");
    }
}
