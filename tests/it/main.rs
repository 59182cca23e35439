//! The integration tests, one module per concern, built as one binary so that the crate
//! and its dependencies are linked once rather than once per file. Most start the real
//! `exemplar` binary on a free port with a temporary database and the default models,
//! and speak HTTP to it; `common` holds what they share.
//!
//! One module alone: `cargo test --test it deploy::` (a path prefix filters tests).

mod common;

mod api_models;
mod api_predict;
mod api_selections;
mod api_tasks;
mod architectures;
mod auth;
mod caps;
mod chat;
mod cli;
mod cli_client;
mod deploy;
mod durability;
mod embedder_reference;
mod fairness;
mod index_recall;
mod job_limits;
mod llm_reference;
mod llm_scoring;
mod long_requests;
mod model_faults;
mod openapi;
mod prompt_injection;
mod replicas;
mod residency;
mod shutdown;
mod store_races;
mod tuning;
mod ui;
mod vote;
