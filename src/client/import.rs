//! `exemplar import`: loads a JSON-lines or CSV file into a running server's task, in
//! batches, through the same HTTP API that applications use, with a progress bar.
//!
//! Each batch is one all-or-nothing write. The first bad line stops the import with its
//! line number; earlier batches stay stored, nothing of the failing batch is.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::rows::{self, Row};
use super::server::{ClientError, Server, ServerArgs};

/// Options of `exemplar import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The task to load into (it must exist).
    #[arg(long)]
    pub task: String,
    /// JSON lines or CSV (header row) with `text`, optional `text_pair`, `label`, `id`.
    #[arg(long)]
    pub file: PathBuf,
    /// Load unlabeled pool items instead of annotated examples.
    #[arg(long)]
    pub pool: bool,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Rows per request.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
}

/// The row as the examples or pool API takes it.
fn body_row(row: &Row) -> Value {
    let mut value = row.input();
    if let Some(id) = &row.id {
        value["id"] = json!(id);
    }
    if let Some(label) = &row.label {
        value["label"] = json!(label);
    }
    value
}

/// Runs the import.
///
/// # Errors
/// At the first bad line, on a refused batch, or when the server cannot be reached.
pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let rows = rows::read(&args.file)?;
    let (resource, field) = if args.pool {
        ("pool", "items")
    } else {
        ("examples", "examples")
    };
    let path = format!("/v1/tasks/{}/{resource}", args.task);
    let progress = ProgressBar::new(rows.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let server = Server::new(&args.server)?;
    let mut stored = 0usize;
    for batch in rows.chunks(args.batch_size) {
        let body = json!({ field: batch.iter().map(body_row).collect::<Vec<_>>() });
        match server.post(&path, &body) {
            Ok(_) => {}
            Err(ClientError::Refused {
                message,
                row: Some(row),
                ..
            }) => {
                let line = batch.get(row).map_or(0, |r| r.line);
                bail!("line {line}: {message} ({stored} rows stored before this batch)");
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("{stored} rows stored before this batch"))
            }
        }
        stored += batch.len();
        progress.inc(batch.len() as u64);
    }
    progress.finish();
    println!("imported {stored} rows into task `{}`", args.task);
    Ok(())
}
