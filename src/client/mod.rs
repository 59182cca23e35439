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

/// Prediction options shared by `eval` and `predict`, sent as the API's fields.
#[derive(Debug, Args)]
pub struct PredictFlags {
    /// Demonstrations per prompt (0: zero-shot); the server's default when left out.
    #[arg(long)]
    pub k: Option<usize>,
    /// How demonstrations are chosen.
    #[arg(long, value_enum, default_value_t = Strategy::Knn)]
    pub strategy: Strategy,
    /// Where the most similar demonstration goes.
    #[arg(long, value_enum, default_value_t = Order::NearestLast)]
    pub order: Order,
    /// Contextual calibration.
    #[arg(long)]
    pub calibrate: bool,
    /// Inputs per request (the API takes up to 64).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub page_size: u16,
}

impl PredictFlags {
    /// The options as fields of a predict request body.
    fn body(&self, inputs: Vec<Value>) -> Value {
        let mut body = json!({
            "inputs": inputs,
            "strategy": api_name(&self.strategy),
            "order": api_name(&self.order),
            "calibrate": self.calibrate,
        });
        if let Some(k) = self.k {
            body["k"] = json!(k);
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
