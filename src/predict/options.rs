//! What a prediction request may ask for, and the checks of those options against
//! the task they are for.

use super::{invalid, PredictError};
use crate::retrieve::Strategy;
use crate::tasks::{self, TaskSpec};

pub use crate::prompt::Order;

/// How the demonstrations are found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Selection {
    /// Retrieved for each query.
    Retrieve(Strategy),
    /// The same examples, by id, for every query.
    Fixed(Vec<String>),
}

/// Options for tasks without labels, which generate their answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GenerationOptions {
    /// The most tokens to generate.
    pub max_new_tokens: usize,
    /// Strings that end the answer; the task's separator when empty.
    pub stop: Vec<String>,
    /// 0 for greedy decoding.
    pub temperature: f64,
}

/// Options of a prediction request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PredictOptions {
    /// Demonstrations per query (0 is zero-shot).
    pub k: usize,
    /// How they are found.
    pub selection: Selection,
    /// How they are ordered in the prompt.
    pub order: Order,
    /// Seed for random order and sampling.
    pub seed: u64,
    /// Apply contextual calibration.
    pub calibrate: bool,
    /// Apply batch calibration: divide the LLM's label probabilities by this mean
    /// distribution (one per label, in the task's order).
    #[serde(default)]
    pub label_prior: Option<Vec<f64>>,
    /// Make every label appear among retrieved demonstrations where k allows.
    #[serde(default)]
    pub cover_labels: bool,
    /// Mix the demonstrations' similarity-weighted vote into the label probabilities
    /// with this weight (0: the LLM alone, 1: the vote alone); `None`: no vote.
    #[serde(default)]
    pub vote_weight: Option<f64>,
    /// Take each demonstration's keys and values from the demonstration cache, computed
    /// once after the instruction (approximate: demonstrations do not see each other).
    #[serde(default)]
    pub cached_demonstrations: bool,
    /// Answer the prompt text too.
    pub return_prompt: bool,
    /// The most prompt tokens; by default the context window less the longest answer.
    pub max_prompt_tokens: Option<usize>,
    /// Generation settings for tasks without labels.
    pub generation: GenerationOptions,
    /// A loaded model to run instead of the task's own (a tuning's grid compares
    /// several).
    #[serde(default)]
    pub model: Option<String>,
}

impl PredictOptions {
    /// Classification with `k` demonstrations from `strategy`, nearest last, no
    /// calibration: what the experiments and vote-k's stage 2 use.
    pub fn classify_with(k: usize, strategy: Strategy, seed: u64, calibrate: bool) -> Self {
        Self {
            k,
            selection: Selection::Retrieve(strategy),
            order: Order::NearestLast,
            seed,
            calibrate,
            label_prior: None,
            cover_labels: false,
            vote_weight: None,
            cached_demonstrations: false,
            return_prompt: false,
            max_prompt_tokens: None,
            generation: GenerationOptions {
                max_new_tokens: 1,
                stop: Vec::new(),
                temperature: 0.0,
            },
            model: None,
        }
    }

    /// Checks the options against the task they are for (the sizes a request controls
    /// are capped before, at the API's edge: `crate::api::limits`); the number of
    /// demonstrations per query.
    ///
    /// # Errors
    /// When an option does not fit the task (calibration, a vote or cached
    /// demonstrations on a generation task, a label prior of the wrong length) or `k`
    /// or the strategy is out of range.
    pub fn check(&self, spec: &TaskSpec) -> Result<usize, PredictError> {
        let options = self;
        let classification = spec.is_classification();
        if options.calibrate && !classification {
            return Err(invalid(
                "calibrate",
                "calibration needs labels; this task generates text",
            ));
        }
        if let Some(prior) = &options.label_prior {
            if options.calibrate {
                return Err(invalid(
                    "calibration",
                    "contextual and batch calibration exclude each other",
                ));
            }
            let labels = spec.labels.len();
            if prior.len() != labels || prior.iter().any(|p| !p.is_finite() || *p <= 0.0) {
                return Err(invalid(
                    "calibration",
                    format!(
                        "batch calibration needs one positive probability per label ({labels})"
                    ),
                ));
            }
        }
        if options.cached_demonstrations && !classification {
            return Err(invalid(
                "cached_demonstrations",
                "cached demonstrations serve label scoring; this task generates text",
            ));
        }
        if options.vote_weight.is_some() && !classification {
            return Err(invalid(
                "vote_weight",
                "the demonstrations vote on labels; this task generates text",
            ));
        }
        match &options.selection {
            Selection::Fixed(ids) => Ok(ids.len()),
            Selection::Retrieve(strategy) => {
                tasks::check_k(options.k, 0)?;
                tasks::check_strategy(*strategy)?;
                Ok(options.k)
            }
        }
    }
}
