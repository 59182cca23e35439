//! Tasks, examples, pool items and retrieval over HTTP against a real server, on SQLite
//! and on PostgreSQL; data and retrieval results survive a restart.

use crate::common::{TestDatabase, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

fn sentiment_task() -> Value {
    json!({
        "labels": ["negative", "positive"],
        "instruction": "Classify the sentiment of each review.",
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"},
        "separator": "\n\n"
    })
}

fn examples() -> Value {
    json!({"examples": [
        {"id": "e1", "text": "a gorgeous, witty and moving film", "label": "positive"},
        {"id": "e2", "text": "the acting was wooden and the plot made no sense", "label": "negative"},
        {"id": "e3", "text": "I loved every minute of this delightful comedy", "label": "positive"},
        {"id": "e4", "text": "a tedious, overlong mess", "label": "negative"},
        {"id": "e5", "text": "the best thriller of the year, tense and smart", "label": "positive"},
        {"id": "e6", "text": "dull characters and a boring story", "label": "negative"}
    ]})
}

async fn counts(server: &TestServer) -> (i64, i64) {
    let (status, body) = server.get("/v1/tasks/sst2").await;
    assert_eq!(status, 200, "{body}");
    (
        body["counts"]["examples"].as_i64().expect("count"),
        body["counts"]["pool"].as_i64().expect("count"),
    )
}

async fn retrieve_ids(server: &TestServer, request: Value) -> Vec<String> {
    let (status, body) = server.post("/v1/tasks/sst2/retrieve", request).await;
    assert_eq!(status, 200, "{body}");
    let demonstrations = body["demonstrations"].as_array().expect("list");
    let similarities: Vec<f64> = demonstrations
        .iter()
        .map(|d| d["similarity"].as_f64().expect("similarity"))
        .collect();
    assert!(
        similarities.windows(2).all(|w| w[0] >= w[1]),
        "most similar first: {similarities:?}"
    );
    demonstrations
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The whole task API on one database; run on SQLite and on PostgreSQL.
async fn task_api_scenario(database_url: &str) {
    let server = TestServer::start_on(database_url, &[]).await;

    // Tasks: created, replaced, listed; bad definitions say what is wrong.
    let (status, body) = server
        .call(Method::PUT, "/v1/tasks/sst2", Some(sentiment_task()))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["labels"], json!(["negative", "positive"]));
    assert_eq!(body["counts"], json!({"examples": 0, "pool": 0}));
    let (status, _) = server
        .call(Method::PUT, "/v1/tasks/sst2", Some(sentiment_task()))
        .await;
    assert_eq!(status, 200);
    let (status, body) = server.get("/v1/tasks").await;
    assert_eq!(status, 200);
    assert_eq!(body["tasks"][0]["name"], "sst2");

    let bad_templates = [
        (
            json!({"input": "Review: {txt}", "output": "Sentiment: {label}"}),
            "template.input",
        ),
        (
            json!({"input": "Review:", "output": "Sentiment: {label}"}),
            "template.input",
        ),
        (
            json!({"input": "{text}", "output": "Sentiment: {label} {label}"}),
            "template.output",
        ),
        (
            json!({"input": "{text}", "output": "Sentiment:"}),
            "template.output",
        ),
        (
            json!({"input": "{text", "output": "{label}"}),
            "template.input",
        ),
    ];
    for (template, field) in bad_templates {
        let task = json!({"labels": ["a", "b"], "template": template});
        let (status, body) = server
            .call(Method::PUT, "/v1/tasks/other", Some(task))
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(code(&body), "invalid_task");
        assert!(message(&body).contains(field), "{body}");
    }
    let (status, _) = server
        .call(Method::PUT, "/v1/tasks/bad%20name", Some(sentiment_task()))
        .await;
    assert_eq!(status, 422);
    let (status, body) = server.get("/v1/tasks/other").await;
    assert_eq!((status, code(&body)), (404, "task_not_found"));

    // Retrieval before any example: a clear 422.
    let (status, body) = server
        .post("/v1/tasks/sst2/retrieve", json!({"text": "great"}))
        .await;
    assert_eq!((status, code(&body)), (422, "no_examples"), "{body}");

    // Writes are all or nothing: a bad row refuses the batch and names the row.
    let (status, body) = server.post("/v1/tasks/sst2/examples", examples()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["ids"], json!(["e1", "e2", "e3", "e4", "e5", "e6"]));
    let long_text = "x".repeat(20_000);
    let bad_batches = [
        (
            json!([{"text": "fine", "label": "positive"}, {"text": "odd", "label": "neutral"}]),
            "row 1",
            "neutral",
        ),
        (json!([{"text": "", "label": "positive"}]), "row 0", "empty"),
        (
            json!([{"id": "d", "text": "a", "label": "positive"}, {"id": "d", "text": "b", "label": "negative"}]),
            "row 1",
            "twice",
        ),
        (
            json!([{"id": "new", "text": "a", "label": "positive"}, {"id": "e1", "text": "b", "label": "negative"}]),
            "row 1",
            "already exists",
        ),
        (
            json!([{"text": "fine", "label": "positive"}, {"text": long_text, "label": "positive"}]),
            "row 1",
            "bytes",
        ),
        (json!([{"text": "no label"}]), "row 0", "label"),
    ];
    for (rows, row, reason) in bad_batches {
        let (status, body) = server
            .post("/v1/tasks/sst2/examples", json!({"examples": rows}))
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(code(&body), "invalid_row");
        assert!(
            message(&body).contains(row) && message(&body).contains(reason),
            "{body}"
        );
    }
    let (status, body) = server
        .post("/v1/tasks/sst2/examples", json!({"examples": []}))
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_batch"));
    let (status, body) = server
        .post("/v1/tasks/sst2/examples", json!({"rows": []}))
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_body"));
    assert_eq!(counts(&server).await, (6, 0));

    // The pool; an annotated pool item leaves the pool.
    let pool = json!({"items": [
        {"id": "p1", "text": "an unforgettable masterpiece"},
        {"id": "p2", "text": "I walked out after twenty minutes"},
        {"id": "p3", "text": "a film about a dog"}
    ]});
    let (status, body) = server.post("/v1/tasks/sst2/pool", pool).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/pool",
            json!({"items": [{"id": "e1", "text": "clash"}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(message(&body).contains("already annotated"), "{body}");
    let (status, body) = server
        .post(
            "/v1/tasks/sst2/pool",
            json!({"items": [{"text": "labelled", "label": "positive"}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(counts(&server).await, (6, 3));
    let (status, _) = server
        .post(
            "/v1/tasks/sst2/examples",
            json!({"examples": [{"id": "p1", "text": "an unforgettable masterpiece", "label": "positive"}]}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(counts(&server).await, (7, 2));
    let (status, body) = server.get("/v1/tasks/sst2/pool/p1").await;
    assert_eq!((status, code(&body)), (404, "item_not_found"));
    let (status, _) = server
        .call(Method::DELETE, "/v1/tasks/sst2/pool/p3", None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = server.get("/v1/tasks/sst2/pool").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["items"],
        json!([{"id": "p2", "text": "I walked out after twenty minutes"}])
    );

    // Cursor pages walk the examples in insertion order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tasks/sst2/examples?limit=3&cursor={c}"),
            None => "/v1/tasks/sst2/examples?limit=3".to_owned(),
        };
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 200, "{body}");
        for example in body["examples"].as_array().expect("page") {
            seen.push(example["id"].as_str().expect("id").to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["e1", "e2", "e3", "e4", "e5", "e6", "p1"]);
    let (status, body) = server.get("/v1/tasks/sst2/examples?limit=0").await;
    assert_eq!((status, code(&body)), (422, "invalid_value"));
    let (status, body) = server.get("/v1/tasks/sst2/examples?cursor=zzz").await;
    assert_eq!((status, code(&body)), (422, "invalid_value"));
    let (status, body) = server.get("/v1/tasks/sst2/examples/e2").await;
    assert_eq!(status, 200);
    assert_eq!(body["label"], "negative");

    // Retrieval: knn puts the near-duplicate first; mmr and random answer k items.
    let query = "a witty, gorgeous and moving film";
    let knn = retrieve_ids(&server, json!({"text": query, "k": 3})).await;
    assert_eq!(knn.len(), 3);
    assert_eq!(knn[0], "e1");
    let mmr = retrieve_ids(
        &server,
        json!({"text": query, "k": 3, "strategy": "mmr", "lambda": 0.5}),
    )
    .await;
    assert_eq!(mmr.len(), 3);
    assert_eq!(mmr[0], "e1");
    let random = json!({"text": query, "k": 3, "strategy": "random", "seed": 11});
    let first = retrieve_ids(&server, random.clone()).await;
    assert_eq!(first.len(), 3);
    assert_eq!(first, retrieve_ids(&server, random.clone()).await);
    let everything = retrieve_ids(&server, json!({"text": query, "k": 50})).await;
    assert_eq!(everything.len(), 7);
    for (request, expected) in [
        (json!({"text": query, "k": 0}), "invalid_value"),
        (json!({"text": query, "k": 101}), "invalid_value"),
        (
            json!({"text": query, "strategy": "mmr", "lambda": 2.0}),
            "invalid_value",
        ),
        (json!({"text": query, "strategy": "magic"}), "invalid_body"),
        (json!({"text": ""}), "invalid_value"),
    ] {
        let (status, body) = server.post("/v1/tasks/sst2/retrieve", request).await;
        assert_eq!((status, code(&body)), (422, expected), "{body}");
    }
    let (status, body) = server
        .post("/v1/tasks/nope/retrieve", json!({"text": "x"}))
        .await;
    assert_eq!((status, code(&body)), (404, "task_not_found"));

    // A deleted example is never returned, right after the delete.
    let (status, _) = server
        .call(Method::DELETE, "/v1/tasks/sst2/examples/e1", None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = server
        .call(Method::DELETE, "/v1/tasks/sst2/examples/e1", None)
        .await;
    assert_eq!((status, code(&body)), (404, "item_not_found"));
    let after_delete = retrieve_ids(&server, json!({"text": query, "k": 50})).await;
    assert!(!after_delete.contains(&"e1".to_owned()), "{after_delete:?}");
    assert_eq!(after_delete.len(), 6);

    // A definition that drops a label in use is a conflict.
    let mut narrowed = sentiment_task();
    narrowed["labels"] = json!(["positive"]);
    let (status, body) = server
        .call(Method::PUT, "/v1/tasks/sst2", Some(narrowed))
        .await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");

    // Everything survives a restart: counts, pages and retrieval results.
    let knn_before = retrieve_ids(&server, json!({"text": query, "k": 4})).await;
    let mmr_before = retrieve_ids(&server, json!({"text": query, "k": 4, "strategy": "mmr"})).await;
    let server = server.restart().await;
    assert_eq!(counts(&server).await, (6, 1));
    assert_eq!(
        retrieve_ids(&server, json!({"text": query, "k": 4})).await,
        knn_before
    );
    assert_eq!(
        retrieve_ids(&server, json!({"text": query, "k": 4, "strategy": "mmr"})).await,
        mmr_before
    );

    // Deleting the task removes everything it held.
    let (status, _) = server.call(Method::DELETE, "/v1/tasks/sst2", None).await;
    assert_eq!(status, 204);
    let (status, _) = server.get("/v1/tasks/sst2").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/v1/tasks/sst2/examples").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn task_api_on_sqlite() {
    let database = TestDatabase::sqlite();
    task_api_scenario(&database.url).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs this"]
async fn task_api_on_postgres() {
    let database = TestDatabase::postgres().await;
    task_api_scenario(&database.url).await;
}

#[tokio::test]
async fn a_batch_sent_again_is_stored_once_and_answered_the_same() {
    let server = TestServer::start(&[]).await;
    let (status, body) = server
        .call(Method::PUT, "/v1/tasks/sst2", Some(sentiment_task()))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, first) = server.post("/v1/tasks/sst2/examples", examples()).await;
    assert_eq!(status, 201, "{first}");
    // The client never saw the answer, say, and sends the batch again.
    let (status, again) = server.post("/v1/tasks/sst2/examples", examples()).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["ids"], first["ids"]);
    assert_eq!(counts(&server).await.0, 6);
    let ids = retrieve_ids(&server, json!({"text": "a wonderful film", "k": 6})).await;
    assert_eq!(ids.len(), 6, "{ids:?}");
    // The same batch with one row changed is refused, and nothing of it is stored.
    let mut changed = examples();
    changed["examples"][2]["label"] = json!("negative");
    let (status, body) = server.post("/v1/tasks/sst2/examples", changed).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("row 2") && m.contains("other content")),
        "{body}"
    );
    assert_eq!(counts(&server).await.0, 6);
}

/// Rows without ids are named by their content: a retry of such a batch, or one
/// racing its first try, stores nothing twice and answers the same ids.
#[tokio::test]
async fn a_batch_without_ids_sent_again_or_twice_at_once_is_stored_once() {
    let server = TestServer::start(&[]).await;
    let (status, body) = server
        .call(Method::PUT, "/v1/tasks/sst2", Some(sentiment_task()))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut without_ids = examples();
    for row in without_ids["examples"].as_array_mut().expect("rows") {
        row.as_object_mut().expect("row").remove("id");
    }
    let (status, first) = server
        .post("/v1/tasks/sst2/examples", without_ids.clone())
        .await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = server
        .post("/v1/tasks/sst2/examples", without_ids.clone())
        .await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["ids"], first["ids"]);
    assert_eq!(counts(&server).await.0, 6);

    // Two tries of one batch at once (a client's retry overtaking its first try).
    let racing = json!({"examples": (0..40)
        .map(|i| json!({"text": format!("film number {i} was fine"), "label": "positive"}))
        .collect::<Vec<_>>()});
    let (one, two) = tokio::join!(
        server.post("/v1/tasks/sst2/examples", racing.clone()),
        server.post("/v1/tasks/sst2/examples", racing.clone()),
    );
    assert_eq!((one.0, two.0), (201, 201), "{} {}", one.1, two.1);
    assert_eq!(one.1["ids"], two.1["ids"]);
    assert_eq!(counts(&server).await.0, 46);

    // The same row twice in one batch is one example under one id.
    let twice = json!({"examples": [
        {"text": "a quiet gem", "label": "positive"},
        {"text": "a quiet gem", "label": "positive"}
    ]});
    let (status, body) = server.post("/v1/tasks/sst2/examples", twice).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["ids"][0], body["ids"][1]);
    assert_eq!(counts(&server).await.0, 47);
}
