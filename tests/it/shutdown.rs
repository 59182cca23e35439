//! Stopping for a rolling update: on SIGTERM `/ready` turns 503 at once while requests
//! are still served for the drain period, a request in flight is answered, and the
//! process exits 0. And the log formats: JSON lines, or plain text without colour codes
//! when standard error is not a terminal.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::TestServer;
use serde_json::{json, Value};

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn sigterm_drains_answers_the_request_in_flight_and_exits_zero() {
    // A long grace: on a loaded machine the completion may outlast the drain, and this
    // test is about the drain (the cut after the grace is `tests/long_requests.rs`'s).
    let mut server = TestServer::start(&[
        "--drain-seconds",
        "3",
        "--shutdown-grace-seconds",
        "300",
        "--log-format",
        "json",
    ])
    .await;
    let (status, _) = server.get("/ready").await;
    assert_eq!(status, 200);

    // A completion long enough to be running when the signal comes.
    let client = server.client.clone();
    let url = server.url("/v1/completions");
    let in_flight = tokio::spawn(async move {
        let response = client
            .post(url)
            .json(&json!({"prompt": "Once upon a time", "max_tokens": 128, "temperature": 0}))
            .send()
            .await
            .expect("the request in flight is answered");
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.expect("JSON"))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the completion ended before SIGTERM"
    );
    let signalled = Instant::now();
    server.terminate();

    // During the drain: not ready, but still serving, on new connections too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = server.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down");
    let fresh = reqwest::Client::new();
    let health = fresh
        .get(server.url("/health"))
        .send()
        .await
        .expect("served");
    assert_eq!(health.status(), 200);
    assert!(signalled.elapsed() < Duration::from_secs(3));

    let (status, body) = in_flight.await.expect("client task");
    assert_eq!(status, 200, "{body}");
    assert!(
        body["usage"]["completion_tokens"].as_u64() > Some(0),
        "{body}"
    );

    let exit = server
        .wait_exit(Duration::from_secs(60))
        .expect("the server exits after the drain");
    assert!(exit.success(), "exit status {exit}\n{}", server.log());
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "left before the drain ended"
    );

    let log = server.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["message"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("closing the listener"), "{log}");
}

#[test]
fn text_logs_have_no_colour_codes_when_not_on_a_terminal() {
    let database = common::TestDatabase::sqlite();
    let output = common::exemplar()
        .arg("serve")
        .args(["--addr", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--database-url", &database.url])
        .args(["--model", "/nonexistent/model.gguf"])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .output()
        .expect("exemplar runs");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in {log:?}");
}
