//! Selective annotation over HTTP: every method, vote-k's two stages, stored and
//! repeatable selections, clear answers for odd budgets and pools, and the CLI.

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

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

#[tokio::test]
async fn selections_choose_store_and_continue() {
    let server = TestServer::start(&[]).await;
    let task = json!({
        "labels": ["negative", "positive"],
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let (status, _) = server.call(Method::PUT, "/v1/tasks/sst2", Some(task)).await;
    assert_eq!(status, 201);
    let rows = sst2(60);
    let items: Vec<Value> = rows
        .iter()
        .map(|(id, text, _)| json!({"id": id, "text": text}))
        .collect();
    let (status, body) = server
        .post("/v1/tasks/sst2/pool", json!({"items": items}))
        .await;
    assert_eq!(status, 201, "{body}");

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

    let annotations: Vec<Value> = rows
        .iter()
        .filter(|(id, _, _)| first_ids.contains(id))
        .map(|(id, text, label)| json!({"id": id, "text": text, "label": label}))
        .collect();
    let (status, body) = server
        .post("/v1/tasks/sst2/examples", json!({"examples": annotations}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, complete) = server
        .post("/v1/tasks/sst2/selections", request.clone())
        .await;
    assert_eq!(status, 200, "{complete}");
    assert_eq!(complete["id"], stage_one["id"]);
    assert_eq!(complete["complete"], true);
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
