//! `exemplar bench`: prompt-processing and generation speed of the LLM in each weight
//! format, and embedding throughput, measured on this machine.
//!
//! Figures are medians over repeats after a warm-up run, printed as a table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::config::{ModelConfig, WeightFormat};
use crate::embed::Embedder;
use crate::llm::Llm;
use crate::model_source;
use crate::server::open_device;

/// Options of `exemplar bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub models: ModelConfig,

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

/// Runs the measurements and prints the table.
///
/// # Errors
/// When a model or the data file cannot be loaded.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
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
