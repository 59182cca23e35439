//! Selective annotation over HTTP: every method, vote-k's two stages, stored and
//! repeatable selections, clear answers for odd budgets and pools, and the CLI.

use crate::common;

use crate::common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

fn ids(selection: &Value) -> Vec<String> {
    selection["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

/// SST-2 train rows 0..n as (id, text, label).
fn sst2(n: usize) -> Vec<(String, String, String)> {
    common::read_jsonl(common::shared_dir().join("data/sst2/train.jsonl"))
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(i, row)| {
            (
                format!("p{i}"),
                row["text"].as_str().expect("text").to_owned(),
                row["label"].as_str().expect("label").to_owned(),
            )
        })
        .collect()
}

/// Polls a selection until it is complete; answers it.
async fn wait_complete(server: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (status, selection) = server.get(&format!("/v1/tasks/sst2/selections/{id}")).await;
        assert_eq!(status, 200, "{selection}");
        if selection["complete"] == true {
            assert!(selection.get("progress").is_none());
            return selection;
        }
        assert_eq!(selection["state"], "predicting", "{selection}");
        assert!(
            selection["progress"]["of"].as_u64().is_some(),
            "{selection}"
        );
        assert!(
            Instant::now() < deadline,
            "stage 2 did not finish: {selection}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A task whose pool is SST-2 train rows 0..n.
async fn sst2_task(server: &TestServer, n: usize) -> Vec<(String, String, String)> {
    let task = json!({
        "labels": ["negative", "positive"],
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let (status, _) = server.call(Method::PUT, "/v1/tasks/sst2", Some(task)).await;
    assert_eq!(status, 201);
    let rows = sst2(n);
    let items: Vec<Value> = rows
        .iter()
        .map(|(id, text, _)| json!({"id": id, "text": text}))
        .collect();
    let (status, body) = server
        .post("/v1/tasks/sst2/pool", json!({"items": items}))
        .await;
    assert_eq!(status, 201, "{body}");
    rows
}

/// Posts the rows whose ids are in `ids` as examples.
async fn annotate(server: &TestServer, rows: &[(String, String, String)], ids: &[String]) {
    let annotations: Vec<Value> = rows
        .iter()
        .filter(|(id, _, _)| ids.contains(id))
        .map(|(id, text, label)| json!({"id": id, "text": text, "label": label}))
        .collect();
    let (status, body) = server
        .post("/v1/tasks/sst2/examples", json!({"examples": annotations}))
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn selections_choose_store_and_continue() {
    let server = TestServer::start(&[]).await;
    let rows = sst2_task(&server, 60).await;

    // Each one-pass method answers the budget at once, and repeats itself.
    for (method, params) in [
        ("random", json!({})),
        ("fast-vote-k", json!({"k": 10})),
        ("ideal", json!({})),
    ] {
        let request = json!({"method": method, "budget": 6, "seed": 1, "params": params});
        let (status, first) = server
            .post("/v1/tasks/sst2/selections", request.clone())
            .await;
        assert_eq!(status, 200, "{method}: {first}");
        assert_eq!(first["complete"], true);
        assert_eq!(first["state"], "complete");
        let chosen = ids(&first);
        assert_eq!(chosen.len(), 6);
        let distinct: std::collections::HashSet<&String> = chosen.iter().collect();
        assert_eq!(distinct.len(), 6, "{method} chose an item twice");
        let (_, again) = server.post("/v1/tasks/sst2/selections", request).await;
        assert_eq!(
            (again["id"].clone(), ids(&again)),
            (first["id"].clone(), chosen)
        );
        let (status, stored) = server
            .get(&format!(
                "/v1/tasks/sst2/selections/{}",
                first["id"].as_str().expect("id")
            ))
            .await;
        assert_eq!(status, 200);
        assert_eq!(ids(&stored), ids(&first));
        assert!(stored["timings"]["first_pass_s"].as_f64().is_some());
    }

    // Vote-k: stage 1 first; after annotation, the same call runs stage 2.
    let request =
        json!({"method": "vote-k", "budget": 8, "seed": 0, "params": {"k": 10, "stage_one": 3}});
    let (status, stage_one) = server
        .post("/v1/tasks/sst2/selections", request.clone())
        .await;
    assert_eq!(status, 200, "{stage_one}");
    assert_eq!(stage_one["complete"], false);
    assert_eq!(stage_one["state"], "awaiting_annotation");
    assert!(stage_one["next"]
        .as_str()
        .expect("next")
        .contains("annotate"));
    let first_ids = ids(&stage_one);
    assert_eq!(first_ids.len(), 3);
    let (_, repeated) = server
        .post("/v1/tasks/sst2/selections", request.clone())
        .await;
    assert_eq!(
        repeated["id"], stage_one["id"],
        "unannotated: the same stage 1"
    );
    assert_eq!(repeated["complete"], false);

    annotate(&server, &rows, &first_ids).await;
    // Stage 2 runs in the background: the call answers at once, the selection is polled.
    let (status, started) = server
        .post("/v1/tasks/sst2/selections", request.clone())
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["id"], stage_one["id"]);
    assert_eq!(started["state"], "predicting");
    assert_eq!(started["complete"], false);
    let (status, again) = server
        .post("/v1/tasks/sst2/selections", request.clone())
        .await;
    assert!(
        status == 202 || again["complete"] == true,
        "a repeated call joins the running stage 2: {status} {again}"
    );
    let complete = wait_complete(&server, started["id"].as_str().expect("id")).await;
    assert_eq!(complete["id"], stage_one["id"]);
    let all = ids(&complete);
    assert_eq!(all.len(), 8);
    assert_eq!(all[..3], first_ids[..]);
    assert!(all[3..].iter().all(|id| !first_ids.contains(id)));
    assert!(complete["timings"]["stage_two_predict_s"]
        .as_f64()
        .is_some());
    let path = format!(
        "/v1/tasks/sst2/selections/{}/continue",
        complete["id"].as_str().expect("id")
    );
    let (status, resumed) = server.post(&path, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&resumed),
        all,
        "continuing a complete selection changes nothing"
    );

    // Budgets and pools at the edges.
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/selections",
            json!({"method": "random", "budget": 0}),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_value"));
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/selections",
            json!({"method": "fast-vote-k", "budget": 5}),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "pool_too_small"), "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("150"));
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/selections",
            json!({"method": "ideal", "budget": 500}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&body).len(),
        57,
        "a budget over the pool takes the whole pool"
    );
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/selections",
            json!({"method": "best", "budget": 5}),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_body"));
    let (status, body) = server.get("/v1/tasks/sst2/selections/sel-missing").await;
    assert_eq!((status, code(&body)), (404, "selection_not_found"));
    let (status, body) = server
        .post(
            "/v1/tasks/nope/selections",
            json!({"method": "random", "budget": 5}),
        )
        .await;
    assert_eq!((status, code(&body)), (404, "task_not_found"));

    // The CLI runs the same selection against the same database.
    let output = common::exemplar()
        .args([
            "select", "--task", "sst2", "--method", "ideal", "--budget", "6", "--seed", "1",
        ])
        .args(["--database-url", &server.database_url, "--threads", "1"])
        .env("EXEMPLAR_MODELS_DIR", common::models_dir())
        .output()
        .expect("select runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(printed.len(), 6);
    let (_, over_http) = server
        .post(
            "/v1/tasks/sst2/selections",
            json!({"method": "ideal", "budget": 6, "seed": 1}),
        )
        .await;
    assert_eq!(
        ids(&over_http),
        printed,
        "the same method, seed and pool give the same items"
    );
}

/// Makes an 80-item pool, runs vote-k's stage 1, annotates it and starts stage 2;
/// answers the selection's id.
async fn start_stage_two(server: &TestServer, request: &Value) -> String {
    let rows = sst2_task(server, 80).await;
    let (_, stage_one) = server
        .post("/v1/tasks/sst2/selections", request.clone())
        .await;
    annotate(server, &rows, &ids(&stage_one)).await;
    let (status, started) = server
        .post("/v1/tasks/sst2/selections", request.clone())
        .await;
    assert_eq!(status, 202, "{started}");
    started["id"].as_str().expect("id").to_owned()
}

/// Polls `path` until its saved or running progress reaches `done`; answers it.
async fn wait_progress(server: &TestServer, path: &str, done: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, selection) = server.get(path).await;
        assert_eq!(
            selection["complete"], false,
            "stage 2 ended before the kill: {selection}"
        );
        if selection["progress"]["done"].as_u64().unwrap_or(0) >= done {
            return selection;
        }
        assert!(Instant::now() < deadline, "no progress: {selection}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `server` logged resuming the stage-2 job of selection `id`.
fn resumed_here(server: &TestServer, id: &str) -> bool {
    let job = format!("stage2-{id}");
    server
        .log()
        .lines()
        .any(|line| line.contains("resuming a job whose lease lapsed") && line.contains(&job))
}

/// Stage 2 runs on one replica at a time and outlives it: a `continue` sent to a second
/// replica starts no duplicate; when the runner is killed the second replica resumes
/// from the saved batches, and when that one is killed too it resumes by itself once
/// restarted; the result is the uninterrupted run's.
#[tokio::test]
async fn a_stage_two_outlives_killed_replicas_and_chooses_the_same_items() {
    let request =
        json!({"method": "vote-k", "budget": 8, "seed": 0, "params": {"k": 10, "stage_one": 2}});
    let lease = ["--job-lease-seconds", "3"];
    // Uninterrupted.
    let server = TestServer::start(&lease).await;
    let id = start_stage_two(&server, &request).await;
    let whole = ids(&wait_complete(&server, &id).await);
    drop(server);

    let mut first = TestServer::start(&lease).await;
    let id = start_stage_two(&first, &request).await;
    let path = format!("/v1/tasks/sst2/selections/{id}");
    let second = TestServer::start_on(&first.database_url, &lease).await;
    let (status, answer) = second.post(&format!("{path}/continue"), json!({})).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["state"], "predicting", "{answer}");

    let killed_at = wait_progress(&first, &path, 16).await;
    first.kill();
    // The second replica resumes once the lease lapses, from the saved batches.
    let resumed = wait_progress(&second, &path, 32).await;
    assert!(resumed_here(&second, &id), "{}", second.log());
    assert!(resumed["progress"]["done"].as_u64() >= killed_at["progress"]["done"].as_u64());
    drop(first);

    // Killed again, restarted: it resumes with no `continue`.
    let server = second.restart().await;
    let (status, after) = server.get(&path).await;
    assert_eq!(status, 200);
    let saved = after["progress"]["done"].as_u64().expect("saved progress");
    assert!((16..78).contains(&saved), "{after}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get(&path).await.1["state"] == "awaiting_annotation" {
        assert!(
            Instant::now() < deadline,
            "the restarted replica did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = wait_complete(&server, &id).await;
    assert_eq!(ids(&done), whole);
    assert!(resumed_here(&server, &id), "{}", server.log());
}

/// Stage 2 is a background job like an evaluation: it counts against the client's cap
/// of running jobs, and a client at its cap is refused 429 until a job of its ends.
#[tokio::test]
async fn a_stage_two_counts_against_the_clients_running_jobs() {
    let server = TestServer::start(&["--max-jobs-per-client", "1"]).await;
    let request =
        json!({"method": "vote-k", "budget": 8, "seed": 0, "params": {"k": 10, "stage_one": 2}});
    let rows = sst2_task(&server, 40).await;
    let (_, stage_one) = server
        .post("/v1/tasks/sst2/selections", request.clone())
        .await;
    annotate(&server, &rows, &ids(&stage_one)).await;
    let id = stage_one["id"].as_str().expect("id");

    // The client's one job: a long evaluation in the background.
    let rows: Vec<Value> = (0..200)
        .map(|i| json!({"text": format!("a film, take {i}"), "label": "positive"}))
        .collect();
    let (status, evaluation) = server
        .post(
            "/v1/tasks/sst2/evaluate",
            json!({"examples": rows, "k": 2, "background": true}),
        )
        .await;
    assert_eq!(status, 202, "{evaluation}");
    let continued = format!("/v1/tasks/sst2/selections/{id}/continue");
    let (status, body) = server.post(&continued, json!({})).await;
    assert_eq!((status, code(&body)), (429, "too_many_jobs"), "{body}");
    let (_, waiting) = server.get(&format!("/v1/tasks/sst2/selections/{id}")).await;
    assert_eq!(waiting["state"], "awaiting_annotation", "{waiting}");

    let evaluation = format!(
        "/v1/tasks/sst2/evaluations/{}",
        evaluation["id"].as_str().expect("id")
    );
    let (status, body) = server.call(Method::DELETE, &evaluation, None).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("cancelled")));
    let (status, started) = server.post(&continued, json!({})).await;
    assert_eq!(
        (status, started["state"].as_str()),
        (202, Some("predicting"))
    );
    // Asked again while it runs: the same job, not a second one.
    let (status, again) = server.post(&continued, json!({})).await;
    assert!(
        status == 202 || again["complete"] == true,
        "{status} {again}"
    );
    assert_eq!(
        wait_complete(&server, id).await["items"]
            .as_array()
            .map(Vec::len),
        Some(8)
    );
}
