//! API keys over HTTP: a key created by `exemplar keys` turns auth on for a running
//! server, scopes and task limits are enforced (401 without a valid key, 403 without the
//! scope or the task), revocation takes effect within seconds, only hashes reach the
//! database, and no key reaches the log.

use std::time::{Duration, Instant};

use crate::common::{exemplar, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// Runs `exemplar keys ARGS` on `database_url`; answers its standard output.
fn keys(database_url: &str, args: &[&str]) -> String {
    let output = exemplar()
        .arg("keys")
        .args(args)
        .args(["--database-url", database_url])
        .output()
        .expect("exemplar keys runs");
    assert!(
        output.status.success(),
        "exemplar keys {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Waits until `GET path` with `key` answers `status` (keys made elsewhere are read
/// every second).
async fn await_status(server: &TestServer, key: Option<&str>, path: &str, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = server.call_as(key, Method::GET, path, None).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} stayed {got}, not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sqlite_file(database_url: &str) -> std::path::PathBuf {
    database_url.trim_start_matches("sqlite://").into()
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn keys_turn_auth_on_and_hold_callers_to_their_scopes_and_tasks() {
    let server = TestServer::start(&[]).await;
    let url = server.database_url.clone();
    // No key yet: open, as a local server is.
    let (status, _) = server.get("/v1/tasks").await;
    assert_eq!(status, 200);
    assert!(
        server.log().contains("auth is off"),
        "no warning in the log"
    );

    let admin = keys(&url, &["create", "--scope", "admin", "--name", "ops"]);
    let admin = admin.trim();
    assert!(admin.starts_with("exm_") && admin.len() == 68, "{admin}");
    let refused = await_status(&server, None, "/v1/tasks", 401).await;
    assert_eq!(refused["error"]["code"], "unauthorized");
    let response = server
        .client
        .get(server.url("/v1/info"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    for public in ["/health", "/ready", "/metrics"] {
        let response = server.client.get(server.url(public)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{public} needs no key");
    }
    let (status, _) = server
        .call_as(Some("exm_not_a_key"), Method::GET, "/v1/tasks", None)
        .await;
    assert_eq!(status, 401);

    let task = json!({
        "labels": ["negative", "positive"],
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    for name in ["films", "news"] {
        let (status, body) = server
            .call_as(
                Some(admin),
                Method::PUT,
                &format!("/v1/tasks/{name}"),
                Some(task.clone()),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    // A write key for one task, made over HTTP; a read key from the command line.
    let (status, writer) = server
        .call_as(
            Some(admin),
            Method::POST,
            "/v1/keys",
            Some(json!({"scope": "write", "name": "labelling", "tasks": ["films"]})),
        )
        .await;
    assert_eq!(status, 201, "{writer}");
    let writer_id = writer["id"].as_str().expect("id").to_owned();
    let writer = writer["key"].as_str().expect("key").to_owned();
    let reader = keys(&url, &["create", "--scope", "read"]);
    let reader = reader.trim();
    await_status(&server, Some(reader), "/v1/tasks/films", 200).await;

    let examples = json!({"examples": [{"text": "a warm and funny film", "label": "positive"}]});
    let (status, body) = server
        .call_as(
            Some(reader),
            Method::POST,
            "/v1/tasks/films/examples",
            Some(examples.clone()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, body) = server
        .call_as(
            Some(&writer),
            Method::POST,
            "/v1/tasks/films/examples",
            Some(examples.clone()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = server
        .call_as(
            Some(&writer),
            Method::POST,
            "/v1/tasks/news/examples",
            Some(examples),
        )
        .await;
    assert_eq!(status, 403, "a key limited to films wrote to news");
    let (status, _) = server
        .call_as(Some(&writer), Method::PUT, "/v1/tasks/films", Some(task))
        .await;
    assert_eq!(status, 403, "a write key replaced a task");
    let (status, _) = server
        .call_as(Some(&writer), Method::GET, "/v1/keys", None)
        .await;
    assert_eq!(status, 403, "a write key listed keys");
    let (status, listed) = server
        .call_as(Some(&writer), Method::GET, "/v1/tasks", None)
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["films"], "a task-limited key sees only its tasks");
    let (status, body) = server
        .call_as(
            Some(&writer),
            Method::POST,
            "/v1/tasks/films/retrieve",
            Some(json!({"text": "funny", "k": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A key cannot revoke itself (its holder would be locked out).
    let admin_id = format!("key_{}", &exemplar::auth::hash_key(admin)[..16]);
    let (status, body) = server
        .call_as(
            Some(admin),
            Method::DELETE,
            &format!("/v1/keys/{admin_id}"),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // Listed without secrets; revoked from the command line, refused within seconds.
    let listing = keys(&url, &["list"]);
    assert_eq!(listing.lines().count(), 3, "{listing}");
    assert!(listing.contains(&writer_id) && listing.contains("\"labelling\""));
    keys(&url, &["revoke", &writer_id]);
    await_status(&server, Some(&writer), "/v1/tasks/films", 401).await;
    let (status, body) = server
        .call_as(Some(admin), Method::GET, "/v1/keys", None)
        .await;
    assert_eq!(status, 200);
    let revoked = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == writer_id.as_str())
        .expect("the revoked key is listed");
    assert!(revoked["revoked_at"].is_i64());

    // Only hashes are stored, and no key is logged.
    let database = std::fs::read(sqlite_file(&url)).expect("database file");
    let wal = std::fs::read(format!("{}-wal", sqlite_file(&url).display())).unwrap_or_default();
    let log = server.log();
    for secret in [admin, reader, writer.as_str()] {
        let hex = &secret["exm_".len()..];
        for (place, bytes) in [("database", &database), ("WAL", &wal)] {
            assert!(
                !bytes.windows(hex.len()).any(|w| w == hex.as_bytes()),
                "a key is in the {place}"
            );
        }
        assert!(!listing.contains(hex) && !log.contains(hex), "a key leaked");
    }
}

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn a_server_that_requires_auth_takes_its_bootstrap_key_once() {
    let bootstrap = "b".repeat(40);
    let env = [("EXEMPLAR_BOOTSTRAP_KEY", bootstrap.as_str())];
    let server = TestServer::start_with_env(&["--require-auth"], &env).await;
    let (status, _) = server.get("/v1/tasks").await;
    assert_eq!(status, 401, "--require-auth without keys let a request in");
    let server = server.restart().await;
    let (status, body) = server
        .call_as(Some(&bootstrap), Method::GET, "/v1/keys", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let keys = body["keys"].as_array().expect("keys");
    assert_eq!(
        keys.len(),
        1,
        "a restart added the bootstrap key again: {body}"
    );
    assert_eq!(keys[0]["scope"], "admin");
    assert_eq!(keys[0]["name"], "bootstrap");
    assert!(
        !server.log().contains(&bootstrap),
        "the bootstrap key was logged"
    );

    // The command-line clients send their key.
    let rows = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    std::fs::write(
        rows.path(),
        "{\"text\": \"a warm film\", \"label\": \"positive\"}\n",
    )
    .unwrap();
    let task = json!({
        "labels": ["negative", "positive"],
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let (status, _) = server
        .call_as(Some(&bootstrap), Method::PUT, "/v1/tasks/films", Some(task))
        .await;
    assert_eq!(status, 201);
    let import = |key: Option<&str>| {
        let mut command = exemplar();
        command
            .args([
                "import",
                "--task",
                "films",
                "--server",
                &server.base,
                "--file",
            ])
            .arg(rows.path());
        if let Some(key) = key {
            command.env("EXEMPLAR_API_KEY", key);
        }
        command.output().expect("exemplar import runs")
    };
    let refused = import(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    assert!(import(Some(&bootstrap)).status.success());

    // Too short a bootstrap key stops the start, with the reason.
    let mut weak = TestServer::spawn(&[], &[("EXEMPLAR_BOOTSTRAP_KEY", "short")]);
    let status = weak.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a weak bootstrap key was taken"
    );
    assert!(
        weak.log().contains("at least 32 characters"),
        "{}",
        weak.log()
    );
}
