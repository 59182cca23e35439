//! Replicas writing the same row at once: creating one task, or saving one selection,
//! from many connections together never fails on the key, and exactly one writer
//! reports the task as created. On PostgreSQL, where update-then-insert raced. And one
//! job's lease: of replicas racing for it one wins, the others' saves are refused
//! until it lapses, and a lapsed runner cannot overwrite its successor's result. And a
//! job cancelled while it runs: its runner's next save is refused and no replica
//! resumes it. And one job id started by racing replicas (vote-k's stage 2): one insert
//! wins, and only a stopped job gives its id up.

use crate::common::TestDatabase;
use exemplar::store::{JobRow, RunningJobCaps, SelectionRow, Store};

/// Writers racing on each row.
const WRITERS: usize = 8;
/// Rows raced on.
const ROWS: usize = 20;

async fn race(url: &str) {
    let store = Store::connect(url).await.expect("store");
    let mut created = 0;
    for row in 0..ROWS {
        let name = format!("task{row}");
        let writers = (0..WRITERS).map(|w| {
            let (store, name) = (store.clone(), name.clone());
            tokio::spawn(async move { store.put_task(&name, &format!("{{\"w\":{w}}}")).await })
        });
        for writer in futures::future::join_all(writers).await {
            created += usize::from(writer.expect("writer").expect("no writer fails"));
        }
    }
    assert_eq!(created, ROWS, "exactly one writer creates each task");

    for row in 0..ROWS {
        let writers = (0..WRITERS).map(|w| {
            let store = store.clone();
            let saved = SelectionRow {
                id: format!("sel{row}"),
                method: "random".into(),
                state: "complete".into(),
                request: "{}".into(),
                result: format!("{{\"w\":{w}}}"),
            };
            tokio::spawn(async move { store.put_selection("task0", &saved).await })
        });
        for writer in futures::future::join_all(writers).await {
            writer.expect("writer").expect("no writer fails");
        }
    }
}

/// A running job as stored.
fn job_row(id: &str, result: &str) -> JobRow {
    JobRow {
        id: id.into(),
        kind: "stage_two".into(),
        state: "running".into(),
        request: "{}".into(),
        result: result.into(),
        error: None,
        lease: None,
        created_at: 0,
        updated_at: 0,
        requester: Some("a client".into()),
    }
}

/// No caps on running jobs.
const UNCAPPED: RunningJobCaps = RunningJobCaps {
    per_task: 0,
    per_requester: 0,
};

/// Replicas racing to start one job id, then for its lease.
async fn lease(url: &str) {
    let store = Store::connect(url).await.expect("store");
    store.put_task("task0", "{}").await.expect("task");
    let row = |result: &str| job_row("job", result);
    // Every replica starts it at once, its lease already lapsed so that they race for
    // it next.
    let starters = (0..WRITERS).map(|w| {
        let (store, job) = (store.clone(), row("{}"));
        tokio::spawn(async move {
            store
                .insert_job("task0", &job, UNCAPPED, &format!("starter{w}"), -1)
                .await
                .expect("no starter fails")
        })
    });
    let started = futures::future::join_all(starters).await;
    assert_eq!(
        started.into_iter().filter(|s| *s.as_ref().unwrap()).count(),
        1,
        "one insert of an id wins"
    );
    assert!(
        !store.delete_stopped_job("task0", "job").await.unwrap(),
        "a running job keeps its id"
    );
    let takers = (0..WRITERS).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            let owner = format!("replica{w}");
            let taken = store
                .take_lease("task0", "job", &owner, 60)
                .await
                .expect("no taker fails");
            (owner, taken)
        })
    });
    let outcomes: Vec<(String, bool)> = futures::future::join_all(takers)
        .await
        .into_iter()
        .map(|t| t.expect("taker"))
        .collect();
    let winners: Vec<&String> = outcomes
        .iter()
        .filter(|(_, t)| *t)
        .map(|(o, _)| o)
        .collect();
    assert_eq!(winners.len(), 1, "one runner at a time: {outcomes:?}");
    let winner = winners[0].clone();
    let loser = outcomes
        .iter()
        .find(|(_, t)| !t)
        .expect("a loser")
        .0
        .clone();
    assert!(!store
        .save_leased_job("task0", &row("{\"by\":\"loser\"}"), &loser, Some(60))
        .await
        .unwrap());
    assert!(store
        .renew_lease("task0", "job", &winner, 60)
        .await
        .unwrap());
    // Live on the database's clock: nobody else takes it.
    assert!(!store.take_lease("task0", "job", &loser, 60).await.unwrap());
    assert!(store.lapsed_leases().await.unwrap().is_empty());

    // The winner stalls past its lease (renewed into the past on the database's
    // clock); the lease shows as lapsed, and the loser takes over and completes.
    assert!(store
        .renew_lease("task0", "job", &winner, -1)
        .await
        .unwrap());
    let lapsed = store.lapsed_leases().await.unwrap();
    assert_eq!(
        lapsed.iter().map(|l| l.owner.as_str()).collect::<Vec<_>>(),
        [winner.as_str()]
    );
    assert!(store.take_lease("task0", "job", &loser, 60).await.unwrap());
    let complete = JobRow {
        state: "complete".into(),
        ..row("{\"by\":\"successor\"}")
    };
    assert!(store
        .save_leased_job("task0", &complete, &loser, None)
        .await
        .unwrap());
    // The stalled runner wakes: its save is refused, the result stays.
    assert!(!store
        .save_leased_job("task0", &row("{\"by\":\"stalled\"}"), &winner, None)
        .await
        .unwrap());
    let stored = store.job("task0", "job").await.unwrap().expect("row");
    assert_eq!(
        (stored.state.as_str(), stored.result.as_str()),
        ("complete", "{\"by\":\"successor\"}")
    );
    assert_eq!(stored.lease, None, "a finished run ends its lease");
    assert!(store.lapsed_leases().await.unwrap().is_empty());
    assert!(
        !store.delete_stopped_job("task0", "job").await.unwrap(),
        "a complete job keeps its id"
    );
    let failed = JobRow {
        state: "failed".into(),
        ..row("{}")
    };
    store.put_task("task1", "{}").await.expect("task");
    assert!(store
        .insert_job("task1", &failed, UNCAPPED, "runner", 60)
        .await
        .unwrap());
    assert!(
        store.delete_stopped_job("task1", "job").await.unwrap(),
        "a failed job gives its id up"
    );
    assert!(store
        .insert_job("task1", &row("{}"), UNCAPPED, "runner", 60)
        .await
        .unwrap());
}

/// A job cancelled under its runner.
async fn cancelled_job(url: &str) {
    let store = Store::connect(url).await.expect("store");
    store.put_task("task0", "{}").await.expect("task");
    let job = JobRow {
        id: "job".into(),
        kind: "evaluation".into(),
        state: "running".into(),
        request: "{}".into(),
        result: "{\"done\":0}".into(),
        error: None,
        lease: None,
        created_at: 0,
        updated_at: 0,
        requester: Some("a client".into()),
    };
    let caps = RunningJobCaps {
        per_task: 1,
        per_requester: 0,
    };
    assert!(store
        .insert_job("task0", &job, caps, "runner", 60)
        .await
        .expect("inserted"));
    // The task's one running job is as many as it may have.
    let second = JobRow {
        id: "second".into(),
        ..job.clone()
    };
    assert!(!store
        .insert_job("task0", &second, caps, "runner", 60)
        .await
        .expect("refused"));
    let saved = JobRow {
        result: "{\"done\":16}".into(),
        ..job.clone()
    };
    assert!(store
        .save_leased_job("task0", &saved, "runner", Some(60))
        .await
        .unwrap());
    assert!(store.end_job("task0", "job", "cancelled").await.unwrap());
    assert!(
        !store.end_job("task0", "job", "cancelled").await.unwrap(),
        "only a running job is cancelled"
    );
    let late = JobRow {
        result: "{\"done\":32}".into(),
        ..job.clone()
    };
    assert!(!store
        .save_leased_job("task0", &late, "runner", Some(60))
        .await
        .unwrap());
    let stored = store.job("task0", "job").await.unwrap().expect("row");
    assert_eq!(
        (stored.state.as_str(), stored.result.as_str(), stored.lease),
        ("cancelled", "{\"done\":16}", None)
    );
    assert!(store.lapsed_leases().await.unwrap().is_empty());
    assert!(!store
        .take_lease("task0", "missing", "runner", 60)
        .await
        .unwrap());
    assert_eq!(store.jobs("task0", "evaluation").await.unwrap().len(), 1);
    assert!(store.delete_task("task0").await.unwrap());
    assert!(store.job("task0", "job").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_upserts_on_sqlite() {
    race(&TestDatabase::sqlite().url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs this"]
async fn concurrent_upserts_on_postgres() {
    race(&TestDatabase::postgres().await.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_job_starter_and_lease_holder_on_sqlite() {
    lease(&TestDatabase::sqlite().url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs this"]
async fn one_job_starter_and_lease_holder_on_postgres() {
    lease(&TestDatabase::postgres().await.url).await;
}

#[tokio::test]
async fn a_cancelled_job_keeps_its_last_save_on_sqlite() {
    cancelled_job(&TestDatabase::sqlite().url).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs this"]
async fn a_cancelled_job_keeps_its_last_save_on_postgres() {
    cancelled_job(&TestDatabase::postgres().await.url).await;
}
