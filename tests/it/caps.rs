//! Every size a request controls has a cap, answered 422 with the field and the limit
//! named, before any work is done; and invented HTTP methods do not grow the metrics.

use crate::common;

use crate::common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

/// One request past one cap: what is sent, and the field and limit the answer names.
struct Case {
    method: Method,
    path: &'static str,
    body: Value,
    field: &'static str,
    limit: &'static str,
}

fn case(
    method: Method,
    path: &'static str,
    body: Value,
    field: &'static str,
    limit: &'static str,
) -> Case {
    Case {
        method,
        path,
        body,
        field,
        limit,
    }
}

fn texts(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"text": format!("text {i}")}))
        .collect()
}

fn long(bytes: usize) -> String {
    "x".repeat(bytes)
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn every_request_size_has_a_cap_named_in_the_answer() {
    let server = TestServer::start(&[]).await;
    server
        .sentiment_task(
            "films",
            json!([{"id": "good", "text": "a fine film", "label": "positive"}]),
        )
        .await;

    let predict = "/v1/tasks/films/predict";
    let one = || json!([{"text": "a film"}]);
    let spec = |labels: Value, instruction: &str| {
        json!({"labels": labels, "instruction": instruction,
               "template": {"input": "{text}", "output": "{label}"}})
    };
    let labelled: Vec<Value> = (0..2001)
        .map(|i| json!({"text": format!("text {i}"), "label": "positive"}))
        .collect();
    let rows: Vec<Value> = (0..1001)
        .map(|i| json!({"text": format!("text {i}"), "label": "positive"}))
        .collect();
    let cases = [
        case(
            Method::POST,
            predict,
            json!({"inputs": one(), "k": 65}),
            "k",
            "64",
        ),
        case(
            Method::POST,
            predict,
            json!({"inputs": texts(65)}),
            "inputs",
            "64",
        ),
        case(
            Method::POST,
            predict,
            json!({"inputs": [{"text": long(65 * 1024)}]}),
            "inputs",
            "65536",
        ),
        case(
            Method::POST,
            predict,
            json!({"inputs": [{"text": "a", "text_pair": long(65 * 1024)}]}),
            "inputs",
            "65536",
        ),
        case(
            Method::POST,
            predict,
            json!({"inputs": one(), "strategy": "fixed", "ids": vec!["good"; 65]}),
            "ids",
            "64",
        ),
        case(
            Method::POST,
            predict,
            json!({"inputs": one(), "strategy": "fixed", "ids": [long(129)]}),
            "ids",
            "128",
        ),
        case(
            Method::POST,
            predict,
            json!({"inputs": one(), "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
            "4",
        ),
        case(
            Method::POST,
            predict,
            json!({"inputs": one(), "stop": [long(65)]}),
            "stop",
            "64",
        ),
        case(
            Method::POST,
            predict,
            json!({"inputs": one(), "max_new_tokens": 513}),
            "max_new_tokens",
            "512",
        ),
        case(
            Method::POST,
            "/v1/tasks/films/evaluate",
            json!({ "examples": labelled }),
            "examples",
            "2000",
        ),
        case(
            Method::POST,
            "/v1/tasks/films/evaluate",
            json!({"examples": [{"text": long(65 * 1024), "label": "positive"}]}),
            "examples",
            "65536",
        ),
        case(
            Method::POST,
            "/v1/tasks/films/retrieve",
            json!({"text": "a film", "k": 65}),
            "k",
            "64",
        ),
        case(
            Method::POST,
            "/v1/tasks/films/retrieve",
            json!({"text": long(65 * 1024)}),
            "text",
            "65536",
        ),
        case(
            Method::POST,
            "/v1/tasks/films/selections",
            json!({"method": "random", "budget": 10_001}),
            "budget",
            "10000",
        ),
        case(
            Method::POST,
            "/v1/tasks/films/selections",
            json!({"method": "ideal", "budget": 5, "params": {"k": 1001}}),
            "params.k",
            "1000",
        ),
        case(
            Method::POST,
            "/v1/tasks/films/selections",
            json!({"method": "ideal", "budget": 5, "params": {"runs": 101}}),
            "params.runs",
            "100",
        ),
        case(
            Method::POST,
            "/v1/tasks/films/selections",
            json!({"method": "vote-k", "budget": 5, "params": {"stage_one": 6}}),
            "params.stage_one",
            "5",
        ),
        case(
            Method::PUT,
            "/v1/tasks/many",
            spec(
                json!((0..101).map(|i| format!("l{i}")).collect::<Vec<_>>()),
                "",
            ),
            "labels",
            "100",
        ),
        case(
            Method::PUT,
            "/v1/tasks/long",
            spec(json!([long(257)]), ""),
            "labels",
            "256",
        ),
        case(
            Method::PUT,
            "/v1/tasks/wordy",
            spec(json!(["a"]), &long(16 * 1024 + 1)),
            "instruction",
            "16384",
        ),
        case(
            Method::POST,
            "/v1/tasks/films/examples",
            json!({ "examples": rows }),
            "examples",
            "1000",
        ),
        case(
            Method::GET,
            "/v1/tasks/films/examples?limit=1001",
            Value::Null,
            "limit",
            "1000",
        ),
        case(
            Method::POST,
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": 513}),
            "max_tokens",
            "512",
        ),
        case(
            Method::POST,
            "/v1/completions",
            json!({"prompt": long(65 * 1024)}),
            "prompt",
            "65536",
        ),
        case(
            Method::POST,
            "/v1/completions",
            json!({"prompt": "a", "stop": [long(65)]}),
            "stop",
            "64",
        ),
        case(
            Method::POST,
            "/v1/completions",
            json!({"prompt": "a", "logprobs": 21}),
            "logprobs",
            "20",
        ),
        case(
            Method::POST,
            "/v1/tokenize",
            json!({"text": long(65 * 1024)}),
            "text",
            "65536",
        ),
        case(
            Method::POST,
            "/v1/embeddings",
            json!({"input": vec!["a"; 257]}),
            "input",
            "256",
        ),
        case(
            Method::POST,
            "/v1/embeddings",
            json!({"input": [long(65 * 1024)]}),
            "input",
            "65536",
        ),
    ];
    for case in cases {
        let body = (!case.body.is_null()).then_some(case.body);
        let (status, answer) = server.call(case.method.clone(), case.path, body).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            status == 422 && message.contains(case.field) && message.contains(case.limit),
            "{} {} past the `{}` cap: {status} {answer}",
            case.method,
            case.path,
            case.field
        );
    }
    // Nothing past a cap reached the model.
    let metrics = server.metrics().await;
    assert_eq!(
        common::metric_sample(&metrics, "exemplar_predictions_total", &[]).unwrap_or(0.0),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn invented_methods_share_one_metrics_label() {
    let server = TestServer::start(&[]).await;
    for name in ["BREW", "WHEN", "FROB"] {
        let method = Method::from_bytes(name.as_bytes()).expect("a method");
        let response = server
            .client
            .request(method, server.url("/health"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 405);
    }
    let metrics = server.metrics().await;
    assert!(
        !metrics.contains("BREW") && !metrics.contains("FROB"),
        "{metrics}"
    );
    let other = common::metric_sample(
        &metrics,
        "exemplar_requests_total",
        &["method=\"OTHER\"", "route=\"/health\""],
    );
    assert_eq!(other, Some(3.0), "{metrics}");
}
