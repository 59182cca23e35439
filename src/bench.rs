//! `exemplar bench`: speed measured on this machine.
//!
//! - models: prompt-processing and generation speed of the LLM in each weight format,
//!   and embedding throughput (medians over repeats after a warm-up run);
//! - store: import of a labelled data set into a task (embedding included), and
//!   retrieval latency p50/p99 on that task and on a 100k-point synthetic index.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};

use rand::{Rng, SeedableRng};

use crate::config::{ModelConfig, WeightFormat};
use crate::embed::{Embedder, EmbedderHandle};
use crate::index::VectorIndex;
use crate::llm::Llm;
use crate::model_source;
use crate::retrieve::Strategy;
use crate::server::open_device;
use crate::store::{ItemKind, Store};
use crate::tasks::{Catalog, ItemInput, RetrieveQuery, TaskSpec};

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// LLM and embedder speed.
    Models,
    /// Import throughput and retrieval latency.
    Store,
    /// Both.
    All,
}

/// Options of `exemplar bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub models: ModelConfig,

    /// Which measurements to run.
    #[arg(long, value_enum, default_value_t = Suite::All)]
    pub suite: Suite,

    /// Points in the synthetic index of the store suite.
    #[arg(long, default_value_t = 100_000)]
    pub synthetic_points: usize,

    /// Queries timed per retrieval measurement.
    #[arg(long, default_value_t = 500)]
    pub queries: usize,

    /// Measure every weight format, not only `--weights`.
    #[arg(long)]
    pub all_weights: bool,

    /// JSON-lines file whose `text` fields make the prompts and sentences.
    #[arg(long, default_value = "../shared/data/sst2/train.jsonl")]
    pub data: PathBuf,

    /// Tokens in the few-shot prompt.
    #[arg(long, default_value_t = 400)]
    pub prompt_tokens: usize,

    /// Tokens generated per generation run.
    #[arg(long, default_value_t = 64)]
    pub generate_tokens: usize,

    /// Timed repeats of each measurement.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn timed<T>(
    repeats: usize,
    mut run: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Duration> {
    run()?;
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        run()?;
        samples.push(started.elapsed());
    }
    Ok(median(samples))
}

fn read_rows(path: &PathBuf) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line)?;
            let field = |name: &str| row[name].as_str().unwrap_or_default().to_owned();
            Ok((field("text"), field("label")))
        })
        .collect()
}

/// Runs the chosen suites.
///
/// # Errors
/// When a model or the data file cannot be loaded.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if matches!(args.suite, Suite::Models | Suite::All) {
        run_models(args)?;
    }
    if matches!(args.suite, Suite::Store | Suite::All) {
        tokio::runtime::Runtime::new()?.block_on(run_store(args))?;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn latency_line(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "| {what} | {:.2} | {:.2} |",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3
    );
}

/// Imports the data set into a task of a temporary SQLite store and times retrieval.
async fn run_store(args: &BenchArgs) -> anyhow::Result<()> {
    let rows = read_rows(&args.data)?;
    let device = open_device(args.models.device)?;
    let files = model_source::resolve_embedder(&args.models.embedder_ref())?;
    let embedder = EmbedderHandle::spawn(Embedder::load(&files, &device)?, "bench", 4)?;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let catalog = Catalog::open(Store::connect(&url).await?, embedder.clone()).await?;
    let labels: Vec<String> = {
        let mut l: Vec<String> = rows.iter().map(|(_, label)| label.clone()).collect();
        l.sort();
        l.dedup();
        l
    };
    let spec: TaskSpec = serde_json::from_value(serde_json::json!({
        "labels": labels,
        "template": {"input": "{text}", "output": "{label}"}
    }))?;
    catalog.put_task("bench", spec).await?;

    let started = Instant::now();
    for batch in rows.chunks(100) {
        let items = batch
            .iter()
            .map(|(text, label)| ItemInput {
                id: None,
                text: text.clone(),
                text_pair: None,
                label: Some(label.clone()),
            })
            .collect();
        catalog.add_items("bench", ItemKind::Example, items).await?;
    }
    let import = started.elapsed();
    println!(
        "import: {} examples in {:.1} s = {:.0} examples/s (embedding, SQLite transaction, index)",
        rows.len(),
        import.as_secs_f64(),
        rows.len() as f64 / import.as_secs_f64()
    );

    println!("| retrieval ({} queries) | p50 ms | p99 ms |", args.queries);
    println!("|---|---|---|");
    let queries: Vec<&str> = rows
        .iter()
        .rev()
        .take(args.queries)
        .map(|(t, _)| t.as_str())
        .collect();
    for (name, strategy) in [
        ("knn", Strategy::Knn),
        ("mmr", Strategy::Mmr { lambda: 0.5 }),
    ] {
        let mut samples = Vec::with_capacity(queries.len());
        for text in &queries {
            let query = RetrieveQuery {
                text: (*text).to_owned(),
                text_pair: None,
                k: 8,
                strategy,
            };
            let started = Instant::now();
            catalog.retrieve("bench", query).await?;
            samples.push(started.elapsed());
        }
        latency_line(
            &format!(
                "{name} k=8 at {} examples, query embedding included",
                rows.len()
            ),
            samples,
        );
    }
    let vectors = embedder
        .embed(queries.iter().map(|q| q.to_string()).collect())
        .await?;
    let collection = catalog.collection("bench").context("bench task")?;
    let samples = vectors
        .iter()
        .map(|v| {
            let started = Instant::now();
            collection.index.search(v, 8);
            started.elapsed()
        })
        .collect();
    latency_line(
        &format!("HNSW search k=8 at {} examples", rows.len()),
        samples,
    );
    catalog.close().await;

    let dimension = embedder.dimension();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut random_unit = || {
        let v: Vec<f32> = (0..dimension)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let points: Vec<(usize, Vec<f32>)> = (0..args.synthetic_points)
        .map(|i| (i, random_unit()))
        .collect();
    let started = Instant::now();
    let index = VectorIndex::build(dimension, points)?;
    println!(
        "synthetic index: {} random unit vectors built in {:.1} s",
        args.synthetic_points,
        started.elapsed().as_secs_f64()
    );
    let probes: Vec<Vec<f32>> = (0..args.queries).map(|_| random_unit()).collect();
    let mut found = 0usize;
    let samples = probes
        .iter()
        .enumerate()
        .map(|(i, probe)| {
            let started = Instant::now();
            let hits = index.search(probe, 8);
            let elapsed = started.elapsed();
            if i < 50 {
                let exact: Vec<usize> = index.exact_search(probe, 8).iter().map(|h| h.id).collect();
                found += hits.iter().filter(|h| exact.contains(&h.id)).count();
            }
            elapsed
        })
        .collect();
    latency_line(
        &format!(
            "HNSW search k=8 at {} synthetic points",
            args.synthetic_points
        ),
        samples,
    );
    println!(
        "synthetic recall@8 over 50 queries: {:.3} (uniform random vectors are HNSW's worst case)",
        found as f64 / (8.0 * 50.0f64.min(args.queries as f64))
    );
    Ok(())
}

fn run_models(args: &BenchArgs) -> anyhow::Result<()> {
    let rows = read_rows(&args.data)?;
    let device = open_device(args.models.device)?;
    let formats: Vec<WeightFormat> = if args.all_weights {
        WeightFormat::value_variants().to_vec()
    } else {
        vec![args.models.weights]
    };
    let threads = candle_core::utils::get_num_threads();
    println!("threads: {threads}, device: {:?}", args.models.device);
    println!(
        "| weights | load s | prompt tok/s ({} tokens) | generation tok/s |",
        args.prompt_tokens
    );
    println!("|---|---|---|---|");
    let model_path = model_source::resolve_gguf(&args.models.model_ref())?;
    for format in formats {
        let started = Instant::now();
        let llm = Llm::load(&model_path, &device, format)?;
        let load = started.elapsed();

        let mut few_shot = String::new();
        for (text, label) in &rows {
            few_shot.push_str(&format!("Review: {text}\nSentiment: {label}\n\n"));
            if llm.tokenizer().encode(&few_shot)?.len() > args.prompt_tokens {
                break;
            }
        }
        let mut prompt = llm.tokenizer().encode(&few_shot)?;
        prompt.truncate(args.prompt_tokens);

        let prompt_time = timed(args.repeats, || Ok(llm.session().feed(&prompt)?))?;

        let mut prefix = llm.session();
        let first_logits = prefix.feed(&prompt)?;
        let generation_time = timed(args.repeats, || {
            let mut session = prefix.clone();
            let mut logits = first_logits.clone();
            for _ in 0..args.generate_tokens {
                let next = argmax(&logits);
                logits = session.feed(&[next])?;
            }
            Ok(())
        })?;
        println!(
            "| {:?} | {:.2} | {:.0} | {:.1} |",
            format,
            load.as_secs_f64(),
            prompt.len() as f64 / prompt_time.as_secs_f64(),
            args.generate_tokens as f64 / generation_time.as_secs_f64()
        );
    }

    let files = model_source::resolve_embedder(&args.models.embedder_ref())?;
    let embedder = Embedder::load(&files, &device)?;
    let sentences: Vec<&str> = rows.iter().take(32 * 8).map(|(t, _)| t.as_str()).collect();
    let embed_time = timed(args.repeats, || {
        for batch in sentences.chunks(32) {
            embedder.embed(batch)?;
        }
        Ok(())
    })?;
    println!(
        "embeddings/s (batches of 32 SST-2 sentences): {:.0}",
        sentences.len() as f64 / embed_time.as_secs_f64()
    );
    Ok(())
}

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}
