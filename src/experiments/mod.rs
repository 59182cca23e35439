//! Reproducible experiments on the public data sets in `../shared/data`, run by
//! `exemplar experiment`. Each finished row is cached as JSON so that an interrupted run
//! resumes where it stopped; the tables are written into `docs/results.md` between
//! markers, so that each experiment owns its own section.

pub mod icl;
pub mod order;
pub mod selection;
pub mod vote;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{de::DeserializeOwned, Serialize};

use crate::config::ModelConfig;
use crate::embed::EmbedderHandle;
use crate::llm::LlmRegistry;
use crate::predict::metrics::{self, Evaluation};
use crate::predict::QueryInput;
use crate::server::load_models;

/// Seed of the annotated-example sample every experiment draws from a train set.
pub const TRAIN_SEED: u64 = 0;
/// Seed of the test sample every experiment draws from a test set.
pub const TEST_SEED: u64 = 1;

/// What every experiment is given: the models, the data sets and the results file.
#[derive(Debug, Args)]
pub struct ExperimentArgs {
    #[command(flatten)]
    pub models: ModelConfig,
    /// Folder with `sst2/`, `trec/`, `subj/` JSON lines.
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// The results file; the experiment's own section of it is rewritten.
    #[arg(long, default_value = "docs/results.md")]
    pub out: PathBuf,
}

impl ExperimentArgs {
    /// Loads the LLMs and the embedder, off the async workers.
    ///
    /// # Errors
    /// When a model cannot be found or loaded.
    pub async fn load_models(&self) -> anyhow::Result<(LlmRegistry, EmbedderHandle)> {
        let models = self.models.clone();
        Ok(
            tokio::task::spawn_blocking(move || load_models(&models, 64))
                .await
                .context("loading models")??,
        )
    }

    /// `dataset`'s `examples` annotated rows drawn from its train split (seed
    /// [`TRAIN_SEED`]) and `test_rows` rows from its test split (seed [`TEST_SEED`]):
    /// every experiment's samples.
    ///
    /// # Errors
    /// When a file is missing or a line is not a row.
    pub fn splits(
        &self,
        dataset: &Dataset,
        examples: usize,
        test_rows: usize,
    ) -> anyhow::Result<(Vec<Row>, Vec<Row>)> {
        Ok((
            self.draw(dataset, "train", examples, TRAIN_SEED)?,
            self.draw(dataset, "test", test_rows, TEST_SEED)?,
        ))
    }

    /// `n` rows of `dataset`'s `split` (`train` or `test`), drawn with `seed`.
    ///
    /// # Errors
    /// When the file is missing or a line is not a row.
    pub fn draw(
        &self,
        dataset: &Dataset,
        split: &str,
        n: usize,
        seed: u64,
    ) -> anyhow::Result<Vec<Row>> {
        Ok(sample(&read_split(&self.data, dataset, split)?, n, seed))
    }
}

/// One labelled row of a data set.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Row {
    /// The text.
    pub text: String,
    /// The gold label.
    pub label: String,
}

impl Row {
    /// The row as a query, its label unseen.
    pub fn query(&self) -> QueryInput {
        QueryInput {
            text: self.text.clone(),
            text_pair: None,
            exclude: None,
        }
    }
}

/// A data set used by the experiments.
#[derive(Debug, Clone, Copy)]
pub struct Dataset {
    /// Folder name under the data directory.
    pub name: &'static str,
    /// Name in tables.
    pub title: &'static str,
    /// The labels in a fixed order.
    pub labels: &'static [&'static str],
    /// The task instruction.
    pub instruction: &'static str,
    /// The input template.
    pub input: &'static str,
    /// The output template.
    pub output: &'static str,
}

/// SST-2, TREC and SUBJ with the templates the experiments use.
pub const DATASETS: [Dataset; 3] = [
    Dataset {
        name: "sst2",
        title: "SST-2",
        labels: &["negative", "positive"],
        instruction: "Classify the sentiment of each movie review as negative or positive.",
        input: "Review: {text}",
        output: "Sentiment: {label}",
    },
    Dataset {
        name: "trec",
        title: "TREC",
        labels: &["abbreviation", "description", "entity", "human", "location", "number"],
        instruction: "Classify each question by the type of its answer: abbreviation, description, entity, human, location or number.",
        input: "Question: {text}",
        output: "Answer type: {label}",
    },
    Dataset {
        name: "subj",
        title: "SUBJ",
        labels: &["objective", "subjective"],
        instruction: "Classify each sentence as objective or subjective.",
        input: "Sentence: {text}",
        output: "Type: {label}",
    },
];

impl Dataset {
    /// The labels, in the data set's order.
    pub fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|s| s.to_string()).collect()
    }

    /// Accuracy, macro-F1 and the rest of `predicted` against `rows`' gold labels.
    pub fn evaluate(&self, rows: &[Row], predicted: &[String]) -> Evaluation {
        let gold: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
        metrics::evaluate(&self.label_names(), &gold, predicted)
    }
}

/// Reads `split` (`train` or `test`) of a data set.
///
/// # Errors
/// When the file is missing or a line is not a row.
pub fn read_split(data: &Path, dataset: &Dataset, split: &str) -> anyhow::Result<Vec<Row>> {
    let path = data.join(dataset.name).join(format!("{split}.jsonl"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// `n` rows drawn without replacement with a fixed seed.
pub fn sample(rows: &[Row], n: usize, seed: u64) -> Vec<Row> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut picked: Vec<Row> = rows.to_vec();
    picked.shuffle(&mut rng);
    picked.truncate(n);
    picked
}

/// A folder of finished results, one JSON file per key.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Opens (creates) the folder.
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// A path inside the cache folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A finished result, if cached.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let text = std::fs::read_to_string(self.path(&format!("{key}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Stores a finished result, atomically (write, then rename).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> anyhow::Result<()> {
        let path = self.path(&format!("{key}.json"));
        let partial = self.path(&format!("{key}.json.partial"));
        std::fs::write(&partial, serde_json::to_vec_pretty(value)?)?;
        std::fs::rename(&partial, &path)?;
        Ok(())
    }
}

/// Replaces the text between `<!-- {section}:begin -->` and `<!-- {section}:end -->`
/// in `file` (appending the section when absent).
///
/// # Errors
/// When the file cannot be read or written.
pub fn write_section(file: &Path, section: &str, body: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- {section}:begin -->");
    let end = format!("<!-- {section}:end -->");
    let current = std::fs::read_to_string(file).unwrap_or_else(|_| "# Results\n".to_owned());
    let block = format!("{begin}\n{body}\n{end}");
    let updated = match (current.find(&begin), current.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{block}{}", &current[..a], &current[b + end.len()..])
        }
        _ => format!("{}\n{block}\n", current.trim_end()),
    };
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(file, updated)?;
    Ok(())
}
