//! A query's prompt fitted to its token budget: written with its demonstrations in
//! their order, tokenized (in one piece, split where the tokenizer splits, or in the
//! demonstration cache's blocks), and the least similar demonstrations dropped until
//! it fits.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{Input, Order, PromptBuilder};
use crate::llm::{LlmError, LlmTokenizer};
use crate::tasks::Demonstration;

/// The inputs whose label probabilities measure a prompt's bias (Zhao et al., 2021).
pub const CONTENT_FREE_INPUTS: [&str; 3] = ["N/A", "", "[MASK]"];

/// Why a prompt could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The tokenizer failed on the prompt's text.
    #[error(transparent)]
    Tokenizer(#[from] LlmError),
    /// The query alone, without demonstrations, passes the budget.
    #[error("the prompt needs {tokens} tokens; the budget is {budget}")]
    TooLong {
        /// Tokens the bare prompt needs.
        tokens: usize,
        /// Tokens available for the prompt.
        budget: usize,
    },
}

/// A prompt ready for the model: the shared prefix and each query after it.
pub struct Prepared {
    /// The tokens every query continues.
    pub prefix: Vec<u32>,
    /// Lengths of the demonstration blocks ending `prefix`, when they come from the
    /// demonstration cache.
    pub blocks: Vec<usize>,
    /// The query's tokens after the prefix.
    pub query: Vec<u32>,
    /// The content-free inputs' tokens after the prefix, for contextual calibration.
    pub content_free: Vec<Vec<u32>>,
    /// The demonstrations in prompt order.
    pub demonstrations: Vec<Demonstration>,
    /// The whole prompt as text.
    pub text: String,
}

/// What stays fixed while one query's prompt is fitted to its budget.
pub struct PromptJob<'a> {
    /// The task's prompt builder.
    pub builder: &'a PromptBuilder,
    /// The LLM's tokenizer.
    pub tokenizer: &'a LlmTokenizer,
    /// The query's text.
    pub text: &'a str,
    /// The query's second text, for pair tasks.
    pub text_pair: Option<&'a str>,
    /// Where the most similar demonstration goes.
    pub order: Order,
    /// The seed of a random order.
    pub seed: u64,
    /// Whether the content-free inputs are written too (contextual calibration).
    pub with_content_free: bool,
    /// Whether the demonstrations are tokenized apart, as the demonstration cache's
    /// blocks.
    pub cached_demonstrations: bool,
}

/// Writes and tokenizes the prompt for one query with the given demonstrations
/// (most similar first), starting with the model's BOS token where it wants one.
fn prepare(job: &PromptJob<'_>, demonstrations: Vec<Demonstration>) -> Result<Prepared, LlmError> {
    let mut prepared = prepare_text(job, demonstrations)?;
    if let Some(bos) = job.tokenizer.bos() {
        // BOS opens the shared prefix, or each sequence where nothing is shared.
        if prepared.prefix.is_empty() {
            prepared.query.insert(0, bos);
            for content_free in &mut prepared.content_free {
                content_free.insert(0, bos);
            }
        } else {
            prepared.prefix.insert(0, bos);
        }
    }
    Ok(prepared)
}

/// [`prepare`] without the BOS token.
fn prepare_text(
    job: &PromptJob<'_>,
    mut demonstrations: Vec<Demonstration>,
) -> Result<Prepared, LlmError> {
    let PromptJob {
        builder,
        tokenizer,
        text,
        text_pair,
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
    let query_text = query_for(text, text_pair);
    let content_free_texts: Vec<String> = if with_content_free {
        CONTENT_FREE_INPUTS
            .iter()
            .map(|cf| query_for(cf, text_pair.map(|_| *cf)))
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
    let splits_cleanly = |part: &str, part_ids: &[u32]| -> Result<bool, LlmError> {
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

/// The prompt within the budget: the least similar demonstrations (the last of
/// `demonstrations`, most similar first) are dropped until it fits.
///
/// # Errors
/// When the tokenizer fails, or the prompt passes the budget without demonstrations.
pub fn within_budget(
    job: &PromptJob<'_>,
    mut demonstrations: Vec<Demonstration>,
    budget: usize,
) -> Result<Prepared, FitError> {
    loop {
        let prepared = prepare(job, demonstrations.clone())?;
        let tokens = prepared.prefix.len() + prepared.query.len();
        if tokens <= budget {
            return Ok(prepared);
        }
        if demonstrations.pop().is_none() {
            return Err(FitError::TooLong { tokens, budget });
        }
    }
}
