//! LLM prompt and generation speed per weight format, and embedding throughput.

use std::time::Instant;

use clap::ValueEnum;

use super::{read_rows, timed, BenchArgs};
use crate::config::WeightFormat;
use crate::embed::Embedder;
use crate::llm::Llm;
use crate::model_source;
use crate::server::open_device;

/// Runs the models suite.
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
