//! Predictions and evaluation over HTTP against a real server with real models.

use crate::common::{metric_sample, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

const POSITIVE: [&str; 6] = [
    "a gorgeous, witty and moving film",
    "I loved every minute of this delightful comedy",
    "the best thriller of the year, tense and smart",
    "a warm, funny and beautifully shot film",
    "an unforgettable masterpiece with superb acting",
    "charming, clever and full of heart",
];
const NEGATIVE: [&str; 6] = [
    "the acting was wooden and the plot made no sense",
    "a tedious, overlong mess",
    "dull characters and a boring story",
    "I want those two hours of my life back",
    "a lazy, cynical and unfunny sequel",
    "painfully slow and utterly forgettable",
];

async fn sentiment_task(server: &TestServer) {
    let task = json!({
        "labels": ["negative", "positive"],
        "instruction": "Classify the sentiment of each movie review.",
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let (status, body) = server.call(Method::PUT, "/v1/tasks/sst2", Some(task)).await;
    assert_eq!(status, 201, "{body}");
    let mut examples = Vec::new();
    for (i, text) in POSITIVE.iter().enumerate() {
        examples.push(json!({"id": format!("pos{i}"), "text": text, "label": "positive"}));
    }
    for (i, text) in NEGATIVE.iter().enumerate() {
        examples.push(json!({"id": format!("neg{i}"), "text": text, "label": "negative"}));
    }
    let (status, body) = server
        .post("/v1/tasks/sst2/examples", json!({"examples": examples}))
        .await;
    assert_eq!(status, 201, "{body}");
}

fn similarities(prediction: &Value) -> Vec<f64> {
    prediction["demonstrations"]
        .as_array()
        .expect("demonstrations")
        .iter()
        .map(|d| d["similarity"].as_f64().expect("similarity"))
        .collect()
}

fn probability_sum(prediction: &Value) -> f64 {
    prediction["probabilities"]
        .as_object()
        .expect("probabilities")
        .values()
        .map(|v| v.as_f64().expect("number"))
        .sum()
}

#[tokio::test]
async fn predictions_evaluation_and_their_errors() {
    let server = TestServer::start(&[]).await;
    sentiment_task(&server).await;

    // kNN with the nearest demonstration last, next to the query.
    let inputs = json!([
        {"text": "a witty, moving and gorgeous picture"},
        {"text": "a boring, tedious waste of time"}
    ]);
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/predict",
            json!({"inputs": inputs, "k": 4, "return_prompt": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let predictions = body["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 2);
    assert_eq!(predictions[0]["label"], "positive", "{body}");
    assert_eq!(predictions[1]["label"], "negative", "{body}");
    for prediction in predictions {
        assert!((probability_sum(prediction) - 1.0).abs() < 1e-6);
        let sims = similarities(prediction);
        assert_eq!(sims.len(), 4);
        assert!(
            sims.windows(2).all(|w| w[0] <= w[1]),
            "nearest last: {sims:?}"
        );
        let prompt = prediction["prompt"].as_str().expect("prompt");
        assert!(prompt.starts_with("Classify the sentiment"), "{prompt}");
        assert!(prompt.ends_with("\nSentiment:"), "{prompt}");
        assert!(prediction["prompt_tokens"].as_u64().expect("tokens") > 20);
    }
    let nearest = &predictions[0]["demonstrations"][3]["id"];
    assert_eq!(nearest, "pos0", "the near-duplicate sits next to the query");
    let metrics = server.metrics().await;
    let prompt_tokens: u64 = predictions
        .iter()
        .map(|p| p["prompt_tokens"].as_u64().expect("tokens"))
        .sum();
    assert_eq!(
        metric_sample(&metrics, "exemplar_predictions_total", &[]),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric_sample(&metrics, "exemplar_prediction_prompt_tokens_total", &[]),
        Some(prompt_tokens as f64),
        "{metrics}"
    );
    // Two prompts, two prefix lookups; short prompts share no whole 64-token chunk.
    let lookups = |outcome: &str| {
        metric_sample(
            &metrics,
            "exemplar_prefix_cache_lookups_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(lookups("hit") + lookups("miss"), 2.0, "{metrics}");
    assert!(
        metric_sample(
            &metrics,
            "exemplar_prefix_cache_tokens_total",
            &["kind=\"asked\""]
        )
        .is_some_and(|asked| asked > 0.0),
        "{metrics}"
    );

    // Nearest first reverses the order; fixed ids are used as given.
    let (_, body) = server
        .post(
            "/v1/tasks/sst2/predict",
            json!({"inputs": [{"text": "great fun"}], "k": 4, "order": "nearest_first"}),
        )
        .await;
    let sims = similarities(&body["predictions"][0]);
    assert!(
        sims.windows(2).all(|w| w[0] >= w[1]),
        "nearest first: {sims:?}"
    );
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/predict",
            json!({"inputs": [{"text": "great fun"}], "strategy": "fixed", "ids": ["neg1", "pos2"], "order": "nearest_first"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["predictions"][0]["demonstrations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|d| d["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["neg1", "pos2"]);

    // Zero-shot, mmr and random strategies; calibration changes the probabilities.
    for options in [
        json!({"k": 0}),
        json!({"k": 4, "strategy": "mmr"}),
        json!({"k": 4, "strategy": "random", "seed": 3}),
    ] {
        let mut request = options.clone();
        request["inputs"] = json!([{"text": "a delight"}]);
        let (status, body) = server.post("/v1/tasks/sst2/predict", request).await;
        assert_eq!(status, 200, "{options}: {body}");
        let expected = options["k"].as_u64().expect("k") as usize;
        assert_eq!(similarities(&body["predictions"][0]).len(), expected);
    }
    let request = |calibrate: bool| json!({"inputs": [{"text": "it is a film"}], "k": 4, "strategy": "random", "seed": 5, "calibrate": calibrate});
    let (_, plain) = server.post("/v1/tasks/sst2/predict", request(false)).await;
    let (status, calibrated) = server.post("/v1/tasks/sst2/predict", request(true)).await;
    assert_eq!(status, 200, "{calibrated}");
    let p = |b: &Value| {
        b["predictions"][0]["probabilities"]["positive"]
            .as_f64()
            .expect("p")
    };
    assert!(
        (p(&plain) - p(&calibrated)).abs() > 1e-6,
        "calibration moves the probabilities"
    );
    assert!((probability_sum(&calibrated["predictions"][0]) - 1.0).abs() < 1e-6);
    let (_, again) = server.post("/v1/tasks/sst2/predict", request(true)).await;
    assert_eq!(
        p(&again),
        p(&calibrated),
        "cached content-free scores give the same answer"
    );

    // A tight token budget drops the least similar demonstrations first.
    let (status, body) = server
        .post("/v1/tasks/sst2/predict", json!({"inputs": [{"text": "a witty, moving and gorgeous picture"}], "k": 8, "max_prompt_tokens": 80}))
        .await;
    assert_eq!(status, 200, "{body}");
    let kept = body["predictions"][0]["demonstrations"]
        .as_array()
        .expect("list");
    assert!(!kept.is_empty() && kept.len() < 8, "{body}");
    assert_eq!(kept.last().expect("one")["id"], "pos0");
    assert!(
        body["predictions"][0]["prompt_tokens"]
            .as_u64()
            .expect("tokens")
            <= 80
    );

    // Evaluation on labelled data and leave-one-out over the task's own examples.
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/evaluate",
            json!({"examples": [
                {"text": "a joyous triumph", "label": "positive"},
                {"text": "an awful, boring film", "label": "negative"},
                {"text": "smart and funny", "label": "positive"}
            ], "k": 4}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["n"], 3);
    let confusion_total: u64 = body["confusion"]
        .as_array()
        .expect("matrix")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_u64().expect("count"))
        })
        .sum();
    assert_eq!(confusion_total, 3);
    assert!(
        body["accuracy"].as_f64().expect("accuracy") >= 2.0 / 3.0,
        "{body}"
    );
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/evaluate",
            json!({"leave_one_out": true, "k": 4}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["n"], 12);
    assert_eq!(body["per_label"].as_array().map(Vec::len), Some(2));

    // A task without labels generates its answer.
    let task =
        json!({"template": {"input": "Q: {text}", "output": "A: {label}"}, "separator": "\n"});
    let (status, _) = server
        .call(Method::PUT, "/v1/tasks/capitals", Some(task))
        .await;
    assert_eq!(status, 201);
    let examples = json!({"examples": [
        {"text": "capital of Germany?", "label": "Berlin"},
        {"text": "capital of Italy?", "label": "Rome"}
    ]});
    let (status, _) = server.post("/v1/tasks/capitals/examples", examples).await;
    assert_eq!(status, 201);
    let (status, body) = server
        .post(
            "/v1/tasks/capitals/predict",
            json!({"inputs": [{"text": "capital of France?"}], "k": 2, "max_new_tokens": 5}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][0]["output"], "Paris", "{body}");
    assert!(body["predictions"][0].get("label").is_none());

    // Bad input: each a clear 4xx.
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/tasks/empty",
            Some(
                json!({"labels": ["a", "b"], "template": {"input": "{text}", "output": "{label}"}}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    let (_, info) = server.get("/v1/info").await;
    let context = info["model"]["context_length"]
        .as_u64()
        .expect("context length") as usize;
    let long_text = "word ".repeat(context + 100);
    let cases = [
        (
            "/v1/tasks/nope/predict",
            json!({"inputs": [{"text": "x"}]}),
            404,
            "task_not_found",
        ),
        (
            "/v1/tasks/empty/predict",
            json!({"inputs": [{"text": "x"}], "k": 4}),
            422,
            "no_examples",
        ),
        (
            "/v1/tasks/sst2/predict",
            json!({"inputs": [{"text": "x"}], "k": 101}),
            422,
            "invalid_value",
        ),
        (
            "/v1/tasks/sst2/predict",
            json!({"inputs": [{"text": long_text}], "k": 2}),
            422,
            "context_length_exceeded",
        ),
        (
            "/v1/tasks/capitals/predict",
            json!({"inputs": [{"text": "x"}], "calibrate": true}),
            422,
            "invalid_value",
        ),
        (
            "/v1/tasks/sst2/predict",
            json!({"inputs": [{"text": "x"}], "strategy": "fixed", "ids": ["missing"]}),
            422,
            "invalid_value",
        ),
        (
            "/v1/tasks/sst2/predict",
            json!({"inputs": [{"text": "x"}], "strategy": "fixed"}),
            422,
            "invalid_value",
        ),
        (
            "/v1/tasks/sst2/predict",
            json!({"inputs": []}),
            422,
            "invalid_value",
        ),
        (
            "/v1/tasks/sst2/predict",
            json!({"inputs": [{"text": " "}]}),
            422,
            "invalid_value",
        ),
        (
            "/v1/tasks/sst2/predict",
            json!({"inputs": [{"text": "x"}], "order": "sideways"}),
            422,
            "invalid_body",
        ),
        (
            "/v1/tasks/sst2/evaluate",
            json!({"examples": [{"text": "x", "label": "meh"}]}),
            422,
            "invalid_value",
        ),
        (
            "/v1/tasks/capitals/evaluate",
            json!({"examples": [{"text": "x", "label": "y"}]}),
            422,
            "invalid_value",
        ),
    ];
    for (path, request, expected_status, expected_code) in cases {
        let (status, body) = server.post(path, request.clone()).await;
        assert_eq!(
            (status, code(&body)),
            (expected_status, expected_code),
            "{path} {request}: {body}"
        );
    }
}
