//! `exemplar experiment vote`: the LLM, the demonstrations' similarity-weighted vote,
//! and their mix on SST-2, TREC and SUBJ, with the mix weight chosen by leave-one-out on
//! annotated examples only (never on the test rows).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::icl::{prepare_task, progress};
use super::{write_section, Cache, Dataset, ExperimentArgs, Row, DATASETS};

use crate::plot;
use crate::predict::defaults::StrategyChoice;
use crate::predict::{
    calibration, metrics, vote, PredictOptions, Prediction, Predictor, QueryInput,
};
use crate::retrieve::Strategy;
use crate::tuning::{self, Configuration, Grid, RowScores};

/// Seed of the annotated examples the weight is tuned on.
const TUNE_SEED: u64 = 2;
/// Mix weights tried: 0, 0.1, ..., 1.
const WEIGHTS: usize = 11;
/// Inputs per prediction call.
const CHUNK: usize = 16;

/// Options of `exemplar experiment vote`.
#[derive(Debug, Args)]
pub struct VoteArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    /// Where finished rows (JSON, committed: what the table and its picture are made
    /// from) and the per-data-set databases (ignored by git) are kept.
    #[arg(long, default_value = "results/vote")]
    pub cache: PathBuf,
    /// Annotated examples drawn from each train set.
    #[arg(long, default_value_t = 1000)]
    pub examples: usize,
    /// Test rows drawn from each test set.
    #[arg(long, default_value_t = 200)]
    pub test_rows: usize,
    /// Annotated examples the weight is tuned on, each left out of its own prompt.
    #[arg(long, default_value_t = 100)]
    pub tune_rows: usize,
    /// Demonstrations per prompt (kNN).
    #[arg(long, default_value_t = 8)]
    pub k: usize,
    /// The data sets to run (`sst2`, `trec`, `subj`, comma-separated); all when absent.
    #[arg(long, value_delimiter = ',')]
    pub dataset: Vec<String>,
}

/// One data set's finished row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    /// The weight leave-one-out chose.
    weight: f64,
    /// Leave-one-out accuracy at that weight.
    tuned_accuracy: f64,
    /// Test accuracy and macro-F1: the LLM alone, the vote alone, the mix.
    llm: (f64, f64),
    vote: (f64, f64),
    mix: (f64, f64),
    /// The LLM batch-calibrated by its mean distribution over the tuning examples
    /// (Zhou et al., 2023), alone and mixed with the vote at its own tuned weight.
    batch_calibrated: (f64, f64),
    batch_calibrated_mix: (f64, f64),
    batch_calibrated_weight: f64,
    n: usize,
}

/// The LLM's and the vote's distributions of each query, and the gold labels.
struct Scored {
    llm: Vec<Vec<f64>>,
    vote: Vec<Vec<f64>>,
    gold: Vec<String>,
    /// Seconds the predictions took.
    seconds: f64,
}

impl Scored {
    /// Queries predicted per second.
    fn per_second(&self) -> f64 {
        self.gold.len() as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// Each query's distributions, as the tune job keeps them.
    fn rows(&self) -> Vec<RowScores> {
        self.llm
            .iter()
            .zip(&self.vote)
            .map(|(llm, vote)| RowScores {
                llm: llm.clone(),
                vote: vote.clone(),
            })
            .collect()
    }
}

/// kNN with `k` demonstrations, the vote beside the LLM.
fn knn_options(k: usize, cached_demonstrations: bool) -> PredictOptions {
    PredictOptions {
        vote_weight: Some(0.0),
        cached_demonstrations,
        ..PredictOptions::classify_with(k, Strategy::Knn, 0, false)
    }
}

/// The distributions of every query under `options` (whose vote weight must be set).
async fn score(
    predictor: &Arc<Predictor>,
    dataset: &Dataset,
    queries: &[(QueryInput, String)],
    options: &PredictOptions,
    title: &str,
) -> anyhow::Result<Scored> {
    let bar = progress(queries.len(), format!("{}: {title}", dataset.title));
    let mut scored = Scored {
        llm: Vec::new(),
        vote: Vec::new(),
        gold: Vec::new(),
        seconds: 0.0,
    };
    let started = Instant::now();
    for chunk in queries.chunks(CHUNK) {
        let inputs = chunk.iter().map(|(input, _)| input.clone()).collect();
        for (prediction, (_, gold)) in predictor
            .predict(dataset.name, inputs, options)
            .await?
            .into_iter()
            .zip(chunk)
        {
            let Prediction {
                llm_probabilities: Some(llm),
                vote_probabilities: Some(votes),
                ..
            } = prediction
            else {
                anyhow::bail!("a prediction with a vote weight lacks its distributions");
            };
            scored.llm.push(llm.into_iter().map(|(_, p)| p).collect());
            scored
                .vote
                .push(votes.into_iter().map(|(_, p)| p).collect());
            scored.gold.push(gold.clone());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    scored.seconds = started.elapsed().as_secs_f64();
    Ok(scored)
}

/// Accuracy and macro-F1 of the argmax of `(1 - weight) * llm + weight * vote`.
fn measure(labels: &[String], scored: &Scored, weight: f64) -> (f64, f64) {
    let predicted: Vec<String> = scored
        .llm
        .iter()
        .zip(&scored.vote)
        .map(|(llm, votes)| {
            let mixed = vote::mix(llm, votes, weight);
            let best = mixed
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map_or(0, |(i, _)| i);
            labels[best].clone()
        })
        .collect();
    let evaluation = metrics::evaluate(labels, &scored.gold, &predicted);
    (evaluation.accuracy, evaluation.macro_f1)
}

/// The annotated examples the weight is tuned on, each left out of its own prompt.
async fn tuning_rows(
    args: &VoteArgs,
    predictor: &Predictor,
    dataset: &Dataset,
) -> anyhow::Result<Vec<(QueryInput, String)>> {
    let mut annotated = predictor.catalog().examples(dataset.name).await?.all();
    annotated.sort_by(|a, b| a.id.cmp(&b.id));
    annotated.shuffle(&mut rand::rngs::StdRng::seed_from_u64(TUNE_SEED));
    Ok(annotated
        .iter()
        .take(args.tune_rows)
        .map(|example| {
            let input = QueryInput {
                text: example.text.clone(),
                text_pair: example.text_pair.clone(),
                exclude: Some(example.id.clone()),
            };
            (input, example.label.clone())
        })
        .collect())
}

/// The test rows as queries with their gold labels.
fn test_queries(test: &[Row]) -> Vec<(QueryInput, String)> {
    test.iter()
        .map(|row| {
            let input = row.query();
            (input, row.label.clone())
        })
        .collect()
}

async fn run_dataset(
    args: &VoteArgs,
    predictor: &Arc<Predictor>,
    dataset: &Dataset,
    test: &[Row],
) -> anyhow::Result<Outcome> {
    let labels = dataset.label_names();
    let tune = tuning_rows(args, predictor, dataset).await?;
    let options = knn_options(args.k, false);
    let tuned = score(predictor, dataset, &tune, &options, "leave-one-out").await?;
    let (weight, tuned_accuracy) = best_weight(&labels, &tuned);
    let bias = calibration::mean(&tuned.llm);
    let tuned_calibrated = batch_calibrated(tuned, &bias);
    let (calibrated_weight, _) = best_weight(&labels, &tuned_calibrated);
    let scored = score(
        predictor,
        dataset,
        &test_queries(test),
        &options,
        "test rows",
    )
    .await?;
    let (llm, votes, mix, n) = (
        measure(&labels, &scored, 0.0),
        measure(&labels, &scored, 1.0),
        measure(&labels, &scored, weight),
        scored.gold.len(),
    );
    let calibrated = batch_calibrated(scored, &bias);
    Ok(Outcome {
        weight,
        tuned_accuracy,
        llm,
        vote: votes,
        mix,
        batch_calibrated: measure(&labels, &calibrated, 0.0),
        batch_calibrated_mix: measure(&labels, &calibrated, calibrated_weight),
        batch_calibrated_weight: calibrated_weight,
        n,
    })
}

/// One data set's tuned configuration and cached demonstrations.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TunedOutcome {
    /// What the tune job's grid chose by leave-one-out, and its leave-one-out accuracy.
    configuration: Configuration,
    tuned_accuracy: f64,
    /// Its test accuracy and macro-F1.
    tuned: (f64, f64),
    /// Cached demonstrations (kNN, k as the first table): the LLM alone, and the mix
    /// at its own tuned weight.
    cached_llm: (f64, f64),
    cached_mix: (f64, f64),
    cached_weight: f64,
    /// Test rows predicted per second in this run: exact prompts, cached demonstrations.
    exact_per_second: f64,
    cached_per_second: f64,
}

/// The grid the experiment tunes: the tune job's default calibrations and weights,
/// with cached demonstrations as a choice, for kNN with the first table's k (4 LLM runs
/// per data set; the default grid's 8 runs, doubled by the cached choice, took over an
/// hour per data set on 2 cores).
fn experiment_grid(k: usize) -> Grid {
    Grid {
        k: vec![k],
        strategy: vec![StrategyChoice::Knn],
        cached_demonstrations: vec![false, true],
        ..Grid::default()
    }
}

async fn run_tuned(
    args: &VoteArgs,
    predictor: &Arc<Predictor>,
    dataset: &Dataset,
    test: &[Row],
) -> anyhow::Result<TunedOutcome> {
    let labels = dataset.label_names();
    let tune = tuning_rows(args, predictor, dataset).await?;
    let gold: Vec<String> = tune.iter().map(|(_, label)| label.clone()).collect();
    let grid = experiment_grid(args.k);
    let mut runs = Vec::new();
    for (i, run) in grid.runs().iter().enumerate() {
        let title = format!("tuning run {} of {}", i + 1, grid.runs().len());
        runs.push(
            score(predictor, dataset, &tune, &run.options(), &title)
                .await?
                .rows(),
        );
    }
    let measured = tuning::measure(&labels, &gold, &grid, &runs);
    let (best, prior) = measured
        .first()
        .cloned()
        .context("the grid measured nothing")?;
    let queries = test_queries(test);
    let options = best.configuration.options(prior);
    let predictions = predictor
        .predict(
            dataset.name,
            queries.iter().map(|(input, _)| input.clone()).collect(),
            &options,
        )
        .await?;
    let predicted: Vec<String> = predictions
        .into_iter()
        .map(|p| p.label.unwrap_or_default())
        .collect();
    let test_gold: Vec<String> = queries.iter().map(|(_, label)| label.clone()).collect();
    let evaluation = metrics::evaluate(&labels, &test_gold, &predicted);

    let cached = knn_options(args.k, true);
    let cached_tune = score(predictor, dataset, &tune, &cached, "cached, leave-one-out").await?;
    let (cached_weight, _) = best_weight(&labels, &cached_tune);
    let cached_test = score(predictor, dataset, &queries, &cached, "cached, test rows").await?;
    let exact = knn_options(args.k, false);
    let exact_test = score(predictor, dataset, &queries, &exact, "exact, test rows").await?;
    Ok(TunedOutcome {
        configuration: best.configuration,
        tuned_accuracy: best.accuracy,
        tuned: (evaluation.accuracy, evaluation.macro_f1),
        cached_llm: measure(&labels, &cached_test, 0.0),
        cached_mix: measure(&labels, &cached_test, cached_weight),
        cached_weight,
        exact_per_second: exact_test.per_second(),
        cached_per_second: cached_test.per_second(),
    })
}

/// The weight of 0, 0.1, ..., 1 with the best accuracy on `scored`, and that accuracy;
/// of equals, the least vote.
fn best_weight(labels: &[String], scored: &Scored) -> (f64, f64) {
    (0..WEIGHTS)
        .map(|i| {
            let weight = i as f64 / (WEIGHTS - 1) as f64;
            (weight, measure(labels, scored, weight).0)
        })
        .fold((0.0, f64::NEG_INFINITY), |best, (w, a)| {
            if a > best.1 {
                (w, a)
            } else {
                best
            }
        })
}

/// `scored` with the LLM's distributions divided by `bias` and renormalised.
fn batch_calibrated(scored: Scored, bias: &[f64]) -> Scored {
    Scored {
        llm: scored
            .llm
            .iter()
            .map(|p| calibration::calibrate(p, bias))
            .collect(),
        ..scored
    }
}

/// Runs every missing data set and rewrites the table.
///
/// # Errors
/// When data, models or the database cannot be loaded.
pub async fn run(args: &VoteArgs) -> anyhow::Result<()> {
    if let Some(unknown) = args
        .dataset
        .iter()
        .find(|name| !DATASETS.iter().any(|d| d.name == name.as_str()))
    {
        anyhow::bail!("unknown data set `{unknown}`: give sst2, trec or subj");
    }
    let cache = Cache::open(&args.cache)?;
    let (llm, embedder) = args.common.load_models().await?;
    let mut rows = Vec::new();
    let chosen = DATASETS
        .iter()
        .filter(|d| args.dataset.is_empty() || args.dataset.iter().any(|n| n == d.name));
    for dataset in chosen {
        let key = format!(
            "{}-k{}-{}-{}-{}",
            dataset.name, args.k, args.examples, args.test_rows, args.tune_rows
        );
        let tuned_key = format!("{key}-tuned");
        let (outcome, tuned) = match (
            cache.get::<Outcome>(&key),
            cache.get::<TunedOutcome>(&tuned_key),
        ) {
            (Some(outcome), Some(tuned)) => (outcome, tuned),
            (outcome, tuned) => {
                let (train, test) = args.common.splits(dataset, args.examples, args.test_rows)?;
                let catalog =
                    Arc::new(prepare_task(&cache, dataset, &train, embedder.clone()).await?);
                let predictor = Arc::new(Predictor::new(Arc::clone(&catalog), llm.clone()));
                let outcome = match outcome {
                    Some(outcome) => outcome,
                    None => {
                        let outcome = run_dataset(args, &predictor, dataset, &test).await?;
                        cache.put(&key, &outcome)?;
                        outcome
                    }
                };
                let tuned = match tuned {
                    Some(tuned) => tuned,
                    None => {
                        let tuned = run_tuned(args, &predictor, dataset, &test).await?;
                        cache.put(&tuned_key, &tuned)?;
                        tuned
                    }
                };
                catalog.close().await;
                (outcome, tuned)
            }
        };
        rows.push((dataset.title, outcome, tuned));
    }
    write_section(&args.common.out, "vote", &table(args, &rows))?;
    println!("wrote {}", args.common.out.display());
    let picture = args.common.out.with_file_name("vote.svg");
    plot(&picture, &rows)?;
    println!("wrote {}", picture.display());
    Ok(())
}

/// A data set's rows: its title, the first table's outcome, the tuned one.
type DatasetRows<'a> = (&'a str, Outcome, TunedOutcome);

/// Test accuracy per data set of the LLM, the vote, their mix, the tuned configuration
/// and cached demonstrations, as bars.
fn plot(path: &std::path::Path, rows: &[DatasetRows<'_>]) -> anyhow::Result<()> {
    let series = |name: &str, value: &dyn Fn(&Outcome, &TunedOutcome) -> (f64, f64)| plot::Series {
        name: name.to_owned(),
        values: rows.iter().map(|(_, o, t)| 100.0 * value(o, t).0).collect(),
    };
    plot::bars(
        path,
        "The LLM, its demonstrations' vote, their mix and the tuned configuration",
        &rows
            .iter()
            .map(|(title, _, _)| (*title).to_owned())
            .collect::<Vec<_>>(),
        &[
            series("LLM alone", &|o, _| o.llm),
            series("vote alone", &|o, _| o.vote),
            series("mix", &|o, _| o.mix),
            series("tuned", &|_, t| t.tuned),
            series("cached demos, mix", &|_, t| t.cached_mix),
        ],
        "test accuracy %",
    )
}

fn cell((accuracy, f1): (f64, f64)) -> String {
    format!("{:.1} / {:.1}", 100.0 * accuracy, 100.0 * f1)
}

/// An option's value as the API writes it.
fn name(value: impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A configuration in a few words.
fn describe(c: &Configuration) -> String {
    format!(
        "k {}, {}, {}, calibration {}, w {:.1}{}",
        c.k,
        name(c.strategy),
        name(c.order),
        name(c.calibration),
        c.vote_weight,
        if c.cached_demonstrations {
            ", cached demonstrations"
        } else {
            ""
        }
    )
}

fn table(args: &VoteArgs, rows: &[DatasetRows<'_>]) -> String {
    let mut out = format!(
        "### The LLM and its demonstrations' vote\n\n\
         Made by `cargo run --release -- experiment vote --threads 2` (same models, \
         annotated examples and test rows as the in-context learning table; kNN, k = {}). The vote is the \
         demonstrations' labels weighted by their similarity; the mix is \
         `(1 - w) * LLM + w * vote` (`vote_weight` of predict), with w in 0, 0.1, ..., 1 \
         chosen by leave-one-out on {} annotated examples, never on the test rows. Cells: \
         accuracy / macro-F1 in % on the test rows. Batch calibration (Zhou et al., 2023) \
         divides the LLM's probabilities by their mean over the same annotated examples; its \
         mix has its own tuned weight.\n\n\
         | data set | LLM alone | vote alone | mix, w tuned | w | leave-one-out accuracy at w \
         | LLM batch-calibrated | its mix, w tuned | its w |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        args.k, args.tune_rows
    );
    for (title, o, _) in rows {
        out.push_str(&format!(
            "| {title} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {:.1} |\n",
            cell(o.llm),
            cell(o.vote),
            cell(o.mix),
            o.weight,
            100.0 * o.tuned_accuracy,
            cell(o.batch_calibrated),
            cell(o.batch_calibrated_mix),
            o.batch_calibrated_weight
        ));
    }
    let grid = experiment_grid(args.k);
    out.push_str(&format!(
        "\nThe tuned configuration is what `POST /v1/tasks/{{task}}/tune` chooses for this \
         grid: the same leave-one-out rows; kNN, k = {:?}, nearest last; no, contextual or \
         batch calibration; w 0, 0.1, ..., 1; exact prompts or cached demonstrations ({} LLM \
         runs); the best by leave-one-out accuracy, then macro-F1; then the test rows are \
         predicted with it. Cached demonstrations: each demonstration's keys and values \
         computed once after the instruction and rotated into place (kNN, k = {}; the mix \
         weight tuned on the same rows with cached demonstrations). Predictions/s: the test \
         rows, LLM alone, exact prompts against cached demonstrations, in this run (the \
         cache starts empty for each data set, so its figure includes computing every \
         demonstration the test rows use once).\n\n\
         | data set | tuned configuration | its choice | leave-one-out accuracy | cached demonstrations, LLM alone | cached, mix w tuned | its w | predictions/s exact | cached | cached / exact |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        grid.k,
        grid.runs().len(),
        args.k
    ));
    for (title, _, t) in rows {
        out.push_str(&format!(
            "| {title} | {} | {} | {:.1} | {} | {} | {:.1} | {:.2} | {:.2} | {:.1}x |\n",
            cell(t.tuned),
            describe(&t.configuration),
            100.0 * t.tuned_accuracy,
            cell(t.cached_llm),
            cell(t.cached_mix),
            t.cached_weight,
            t.exact_per_second,
            t.cached_per_second,
            t.cached_per_second / t.exact_per_second.max(f64::MIN_POSITIVE)
        ));
    }
    out
}
