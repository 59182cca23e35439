//! Label scoring from a shared prefix equals scoring each label with its own full
//! forward passes.
//!
//! The shared-prefix path packs every query and every label's tokens into one forward
//! step with a tree attention mask; the full passes run one causal sequence each. With
//! f32 weights the two agree to 1e-4 in log-probability. With Q8_0 weights the
//! activations are quantized to 8 bits per layer, so the ~1e-7 float differences of
//! attention summed over a differently shaped step can move a value across a rounding
//! boundary; the flips add up over 30 layers to ~0.015 in label probability (measured),
//! so there the test holds probabilities to 0.05 and prints the gaps.

use crate::common;

use candle_core::Device;
use exemplar::config::WeightFormat;
use exemplar::llm::{log_softmax, Llm, PrefixCache, ScoreRequest};
use exemplar::predict::calibration::probabilities;

/// log P(continuation | context), one fresh full forward pass per continuation token.
fn full_pass_score(llm: &Llm, context: &[u32], continuation: &[u32]) -> f32 {
    let mut total = 0f32;
    for i in 0..continuation.len() {
        let mut tokens = context.to_vec();
        tokens.extend(&continuation[..i]);
        let logits = llm.session().feed(&tokens).expect("forward");
        total += log_softmax(&logits)[continuation[i] as usize];
    }
    total
}

#[test]
fn shared_prefix_scores_equal_full_forward_passes_with_f32_weights() {
    let gap = compare(WeightFormat::F32);
    assert!(gap < 1e-4, "log-probability gap {gap}");
}

#[test]
fn shared_prefix_probabilities_equal_full_forward_passes_with_q8_weights() {
    compare(WeightFormat::Q8_0);
}

/// The largest label-probability gap `compare` allows for a weight format.
fn probability_tolerance(format: WeightFormat) -> f64 {
    match format {
        WeightFormat::F32 => 1e-4,
        _ => 0.05,
    }
}

#[test]
fn packed_sequences_of_different_lengths_equal_one_sequence_runs_with_f32_weights() {
    let llm = Llm::load(&common::gguf_path(), &Device::Cpu, WeightFormat::F32).expect("model");
    let tokenizer = llm.tokenizer();
    let encode = |s: &str| tokenizer.encode(s).expect("encodes");
    // No shared prefix: three whole sequences in one step, each with its own
    // positions from 0 and a mask that keeps it to its own past.
    let sequences: Vec<Vec<u32>> = [
        "Review: dull.\nSentiment:",
        "Review: a warm, funny and beautifully shot film about a family.\nSentiment:",
        "The capital of France is",
    ]
    .iter()
    .map(|s| encode(s))
    .collect();
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    assert!(lengths[0] != lengths[1] && lengths[1] != lengths[2]);
    let continuations = vec![
        encode(" negative"),
        encode(" Paris"),
        encode(" very positive"),
    ];
    let packed = llm
        .score_packed(&ScoreRequest {
            prefix: Vec::new(),
            queries: sequences.clone(),
            continuations: continuations.clone(),
            blocks: Vec::new(),
        })
        .expect("scores");
    let mut largest = 0f32;
    for (q, sequence) in sequences.iter().enumerate() {
        for (c, continuation) in continuations.iter().enumerate() {
            let alone = full_pass_score(&llm, sequence, continuation);
            largest = largest.max((packed[q][c] - alone).abs());
        }
    }
    eprintln!("packed vs one-sequence runs (f32): largest log-probability gap {largest:.2e}");
    assert!(largest < 1e-4, "log-probability gap {largest}");
}

/// Three sessions that have seen prompts of different lengths, each continued by a
/// different number of tokens, all in one packed pass: every session's logits as when
/// it runs alone. Each reads and writes its own keys and values, so a second batched
/// step continues each one correctly too.
fn batched_sessions_gap(format: WeightFormat) -> f32 {
    let llm = Llm::load(&common::gguf_path(), &Device::Cpu, format).expect("model");
    let tokenizer = llm.tokenizer();
    let encode = |s: &str| tokenizer.encode(s).expect("encodes");
    let prompts = [
        "Review: dull.\nSentiment:",
        "Review: a warm, funny and beautifully shot film about a family.\nSentiment:",
        "The capital of France is",
    ];
    let steps = [
        [encode(" negative"), encode("\n")],
        [encode(" very positive indeed"), encode(".")],
        [encode(" Paris"), encode(", and the capital of Spain is")],
    ];
    let start = |prompt: &str| {
        let mut session = llm.session();
        session.feed(&encode(prompt)).expect("runs");
        session
    };
    let mut batched: Vec<_> = prompts.iter().map(|p| start(p)).collect();
    let mut alone: Vec<_> = prompts.iter().map(|p| start(p)).collect();
    let mut largest = 0f32;
    for round in 0..2 {
        let mut batch: Vec<(&mut exemplar::llm::Session, &[u32])> = batched
            .iter_mut()
            .zip(&steps)
            .map(|(session, steps)| (session, steps[round].as_slice()))
            .collect();
        let together = llm.feed_batch(&mut batch).expect("runs");
        for ((session, steps), logits) in alone.iter_mut().zip(&steps).zip(&together) {
            let own = session.feed(&steps[round]).expect("runs");
            largest = own
                .iter()
                .zip(logits)
                .map(|(a, b)| (a - b).abs())
                .fold(largest, f32::max);
        }
    }
    largest
}

#[test]
fn sessions_with_their_own_caches_batched_equal_one_sequence_runs_with_f32_weights() {
    let gap = batched_sessions_gap(WeightFormat::F32);
    eprintln!("batched vs alone (f32): largest logit gap {gap:.2e}");
    assert!(gap < 1e-4, "logit gap {gap}");
}

/// With the integer kernels every token's row is computed alone, so batching changes
/// nothing at all: the scheduler relies on it for answers that do not depend on what
/// else was running.
#[test]
fn sessions_batched_with_q8_weights_give_their_own_logits_bit_for_bit() {
    assert_eq!(batched_sessions_gap(WeightFormat::Q8_0), 0.0);
}

#[test]
fn a_remembered_prefix_scores_exactly_as_a_fresh_pass() {
    let llm = Llm::load(&common::gguf_path(), &Device::Cpu, WeightFormat::Q8_0).expect("model");
    let tokenizer = llm.tokenizer();
    let encode = |s: &str| tokenizer.encode(s).expect("encodes");
    let request = |prefix: &str| ScoreRequest {
        prefix: encode(prefix),
        queries: vec![encode("\n\nReview: two dull hours.\nSentiment:")],
        continuations: vec![encode(" negative"), encode(" positive")],
        blocks: Vec::new(),
    };
    let praise = request("Review: a joy from start to end.\nSentiment: positive");
    let scorn = request("Review: a joy from start to end.\nSentiment: negative");

    let mut cache = PrefixCache::default();
    let first = llm.score_cached(&praise, &mut cache).expect("scores");
    let again = llm.score_cached(&praise, &mut cache).expect("scores");
    assert_eq!(cache.hits(), 1, "the second request reuses the prefix");
    assert_eq!(again, first);
    assert_eq!(first, llm.score(&praise).expect("scores"));

    // A different prefix is run afresh, not answered from the remembered one.
    let other = llm.score_cached(&scorn, &mut cache).expect("scores");
    assert_eq!(cache.hits(), 1);
    assert_eq!(other, llm.score(&scorn).expect("scores"));
    assert_ne!(other, first);
}

#[test]
fn a_shared_run_of_whole_chunks_is_reused_and_scores_exactly_as_a_fresh_pass() {
    let llm = Llm::load(&common::gguf_path(), &Device::Cpu, WeightFormat::Q8_0).expect("model");
    let tokenizer = llm.tokenizer();
    let encode = |s: &str| tokenizer.encode(s).expect("encodes");
    let demonstrations: String =
        common::read_jsonl(common::shared_dir().join("data/sst2/train.jsonl"))[..8]
            .iter()
            .map(|row| {
                format!(
                    "Review: {}\nSentiment: {}\n\n",
                    row["text"].as_str().unwrap_or(""),
                    row["label"].as_str().unwrap_or("")
                )
            })
            .collect();
    let request = |last: &str| ScoreRequest {
        prefix: encode(&format!("{demonstrations}{last}")),
        queries: vec![encode("\n\nReview: two dull hours.\nSentiment:")],
        continuations: vec![encode(" negative"), encode(" positive")],
        blocks: Vec::new(),
    };
    let first = request("Review: a joy from start to end.\nSentiment: positive");
    let second = request("Review: a bore.\nSentiment: negative");
    let shared = first
        .prefix
        .iter()
        .zip(&second.prefix)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        shared >= 64,
        "the prompts share a whole chunk ({shared} tokens)"
    );

    let mut cache = PrefixCache::default();
    llm.score_cached(&first, &mut cache).expect("scores");
    let continued = llm.score_cached(&second, &mut cache).expect("scores");
    assert_eq!(
        cache.hits(),
        1,
        "the second prompt reuses the first one's chunks"
    );
    assert_eq!(
        continued,
        llm.score(&second).expect("scores"),
        "bit for bit"
    );
}

/// Checks label probabilities and answers the largest log-probability gap.
fn compare(format: WeightFormat) -> f32 {
    let llm = Llm::load(&common::gguf_path(), &Device::Cpu, format).expect("model");
    let tokenizer = llm.tokenizer();
    let encode = |s: &str| tokenizer.encode(s).expect("encodes");
    let prefix_text = "Review: the acting was wooden and the plot made no sense.\nSentiment: negative\n\nReview: a warm, funny and beautifully shot film.\nSentiment: positive";
    let queries_text = [
        "\n\nReview: I want those two hours of my life back.\nSentiment:",
        "\n\nReview: a quiet triumph.\nSentiment:",
    ];
    let labels = [
        " negative",
        " positive",
        " very positive",
        " very negative",
        " not_entailment",
    ];
    let continuations: Vec<Vec<u32>> = labels.iter().map(|l| encode(l)).collect();
    assert!(
        continuations.iter().any(|c| c.len() >= 3),
        "multi-token labels are covered"
    );

    let prefix = encode(prefix_text);
    let queries: Vec<Vec<u32>> = queries_text.iter().map(|q| encode(q)).collect();
    // The parts tokenize as the whole does, so the prefix cache is exact.
    for (q, ids) in queries_text.iter().zip(&queries) {
        let whole = encode(&format!("{prefix_text}{q}"));
        assert_eq!(whole, [prefix.clone(), ids.clone()].concat());
    }

    let shared = llm
        .score(&ScoreRequest {
            prefix: prefix.clone(),
            queries: queries.clone(),
            continuations: continuations.clone(),
            blocks: Vec::new(),
        })
        .expect("scores");
    let mut largest_logprob_gap = 0f32;
    let mut largest_probability_gap = 0f64;
    for (q, query) in queries.iter().enumerate() {
        let context = [prefix.clone(), query.clone()].concat();
        let full: Vec<f32> = continuations
            .iter()
            .map(|continuation| full_pass_score(&llm, &context, continuation))
            .collect();
        let shared_p = probabilities(&shared[q]);
        let full_p = probabilities(&full);
        for c in 0..labels.len() {
            largest_logprob_gap = largest_logprob_gap.max((shared[q][c] - full[c]).abs());
            let gap = (shared_p[c] - full_p[c]).abs();
            largest_probability_gap = largest_probability_gap.max(gap);
            assert!(
                gap < probability_tolerance(format),
                "{:?} after query {q}: shared p {} vs full p {}",
                labels[c],
                shared_p[c],
                full_p[c]
            );
        }
        // Scoring a query alone gives exactly what scoring it beside another gives.
        let alone = llm
            .score(&ScoreRequest {
                prefix: prefix.clone(),
                queries: vec![query.clone()],
                continuations: continuations.clone(),
                blocks: Vec::new(),
            })
            .expect("scores");
        assert_eq!(
            alone[0], shared[q],
            "bit for bit: each query runs in its own step"
        );
    }
    // Without a prefix, the whole prompt as the query gives the same answer.
    let unsplit = llm
        .score(&ScoreRequest {
            prefix: Vec::new(),
            queries: vec![[prefix.clone(), queries[0].clone()].concat()],
            continuations: continuations.clone(),
            blocks: Vec::new(),
        })
        .expect("scores");
    for (a, b) in probabilities(&unsplit[0])
        .iter()
        .zip(probabilities(&shared[0]))
    {
        assert!((a - b).abs() < probability_tolerance(format), "{a} vs {b}");
    }
    eprintln!(
        "{format:?}: shared prefix vs full passes: largest probability gap \
         {largest_probability_gap:.2e}, largest log-probability gap {largest_logprob_gap:.2e}"
    );
    largest_logprob_gap
}
