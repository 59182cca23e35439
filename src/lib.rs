//! Exemplar: an HTTP service for in-context learning.
//!
//! A request enters through [`api`], is validated there, and reaches the models, which
//! each live on their own thread behind a bounded queue ([`worker`]).
//!
//! - [`config`]: one `Config`, from flags, then `EXEMPLAR_*` variables, then defaults, checked before the server listens.
//! - [`model_source`]: turns `--model` / `--embedder` into local files (path or hub repo).
//! - [`llm`]: our llama forward on candle, its GGUF tokenizer, scoring, generation, the prefix cache.
//! - [`embed`]: the sentence embedder: our packed BERT encoder, mean pooling, L2 norm.
//! - [`worker`]: a model owned by one OS thread behind a bounded queue; a panic breaks it and restarts the process.
//! - [`fault_injection`]: the test-only hook that makes a model panic (debug builds).
//! - [`cores`]: the CPU's cores, taken in turns by the models' steps.
//! - [`store`]: the database (SQLite or PostgreSQL through sqlx), the source of truth.
//! - [`index`]: one HNSW index per task over the examples' embeddings.
//! - [`prompt`]: task templates (parsing, checking, rendering) and a prompt fitted to its token budget.
//! - [`quant`]: integer (Q8_0, Q4_0, Q4_1) matrix kernels for the LLM, chosen at run time.
//! - [`simd`]: a plain loop compiled for AVX2 as well as baseline x86-64, chosen at run time.
//! - [`retrieve`]: demonstration strategies: knn, mmr, random.
//! - [`tasks`]: tasks and their data: the write path and retrieval.
//! - [`predict`]: prediction options, label scoring, calibration, the vote, generation, metrics.
//! - [`select`]: selective annotation: random, fast vote-k, vote-k, IDEAL.
//! - [`evaluation`]: evaluation on labelled rows, in the request or as a background job.
//! - [`jobs`]: the job runner: background work under a database lease, resumed after a crash.
//! - [`api`]: the axum router, one file per resource, and the error type mapped to HTTP.
//! - [`auth`]: API keys (hashes in the database), scopes, and `exemplar keys`.
//! - [`server`]: binds the router, loads the models in the background, shuts down cleanly.
//! - [`bench`]: the speed measurements behind `exemplar bench`.
//! - [`client`]: `exemplar import`, `eval` and `predict`, clients of the HTTP API.
//! - [`experiments`]: `exemplar experiment`, the tables in `docs/results.md`.
//! - [`plot`]: SVG charts of those results.
//! - [`ui`]: the annotation page at `/ui`, static files that speak the public API.

pub mod api;
pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod cores;
pub mod embed;
pub mod evaluation;
pub mod experiments;
pub mod fault_injection;
pub mod index;
pub mod jobs;
pub mod llm;
pub mod model_source;
pub mod plot;
pub mod predict;
pub mod prompt;
pub mod quant;
pub mod retrieve;
pub mod select;
pub mod server;
pub mod simd;
pub mod store;
pub mod tasks;
pub mod tuning;
pub mod ui;
pub mod worker;

pub use server::serve;
