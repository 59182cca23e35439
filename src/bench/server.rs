//! The server the HTTP suites measure, started in the bench's own process on a
//! temporary database, and the requests they make of it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::BenchArgs;
use crate::config::Config;
use crate::experiments::{Dataset, Row};
use crate::server::ServerError;

#[derive(Parser)]
struct ServeFlags {
    #[command(flatten)]
    config: Config,
}

/// A running in-process server.
pub(crate) struct BenchServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The client every request of the suite goes through.
    pub client: reqwest::Client,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<Result<(), ServerError>>,
    _database: tempfile::TempDir,
}

impl BenchServer {
    /// Starts a server with the bench's models and a queue of `queue` jobs, and waits
    /// until it is ready. Every bench client shares one address, so the per-client
    /// limits are off: what is measured is the model and its queue.
    ///
    /// # Errors
    /// When the server does not start or become ready within five minutes.
    pub async fn start(args: &BenchArgs, queue: usize) -> anyhow::Result<Self> {
        let database = tempfile::tempdir()?;
        let url = format!("sqlite://{}", database.path().join("bench.db").display());
        let queue = queue.to_string();
        let mut config = ServeFlags::try_parse_from([
            "bench",
            "--database-url",
            &url,
            "--queue-capacity",
            &queue,
            "--client-max-in-flight",
            "0",
            "--client-rate",
            "0",
        ])?
        .config;
        config.models = args.models.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(crate::serve(listener, config, async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while client
            .get(format!("{base}/ready"))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            if Instant::now() > deadline || serving.is_finished() {
                bail!("the bench server did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            base,
            client,
            stop,
            serving,
            _database: database,
        })
    }

    /// Shuts the server down and waits for it.
    ///
    /// # Errors
    /// When the server failed.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.serving.await.context("server task")??;
        Ok(())
    }
}

/// POSTs `body` to `url`; answers the status and the JSON answer (null if none).
pub(crate) async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let response = client.post(url).json(body).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// Creates (or replaces) the task at `task` with `dataset`'s labels and template.
pub(crate) async fn create_task(
    client: &reqwest::Client,
    task: &str,
    dataset: &Dataset,
) -> anyhow::Result<()> {
    let spec = json!({
        "labels": dataset.labels,
        "instruction": dataset.instruction,
        "template": {"input": dataset.input, "output": dataset.output}
    });
    client
        .put(task)
        .json(&spec)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Deletes `task` (a bench's scratch task, measured and no longer wanted).
pub(crate) async fn delete_task(client: &reqwest::Client, task: &str) -> anyhow::Result<()> {
    client.delete(task).send().await?.error_for_status()?;
    Ok(())
}

/// Imports `rows` into `task` as annotated examples a hundred at a time; answers the
/// new examples' ids.
pub(crate) async fn import(
    client: &reqwest::Client,
    task: &str,
    rows: &[Row],
) -> anyhow::Result<Vec<Value>> {
    let mut ids: Vec<Value> = Vec::new();
    for chunk in rows.chunks(100) {
        let examples: Vec<Value> = chunk
            .iter()
            .map(|r| json!({"text": r.text, "label": r.label}))
            .collect();
        ids.extend(add_examples(client, task, examples).await?);
    }
    Ok(ids)
}

/// POSTs `examples` (JSON rows) to `task`'s examples; answers their ids.
pub(crate) async fn add_examples(
    client: &reqwest::Client,
    task: &str,
    examples: Vec<Value>,
) -> anyhow::Result<Vec<Value>> {
    let (status, body) = post(
        client,
        &format!("{task}/examples"),
        &json!({"examples": examples}),
    )
    .await?;
    if status != 201 {
        bail!("adding examples failed: {body}");
    }
    Ok(body["ids"].as_array().cloned().unwrap_or_default())
}
