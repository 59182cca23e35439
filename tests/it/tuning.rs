//! Tuning a task and its defaults, over HTTP on a real server: the tune job measures its
//! grid by leave-one-out (each row of its table equal to a leave-one-out evaluation with
//! the same options), stores the winner as the task's defaults, and requests that leave
//! options out then use them; batch calibration and cached demonstrations as options;
//! the errors of each.

use crate::common;

use std::time::Duration;

use crate::common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

fn examples(n: usize) -> Vec<Value> {
    common::read_jsonl(common::shared_dir().join("data/sst2/train.jsonl"))[..n]
        .iter()
        .enumerate()
        .map(|(i, row)| json!({"id": format!("e{i:02}"), "text": row["text"], "label": row["label"]}))
        .collect()
}

async fn predictions_total(server: &TestServer) -> f64 {
    common::metric_sample(&server.metrics().await, "exemplar_predictions_total", &[]).unwrap_or(0.0)
}

fn probabilities(value: &Value, label: &str) -> f64 {
    value[label].as_f64().expect("a probability")
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn tuning_measures_its_grid_and_stores_the_winner_as_the_tasks_defaults() {
    let server = TestServer::start(&[]).await;
    server.sentiment_task("sst2", json!(examples(20))).await;

    let grid = json!({
        "max_examples": 20,
        "k": [2, 4],
        "strategy": ["knn"],
        "calibration": ["none", "batch"],
        "vote_weight": [0.0, 0.5, 1.0]
    });
    let (status, job) = server.post("/v1/tasks/sst2/tune", grid).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["state"], "running");
    // Two LLM runs (k 2 and 4) over 20 rows; batch calibration needs no run of its own.
    assert_eq!(job["progress"]["of"], 40);
    let id = job["id"].as_str().expect("an id").to_owned();

    let path = format!("/v1/tasks/sst2/tunings/{id}");
    let job = server
        .poll_until(&path, |job| job["state"] != "running")
        .await;
    assert_eq!(job["state"], "complete", "{job}");
    assert_eq!(job["progress"]["done"], 40);
    let result = &job["result"];
    assert_eq!(result["examples"], 20);
    let table = result["table"].as_array().expect("a table");
    // 2 runs x 2 calibrations x 3 weights.
    assert_eq!(table.len(), 12);
    let accuracies: Vec<f64> = table
        .iter()
        .map(|row| row["accuracy"].as_f64().expect("accuracy"))
        .collect();
    assert!(accuracies.windows(2).all(|w| w[0] >= w[1]), "best first");
    assert_eq!(result["best"], table[0]);

    // A row of the table is the leave-one-out evaluation with the same options (the 20
    // rows are every annotated example, so the evaluation leaves out the same ones).
    for row in table {
        if row["calibration"] != "none" || row["vote_weight"] != 0.5 {
            continue;
        }
        let (status, evaluation) = server
            .post(
                "/v1/tasks/sst2/evaluate",
                json!({
                    "leave_one_out": true,
                    "k": row["k"],
                    "strategy": "knn",
                    "calibration": "none",
                    "vote_weight": row["vote_weight"]
                }),
            )
            .await;
        assert_eq!(status, 200, "{evaluation}");
        assert_eq!(evaluation["accuracy"], row["accuracy"], "{row}");
    }

    // The winner is the task's defaults now.
    let best = &result["best"];
    let defaults = &result["defaults"];
    for field in [
        "k",
        "strategy",
        "order",
        "calibration",
        "vote_weight",
        "cached_demonstrations",
    ] {
        assert_eq!(defaults[field], best[field], "{field}");
    }
    assert_eq!(
        defaults["label_prior"].is_array(),
        best["calibration"] == "batch",
        "{defaults}"
    );
    let (status, task) = server.get("/v1/tasks/sst2").await;
    assert_eq!(status, 200);
    assert_eq!(&task["defaults"], defaults);
    let (status, tunings) = server.get("/v1/tasks/sst2/tunings").await;
    assert_eq!(status, 200);
    assert_eq!(tunings["tunings"][0]["id"], id.as_str());

    // A request that leaves the options out gets the task's; one that gives them, its own.
    let input = json!([{"text": "a warm, funny and moving film"}]);
    let (status, body) = server
        .post("/v1/tasks/sst2/predict", json!({"inputs": input}))
        .await;
    assert_eq!(status, 200, "{body}");
    let prediction = &body["predictions"][0];
    assert_eq!(
        prediction["demonstrations"].as_array().map(Vec::len),
        best["k"].as_u64().map(|k| k as usize)
    );
    let weight = best["vote_weight"].as_f64().expect("a weight");
    for label in ["negative", "positive"] {
        let mixed = (1.0 - weight) * probabilities(&prediction["llm_probabilities"], label)
            + weight * probabilities(&prediction["vote_probabilities"], label);
        let answered = probabilities(&prediction["probabilities"], label);
        assert!((mixed - answered).abs() < 1e-9, "{prediction}");
    }
    let (status, body) = server
        .post("/v1/tasks/sst2/predict", json!({"inputs": input, "k": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["predictions"][0]["demonstrations"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn batch_calibration_and_cached_demonstrations_are_options_with_clear_errors() {
    let server = TestServer::start(&[]).await;
    server.sentiment_task("sst2", json!(examples(12))).await;
    let input = json!([{"text": "a dull, lifeless film"}]);
    let predict = |body: Value| {
        let server = &server;
        async move { server.post("/v1/tasks/sst2/predict", body).await }
    };

    // Batch calibration needs the task's label prior, which tuning (or the task's
    // definition) gives.
    let (status, body) = predict(json!({"inputs": input, "calibration": "batch"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_value");
    let (status, body) =
        predict(json!({"inputs": input, "calibrate": true, "calibration": "none"})).await;
    assert_eq!(status, 422, "{body}");
    let task = |defaults: Value| {
        json!({
            "labels": ["negative", "positive"],
            "template": {"input": "Review: {text}", "output": "Sentiment: {label}"},
            "defaults": defaults
        })
    };
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/tasks/sst2",
            Some(task(json!({"calibration": "batch"}))),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_task");
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/tasks/sst2",
            Some(task(
                json!({"calibration": "batch", "label_prior": [0.8, 0.2], "k": 4}),
            )),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = predict(json!({"inputs": input, "vote_weight": 0})).await;
    assert_eq!(status, 200, "{body}");
    let prediction = &body["predictions"][0];
    assert_eq!(
        prediction["demonstrations"].as_array().map(Vec::len),
        Some(4)
    );
    // Divided by the prior (0.8, 0.2) and renormalised.
    let (status, plain) = predict(json!({
        "inputs": input, "vote_weight": 0, "calibration": "none"
    }))
    .await;
    assert_eq!(status, 200, "{plain}");
    let raw = &plain["predictions"][0]["probabilities"];
    let (negative, positive) = (
        probabilities(raw, "negative") / 0.8,
        probabilities(raw, "positive") / 0.2,
    );
    let expected = positive / (negative + positive);
    let answered = probabilities(&prediction["probabilities"], "positive");
    assert!(
        (expected - answered).abs() < 1e-9,
        "{expected} vs {answered}"
    );

    // Cached demonstrations: one demonstration is the exact prompt (to the rounding of
    // 8-bit activations); a second request takes its blocks from the cache.
    let exact = predict(json!({"inputs": input, "k": 1, "calibration": "none"})).await;
    let cached = predict(json!({
        "inputs": input, "k": 1, "calibration": "none", "cached_demonstrations": true
    }))
    .await;
    assert_eq!((exact.0, cached.0), (200, 200), "{} {}", exact.1, cached.1);
    let (exact, cached) = (&exact.1["predictions"][0], &cached.1["predictions"][0]);
    assert_eq!(exact["label"], cached["label"]);
    assert_eq!(exact["prompt_tokens"], cached["prompt_tokens"]);
    let gap = (probabilities(&exact["probabilities"], "positive")
        - probabilities(&cached["probabilities"], "positive"))
    .abs();
    assert!(gap < 0.05, "cached and exact differ by {gap}");
    let (status, body) = predict(json!({
        "inputs": input, "k": 4, "calibration": "none", "cached_demonstrations": true
    }))
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = predict(json!({
        "inputs": input, "k": 4, "calibration": "none", "cached_demonstrations": true
    }))
    .await;
    assert_eq!(status, 200);
    let metrics = server.metrics().await;
    let lookups = |outcome: &str| {
        common::metric_sample(
            &metrics,
            "exemplar_demonstration_cache_lookups_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
        .unwrap_or(0.0)
    };
    // k = 1, then k = 4 (the nearest example again, but now after a separator: other
    // tokens, another block), then k = 4 again: 5 misses, then 4 hits.
    assert_eq!(lookups("miss"), 5.0, "{metrics}");
    assert_eq!(lookups("hit"), 4.0, "{metrics}");

    // Tuning's errors.
    let (status, body) = server
        .post("/v1/tasks/sst2/tune", json!({"vote_weight": [2.0]}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("vote_weight"));
    let (status, body) = server
        .post("/v1/tasks/sst2/tune", json!({"max_examples": 1}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = server.get("/v1/tasks/sst2/tunings/tune-0").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "tuning_not_found");
    let (status, body) = server.post("/v1/tasks/nope/tune", json!({})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server
        .call(
            Method::PUT,
            "/v1/tasks/chat",
            Some(json!({"template": {"input": "Q: {text}", "output": "A: {label}"}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.post("/v1/tasks/chat/tune", json!({})).await;
    assert_eq!(status, 422, "{body}");

    // A running tuning is cancelled on request and stays so.
    let (status, job) = server.post("/v1/tasks/sst2/tune", json!({})).await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/v1/tasks/sst2/tunings/{}", job["id"].as_str().expect("id"));
    let (status, job) = server.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "cancelled");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, job) = server.get(&path).await;
    assert_eq!(job["state"], "cancelled");
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn a_tuning_killed_mid_run_is_resumed_from_its_last_saved_batch() {
    let server = TestServer::start(&["--job-lease-seconds", "2"]).await;
    server.sentiment_task("sst2", json!(examples(20))).await;
    let grid = json!({
        "max_examples": 20, "k": [2, 4], "strategy": ["knn"],
        "calibration": ["none"], "vote_weight": [0.0, 1.0]
    });
    let (status, job) = server.post("/v1/tasks/sst2/tune", grid).await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/v1/tasks/sst2/tunings/{}", job["id"].as_str().expect("id"));

    // Killed once the first batch of 16 is saved: nothing of the shutdown code runs.
    let saved = server
        .poll_until(&path, |job| job["progress"]["done"].as_u64() >= Some(16))
        .await;
    let server = server.restart().await;
    let done = server
        .poll_until(&path, |job| job["state"] != "running")
        .await;
    assert_eq!(done["state"], "complete", "{done}");
    assert_eq!(done["progress"]["done"], 40, "{done}");
    let resumed = predictions_total(&server).await;
    let unsaved_at_kill = 40.0 - saved["progress"]["done"].as_f64().expect("done");
    assert!(
        resumed <= unsaved_at_kill,
        "not resumed from the saved batch: {resumed} predictions after the restart"
    );
    let (_, task) = server.get("/v1/tasks/sst2").await;
    assert_eq!(task["defaults"], done["result"]["defaults"]);
}
