//! `exemplar tune`: the tune API from the shell. It starts a tuning on the server,
//! shows its progress as a bar while the server works (the job survives the client:
//! Ctrl-C stops the watching, not the tuning), and prints the table and the defaults
//! the server stored.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use super::server::{Server, ServerArgs};

/// How often the job is polled.
const POLL: Duration = Duration::from_secs(1);
/// Table rows printed unless `--all`.
const SHOWN_ROWS: usize = 10;

/// Options of `exemplar tune`; each grid list is comma-separated and defaults to the
/// server's default grid.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The task to tune (it must have labels and at least 2 annotated examples).
    #[arg(long)]
    pub task: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Annotated examples to leave out one at a time (server default: 100).
    #[arg(long)]
    pub max_examples: Option<usize>,
    /// Seed that draws them.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Demonstrations per query to try, e.g. `4,8`.
    #[arg(long, value_delimiter = ',')]
    pub k: Option<Vec<usize>>,
    /// Strategies to try: `knn`, `mmr`.
    #[arg(long, value_delimiter = ',')]
    pub strategy: Option<Vec<String>>,
    /// Orders to try: `nearest_last`, `nearest_first`.
    #[arg(long, value_delimiter = ',')]
    pub order: Option<Vec<String>>,
    /// Calibrations to try: `none`, `contextual`, `batch`.
    #[arg(long, value_delimiter = ',')]
    pub calibration: Option<Vec<String>>,
    /// Vote weights to try, e.g. `0,0.5,1`.
    #[arg(long, value_delimiter = ',')]
    pub vote_weight: Option<Vec<f64>>,
    /// Cached demonstrations to try: `false`, `true`.
    #[arg(long, value_delimiter = ',')]
    pub cached_demonstrations: Option<Vec<bool>>,
    /// Loaded models to compare (the server's names); the winner's becomes the task's.
    #[arg(long, value_delimiter = ',')]
    pub model: Option<Vec<String>>,
    /// Print every row of the table, not the best ten.
    #[arg(long)]
    pub all: bool,
    /// Print the finished job as the API's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl TuneArgs {
    /// The tune request's body: only what was given.
    fn body(&self) -> Value {
        let mut body = Map::new();
        let mut put = |name: &str, value: Value| {
            if !value.is_null() {
                body.insert(name.to_owned(), value);
            }
        };
        put("max_examples", json!(self.max_examples));
        put("seed", json!(self.seed));
        put("k", json!(self.k));
        put("strategy", json!(self.strategy));
        put("order", json!(self.order));
        put("calibration", json!(self.calibration));
        put("vote_weight", json!(self.vote_weight));
        put("cached_demonstrations", json!(self.cached_demonstrations));
        put("model", json!(self.model));
        Value::Object(body)
    }
}

/// Starts the tuning, follows it to its end, and prints the outcome.
///
/// # Errors
/// When the server refuses the request, is unreachable, or the tuning fails.
pub fn run(args: &TuneArgs) -> anyhow::Result<()> {
    let server = Server::new(&args.server)?;
    let job = server
        .post(&format!("/v1/tasks/{}/tune", args.task), &args.body())
        .context("starting the tuning")?;
    let id = job["id"]
        .as_str()
        .context("the tune answer has no `id`")?
        .to_owned();
    let path = format!("/v1/tasks/{}/tunings/{id}", args.task);
    let progress = ProgressBar::new(job["progress"]["of"].as_u64().unwrap_or(0)).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} predictions {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.println(format!("tuning {id}: GET {path} to follow it elsewhere"));
    let job = loop {
        let job = server.get(&path).context("following the tuning")?;
        progress.set_position(job["progress"]["done"].as_u64().unwrap_or(0));
        if let Some(rate) = job["progress"]["rows_per_second"].as_f64() {
            progress.set_message(format!("{rate:.2}/s"));
        }
        if job["state"] != "running" {
            break job;
        }
        std::thread::sleep(POLL);
    };
    progress.finish_and_clear();
    match job["state"].as_str() {
        Some("complete") => {}
        Some(state) => bail!(
            "the tuning is {state}: {}",
            job["error"].as_str().unwrap_or("no reason given")
        ),
        None => bail!("the tuning answer has no state"),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        print!("{}", table(&job["result"], args.all));
    }
    Ok(())
}

/// The measured table (best first) and the defaults stored, as text.
fn table(result: &Value, all: bool) -> String {
    let rows = result["table"].as_array().cloned().unwrap_or_default();
    let shown = if all {
        rows.len()
    } else {
        rows.len().min(SHOWN_ROWS)
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = format!(
        "leave-one-out over {} annotated examples; {} combinations, best first\n\n\
         {:>4} {:<6} {:<14} {:<11} {:>6} {:<7} {:>8} {:>8} {}\n",
        result["examples"],
        rows.len(),
        "k",
        "strat",
        "order",
        "calibrate",
        "vote w",
        "cached",
        "accuracy",
        "macro-F1",
        "model"
    );
    for row in &rows[..shown] {
        out.push_str(&format!(
            "{:>4} {:<6} {:<14} {:<11} {:>6} {:<7} {:>8.3} {:>8.3} {}\n",
            text(&row["k"]),
            text(&row["strategy"]),
            text(&row["order"]),
            text(&row["calibration"]),
            text(&row["vote_weight"]),
            text(&row["cached_demonstrations"]),
            row["accuracy"].as_f64().unwrap_or(0.0),
            row["macro_f1"].as_f64().unwrap_or(0.0),
            row["model"].as_str().unwrap_or("the task's")
        ));
    }
    if shown < rows.len() {
        out.push_str(&format!("... {} more (--all)\n", rows.len() - shown));
    }
    out.push_str(&format!(
        "\nstored as the task's defaults: {}\n",
        result["defaults"]
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_holds_only_what_was_given() {
        let args = TuneArgs {
            task: "t".into(),
            server: ServerArgs {
                server: "http://127.0.0.1:1".into(),
                api_key: None,
            },
            max_examples: Some(50),
            seed: None,
            k: Some(vec![4, 8]),
            strategy: None,
            order: None,
            calibration: Some(vec!["none".into(), "batch".into()]),
            vote_weight: None,
            cached_demonstrations: Some(vec![false, true]),
            model: Some(vec!["smollm".into(), "gemma".into()]),
            all: false,
            json: false,
        };
        assert_eq!(
            args.body(),
            json!({
                "max_examples": 50,
                "k": [4, 8],
                "calibration": ["none", "batch"],
                "cached_demonstrations": [false, true],
                "model": ["smollm", "gemma"]
            })
        );
    }

    #[test]
    fn the_table_shows_the_best_rows_and_the_defaults() {
        let row = |accuracy: f64| {
            json!({"k": 8, "strategy": "knn", "order": "nearest_last", "calibration": "none",
                   "vote_weight": 0.5, "cached_demonstrations": false,
                   "accuracy": accuracy, "macro_f1": accuracy})
        };
        let result = json!({
            "examples": 12,
            "table": (0..12).map(|i| row(1.0 - f64::from(i) / 100.0)).collect::<Vec<_>>(),
            "defaults": {"k": 8}
        });
        let text = table(&result, false);
        assert!(text.starts_with("leave-one-out over 12 annotated examples; 12 combinations"));
        assert_eq!(text.matches("nearest_last").count(), SHOWN_ROWS);
        assert!(text
            .contains("   8 knn    nearest_last   none           0.5 false      1.000    1.000"));
        assert!(text.contains("... 2 more (--all)"));
        assert!(text.ends_with("stored as the task's defaults: {\"k\":8}\n"));
        assert_eq!(table(&result, true).matches("nearest_last").count(), 12);
    }
}
