//! The model endpoints over HTTP against a real server: health, readiness, info,
//! tokenize, embeddings, completions and metrics, and how each treats bad input.

use crate::common::{metric_sample, TestServer};
use serde_json::{json, Value};

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn model_endpoints_answer_and_reject_bad_input() {
    let server = TestServer::start(&["--max-tokens-cap", "64", "--body-limit", "100000"]).await;

    let (status, body) = server.get("/health").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    let (status, info) = server.get("/v1/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["device"], "cpu");
    assert_eq!(info["model"]["weights"], "q8_0");
    assert_eq!(info["embedder"]["dimension"], 384);
    let context = info["model"]["context_length"]
        .as_u64()
        .expect("context length");
    assert!(context >= 2048, "context {context}");

    // Tokenize: the fixture's ids, and special-token text stays plain.
    let (status, body) = server
        .post("/v1/tokenize", json!({"text": "Hello world"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["ids"], json!([19556, 905]));
    assert_eq!(body["tokens"], json!(["Hello", "Ġworld"]));

    // Embeddings: OpenAI shape, unit vectors, one string or a list.
    let (status, body) = server
        .post(
            "/v1/embeddings",
            json!({"input": ["a good film", "a bad film"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["data"][1]["index"], 1);
    let vector: Vec<f64> =
        serde_json::from_value(body["data"][0]["embedding"].clone()).expect("floats");
    assert_eq!(vector.len(), 384);
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    let (status, _) = server
        .post("/v1/embeddings", json!({"input": "one text"}))
        .await;
    assert_eq!(status, 200);

    // Greedy completion: llama.cpp's continuation of the fixture prompt.
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 3}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert!(
        choice["text"]
            .as_str()
            .expect("text")
            .starts_with(" Paris."),
        "{body}"
    );
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(
        choice["logprobs"]["tokens"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(
        choice["logprobs"]["top_logprobs"][0]
            .as_object()
            .map(|m| m.len()),
        Some(3)
    );
    let first_logprob = choice["logprobs"]["token_logprobs"][0]
        .as_f64()
        .expect("logprob");
    assert!(
        (first_logprob - (-0.248)).abs() < 0.2,
        "logprob {first_logprob}"
    );

    // Stop strings end the text before them.
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"prompt": "The capital of France is", "max_tokens": 8, "stop": ["\n"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["text"], " Paris.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // Sampling with a seed repeats itself.
    let sampled =
        json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 7});
    let (_, first) = server.post("/v1/completions", sampled.clone()).await;
    let (_, second) = server.post("/v1/completions", sampled).await;
    assert_eq!(first["choices"][0]["text"], second["choices"][0]["text"]);

    // Streaming: server-sent events whose text adds up to the whole completion.
    let events = server
        .post_sse(
            "/v1/completions",
            json!({"prompt": "The capital of France is", "max_tokens": 4, "stream": true}),
        )
        .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut streamed = String::new();
    let mut finish = Value::Null;
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).expect("event is JSON");
        streamed.push_str(chunk["choices"][0]["text"].as_str().unwrap_or_default());
        if !chunk["choices"][0]["finish_reason"].is_null() {
            finish = chunk["choices"][0]["finish_reason"].clone();
        }
    }
    assert!(streamed.starts_with(" Paris."), "streamed {streamed:?}");
    assert_eq!(finish, "length");

    // Bad input: a clear 4xx with the error envelope, never a panic.
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/completions",
            json!({"prompt": ""}),
            422,
            "invalid_value",
        ),
        ("/v1/completions", json!({"prompt": 5}), 422, "invalid_body"),
        (
            "/v1/completions",
            json!({"max_tokens": 4}),
            422,
            "invalid_body",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 65}),
            422,
            "invalid_value",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": -1}),
            422,
            "invalid_body",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "temperature": 9}),
            422,
            "invalid_value",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}),
            422,
            "invalid_value",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "logprobs": 100}),
            422,
            "invalid_value",
        ),
        ("/v1/embeddings", json!({"input": []}), 422, "invalid_value"),
        (
            "/v1/embeddings",
            json!({"input": ["fine", ""]}),
            422,
            "invalid_value",
        ),
        (
            "/v1/embeddings",
            json!({"input": [1, 2]}),
            422,
            "invalid_body",
        ),
        ("/v1/tokenize", json!({"txt": "typo"}), 422, "invalid_body"),
    ];
    for (path, request, expected_status, expected_code) in cases {
        let (status, body) = server.post(path, request.clone()).await;
        assert_eq!(status, expected_status, "{path} {request}: {body}");
        assert_eq!(error_code(&body), expected_code, "{path} {request}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (_, body) = server
        .post("/v1/completions", json!({"prompt": "hi", "max_tokens": 65}))
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("64"),
        "{body}"
    );

    // A prompt over the context window: 422 naming the limit.
    let long_prompt = "1 ".repeat(context as usize);
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"prompt": long_prompt, "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(error_code(&body), "context_length_exceeded");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains(&context.to_string()));

    // Malformed JSON, a body that is not JSON, an oversized body, an unknown route.
    let response = server
        .client
        .post(server.url("/v1/completions"))
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("envelope");
    assert_eq!(error_code(&body), "malformed_json");

    let response = server
        .client
        .post(server.url("/v1/completions"))
        .body("prompt=hi")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 415);

    // The unread rest of an oversized body ends the connection, and the answer says so.
    let response = server
        .client
        .post(server.url("/v1/embeddings"))
        .json(&json!({"input": "x".repeat(200_000)}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 413);
    assert_eq!(
        response
            .headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    let body: Value = response.json().await.expect("envelope");
    assert_eq!(error_code(&body), "payload_too_large");

    let (status, body) = server.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "not_found");
}

#[tokio::test]
async fn metrics_count_answers_by_route_and_status() {
    let server = TestServer::start(&[]).await;
    for _ in 0..2 {
        let (status, _) = server.post("/v1/tokenize", json!({"text": "hi"})).await;
        assert_eq!(status, 200);
    }
    let (status, _) = server.post("/v1/tokenize", json!({"txt": "typo"})).await;
    assert_eq!(status, 422);
    let (status, _) = server.get("/v1/no-such/route-42").await;
    assert_eq!(status, 404);

    let text = server.metrics().await;

    let requests = |labels: &[&str]| metric_sample(&text, "exemplar_requests_total", labels);
    let tokenize = r#"route="/v1/tokenize""#;
    assert_eq!(
        requests(&[tokenize, r#"status="200""#]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        requests(&[tokenize, r#"status="422""#]),
        Some(1.0),
        "{text}"
    );
    // A path no route matches is counted under one label, not under its own name.
    assert_eq!(
        requests(&[r#"route="unmatched""#, r#"status="404""#]),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("route-42"), "{text}");
    assert!(
        metric_sample(
            &text,
            "exemplar_request_duration_seconds_count",
            &[tokenize]
        ) >= Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric_sample(&text, "exemplar_ready", &[]),
        Some(1.0),
        "{text}"
    );
    let llm_queue = metric_sample(&text, "exemplar_queue_waiting", &[r#"queue="llm""#]);
    assert_eq!(llm_queue, Some(0.0), "{text}");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = TestServer::start(&["--queue-capacity", "1"]).await;
    let request = json!({"prompt": "Tell me a long story about a dragon.", "max_tokens": 48});
    let sends = (0..8).map(|_| {
        server
            .client
            .post(server.url("/v1/completions"))
            .json(&request)
            .send()
    });
    let responses = futures::future::join_all(sends).await;
    let mut ok = 0;
    let mut refused = 0;
    for response in responses {
        let response = response.expect("answered");
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1, "some requests are served");
    assert!(
        refused >= 1,
        "overload is refused, not queued without bound"
    );
}

#[tokio::test]
async fn ready_is_503_until_the_models_load() {
    // f32 weights take seconds to convert at load, a window to observe.
    let mut server = TestServer::spawn(&["--weights", "f32"], &[]);
    // The listener is bound before loading starts; poll until it answers at all.
    let first = loop {
        if let Ok(response) = server.client.get(server.url("/ready")).send().await {
            break response.status().as_u16();
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(first, 503, "not ready while the models load");
    server.wait_ready().await;
    let (status, _) = server.get("/ready").await;
    assert_eq!(status, 200);
}

/// `--model` twice: both listed in the OpenAI shape, each task runs on the model it
/// names (its prompt counted by that model's tokenizer, Gemma's with its BOS), requests
/// choose theirs, a tuning compares them, and an unknown name is refused with the
/// loaded ones named.
#[tokio::test]
async fn several_models_serve_their_own_tasks() {
    let smollm = format!("smollm={}", crate::common::gguf_path().display());
    let gemma = format!("gemma={}", crate::common::gemma_path().display());
    let server = TestServer::start(&["--model", &smollm, "--model", &gemma]).await;

    let (status, models) = server.get("/v1/models").await;
    assert_eq!(status, 200, "{models}");
    assert_eq!(models["object"], "list");
    let listed: Vec<(&str, &str, bool)> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            (
                m["id"].as_str().expect("id"),
                m["architecture"].as_str().expect("architecture"),
                m["default"].as_bool().expect("default"),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![("smollm", "llama", true), ("gemma", "gemma3", false)]
    );

    let examples = json!([
        {"text": "a warm, funny film", "label": "positive"},
        {"text": "dull and far too long", "label": "negative"}
    ]);
    server.sentiment_task("on_default", examples.clone()).await;
    let task = json!({
        "labels": ["negative", "positive"],
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"},
        "model": "gemma"
    });
    let (status, body) = server
        .call(
            reqwest::Method::PUT,
            "/v1/tasks/on_gemma",
            Some(task.clone()),
        )
        .await;
    assert_eq!(
        (status, body["model"].as_str()),
        (201, Some("gemma")),
        "{body}"
    );

    for (name, model, bos) in [("on_default", None, 0), ("on_gemma", Some("gemma"), 1)] {
        let (status, body) = server
            .post(
                &format!("/v1/tasks/{name}/predict"),
                json!({"inputs": [{"text": "I loved it"}], "k": 0, "return_prompt": true}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let prediction = &body["predictions"][0];
        let prompt = prediction["prompt"].as_str().expect("prompt");
        let mut request = json!({"text": prompt});
        if let Some(model) = model {
            request["model"] = json!(model);
        }
        let (status, tokens) = server.post("/v1/tokenize", request).await;
        assert_eq!(status, 200, "{tokens}");
        let counted = tokens["ids"].as_array().expect("ids").len() + bos;
        assert_eq!(prediction["prompt_tokens"], counted, "{name}: {body}");
    }

    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"model": "gemma", "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}),
        )
        .await;
    assert_eq!(
        (status, body["model"].as_str()),
        (200, Some("gemma")),
        "{body}"
    );

    // The Gemma 3 270M base model ships no chat template: a chat is refused, naming why.
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            json!({"model": "gemma", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "no_chat_template"),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no chat template"), "{message}");

    // A tuning may compare the loaded models: each is a run of the grid, each row of
    // its table names its model, and the winner's model becomes the task's.
    let grid = json!({
        "max_examples": 2, "k": [1], "strategy": ["knn"], "calibration": ["none"],
        "vote_weight": [0.0], "model": ["smollm", "gemma"]
    });
    let (status, job) = server.post("/v1/tasks/on_default/tune", grid).await;
    assert_eq!((status, &job["progress"]["of"]), (202, &json!(4)), "{job}");
    let path = format!(
        "/v1/tasks/on_default/tunings/{}",
        job["id"].as_str().unwrap_or_default()
    );
    let job = server
        .poll_until(&path, |job| job["state"] != "running")
        .await;
    assert_eq!(job["state"], "complete", "{job}");
    let mut tried: Vec<&str> = job["result"]["table"]
        .as_array()
        .expect("a table")
        .iter()
        .map(|row| row["model"].as_str().expect("each row names its model"))
        .collect();
    tried.sort_unstable();
    assert_eq!(tried, ["gemma", "smollm"]);
    let (_, definition) = server.get("/v1/tasks/on_default").await;
    assert_eq!(
        definition["model"], job["result"]["best"]["model"],
        "{definition}"
    );
    let (status, body) = server
        .post("/v1/tasks/on_default/tune", json!({"model": ["llama-70b"]}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "invalid_value"),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("smollm, gemma"), "{message}");

    let mut unknown = task;
    unknown["model"] = json!("llama-70b");
    let (status, body) = server
        .call(reqwest::Method::PUT, "/v1/tasks/on_nothing", Some(unknown))
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("smollm, gemma"), "{message}");
    let (status, body) = server
        .post("/v1/tokenize", json!({"text": "hi", "model": "llama-70b"}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (404, "model_not_found"),
        "{body}"
    );

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"model="gemma""#),
        "the queue gauge names each model"
    );
}

/// `--cpu-features` caps the kernels' instructions, so that a large CPU serves (and is
/// measured) as a smaller one: the log names the kernels, and a lower tier completes a
/// prompt with the same tokens as the CPU's best.
#[tokio::test]
async fn a_lower_cpu_tier_serves_the_same_completion() {
    let request =
        json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0.0});
    let native = TestServer::start(&[]).await;
    let (status, expected) = native.post("/v1/completions", request.clone()).await;
    assert_eq!(status, 200, "{expected}");
    drop(native);
    for tier in ["avx2", "portable"] {
        let server = TestServer::start(&["--cpu-features", tier]).await;
        // Every machine this runs on has AVX2, so the tier asked for is the one used.
        let log = server.log();
        let kernels = format!("kernels=\"{tier}\"");
        assert!(
            log.lines()
                .any(|line| line.contains("LLM loaded") && line.contains(&kernels)),
            "{tier}: {log}"
        );
        let (status, answer) = server.post("/v1/completions", request.clone()).await;
        assert_eq!(status, 200, "{tier}: {answer}");
        assert_eq!(
            answer["choices"][0]["text"], expected["choices"][0]["text"],
            "{tier}"
        );
    }
}
