//! Selection time of each method: a 3000-item SST-2 pool with budget 100, and a
//! 20000-item pool (SST-2, TREC and SUBJ train texts) for fast vote-k and IDEAL.

use std::ops::ControlFlow;
use std::time::Instant;

use super::{read_rows, BenchArgs};
use crate::embed::Embedder;
use crate::model_source;
use crate::select::{first_pass, Method, ParamOverrides, Params};
use crate::server::open_device;

/// Runs the select suite.
///
/// # Errors
/// When the data or the embedder cannot be loaded, or a selection fails.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let data = super::data_root(args);
    let mut texts: Vec<String> = Vec::new();
    for name in ["sst2", "trec", "subj"] {
        let rows = read_rows(&data.join(name).join("train.jsonl"))?;
        texts.extend(rows.into_iter().map(|(text, _)| text));
    }
    texts.truncate(20_000);
    let device = open_device(args.models.device)?;
    let files = model_source::resolve_embedder(&args.models.embedder_ref())?;
    let embedder = Embedder::load(&files, &device)?;
    let started = Instant::now();
    let embeddings = tokio::task::spawn_blocking(move || embedder.embed(&texts)).await??;
    println!(
        "embedded {} pool texts in {:.1} s",
        embeddings.len(),
        started.elapsed().as_secs_f64()
    );
    println!("| pool | method | budget | selection s |\n|---|---|---|---|");
    let cases = [
        (3000, Method::Random),
        (3000, Method::FastVoteK),
        (3000, Method::VoteK),
        (3000, Method::Ideal),
        (20_000, Method::FastVoteK),
        (20_000, Method::Ideal),
    ];
    for (size, method) in cases {
        let pool = embeddings[..size.min(embeddings.len())].to_vec();
        let budget = 100;
        let params = Params::resolve(method, budget, ParamOverrides::default());
        let started = Instant::now();
        let chosen = tokio::task::spawn_blocking(move || {
            first_pass(method, &pool, budget, &params, 0, |_, _| {
                ControlFlow::Continue(())
            })
        })
        .await??;
        let label = match method {
            Method::VoteK => "vote-k stage 1 (budget/10; stage 2 runs the LLM over the pool)",
            Method::FastVoteK => "fast vote-k",
            Method::Ideal => "IDEAL (lazy greedy)",
            Method::Random => "random",
        };
        println!(
            "| {size} | {label} | {budget} ({} chosen) | {:.2} |",
            chosen.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
