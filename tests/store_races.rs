//! Replicas writing the same row at once: creating one task, or saving one selection,
//! from many connections together never fails on the key, and exactly one writer
//! reports the task as created. On PostgreSQL, where update-then-insert raced. And one
//! stage-2 lease: of replicas racing for it one wins, the others' saves are refused
//! until it lapses, and a lapsed runner cannot overwrite its successor's result.

mod common;

use common::TestDatabase;
use exemplar::store::{SelectionRow, Store};

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
    let now = exemplar::store::now();
    let takers = (0..WRITERS).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            let owner = format!("replica{w}");
            let taken = store
                .take_lease("task0", "sel", &owner, now, now + 60)
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
        .save_leased("task0", &row("{\"by\":\"loser\"}"), &loser, Some(now + 60))
        .await
        .unwrap());
    assert!(store
        .renew_lease("task0", "sel", &winner, now + 60)
        .await
        .unwrap());

    // The winner stalls past its lease; the loser takes over and completes.
    assert!(store
        .take_lease("task0", "sel", &loser, now + 61, now + 120)
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
    assert!(store.lapsed_leases(now + 1000).await.unwrap().is_empty());
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
