//! Replicas writing the same row at once: creating one task, or saving one selection,
//! from many connections together never fails on the key, and exactly one writer
//! reports the task as created. On PostgreSQL, where update-then-insert raced. And one
//! stage-2 lease: of replicas racing for it one wins, the others' saves are refused
//! until it lapses, and a lapsed runner cannot overwrite its successor's result. And a
//! job cancelled while it runs: its runner's next save is refused and no replica
//! resumes it.

use crate::common::TestDatabase;
use exemplar::store::{JobRow, Leased, RunningJobCaps, SelectionRow, Store};

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
                lease: None,
            };
            tokio::spawn(async move { store.put_selection("task0", &saved).await })
        });
        for writer in futures::future::join_all(writers).await {
            writer.expect("writer").expect("no writer fails");
        }
    }
}

/// Replicas racing for one selection's stage-2 lease.
async fn lease(url: &str) {
    let store = Store::connect(url).await.expect("store");
    store.put_task("task0", "{}").await.expect("task");
    let row = |result: &str| SelectionRow {
        id: "sel".into(),
        method: "vote-k".into(),
        state: "awaiting_annotation".into(),
        request: "{}".into(),
        result: result.into(),
        lease: None,
    };
    store
        .put_selection("task0", &row("{}"))
        .await
        .expect("saved");
    let takers = (0..WRITERS).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            let owner = format!("replica{w}");
            let taken = store
                .take_lease(Leased::Selections, "task0", "sel", &owner, 60)
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
        .save_leased("task0", &row("{\"by\":\"loser\"}"), &loser, Some(60))
        .await
        .unwrap());
    assert!(store
        .renew_lease(Leased::Selections, "task0", "sel", &winner, 60)
        .await
        .unwrap());
    // Live on the database's clock: nobody else takes it.
    assert!(!store
        .take_lease(Leased::Selections, "task0", "sel", &loser, 60)
        .await
        .unwrap());
    assert!(store
        .lapsed_leases(Leased::Selections)
        .await
        .unwrap()
        .is_empty());

    // The winner stalls past its lease (renewed into the past on the database's
    // clock); the lease shows as lapsed, and the loser takes over and completes.
    assert!(store
        .renew_lease(Leased::Selections, "task0", "sel", &winner, -1)
        .await
        .unwrap());
    let lapsed = store.lapsed_leases(Leased::Selections).await.unwrap();
    assert_eq!(
        lapsed.iter().map(|l| l.owner.as_str()).collect::<Vec<_>>(),
        [winner.as_str()]
    );
    assert!(store
        .take_lease(Leased::Selections, "task0", "sel", &loser, 60)
        .await
        .unwrap());
    let complete = SelectionRow {
        state: "complete".into(),
        ..row("{\"by\":\"successor\"}")
    };
    assert!(store
        .save_leased("task0", &complete, &loser, None)
        .await
        .unwrap());
    // The stalled runner wakes: its save is refused, the result stays.
    assert!(!store
        .save_leased("task0", &row("{\"by\":\"stalled\"}"), &winner, None)
        .await
        .unwrap());
    let stored = store.selection("task0", "sel").await.unwrap().expect("row");
    assert_eq!(
        (stored.state.as_str(), stored.result.as_str()),
        ("complete", "{\"by\":\"successor\"}")
    );
    assert_eq!(stored.lease, None, "a finished run ends its lease");
    assert!(store
        .lapsed_leases(Leased::Selections)
        .await
        .unwrap()
        .is_empty());
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
    assert!(store.lapsed_leases(Leased::Jobs).await.unwrap().is_empty());
    assert!(!store
        .take_lease(Leased::Jobs, "task0", "missing", "runner", 60)
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
async fn one_stage_two_lease_holder_on_sqlite() {
    lease(&TestDatabase::sqlite().url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs this"]
async fn one_stage_two_lease_holder_on_postgres() {
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
