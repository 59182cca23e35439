//! Predictions: demonstrations in, labels out.
//!
//! For each query: choose demonstrations among the task's annotated examples, write the
//! prompt within the token budget, then either score every label's continuation after
//! it (classification; one prefix pass shared by all labels and by the content-free
//! inputs of calibration) or generate the answer (tasks without labels).

pub mod calibration;
pub mod defaults;
pub mod metrics;
mod options;
mod run;
pub mod vote;

pub use crate::prompt::fit::CONTENT_FREE_INPUTS;
pub use options::{GenerationOptions, Order, PredictOptions, Selection};
pub use run::{Prediction, PredictionRun, QueryInput, EMBED_CHUNK, IN_FLIGHT};

use std::collections::{HashMap, VecDeque};

use std::sync::{Arc, Mutex};

use futures::stream::FuturesOrdered;

use crate::llm::{LlmError, LlmHandle, LlmRegistry, ScoreRequest, UnknownModel};
use crate::prompt::fit::Prepared;
use crate::prompt::PromptBuilder;
use crate::tasks::{Catalog, Collection, Demonstration, TaskError};
use crate::worker::QueueError;

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
    /// The task names a model this server has not loaded.
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),
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

/// What a content-free result depends on: the model and every token it scored (kept
/// whole, not hashed, so that two prompts are never mistaken for each other).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ContentFreeKey {
    model: String,
    prefix: Vec<u32>,
    blocks: Vec<usize>,
    content_free: Vec<Vec<u32>>,
    continuations: Vec<Vec<u32>>,
}

/// Runs predictions for every task.
pub struct Predictor {
    catalog: Arc<Catalog>,
    llms: LlmRegistry,
    content_free: Mutex<HashMap<ContentFreeKey, Vec<f64>>>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> PredictError {
    PredictError::InvalidParameter {
        field,
        message: message.into(),
    }
}

impl Predictor {
    /// A predictor over the catalog's tasks, each run on the LLM it names.
    pub fn new(catalog: Arc<Catalog>, llms: LlmRegistry) -> Self {
        Self {
            catalog,
            llms,
            content_free: Mutex::new(HashMap::new()),
        }
    }

    /// The catalog this predictor reads.
    pub fn llms(&self) -> &LlmRegistry {
        &self.llms
    }

    /// The task catalog it reads.
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
        let k = options.check(&definition.spec)?;
        let collection = if k > 0 {
            Some(self.catalog.examples(task).await?)
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
        let model = options
            .model
            .as_deref()
            .or(definition.spec.model.as_deref());
        let llm = self.llms.get(model)?.clone();
        let tokenizer = Arc::clone(llm.tokenizer());
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
        let context = llm.context_length();
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
            llm,
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
        llm: &LlmHandle,
        prepared: &Prepared,
        continuations: Vec<Vec<u32>>,
        calibrate: bool,
    ) -> Result<(Vec<f64>, Vec<f64>), PredictError> {
        let key = calibrate.then(|| ContentFreeKey {
            model: llm.name().to_owned(),
            prefix: prepared.prefix.clone(),
            blocks: prepared.blocks.clone(),
            content_free: prepared.content_free.clone(),
            continuations: continuations.clone(),
        });
        let cached = key.as_ref().and_then(|key| self.cache().get(key).cloned());
        let mut queries = vec![prepared.query.clone()];
        if calibrate && cached.is_none() {
            queries.extend(prepared.content_free.iter().cloned());
        }
        let scores = llm
            .score(ScoreRequest {
                prefix: prepared.prefix.clone(),
                queries,
                continuations,
                blocks: prepared.blocks.clone(),
            })
            .await?;
        let probabilities = calibration::probabilities(&scores[0]);
        let Some(key) = key else {
            return Ok((probabilities.clone(), probabilities));
        };
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

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<ContentFreeKey, Vec<f64>>> {
        // The map holds finished results only, so a poisoned lock still guards whole data.
        self.content_free.lock().unwrap_or_else(|p| p.into_inner())
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
