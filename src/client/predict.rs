//! `exemplar predict`: labels every row of a file through the predict API, writing
//! one JSON line per row, in input order, as each page comes back.
//!
//! Each output line carries the input's line number, its id (when given), the text,
//! the label (or `output` for generation tasks), the probabilities and the ids of the
//! demonstrations used. The output is flushed to disk after every page, so a run that
//! stops loses at most the page in flight, and `--resume` goes on after the last
//! complete line.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::rows::{self, Row};
use super::server::{Server, ServerArgs};
use super::PredictFlags;

/// Options of `exemplar predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The task to predict with (it must exist).
    #[arg(long)]
    pub task: String,
    /// JSON lines or CSV (header row) with `text`, optional `text_pair` and `id`.
    #[arg(long)]
    pub file: PathBuf,
    /// Where to write the predictions as JSON lines (standard output when left out).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue an earlier run: skip the rows already in `--out`.
    #[arg(long, requires = "out")]
    pub resume: bool,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub flags: PredictFlags,
}

/// One output line: the row and what the server answered for it.
fn output_line(row: &Row, prediction: &Value) -> Value {
    let mut line = json!({ "line": row.line, "text": row.text });
    if let Some(id) = &row.id {
        line["id"] = json!(id);
    }
    for field in ["label", "output", "probabilities"] {
        if !prediction[field].is_null() {
            line[field] = prediction[field].clone();
        }
    }
    line["demonstrations"] = prediction["demonstrations"]
        .as_array()
        .map(|demos| demos.iter().map(|d| d["id"].clone()).collect())
        .unwrap_or_else(|| json!([]));
    line
}

/// Opens `path` to continue it: drops a torn last line, checks that the complete lines
/// are the first rows of the input, and answers how many there are.
fn reopen(path: &Path, rows: &[Row]) -> anyhow::Result<(File, usize)> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("--resume: opening {}", path.display()))?;
    let mut complete = 0usize;
    let mut kept_bytes = 0u64;
    let mut last_line = None;
    for line in BufReader::new(&file).split(b'\n') {
        let line = line?;
        let Ok(value) = serde_json::from_slice::<Value>(&line) else {
            break;
        };
        kept_bytes += line.len() as u64 + 1;
        complete += 1;
        last_line = value["line"].as_u64();
    }
    let length = file.metadata()?.len();
    // The scan counts a newline after every line; a whole last line may lack its own.
    let needs_newline = kept_bytes > length;
    if complete > rows.len() {
        bail!(
            "{} holds {complete} predictions but the input has {} rows",
            path.display(),
            rows.len()
        );
    }
    if complete > 0 && last_line != Some(rows[complete - 1].line as u64) {
        bail!(
            "{} does not continue this input: its last prediction is not for line {}",
            path.display(),
            rows[complete - 1].line
        );
    }
    file.set_len(kept_bytes.min(length))?;
    file.seek(SeekFrom::End(0))?;
    if needs_newline {
        file.write_all(b"\n")?;
    }
    Ok((file, complete))
}

/// Runs the predictions.
///
/// # Errors
/// At a bad line (before anything is sent), when `--out` exists without `--resume`,
/// or when the server fails a page.
pub fn run(args: &PredictArgs) -> anyhow::Result<()> {
    let rows = rows::read(&args.file)?;
    let (mut out, done): (Box<dyn Write>, usize) = match &args.out {
        Some(path) if args.resume => {
            let (file, done) = reopen(path, &rows)?;
            (Box::new(file), done)
        }
        Some(path) => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| {
                    format!(
                        "creating {} (give --resume to continue an earlier run)",
                        path.display()
                    )
                })?;
            (Box::new(file), 0)
        }
        None => (Box::new(std::io::stdout().lock()), 0),
    };
    let server = Server::new(&args.server)?;
    let progress = ProgressBar::new(rows.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_position(done as u64);
    let path = format!("/v1/tasks/{}/predict", args.task);
    let page_size = usize::from(args.flags.page_size);
    for (page, chunk) in rows[done..].chunks(page_size).enumerate() {
        let body = args.flags.body(chunk.iter().map(Row::input).collect());
        let answer = server.post(&path, &body).with_context(|| {
            format!(
                "page {} (lines {} to {}); the rows before it are written",
                page + 1,
                chunk[0].line,
                chunk[chunk.len() - 1].line
            )
        })?;
        let predictions = answer["predictions"]
            .as_array()
            .context("the predict answer has no `predictions`")?;
        if predictions.len() != chunk.len() {
            bail!(
                "page {}: {} predictions for {} rows",
                page + 1,
                predictions.len(),
                chunk.len()
            );
        }
        for (row, prediction) in chunk.iter().zip(predictions) {
            writeln!(out, "{}", output_line(row, prediction))?;
        }
        out.flush()?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: usize) -> Row {
        Row {
            line,
            id: None,
            text: format!("text {line}"),
            text_pair: None,
            label: None,
        }
    }

    #[test]
    fn an_output_line_keeps_the_row_and_the_demonstration_ids() {
        let prediction = json!({"label": "pos", "probabilities": {"pos": 0.9, "neg": 0.1},
            "demonstrations": [{"id": "e1", "similarity": 0.5}], "prompt_tokens": 9});
        let mut input = row(3);
        input.id = Some("a".into());
        assert_eq!(
            output_line(&input, &prediction),
            json!({"line": 3, "id": "a", "text": "text 3", "label": "pos",
                "probabilities": {"pos": 0.9, "neg": 0.1}, "demonstrations": ["e1"]})
        );
    }

    #[test]
    fn resuming_drops_a_torn_line_and_checks_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let rows: Vec<Row> = (1..=4).map(row).collect();
        std::fs::write(&path, "{\"line\":1}\n{\"line\":2}\n{\"line\":3,\"te").unwrap();
        let (_, done) = reopen(&path, &rows).unwrap();
        assert_eq!(done, 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"line\":1}\n{\"line\":2}\n"
        );
        let other: Vec<Row> = [5, 6, 7].into_iter().map(row).collect();
        assert!(reopen(&path, &other).is_err());
    }
}
