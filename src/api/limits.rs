//! Every cap on a size a request controls, in one place. The validated request types
//! check them before anything reaches the domain; a value past its cap is answered 422
//! naming the field and the limit (`openapi.yaml` lists the same numbers).

use super::ApiError;

/// The most demonstrations one prompt may ask for (`k`), and the most `fixed` ids: the
/// domain's own cap.
pub const MAX_K: usize = crate::tasks::MAX_K;
/// The longest query text (`text`, `text_pair`, a completion's `prompt`, a text to
/// tokenize), in bytes: far past the model's context, short of costly tokenizing.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// The most messages of one chat.
pub const MAX_MESSAGES: usize = 256;
/// The most stop strings of a generation.
pub const MAX_STOP_STRINGS: usize = 4;
/// The longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 64;
/// The most inputs one predict request may carry.
pub const MAX_INPUTS: usize = 64;
/// The most rows one evaluation (or a tuning's `max_examples`) may have.
pub const MAX_EVALUATION_EXAMPLES: usize = 2000;
/// The most texts one embeddings request may carry.
pub const MAX_EMBEDDING_INPUTS: usize = 256;
/// The most alternatives per token a completion's `logprobs` may ask for.
pub const MAX_LOGPROBS: usize = 20;
/// The highest sampling temperature accepted.
pub const MAX_TEMPERATURE: f64 = 2.0;
/// The largest selection budget.
pub const MAX_BUDGET: usize = 10_000;
/// The most neighbours per item of a selection's graph.
pub const MAX_GRAPH_K: usize = 1_000;
/// The most diffusion runs of IDEAL: the selection rules' own cap, which the
/// command line meets too.
pub const MAX_RUNS: usize = crate::select::MAX_RUNS;

/// A sampling temperature, 0 (greedy) when absent; a 422 past 0 to
/// [`MAX_TEMPERATURE`].
pub fn temperature(value: Option<f64>) -> Result<f64, ApiError> {
    let temperature = value.unwrap_or(0.0);
    if (0.0..=MAX_TEMPERATURE).contains(&temperature) {
        Ok(temperature)
    } else {
        Err(ApiError::invalid(
            "temperature",
            format!("{temperature} is out of range: give 0 (greedy) to {MAX_TEMPERATURE}"),
        ))
    }
}

/// A 422 unless `value` lies in `min..=max`.
pub fn in_range(field: &'static str, value: usize, min: usize, max: usize) -> Result<(), ApiError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{value} is out of range: give {min} to {max}"),
        ))
    }
}

/// A 422 unless `count` `what` are at most `max`.
pub fn at_most(field: &'static str, what: &str, count: usize, max: usize) -> Result<(), ApiError> {
    if count <= max {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{count} {what} given; at most {max}"),
        ))
    }
}

/// A 422 unless every text is at most `max` bytes long.
pub fn texts_at_most<'a>(
    field: &'static str,
    texts: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Result<(), ApiError> {
    texts
        .into_iter()
        .enumerate()
        .try_for_each(|(i, text)| text_at_most(field, i, text, max))
}

/// A 422 unless text `index` of `field` is at most `max` bytes long.
pub fn text_at_most(
    field: &'static str,
    index: usize,
    text: &str,
    max: usize,
) -> Result<(), ApiError> {
    if text.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("text {index} has {} bytes; at most {max}", text.len()),
        ));
    }
    Ok(())
}

/// A 422 unless `stop` holds at most [`MAX_STOP_STRINGS`] strings of at most
/// [`MAX_STOP_BYTES`] bytes.
pub fn stop_strings(stop: &[String]) -> Result<(), ApiError> {
    at_most("stop", "strings", stop.len(), MAX_STOP_STRINGS)?;
    texts_at_most("stop", stop.iter().map(String::as_str), MAX_STOP_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<(), ApiError>) -> String {
        result.map_or_else(|e| e.to_string(), |()| "ok".to_owned())
    }

    #[test]
    fn caps_name_the_field_and_the_limit() {
        assert_eq!(message(in_range("k", 64, 0, 64)), "ok");
        assert_eq!(
            message(in_range("k", 65, 0, 64)),
            "`k`: 65 is out of range: give 0 to 64"
        );
        assert_eq!(message(at_most("stop", "strings", 4, 4)), "ok");
        assert_eq!(
            message(at_most("stop", "strings", 5, 4)),
            "`stop`: 5 strings given; at most 4"
        );
        assert_eq!(message(texts_at_most("inputs", ["ab", "abc"], 3)), "ok");
        assert_eq!(
            message(texts_at_most("inputs", ["ab", "abcd"], 3)),
            "`inputs`: text 1 has 4 bytes; at most 3"
        );
    }
}
