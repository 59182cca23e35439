//! Background jobs: what was asked and how far it got, as JSON, with a state and the
//! lease of the replica running it.

use sqlx::Row;

use super::{now, Lease, Store, StoreError};

/// The most jobs a task's listing answers, newest first.
pub const MAX_LISTED_JOBS: i64 = 100;

/// A stored job.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// The job's id.
    pub id: String,
    /// What kind of work it is (`evaluation`).
    pub kind: String,
    /// `running`, `complete`, `failed` or `cancelled`.
    pub state: String,
    /// The request, as JSON.
    pub request: String,
    /// The progress so far, then the answer, as JSON.
    pub result: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Who runs it, and until when.
    pub lease: Option<Lease>,
    /// Seconds since the epoch when it was asked for.
    pub created_at: i64,
    /// Seconds since the epoch when it last saved.
    pub updated_at: i64,
    /// Who asked for it (`key:ID` or `address:IP`); none for jobs stored before this
    /// was kept.
    pub requester: Option<String>,
}

const SELECT_JOB: &str = "SELECT id, kind, state, request, result, error, lease_owner, \
                          lease_expires, created_at, updated_at, requester FROM jobs";

fn job_row(row: &sqlx::any::AnyRow) -> Result<JobRow, sqlx::Error> {
    let owner: Option<String> = row.try_get("lease_owner")?;
    let expires: Option<i64> = row.try_get("lease_expires")?;
    Ok(JobRow {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        state: row.try_get("state")?,
        request: row.try_get("request")?,
        result: row.try_get("result")?,
        error: row.try_get("error")?,
        lease: owner.map(|owner| Lease {
            owner,
            expires: expires.unwrap_or(0),
        }),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        requester: row.try_get("requester")?,
    })
}

/// The most running jobs a new one may join, counted in the database.
#[derive(Debug, Clone, Copy)]
pub struct RunningJobCaps {
    /// Running jobs of the task.
    pub per_task: usize,
    /// Running jobs of the requester.
    pub per_requester: usize,
}

/// A cap as SQL compares it: no cap (0) is the largest count.
fn cap(limit: usize) -> i64 {
    match limit {
        0 => i64::MAX,
        limit => i64::try_from(limit).unwrap_or(i64::MAX),
    }
}

impl Store {
    /// Stores a new job under `owner`'s lease for `seconds` (so that no other replica
    /// resumes it before its first save), unless the task or the row's requester
    /// already has as many running jobs as `caps` allow, or a job with its id is
    /// stored; answers whether it was stored. The count and the insert are one
    /// statement.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn insert_job(
        &self,
        task: &str,
        row: &JobRow,
        caps: RunningJobCaps,
        owner: &str,
        seconds: i64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO jobs (task, id, kind, state, request, result, error, lease_owner, \
             lease_expires, created_at, updated_at, requester) \
             SELECT $1, $2, $3, $4, $5, $6, NULL, $7, {clock} + $8, $9, $9, $10 \
             WHERE (SELECT COUNT(*) FROM jobs WHERE task = $1 AND state = 'running') < $11 \
             AND (SELECT COUNT(*) FROM jobs WHERE requester = $10 AND state = 'running') < $12 \
             ON CONFLICT (task, id) DO NOTHING",
            clock = self.clock(),
        ))
        .bind(task)
        .bind(&row.id)
        .bind(&row.kind)
        .bind(&row.state)
        .bind(&row.request)
        .bind(&row.result)
        .bind(owner)
        .bind(seconds)
        .bind(now())
        .bind(row.requester.clone())
        .bind(cap(caps.per_task))
        .bind(cap(caps.per_requester))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// How many jobs of the task run now.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn running_jobs_of_task(&self, task: &str) -> Result<i64, StoreError> {
        let count =
            sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE task = $1 AND state = 'running'")
                .bind(task)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        Ok(count)
    }

    /// Deletes the jobs that ended (complete, failed, cancelled) before `before`, in
    /// seconds since the epoch; answers how many.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_ended_jobs(&self, before: i64) -> Result<u64, StoreError> {
        let deleted = sqlx::query("DELETE FROM jobs WHERE state <> 'running' AND updated_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted)
    }

    /// Deletes a job that ended in failure or was cancelled, so that its id can be
    /// run again; answers whether it was deleted (not when it runs or completed).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn delete_stopped_job(&self, task: &str, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM jobs WHERE task = $1 AND id = $2 AND state IN ('failed', 'cancelled')",
        )
        .bind(task)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted == 1)
    }

    /// One job by id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn job(&self, task: &str, id: &str) -> Result<Option<JobRow>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_JOB} WHERE task = $1 AND id = $2"))
            .bind(task)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job_row).transpose()?)
    }

    /// The task's most recent jobs of `kind`, newest first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn jobs(&self, task: &str, kind: &str) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_JOB} WHERE task = $1 AND kind = $2 \
             ORDER BY created_at DESC, id DESC LIMIT {MAX_LISTED_JOBS}"
        ))
        .bind(task)
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(job_row).collect::<Result<_, _>>()?)
    }

    /// Saves the state, result and error of a job whose lease `owner` holds, extending
    /// the lease to `lease` seconds from now on the database's clock, or ending it when
    /// `lease` is `None`; answers false (and saves nothing) when `owner` no longer
    /// holds it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn save_leased_job(
        &self,
        task: &str,
        row: &JobRow,
        owner: &str,
        lease: Option<i64>,
    ) -> Result<bool, StoreError> {
        // NULL seconds leave NULL: the lease ends.
        let saved = sqlx::query(&format!(
            "UPDATE jobs SET state = $1, result = $2, error = $3, updated_at = $4, \
             lease_owner = $5, lease_expires = {clock} + $6 \
             WHERE task = $7 AND id = $8 AND lease_owner = $9",
            clock = self.clock(),
        ))
        .bind(&row.state)
        .bind(&row.result)
        .bind(&row.error)
        .bind(now())
        .bind(lease.map(|_| owner))
        .bind(lease)
        .bind(task)
        .bind(&row.id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(saved == 1)
    }

    /// Marks a job `state` (`cancelled`) and takes its lease away, so that its runner's
    /// next save is refused and no replica resumes it; answers false when the job was
    /// not running.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn end_job(&self, task: &str, id: &str, state: &str) -> Result<bool, StoreError> {
        let ended = sqlx::query(
            "UPDATE jobs SET state = $1, updated_at = $2, lease_owner = NULL, \
             lease_expires = NULL WHERE task = $3 AND id = $4 AND state = 'running'",
        )
        .bind(state)
        .bind(now())
        .bind(task)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(ended == 1)
    }
}
