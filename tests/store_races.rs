//! Replicas writing the same row at once: creating one task, or saving one selection,
//! from many connections together never fails on the key, and exactly one writer
//! reports the task as created. On PostgreSQL, where update-then-insert raced.

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
            };
            tokio::spawn(async move { store.put_selection("task0", &saved).await })
        });
        for writer in futures::future::join_all(writers).await {
            writer.expect("writer").expect("no writer fails");
        }
    }
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
