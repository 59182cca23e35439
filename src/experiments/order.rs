//! `exemplar experiment order`: where the most similar demonstration goes (next to the
//! query, `nearest_last`, or first, `nearest_first`) against accuracy and the prefix
//! cache: how many prompt tokens each order lets the cache reuse, on SST-2 and TREC.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::icl::{prepare_task, progress};
use super::{write_section, Cache, Dataset, ExperimentArgs, Row, DATASETS};

use crate::predict::{Order, PredictOptions, Predictor};
use crate::retrieve::Strategy;

/// Inputs per prediction call: one page of `exemplar eval`.
const PAGE: usize = 16;

/// Options of `exemplar experiment order`.
#[derive(Debug, Args)]
pub struct OrderArgs {
    #[command(flatten)]
    pub common: ExperimentArgs,
    /// Where finished rows and the per-data-set databases are kept.
    #[arg(long, default_value = "results-cache/order")]
    pub cache: PathBuf,
    /// Annotated examples drawn from each train set.
    #[arg(long, default_value_t = 1000)]
    pub examples: usize,
    /// Test rows drawn from each test set.
    #[arg(long, default_value_t = 200)]
    pub test_rows: usize,
    /// Demonstrations per prompt (kNN).
    #[arg(long, default_value_t = 8)]
    pub k: usize,
}

/// One data set and order's finished row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    accuracy: f64,
    macro_f1: f64,
    /// Prompt-prefix tokens asked of the cache, and how many it had.
    asked: f64,
    reused: f64,
    /// Lookups that found some prefix, of all.
    hits: f64,
    lookups: f64,
    predictions_per_second: f64,
}

/// The prefix cache's counters, as the process's metrics recorder has them.
fn cache_counters(handle: &metrics_exporter_prometheus::PrometheusHandle) -> [f64; 4] {
    let text = handle.render();
    let sample = |name: &str, label: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    [
        sample("exemplar_prefix_cache_tokens_total", "kind=\"asked\""),
        sample("exemplar_prefix_cache_tokens_total", "kind=\"reused\""),
        sample("exemplar_prefix_cache_lookups_total", "outcome=\"hit\""),
        sample("exemplar_prefix_cache_lookups_total", ""),
    ]
}

async fn run_order(
    args: &OrderArgs,
    catalog: &Arc<crate::tasks::Catalog>,
    dataset: &Dataset,
    test: &[super::Row],
    order: Order,
) -> anyhow::Result<Outcome> {
    // A fresh model (and so an empty prefix cache) per order.
    let (llm, _) = args.common.load_models().await?;
    let predictor = Arc::new(Predictor::new(Arc::clone(catalog), llm));
    let options = PredictOptions {
        order,
        ..PredictOptions::classify_with(args.k, Strategy::Knn, 0, false)
    };
    let handle = crate::api::metrics_recorder();
    let before = cache_counters(&handle);
    let bar = progress(test.len(), format!("{}: {order:?}", dataset.title));
    let started = Instant::now();
    let mut predicted = Vec::with_capacity(test.len());
    for page in test.chunks(PAGE) {
        let inputs = page.iter().map(Row::query).collect();
        for prediction in predictor.predict(dataset.name, inputs, &options).await? {
            predicted.push(prediction.label.unwrap_or_default());
        }
        bar.inc(page.len() as u64);
    }
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let after = cache_counters(&handle);
    let evaluation = dataset.evaluate(test, &predicted);
    Ok(Outcome {
        accuracy: evaluation.accuracy,
        macro_f1: evaluation.macro_f1,
        asked: after[0] - before[0],
        reused: after[1] - before[1],
        hits: after[2] - before[2],
        lookups: after[3] - before[3],
        predictions_per_second: predicted.len() as f64 / seconds,
    })
}

/// Runs every missing row and rewrites the table.
///
/// # Errors
/// When data, models or the database cannot be loaded.
pub async fn run(args: &OrderArgs) -> anyhow::Result<()> {
    let cache = Cache::open(&args.cache)?;
    let (_, embedder) = args.common.load_models().await?;
    let mut rows = Vec::new();
    for dataset in &DATASETS[..2] {
        let (train, test) = args.common.splits(dataset, args.examples, args.test_rows)?;
        let catalog = Arc::new(prepare_task(&cache, dataset, &train, embedder.clone()).await?);
        for order in [Order::NearestLast, Order::NearestFirst] {
            let key = format!(
                "{}-{order:?}-k{}-{}-{}",
                dataset.name, args.k, args.examples, args.test_rows
            );
            let outcome = match cache.get::<Outcome>(&key) {
                Some(outcome) => outcome,
                None => {
                    let outcome = run_order(args, &catalog, dataset, &test, order).await?;
                    cache.put(&key, &outcome)?;
                    outcome
                }
            };
            rows.push((dataset.title, order, outcome));
        }
        catalog.close().await;
    }
    write_section(&args.common.out, "order", &table(args, &rows))?;
    println!("wrote {}", args.common.out.display());
    Ok(())
}

fn table(args: &OrderArgs, rows: &[(&str, Order, Outcome)]) -> String {
    let mut out = format!(
        "### Demonstration order and the prefix cache\n\n\
         Made by `cargo run --release -- experiment order --threads 2` (same models, \
         annotated examples and test rows as the in-context learning table; kNN, k = {}; \
         the test rows in pages of {PAGE}, as `exemplar eval` sends them, each order on a \
         fresh model and so an empty prefix cache). `nearest_last` puts the most similar \
         demonstration next to the query, `nearest_first` right after the instruction. \
         Reused: prompt-prefix tokens the cache already held, of those asked. \
         Predictions/s: this run only, on a machine shared with other work.\n\n\
         | data set | order | accuracy / macro-F1 (%) | prefix tokens reused | cache hits | predictions/s |\n\
         |---|---|---|---|---|---|\n",
        args.k
    );
    for (title, order, o) in rows {
        let share = |part: f64, whole: f64| {
            if whole > 0.0 {
                100.0 * part / whole
            } else {
                0.0
            }
        };
        out.push_str(&format!(
            "| {title} | {} | {:.1} / {:.1} | {:.0} of {:.0} ({:.1} %) | {:.0} of {:.0} | {:.2} |\n",
            match order {
                Order::NearestFirst => "nearest_first",
                Order::NearestLast => "nearest_last",
                Order::Random => "random",
            },
            100.0 * o.accuracy,
            100.0 * o.macro_f1,
            o.reused,
            o.asked,
            share(o.reused, o.asked),
            o.hits,
            o.lookups,
            o.predictions_per_second
        ));
    }
    out
}
