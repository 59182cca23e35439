//! Predictions: demonstrations in, labels out.
//!
//! For each query: choose demonstrations among the task's annotated examples, write the
//! prompt within the token budget, then either score every label's continuation after
//! it (classification; one prefix pass shared by all labels and by the content-free
//! inputs of calibration) or generate the answer (tasks without labels).

pub mod calibration;
pub mod defaults;
pub mod metrics;
pub mod vote;

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::llm::{GenerationParams, LlmError, LlmHandle, LlmTokenizer, ScoreRequest};
use crate::prompt::{Input, PromptBuilder};
use crate::retrieve::Strategy;
use crate::tasks::{self, Catalog, Collection, Demonstration, TaskError};
use crate::worker::QueueError;

/// The inputs whose label probabilities measure a prompt's bias (Zhao et al., 2021).
pub const CONTENT_FREE_INPUTS: [&str; 3] = ["N/A", "", "[MASK]"];
/// Content-free results kept for reuse; the cache is emptied when it fills.
const CONTENT_FREE_CACHE: usize = 4096;

/// What can go wrong with a prediction.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The task, its examples or a parameter is wrong.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The LLM failed or is overloaded.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// A prediction parameter is invalid.
    #[error("`{field}`: {message}")]
    InvalidParameter {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An input does not fit the context window even without demonstrations.
    #[error("input {index} needs {tokens} prompt tokens; the budget is {budget} (context window {context} tokens, less room for the answer)")]
    InputTooLong {
        /// Which input.
        index: usize,
        /// Tokens the bare prompt needs.
        tokens: usize,
        /// Tokens available for the prompt.
        budget: usize,
        /// The model's context window.
        context: usize,
    },
    /// Work handed to a blocking thread died (it panicked).
    #[error("{0} was aborted")]
    Aborted(&'static str),
}

impl PredictError {
    /// Whether the model's queue was full: worth a retry shortly, unlike the others.
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Self::Llm(LlmError::Queue(QueueError::Full)))
    }
}

/// How the demonstrations are found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Selection {
    /// Retrieved for each query.
    Retrieve(Strategy),
    /// The same examples, by id, for every query.
    Fixed(Vec<String>),
}

/// Where the most similar demonstration goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Next to the query, at the end.
    #[default]
    NearestLast,
    /// First, right after the instruction.
    NearestFirst,
    /// Shuffled with the request's seed.
    Random,
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
        }
    }
}

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

/// A prompt ready for the model: the shared prefix and each query after it.
struct Prepared {
    prefix: Vec<u32>,
    /// Lengths of the demonstration blocks ending `prefix`, when they come from the
    /// demonstration cache.
    blocks: Vec<usize>,
    query: Vec<u32>,
    content_free: Vec<Vec<u32>>,
    demonstrations: Vec<Demonstration>,
    text: String,
}

/// Runs predictions for every task.
pub struct Predictor {
    catalog: Arc<Catalog>,
    llm: LlmHandle,
    content_free: Mutex<HashMap<u64, Vec<f64>>>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> PredictError {
    PredictError::InvalidParameter {
        field,
        message: message.into(),
    }
}

impl Predictor {
    /// A predictor over the catalog's tasks with the given LLM.
    pub fn new(catalog: Arc<Catalog>, llm: LlmHandle) -> Self {
        Self {
            catalog,
            llm,
            content_free: Mutex::new(HashMap::new()),
        }
    }

    /// The catalog this predictor reads.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Predicts every input, in order.
    ///
    /// # Errors
    /// On an unknown task, a task without examples when demonstrations are asked for,
    /// an invalid option, an input too long for the context window, or an LLM failure.
    pub async fn predict(
        self: &Arc<Self>,
        task: &str,
        inputs: Vec<QueryInput>,
        options: &PredictOptions,
    ) -> Result<Vec<Prediction>, PredictError> {
        let mut run = self.start(task, inputs, options).await?;
        let mut predictions = Vec::with_capacity(run.remaining());
        while let Some(prediction) = run.next().await {
            predictions.push(prediction?);
        }
        Ok(predictions)
    }

    /// Checks the request and readies what all its inputs share; the inputs are then
    /// predicted one at a time by [`PredictionRun::next`], so that a caller can answer
    /// each as it comes and stop at any point.
    ///
    /// # Errors
    /// On an unknown task, a task without examples when demonstrations are asked for,
    /// or an invalid option.
    pub async fn start(
        self: &Arc<Self>,
        task: &str,
        inputs: Vec<QueryInput>,
        options: &PredictOptions,
    ) -> Result<PredictionRun, PredictError> {
        let definition = self.catalog.definition(task).await?;
        let classification = definition.spec.is_classification();
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
            let labels = definition.spec.labels.len();
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
        let k = match &options.selection {
            Selection::Fixed(ids) => ids.len(),
            Selection::Retrieve(strategy) => {
                tasks::check_k(options.k, 0)?;
                tasks::check_strategy(*strategy)?;
                options.k
            }
        };
        let collection = if k > 0 {
            Some(self.catalog.examples(task)?)
        } else {
            None
        };
        let fixed = match (&options.selection, &collection) {
            (Selection::Fixed(ids), Some(collection)) => {
                Some(fixed_demonstrations(collection, ids)?)
            }
            _ => None,
        };
        let builder = Arc::new(PromptBuilder::new(
            &definition.spec.instruction,
            &definition.templates,
            &definition.spec.separator,
        ));
        let tokenizer = Arc::clone(self.llm.tokenizer());
        let labels = definition.spec.labels.clone();
        let continuations: Vec<Vec<u32>> = labels
            .iter()
            .map(|l| tokenizer.encode(&builder.label_continuation(l)))
            .collect::<Result<_, _>>()?;
        let answer_room = if classification {
            continuations.iter().map(Vec::len).max().unwrap_or(0)
        } else {
            options.generation.max_new_tokens
        };
        let context = self.llm.context_length();
        let budget = options
            .max_prompt_tokens
            .unwrap_or(context)
            .min(context.saturating_sub(answer_room));
        Ok(PredictionRun {
            predictor: Arc::clone(self),
            options: options.clone(),
            retrieves: matches!(options.selection, Selection::Retrieve(_)) && k > 0,
            k,
            collection,
            fixed,
            builder,
            tokenizer,
            labels,
            continuations,
            budget,
            context,
            inputs: inputs.into(),
            vectors: VecDeque::new(),
            index: 0,
            in_flight: FuturesOrdered::new(),
        })
    }

    /// Label probabilities for one prepared prompt: as the model gives them, and
    /// calibrated when asked (else the same again).
    async fn classify(
        &self,
        prepared: &Prepared,
        continuations: Vec<Vec<u32>>,
        calibrate: bool,
    ) -> Result<(Vec<f64>, Vec<f64>), PredictError> {
        let key = {
            let mut hasher = DefaultHasher::new();
            prepared.prefix.hash(&mut hasher);
            prepared.blocks.hash(&mut hasher);
            prepared.content_free.hash(&mut hasher);
            continuations.hash(&mut hasher);
            hasher.finish()
        };
        let cached = if calibrate {
            self.cache().get(&key).cloned()
        } else {
            None
        };
        let mut queries = vec![prepared.query.clone()];
        if calibrate && cached.is_none() {
            queries.extend(prepared.content_free.iter().cloned());
        }
        let scores = self
            .llm
            .score(ScoreRequest {
                prefix: prepared.prefix.clone(),
                queries,
                continuations,
                blocks: prepared.blocks.clone(),
            })
            .await?;
        let probabilities = calibration::probabilities(&scores[0]);
        if !calibrate {
            return Ok((probabilities.clone(), probabilities));
        }
        let content_free = match cached {
            Some(content_free) => content_free,
            None => {
                let rows: Vec<Vec<f64>> = scores[1..]
                    .iter()
                    .map(|s| calibration::probabilities(s))
                    .collect();
                let mean = calibration::mean(&rows);
                let mut cache = self.cache();
                if cache.len() >= CONTENT_FREE_CACHE {
                    cache.clear();
                }
                cache.insert(key, mean.clone());
                mean
            }
        };
        let calibrated = calibration::calibrate(&probabilities, &content_free);
        Ok((probabilities, calibrated))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<f64>>> {
        // The map holds finished results only, so a poisoned lock still guards whole data.
        self.content_free.lock().unwrap_or_else(|p| p.into_inner())
    }
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
    predictor: Arc<Predictor>,
    options: PredictOptions,
    /// Whether demonstrations are retrieved per query (so queries are embedded).
    retrieves: bool,
    k: usize,
    collection: Option<Arc<Collection>>,
    fixed: Option<Vec<Demonstration>>,
    builder: Arc<PromptBuilder>,
    tokenizer: Arc<LlmTokenizer>,
    labels: Vec<String>,
    continuations: Vec<Vec<u32>>,
    budget: usize,
    context: usize,
    inputs: VecDeque<QueryInput>,
    /// Embeddings of the next inputs, computed a chunk at a time.
    vectors: VecDeque<Vec<f32>>,
    /// The index of the next input in the request.
    index: usize,
    /// Inputs whose prompts are written and which wait for the model, in order.
    in_flight: FuturesOrdered<BoxFuture<'static, Result<Prediction, PredictError>>>,
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
                    input: &input,
                    order,
                    seed,
                    with_content_free,
                    cached_demonstrations,
                };
                prepare_within_budget(&job, demonstrations, budget, context, index)
            })
            .await
            .map_err(|_| PredictError::Aborted("prompt building"))??
        };
        let answering = Answering {
            predictor: Arc::clone(&self.predictor),
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
                seed: options.seed,
                stop,
                logprobs: None,
            };
            let generation = self.predictor.llm.generate(prompt, params, None).await?;
            prediction.output = Some(generation.text.trim().to_owned());
        } else {
            let (uncalibrated, mut probabilities) = self
                .predictor
                .classify(&prepared, self.continuations.clone(), options.calibrate)
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

/// The fixed demonstrations, by id, most similar first (similarity is not known: 0).
fn fixed_demonstrations(
    collection: &Collection,
    ids: &[String],
) -> Result<Vec<Demonstration>, PredictError> {
    ids.iter()
        .map(|id| {
            collection
                .by_id(id)
                .map(|example| Demonstration {
                    example,
                    similarity: 0.0,
                })
                .ok_or_else(|| invalid("ids", format!("example `{id}` does not exist in the task")))
        })
        .collect()
}

/// What stays fixed while one query's prompt is fitted to its budget.
struct PromptJob<'a> {
    builder: &'a PromptBuilder,
    tokenizer: &'a LlmTokenizer,
    input: &'a QueryInput,
    order: Order,
    seed: u64,
    with_content_free: bool,
    cached_demonstrations: bool,
}

/// Writes and tokenizes the prompt for one query with the given demonstrations
/// (most similar first).
fn prepare(
    job: &PromptJob<'_>,
    mut demonstrations: Vec<Demonstration>,
) -> Result<Prepared, PredictError> {
    let PromptJob {
        builder,
        tokenizer,
        input,
        order,
        seed,
        with_content_free,
        cached_demonstrations,
    } = *job;
    match order {
        Order::NearestLast => demonstrations.reverse(),
        Order::NearestFirst => {}
        Order::Random => {
            demonstrations.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        }
    }
    let rendered: Vec<String> = demonstrations
        .iter()
        .map(|d| {
            builder.demonstration(
                Input {
                    text: &d.example.text,
                    text_pair: d.example.text_pair.as_deref(),
                },
                &d.example.label,
            )
        })
        .collect();
    let prefix_text = builder.prefix(&rendered);
    let query_for = |text: &str, text_pair: Option<&str>| {
        builder.query(prefix_text.is_empty(), Input { text, text_pair })
    };
    let query_text = query_for(&input.text, input.text_pair.as_deref());
    let content_free_texts: Vec<String> = if with_content_free {
        CONTENT_FREE_INPUTS
            .iter()
            .map(|cf| query_for(cf, input.text_pair.as_ref().map(|_| *cf)))
            .collect()
    } else {
        Vec::new()
    };

    let mut query = tokenizer.encode(&query_text)?;
    let mut content_free: Vec<Vec<u32>> = content_free_texts
        .iter()
        .map(|t| tokenizer.encode(t))
        .collect::<Result<_, _>>()?;
    let full_text = format!("{prefix_text}{query_text}");
    if cached_demonstrations && !rendered.is_empty() {
        // Each demonstration is tokenized apart, with the separator before it, so that
        // its tokens (and its cached keys and values) are the same in every prompt.
        let head_text = builder.prefix(&[]);
        let mut prefix = tokenizer.encode(&head_text)?;
        let mut blocks = Vec::with_capacity(rendered.len());
        for (i, demonstration) in rendered.iter().enumerate() {
            let text = if i == 0 && head_text.is_empty() {
                demonstration.clone()
            } else {
                format!("{}{demonstration}", builder.separator())
            };
            let ids = tokenizer.encode(&text)?;
            blocks.push(ids.len());
            prefix.extend(ids);
        }
        return Ok(Prepared {
            prefix,
            blocks,
            query,
            content_free,
            demonstrations,
            text: full_text,
        });
    }
    let prefix = tokenizer.encode(&prefix_text)?;
    // The prefix's cache serves the queries only where tokenizing the parts apart gives
    // the tokens of the whole; otherwise every query runs from the start.
    let splits_cleanly = |part: &str, part_ids: &[u32]| -> Result<bool, PredictError> {
        let whole = tokenizer.encode(&format!("{prefix_text}{part}"))?;
        Ok(whole.len() == prefix.len() + part_ids.len()
            && whole[..prefix.len()] == prefix[..]
            && whole[prefix.len()..] == *part_ids)
    };
    let mut clean = splits_cleanly(&query_text, &query)?;
    for (text, ids) in content_free_texts.iter().zip(&content_free) {
        clean = clean && splits_cleanly(text, ids)?;
    }
    let prefix = if clean || prefix.is_empty() {
        prefix
    } else {
        query = tokenizer.encode(&full_text)?;
        content_free = content_free_texts
            .iter()
            .map(|t| tokenizer.encode(&format!("{prefix_text}{t}")))
            .collect::<Result<_, _>>()?;
        Vec::new()
    };
    Ok(Prepared {
        prefix,
        blocks: Vec::new(),
        query,
        content_free,
        demonstrations,
        text: full_text,
    })
}

/// The prompt within the budget: the least similar demonstrations are dropped until
/// it fits.
fn prepare_within_budget(
    job: &PromptJob<'_>,
    mut demonstrations: Vec<Demonstration>,
    budget: usize,
    context: usize,
    index: usize,
) -> Result<Prepared, PredictError> {
    loop {
        let prepared = prepare(job, demonstrations.clone())?;
        let tokens = prepared.prefix.len() + prepared.query.len();
        if tokens <= budget {
            return Ok(prepared);
        }
        if demonstrations.pop().is_none() {
            return Err(PredictError::InputTooLong {
                index,
                tokens,
                budget,
                context,
            });
        }
    }
}
