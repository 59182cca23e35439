//! Long requests over HTTP on a real server: evaluation as a background job (polled,
//! resumed after a crash, cancelled, the same table as in the request), answers
//! streamed a line per input, and work that stops when nobody waits for it (after a
//! 408, a closed connection, or the grace after SIGTERM).

use crate::common;

use std::time::{Duration, Instant};

use crate::common::TestServer;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

/// Lines `range` of an SST-2 file.
fn sst2(file: &str, range: std::ops::Range<usize>) -> Vec<Value> {
    common::read_jsonl(common::shared_dir().join("data/sst2").join(file))[range].to_vec()
}

/// `n` labelled SST-2 test rows, as evaluate takes them.
fn labelled(n: usize) -> Vec<Value> {
    sst2("test.jsonl", 0..n)
        .into_iter()
        .map(|row| json!({"text": row["text"], "label": row["label"]}))
        .collect()
}

/// `n` SST-2 test texts, as predict takes them.
fn inputs(n: usize) -> Vec<Value> {
    sst2("test.jsonl", 0..n)
        .into_iter()
        .map(|row| json!({"text": row["text"]}))
        .collect()
}

async fn sst2_task(server: &TestServer) {
    let examples: Vec<Value> = sst2("train.jsonl", 0..24)
        .into_iter()
        .map(|row| json!({"text": row["text"], "label": row["label"]}))
        .collect();
    server.sentiment_task("sst2", json!(examples)).await;
}

async fn predictions_total(server: &TestServer) -> f64 {
    common::metric_sample(&server.metrics().await, "exemplar_predictions_total", &[]).unwrap_or(0.0)
}

/// Posts `body` to `path` asking for NDJSON, and returns the response.
async fn post_ndjson(server: &TestServer, path: &str, body: &Value) -> reqwest::Response {
    server
        .client
        .post(server.url(path))
        .header("accept", "application/x-ndjson")
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// Reads the next whole line of a streamed body into `buffer`'s first line.
async fn next_line<B: AsRef<[u8]>>(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin),
    buffer: &mut String,
) -> Option<Value> {
    loop {
        if let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            return Some(serde_json::from_str(line.trim()).expect("each line is JSON"));
        }
        let chunk = stream.next().await?.expect("the stream reads");
        buffer.push_str(std::str::from_utf8(chunk.as_ref()).expect("UTF-8"));
    }
}

/// Waits until the prediction counter has stood still for two seconds and answers it.
async fn settled_predictions(server: &TestServer) -> f64 {
    let mut last = predictions_total(server).await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = predictions_total(server).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn an_evaluation_job_is_polled_resumed_after_a_crash_and_answers_the_synchronous_table() {
    let server = TestServer::start(&["--job-lease-seconds", "2"]).await;
    sst2_task(&server).await;
    let rows = labelled(40);

    // The table in the request, forced for 40 rows.
    let (status, synchronous) = server
        .post(
            "/v1/tasks/sst2/evaluate",
            json!({"examples": rows, "k": 4, "background": false}),
        )
        .await;
    assert_eq!(status, 200, "{synchronous}");
    assert_eq!(synchronous["n"], 40);

    // The same rows as a job: 202, a Location, progress.
    let response = server
        .client
        .post(server.url("/v1/tasks/sst2/evaluate"))
        .json(&json!({"examples": rows, "k": 4, "background": true}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let job: Value = response.json().await.expect("JSON");
    let id = job["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/tasks/sst2/evaluations/{id}"));
    assert_eq!(job["state"], "running", "{job}");
    assert_eq!(job["progress"]["of"], 40, "{job}");

    // Killed once the first batch of 16 is saved: nothing of the shutdown code runs.
    let saved = server
        .poll_until(&location, |job| {
            job["progress"]["done"].as_u64() >= Some(16)
        })
        .await;
    assert!(saved["progress"]["accuracy"].as_f64().is_some(), "{saved}");
    assert!(
        saved["progress"]["rows_per_second"].as_f64() > Some(0.0),
        "{saved}"
    );
    let server = server.restart().await;

    // The restarted replica finds the lapsed lease and resumes from the saved batch.
    let done = server
        .poll_until(&location, |job| job["state"] != "running")
        .await;
    assert_eq!(done["state"], "complete", "{done}");
    assert_eq!(done["progress"]["done"], 40, "{done}");
    assert_eq!(
        done["result"], synchronous,
        "the job's table is the request's"
    );
    let resumed = predictions_total(&server).await;
    let unsaved_at_kill = 40.0 - saved["progress"]["done"].as_f64().expect("done");
    assert!(
        resumed <= unsaved_at_kill,
        "not resumed from the saved batch: {resumed} predictions after the restart"
    );

    let (status, list) = server.get("/v1/tasks/sst2/evaluations").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["evaluations"][0]["id"], id.as_str(), "{list}");
    // An ended job is answered as it is.
    let (status, body) = server.call(Method::DELETE, &location, None).await;
    assert_eq!(
        (status, &body["state"]),
        (200, &json!("complete")),
        "{body}"
    );
    let (status, body) = server.get("/v1/tasks/sst2/evaluations/eval-nope").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "evaluation_not_found");
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn a_cancelled_job_stops_after_its_row_and_more_rows_than_a_request_make_a_job() {
    let server = TestServer::start(&[]).await;
    sst2_task(&server).await;

    // 65 rows without `background`: a job.
    let (status, job) = server
        .post(
            "/v1/tasks/sst2/evaluate",
            json!({"examples": labelled(65), "k": 4}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let path = format!(
        "/v1/tasks/sst2/evaluations/{}",
        job["id"].as_str().expect("id")
    );
    while predictions_total(&server).await < 2.0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, cancelled) = server.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let at_cancel = predictions_total(&server).await;
    let settled = settled_predictions(&server).await;
    assert!(
        settled <= at_cancel + 1.0,
        "predictions went on after the cancel: {at_cancel} then {settled}"
    );
    let (_, after) = server.get(&path).await;
    assert_eq!(after["state"], "cancelled", "{after}");
    assert!(after["progress"]["done"].as_u64() < Some(65), "{after}");

    // Streaming and background do not go together.
    let response = post_ndjson(
        &server,
        "/v1/tasks/sst2/evaluate",
        &json!({"examples": labelled(2), "background": true}),
    )
    .await;
    assert_eq!(response.status(), 422);
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn predict_and_evaluate_stream_a_line_per_input_as_ndjson_or_events() {
    let server = TestServer::start(&[]).await;
    sst2_task(&server).await;

    let (status, whole) = server
        .post(
            "/v1/tasks/sst2/predict",
            json!({"inputs": inputs(5), "k": 4}),
        )
        .await;
    assert_eq!(status, 200, "{whole}");
    let response = post_ndjson(
        &server,
        "/v1/tasks/sst2/predict",
        &json!({"inputs": inputs(5), "k": 4}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i, "{line}");
        assert_eq!(line["label"], whole["predictions"][i]["label"], "{line}");
        assert_eq!(
            line["probabilities"], whole["predictions"][i]["probabilities"],
            "{line}"
        );
    }

    let rows = labelled(6);
    let (status, table) = server
        .post("/v1/tasks/sst2/evaluate", json!({"examples": rows, "k": 4}))
        .await;
    assert_eq!(status, 200, "{table}");
    let response = server
        .client
        .post(server.url("/v1/tasks/sst2/evaluate"))
        .header("accept", "text/event-stream")
        .json(&json!({"examples": rows, "k": 4}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let events: Vec<(&str, Value)> = text
        .split("\n\n")
        .filter(|e| e.contains("data:"))
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .unwrap_or("")
                .trim();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .expect("data");
            (name, serde_json::from_str(data.trim()).expect("JSON data"))
        })
        .collect();
    assert_eq!(events.len(), 7, "{text}");
    for (i, (name, row)) in events[..6].iter().enumerate() {
        assert_eq!(*name, "row");
        assert_eq!(row["index"], i);
        assert_eq!(row["label"], rows[i]["label"]);
        assert_eq!(row["correct"], json!(row["label"] == row["predicted"]));
    }
    assert_eq!(events[6].0, "evaluation");
    assert_eq!(events[6].1["evaluation"], table);

    // A failure after the first line is the last line.
    let response = post_ndjson(
        &server,
        "/v1/tasks/sst2/predict",
        &json!({"inputs": [{"text": "fine"}, {"text": "a ".repeat(3000)}], "k": 4, "max_prompt_tokens": 600}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["index"], 0);
    assert_eq!(
        lines[1]["error"]["code"], "context_length_exceeded",
        "{text}"
    );
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn after_a_timeout_or_a_closed_connection_the_model_stops_within_one_input() {
    // Long enough for a debug build on a slow machine to answer the first input (it pays
    // the cold caches: about 5 s on CI's machine), far too short for 64 inputs.
    let server = TestServer::start(&["--request-timeout-secs", "20"]).await;
    sst2_task(&server).await;

    // Timed out: 408, and at most the input in flight is finished after it.
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/predict",
            json!({"inputs": inputs(64), "k": 4}),
        )
        .await;
    assert_eq!(status, 408, "{body}");
    let at_timeout = predictions_total(&server).await;
    let settled = settled_predictions(&server).await;
    assert!(settled >= 1.0, "nothing was predicted before the 408");
    assert!(
        settled <= at_timeout + 1.0,
        "predictions went on after the 408: {at_timeout} then {settled}"
    );

    // A client that goes away after two lines of a stream (streams outlive the timeout).
    let response = post_ndjson(
        &server,
        "/v1/tasks/sst2/evaluate",
        &json!({"examples": labelled(64), "k": 4}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    for index in 0..2 {
        let line = next_line(&mut body, &mut buffer).await.expect("a line");
        assert_eq!(line["index"], index, "{line}");
    }
    drop(body);
    let at_close = predictions_total(&server).await;
    let settled_after_close = settled_predictions(&server).await;
    assert!(
        settled_after_close <= at_close + 1.0,
        "predictions went on after the client left: {at_close} then {settled_after_close}"
    );
    assert!(settled_after_close - settled < 64.0);
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn sigterm_cancels_the_work_still_running_after_the_grace_and_the_process_exits() {
    let mut server =
        TestServer::start(&["--drain-seconds", "1", "--shutdown-grace-seconds", "1"]).await;
    sst2_task(&server).await;

    let in_request = {
        let client = server.client.clone();
        let url = server.url("/v1/tasks/sst2/predict");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"inputs": inputs(64), "k": 4}))
                .send()
                .await
                .expect("answered");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        })
    };
    let response = post_ndjson(
        &server,
        "/v1/tasks/sst2/evaluate",
        &json!({"examples": labelled(64), "k": 4}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let first = next_line(&mut stream, &mut buffer).await.expect("a line");
    assert_eq!(first["index"], 0, "{first}");

    let signalled = Instant::now();
    server.terminate();
    let mut last = first;
    while let Some(line) = next_line(&mut stream, &mut buffer).await {
        last = line;
    }
    assert_eq!(last["error"]["code"], "shutting_down", "{last}");
    let (status, body) = in_request.await.expect("client task");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    let exit = server
        .wait_exit(Duration::from_secs(60))
        .expect("the server exits once the grace is over");
    assert!(exit.success(), "exit status {exit}\n{}", server.log());
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "left before the drain and the grace"
    );
    assert!(server
        .log()
        .contains("cancelling the requests still running"));
}
