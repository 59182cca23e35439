//! The job runner: work that outlives a request, run in the background on one replica
//! at a time under a lease in the database, and resumed after a crash.
//!
//! Every kind of [`Jobs`] (evaluations, tunings, vote-k's stage 2) runs here. Each
//! keeps its progress in its row of the job table and saves it batch by batch under the
//! lease; the runner takes the lease, renews it every third of its length while the
//! work runs, lets it go when the work stops short (expired at once when another run
//! should take the work up, cleared when nobody should), and at shutdown tells every
//! run to stop after the input it is on and waits for them. It bounds long work as the
//! fair-share limits bound requests ([`JobLimits`]): running jobs per requester, per
//! task and per replica, and how long ended jobs are kept.

mod kind;
mod state;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{RunningJobCaps, Store, StoreError};

pub use kind::{JobError, JobKind, Jobs, Progress, RunError, StoredJob};
pub use state::JobState;

/// Why leased work stopped short, as far as the runner must know it.
pub trait Interruption: From<StoreError> {
    /// The error for a lease that another replica took over.
    fn lease_lost() -> Self;
    /// Whether this is that error: the row is another runner's now, hands off.
    fn is_lease_lost(&self) -> bool;
    /// Whether another run (this replica's after a restart, or another's) should take
    /// the work up where it stopped: a shutdown or a passing failure, not a bad request.
    fn is_resumable(&self) -> bool;
    /// Whether the work was cancelled on request.
    fn is_cancelled(&self) -> bool {
        false
    }
    /// Whether the work stopped because the model's queue was full: worth running
    /// again here after a pause.
    fn is_overloaded(&self) -> bool {
        false
    }
}

/// Implements what the runner needs of a job kind's error type, one with a
/// `Run(RunError)` variant: the conversions into it of every error a run meets (so
/// that `?` works on them), and [`Interruption`], classified one way for every kind of
/// [`Jobs`]: a job error decides for itself, a full model queue is resumable, the rest
/// is not.
macro_rules! job_error {
    (@from $error:ty, $from:ty) => {
        impl From<$from> for $error {
            fn from(e: $from) -> Self {
                Self::Run(e.into())
            }
        }
    };
    ($error:ty, $kind:expr) => {
        $crate::jobs::job_error!(@from $error, $crate::store::StoreError);
        $crate::jobs::job_error!(@from $error, $crate::tasks::TaskError);
        $crate::jobs::job_error!(@from $error, $crate::predict::PredictError);
        $crate::jobs::job_error!(@from $error, $crate::jobs::JobError);

        impl $crate::jobs::Interruption for $error {
            fn lease_lost() -> Self {
                $crate::jobs::JobError::LeaseLost($kind).into()
            }

            fn is_lease_lost(&self) -> bool {
                matches!(
                    self,
                    Self::Run($crate::jobs::RunError::Job(
                        $crate::jobs::JobError::LeaseLost(_)
                    ))
                )
            }

            fn is_resumable(&self) -> bool {
                match self {
                    Self::Run($crate::jobs::RunError::Job(error)) => error.is_resumable(),
                    Self::Run($crate::jobs::RunError::Predict(error)) => error.is_overloaded(),
                    _ => false,
                }
            }

            fn is_cancelled(&self) -> bool {
                matches!(
                    self,
                    Self::Run($crate::jobs::RunError::Job(
                        $crate::jobs::JobError::Cancelled(_)
                    ))
                )
            }

            fn is_overloaded(&self) -> bool {
                matches!(
                    self,
                    Self::Run($crate::jobs::RunError::Predict(error)) if error.is_overloaded()
                )
            }
        }
    };
}
pub(crate) use job_error;

/// How much background work may run at once, and how long ended jobs are kept; a
/// limit of 0 is no limit.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    /// Running jobs one requester (an API key, or a client address) may have.
    pub per_requester: usize,
    /// Running jobs one task may have.
    pub per_task: usize,
    /// Jobs this replica runs at once (vote-k's stage 2 included); lapsed jobs past
    /// it are left to other replicas.
    pub per_replica: usize,
    /// Seconds an ended job is kept before it is deleted (0: kept for ever).
    pub retention_seconds: u64,
}

impl JobLimits {
    /// The caps a new job's insert is held to, counted in the database.
    pub fn caps(&self) -> RunningJobCaps {
        RunningJobCaps {
            per_task: self.per_task,
            per_requester: self.per_requester,
        }
    }

    /// No limit at all: for a command that runs its one job itself.
    pub const NONE: Self = Self {
        per_requester: 0,
        per_task: 0,
        per_replica: 0,
        retention_seconds: 0,
    };
}

/// Runs leased background work for this process.
pub struct JobRunner {
    store: Store,
    limits: JobLimits,
    /// This process's name on the leases it takes.
    owner: String,
    /// How long a lease holds unless renewed.
    lease: Duration,
    /// The background runs, awaited at shutdown.
    runs: TaskTracker,
    /// Cancelled at shutdown: runs stop after the input they are on.
    stop: CancellationToken,
}

impl JobRunner {
    /// A runner whose leases on `store`'s rows hold for `lease` unless renewed, within
    /// `limits`.
    pub fn new(store: Store, lease: Duration, limits: JobLimits) -> Self {
        Self {
            store,
            limits,
            owner: format!("replica-{:016x}", rand::random::<u64>()),
            lease: lease.max(Duration::from_secs(1)),
            runs: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// This process's name on its leases.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long a lease taken or renewed now holds, in seconds of the database's clock.
    pub fn lease_seconds(&self) -> i64 {
        i64::try_from(self.lease.as_secs()).unwrap_or(i64::MAX)
    }

    /// How often lapsed leases are worth looking for: half a lease.
    pub fn resume_interval(&self) -> Duration {
        (self.lease / 2).max(Duration::from_secs(1))
    }

    /// The configured limits.
    pub fn limits(&self) -> JobLimits {
        self.limits
    }

    /// Whether this replica runs as many jobs as it may.
    pub fn at_capacity(&self) -> bool {
        self.limits.per_replica > 0 && self.runs.len() >= self.limits.per_replica
    }

    /// Deletes the jobs that ended longer ago than the retention; answers how many.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn forget_ended(&self) -> Result<u64, StoreError> {
        if self.limits.retention_seconds == 0 {
            return Ok(0);
        }
        let kept = i64::try_from(self.limits.retention_seconds).unwrap_or(i64::MAX);
        self.store
            .delete_ended_jobs(crate::store::now().saturating_sub(kept))
            .await
    }

    /// Whether the process is shutting down, so that work stops where it is.
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Completes when the process starts shutting down.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Takes the lease of `id` for this process, unless another replica's is live;
    /// answers whether this process holds it now.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn take(&self, task: &str, id: &str) -> Result<bool, StoreError> {
        self.store
            .take_lease(task, id, &self.owner, self.lease_seconds())
            .await
    }

    /// Runs `work` in the background, awaited by [`JobRunner::stop`].
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.runs.spawn(work);
    }

    /// Runs `work` under the lease this process took on `id`, renewing it meanwhile;
    /// lets it go when the work stops short (expired at once when it is resumable,
    /// cleared when it is not). The work's own final save ends the lease.
    ///
    /// # Errors
    /// The work's error, or [`Interruption::lease_lost`] when the lease could not be
    /// renewed.
    pub async fn run_leased<E: Interruption>(
        &self,
        task: &str,
        id: &str,
        work: impl Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        let result = tokio::select! {
            result = work => result,
            lost = self.keep_lease(task, id) => Err(lost),
        };
        let resumable = match &result {
            // The final save ended the lease, or it is another replica's now.
            Ok(()) => return result,
            Err(e) if e.is_lease_lost() => return result,
            Err(e) => e.is_resumable(),
        };
        if let Err(e) = self
            .store
            .release_lease(task, id, &self.owner, resumable)
            .await
        {
            // It lapses by itself.
            tracing::warn!(task, id, error = %e, "letting go of a lease failed");
        }
        result
    }

    /// Renews the lease every third of its length; returns only when it cannot.
    async fn keep_lease<E: Interruption>(&self, task: &str, id: &str) -> E {
        loop {
            tokio::time::sleep(self.lease / 3).await;
            match self
                .store
                .renew_lease(task, id, &self.owner, self.lease_seconds())
                .await
            {
                Ok(true) => {}
                Ok(false) => return E::lease_lost(),
                Err(e) => return e.into(),
            }
        }
    }

    /// Tells every background run to stop after the input it is on (each saves what it
    /// has and lets its lease go, so that another replica, or this one restarted,
    /// resumes it), and waits for them.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.runs.close();
        self.runs.wait().await;
    }
}
