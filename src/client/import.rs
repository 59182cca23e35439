//! `exemplar import`: loads a JSON-lines file into a running server's task, in batches,
//! through the same HTTP API that applications use, with a progress bar.
//!
//! Each batch is one all-or-nothing write. The first bad line stops the import with its
//! line number; earlier batches stay stored, nothing of the failing batch is.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::{json, Value};

/// Attempts per batch while the server answers 429 or 503.
const MAX_ATTEMPTS: u32 = 30;

/// Options of `exemplar import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The task to load into (it must exist).
    #[arg(long)]
    pub task: String,
    /// JSON lines with `text`, optional `text_pair`, `label` and `id`.
    #[arg(long)]
    pub file: PathBuf,
    /// Load unlabeled pool items instead of annotated examples.
    #[arg(long)]
    pub pool: bool,
    /// The server's base URL.
    #[arg(long, env = "EXEMPLAR_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Rows per request.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_pair: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

/// Reads the file into rows, each with its 1-based line number.
fn read_lines(path: &PathBuf) -> anyhow::Result<Vec<(usize, String)>> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (index, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        rows.push((index + 1, line.to_owned()));
    }
    Ok(rows)
}

fn parse_line(number: usize, raw: &str) -> anyhow::Result<Value> {
    let line: Line =
        serde_json::from_str(raw).with_context(|| format!("line {number}: not a valid row"))?;
    Ok(serde_json::to_value(line)?)
}

/// Runs the import.
///
/// # Errors
/// At the first bad line, on a refused batch, or when the server cannot be reached.
pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let rows = read_lines(&args.file)?;
    let (resource, field) = if args.pool {
        ("pool", "items")
    } else {
        ("examples", "examples")
    };
    let url = format!(
        "{}/v1/tasks/{}/{resource}",
        args.server.trim_end_matches('/'),
        args.task
    );
    let progress = ProgressBar::new(rows.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let client = reqwest::Client::new();
    let mut stored = 0usize;
    for batch in rows.chunks(args.batch_size) {
        let parsed = batch
            .iter()
            .map(|(number, raw)| parse_line(*number, raw))
            .collect::<anyhow::Result<Vec<Value>>>()
            .with_context(|| format!("{stored} rows stored before this batch"))?;
        let body = json!({ field: parsed });
        runtime
            .block_on(send(&client, &url, &body, batch))
            .with_context(|| format!("{stored} rows stored before this batch"))?;
        stored += batch.len();
        progress.inc(batch.len() as u64);
    }
    progress.finish();
    println!("imported {stored} rows into task `{}`", args.task);
    Ok(())
}

/// Posts one batch, waiting out 429 and 503 answers.
async fn send(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    batch: &[(usize, String)],
) -> anyhow::Result<()> {
    for attempt in 1..=MAX_ATTEMPTS {
        let response = client
            .post(url)
            .json(body)
            .send()
            .await
            .with_context(|| format!("posting to {url}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if (status == 429 || status == 503) && attempt < MAX_ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            continue;
        }
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let message = answer["error"]["message"].as_str().unwrap_or("no message");
        if let Some(row) = answer["error"]["row"].as_u64() {
            let line = batch.get(row as usize).map_or(0, |(number, _)| *number);
            bail!("line {line}: {message}");
        }
        bail!("the server answered {status}: {message}");
    }
    bail!("the server stayed busy after {MAX_ATTEMPTS} attempts")
}
