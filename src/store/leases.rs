//! Leases on background work: which replica runs a row's job, and until when.
//!
//! Background jobs (evaluations, tunings, vote-k's stage 2) run on one replica at a
//! time: the one whose lease on the job's row has not expired. The runner extends it
//! while it works; a lease left to expire (its replica died) is taken over by another
//! replica, or by the same one restarted. Every statement here is a single `UPDATE` or
//! `SELECT`, so that replicas racing for a lease never both win, and reads the time
//! from the database's clock, never a replica's, so that replicas whose clocks
//! disagree (or one whose clock steps) still agree on who holds a lease.

use sqlx::Row;

use super::{Store, StoreError};

/// A replica's claim to run a row's background work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The replica holding it.
    pub owner: String,
    /// Seconds since the epoch when it lapses unless renewed.
    pub expires: i64,
}

/// A lease that nobody renewed in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LapsedLease {
    /// The row's task.
    pub task: String,
    /// The row.
    pub id: String,
    /// The replica that held it.
    pub owner: String,
}

impl Store {
    /// Takes the lease of a job for `owner` for `seconds` of the database's clock,
    /// unless another owner's lease is live; answers whether `owner` holds it now.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn take_lease(
        &self,
        task: &str,
        id: &str,
        owner: &str,
        seconds: i64,
    ) -> Result<bool, StoreError> {
        // One statement: of replicas racing for an expired lease, one update wins and
        // the others find it live.
        let taken = sqlx::query(&format!(
            "UPDATE jobs SET lease_owner = $1, lease_expires = {clock} + $2 \
             WHERE task = $3 AND id = $4 \
             AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires < {clock})",
            clock = self.clock(),
        ))
        .bind(owner)
        .bind(seconds)
        .bind(task)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    /// Extends `owner`'s lease to `seconds` from now on the database's clock; answers
    /// false when `owner` no longer holds it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn renew_lease(
        &self,
        task: &str,
        id: &str,
        owner: &str,
        seconds: i64,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(&format!(
            "UPDATE jobs SET lease_expires = {clock} + $1 \
             WHERE task = $2 AND id = $3 AND lease_owner = $4",
            clock = self.clock(),
        ))
        .bind(seconds)
        .bind(task)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(renewed == 1)
    }

    /// Lets go of `owner`'s lease: expired at once, so that any replica resumes the
    /// work, when `resumable`; else cleared, so that only a new request starts it again.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn release_lease(
        &self,
        task: &str,
        id: &str,
        owner: &str,
        resumable: bool,
    ) -> Result<(), StoreError> {
        let set = if resumable {
            "lease_expires = 0"
        } else {
            "lease_owner = NULL, lease_expires = NULL"
        };
        sqlx::query(&format!(
            "UPDATE jobs SET {set} WHERE task = $1 AND id = $2 AND lease_owner = $3"
        ))
        .bind(task)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every job whose lease lapsed on the database's clock: work whose replica died
    /// or stopped, with the task, id and the lapsed owner.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn lapsed_leases(&self) -> Result<Vec<LapsedLease>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT task, id, lease_owner FROM jobs \
             WHERE lease_owner IS NOT NULL AND lease_expires < {clock} ORDER BY updated_at",
            clock = self.clock(),
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(LapsedLease {
                    task: r.try_get("task")?,
                    id: r.try_get("id")?,
                    owner: r.try_get("lease_owner")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }
}
