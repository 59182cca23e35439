//! One client flooding cannot starve another: past its requests in flight or its rate,
//! a client is answered 429 with `Retry-After`, while a second client (another address)
//! is served; with keys, each key has its own share.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::common::TestServer;
use serde_json::{json, Value};

/// A client whose requests come from `address` (any 127.x.y.z reaches the server).
fn client_from(address: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(address)))
        .timeout(Duration::from_secs(300))
        .build()
        .expect("HTTP client")
}

async fn predict(client: &reqwest::Client, server: &TestServer) -> (u16, Option<String>, Value) {
    let inputs: Vec<Value> = (0..8)
        .map(|i| json!({"text": format!("film number {i}")}))
        .collect();
    let response = client
        .post(server.url("/v1/tasks/films/predict"))
        .json(&json!({ "inputs": inputs, "k": 2 }))
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// A server holding each client to `max_in_flight` requests at once (no rate limit),
/// with a two-example task `films`.
async fn films_server(max_in_flight: usize) -> TestServer {
    let max_in_flight = max_in_flight.to_string();
    let server = TestServer::start(&[
        "--client-max-in-flight",
        &max_in_flight,
        "--client-rate",
        "0",
    ])
    .await;
    server
        .sentiment_task(
            "films",
            json!([
                {"text": "a warm, funny and moving film", "label": "positive"},
                {"text": "a dull and tedious mess", "label": "negative"}
            ]),
        )
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "loads the models; run with --include-ignored"]
async fn a_flooding_client_is_held_to_its_requests_in_flight_and_another_is_served() {
    let server = films_server(2).await;
    let flooder = client_from([127, 0, 0, 1]);
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let (flooder, url) = (flooder.clone(), server.url("/v1/tasks/films/predict"));
            tokio::spawn(async move {
                let response = flooder
                    .post(url)
                    .json(
                        &json!({"inputs": [{"text": "a film"}, {"text": "another film"}], "k": 2}),
                    )
                    .send()
                    .await
                    .expect("sent");
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, retry_after, body)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, body) = predict(&client_from([127, 0, 0, 2]), &server).await;
    assert_eq!(status, 200, "the other client is served: {body}");

    let mut answered = 0;
    let mut refused = 0;
    for request in flood {
        let (status, retry_after, body) = request.await.expect("client task");
        match status {
            200 => answered += 1,
            429 => {
                assert!(retry_after, "429 without Retry-After: {body}");
                assert_eq!(body["error"]["code"], "too_many_in_flight", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        answered >= 2 && refused >= 1,
        "answered {answered}, refused {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "loads the models; run with --include-ignored"]
async fn a_streamed_answer_holds_its_slot_until_it_ends() {
    let server = films_server(1).await;
    let client = client_from([127, 0, 0, 3]);
    let inputs: Vec<Value> = (0..64)
        .map(|i| json!({"text": format!("film number {i}")}))
        .collect();
    let mut stream = client
        .post(server.url("/v1/tasks/films/predict"))
        .header("accept", "application/x-ndjson")
        .json(&json!({ "inputs": inputs, "k": 2 }))
        .send()
        .await
        .expect("sent");
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.expect("reads").expect("a first line");
    assert!(!first.is_empty());

    // The stream's head is sent and its body is not: its slot is still taken.
    let (status, retry_after, body) = predict(&client, &server).await;
    assert_eq!(
        status, 429,
        "a second request beside the open stream: {body}"
    );
    assert_eq!(body["error"]["code"], "too_many_in_flight", "{body}");
    assert!(retry_after.is_some());

    let mut lines = first.iter().filter(|&&b| b == b'\n').count();
    while let Some(chunk) = stream.chunk().await.expect("reads") {
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
    }
    assert_eq!(lines, 64, "a line per input");
    let (status, _, body) = predict(&client, &server).await;
    assert_eq!(
        status, 200,
        "the slot is back once the stream has ended: {body}"
    );
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn a_client_past_its_rate_is_refused_and_another_is_not() {
    let server = TestServer::start(&["--client-rate", "5", "--client-max-in-flight", "0"]).await;
    let fast = client_from([127, 0, 0, 1]);
    let mut codes = Vec::new();
    for _ in 0..30 {
        let response = fast
            .get(server.url("/v1/tasks"))
            .send()
            .await
            .expect("sent");
        codes.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = response.json().await.expect("envelope");
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
    }
    assert!(codes.contains(&429), "never limited: {codes:?}");
    // Liveness stays open to the limited client; another client is served.
    let health = fast.get(server.url("/health")).send().await.expect("sent");
    assert_eq!(health.status(), 200);
    let other = client_from([127, 0, 0, 3]);
    let response = other
        .get(server.url("/v1/tasks"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
}

/// With keys, a client is its key: two keys from one address have a rate each.
#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn with_keys_each_key_has_its_own_share() {
    let admin = "fairness-test-admin-key-0123456789abcdef";
    let server = TestServer::start_with_env(
        &["--client-rate", "5", "--client-max-in-flight", "0"],
        &[("EXEMPLAR_BOOTSTRAP_KEY", admin)],
    )
    .await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let (status, key) = server
            .call_as(
                Some(admin),
                reqwest::Method::POST,
                "/v1/keys",
                Some(json!({"scope": "read"})),
            )
            .await;
        assert_eq!(status, 201, "{key}");
        keys.push(key["key"].as_str().expect("key").to_owned());
    }
    let mut codes = Vec::new();
    for _ in 0..30 {
        let (status, _) = server
            .call_as(Some(&keys[0]), reqwest::Method::GET, "/v1/tasks", None)
            .await;
        codes.push(status);
    }
    assert!(codes.contains(&429), "never limited: {codes:?}");
    let (status, _) = server
        .call_as(Some(&keys[1]), reqwest::Method::GET, "/v1/tasks", None)
        .await;
    assert_eq!(status, 200, "the second key shared the first one's rate");
}
