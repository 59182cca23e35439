//! `exemplar bench`: speed measured on this machine.
//!
//! - models: prompt-processing and generation speed of the LLM in each weight format,
//!   and embedding throughput (medians over repeats after a warm-up run);
//! - store: import of a labelled data set into a task (embedding included), and
//!   retrieval latency p50/p99 on that task and on a 100k-point synthetic index;
//! - predict: predictions/s and latency over HTTP with 1 and 8 clients, the answer to
//!   overload, and shared-prefix label scoring against one forward pass per label;
//! - select: selection time of each method on 3000- and 20000-item pools;
//! - stage-two: vote-k's stage 2 over a 3000-item pool through the API, against
//!   predicting the pool with whole prompts.

mod models;
mod peer;
mod predict;
mod select;
mod server;
mod stage_two;
mod store;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::config::{ModelConfig, WeightFormat};

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// LLM and embedder speed.
    Models,
    /// Import throughput and retrieval latency.
    Store,
    /// Prediction throughput and latency over HTTP, overload, shared-prefix scoring.
    Predict,
    /// Selection time of each method.
    Select,
    /// Vote-k's stage 2 over a 3000-item pool through the API.
    StageTwo,
    /// Every suite.
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

    /// llama.cpp's `llama-bench` binary (`scripts/build-llama-cpp.sh` builds it): the
    /// models suite runs it on the same GGUF, threads and prompt, and prints the ratios.
    #[arg(long)]
    pub llama_bench: Option<PathBuf>,

    /// llama.cpp's `llama-server` binary (built beside llama-bench by the same script):
    /// the predict suite runs the peer pipeline on it (first-token label scoring of the
    /// same prompts, demonstrations from our retrieval), on the shipped GGUF and on our
    /// conversion of it, and prints the ratios.
    #[arg(long)]
    pub llama_server: Option<PathBuf>,

    /// A Python interpreter with sentence-transformers and torch
    /// (`scripts/install-sentence-transformers.sh` makes one): the models suite runs
    /// `scripts/bench-sentence-transformers.py` with it on the same sentences and threads,
    /// and prints the ratio.
    #[arg(long)]
    pub sentence_transformers: Option<PathBuf>,

    /// Folder for the suites' SVG charts (`docs` refreshes the README's); none without it.
    #[arg(long)]
    pub plots: Option<PathBuf>,

    /// Timed repeats of each measurement.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

/// The folder holding every data set: two levels above `--data`'s file.
pub(crate) fn data_root(args: &BenchArgs) -> PathBuf {
    args.data
        .parent()
        .and_then(|p| p.parent())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// The most memory this process has held resident (Linux's `VmHWM`), in MB; none where
/// `/proc` does not tell.
pub(crate) fn peak_resident_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub(crate) fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub(crate) fn timed<T>(
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

pub(crate) fn read_rows(path: &PathBuf) -> anyhow::Result<Vec<(String, String)>> {
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
        models::run(args)?;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    if matches!(args.suite, Suite::Store | Suite::All) {
        runtime.block_on(store::run(args))?;
    }
    if matches!(args.suite, Suite::Predict | Suite::All) {
        runtime.block_on(predict::run(args))?;
    }
    if matches!(args.suite, Suite::Select | Suite::All) {
        runtime.block_on(select::run(args))?;
    }
    if matches!(args.suite, Suite::StageTwo | Suite::All) {
        runtime.block_on(stage_two::run(args))?;
    }
    Ok(())
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) fn latency_line(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "| {what} | {:.2} | {:.2} |",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3
    );
}

/// The GGUF file llama.cpp is given for a weight format: the shipped file, or our
/// conversion of it written to a temporary file that lives as long as this value.
enum WeightsFile {
    Shipped(PathBuf),
    Converted(tempfile::NamedTempFile),
}

impl WeightsFile {
    /// `model` as `format`.
    fn write(model: &Path, format: WeightFormat) -> anyhow::Result<Self> {
        Ok(match format {
            WeightFormat::AsShipped => Self::Shipped(model.to_path_buf()),
            format => {
                let converted = tempfile::Builder::new().suffix(".gguf").tempfile()?;
                crate::llm::write_converted(model, format, converted.path())?;
                Self::Converted(converted)
            }
        })
    }

    /// Where the file is.
    fn path(&self) -> &Path {
        match self {
            Self::Shipped(path) => path,
            Self::Converted(file) => file.path(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::Suite;

    #[test]
    fn the_readme_names_every_suite() {
        let readme = include_str!("../../README.md");
        let row = readme
            .lines()
            .find(|line| line.starts_with("| `exemplar bench"))
            .expect("the README's command table has a bench row");
        for suite in Suite::value_variants() {
            let name = suite.to_possible_value().expect("a named suite");
            assert!(
                row.contains(&format!("{}\\|", name.get_name()))
                    || row.contains(&format!("{}]", name.get_name())),
                "the README's bench row lacks `{}`: {row}",
                name.get_name()
            );
        }
    }
}
