//! The Docker deployment as users run it: the images built, `docker/compose.yaml` up with
//! PostgreSQL, three replicas and nginx, and everything spoken through the balancer's one
//! port. A replica killed under load and a rolling restart under load lose no request
//! (the client retries 502/503 as the README advises), a write reaches every replica
//! within the sync interval, and the database outlives `compose down`.
//!
//! Skipped, with a message, only where no Docker daemon answers.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{free_port, read_jsonl, repo_dir, shared_dir};
use serde_json::{json, Value};

/// Examples imported through the balancer.
const EXAMPLES: usize = 1000;
/// Requests at least in each stream under which replicas are killed or restarted.
const KILL_STREAM: usize = 200;
/// Clients sending at once.
const CLIENTS: usize = 4;
/// Tries per request, as the README advises for 429, 502, 503 and refused connections.
const TRIES: usize = 6;
/// The stack's bootstrap admin key, the one key every request of the test sends.
const ADMIN_KEY: &str = "deploy-test-admin-key-0123456789abcdef";

/// The image the test builds and the compose file runs.
const IMAGE: &str = "exemplar:deploy-test";

/// A compose project of `docker/compose.yaml`, taken down with its volumes when dropped.
struct Stack {
    compose: Vec<String>,
    port: u16,
}

impl Stack {
    /// `docker compose` (v2) or `docker-compose` (v1), whichever this machine has.
    fn new(project: &str, port: u16) -> Self {
        let v2 = Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        let mut compose: Vec<String> = if v2 {
            vec!["docker".into(), "compose".into()]
        } else {
            vec!["docker-compose".into()]
        };
        let file = repo_dir().join("docker/compose.yaml");
        compose.extend([
            "-f".into(),
            file.to_string_lossy().into_owned(),
            "-p".into(),
            project.into(),
        ]);
        Self { compose, port }
    }

    /// A compose command on this project.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.compose[0]);
        command
            .args(&self.compose[1..])
            .args(args)
            .env("EXEMPLAR_PORT", self.port.to_string())
            .env("EXEMPLAR_IMAGE", IMAGE)
            .env("EXEMPLAR_BOOTSTRAP_KEY", ADMIN_KEY);
        command
    }

    /// Runs a compose command and returns its output.
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("compose runs")
    }

    /// Runs a compose command that must succeed.
    fn must(&self, args: &[&str]) {
        must(&mut self.command(args));
    }

    /// Sends a request to one replica directly, from inside its container.
    fn on_replica(&self, replica: &str, method: &str, path: &str, body: &Value) -> Option<Value> {
        let url = format!("http://127.0.0.1:8080{path}");
        let body = body.to_string();
        let output = self.run(&[
            "exec",
            "-T",
            replica,
            "curl",
            "-fsS",
            "-X",
            method,
            "-H",
            "content-type: application/json",
            "-H",
            &format!("authorization: Bearer {ADMIN_KEY}"),
            "--data",
            &body,
            &url,
        ]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }

    /// Waits until `replica` answers `/ready` with 200.
    fn wait_replica_ready(&self, replica: &str) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while self
            .run(&[
                "exec",
                "-T",
                replica,
                "curl",
                "-fsS",
                "http://127.0.0.1:8080/ready",
            ])
            .status
            .code()
            != Some(0)
        {
            assert!(
                Instant::now() < deadline,
                "{replica} not ready after 180 s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The last lines the stack logged.
    fn logs(&self) -> String {
        let output = self.run(&["logs", "--no-color", "--tail", "40"]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

/// Whether a Docker daemon answers.
fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `command`, failing the test with its output if it fails.
fn must(command: &mut Command) {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds the CPU image from the binary these tests were built with.
fn build_image() {
    let root = repo_dir();
    let binary = Path::new(env!("CARGO_BIN_EXE_exemplar"));
    let relative = binary
        .strip_prefix(&root)
        .expect("the test binary lies in the checkout's target folder (the build context)");
    must(&mut Command::new(root.join("docker/base-images.sh")));
    must(
        Command::new("docker")
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "-f",
                "docker/Dockerfile",
                "--target",
                "prebuilt",
            ])
            .arg("--build-arg")
            .arg(format!("BINARY={}", relative.display()))
            .args(["-t", IMAGE, "."]),
    );
}

/// A client that retries refused connections and 429/502/503 answers, as the README
/// advises.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    retried: Arc<AtomicUsize>,
}

impl Client {
    fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .default_headers(reqwest::header::HeaderMap::from_iter([(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {ADMIN_KEY}").parse().expect("header value"),
                )]))
                .timeout(Duration::from_secs(300))
                .build()
                .expect("HTTP client"),
            retried: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The final status and answer of `method url body` after the retries.
    async fn send(&self, method: reqwest::Method, url: &str, body: Option<&Value>) -> (u16, Value) {
        let mut last = (0, Value::Null);
        for attempt in 0..TRIES {
            if attempt > 0 {
                self.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
            }
            let mut request = self.http.request(method.clone(), url);
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let value = response.json().await.unwrap_or(Value::Null);
                    if ![429, 502, 503].contains(&status) {
                        return (status, value);
                    }
                    last = (status, value);
                }
                Err(e) => last = (0, json!(e.to_string())),
            }
        }
        last
    }
}

/// Sends requests from `CLIENTS` clients (retrievals, every fourth one a prediction)
/// until at least `count` are answered and `during` has returned, calling `during` once
/// a tenth are answered; answers the failures.
async fn stream(
    stack: &Stack,
    client: &Client,
    count: usize,
    queries: &[String],
    during: impl FnOnce(),
) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (next, done, stop, failures, client) = (
            next.clone(),
            done.clone(),
            stop.clone(),
            failures.clone(),
            client.clone(),
        );
        let (retrieve, predict) = (
            stack.url("/v1/tasks/sst2/retrieve"),
            stack.url("/v1/tasks/sst2/predict"),
        );
        let queries = queries.to_vec();
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let text = &queries[i % queries.len()];
                let (url, body) = if i % 4 == 3 {
                    (&predict, json!({"inputs": [{"text": text}], "k": 4}))
                } else {
                    (&retrieve, json!({"text": text, "k": 4}))
                };
                let (status, answer) = client.send(reqwest::Method::POST, url, Some(&body)).await;
                if status != 200 {
                    failures
                        .lock()
                        .expect("failures")
                        .push(format!("request {i}: {status} {answer}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while done.load(Ordering::Relaxed) < count / 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(during);
    while done.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    eprintln!("{} requests answered", done.load(Ordering::Relaxed));
    let failures = failures.lock().expect("failures").clone();
    failures
}

/// The number of examples of the task, asked through the balancer.
async fn example_count(stack: &Stack, client: &Client) -> u64 {
    let (status, task) = client
        .send(reqwest::Method::GET, &stack.url("/v1/tasks/sst2"), None)
        .await;
    assert_eq!(status, 200, "{task}");
    task["counts"]["examples"].as_u64().expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "builds Docker images and runs the compose stack (minutes); run with --include-ignored"]
async fn the_compose_stack_serves_through_replica_loss_restarts_and_down_up() {
    if !docker_answers() {
        eprintln!("skipped: no Docker daemon answers `docker info`");
        return;
    }
    let started = Instant::now();
    build_image();
    eprintln!("images built in {:.0} s", started.elapsed().as_secs_f64());

    let stack = Stack::new(
        &format!("exemplar-deploy-{}", std::process::id()),
        free_port(),
    );
    stack.must(&["up", "-d", "--no-build"]);
    for replica in ["exemplar-1", "exemplar-2", "exemplar-3"] {
        stack.wait_replica_ready(replica);
    }
    let client = Client::new();
    eprintln!(
        "stack up and ready at {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // The image requires a key, and the bootstrap key is one.
    let anonymous = reqwest::get(stack.url("/v1/tasks")).await.expect("sent");
    assert_eq!(
        anonymous.status(),
        401,
        "the image served a request without a key"
    );

    // A task and 1000 SST-2 examples, written through the balancer in batches.
    let task = json!({
        "labels": ["negative", "positive"],
        "instruction": "Classify the sentiment of each movie review.",
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let (status, body) = client
        .send(
            reqwest::Method::PUT,
            &stack.url("/v1/tasks/sst2"),
            Some(&task),
        )
        .await;
    assert_eq!(status, 201, "{body}\n{}", stack.logs());
    let rows = read_jsonl(shared_dir().join("data/sst2/train.jsonl"));
    let examples: Vec<Value> = rows
        .iter()
        .take(EXAMPLES)
        .enumerate()
        .map(|(i, row)| json!({"id": format!("ex{i}"), "text": row["text"], "label": row["label"]}))
        .collect();
    for batch in examples.chunks(100) {
        let (status, body) = client
            .send(
                reqwest::Method::POST,
                &stack.url("/v1/tasks/sst2/examples"),
                Some(&json!({ "examples": batch })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let queries: Vec<String> = read_jsonl(shared_dir().join("data/sst2/test.jsonl"))
        .iter()
        .take(50)
        .map(|row| row["text"].as_str().expect("text").to_owned())
        .collect();
    let (status, body) = client
        .send(
            reqwest::Method::POST,
            &stack.url("/v1/tasks/sst2/predict"),
            Some(&json!({"inputs": [{"text": queries[0]}], "k": 4})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["predictions"][0]["label"].is_string(), "{body}");
    eprintln!(
        "imported and predicted at {:.0} s",
        started.elapsed().as_secs_f64()
    );

    // (c) A write through the balancer reaches each replica, addressed directly.
    let marker = "a deployment test sentence about zebras playing the cello at dawn";
    let (status, body) = client
        .send(
            reqwest::Method::POST,
            &stack.url("/v1/tasks/sst2/examples"),
            Some(&json!({"examples": [{"id": "marker", "text": marker, "label": "positive"}]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let written = Instant::now();
    for replica in ["exemplar-1", "exemplar-2", "exemplar-3"] {
        loop {
            let answer = stack.on_replica(
                replica,
                "POST",
                "/v1/tasks/sst2/retrieve",
                &json!({"text": marker, "k": 1}),
            );
            let first = answer
                .as_ref()
                .and_then(|a| a["demonstrations"][0]["id"].as_str());
            if first == Some("marker") {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(30),
                "{replica} does not retrieve the new example: {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!(
        "every replica retrieved the new example {:.1} s after the write (sync interval 1 s)",
        written.elapsed().as_secs_f64()
    );
    let expected = EXAMPLES as u64 + 1;

    // (a) One replica killed during a stream of requests.
    let failures = stream(&stack, &client, KILL_STREAM, &queries, || {
        stack.must(&["kill", "exemplar-2"]);
    })
    .await;
    assert!(failures.is_empty(), "{failures:#?}\n{}", stack.logs());
    assert_eq!(example_count(&stack, &client).await, expected);
    eprintln!(
        "replica killed under {KILL_STREAM} requests: 0 failed, {} retried, at {:.0} s",
        client.retried.swap(0, Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    stack.must(&["start", "exemplar-2"]);
    stack.wait_replica_ready("exemplar-2");

    // (b) The replicas restarted one at a time under load.
    let failures = stream(&stack, &client, KILL_STREAM, &queries, || {
        for replica in ["exemplar-1", "exemplar-2", "exemplar-3"] {
            stack.must(&["restart", "-t", "60", replica]);
            stack.wait_replica_ready(replica);
        }
    })
    .await;
    assert!(failures.is_empty(), "{failures:#?}\n{}", stack.logs());
    eprintln!(
        "rolling restart under {KILL_STREAM} requests: 0 failed, {} retried, at {:.0} s",
        client.retried.swap(0, Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );

    // (d) The database outlives `compose down` and `up`.
    stack.must(&["down", "-t", "30"]);
    stack.must(&["up", "-d", "--no-build"]);
    for replica in ["exemplar-1", "exemplar-2", "exemplar-3"] {
        stack.wait_replica_ready(replica);
    }
    assert_eq!(example_count(&stack, &client).await, expected);
    eprintln!(
        "data kept across down/up; whole deployment test {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
