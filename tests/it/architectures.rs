//! Every supported architecture and weight format against llama.cpp, on tiny
//! random-weight GGUFs made by `scripts/tiny-ggufs.py` (committed with llama.cpp's
//! outputs on them, from llama-cpp-python 0.3.36): the same token ids, and the same
//! logits (f32 weights, f32 keys and values on both sides) whether the prompt runs in
//! one pass or continues a cached part, past Gemma 3's 8-token window; in every format
//! as shipped, the same five most likely next tokens and logits within a stated gap.

use std::path::PathBuf;

use exemplar::config::WeightFormat;
use exemplar::llm::Llm;

use crate::common;

/// f32 arithmetic in another order: a wrong norm, rotation or mask is off by far more.
const LOGIT_TOLERANCE: f32 = 1e-3;

/// Gemma's GELU: llama.cpp's CPU backend looks it up in a table of f16 inputs and
/// outputs (`GGML_GELU_FP16`), a relative error of about 1e-3 per activation (the tiny
/// Gemma's logits differ by 0.002).
const GELU_TOLERANCE: f32 = 1e-2;

/// Weight formats whose products we compute as llama.cpp does, to the rounding of each
/// activation scale (Q4_0 and Q5_0 with 8-bit activations by 32 values, the K-quants
/// by 256): the logits agree to float noise (1e-6 measured).
const SAME_SUMS: [&str; 6] = ["q4_0", "q5_0", "q4_k", "q5_k", "q6_k", "q4_k_m"];

/// The other formats: F16 and BF16 (llama.cpp rounds the activations to those
/// formats; 0.002 and 0.015 measured), and Q8_0, Q4_1 and Q5_1, whose logits land
/// 0.04 to 0.05 from llama.cpp's although its kernels, read, compute what ours do: not
/// explained yet (the embeddings and the output head are not the cause: the same file
/// with those in f32 differs as much).
const FORMAT_TOLERANCE: f32 = 0.1;

fn tolerance(fixture: &str) -> f32 {
    let format = fixture.strip_prefix("formats/");
    if fixture == "gemma3" {
        GELU_TOLERANCE
    } else if format.is_some_and(|f| !SAME_SUMS.contains(&f)) {
        FORMAT_TOLERANCE
    } else {
        LOGIT_TOLERANCE
    }
}

fn tiny(fixture: &str) -> (PathBuf, Vec<serde_json::Value>) {
    let dir = common::fixtures_dir().join("tiny");
    (
        dir.join(format!("{fixture}.gguf")),
        common::read_jsonl(dir.join(format!("{fixture}.jsonl"))),
    )
}

/// The ids of the `k` largest logits, largest first.
fn top(logits: &[f32], k: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    ids.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    ids.truncate(k);
    ids
}

/// Asserts that our `k` most likely next tokens are llama.cpp's, up to near ties: each
/// of ours scores, in llama.cpp's logits, at least llama.cpp's `k`-th best less
/// `tolerance` (random tiny models have logits closer than the formats' rounding).
fn assert_same_top(fixture: &str, ours: &[f32], theirs: &[f32], k: usize, tolerance: f32) {
    let kth = theirs[top(theirs, k)[k - 1]];
    for id in top(ours, k) {
        assert!(
            theirs[id] >= kth - tolerance,
            "{fixture}: token {id} is in our top {k} (logit {}) but scores {} in llama.cpp's, \
             whose top {k} ends at {kth}",
            ours[id],
            theirs[id]
        );
    }
}

fn largest_difference(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "vocabulary sizes");
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn agrees_with_llama_cpp(fixture: &str) {
    let (gguf, rows) = tiny(fixture);
    let llm = Llm::load(&gguf, &common::device(), WeightFormat::AsShipped).expect("model loads");
    let tokenizer = llm.tokenizer();
    let mut prompts = 0;
    for row in &rows {
        if let Some(text) = row["text"].as_str() {
            assert_eq!(
                tokenizer.encode(text).expect("encodes"),
                common::ids(&row["ids"]),
                "{fixture}: ids of {text:?}"
            );
            continue;
        }
        let prompt = row["prompt"].as_str().expect("prompt");
        let prompt_ids = tokenizer.encode_prompt(prompt).expect("encodes");
        assert_eq!(
            prompt_ids,
            common::ids(&row["prompt_ids"]),
            "{fixture}: prompt ids"
        );
        let reference = common::floats(&row["logits"]);

        let whole = llm.session().feed(&prompt_ids).expect("forward");
        let gap = largest_difference(&whole, &reference);
        assert!(gap < tolerance(fixture), "{fixture}: logits off by {gap}");
        assert_same_top(fixture, &whole, &reference, 1, tolerance(fixture));
        assert_same_top(fixture, &whole, &reference, 5, tolerance(fixture));

        // The same prompt continuing a cached first part, then token by token.
        let mut session = llm.session();
        let split = prompt_ids.len() / 2;
        session.feed(&prompt_ids[..split]).expect("first part");
        session
            .feed(&prompt_ids[split..prompt_ids.len() - 1])
            .expect("second part");
        let last = session
            .feed(&prompt_ids[prompt_ids.len() - 1..])
            .expect("last token");
        let cached_gap = largest_difference(&last, &reference);
        assert!(
            cached_gap < tolerance(fixture),
            "{fixture}: cached logits off by {cached_gap}"
        );
        eprintln!(
            "{fixture}: {} prompt tokens, largest logit difference to llama.cpp {gap:.6} in one \
             pass, {cached_gap:.6} continuing a cache",
            prompt_ids.len()
        );
        prompts += 1;
    }
    assert!(prompts > 0, "{fixture}: the fixture has prompts");
}

#[test]
fn llama_agrees_with_llama_cpp() {
    agrees_with_llama_cpp("llama");
}

#[test]
fn qwen2_agrees_with_llama_cpp() {
    agrees_with_llama_cpp("qwen2");
}

#[test]
fn qwen3_agrees_with_llama_cpp() {
    agrees_with_llama_cpp("qwen3");
}

#[test]
fn gemma3_agrees_with_llama_cpp() {
    agrees_with_llama_cpp("gemma3");
}

/// Every weight format our kernels read, as shipped (`tiny-ggufs.py`'s one-layer llama
/// with all its matrices in that format; Q4_K_M mixes Q4_K and Q6_K).
#[test]
fn every_weight_format_agrees_with_llama_cpp() {
    for format in [
        "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m",
    ] {
        agrees_with_llama_cpp(&format!("formats/{format}"));
    }
}
