//! `openapi.yaml` is the contract: its paths and methods are exactly the router's, and
//! the answers of a live server, successes and errors, match its schemas.

use std::collections::BTreeSet;

use crate::common::{repo_dir, TestServer};
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
        .map(|(method, path, _)| (method.to_string(), path.to_owned()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in openapi.yaml: {undocumented:?}; in openapi.yaml but not served: {unserved:?}"
    );
}

#[test]
fn spec_says_which_routes_need_a_key() {
    let spec = spec();
    assert_eq!(spec["security"], json!([{"bearer": []}]));
    for (method, path, access) in exemplar::api::endpoints() {
        let operation = &spec["paths"][path][method.as_str().to_lowercase()];
        let public = operation.get("security") == Some(&json!([]));
        assert_eq!(
            public,
            access == exemplar::auth::Access::Public,
            "{method} {path}: the spec's security disagrees with the route's {access:?}"
        );
        if !public {
            for status in ["401", "403"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path} does not document {status}"
                );
            }
        }
    }
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

/// The spec path that `path` (query string and all) is an instance of.
fn template_of<'a>(spec: &'a Value, path: &str) -> &'a str {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    spec["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(part, segment)| part.starts_with('{') || part == segment)
        })
        .unwrap_or_else(|| panic!("no path of the spec matches {path}"))
}

/// A live server and the spec its answers are checked against.
struct Probe<'a> {
    server: &'a TestServer,
    spec: &'a Value,
}

impl Probe<'_> {
    /// Sends a JSON request and checks the answer; returns status and body.
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send_as(None, method, path, body).await
    }

    /// Like [`Probe::send`], with `key` as the bearer if given.
    async fn send_as(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, answer) = self.server.call_as(key, method.clone(), path, body).await;
        let template = template_of(self.spec, path);
        check(
            self.spec,
            &method.as_str().to_lowercase(),
            template,
            status,
            &answer,
        );
        (status, answer)
    }

    /// POSTs `body` as it is, with `content_type` if given, and checks the answer.
    async fn send_raw(&self, path: &str, content_type: Option<&str>, body: &'static str) {
        let mut request = self.server.client.post(self.server.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("JSON");
        check(
            self.spec,
            "post",
            template_of(self.spec, path),
            status,
            &answer,
        );
    }
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn live_answers_match_the_spec() {
    let spec = spec();
    let server = TestServer::start(&[]).await;
    let probe = Probe {
        server: &server,
        spec: &spec,
    };

    let (status, _) = probe.send(Method::GET, "/health", None).await;
    assert_eq!(status, 200);
    probe.send(Method::GET, "/ready", None).await;
    probe.send(Method::GET, "/v1/info", None).await;
    probe
        .send(
            Method::POST,
            "/v1/tokenize",
            Some(json!({"text": "Hello world"})),
        )
        .await;
    probe
        .send(Method::POST, "/v1/tokenize", Some(json!({"txt": 1})))
        .await;
    probe
        .send(
            Method::POST,
            "/v1/embeddings",
            Some(json!({"input": ["a", "b"]})),
        )
        .await;
    probe
        .send(Method::POST, "/v1/embeddings", Some(json!({"input": []})))
        .await;
    let completion = json!({"prompt": "Review: fine\nSentiment:", "max_tokens": 3, "logprobs": 2});
    let (status, _) = probe
        .send(Method::POST, "/v1/completions", Some(completion))
        .await;
    assert_eq!(status, 200);
    probe
        .send(
            Method::POST,
            "/v1/completions",
            Some(json!({"prompt": "x", "temperature": 9})),
        )
        .await;
    let chat = json!({
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 3, "logprobs": true, "top_logprobs": 2
    });
    let (status, _) = probe
        .send(Method::POST, "/v1/chat/completions", Some(chat))
        .await;
    assert_eq!(status, 200);
    let (status, _) = probe
        .send(
            Method::POST,
            "/v1/chat/completions",
            Some(json!({"messages": [{"role": "user", "content": "Hi"}], "tools": []})),
        )
        .await;
    assert_eq!(status, 422);

    let task = json!({
        "labels": ["negative", "positive"],
        "instruction": "Classify the sentiment of each movie review.",
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let (status, _) = probe
        .send(Method::PUT, "/v1/tasks/films", Some(task.clone()))
        .await;
    assert_eq!(status, 201);
    probe.send(Method::PUT, "/v1/tasks/films", Some(task)).await;
    probe
        .send(
            Method::PUT,
            "/v1/tasks/films",
            Some(json!({"labels": ["a"]})),
        )
        .await;
    probe.send(Method::GET, "/v1/tasks", None).await;
    probe.send(Method::GET, "/v1/tasks/films", None).await;
    probe.send(Method::GET, "/v1/tasks/nothing", None).await;

    let examples = json!({"examples": [
        {"id": "good", "text": "a warm, funny and moving film", "label": "positive"},
        {"id": "bad", "text": "a dull and tedious mess", "label": "negative"},
        {"text": "the best film of the year", "label": "positive"}
    ]});
    let (status, _) = probe
        .send(
            Method::POST,
            "/v1/tasks/films/examples",
            Some(examples.clone()),
        )
        .await;
    assert_eq!(status, 201);
    probe
        .send(Method::POST, "/v1/tasks/films/examples", Some(examples))
        .await;
    probe
        .send(
            Method::POST,
            "/v1/tasks/films/examples",
            Some(json!({"examples": [{"text": "x", "label": "maybe"}]})),
        )
        .await;
    probe
        .send(Method::GET, "/v1/tasks/films/examples?limit=2", None)
        .await;
    probe
        .send(Method::GET, "/v1/tasks/films/examples?limit=0", None)
        .await;
    probe
        .send(Method::GET, "/v1/tasks/films/examples/good", None)
        .await;
    probe
        .send(Method::GET, "/v1/tasks/films/examples/missing", None)
        .await;

    let pool: Vec<Value> = (0..12)
        .map(|i| json!({"id": format!("p{i}"), "text": format!("pool review number {i}, neither good nor bad")}))
        .collect();
    probe
        .send(
            Method::POST,
            "/v1/tasks/films/pool",
            Some(json!({ "items": pool })),
        )
        .await;
    probe.send(Method::GET, "/v1/tasks/films/pool", None).await;
    probe
        .send(Method::GET, "/v1/tasks/films/pool/p1", None)
        .await;

    probe
        .send(
            Method::POST,
            "/v1/tasks/films/retrieve",
            Some(json!({"text": "funny", "k": 2})),
        )
        .await;
    probe
        .send(
            Method::POST,
            "/v1/tasks/films/retrieve",
            Some(json!({"text": ""})),
        )
        .await;

    let request = json!({"inputs": [{"text": "a lovely film"}], "k": 2, "return_prompt": true, "calibrate": true});
    let (status, _) = probe
        .send(Method::POST, "/v1/tasks/films/predict", Some(request))
        .await;
    assert_eq!(status, 200);
    probe
        .send(
            Method::POST,
            "/v1/tasks/films/predict",
            Some(json!({"inputs": []})),
        )
        .await;
    probe
        .send(
            Method::POST,
            "/v1/tasks/nothing/predict",
            Some(json!({"inputs": [{"text": "x"}]})),
        )
        .await;
    let request = json!({"examples": [{"text": "a lovely film", "label": "positive"}], "k": 2});
    let (status, _) = probe
        .send(Method::POST, "/v1/tasks/films/evaluate", Some(request))
        .await;
    assert_eq!(status, 200);
    let request = json!({"examples": [{"text": "a dull film", "label": "negative"}], "k": 2, "background": true});
    let (status, job) = probe
        .send(Method::POST, "/v1/tasks/films/evaluate", Some(request))
        .await;
    assert_eq!(status, 202, "{job}");
    let job = format!(
        "/v1/tasks/films/evaluations/{}",
        job["id"].as_str().expect("id")
    );
    probe.send(Method::GET, &job, None).await;
    probe
        .send(Method::GET, "/v1/tasks/films/evaluations", None)
        .await;
    probe.send(Method::DELETE, &job, None).await;
    probe
        .send(Method::GET, "/v1/tasks/films/evaluations/nope", None)
        .await;

    let (status, body) = probe
        .send(
            Method::POST,
            "/v1/tasks/films/selections",
            Some(json!({"method": "fast-vote-k", "budget": 3, "params": {"k": 3}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    probe
        .send(
            Method::GET,
            &format!("/v1/tasks/films/selections/{id}"),
            None,
        )
        .await;
    probe
        .send(
            Method::POST,
            &format!("/v1/tasks/films/selections/{id}/continue"),
            None,
        )
        .await;
    probe
        .send(Method::GET, "/v1/tasks/films/selections/nope", None)
        .await;
    probe
        .send(
            Method::POST,
            "/v1/tasks/films/selections",
            Some(json!({"method": "best", "budget": 3})),
        )
        .await;

    probe
        .send(Method::DELETE, "/v1/tasks/films/pool/p1", None)
        .await;
    probe
        .send(Method::DELETE, "/v1/tasks/films/examples/good", None)
        .await;
    let (status, _) = probe.send(Method::DELETE, "/v1/tasks/films", None).await;
    assert_eq!(status, 204);
    probe.send(Method::DELETE, "/v1/tasks/films", None).await;

    // Bodies that are not JSON, or not sent as JSON.
    probe
        .send_raw("/v1/tokenize", Some("application/json"), "{not json")
        .await;
    probe.send_raw("/v1/tokenize", None, "text").await;

    // Keys: the first one turns auth on.
    let (status, admin) = probe
        .send(
            Method::POST,
            "/v1/keys",
            Some(json!({"scope": "admin", "name": "spec"})),
        )
        .await;
    assert_eq!(status, 201, "{admin}");
    let admin = admin["key"].as_str().expect("key");
    let (status, _) = probe.send(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 401);
    let (status, reader) = probe
        .send_as(
            Some(admin),
            Method::POST,
            "/v1/keys",
            Some(json!({"scope": "read", "tasks": ["films"]})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = probe
        .send_as(reader["key"].as_str(), Method::GET, "/v1/keys", None)
        .await;
    assert_eq!(status, 403);
    probe
        .send_as(
            Some(admin),
            Method::POST,
            "/v1/keys",
            Some(json!({"scope": "owner"})),
        )
        .await;
    let (status, _) = probe
        .send_as(Some(admin), Method::GET, "/v1/keys", None)
        .await;
    assert_eq!(status, 200);
    let revoke = format!("/v1/keys/{}", reader["id"].as_str().expect("id"));
    let (status, _) = probe
        .send_as(Some(admin), Method::DELETE, &revoke, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = probe
        .send_as(Some(admin), Method::DELETE, &revoke, None)
        .await;
    assert_eq!(status, 404);
}
