//! A prediction request under way: its inputs embedded a chunk at a time, each
//! one's demonstrations retrieved and its prompt fitted off the async workers, a few
//! waiting for the model at once, and the answers made in the inputs' order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;

use super::{calibration, vote, PredictError, PredictOptions, Predictor, Selection};
use crate::llm::{GenerationParams, LlmHandle, LlmTokenizer};
use crate::prompt::fit::{self, FitError, Prepared, PromptJob};
use crate::prompt::PromptBuilder;
use crate::tasks::{self, Collection, Demonstration};

/// One query.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct QueryInput {
    /// The text.
    pub text: String,
    /// The second text of a pair task.
    pub text_pair: Option<String>,
    /// An example that must not serve as a demonstration (leave-one-out).
    pub exclude: Option<String>,
}

/// The answer for one query.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The most probable label (classification).
    pub label: Option<String>,
    /// The generated answer (tasks without labels).
    pub output: Option<String>,
    /// Every label with its probability, in the task's order.
    pub probabilities: Vec<(String, f64)>,
    /// The probabilities before calibration (equal to `probabilities` without it).
    pub uncalibrated: Vec<(String, f64)>,
    /// With a vote weight: the LLM's probabilities (calibrated if asked) before the mix.
    pub llm_probabilities: Option<Vec<(String, f64)>>,
    /// With a vote weight: the demonstrations' similarity-weighted vote.
    pub vote_probabilities: Option<Vec<(String, f64)>>,
    /// The demonstrations used, in prompt order.
    pub demonstrations: Vec<Demonstration>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// The prompt, when asked for.
    pub prompt: Option<String>,
}

/// Queries embedded at a time by a [`PredictionRun`]: few enough that a run stopped
/// early wastes little, many enough that the embedder batches.
pub const EMBED_CHUNK: usize = 16;

/// Inputs of one request waiting for the model at once: enough for the scheduler to
/// batch a long request's queries, few enough that requests share the queue.
pub const IN_FLIGHT: usize = 4;

/// A prediction request under way: what its inputs share, and the inputs not predicted
/// yet. Dropping it stops the request; nothing of it stays queued for the model.
pub struct PredictionRun {
    pub(super) predictor: Arc<Predictor>,
    pub(super) options: PredictOptions,
    /// Whether demonstrations are retrieved per query (so queries are embedded).
    pub(super) retrieves: bool,
    pub(super) k: usize,
    pub(super) collection: Option<Arc<Collection>>,
    pub(super) fixed: Option<Vec<Demonstration>>,
    pub(super) builder: Arc<PromptBuilder>,
    pub(super) tokenizer: Arc<LlmTokenizer>,
    pub(super) labels: Vec<String>,
    pub(super) continuations: Vec<Vec<u32>>,
    pub(super) budget: usize,
    pub(super) context: usize,
    /// The model the task runs on.
    pub(super) llm: LlmHandle,
    pub(super) inputs: VecDeque<QueryInput>,
    /// Embeddings of the next inputs, computed a chunk at a time.
    pub(super) vectors: VecDeque<Vec<f32>>,
    /// The index of the next input in the request.
    pub(super) index: usize,
    /// Inputs whose prompts are written and which wait for the model, in order.
    pub(super) in_flight: FuturesOrdered<BoxFuture<'static, Result<Prediction, PredictError>>>,
}

impl PredictionRun {
    /// Inputs not predicted yet.
    pub fn remaining(&self) -> usize {
        self.inputs.len() + self.in_flight.len()
    }

    /// Predicts the next input; `None` once every input is answered.
    ///
    /// The first input runs alone, so that the first answer comes as soon as it would
    /// without the others; then up to [`IN_FLIGHT`] inputs wait for the model at once,
    /// so that its scheduler runs them side by side. The answers come in the inputs'
    /// order.
    ///
    /// # Errors
    /// When the input is too long for the context window, or the model fails.
    pub async fn next(&mut self) -> Option<Result<Prediction, PredictError>> {
        let answered = self.index - self.in_flight.len();
        let limit = if answered == 0 { 1 } else { IN_FLIGHT };
        while self.in_flight.len() < limit {
            let Some(input) = self.inputs.pop_front() else {
                break;
            };
            let answer = match self.prepare_one(input).await {
                Ok(answer) => answer,
                Err(error) => futures::future::ready(Err(error)).boxed(),
            };
            self.in_flight.push_back(answer);
            self.index += 1;
        }
        self.in_flight.next().await
    }

    /// Embeds, retrieves for and writes the prompt of `input`; returns the rest of its
    /// prediction, the model's part, to be awaited.
    async fn prepare_one(
        &mut self,
        input: QueryInput,
    ) -> Result<BoxFuture<'static, Result<Prediction, PredictError>>, PredictError> {
        let started = Instant::now();
        let index = self.index;
        let options = &self.options;
        if self.retrieves && self.vectors.is_empty() {
            // This input (already taken from the queue) and the ones after it.
            let queries: Vec<(String, Option<String>)> = std::iter::once(&input)
                .chain(self.inputs.iter())
                .take(EMBED_CHUNK)
                .map(|i| (i.text.clone(), i.text_pair.clone()))
                .collect();
            self.vectors = self.predictor.catalog.embed_queries(&queries).await?.into();
        }
        let vector = self.vectors.pop_front();
        let prepared = {
            let builder = Arc::clone(&self.builder);
            let tokenizer = Arc::clone(&self.tokenizer);
            let order = options.order;
            let seed = options.seed.wrapping_add(index as u64);
            let with_content_free = options.calibrate;
            let cached_demonstrations = options.cached_demonstrations;
            let fixed = self.fixed.clone();
            let collection = self.collection.clone();
            let selection = options.selection.clone();
            let (k, budget, context) = (self.k, self.budget, self.context);
            let cover_labels = options.cover_labels;
            let labels = self.labels.clone();
            // Retrieval and tokenization are CPU work: off the async workers.
            tokio::task::spawn_blocking(move || {
                let demonstrations = match (fixed, collection, selection, vector) {
                    (Some(fixed), _, _, _) => fixed,
                    (None, Some(collection), Selection::Retrieve(strategy), Some(vector)) => {
                        let exclude = input
                            .exclude
                            .as_deref()
                            .and_then(|id| collection.by_id(id))
                            .map(|e| e.point);
                        let chosen = tasks::choose(&collection, &vector, k, strategy, exclude);
                        if cover_labels {
                            tasks::cover_labels(&collection, &vector, chosen, &labels, exclude)
                        } else {
                            chosen
                        }
                    }
                    _ => Vec::new(),
                };
                let job = PromptJob {
                    builder: &builder,
                    tokenizer: &tokenizer,
                    text: &input.text,
                    text_pair: input.text_pair.as_deref(),
                    order,
                    seed,
                    with_content_free,
                    cached_demonstrations,
                };
                fit::within_budget(&job, demonstrations, budget).map_err(|error| match error {
                    FitError::TooLong { tokens, budget } => PredictError::InputTooLong {
                        index,
                        tokens,
                        budget,
                        context,
                    },
                    FitError::Tokenizer(error) => PredictError::Llm(error),
                })
            })
            .await
            .map_err(|_| PredictError::Aborted("prompt building"))??
        };
        let answering = Answering {
            predictor: Arc::clone(&self.predictor),
            llm: self.llm.clone(),
            options: self.options.clone(),
            builder: Arc::clone(&self.builder),
            labels: self.labels.clone(),
            continuations: self.continuations.clone(),
        };
        Ok(answering.answer(prepared, started).boxed())
    }
}

/// What the model's part of one prediction needs, owned so that several can wait for
/// the model at once.
struct Answering {
    predictor: Arc<Predictor>,
    llm: LlmHandle,
    options: PredictOptions,
    builder: Arc<PromptBuilder>,
    labels: Vec<String>,
    continuations: Vec<Vec<u32>>,
}

impl Answering {
    /// Runs the model on the prepared prompt and makes the prediction of it.
    async fn answer(
        self,
        prepared: Prepared,
        started: Instant,
    ) -> Result<Prediction, PredictError> {
        let options = &self.options;
        let prompt_tokens = prepared.prefix.len() + prepared.query.len();
        let mut prediction = Prediction {
            label: None,
            output: None,
            probabilities: Vec::new(),
            uncalibrated: Vec::new(),
            llm_probabilities: None,
            vote_probabilities: None,
            demonstrations: prepared.demonstrations.clone(),
            prompt_tokens,
            prompt: options.return_prompt.then(|| prepared.text.clone()),
        };
        if self.labels.is_empty() {
            let stop = if options.generation.stop.is_empty() {
                vec![self.builder.separator().to_owned()]
            } else {
                options.generation.stop.clone()
            };
            let mut prompt = prepared.prefix.clone();
            prompt.extend(&prepared.query);
            let params = GenerationParams {
                max_tokens: options.generation.max_new_tokens,
                temperature: options.generation.temperature,
                top_p: 1.0,
                seed: options.seed,
                stop,
                logprobs: None,
            };
            let generation = self.llm.generate(prompt, params, None).await?;
            prediction.output = Some(generation.text.trim().to_owned());
        } else {
            let (uncalibrated, mut probabilities) = self
                .predictor
                .classify(
                    &self.llm,
                    &prepared,
                    self.continuations.clone(),
                    options.calibrate,
                )
                .await?;
            if let Some(prior) = &options.label_prior {
                probabilities = calibration::calibrate(&uncalibrated, prior);
            }
            let labels = &self.labels;
            if let Some(weight) = options.vote_weight {
                let shown = prepared
                    .demonstrations
                    .iter()
                    .map(|d| (d.example.label.as_str(), d.similarity));
                let votes = vote::distribution(labels, shown);
                let mixed = vote::mix(&probabilities, &votes, weight);
                prediction.llm_probabilities =
                    Some(labels.iter().cloned().zip(probabilities).collect());
                prediction.vote_probabilities = Some(labels.iter().cloned().zip(votes).collect());
                probabilities = mixed;
            }
            let best = probabilities
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            prediction.label = labels.get(best).cloned();
            prediction.probabilities = labels.iter().cloned().zip(probabilities).collect();
            prediction.uncalibrated = labels.iter().cloned().zip(uncalibrated).collect();
        }
        ::metrics::counter!("exemplar_predictions_total").increment(1);
        ::metrics::counter!("exemplar_prediction_prompt_tokens_total")
            .increment(prompt_tokens as u64);
        ::metrics::histogram!("exemplar_prediction_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(prediction)
    }
}
