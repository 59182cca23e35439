//! `docker/compose.yaml` up with PostgreSQL, three replicas and nginx, everything spoken
//! through the balancer's one port. A task's requests reach one replica (nginx hashes
//! the task in the path); that replica killed under load and a rolling restart under
//! load lose no request (the client retries 502/503 as the README advises), a write
//! reaches every replica within the sync interval, and the database outlives
//! `compose down`.

use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{begin, import_and_predict, must, stream, Client, ADMIN_KEY, IMAGE};
use crate::common::{free_port, metric_sample, repo_dir};
use serde_json::{json, Value};

/// The replicas' services in the compose file.
pub(super) const REPLICAS: [&str; 3] = ["exemplar-1", "exemplar-2", "exemplar-3"];
/// Examples imported through the balancer.
const EXAMPLES: usize = 1000;
/// Predictions of one task whose replicas are counted.
const AFFINITY_PREDICTIONS: usize = 8;
/// Requests at least in each stream under which replicas are killed or restarted.
const KILL_STREAM: usize = 200;
/// A compose project of `docker/compose.yaml`, taken down with its volumes when dropped.
pub(super) struct Stack {
    compose: Vec<String>,
    port: u16,
    /// Settings of the compose file's own variables.
    settings: Vec<(&'static str, String)>,
}

impl Stack {
    /// `docker compose` (v2) or `docker-compose` (v1), whichever this machine has.
    pub(super) fn new(project: &str, port: u16) -> Self {
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
        Self {
            compose,
            port,
            settings: Vec::new(),
        }
    }

    /// The stack with the compose file's variable `name` set to `value`.
    pub(super) fn with(mut self, name: &'static str, value: &str) -> Self {
        self.settings.push((name, value.to_owned()));
        self
    }

    /// Starts the stack and waits until every replica is ready.
    pub(super) fn up(&self) {
        self.must(&["up", "-d", "--no-build"]);
        for replica in REPLICAS {
            self.wait_replica_ready(replica);
        }
    }

    /// Makes compose commands on this project, from any thread.
    pub(super) fn commands(&self) -> impl Fn(&[&str]) -> Command + Send + 'static {
        let (compose, port, settings) = (self.compose.clone(), self.port, self.settings.clone());
        move |args| {
            let mut command = Command::new(&compose[0]);
            command
                .args(&compose[1..])
                .args(args)
                .env("EXEMPLAR_PORT", port.to_string())
                .env("EXEMPLAR_IMAGE", IMAGE)
                .env("EXEMPLAR_BOOTSTRAP_KEY", ADMIN_KEY)
                .envs(settings.iter().map(|(name, value)| (name, value)));
            command
        }
    }

    /// A compose command on this project.
    pub(super) fn command(&self, args: &[&str]) -> Command {
        self.commands()(args)
    }

    /// Runs a compose command and returns its output.
    pub(super) fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("compose runs")
    }

    /// Runs a compose command that must succeed.
    pub(super) fn must(&self, args: &[&str]) {
        must(&mut self.command(args));
    }

    /// Runs curl with `args` inside `replica`'s container, which reaches the replica
    /// itself at 127.0.0.1:8080.
    fn curl_on(&self, replica: &str, args: &[&str]) -> Output {
        self.run(&[&["exec", "-T", replica, "curl", "-fsS"], args].concat())
    }

    /// Sends a request to one replica directly, from inside its container.
    fn on_replica(&self, replica: &str, method: &str, path: &str, body: &Value) -> Option<Value> {
        let url = format!("http://127.0.0.1:8080{path}");
        let body = body.to_string();
        let output = self.curl_on(
            replica,
            &[
                "-X",
                method,
                "-H",
                "content-type: application/json",
                "-H",
                &format!("authorization: Bearer {ADMIN_KEY}"),
                "--data",
                &body,
                &url,
            ],
        );
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }

    /// The number of inputs `replica` has predicted, from its `/metrics`.
    fn predictions(&self, replica: &str) -> f64 {
        let output = self.curl_on(replica, &["http://127.0.0.1:8080/metrics"]);
        assert!(output.status.success(), "{replica}'s /metrics");
        metric_sample(
            &String::from_utf8_lossy(&output.stdout),
            "exemplar_predictions_total",
            &[],
        )
        .unwrap_or(0.0)
    }

    /// Waits until `replica` answers `/ready` with 200.
    pub(super) fn wait_replica_ready(&self, replica: &str) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while self
            .curl_on(replica, &["http://127.0.0.1:8080/ready"])
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
    pub(super) fn logs(&self) -> String {
        let output = self.run(&["logs", "--no-color", "--tail", "40"]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Everything `replica` logged.
    pub(super) fn replica_log(&self, replica: &str) -> String {
        let output = self.run(&["logs", "--no-color", replica]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
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
    let Some((_turn, started)) = begin().await else {
        return;
    };

    let stack = Stack::new(
        &format!("exemplar-deploy-{}", std::process::id()),
        free_port(),
    );
    stack.up();
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
    let queries = import_and_predict(&stack.url(""), &client, EXAMPLES, || stack.logs()).await;
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
    for replica in REPLICAS {
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

    // The task's predictions all reach one replica, where its caches are.
    let before = REPLICAS.map(|replica| stack.predictions(replica));
    for query in &queries[..AFFINITY_PREDICTIONS] {
        let body = json!({"inputs": [{"text": query}], "k": 4});
        let url = stack.url("/v1/tasks/sst2/predict");
        let (status, answer) = client.send(reqwest::Method::POST, &url, Some(&body)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let served: Vec<f64> = REPLICAS
        .iter()
        .zip(before)
        .map(|(replica, before)| stack.predictions(replica) - before)
        .collect();
    let holder = served
        .iter()
        .position(|&n| n == AFFINITY_PREDICTIONS as f64)
        .unwrap_or_else(|| panic!("the task's predictions spread over replicas: {served:?}"));
    assert_eq!(served.iter().sum::<f64>(), AFFINITY_PREDICTIONS as f64);
    let holder = REPLICAS[holder];
    eprintln!("{AFFINITY_PREDICTIONS} predictions of the task all served by {holder}");

    // (a) The replica that holds the task killed during a stream of its requests: the
    // next replica on nginx's ring takes them.
    let failures = stream(&stack.url(""), &client, KILL_STREAM, &queries, || {
        stack.must(&["kill", holder]);
    })
    .await;
    assert!(failures.is_empty(), "{failures:#?}\n{}", stack.logs());
    assert_eq!(example_count(&stack, &client).await, expected);
    eprintln!(
        "replica killed under {KILL_STREAM} requests: 0 failed, {} retried, at {:.0} s",
        client.retried.swap(0, Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    stack.must(&["start", holder]);
    stack.wait_replica_ready(holder);

    // (b) The replicas restarted one at a time under load.
    let failures = stream(&stack.url(""), &client, KILL_STREAM, &queries, || {
        for replica in REPLICAS {
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
    stack.up();
    assert_eq!(example_count(&stack, &client).await, expected);
    eprintln!(
        "data kept across down/up; whole deployment test {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
