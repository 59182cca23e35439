//! A replica holds the tasks it serves: nothing is loaded at start-up, a task is loaded
//! on its first request, and the least recently used tasks are unloaded while more
//! examples than `--resident-examples` are held. An unloaded task answers as before.

use crate::common::{metric_sample, read_jsonl, shared_dir, TestServer};
use serde_json::{json, Value};

/// Examples per task; three tasks of them, a budget of a task and a half.
const PER_TASK: usize = 20;

/// `PER_TASK` SST-2 rows, a different slice for each task.
fn examples(slice: usize) -> Value {
    let rows = read_jsonl(shared_dir().join("data/sst2/train.jsonl"));
    Value::Array(
        rows[slice * PER_TASK..(slice + 1) * PER_TASK]
            .iter()
            .enumerate()
            .map(|(i, row)| json!({"id": format!("e{i}"), "text": row["text"], "label": row["label"]}))
            .collect(),
    )
}

/// A sample of the server's metrics, 0 when absent.
async fn metric(server: &TestServer, name: &str) -> f64 {
    metric_sample(&server.metrics().await, name, &[]).unwrap_or(0.0)
}

/// The nearest example's text to `text` in `task`.
async fn nearest(server: &TestServer, task: &str, text: &Value) -> Value {
    let (status, body) = server
        .post(
            &format!("/v1/tasks/{task}/retrieve"),
            json!({"text": text, "k": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["demonstrations"][0]["text"].clone()
}

#[tokio::test]
async fn tasks_are_loaded_on_first_use_and_the_least_recently_used_unloaded_past_the_budget() {
    let budget = (PER_TASK * 3 / 2).to_string();
    let server = TestServer::start(&["--resident-examples", &budget]).await;
    let tasks = ["first", "second", "third"];
    for (slice, task) in tasks.iter().enumerate() {
        server.sentiment_task(task, examples(slice)).await;
    }
    // Each write loaded its task, and each load past the budget unloaded the one before.
    assert_eq!(metric(&server, "exemplar_task_loads_total").await, 3.0);
    assert_eq!(metric(&server, "exemplar_task_unloads_total").await, 2.0);
    assert_eq!(
        metric(&server, "exemplar_resident_examples").await,
        PER_TASK as f64
    );

    // The first task, unloaded, is read back on its next request and answers from its
    // own examples; a second request finds it in memory.
    let first = examples(0);
    let query = &first[3]["text"];
    assert_eq!(&nearest(&server, "first", query).await, query);
    assert_eq!(metric(&server, "exemplar_task_loads_total").await, 4.0);
    assert_eq!(&nearest(&server, "first", query).await, query);
    assert_eq!(metric(&server, "exemplar_task_loads_total").await, 4.0);
    assert_eq!(metric(&server, "exemplar_resident_tasks").await, 1.0);

    // A write to an unloaded task is stored and indexed with the rest of it.
    let (status, body) = server
        .post(
            "/v1/tasks/second/examples",
            json!({"examples": [{"id": "new", "text": "a zebra plays the cello at dawn", "label": "positive"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let marker = json!("a zebra plays the cello at dawn");
    assert_eq!(nearest(&server, "second", &marker).await, marker);
    let second = examples(1);
    assert_eq!(
        nearest(&server, "second", &second[5]["text"]).await,
        second[5]["text"]
    );

    // A restart loads nothing until a task is asked for.
    let server = server.restart().await;
    assert_eq!(metric(&server, "exemplar_task_loads_total").await, 0.0);
    assert_eq!(
        nearest(&server, "third", &examples(2)[0]["text"]).await,
        examples(2)[0]["text"]
    );
    assert_eq!(metric(&server, "exemplar_task_loads_total").await, 1.0);
}
