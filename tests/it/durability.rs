//! Imports and restarts: `exemplar import` stops at the first bad line with its
//! number, a server killed with SIGKILL mid-import keeps whole batches only, and stored
//! embeddings are reused across restarts unless the embedder changes.

use crate::common;

use std::io::Write;
use std::time::{Duration, Instant};

use crate::common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

async fn put_sst2_task(server: &TestServer) {
    let task = json!({
        "labels": ["negative", "positive"],
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let (status, body) = server.call(Method::PUT, "/v1/tasks/sst2", Some(task)).await;
    assert_eq!(status, 201, "{body}");
}

/// The first `n` lines of SST-2's training set.
fn sst2_lines(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(common::shared_dir().join("data/sst2/train.jsonl"))
        .expect("SST-2 train set");
    text.lines().take(n).map(str::to_owned).collect()
}

fn write_file(lines: &[String]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    for line in lines {
        writeln!(file, "{line}").expect("write");
    }
    file
}

fn import(
    server: &TestServer,
    file: &tempfile::NamedTempFile,
    batch: usize,
) -> std::process::Command {
    let mut command = common::exemplar();
    command
        .args(["import", "--task", "sst2", "--server", &server.base])
        .args(["--batch-size", &batch.to_string()])
        .arg("--file")
        .arg(file.path());
    command
}

async fn example_texts(server: &TestServer) -> Vec<String> {
    let mut texts = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, body) = server
            .get(&format!("/v1/tasks/sst2/examples?limit=1000{cursor}"))
            .await;
        assert_eq!(status, 200, "{body}");
        for example in body["examples"].as_array().expect("page") {
            texts.push(example["text"].as_str().expect("text").to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return texts,
        }
    }
}

fn text_of(line: &str) -> String {
    let row: Value = serde_json::from_str(line).expect("JSON line");
    row["text"].as_str().expect("text").to_owned()
}

#[tokio::test]
async fn import_stops_at_the_first_bad_line_and_keeps_earlier_batches() {
    let server = TestServer::start(&[]).await;
    put_sst2_task(&server).await;
    let mut lines = sst2_lines(12);
    // Line 8 (in the second batch of 5) has a label the task does not know.
    lines[7] = r#"{"text": "fine film", "label": "neutral"}"#.to_owned();
    let file = write_file(&lines);
    let output = import(&server, &file, 5).output().expect("import runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 8") && stderr.contains("neutral"),
        "{stderr}"
    );
    assert!(stderr.contains("5 rows stored"), "{stderr}");
    let stored = example_texts(&server).await;
    let expected: Vec<String> = lines[..5].iter().map(|l| text_of(l)).collect();
    assert_eq!(stored, expected);

    // A line that is not JSON is caught before its batch is sent.
    lines[7] = "not json".to_owned();
    let file = write_file(&lines[5..]);
    let output = import(&server, &file, 5).output().expect("import runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert_eq!(example_texts(&server).await.len(), 5);

    // A clean file imports whole.
    let file = write_file(&sst2_lines(30)[5..]);
    let output = import(&server, &file, 10).output().expect("import runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(example_texts(&server).await.len(), 30);
}

#[tokio::test]
async fn a_server_killed_mid_import_keeps_whole_batches_only() {
    const BATCH: usize = 50;
    let mut server = TestServer::start(&[]).await;
    put_sst2_task(&server).await;
    let lines = sst2_lines(1000);
    let file = write_file(&lines);
    let mut importer = import(&server, &file, BATCH)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("import starts");

    // Wait until a few batches are in, then kill the server without warning.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, body) = server.get("/v1/tasks/sst2").await;
        if body["counts"]["examples"].as_i64().unwrap_or(0) >= 2 * BATCH as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "import made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let status = importer.wait().expect("importer ends");
    assert!(!status.success(), "the import reports the lost server");

    let server = server.restart().await;
    let stored = example_texts(&server).await;
    assert!(stored.len() >= 2 * BATCH && stored.len() < lines.len());
    assert_eq!(
        stored.len() % BATCH,
        0,
        "{} rows: a batch was torn",
        stored.len()
    );
    let expected: Vec<String> = lines[..stored.len()].iter().map(|l| text_of(l)).collect();
    assert_eq!(stored, expected);
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/retrieve",
            json!({"text": text_of(&lines[0]), "k": 1}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["demonstrations"][0]["text"], text_of(&lines[0]));
}

#[tokio::test]
async fn restarts_reuse_embeddings_and_a_new_embedder_re_embeds() {
    let server = TestServer::start(&[]).await;
    put_sst2_task(&server).await;
    let file = write_file(&sst2_lines(40));
    let output = import(&server, &file, 40).output().expect("import runs");
    assert!(output.status.success());
    let pool: Vec<Value> = (0..12)
        .map(|i| json!({"id": format!("pool{i}"), "text": format!("a film, take {i}")}))
        .collect();
    let (status, body) = server
        .post("/v1/tasks/sst2/pool", json!({ "items": pool }))
        .await;
    assert_eq!(status, 201, "{body}");
    let query = json!({"text": text_of(&sst2_lines(1)[0]), "k": 3});
    let (_, before) = server.post("/v1/tasks/sst2/retrieve", query.clone()).await;

    // The task is loaded on its first request after the restart.
    let server = server.restart().await;
    let (_, after) = server.post("/v1/tasks/sst2/retrieve", query.clone()).await;
    assert_eq!(before, after);
    assert!(server.log().contains("index loaded"), "{}", server.log());
    assert!(!server.log().contains("re-embedding"), "{}", server.log());

    // The same weights under another name count as another embedder.
    let renamed = tempfile::tempdir().expect("temp dir");
    let alias = renamed.path().join("minilm-renamed");
    std::os::unix::fs::symlink(common::models_dir().join("all-minilm-l6-v2"), &alias)
        .expect("link");
    let database = server.database_url.clone();
    drop(server);
    let server =
        TestServer::start_on(&database, &["--embedder", alias.to_str().expect("utf-8")]).await;
    let (status, again) = server.post("/v1/tasks/sst2/retrieve", query.clone()).await;
    assert_eq!(status, 200);
    let log = server.log();
    assert!(log.contains("re-embedding"), "{log}");
    assert_eq!(
        before["demonstrations"][0]["id"], again["demonstrations"][0]["id"],
        "the same weights give the same neighbours"
    );
    // The pool is re-embedded where a selection reads it, in the database too.
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/selections",
            json!({"method": "ideal", "budget": 3, "params": {"k": 4}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let database = sqlx::SqlitePool::connect(&server.database_url)
        .await
        .expect("the test database opens");
    let embedders = |table: &'static str| {
        let database = database.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!("SELECT DISTINCT embedder FROM {table}"))
                .fetch_all(&database)
                .await
                .expect("embedders")
        }
    };
    let examples = embedders("examples").await;
    assert_eq!(examples.len(), 1, "{examples:?}");
    assert_eq!(embedders("pool_items").await, examples);
    let restarted = server.restart().await;
    let (status, _) = restarted.post("/v1/tasks/sst2/retrieve", query).await;
    assert_eq!(status, 200);
    assert!(
        !restarted.log().contains("re-embedding"),
        "{}",
        restarted.log()
    );
}

/// A job whose stored row this version cannot read (written by another version, say)
/// is failed with why when a replica takes it up: never resumed again and again, never
/// left `running`, and the task's listing still answers.
#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn a_job_that_cannot_be_read_is_failed_not_resumed() {
    let server = TestServer::start(&["--job-lease-seconds", "2"]).await;
    server
        .sentiment_task(
            "films",
            json!([
                {"text": "a warm, funny film", "label": "positive"},
                {"text": "dull and far too long", "label": "negative"}
            ]),
        )
        .await;
    let (status, job) = server
        .post(
            "/v1/tasks/films/evaluate",
            common::long_background_evaluation(),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();

    // Killed while running; its stored request becomes one this version cannot read.
    let mut server = server;
    server.kill();
    let database = sqlx::SqlitePool::connect(&server.database_url)
        .await
        .expect("the test database opens");
    sqlx::query("UPDATE jobs SET request = '{\"rows\": \"from another version\"}' WHERE id = ?")
        .bind(&id)
        .execute(&database)
        .await
        .expect("rewritten");
    let server = server.restart().await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (state, error, owner): (String, Option<String>, Option<String>) =
            sqlx::query_as("SELECT state, error, lease_owner FROM jobs WHERE id = ?")
                .bind(&id)
                .fetch_one(&database)
                .await
                .expect("the row");
        if state == "failed" {
            let error = error.unwrap_or_default();
            assert!(error.contains("job:"), "{error}");
            assert_eq!(owner, None, "a failed job holds no lease");
            break;
        }
        assert_eq!(state, "running");
        assert!(
            Instant::now() < deadline,
            "the unreadable job was not failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = server.get("/v1/tasks/films/evaluations").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["evaluations"],
        json!([]),
        "the unreadable job is left out"
    );
}
