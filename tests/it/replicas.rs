//! Two replicas on one database, as behind a load balancer: what one writes, the other
//! retrieves once it has synced; what one deletes, the other stops returning. On SQLite
//! (two processes on one file) and on PostgreSQL.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{TestDatabase, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// Milliseconds between syncs: short, so the test waits little.
const SYNC_MS: &str = "100";

fn sentiment_task() -> Value {
    json!({
        "labels": ["negative", "positive"],
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    })
}

/// The ids `server` retrieves for `query` (k = 3), or `None` while it answers an error.
async fn retrieved(server: &TestServer, query: &str) -> Option<Vec<String>> {
    retrieved_from(server, "sst2", query).await
}

/// The ids `server` retrieves from `task` for `query` (k = 3), or `None` while it
/// answers an error.
async fn retrieved_from(server: &TestServer, task: &str, query: &str) -> Option<Vec<String>> {
    let (status, body) = server
        .post(
            &format!("/v1/tasks/{task}/retrieve"),
            json!({"text": query, "k": 3}),
        )
        .await;
    (status == 200).then(|| {
        body["demonstrations"]
            .as_array()
            .expect("list")
            .iter()
            .map(|d| d["id"].as_str().expect("id").to_owned())
            .collect()
    })
}

/// Polls `server` until it retrieves `expected` for `query`; fails after a minute.
async fn wait_for(server: &TestServer, query: &str, expected: &[&str]) {
    wait_until(server, "sst2", query, |ids| ids == expected).await;
}

/// Polls `server` until what it retrieves from `task` for `query` passes `done`;
/// fails after a minute.
async fn wait_until(
    server: &TestServer,
    task: &str,
    query: &str,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = retrieved_from(server, task, query).await;
        if ids.as_deref().is_some_and(&done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{task}` still retrieves {ids:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the task on `server` with `examples`.
async fn make_task(server: &TestServer, examples: Value) {
    make_named_task(server, "sst2", examples).await;
}

/// Creates the sentiment task `task` on `server` with `examples`.
async fn make_named_task(server: &TestServer, task: &str, examples: Value) {
    let (status, body) = server
        .call(
            Method::PUT,
            &format!("/v1/tasks/{task}"),
            Some(sentiment_task()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            &format!("/v1/tasks/{task}/examples"),
            json!({ "examples": examples }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// What `writer` retrieves for `query` at once, once `reader` retrieves it too.
async fn reaches(writer: &TestServer, reader: &TestServer, query: &str) -> Vec<String> {
    let ids = retrieved(writer, query)
        .await
        .expect("the writer retrieves at once");
    let expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_for(reader, query, &expected).await;
    ids
}

async fn replicas_scenario(database_url: &str) {
    let args = ["--sync-interval-ms", SYNC_MS];
    let a = TestServer::start_on(database_url, &args).await;
    let b = TestServer::start_on(database_url, &args).await;
    let query = "a witty and moving film";

    make_task(
        &a,
        json!([
            {"id": "e1", "text": "a gorgeous, witty and moving film", "label": "positive"},
            {"id": "e2", "text": "the acting was wooden and the plot made no sense", "label": "negative"},
            {"id": "e3", "text": "I loved every minute of this delightful comedy", "label": "positive"},
            {"id": "e4", "text": "a tedious, overlong mess", "label": "negative"}
        ]),
    )
    .await;
    let ids = reaches(&a, &b, query).await;
    assert_eq!(ids[0], "e1", "{ids:?}");

    // A delete on B reaches A; the example never comes back.
    let (status, _) = b
        .call(Method::DELETE, "/v1/tasks/sst2/examples/e1", None)
        .await;
    assert_eq!(status, 204);
    let without_e1 = reaches(&b, &a, query).await;
    assert!(!without_e1.contains(&"e1".to_owned()), "{without_e1:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(retrieved(&a, query).await, Some(without_e1));

    // A task deleted on A and made again with other examples: B forgets the old ones.
    let (status, _) = a.call(Method::DELETE, "/v1/tasks/sst2", None).await;
    assert_eq!(status, 204);
    assert_eq!(retrieved(&b, query).await, None, "the task is gone at once");
    make_task(
        &a,
        json!([
            {"id": "f1", "text": "a witty, moving picture", "label": "positive"},
            {"id": "f2", "text": "a boring waste of time", "label": "negative"},
            {"id": "f3", "text": "clumsy and dull", "label": "negative"}
        ]),
    )
    .await;
    let ids = reaches(&a, &b, query).await;
    assert_eq!(ids.len(), 3, "{ids:?}");
}

#[tokio::test]
async fn replicas_share_writes_on_sqlite() {
    let database = TestDatabase::sqlite();
    replicas_scenario(&database.url).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs this"]
async fn replicas_share_writes_on_postgres() {
    let database = TestDatabase::postgres().await;
    replicas_scenario(&database.url).await;
}

/// How many full task scans `server`'s replica sync has made.
async fn scans(server: &TestServer) -> f64 {
    let metrics = server.metrics().await;
    common::metric_sample(&metrics, "exemplar_sync_task_scans_total", &[]).unwrap_or(0.0)
}

/// How many logged changes `server`'s replica sync has applied.
async fn changes_applied(server: &TestServer) -> f64 {
    let metrics = server.metrics().await;
    common::metric_sample(&metrics, "exemplar_sync_changes_applied_total", &[]).unwrap_or(0.0)
}

/// An idle sync reads one number per task; a busy one reads the logged changes since
/// its last sync, not the task's seqs.
#[tokio::test]
async fn an_idle_sync_reads_no_task_twice_and_a_busy_one_reads_the_changes() {
    let database = TestDatabase::sqlite();
    let args = ["--sync-interval-ms", SYNC_MS];
    let a = TestServer::start_on(&database.url, &args).await;
    let b = TestServer::start_on(&database.url, &args).await;
    make_task(
        &a,
        json!([
            {"id": "e1", "text": "a gorgeous, witty and moving film", "label": "positive"},
            {"id": "e2", "text": "a tedious, overlong mess", "label": "negative"}
        ]),
    )
    .await;
    let query = "a witty and moving film";
    reaches(&a, &b, query).await;

    // Ten sync intervals with no write: no task is scanned again.
    let before = scans(&b).await;
    tokio::time::sleep(Duration::from_millis(10 * 100)).await;
    assert_eq!(scans(&b).await, before, "an idle sync scanned a task");

    // A write and a delete on A: B applies the two logged changes, scans nothing, and
    // retrieves the new example and not the deleted one.
    let applied = changes_applied(&b).await;
    let (status, _) = a
        .call(reqwest::Method::DELETE, "/v1/tasks/sst2/examples/e2", None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = a
        .post(
            "/v1/tasks/sst2/examples",
            json!({"examples": [{"id": "e3", "text": "a witty, moving and gorgeous film", "label": "positive"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ids = retrieved(&b, query).await.unwrap_or_default();
        if ids.contains(&"e3".to_owned()) && !ids.contains(&"e2".to_owned()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B did not apply A's changes: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(scans(&b).await, before, "a busy sync scanned the task");
    assert_eq!(changes_applied(&b).await - applied, 2.0);
}

/// A task deleted and made again within one second, with as many changes to its
/// examples as before, is another task to a replica that did not sync in between: it
/// forgets the old examples and indexes the new ones.
#[tokio::test]
async fn a_task_made_again_within_a_second_is_told_apart_by_other_replicas() {
    let database = TestDatabase::sqlite();
    let a = TestServer::start_on(&database.url, &["--sync-interval-ms", SYNC_MS]).await;
    // B syncs seldom, so that it does not sync between the delete and the new task.
    let b = TestServer::start_on(&database.url, &["--sync-interval-ms", "3000"]).await;
    let query = "a witty and moving film";
    let old = json!([
        {"id": "e1", "text": "a gorgeous, witty and moving film", "label": "positive"},
        {"id": "e2", "text": "a tedious, overlong mess", "label": "negative"}
    ]);
    make_task(&a, old).await;
    wait_for(&b, query, &["e1", "e2"]).await;

    // Just after a second begins, so that both tasks are made within it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    tokio::time::sleep(Duration::from_millis(1010 - u64::from(now.subsec_millis()))).await;
    let (status, _) = a.call(Method::DELETE, "/v1/tasks/sst2", None).await;
    assert_eq!(status, 204);
    make_task(
        &a,
        json!([
            {"id": "f1", "text": "a witty, moving picture", "label": "positive"},
            {"id": "f2", "text": "a boring waste of time", "label": "negative"}
        ]),
    )
    .await;
    wait_for(&b, query, &["f1", "f2"]).await;
}

/// A task whose stored examples cannot be read (a row another version wrote, say) is
/// retried at each sync without holding up the other tasks' writes.
#[tokio::test]
async fn a_task_that_cannot_sync_does_not_hold_up_the_others() {
    let database = TestDatabase::sqlite();
    let args = ["--sync-interval-ms", SYNC_MS];
    let a = TestServer::start_on(&database.url, &args).await;
    let b = TestServer::start_on(&database.url, &args).await;
    let first =
        json!([{"id": "e1", "text": "a gorgeous, witty and moving film", "label": "positive"}]);
    make_named_task(&a, "broken", first.clone()).await;
    // Several healthy tasks: a sync stopped by the broken one would miss some of them
    // whatever order it visits the tasks in.
    let healthy = ["one", "two", "three", "four"];
    for task in healthy {
        make_named_task(&a, task, first.clone()).await;
    }
    // Every task asked for on b, so b holds them all and syncs them all.
    let query = "a witty and moving film";
    for task in healthy.iter().chain(&["broken"]) {
        wait_until(&b, task, query, |ids| ids == ["e1"]).await;
    }

    // A row whose embedding is not a whole number of floats, logged as a change.
    let pool = sqlx::sqlite::SqlitePool::connect(&database.url)
        .await
        .expect("opens the database");
    sqlx::query(
        "INSERT INTO examples (task, id, text, text_pair, label, embedding, embedder, created_at) \
         SELECT task, 'unreadable', text, text_pair, label, x'010203', embedder, created_at \
         FROM examples WHERE task = 'broken'",
    )
    .execute(&pool)
    .await
    .expect("inserts");
    sqlx::query("UPDATE tasks SET examples_version = examples_version + 1 WHERE name = 'broken'")
        .execute(&pool)
        .await
        .expect("bumps the version");
    pool.close().await;

    let second = json!([{"id": "e2", "text": "a witty, moving picture", "label": "positive"}]);
    for task in healthy {
        let (status, body) = a
            .post(
                &format!("/v1/tasks/{task}/examples"),
                json!({ "examples": second }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    for task in healthy {
        wait_until(&b, task, query, |ids| ids.iter().any(|id| id == "e2")).await;
    }
    let metrics = b.metrics().await;
    let failures =
        common::metric_sample(&metrics, "exemplar_sync_task_failures_total", &[]).unwrap_or(0.0);
    assert!(failures >= 1.0, "the broken task's sync was not counted");
}
