//! Long work is bounded like short work: running background jobs are capped per client
//! (its key), per task and per replica, past which a new one is 429 `too_many_jobs`
//! with `Retry-After` while other clients are still served; ended jobs are forgotten
//! after the retention.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{
    long_background_evaluation, metric_sample, read_jsonl, shared_dir, TestServer,
};

const ADMIN: &str = "job-limits-test-admin-key-0123456789abcdef";

/// A task `name` with two examples, made with the admin key.
async fn task(server: &TestServer, name: &str) {
    let examples = json!([
        {"text": "a warm, funny film", "label": "positive"},
        {"text": "dull and far too long", "label": "negative"}
    ]);
    server.sentiment_task_as(Some(ADMIN), name, examples).await;
}

async fn read_key(server: &TestServer) -> String {
    let (status, key) = server
        .call_as(
            Some(ADMIN),
            Method::POST,
            "/v1/keys",
            Some(json!({"scope": "read"})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().expect("key").to_owned()
}

/// Starts an evaluation of `task` as `key`: the status, the job's id or the error.
async fn evaluate(server: &TestServer, key: &str, task: &str, body: &Value) -> (u16, Value) {
    let response = server
        .client
        .post(server.url(&format!("/v1/tasks/{task}/evaluate")))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    if status == 429 {
        assert!(response.headers().contains_key("retry-after"));
    }
    (status, response.json().await.expect("JSON"))
}

fn refusal(body: &Value) -> (&str, &str) {
    (
        body["error"]["code"].as_str().unwrap_or_default(),
        body["error"]["message"].as_str().unwrap_or_default(),
    )
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn running_jobs_are_capped_per_client_task_and_replica() {
    let server = TestServer::start_with_env(
        &[
            "--max-jobs-per-client",
            "2",
            "--max-jobs-per-task",
            "3",
            "--max-jobs-per-replica",
            "4",
        ],
        &[("EXEMPLAR_BOOTSTRAP_KEY", ADMIN)],
    )
    .await;
    task(&server, "first").await;
    task(&server, "second").await;
    let (a, b, c) = (
        read_key(&server).await,
        read_key(&server).await,
        read_key(&server).await,
    );
    let long = long_background_evaluation();
    let mut started = Vec::new();

    // One client asking again and again: two jobs, then 429 for the rest.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (status, body) = evaluate(&server, &a, "first", &long).await;
        statuses.push(status);
        match status {
            202 => started.push(("first", body["id"].as_str().expect("id").to_owned())),
            _ => {
                let (code, message) = refusal(&body);
                assert_eq!(code, "too_many_jobs", "{body}");
                assert!(message.contains("this client already runs 2"), "{message}");
            }
        }
    }
    assert_eq!(statuses, [202, 202, 429, 429, 429, 429, 429, 429, 429, 429]);

    // Another client: the task's third job, then the task is full.
    let (status, body) = evaluate(&server, &b, "first", &long).await;
    assert_eq!(status, 202, "{body}");
    started.push(("first", body["id"].as_str().expect("id").to_owned()));
    let (status, body) = evaluate(&server, &b, "first", &long).await;
    assert_eq!((status, refusal(&body).0), (429, "too_many_jobs"), "{body}");
    assert!(refusal(&body).1.contains("task `first`"), "{body}");

    // Another task: the replica's fourth job, then the replica is full.
    let (status, body) = evaluate(&server, &b, "second", &long).await;
    assert_eq!(status, 202, "{body}");
    started.push(("second", body["id"].as_str().expect("id").to_owned()));
    let (status, body) = evaluate(&server, &c, "second", &long).await;
    assert_eq!((status, refusal(&body).0), (429, "too_many_jobs"), "{body}");
    assert!(refusal(&body).1.contains("this replica"), "{body}");

    // A third client's prediction is served meanwhile.
    let (status, body) = server
        .call_as(
            Some(&c),
            Method::POST,
            "/v1/tasks/first/predict",
            Some(json!({"inputs": [{"text": "a lovely film"}], "k": 2})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A cancelled job no longer counts: its client may start another.
    for (task, id) in &started {
        let path = format!("/v1/tasks/{task}/evaluations/{id}");
        let (status, body) = server
            .call_as(Some(ADMIN), Method::DELETE, &path, None)
            .await;
        assert_eq!(
            (status, body["state"].as_str()),
            (200, Some("cancelled")),
            "{body}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let short = json!({"examples": [{"text": "fine", "label": "positive"}], "background": true});
    loop {
        // The cancelled runs stop after the row they are on.
        let (status, body) = evaluate(&server, &a, "first", &short).await;
        if status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn ended_jobs_are_forgotten_after_the_retention() {
    let server = TestServer::start_with_env(
        &["--job-retention-seconds", "1", "--job-lease-seconds", "2"],
        &[("EXEMPLAR_BOOTSTRAP_KEY", ADMIN)],
    )
    .await;
    task(&server, "films").await;
    let body = json!({"examples": [{"text": "fine", "label": "positive"}], "background": true});
    let (status, job) = evaluate(&server, ADMIN, "films", &body).await;
    assert_eq!(status, 202, "{job}");
    let path = format!(
        "/v1/tasks/films/evaluations/{}",
        job["id"].as_str().expect("id")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_complete = false;
    loop {
        let (status, job) = server.call_as(Some(ADMIN), Method::GET, &path, None).await;
        match (status, job["state"].as_str()) {
            (200, Some("complete")) => seen_complete = true,
            (200, Some("running")) => {}
            (404, _) => {
                assert_eq!(refusal(&job).0, "evaluation_not_found");
                break;
            }
            other => panic!("unexpected {other:?}: {job}"),
        }
        assert!(
            Instant::now() < deadline,
            "the ended job is still kept: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen_complete,
        "the job was forgotten before it was seen complete"
    );
}

/// A read-scoped key may cancel its own evaluation, not another client's; an admin
/// may cancel any.
#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn an_evaluation_is_cancelled_by_its_client_or_an_admin_only() {
    let server = TestServer::start_with_env(&[], &[("EXEMPLAR_BOOTSTRAP_KEY", ADMIN)]).await;
    task(&server, "films").await;
    let (owner, other) = (read_key(&server).await, read_key(&server).await);
    let long = long_background_evaluation();
    let mut paths = Vec::new();
    for _ in 0..2 {
        let (status, job) = evaluate(&server, &owner, "films", &long).await;
        assert_eq!(status, 202, "{job}");
        paths.push(format!(
            "/v1/tasks/films/evaluations/{}",
            job["id"].as_str().expect("id")
        ));
    }

    let (status, body) = server
        .call_as(Some(&other), Method::DELETE, &paths[0], None)
        .await;
    assert_eq!((status, refusal(&body).0), (403, "forbidden"), "{body}");
    let (_, job) = server
        .call_as(Some(&owner), Method::GET, &paths[0], None)
        .await;
    assert_eq!(
        job["state"], "running",
        "another client's refused cancel stopped it"
    );

    for (key, path) in [(owner.as_str(), &paths[0]), (ADMIN, &paths[1])] {
        let (status, body) = server.call_as(Some(key), Method::DELETE, path, None).await;
        assert_eq!(
            (status, body["state"].as_str()),
            (200, Some("cancelled")),
            "{body}"
        );
    }
}

/// An evaluation that meets a full model queue (other clients' completions keep it
/// full) pauses and runs on from its last save on its own replica, holding its
/// lease, and completes once the burst is over.
#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn a_job_that_meets_a_full_queue_waits_on_its_replica_and_completes() {
    // Room for a batch's inputs in flight, not for the job's and a flood's; no
    // per-client limits, so the only refusal the burst can meet is the full queue.
    let server = TestServer::start_with_env(
        &[
            "--queue-capacity",
            "4",
            "--client-rate",
            "0",
            "--client-max-in-flight",
            "0",
        ],
        &[("EXEMPLAR_BOOTSTRAP_KEY", ADMIN)],
    )
    .await;
    task(&server, "films").await;

    // A burst: more completions than the scheduler runs at once (8) and the queue
    // holds, each client sending again as soon as it is answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let completion = json!({"prompt": "Tell me a story about a dragon.", "max_tokens": 8});
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, body) = (
                server.client.clone(),
                server.url("/v1/completions"),
                completion.clone(),
            );
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = client
                        .post(&url)
                        .bearer_auth(ADMIN)
                        .json(&body)
                        .send()
                        .await;
                }
            })
        })
        .collect();
    // The queue is full once a completion is refused.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = server
            .call_as(
                Some(ADMIN),
                Method::POST,
                "/v1/completions",
                Some(completion.clone()),
            )
            .await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "overloaded", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the burst never filled the queue"
        );
    }

    let rows: Vec<Value> = read_jsonl(shared_dir().join("data/sst2/test.jsonl"))
        .into_iter()
        .take(8)
        .collect();
    let body = json!({"examples": rows, "background": true, "k": 2});
    let (status, job) = evaluate(&server, ADMIN, "films", &body).await;
    assert_eq!(status, 202, "{job}");
    let path = format!(
        "/v1/tasks/films/evaluations/{}",
        job["id"].as_str().expect("id")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in flood {
        client.await.expect("a flooding client");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let (_, job) = server.call_as(Some(ADMIN), Method::GET, &path, None).await;
        if job["state"] != "running" {
            break job;
        }
        assert!(Instant::now() < deadline, "still running: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job["state"], "complete", "{job}");
    assert_eq!(job["result"]["n"], 8, "{job}");
    let metrics = server.metrics().await;
    let waits = metric_sample(
        &metrics,
        "exemplar_job_queue_waits_total",
        &[r#"kind="evaluation""#],
    )
    .unwrap_or(0.0);
    assert!(waits >= 1.0, "the job never met the full queue: {metrics}");
}
