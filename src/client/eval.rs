//! `exemplar eval`: the evaluate API's table from the shell, over a labelled file.
//!
//! The rows go to the predict API in pages (so the server's prefix cache and batching
//! work across a page), the metrics are computed here by the server's own function
//! ([`crate::predict::metrics::evaluate`]), and `--json` prints them in the evaluate
//! API's shape. Every line is checked, labels included, before anything is sent; when
//! the server fails a page, the table of the rows done so far is printed before the
//! error, which names the page.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::rows::{self, Row};
use super::server::{Server, ServerArgs};
use super::PredictFlags;
use crate::predict::metrics::{self, Evaluation};

/// Options of `exemplar eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The task to evaluate (it must exist and have labels).
    #[arg(long)]
    pub task: String,
    /// JSON lines or CSV (header row) with `text`, optional `text_pair`, and `label`.
    #[arg(long)]
    pub file: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub flags: PredictFlags,
    /// Print the evaluation as the evaluate API's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The task's labels, from the server.
fn task_labels(server: &Server, task: &str) -> anyhow::Result<Vec<String>> {
    let task_body = server
        .get(&format!("/v1/tasks/{task}"))
        .with_context(|| format!("reading task `{task}`"))?;
    Ok(task_body["labels"]
        .as_array()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Checks that every row has one of `labels`, naming the first line that does not.
fn check_labels(rows: &[Row], labels: &[String]) -> anyhow::Result<Vec<String>> {
    rows.iter()
        .map(|row| match &row.label {
            None => bail!("line {}: no `label`", row.line),
            Some(label) if !labels.contains(label) => bail!(
                "line {}: label `{label}` is not one of the task's labels ({})",
                row.line,
                labels.join(", ")
            ),
            Some(label) => Ok(label.clone()),
        })
        .collect()
}

/// Runs the evaluation.
///
/// # Errors
/// At a bad line (before anything is sent), when the task has no labels, or when the
/// server fails a page.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let rows = rows::read(&args.file)?;
    if rows.is_empty() {
        bail!("{} holds no rows", args.file.display());
    }
    let server = Server::new(&args.server)?;
    let labels = task_labels(&server, &args.task)?;
    if labels.is_empty() {
        bail!(
            "task `{}` has no labels: evaluation measures classification",
            args.task
        );
    }
    let gold = check_labels(&rows, &labels)?;

    let progress = ProgressBar::new(rows.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let path = format!("/v1/tasks/{}/predict", args.task);
    let mut predicted: Vec<String> = Vec::with_capacity(rows.len());
    let page_size = usize::from(args.flags.page_size);
    for (page, chunk) in rows.chunks(page_size).enumerate() {
        let body = args.flags.body(chunk.iter().map(Row::input).collect());
        let answer = match server.post(&path, &body) {
            Ok(answer) => answer,
            Err(error) => {
                progress.abandon();
                if !predicted.is_empty() {
                    let done = metrics::evaluate(&labels, &gold[..predicted.len()], &predicted);
                    eprintln!("the {} rows evaluated before the failure:", predicted.len());
                    eprint!("{}", table(&done));
                }
                return Err(error).with_context(|| {
                    format!(
                        "page {} (lines {} to {})",
                        page + 1,
                        chunk[0].line,
                        chunk[chunk.len() - 1].line
                    )
                });
            }
        };
        let labels_of_page = answer["predictions"]
            .as_array()
            .context("the predict answer has no `predictions`")?
            .iter()
            .map(|p| p["label"].as_str().unwrap_or_default().to_owned());
        predicted.extend(labels_of_page);
        let correct = predicted.iter().zip(&gold).filter(|(p, g)| p == g).count();
        progress.set_message(format!(
            "accuracy {:.3}",
            correct as f64 / predicted.len() as f64
        ));
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let evaluation = metrics::evaluate(&labels, &gold, &predicted);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&evaluation)?);
    } else {
        print!("{}", table(&evaluation));
    }
    Ok(())
}

/// The evaluation as plain-text tables: totals, per-label scores, the confusion matrix.
pub fn table(evaluation: &Evaluation) -> String {
    let mut out = format!(
        "n {}  accuracy {:.4}  macro-F1 {:.4}\n\n",
        evaluation.n, evaluation.accuracy, evaluation.macro_f1
    );
    let corner = "gold \\ predicted";
    let longest_label = evaluation.labels.iter().map(String::len).max().unwrap_or(0);
    let width = longest_label.max(corner.len());
    out.push_str(&format!(
        "{:width$}  precision  recall     F1  support\n",
        "label"
    ));
    for scores in &evaluation.per_label {
        out.push_str(&format!(
            "{:width$}  {:9.4}  {:6.4}  {:.4}  {:7}\n",
            scores.label, scores.precision, scores.recall, scores.f1, scores.support
        ));
    }
    let column = longest_label.max(5);
    out.push_str(&format!("\n{corner:width$}"));
    for label in &evaluation.labels {
        out.push_str(&format!("  {label:>column$}"));
    }
    out.push('\n');
    for (label, counts) in evaluation.labels.iter().zip(&evaluation.confusion) {
        out.push_str(&format!("{label:width$}"));
        for count in counts {
            out.push_str(&format!("  {count:>column$}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_totals_scores_and_the_confusion_matrix() {
        let labels = vec!["neg".to_owned(), "pos".to_owned()];
        let gold: Vec<String> = ["neg", "neg", "pos"].map(String::from).to_vec();
        let predicted: Vec<String> = ["neg", "pos", "pos"].map(String::from).to_vec();
        let text = table(&metrics::evaluate(&labels, &gold, &predicted));
        assert!(
            text.starts_with("n 3  accuracy 0.6667  macro-F1 0.6667"),
            "{text}"
        );
        assert!(
            text.contains("neg                  1.0000  0.5000  0.6667        2"),
            "{text}"
        );
        assert!(text.contains("gold \\ predicted    neg    pos"), "{text}");
        assert!(text.contains("pos                   0      1"), "{text}");
    }

    #[test]
    fn labels_are_checked_before_anything_is_sent() {
        let row = |line: usize, label: Option<&str>| Row {
            line,
            id: None,
            text: "t".into(),
            text_pair: None,
            label: label.map(String::from),
        };
        let labels = vec!["a".to_owned()];
        let err = check_labels(&[row(1, Some("a")), row(2, Some("b"))], &labels).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: label `b` is not one of the task's labels (a)"
        );
        let err = check_labels(&[row(4, None)], &labels).unwrap_err();
        assert_eq!(err.to_string(), "line 4: no `label`");
    }
}
