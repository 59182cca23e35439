//! `openapi.yaml` is the contract: its paths and methods are exactly the router's, and
//! the answers of a live server, successes and errors, match its schemas.

mod common;

use std::collections::BTreeSet;

use common::{repo_dir, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// The spec as JSON.
fn spec() -> Value {
    let text = std::fs::read_to_string(repo_dir().join("openapi.yaml")).expect("openapi.yaml");
    serde_norway::from_str(&text).expect("openapi.yaml is YAML")
}

/// The methods OpenAPI allows as keys of a path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[test]
fn spec_paths_and_methods_are_the_routers() {
    let spec = spec();
    assert_eq!(spec["openapi"].as_str(), Some("3.1.0"));
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|key| METHODS.contains(&key.as_str()))
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = exemplar::api::endpoints()
        .into_iter()
        .map(|(method, path)| (method.to_string(), path.to_owned()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in openapi.yaml: {undocumented:?}; in openapi.yaml but not served: {unserved:?}"
    );
}

/// Follows a local `$ref` (`#/a/b`) to what it points at.
fn resolve<'a>(spec: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = spec
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {pointer}"));
            resolve(spec, target)
        }
        None => value,
    }
}

/// Checks one answer against the spec: its status is documented for the operation, and
/// a JSON body matches the schema of that status.
fn check(spec: &Value, method: &str, template: &str, status: u16, body: &Value) {
    let operation = &spec["paths"][template][method];
    assert!(
        operation.is_object(),
        "{method} {template} is not in the spec"
    );
    let response = resolve(spec, &operation["responses"][status.to_string()]);
    assert!(
        response.is_object(),
        "{method} {template} answered {status}, which the spec does not document: {body}"
    );
    let Some(schema) = response["content"]["application/json"].get("schema") else {
        assert!(
            body.is_null(),
            "{method} {template} {status}: undocumented body {body}"
        );
        return;
    };
    // The spec's components travel with the schema, so that its `#/components/...`
    // references resolve.
    let mut root = schema.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["components"] = spec["components"].clone();
    let validator = jsonschema::draft202012::new(&root).expect("the spec's schemas compile");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {template} {status} breaks the schema: {errors:#?}\n{body:#}"
    );
}

/// Sends a request and checks the answer against the spec; returns status and body.
async fn call(
    server: &TestServer,
    spec: &Value,
    method: Method,
    path: &str,
    template: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, answer) = server.call(method.clone(), path, body).await;
    check(
        spec,
        &method.as_str().to_lowercase(),
        template,
        status,
        &answer,
    );
    (status, answer)
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn live_answers_match_the_spec() {
    let spec = spec();
    let server = TestServer::start(&[]).await;
    let s = &server;
    let spec = &spec;

    let (status, _) = call(s, spec, Method::GET, "/health", "/health", None).await;
    assert_eq!(status, 200);
    call(s, spec, Method::GET, "/ready", "/ready", None).await;
    call(s, spec, Method::GET, "/v1/info", "/v1/info", None).await;
    call(
        s,
        spec,
        Method::POST,
        "/v1/tokenize",
        "/v1/tokenize",
        Some(json!({"text": "Hello world"})),
    )
    .await;
    call(
        s,
        spec,
        Method::POST,
        "/v1/tokenize",
        "/v1/tokenize",
        Some(json!({"txt": 1})),
    )
    .await;
    call(
        s,
        spec,
        Method::POST,
        "/v1/embeddings",
        "/v1/embeddings",
        Some(json!({"input": ["a", "b"]})),
    )
    .await;
    call(
        s,
        spec,
        Method::POST,
        "/v1/embeddings",
        "/v1/embeddings",
        Some(json!({"input": []})),
    )
    .await;
    let completion = json!({"prompt": "Review: fine\nSentiment:", "max_tokens": 3, "logprobs": 2});
    let (status, _) = call(
        s,
        spec,
        Method::POST,
        "/v1/completions",
        "/v1/completions",
        Some(completion),
    )
    .await;
    assert_eq!(status, 200);
    call(
        s,
        spec,
        Method::POST,
        "/v1/completions",
        "/v1/completions",
        Some(json!({"prompt": "x", "temperature": 9})),
    )
    .await;

    let task = json!({
        "labels": ["negative", "positive"],
        "instruction": "Classify the sentiment of each movie review.",
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let t = "/v1/tasks/{task}";
    let (status, _) = call(
        s,
        spec,
        Method::PUT,
        "/v1/tasks/films",
        t,
        Some(task.clone()),
    )
    .await;
    assert_eq!(status, 201);
    call(s, spec, Method::PUT, "/v1/tasks/films", t, Some(task)).await;
    call(
        s,
        spec,
        Method::PUT,
        "/v1/tasks/films",
        t,
        Some(json!({"labels": ["a"]})),
    )
    .await;
    call(s, spec, Method::GET, "/v1/tasks", "/v1/tasks", None).await;
    call(s, spec, Method::GET, "/v1/tasks/films", t, None).await;
    call(s, spec, Method::GET, "/v1/tasks/nothing", t, None).await;

    let examples = json!({"examples": [
        {"id": "good", "text": "a warm, funny and moving film", "label": "positive"},
        {"id": "bad", "text": "a dull and tedious mess", "label": "negative"},
        {"text": "the best film of the year", "label": "positive"}
    ]});
    let e = "/v1/tasks/{task}/examples";
    let (status, _) = call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/examples",
        e,
        Some(examples.clone()),
    )
    .await;
    assert_eq!(status, 201);
    call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/examples",
        e,
        Some(examples),
    )
    .await;
    call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/examples",
        e,
        Some(json!({"examples": [{"text": "x", "label": "maybe"}]})),
    )
    .await;
    call(
        s,
        spec,
        Method::GET,
        "/v1/tasks/films/examples?limit=2",
        e,
        None,
    )
    .await;
    call(
        s,
        spec,
        Method::GET,
        "/v1/tasks/films/examples?limit=0",
        e,
        None,
    )
    .await;
    let one = "/v1/tasks/{task}/examples/{id}";
    call(
        s,
        spec,
        Method::GET,
        "/v1/tasks/films/examples/good",
        one,
        None,
    )
    .await;
    call(
        s,
        spec,
        Method::GET,
        "/v1/tasks/films/examples/missing",
        one,
        None,
    )
    .await;

    let p = "/v1/tasks/{task}/pool";
    let pool: Vec<Value> = (0..12)
        .map(|i| json!({"id": format!("p{i}"), "text": format!("pool review number {i}, neither good nor bad")}))
        .collect();
    call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/pool",
        p,
        Some(json!({ "items": pool })),
    )
    .await;
    call(s, spec, Method::GET, "/v1/tasks/films/pool", p, None).await;
    call(
        s,
        spec,
        Method::GET,
        "/v1/tasks/films/pool/p1",
        "/v1/tasks/{task}/pool/{id}",
        None,
    )
    .await;

    let r = "/v1/tasks/{task}/retrieve";
    call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/retrieve",
        r,
        Some(json!({"text": "funny", "k": 2})),
    )
    .await;
    call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/retrieve",
        r,
        Some(json!({"text": ""})),
    )
    .await;

    let pr = "/v1/tasks/{task}/predict";
    let request = json!({"inputs": [{"text": "a lovely film"}], "k": 2, "return_prompt": true, "calibrate": true});
    let (status, _) = call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/predict",
        pr,
        Some(request),
    )
    .await;
    assert_eq!(status, 200);
    call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/predict",
        pr,
        Some(json!({"inputs": []})),
    )
    .await;
    call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/nothing/predict",
        pr,
        Some(json!({"inputs": [{"text": "x"}]})),
    )
    .await;
    let ev = "/v1/tasks/{task}/evaluate";
    let request = json!({"examples": [{"text": "a lovely film", "label": "positive"}], "k": 2});
    let (status, _) = call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/evaluate",
        ev,
        Some(request),
    )
    .await;
    assert_eq!(status, 200);

    let sel = "/v1/tasks/{task}/selections";
    let (status, body) = call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/selections",
        sel,
        Some(json!({"method": "fast-vote-k", "budget": 3, "params": {"k": 3}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    call(
        s,
        spec,
        Method::GET,
        &format!("/v1/tasks/films/selections/{id}"),
        "/v1/tasks/{task}/selections/{id}",
        None,
    )
    .await;
    call(
        s,
        spec,
        Method::POST,
        &format!("/v1/tasks/films/selections/{id}/continue"),
        "/v1/tasks/{task}/selections/{id}/continue",
        None,
    )
    .await;
    call(
        s,
        spec,
        Method::GET,
        "/v1/tasks/films/selections/nope",
        "/v1/tasks/{task}/selections/{id}",
        None,
    )
    .await;
    call(
        s,
        spec,
        Method::POST,
        "/v1/tasks/films/selections",
        sel,
        Some(json!({"method": "best", "budget": 3})),
    )
    .await;

    call(
        s,
        spec,
        Method::DELETE,
        "/v1/tasks/films/pool/p1",
        "/v1/tasks/{task}/pool/{id}",
        None,
    )
    .await;
    call(
        s,
        spec,
        Method::DELETE,
        "/v1/tasks/films/examples/good",
        one,
        None,
    )
    .await;
    let (status, _) = call(s, spec, Method::DELETE, "/v1/tasks/films", t, None).await;
    assert_eq!(status, 204);
    call(s, spec, Method::DELETE, "/v1/tasks/films", t, None).await;

    // Bodies that are not JSON, or not sent as JSON.
    let response = s
        .client
        .post(s.url("/v1/tokenize"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("JSON");
    check(spec, "post", "/v1/tokenize", status, &body);
    let response = s
        .client
        .post(s.url("/v1/tokenize"))
        .body("text")
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("JSON");
    check(spec, "post", "/v1/tokenize", status, &body);
}
