//! `exemplar eval` and `exemplar predict` against a real server over HTTP: the same
//! evaluation as the evaluate API, a bad line refused before anything is sent, and a
//! predict run that resumes after a torn output line without predicting a row twice.

use crate::common;

use std::io::Write;
use std::path::Path;

use crate::common::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

/// Lines `range` of an SST-2 file.
fn sst2(file: &str, range: std::ops::Range<usize>) -> Vec<Value> {
    common::read_jsonl(common::shared_dir().join("data/sst2").join(file))[range].to_vec()
}

async fn sst2_task_with_examples(server: &TestServer) {
    let task = json!({
        "labels": ["negative", "positive"],
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let (status, body) = server.call(Method::PUT, "/v1/tasks/sst2", Some(task)).await;
    assert_eq!(status, 201, "{body}");
    let examples = sst2("train.jsonl", 0..40);
    let (status, body) = server
        .post("/v1/tasks/sst2/examples", json!({ "examples": examples }))
        .await;
    assert_eq!(status, 201, "{body}");
}

fn write_lines(path: &Path, rows: &[Value]) {
    let mut file = std::fs::File::create(path).expect("file");
    for row in rows {
        writeln!(file, "{row}").expect("write");
    }
}

fn client(server: &TestServer, command: &str, file: &Path, extra: &[&str]) -> std::process::Output {
    common::exemplar()
        .args([
            command,
            "--task",
            "sst2",
            "--server",
            &server.base,
            "--k",
            "4",
        ])
        .arg("--file")
        .arg(file)
        .args(extra)
        .output()
        .expect("exemplar runs")
}

async fn predictions_total(server: &TestServer) -> f64 {
    common::metric_sample(&server.metrics().await, "exemplar_predictions_total", &[]).unwrap_or(0.0)
}

#[tokio::test]
async fn eval_answers_what_the_evaluate_api_answers_and_checks_lines_first() {
    let server = TestServer::start(&[]).await;
    sst2_task_with_examples(&server).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let test_rows = sst2("test.jsonl", 0..10);
    let file = dir.path().join("test.jsonl");
    write_lines(&file, &test_rows);

    let output = client(&server, "eval", &file, &["--json", "--page-size", "4"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let from_cli: Value = serde_json::from_slice(&output.stdout).expect("JSON evaluation");
    let (status, from_api) = server
        .post(
            "/v1/tasks/sst2/evaluate",
            json!({"examples": test_rows, "k": 4}),
        )
        .await;
    assert_eq!(status, 200, "{from_api}");
    assert_eq!(from_cli, from_api);
    assert_eq!(from_cli["n"], 10);

    let output = client(&server, "eval", &file, &[]);
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    let accuracy = from_api["accuracy"].as_f64().expect("accuracy");
    assert!(
        table.contains(&format!("accuracy {accuracy:.4}")),
        "{table}"
    );
    assert!(table.contains("gold \\ predicted"), "{table}");

    // A label the task does not know, on line 3: refused before any prediction.
    let before = predictions_total(&server).await;
    let mut bad = test_rows.clone();
    bad[2]["label"] = json!("neutral");
    write_lines(&file, &bad);
    let output = client(&server, "eval", &file, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("neutral"),
        "{stderr}"
    );
    assert_eq!(predictions_total(&server).await, before);

    // A page the server refuses (line 6 is longer than the model's context) is named,
    // and the rows evaluated before it are reported.
    let (_, info) = server.get("/v1/info").await;
    let context = info["model"]["context_length"].as_u64().expect("context") as usize;
    let mut too_long = test_rows.clone();
    too_long[5]["text"] = json!("word ".repeat(context + 100));
    write_lines(&file, &too_long);
    let output = client(&server, "eval", &file, &["--page-size", "4"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("page 2 (lines 5 to 8)"), "{stderr}");
    assert!(
        stderr.contains("the 4 rows evaluated before the failure"),
        "{stderr}"
    );

    // An unknown task is named.
    write_lines(&file, &test_rows);
    let output = common::exemplar()
        .args([
            "eval",
            "--task",
            "absent",
            "--server",
            &server.base,
            "--file",
        ])
        .arg(&file)
        .output()
        .expect("exemplar runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("absent"));
}

#[tokio::test]
async fn predict_writes_every_row_in_order_and_resumes_after_a_torn_line() {
    let server = TestServer::start(&[]).await;
    sst2_task_with_examples(&server).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let rows: Vec<Value> = sst2("test.jsonl", 20..26)
        .into_iter()
        .enumerate()
        .map(|(i, row)| json!({"id": format!("r{i}"), "text": row["text"]}))
        .collect();
    let file = dir.path().join("input.jsonl");
    write_lines(&file, &rows);
    let out = dir.path().join("out.jsonl");
    let out_arg = out.to_str().expect("utf-8");

    let output = client(
        &server,
        "predict",
        &file,
        &["--out", out_arg, "--page-size", "4"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let whole = std::fs::read_to_string(&out).expect("output");
    let lines: Vec<Value> = whole
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 6);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["line"], i + 1);
        assert_eq!(line["id"], format!("r{i}"));
        assert!(["negative", "positive"].contains(&line["label"].as_str().expect("label")));
        assert_eq!(line["demonstrations"].as_array().expect("ids").len(), 4);
    }

    // Without --resume an existing output is not overwritten.
    let output = client(&server, "predict", &file, &["--out", out_arg]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--resume"));

    // Two whole lines and a torn third: the resumed run predicts the four others only.
    let kept: Vec<&str> = whole.lines().take(2).collect();
    std::fs::write(
        &out,
        format!("{}\n{}\n{{\"line\": 3, \"te", kept[0], kept[1]),
    )
    .expect("truncate");
    let before = predictions_total(&server).await;
    let output = client(&server, "predict", &file, &["--out", out_arg, "--resume"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(predictions_total(&server).await - before, 4.0);
    assert_eq!(std::fs::read_to_string(&out).expect("output"), whole);
}
