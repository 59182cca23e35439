//! Faults on the compose stack, each under the work it could break, everything sent
//! through nginx:
//! - PostgreSQL down for a few seconds while a background evaluation runs: the job lets
//!   its lease go, is resumed, and completes with the table of an undisturbed run;
//! - PostgreSQL down under a stream of imports: clients see only 2xx, 429 or 503, and
//!   every batch is in the database whole or not at all;
//! - the replica running a tuning killed: another replica resumes the job once its lease
//!   lapses, and it completes.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::compose::{Stack, REPLICAS};
use super::{begin, import_and_predict, Client};
use crate::common::{free_port, read_jsonl, shared_dir};

/// Examples imported before the faults.
const EXAMPLES: usize = 200;
/// Rows the evaluation predicts: six saved batches.
const EVALUATED: usize = 96;
/// Import batches sent at least, and their size.
const IMPORT_BATCHES: usize = 24;
const IMPORT_BATCH: usize = 20;
/// The job lease the stack runs with: how soon a dead replica's job is resumed.
const LEASE_SECONDS: u64 = 10;
/// How long a job may take before the test gives up on it.
const JOB_DEADLINE: Duration = Duration::from_secs(300);

/// How long PostgreSQL stays down in each outage: longer than a saved batch of a job
/// takes, so that the outage meets a save.
const OUTAGE: Duration = Duration::from_secs(6);

/// Stops the stack's PostgreSQL (a fast shutdown), keeps it down for [`OUTAGE`], starts
/// it again and waits until it answers; answers whether every step went through.
fn database_outage(compose: impl Fn(&[&str]) -> Command) -> bool {
    let run = |args: &[&str]| compose(args).output().is_ok_and(|o| o.status.success());
    if !run(&["stop", "-t", "10", "postgres"]) {
        return false;
    }
    std::thread::sleep(OUTAGE);
    if !run(&["start", "postgres"]) {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = ["exec", "-T", "postgres", "pg_isready", "-U", "exemplar"];
    while !run(&ready) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// Polls a job at `path` until it is no longer running, calling `during` once when its
/// progress first shows a saved batch; answers the job.
async fn wait_job(client: &Client, path: &str, during: impl FnOnce()) -> Value {
    let mut during = Some(during);
    let deadline = Instant::now() + JOB_DEADLINE;
    loop {
        let (status, job) = client.send(Method::GET, path, None).await;
        if status == 200 {
            if job["state"] != "running" {
                return job;
            }
            if job["progress"]["done"].as_u64().unwrap_or(0) > 0 {
                if let Some(during) = during.take() {
                    tokio::task::block_in_place(during);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} still runs: {status} {job}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs one background evaluation of `rows` to its end, calling `during` once its first
/// batch is saved; answers the job.
async fn evaluate(stack: &Stack, client: &Client, rows: &[Value], during: impl FnOnce()) -> Value {
    let body = json!({"examples": rows, "k": 4, "background": true});
    let (status, job) = client
        .send(
            Method::POST,
            &stack.url("/v1/tasks/sst2/evaluate"),
            Some(&body),
        )
        .await;
    assert_eq!(status, 202, "{job}\n{}", stack.logs());
    let path = stack.url(&format!(
        "/v1/tasks/sst2/evaluations/{}",
        job["id"].as_str().expect("id")
    ));
    wait_job(client, &path, during).await
}

/// The ids of every example of `task`, page by page.
async fn example_ids(stack: &Stack, client: &Client, task: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/tasks/{task}/examples?limit=500&cursor={cursor}"),
            None => format!("/v1/tasks/{task}/examples?limit=500"),
        };
        let (status, page) = client.send(Method::GET, &stack.url(&path), None).await;
        assert_eq!(status, 200, "{page}");
        ids.extend(
            page["examples"]
                .as_array()
                .expect("examples")
                .iter()
                .map(|e| e["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
}

/// Which replica's log says it runs the job `id`.
fn runner_of(stack: &Stack, id: &str) -> Option<&'static str> {
    REPLICAS.into_iter().find(|replica| {
        stack
            .replica_log(replica)
            .lines()
            .any(|line| line.contains("running a job") && line.contains(id))
    })
}

/// Which replica's log says it resumed the job `id` after its lease lapsed.
fn resumer_of(stack: &Stack, id: &str) -> Option<&'static str> {
    REPLICAS.into_iter().find(|replica| {
        stack
            .replica_log(replica)
            .lines()
            .any(|line| line.contains("resuming a job whose lease lapsed") && line.contains(id))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "builds Docker images and runs the compose stack (minutes); run with --include-ignored"]
async fn the_compose_stack_rides_out_a_database_restart_and_a_dead_job_runner() {
    let Some((_turn, started)) = begin().await else {
        return;
    };
    let stack = Stack::new(
        &format!("exemplar-faults-{}", std::process::id()),
        free_port(),
    )
    .with("EXEMPLAR_JOB_LEASE_SECONDS", &LEASE_SECONDS.to_string());
    stack.up();
    let client = Client::new();
    import_and_predict(&stack.url(""), &client, EXAMPLES, || stack.logs()).await;
    eprintln!("stack up at {:.0} s", started.elapsed().as_secs_f64());

    // (a) The same evaluation undisturbed, then with PostgreSQL restarted under it.
    let rows: Vec<Value> = read_jsonl(shared_dir().join("data/sst2/test.jsonl"))
        .into_iter()
        .take(EVALUATED)
        .map(|row| json!({"text": row["text"], "label": row["label"]}))
        .collect();
    let undisturbed = evaluate(&stack, &client, &rows, || {}).await;
    assert_eq!(undisturbed["state"], "complete", "{undisturbed}");
    let disturbed = evaluate(&stack, &client, &rows, || {
        assert!(database_outage(stack.commands()), "the outage");
    })
    .await;
    assert_eq!(
        disturbed["state"],
        "complete",
        "{disturbed}\n{}",
        stack.logs()
    );
    assert_eq!(disturbed["result"], undisturbed["result"]);
    // The outage met a save: the job let go of its lease, and a replica resumed it.
    let id = disturbed["id"].as_str().expect("id");
    let resumer = resumer_of(&stack, id).unwrap_or_else(|| {
        panic!(
            "the outage did not interrupt the evaluation {id}\n{}",
            stack.logs()
        )
    });
    eprintln!(
        "evaluation across a {} s database outage: resumed by {resumer}, the undisturbed \
         table (accuracy {}), at {:.0} s",
        OUTAGE.as_secs(),
        disturbed["result"]["accuracy"],
        started.elapsed().as_secs_f64()
    );

    // (b) Imports through nginx while PostgreSQL restarts.
    let task = json!({
        "labels": ["negative", "positive"],
        "template": {"input": "Review: {text}", "output": "Sentiment: {label}"}
    });
    let (status, body) = client
        .send(Method::PUT, &stack.url("/v1/tasks/imports"), Some(&task))
        .await;
    assert_eq!(status, 201, "{body}");
    let texts: Vec<Value> = read_jsonl(shared_dir().join("data/sst2/train.jsonl"));
    let batch = |b: usize| -> Vec<Value> {
        (0..IMPORT_BATCH)
            .map(|i| {
                let row = &texts[(EXAMPLES + b * IMPORT_BATCH + i) % texts.len()];
                json!({"id": format!("b{b}-{i}"), "text": row["text"], "label": row["label"]})
            })
            .collect()
    };
    client.take_answered();
    // A second into the imports, which go on until the database is back.
    let commands = stack.commands();
    let outage = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        database_outage(commands)
    });
    let mut landed = Vec::new();
    while landed.len() < IMPORT_BATCHES || !outage.is_finished() {
        let body = json!({ "examples": batch(landed.len()) });
        let (status, answer) = client
            .send(
                Method::POST,
                &stack.url("/v1/tasks/imports/examples"),
                Some(&body),
            )
            .await;
        assert!(
            [201, 429, 503].contains(&status),
            "a batch answered {status} {answer}\n{}",
            stack.logs()
        );
        landed.push(status == 201);
    }
    assert!(outage.join().expect("outage"), "the outage");
    let answered = client.take_answered();
    assert!(
        answered
            .keys()
            .all(|status| (200..300).contains(status) || [429, 503].contains(status)),
        "imports answered {answered:?}\n{}",
        stack.logs()
    );
    assert!(
        answered.contains_key(&503),
        "the outage met no import: {answered:?}"
    );
    let stored: std::collections::HashSet<String> = example_ids(&stack, &client, "imports")
        .await
        .into_iter()
        .collect();
    for (b, &whole) in landed.iter().enumerate() {
        let present = (0..IMPORT_BATCH)
            .filter(|i| stored.contains(&format!("b{b}-{i}")))
            .count();
        assert_eq!(
            present,
            if whole { IMPORT_BATCH } else { 0 },
            "batch {b} (answered 201: {whole}) is torn"
        );
    }
    eprintln!(
        "{} import batches across a {} s database outage: {} landed, none torn, statuses \
         {answered:?}, at {:.0} s",
        landed.len(),
        OUTAGE.as_secs(),
        landed.iter().filter(|l| **l).count(),
        started.elapsed().as_secs_f64()
    );

    // (c) The replica running a tuning killed: another resumes the job.
    let body = json!({
        "max_examples": 32,
        "k": [2, 4],
        "strategy": ["knn"],
        "calibration": ["none"],
        "vote_weight": [0.0],
        "cached_demonstrations": [false]
    });
    let (status, job) = client
        .send(Method::POST, &stack.url("/v1/tasks/sst2/tune"), Some(&body))
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let runner = loop {
        if let Some(runner) = runner_of(&stack, &id) {
            break runner;
        }
        assert!(Instant::now() < deadline, "no replica logged running {id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stack.must(&["kill", runner]);
    let killed = Instant::now();
    let resumer = loop {
        if let Some(replica) = resumer_of(&stack, &id) {
            break replica;
        }
        assert!(
            killed.elapsed() < JOB_DEADLINE,
            "nobody resumed {id}\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let resumed_after = killed.elapsed().as_secs_f64();
    assert_ne!(resumer, runner);
    let path = stack.url(&format!("/v1/tasks/sst2/tunings/{id}"));
    let tuned = wait_job(&client, &path, || {}).await;
    assert_eq!(tuned["state"], "complete", "{tuned}\n{}", stack.logs());
    eprintln!(
        "tuning's replica {runner} killed: {resumer} resumed it {resumed_after:.1} s later \
         (lease {LEASE_SECONDS} s), complete; whole fault test {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
