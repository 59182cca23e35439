//! Shared helpers for the integration tests: model paths, fixtures, and a real server
//! process started on a free port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the checkout: data sets and reference fixtures.
pub fn shared_dir() -> PathBuf {
    repo_dir().join("../shared")
}

/// The models folder, filled by `scripts/fetch-models.sh`.
pub fn models_dir() -> PathBuf {
    let dir = repo_dir().join("models");
    assert!(
        dir.join("smollm2").is_dir() && dir.join("all-minilm-l6-v2").is_dir(),
        "models are missing: run scripts/fetch-models.sh"
    );
    dir
}

/// The default GGUF.
pub fn gguf_path() -> PathBuf {
    models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma 3 270M in Q4_K_M, assembled by `scripts/fetch-models.sh`.
pub fn gemma_path() -> PathBuf {
    let path = models_dir().join("gemma3/gemma-3-270m-q4_k_m.gguf");
    assert!(
        path.is_file(),
        "Gemma 3 270M is missing: run scripts/fetch-models.sh"
    );
    path
}

/// The repository's own fixtures (tests/fixtures), made by its scripts.
pub fn fixtures_dir() -> PathBuf {
    repo_dir().join("tests/fixtures")
}

/// The device the reference tests run on: `EXEMPLAR_TEST_DEVICE=cuda` (a build with
/// `--features cuda`, as `scripts/gpu-check.sh` runs them) or the CPU.
pub fn device() -> candle_core::Device {
    match std::env::var("EXEMPLAR_TEST_DEVICE").as_deref() {
        Ok("cuda") => candle_core::Device::new_cuda(0)
            .expect("EXEMPLAR_TEST_DEVICE=cuda needs a GPU and a build with --features cuda"),
        _ => candle_core::Device::Cpu,
    }
}

/// A fixture's array of token ids.
pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("id array")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

/// A fixture's array of numbers, as f32.
pub fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .expect("number array")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

/// Reads a JSON-lines fixture into values.
pub fn read_jsonl(path: PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect()
}

/// A background evaluation long enough to be running throughout a test: 400 SST-2
/// test rows, k = 2.
pub fn long_background_evaluation() -> serde_json::Value {
    let rows: Vec<serde_json::Value> = read_jsonl(shared_dir().join("data/sst2/test.jsonl"))
        .into_iter()
        .take(400)
        .collect();
    serde_json::json!({"examples": rows, "background": true, "k": 2})
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `exemplar` binary built for these tests.
pub fn exemplar() -> Command {
    Command::new(env!("CARGO_BIN_EXE_exemplar"))
}

/// A database for one test: a SQLite file in a temporary folder, or a fresh
/// PostgreSQL database when `EXEMPLAR_TEST_POSTGRES_URL` names a server.
pub struct TestDatabase {
    /// The URL to give the server.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A new, empty SQLite database file.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("exemplar.db").display());
        Self {
            url,
            _dir: Some(dir),
        }
    }

    /// A new, empty PostgreSQL database on the server that `EXEMPLAR_TEST_POSTGRES_URL`
    /// names (`scripts/test.sh` starts one).
    pub async fn postgres() -> Self {
        use sqlx::Connection;
        let admin = std::env::var("EXEMPLAR_TEST_POSTGRES_URL").expect(
            "EXEMPLAR_TEST_POSTGRES_URL names a PostgreSQL server (scripts/test.sh starts one)",
        );
        let name = format!("exemplar_test_{:016x}", rand::random::<u64>());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL reachable");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            _dir: None,
        }
    }
}

/// A running `exemplar serve`, killed when dropped.
pub struct TestServer {
    child: Child,
    log: tempfile::NamedTempFile,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// An HTTP client.
    pub client: reqwest::Client,
    /// The database URL it was started with.
    pub database_url: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl TestServer {
    /// Starts the server with the default models plus `args`, and waits until ready.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// Like [`TestServer::start`] with extra environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut server = Self::spawn(args, env);
        server.wait_ready().await;
        server
    }

    /// Starts the process on a fresh SQLite database without waiting for readiness.
    ///
    /// The database's folder lives as long as the test process: it is leaked on purpose
    /// so that a restarted server finds it again.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let database = TestDatabase::sqlite();
        let url = database.url.clone();
        std::mem::forget(database);
        Self::spawn_on(&url, args, env)
    }

    /// Starts the process on `database_url` without waiting for readiness.
    pub fn spawn_on(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let addr = format!("127.0.0.1:{port}");
        let models = models_dir();
        let mut command = exemplar();
        command
            .args(["serve", "--addr", &addr, "--threads", "2"])
            .args(["--database-url", database_url])
            .args(args)
            .env("EXEMPLAR_MODELS_DIR", &models)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("exemplar starts");
        Self {
            child,
            log,
            base: format!("http://{addr}"),
            // A request that never answers fails the test instead of stalling the suite.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .expect("HTTP client"),
            database_url: database_url.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Starts on `database_url` and waits until ready.
    pub async fn start_on(database_url: &str, args: &[&str]) -> Self {
        let mut server = Self::spawn_on(database_url, args, &[]);
        server.wait_ready().await;
        server
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as a container runtime does to stop the process.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Kills this server and starts another on the same database and flags.
    pub async fn restart(mut self) -> Self {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut server = Self::spawn_on(&self.database_url, &args, &env);
        server.wait_ready().await;
        server
    }

    /// Sends `method` to `path` and returns status and parsed answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.call_as(None, method, path, body).await
    }

    /// Like [`TestServer::call`], sending `key` as `Authorization: Bearer` if given.
    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let value = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    /// Polls `/ready` until it answers 200; panics if the process exits first.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the server exited before it was ready: {status}\n{}",
                    self.log()
                );
            }
            if let Ok(response) = self.client.get(self.url("/ready")).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server not ready after 180 s\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` as JSON and returns status and parsed answer.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates the sentiment task `name` (labels negative and positive, "Review:" and
    /// "Sentiment:" templates) holding `examples`; fails the test if either write fails.
    pub async fn sentiment_task(&self, name: &str, examples: serde_json::Value) {
        self.sentiment_task_as(None, name, examples).await;
    }

    /// Like [`TestServer::sentiment_task`], sending `key` if given.
    pub async fn sentiment_task_as(
        &self,
        key: Option<&str>,
        name: &str,
        examples: serde_json::Value,
    ) {
        let task = serde_json::json!({
            "labels": ["negative", "positive"],
            "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
        });
        let path = format!("/v1/tasks/{name}");
        let (status, body) = self
            .call_as(key, reqwest::Method::PUT, &path, Some(task))
            .await;
        assert_eq!(status, 201, "{body}");
        let examples = serde_json::json!({ "examples": examples });
        let (status, body) = self
            .call_as(
                key,
                reqwest::Method::POST,
                &format!("{path}/examples"),
                Some(examples),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Polls the job at `path` until `done` says so; panics after ten minutes.
    pub async fn poll_until(
        &self,
        path: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (status, job) = self.get(path).await;
            assert_eq!(status, 200, "{job}");
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "still waiting: {job}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// GETs `/metrics`, checks that it answers Prometheus text, and returns the text.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        response.text().await.expect("text")
    }

    /// POSTs `body` to a streaming route, checks that it answers server-sent events, and
    /// returns each event's `data`, in order.
    pub async fn post_sse(&self, path: &str, body: serde_json::Value) -> Vec<String> {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("stream opens");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let raw = response.text().await.expect("the stream ends");
        raw.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    /// GETs `path` and returns status and parsed answer.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Waits for the process to exit on its own and returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample of `name` in Prometheus text whose labels include every one
/// of `labels`.
pub fn metric_sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|label| rest.contains(label))
        })
        .and_then(|(_, value)| value.parse().ok())
}
