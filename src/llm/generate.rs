//! Text generation: greedy or sampled decoding with stop strings and log-probabilities.

use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use serde::Serialize;

use super::{log_softmax, Llm, LlmError, PrefixCache};

/// How to continue a prompt.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy decoding.
    pub temperature: f64,
    /// Seed of the sampler, so that a sampled answer can be repeated.
    pub seed: u64,
    /// Generation ends before the first of these strings; it is not returned.
    pub stop: Vec<String>,
    /// How many alternatives to report per generated token, if any.
    pub logprobs: Option<usize>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop string or the end-of-text token.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// One generated token with its log-probability and the most likely alternatives.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural-log probability under the model (before temperature).
    pub logprob: f32,
    /// The most likely tokens at that position, best first.
    pub top: Vec<(String, f32)>,
}

/// A piece of output as it becomes final.
#[derive(Debug, Clone)]
pub struct Delta {
    /// Text that will not change any more (may be empty while a stop string could start).
    pub text: String,
    /// The token that produced it, when log-probabilities were asked for.
    pub logprob: Option<TokenLogprob>,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text, without the stop string.
    pub text: String,
    /// Per-token log-probabilities, when asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

/// Where the first stop string starts in `text`, if any.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// How much of `text` is final: not an incomplete UTF-8 sequence and not the start of
/// a stop string that the next tokens could complete.
fn settled_len(text: &str, stops: &[String]) -> usize {
    let end = text.trim_end_matches('\u{FFFD}').len();
    let held = stops
        .iter()
        .filter_map(|stop| {
            stop.char_indices()
                .skip(1)
                .map(|(cut, _)| cut)
                .filter(|&cut| text[..end].ends_with(&stop[..cut]))
                .max()
        })
        .max()
        .unwrap_or(0);
    end - held
}

impl Llm {
    /// Continues `prompt` and reports each settled piece of text to `on_delta`, which
    /// returns `false` to cancel (a client that went away).
    ///
    /// # Errors
    /// When the prompt is empty, would overflow the context, or the model fails.
    ///
    /// All of the prompt but its last token is taken from (and left in) `prefixes`,
    /// so a prompt that repeats an earlier one's start skips that part.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerationParams,
        prefixes: &mut PrefixCache,
        on_delta: &mut dyn FnMut(Delta) -> bool,
    ) -> Result<Generation, LlmError> {
        let tokenizer = self.tokenizer();
        let Some((&last, start)) = prompt.split_last() else {
            return Err(LlmError::InvalidInput(
                "cannot continue an empty prompt".into(),
            ));
        };
        let mut session = prefixes.session(self, start)?;
        let mut logits = session.feed(&[last])?;
        let temperature = (params.temperature > 0.0).then_some(params.temperature);
        let mut sampler = LogitsProcessor::new(params.seed, temperature, None);

        let mut generated: Vec<u32> = Vec::new();
        let mut logprobs = Vec::new();
        let mut emitted = 0usize;
        let mut text = String::new();
        let mut finish_reason = FinishReason::Length;
        let budget = params
            .max_tokens
            .min(self.context_length().saturating_sub(prompt.len()));

        while generated.len() < budget {
            let next = sampler.sample(&Tensor::new(logits.as_slice(), &Device::Cpu)?)?;
            if tokenizer.is_special(next) {
                finish_reason = FinishReason::Stop;
                break;
            }
            let token_logprob = match params.logprobs {
                Some(n) => Some(describe_token(&tokenizer, &logits, next, n)?),
                None => None,
            };
            generated.push(next);
            text = tokenizer.decode(&generated)?;

            if let Some(stop_at) = find_stop(&text, &params.stop) {
                text.truncate(stop_at);
                finish_reason = FinishReason::Stop;
                let rest = text.get(emitted..).unwrap_or_default().to_owned();
                logprobs.extend(token_logprob.clone());
                on_delta(Delta {
                    text: rest,
                    logprob: token_logprob,
                });
                emitted = text.len();
                break;
            }

            let settled = settled_len(&text, &params.stop).max(emitted);
            let delta = Delta {
                text: text[emitted..settled].to_owned(),
                logprob: token_logprob.clone(),
            };
            emitted = settled;
            logprobs.extend(token_logprob);
            if !on_delta(delta) {
                break;
            }
            if generated.len() < budget {
                logits = session.feed(&[next])?;
            }
        }
        if emitted < text.len() {
            on_delta(Delta {
                text: text[emitted..].to_owned(),
                logprob: None,
            });
        }
        Ok(Generation {
            text,
            logprobs,
            finish_reason,
            prompt_tokens: prompt.len(),
            completion_tokens: generated.len(),
        })
    }
}

fn describe_token(
    tokenizer: &super::LlmTokenizer,
    logits: &[f32],
    chosen: u32,
    top_n: usize,
) -> Result<TokenLogprob, LlmError> {
    let lp = log_softmax(logits);
    let mut order: Vec<u32> = (0..lp.len() as u32).collect();
    let n = top_n.min(order.len());
    if n > 0 {
        order.select_nth_unstable_by(n - 1, |&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
    }
    order.truncate(n);
    order.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
    let top = order
        .into_iter()
        .map(|id| Ok((tokenizer.decode(&[id])?, lp[id as usize])))
        .collect::<Result<_, LlmError>>()?;
    Ok(TokenLogprob {
        token: tokenizer.decode(&[chosen])?,
        logprob: lp
            .get(chosen as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY),
        top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_earliest_stop_string_wins() {
        assert_eq!(find_stop("abc\n\ndef", &stops(&["def", "\n"])), Some(3));
        assert_eq!(find_stop("abc", &stops(&["x"])), None);
        assert_eq!(find_stop("abc", &stops(&[""])), None);
    }

    #[test]
    fn text_that_may_start_a_stop_string_is_held_back() {
        assert_eq!(settled_len("hello wor", &stops(&["world!"])), 6);
        assert_eq!(settled_len("hello", &stops(&["\n\n"])), 5);
        assert_eq!(settled_len("hello\n", &stops(&["\n\n"])), 5);
        assert_eq!(settled_len("caf\u{FFFD}", &stops(&[])), 3);
    }
}
