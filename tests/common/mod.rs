//! Shared helpers for the integration tests: model paths, fixtures, and a real server
//! process started on a free port.

#![allow(dead_code)] // each test file uses its own subset of these helpers

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

/// Reads a JSON-lines fixture into values.
pub fn read_jsonl(path: PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect()
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

/// A running `exemplar serve`, killed when dropped.
pub struct TestServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// An HTTP client.
    pub client: reqwest::Client,
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

    /// Starts the process without waiting for readiness.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let models = models_dir();
        let mut command = exemplar();
        command
            .args(["serve", "--addr", &addr, "--threads", "2"])
            .args(args)
            .env("EXEMPLAR_MODELS_DIR", &models)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("exemplar starts");
        Self {
            child,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    /// Polls `/ready` until it answers 200; panics if the process exits first.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited before it was ready: {status}");
            }
            if let Ok(response) = self.client.get(self.url("/ready")).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server not ready after 180 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` as JSON and returns status and parsed answer.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let value = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    /// GETs `path` and returns status and parsed answer.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let value = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, value)
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
