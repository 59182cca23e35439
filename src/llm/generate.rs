//! Text generation: greedy or sampled decoding with stop strings and log-probabilities.

use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use serde::Serialize;

use std::sync::Arc;

use super::{log_softmax, LlmError, LlmTokenizer};

/// How to continue a prompt.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling: draw from the fewest tokens whose probabilities reach this
    /// mass (1 keeps them all).
    pub top_p: f64,
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

/// The decoding side of one generation: it turns each step's logits into the next
/// token, the text settled so far and the deltas, and says when to stop.
pub(super) struct Decoder {
    tokenizer: Arc<LlmTokenizer>,
    params: GenerationParams,
    sampler: LogitsProcessor,
    generated: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    /// The generated text so far (cut at a stop string once one is found).
    text: IncrementalText,
    /// Bytes of the text already sent as deltas.
    emitted: usize,
    /// Whether a stop string cut the text (nothing after it may be shown).
    cut: bool,
    finish_reason: FinishReason,
    budget: usize,
    prompt_tokens: usize,
}

impl Decoder {
    /// A generation after a prompt of `prompt_tokens` tokens, in a window of
    /// `context_length`.
    pub(super) fn new(
        tokenizer: Arc<LlmTokenizer>,
        params: GenerationParams,
        prompt_tokens: usize,
        context_length: usize,
    ) -> Self {
        let temperature = (params.temperature > 0.0).then_some(params.temperature);
        let top_p = (params.top_p < 1.0).then_some(params.top_p);
        let sampler = LogitsProcessor::new(params.seed, temperature, top_p);
        let budget = params
            .max_tokens
            .min(context_length.saturating_sub(prompt_tokens));
        Self {
            tokenizer,
            params,
            sampler,
            generated: Vec::new(),
            logprobs: Vec::new(),
            text: IncrementalText::default(),
            emitted: 0,
            cut: false,
            finish_reason: FinishReason::Length,
            budget,
            prompt_tokens,
        }
    }

    /// Whether no token may be generated at all.
    pub(super) fn is_exhausted(&self) -> bool {
        self.generated.len() >= self.budget
    }

    /// Takes the logits after the last token run, reports the settled text to
    /// `on_delta` (which returns `false` to cancel), and returns the token to run next,
    /// or `None` when the generation has ended.
    ///
    /// # Errors
    /// When the sampler or the tokenizer fails.
    pub(super) fn accept(
        &mut self,
        logits: &[f32],
        on_delta: &mut dyn FnMut(Delta) -> bool,
    ) -> Result<Option<u32>, LlmError> {
        if self.is_exhausted() {
            return Ok(None);
        }
        let next = self.sampler.sample(&Tensor::new(logits, &Device::Cpu)?)?;
        if self.tokenizer.is_special(next) {
            self.finish_reason = FinishReason::Stop;
            return Ok(None);
        }
        let token_logprob = match self.params.logprobs {
            Some(n) => Some(describe_token(&self.tokenizer, logits, next, n)?),
            None => None,
        };
        self.generated.push(next);
        self.text.extend(&self.tokenizer, &self.generated)?;

        if let Some(stop_at) = find_stop(&self.text.text, &self.params.stop) {
            self.text.text.truncate(stop_at);
            self.cut = true;
            self.finish_reason = FinishReason::Stop;
            let rest = self
                .text
                .text
                .get(self.emitted..)
                .unwrap_or_default()
                .to_owned();
            self.logprobs.extend(token_logprob.clone());
            on_delta(Delta {
                text: rest,
                logprob: token_logprob,
            });
            self.emitted = self.text.text.len();
            return Ok(None);
        }

        let settled = settled_len(&self.text.text, &self.params.stop).max(self.emitted);
        let delta = Delta {
            text: self.text.text[self.emitted..settled].to_owned(),
            logprob: token_logprob.clone(),
        };
        self.emitted = settled;
        self.logprobs.extend(token_logprob);
        if !on_delta(delta) || self.is_exhausted() {
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// The finished generation, after sending any text still held back.
    pub(super) fn finish(mut self, on_delta: &mut dyn FnMut(Delta) -> bool) -> Generation {
        if !self.cut {
            self.text.flush(&self.tokenizer, &self.generated);
        }
        let text = self.text.text;
        if self.emitted < text.len() {
            on_delta(Delta {
                text: text[self.emitted..].to_owned(),
                logprob: None,
            });
        }
        Generation {
            text,
            logprobs: self.logprobs,
            finish_reason: self.finish_reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated.len(),
        }
    }
}

/// Generated text kept up to date a token at a time, decoding a short window of
/// tokens each time rather than the whole generation again.
#[derive(Debug, Default)]
struct IncrementalText {
    text: String,
    /// Generated tokens whose text is in `text`; the ones after may be the first bytes
    /// of a character still incomplete.
    decoded: usize,
    /// Where the decoded window starts: the tokens before `decoded` are decoded again
    /// with the new ones, so that a token's text is read in context (a tokenizer may
    /// drop the leading space of a sequence's first token).
    window: usize,
}

impl IncrementalText {
    /// Appends the text of `generated`'s new tokens once they make whole characters.
    fn extend(&mut self, tokenizer: &LlmTokenizer, generated: &[u32]) -> Result<(), LlmError> {
        let before = tokenizer.decode(&generated[self.window..self.decoded])?;
        let after = tokenizer.decode(&generated[self.window..])?;
        if after.ends_with('\u{FFFD}') || !after.starts_with(&before) {
            return Ok(());
        }
        self.text.push_str(&after[before.len()..]);
        self.window = self.decoded;
        self.decoded = generated.len();
        Ok(())
    }

    /// Appends whatever is left, incomplete characters shown as the tokenizer shows them.
    fn flush(&mut self, tokenizer: &LlmTokenizer, generated: &[u32]) {
        if self.decoded < generated.len() {
            let before = tokenizer.decode(&generated[self.window..self.decoded]);
            let after = tokenizer.decode(&generated[self.window..]);
            if let (Ok(before), Ok(after)) = (before, after) {
                self.text
                    .push_str(after.get(before.len()..).unwrap_or_default());
            }
            self.decoded = generated.len();
        }
    }
}

fn describe_token(
    tokenizer: &LlmTokenizer,
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
    fn text_decoded_a_window_at_a_time_equals_the_whole_decoded_at_once() {
        let tokenizer = crate::llm::tests::tokenizer();
        let ids = tokenizer
            .encode("Caf\u{e9} na\u{ef}ve \u{65e5}\u{672c}\u{8a9e} \u{1F600} end.\n  two spaces")
            .expect("encodes");
        let whole = tokenizer.decode(&ids).expect("decodes");
        let mut text = IncrementalText::default();
        for end in 1..=ids.len() {
            text.extend(&tokenizer, &ids[..end]).expect("decodes");
            assert!(
                whole.starts_with(&text.text),
                "{:?} is not a start of {whole:?}",
                text.text
            );
            assert!(!text.text.contains('\u{FFFD}'));
        }
        text.flush(&tokenizer, &ids);
        assert_eq!(text.text, whole);
        // A generation cut inside a character ends with what the tokenizer shows for it.
        let cut = (1..ids.len())
            .find(|&end| {
                tokenizer
                    .decode(&ids[..end])
                    .is_ok_and(|t| t.ends_with('\u{FFFD}'))
            })
            .expect("a character split over tokens");
        let mut text = IncrementalText::default();
        for end in 1..=cut {
            text.extend(&tokenizer, &ids[..end]).expect("decodes");
        }
        text.flush(&tokenizer, &ids[..cut]);
        assert_eq!(text.text, tokenizer.decode(&ids[..cut]).expect("decodes"));
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
