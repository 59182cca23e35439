//! The Docker deployments as users run them, each spoken to through its one published
//! port: `compose` (PostgreSQL, three replicas and nginx on one machine), `faults` (the
//! same stack's database restarted and a job's replica killed under work) and `swarm`
//! (`docker/stack.yaml` on a single-node swarm). Both build the image from the binary
//! these tests were built with, and run one at a time.
//!
//! Skipped, with a message, only where no Docker daemon answers.

mod compose;
mod faults;
mod swarm;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use crate::common::{read_jsonl, repo_dir, shared_dir};
use serde_json::{json, Value};

/// Clients sending at once.
const CLIENTS: usize = 4;
/// Tries per request, as the README advises for 429, 502, 503 and refused connections.
const TRIES: usize = 6;
/// The stack's bootstrap admin key, the one key every request of the test sends.
const ADMIN_KEY: &str = "deploy-test-admin-key-0123456789abcdef";

/// The image the test builds and the compose file runs.
const IMAGE: &str = "exemplar:deploy-test";

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

/// Builds the CPU image from the binary these tests were built with, once for all the
/// tests of the process.
fn build_image() {
    static BUILT: Once = Once::new();
    BUILT.call_once(build_image_now);
}

/// The image build itself: the base images, then the prebuilt target.
fn build_image_now() {
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
    /// How many times each status was answered, retried ones included (0: no answer).
    answered: Arc<Mutex<BTreeMap<u16, usize>>>,
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
            answered: Arc::default(),
        }
    }

    /// The statuses answered since the last call, with how many times each was.
    fn take_answered(&self) -> BTreeMap<u16, usize> {
        std::mem::take(&mut *self.answered.lock().expect("statuses"))
    }

    fn count(&self, status: u16) {
        *self
            .answered
            .lock()
            .expect("statuses")
            .entry(status)
            .or_default() += 1;
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
                    self.count(status);
                    let value = response.json().await.unwrap_or(Value::Null);
                    if ![429, 502, 503].contains(&status) {
                        return (status, value);
                    }
                    last = (status, value);
                }
                Err(e) => {
                    self.count(0);
                    last = (0, json!(e.to_string()));
                }
            }
        }
        last
    }
}

/// Sends requests from `CLIENTS` clients (retrievals, every fourth one a prediction)
/// until at least `count` are answered and `during` has returned, calling `during` once
/// a tenth are answered; answers the failures.
async fn stream(
    base: &str,
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
            format!("{base}/v1/tasks/sst2/retrieve"),
            format!("{base}/v1/tasks/sst2/predict"),
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

/// Makes the task `sst2` through `base`, imports `examples` SST-2 rows in batches of 100
/// and predicts one test row; answers 50 test texts to send. `logs` explains a failure.
async fn import_and_predict(
    base: &str,
    client: &Client,
    examples: usize,
    logs: impl Fn() -> String,
) -> Vec<String> {
    let task = json!({
        "labels": ["negative", "positive"],
        "instruction": "Classify the sentiment of each movie review.",
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let url = |path: &str| format!("{base}{path}");
    let (status, body) = client
        .send(reqwest::Method::PUT, &url("/v1/tasks/sst2"), Some(&task))
        .await;
    assert_eq!(status, 201, "{body}\n{}", logs());
    let rows: Vec<Value> = read_jsonl(shared_dir().join("data/sst2/train.jsonl"))
        .iter()
        .take(examples)
        .enumerate()
        .map(|(i, row)| json!({"id": format!("ex{i}"), "text": row["text"], "label": row["label"]}))
        .collect();
    for batch in rows.chunks(100) {
        let body = json!({ "examples": batch });
        let (status, answer) = client
            .send(
                reqwest::Method::POST,
                &url("/v1/tasks/sst2/examples"),
                Some(&body),
            )
            .await;
        assert_eq!(status, 201, "{answer}\n{}", logs());
    }
    let queries: Vec<String> = read_jsonl(shared_dir().join("data/sst2/test.jsonl"))
        .iter()
        .take(50)
        .map(|row| row["text"].as_str().expect("text").to_owned())
        .collect();
    let body = json!({"inputs": [{"text": queries[0]}], "k": 4});
    let (status, answer) = client
        .send(
            reqwest::Method::POST,
            &url("/v1/tasks/sst2/predict"),
            Some(&body),
        )
        .await;
    assert_eq!(status, 200, "{answer}\n{}", logs());
    assert!(answer["predictions"][0]["label"].is_string(), "{answer}");
    queries
}

/// Held by a test while its stack runs: two stacks at once would share two cores and
/// the published ports' range, and slow each other past their timeouts.
static STACKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What every deployment test does first: nothing where no Docker daemon answers (the
/// test is skipped, with a message), else wait for its turn to run a stack and build
/// the image. Answers the turn, held while the test runs, and when the test began.
async fn begin() -> Option<(tokio::sync::MutexGuard<'static, ()>, std::time::Instant)> {
    if !docker_answers() {
        eprintln!("skipped: no Docker daemon answers `docker info`");
        return None;
    }
    let turn = STACKS.lock().await;
    let started = std::time::Instant::now();
    build_image();
    eprintln!("images built in {:.0} s", started.elapsed().as_secs_f64());
    Some((turn, started))
}
