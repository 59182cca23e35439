//! Every supported architecture against llama.cpp, on tiny random-weight GGUFs made by
//! `scripts/tiny-ggufs.py` (committed with llama.cpp's outputs on them, from
//! llama-cpp-python 0.3.36): the same token ids, and the same logits (f32 weights, f32
//! keys and values on both sides) whether the prompt runs in one pass or continues a
//! cached part, past Gemma 3's 8-token window.

use std::path::PathBuf;

use candle_core::Device;
use exemplar::config::WeightFormat;
use exemplar::llm::Llm;

use crate::common;

/// f32 arithmetic in another order: a wrong norm, rotation or mask is off by far more.
const LOGIT_TOLERANCE: f32 = 1e-3;

/// Gemma's GELU: llama.cpp's CPU backend looks it up in a table of f16 inputs and
/// outputs (`GGML_GELU_FP16`), a relative error of about 1e-3 per activation (the tiny
/// Gemma's logits differ by 0.002).
const GELU_TOLERANCE: f32 = 1e-2;

fn tolerance(arch: &str) -> f32 {
    if arch == "gemma3" {
        GELU_TOLERANCE
    } else {
        LOGIT_TOLERANCE
    }
}

fn tiny(arch: &str) -> (PathBuf, Vec<serde_json::Value>) {
    let dir = common::fixtures_dir().join("tiny");
    (
        dir.join(format!("{arch}.gguf")),
        common::read_jsonl(dir.join(format!("{arch}.jsonl"))),
    )
}

fn largest_difference(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "vocabulary sizes");
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn agrees_with_llama_cpp(arch: &str) {
    let (gguf, rows) = tiny(arch);
    let llm = Llm::load(&gguf, &Device::Cpu, WeightFormat::AsShipped).expect("model loads");
    let tokenizer = llm.tokenizer();
    let mut prompts = 0;
    for row in &rows {
        if let Some(text) = row["text"].as_str() {
            assert_eq!(
                tokenizer.encode(text).expect("encodes"),
                common::ids(&row["ids"]),
                "{arch}: ids of {text:?}"
            );
            continue;
        }
        let prompt = row["prompt"].as_str().expect("prompt");
        let prompt_ids = tokenizer.encode_prompt(prompt).expect("encodes");
        assert_eq!(
            prompt_ids,
            common::ids(&row["prompt_ids"]),
            "{arch}: prompt ids"
        );
        let reference = common::floats(&row["logits"]);

        let whole = llm.session().feed(&prompt_ids).expect("forward");
        let gap = largest_difference(&whole, &reference);
        assert!(gap < tolerance(arch), "{arch}: logits off by {gap}");

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
            cached_gap < tolerance(arch),
            "{arch}: cached logits off by {cached_gap}"
        );
        eprintln!(
            "{arch}: {} prompt tokens, largest logit difference to llama.cpp {gap:.6} in one \
             pass, {cached_gap:.6} continuing a cache",
            prompt_ids.len()
        );
        prompts += 1;
    }
    assert!(prompts > 0, "{arch}: the fixture has prompts");
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
