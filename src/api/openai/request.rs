//! The request fields that completions and chat completions share, checked once: the
//! sampling parameters, streaming options, and the refusal of any field not served.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::super::{limits, ApiError};
use crate::llm::GenerationParams;

/// Fields accepted and unused, as they change no answer: `user`, the end-user id a
/// provider's abuse monitoring reads.
const INFORMATIONAL: [&str; 1] = ["user"];

/// A stop string or several, as OpenAI accepts either.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum StopStrings {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// What a streamed answer carries besides the text.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// A last chunk, with no choices, holding the token counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields of both routes. Every field of OpenAI's API that is not here (nor in the
/// route's own request) lands in `other` and is refused by name, unless it is null.
#[derive(Deserialize)]
pub struct SharedFields {
    /// The model to run; the default if absent.
    pub model: Option<String>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    stop: Option<StopStrings>,
    /// Choices per request: only 1 is served.
    n: Option<usize>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    /// Whether to answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// The sampling parameters of a request, once valid; the token budget comes later,
/// when the prompt's length is known.
pub struct Sampling {
    /// Sampling temperature, 0 for greedy.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// The sampler's seed.
    pub seed: u64,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Whether a streamed answer ends with a usage chunk.
    pub include_usage: bool,
}

impl Sampling {
    /// The parameters of one generation of at most `max_tokens`, with `logprobs`
    /// alternatives per token where asked.
    pub fn params(self, max_tokens: usize, logprobs: Option<usize>) -> GenerationParams {
        GenerationParams {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop,
            logprobs,
        }
    }
}

impl SharedFields {
    /// Checks every shared field and refuses the unsupported ones.
    ///
    /// # Errors
    /// A 422 naming the first field that is out of range or not supported.
    pub fn validate(self) -> Result<Sampling, ApiError> {
        let unsupported = self
            .other
            .iter()
            .find(|(field, value)| !value.is_null() && !INFORMATIONAL.contains(&field.as_str()));
        if let Some((field, _)) = unsupported {
            return Err(ApiError::UnsupportedField(field.clone()));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                "n",
                "only one choice per request is served: give 1",
            ));
        }
        for (field, penalty) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if penalty.is_some_and(|p| p != 0.0) {
                return Err(ApiError::invalid(
                    field,
                    "penalties are not supported: give 0",
                ));
            }
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                "stream_options",
                "only a streamed answer takes stream options: set `stream` to true",
            ));
        }
        let temperature = limits::temperature(self.temperature)?;
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("{top_p} is out of range: give more than 0, at most 1"),
            ));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopStrings::One(s)) => vec![s],
            Some(StopStrings::Many(v)) => v,
        };
        limits::stop_strings(&stop)?;
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "stop strings must not be empty"));
        }
        Ok(Sampling {
            temperature,
            top_p,
            seed: self.seed.unwrap_or_else(rand::random),
            stop,
            include_usage: self.stream_options.unwrap_or_default().include_usage,
        })
    }
}

/// The token budget of a generation after `prompt_tokens`: `asked` if it fits the cap
/// and the context window, else a 422 naming `field`; without `asked`, `default`
/// clipped to what the window leaves.
///
/// # Errors
/// When the asked budget is 0, past the cap, or does not fit after the prompt.
pub fn token_budget(
    field: &'static str,
    asked: Option<usize>,
    default: usize,
    cap: usize,
    prompt_tokens: usize,
    context: usize,
) -> Result<usize, ApiError> {
    let room = context.saturating_sub(prompt_tokens);
    let Some(max_tokens) = asked else {
        if room == 0 {
            return Err(ApiError::ContextLengthExceeded(format!(
                "the prompt has {prompt_tokens} tokens, which fill the model's context \
                 window of {context} tokens"
            )));
        }
        return Ok(default.min(cap).min(room));
    };
    if max_tokens == 0 || max_tokens > cap {
        return Err(ApiError::invalid(
            field,
            format!("{max_tokens} is out of range: give 1 to {cap}"),
        ));
    }
    if max_tokens > room {
        return Err(ApiError::ContextLengthExceeded(format!(
            "the prompt has {prompt_tokens} tokens and {field} is {max_tokens}, but the \
             model's context window is {context} tokens"
        )));
    }
    Ok(max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: Value) -> SharedFields {
        serde_json::from_value(body).expect("shape")
    }

    fn refused_field(body: Value) -> String {
        match fields(body).validate() {
            Err(ApiError::UnsupportedField(field)) => field,
            Err(ApiError::InvalidValue { field, .. }) => field.to_owned(),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn unsupported_fields_are_named() {
        assert_eq!(refused_field(serde_json::json!({"tools": []})), "tools");
        assert_eq!(refused_field(serde_json::json!({"n": 2})), "n");
        assert_eq!(
            refused_field(serde_json::json!({"logit_bias": {"1": 5}})),
            "logit_bias"
        );
        assert_eq!(
            refused_field(serde_json::json!({"presence_penalty": 0.5})),
            "presence_penalty"
        );
        assert_eq!(refused_field(serde_json::json!({"top_p": 0})), "top_p");
        assert_eq!(
            refused_field(serde_json::json!({"stream_options": {"include_usage": true}})),
            "stream_options"
        );
    }

    #[test]
    fn neutral_and_null_values_are_accepted() {
        let sampling = fields(serde_json::json!({
            "n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "tools": null,
            "user": "u-1", "top_p": 0.9, "seed": 3, "stop": "\n",
            "stream": true, "stream_options": {"include_usage": true}
        }))
        .validate()
        .expect("valid");
        assert_eq!(sampling.top_p, 0.9);
        assert_eq!(sampling.seed, 3);
        assert_eq!(sampling.stop, vec!["\n".to_owned()]);
        assert!(sampling.include_usage);
    }

    #[test]
    fn budgets_fit_the_cap_and_the_window() {
        assert_eq!(
            token_budget("max_tokens", Some(5), 16, 64, 10, 100).ok(),
            Some(5)
        );
        assert_eq!(
            token_budget("max_tokens", None, 16, 64, 10, 100).ok(),
            Some(16)
        );
        assert_eq!(
            token_budget("max_tokens", None, 512, 64, 10, 100).ok(),
            Some(64)
        );
        assert_eq!(
            token_budget("max_tokens", None, 512, 640, 90, 100).ok(),
            Some(10)
        );
        assert!(matches!(
            token_budget("max_tokens", Some(0), 16, 64, 10, 100),
            Err(ApiError::InvalidValue { .. })
        ));
        assert!(matches!(
            token_budget("max_tokens", Some(65), 16, 64, 10, 100),
            Err(ApiError::InvalidValue { .. })
        ));
        assert!(matches!(
            token_budget("max_tokens", Some(20), 16, 64, 90, 100),
            Err(ApiError::ContextLengthExceeded(_))
        ));
        assert!(matches!(
            token_budget("max_tokens", None, 16, 64, 100, 100),
            Err(ApiError::ContextLengthExceeded(_))
        ));
    }
}
