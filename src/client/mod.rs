//! The command-line clients: `exemplar import`, `eval` and `predict` read a file, and
//! `exemplar tune` follows a server-side job; all speak the HTTP API of a running server, as applications do, so the server's index
//! and caches serve them and nothing bypasses its validation.
//!
//! - [`rows`]: input files (JSON lines or CSV) read into rows with their line numbers.
//! - [`server`]: the HTTP connection, waiting out 429 and 503 answers.
//! - [`import`], [`eval`], [`predict`], [`tune`]: one command each.

pub mod eval;
pub mod import;
pub mod predict;
pub mod rows;
pub mod server;
pub mod tune;

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

/// How demonstrations are chosen, as the predict API's `strategy`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Strategy {
    /// The most similar annotated examples.
    Knn,
    /// Maximal marginal relevance: similar but diverse.
    Mmr,
    /// A seeded random sample.
    Random,
}

/// Where the most similar demonstration goes, as the predict API's `order`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Order {
    /// Closest to the query.
    NearestLast,
    /// First in the prompt.
    NearestFirst,
    /// Shuffled with the seed.
    Random,
}

/// How the LLM's label probabilities are calibrated, as the predict API's `calibration`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Calibration {
    /// As the model gives them.
    None,
    /// Divided by the probabilities of content-free inputs.
    Contextual,
    /// Divided by the task's mean label distribution (measured by `exemplar tune`).
    Batch,
}

/// Prediction options shared by `eval` and `predict`, sent as the API's fields; what is
/// left out is the task's default (see `exemplar tune`), then the server's.
#[derive(Debug, Args)]
pub struct PredictFlags {
    /// Demonstrations per prompt (0: zero-shot).
    #[arg(long)]
    pub k: Option<usize>,
    /// How demonstrations are chosen.
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Where the most similar demonstration goes.
    #[arg(long, value_enum)]
    pub order: Option<Order>,
    /// How the LLM's probabilities are calibrated.
    #[arg(long, value_enum)]
    pub calibration: Option<Calibration>,
    /// Contextual calibration: the same as `--calibration contextual`.
    #[arg(long, conflicts_with = "calibration")]
    pub calibrate: bool,
    /// The demonstrations' vote's weight in the answer (0: the LLM alone, 1: the vote).
    #[arg(long)]
    pub vote_weight: Option<f64>,
    /// Demonstrations from the server's demonstration cache (approximate, faster).
    #[arg(long)]
    pub cached_demonstrations: Option<bool>,
    /// Inputs per request (the API takes up to 64).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub page_size: u16,
}

impl PredictFlags {
    /// The options as fields of a predict request body.
    fn body(&self, inputs: Vec<Value>) -> Value {
        let calibration = if self.calibrate {
            Some(Calibration::Contextual)
        } else {
            self.calibration
        };
        let fields = [
            ("k", json!(self.k)),
            ("strategy", json!(self.strategy.as_ref().map(api_name))),
            ("order", json!(self.order.as_ref().map(api_name))),
            ("calibration", json!(calibration.as_ref().map(api_name))),
            ("vote_weight", json!(self.vote_weight)),
            ("cached_demonstrations", json!(self.cached_demonstrations)),
        ];
        let mut body = json!({ "inputs": inputs });
        for (name, value) in fields {
            if !value.is_null() {
                body[name] = value;
            }
        }
        body
    }
}

/// The API's spelling of a flag's value (`nearest-last` is `nearest_last`).
fn api_name<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().replace('-', "_"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> PredictFlags {
        PredictFlags {
            k: None,
            strategy: None,
            order: None,
            calibration: None,
            calibrate: false,
            vote_weight: None,
            cached_demonstrations: None,
            page_size: 16,
        }
    }

    #[test]
    fn only_the_options_given_are_sent_so_the_tasks_defaults_apply() {
        let inputs = vec![json!({"text": "a"})];
        assert_eq!(flags().body(inputs.clone()), json!({"inputs": inputs}));
        let given = PredictFlags {
            k: Some(4),
            order: Some(Order::NearestFirst),
            calibrate: true,
            vote_weight: Some(0.5),
            cached_demonstrations: Some(true),
            ..flags()
        };
        assert_eq!(
            given.body(inputs.clone()),
            json!({
                "inputs": inputs,
                "k": 4,
                "order": "nearest_first",
                "calibration": "contextual",
                "vote_weight": 0.5,
                "cached_demonstrations": true
            })
        );
    }
}
