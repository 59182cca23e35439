//! The demonstrations' vote beside the LLM, over HTTP on a real server: the answer
//! carries both distributions and their mix as asked, and `cover_labels` shows every
//! label of a six-label task among eight demonstrations.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use crate::common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

fn rows(data: &str, n: usize) -> Vec<Value> {
    common::read_jsonl(
        common::shared_dir()
            .join("data")
            .join(data)
            .join("train.jsonl"),
    )[..n]
        .iter()
        .enumerate()
        .map(|(i, row)| json!({"id": format!("e{i}"), "text": row["text"], "label": row["label"]}))
        .collect()
}

fn labels_by_id(examples: &[Value]) -> BTreeMap<String, String> {
    examples
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().expect("a string").to_owned();
            (field("id"), field("label"))
        })
        .collect()
}

fn distribution(value: &Value) -> BTreeMap<String, f64> {
    value
        .as_object()
        .expect("a distribution")
        .iter()
        .map(|(label, p)| (label.clone(), p.as_f64().expect("a probability")))
        .collect()
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn the_vote_and_the_llm_are_mixed_as_asked_and_labels_can_be_covered() {
    let server = TestServer::start(&[]).await;
    let examples = rows("sst2", 24);
    server.sentiment_task("sst2", json!(examples)).await;
    let label_of = labels_by_id(&examples);
    let query = json!([{"text": "a tender, funny and beautifully acted film"}]);

    let mut shares = Vec::new();
    for weight in [0.0, 0.5, 1.0] {
        let (status, body) = server
            .post(
                "/v1/tasks/sst2/predict",
                json!({"inputs": query, "k": 6, "vote_weight": weight}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let prediction = &body["predictions"][0];
        let mixed = distribution(&prediction["probabilities"]);
        let llm = distribution(&prediction["llm_probabilities"]);
        let vote = distribution(&prediction["vote_probabilities"]);
        // The vote: each demonstration's label weighted by its similarity.
        let mut expected: BTreeMap<String, f64> =
            label_of.values().map(|l| (l.clone(), 0.0)).collect();
        for shown in prediction["demonstrations"]
            .as_array()
            .expect("demonstrations")
        {
            let similarity = shown["similarity"].as_f64().expect("similarity").max(0.0);
            *expected
                .get_mut(&label_of[shown["id"].as_str().expect("id")])
                .expect("a task label") += similarity;
        }
        let total: f64 = expected.values().sum();
        for (label, p) in &vote {
            assert!(
                (p - expected[label] / total).abs() < 1e-6,
                "{label}: {vote:?} {expected:?}"
            );
        }
        for (label, p) in &mixed {
            let want = (1.0 - weight) * llm[label] + weight * vote[label];
            assert!((p - want).abs() < 1e-9, "{weight}: {mixed:?}");
        }
        let best = mixed
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(l, _)| l.clone());
        assert_eq!(prediction["label"].as_str(), best.as_deref());
        shares.push(mixed["positive"]);
    }
    assert!(
        shares[0] != shares[2],
        "the LLM and the vote disagree somewhere: {shares:?}"
    );

    // Without the option the answer is the LLM's alone, as before.
    let (_, plain) = server
        .post("/v1/tasks/sst2/predict", json!({"inputs": query, "k": 6}))
        .await;
    assert!(
        plain["predictions"][0].get("vote_probabilities").is_none(),
        "{plain}"
    );
    for bad in [json!(-0.1), json!(1.5)] {
        let (status, body) = server
            .post(
                "/v1/tasks/sst2/predict",
                json!({"inputs": query, "vote_weight": bad}),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["code"], "invalid_value");
    }

    // TREC's six labels among eight demonstrations.
    let task = json!({
        "labels": ["abbreviation", "description", "entity", "human", "location", "number"],
        "template": {"input": "Question: {text}", "output": "Type: {label}"}
    });
    let (status, body) = server.call(Method::PUT, "/v1/tasks/trec", Some(task)).await;
    assert_eq!(status, 201, "{body}");
    let examples = rows("trec", 120);
    let (status, body) = server
        .post("/v1/tasks/trec/examples", json!({ "examples": examples }))
        .await;
    assert_eq!(status, 201, "{body}");
    let label_of = labels_by_id(&examples);
    let shown_labels = |body: &Value| -> BTreeSet<String> {
        body["predictions"][0]["demonstrations"]
            .as_array()
            .expect("demonstrations")
            .iter()
            .map(|d| label_of[d["id"].as_str().expect("id")].clone())
            .collect()
    };
    let query = json!([{"text": "Who wrote the novel Moby Dick ?"}]);
    let (status, nearest) = server
        .post("/v1/tasks/trec/predict", json!({"inputs": query, "k": 8}))
        .await;
    assert_eq!(status, 200, "{nearest}");
    assert!(
        shown_labels(&nearest).len() < 6,
        "kNN alone covers every label: {nearest}"
    );
    let (status, covered) = server
        .post(
            "/v1/tasks/trec/predict",
            json!({"inputs": query, "k": 8, "cover_labels": true}),
        )
        .await;
    assert_eq!(status, 200, "{covered}");
    assert_eq!(shown_labels(&covered).len(), 6, "{covered}");
    assert_eq!(
        covered["predictions"][0]["demonstrations"]
            .as_array()
            .map(Vec::len),
        Some(8)
    );
}
