//! Jobs of one kind (evaluations, tunings, vote-k's stage 2): stored with their request, started, polled,
//! listed, cancelled, run under a lease batch by batch, and resumed after a crash.
//!
//! A kind says what it is asked, what it saves as it goes and how it works
//! ([`JobKind`]); [`Jobs`] does the rest the same way for every kind. A kind's work
//! predicts its rows in batches through [`Progress::predict_batch`], which stops between
//! inputs on shutdown or cancellation and saves after each batch: what it saved is where
//! the next run starts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Interruption, JobRunner, JobState};

use crate::predict::{PredictError, PredictOptions, Prediction, Predictor, QueryInput};
use crate::store::{JobRow, Store, StoreError};
use crate::tasks::{Catalog, TaskError};

/// A job's first pause when the model's queue is full.
const FIRST_QUEUE_WAIT: Duration = Duration::from_millis(250);
/// Its longest pause.
const LONGEST_QUEUE_WAIT: Duration = Duration::from_secs(8);

/// What can stop any job, whatever its kind.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The database failed, or holds a job it cannot read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No job of this kind with that id.
    #[error("{kind} `{id}` does not exist in task `{task}`")]
    NotFound {
        /// The kind asked for.
        kind: &'static str,
        /// The task.
        task: String,
        /// The id asked for.
        id: String,
    },
    /// The server is shutting down; the job saved its progress and stopped.
    #[error("the {0} stopped because the server is shutting down; it resumes on the next replica to start")]
    ShuttingDown(&'static str),
    /// The job was cancelled.
    #[error("the {0} was cancelled")]
    Cancelled(&'static str),
    /// Another replica took the job over (this one's lease lapsed).
    #[error("another replica took over this {0}")]
    LeaseLost(&'static str),
    /// Someone other than who asked for the job tried to cancel it.
    #[error("only the client that started this {0} (or a key with the admin scope) may cancel it")]
    NotYours(&'static str),
    /// A requester, the task or the replica runs as many jobs as it may.
    #[error("{holder} already runs {limit} background jobs, as many as it may; retry when one has ended")]
    TooMany {
        /// Who is at the limit (`this client`, `task \`films\``, `this replica`).
        holder: String,
        /// The limit.
        limit: usize,
    },
}

impl JobError {
    /// Whether another run should take the work up where it stopped: after a shutdown
    /// or a database failure, not when the stored job cannot be read (a row written
    /// by another version, say), which every run would meet again.
    pub fn is_resumable(&self) -> bool {
        match self {
            Self::ShuttingDown(_) => true,
            Self::Store(error) => !matches!(error, StoreError::Corrupt(_)),
            _ => false,
        }
    }
}

/// What stops a job that predicts over a task (an evaluation, a tuning), besides the
/// kind's own checks: the task, the predictions, or the job itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The task is unknown or a task operation failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The predictions failed.
    #[error(transparent)]
    Predict(#[from] PredictError),
    /// The job is unknown, was stopped, or could not be stored.
    #[error(transparent)]
    Job(#[from] JobError),
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> Self {
        Self::Job(e.into())
    }
}

/// One kind of background job.
pub trait JobKind: Send + Sync + Sized + 'static {
    /// Its name in the job table and in messages (`evaluation`).
    const KIND: &'static str;
    /// The start of its ids (`eval`).
    const ID_PREFIX: &'static str;
    /// What it is asked.
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What it saves as it goes, and at the end its answer.
    type Saved: Serialize + DeserializeOwned + Default + Send + Sync + 'static;
    /// How a job is answered to clients.
    type View: Serialize;
    /// What goes wrong.
    type Error: Interruption + From<JobError> + From<TaskError> + std::fmt::Display + Send + 'static;

    /// Refuses a request that could never run (before it is stored).
    fn check<'a>(
        &'a self,
        task: &'a str,
        request: &'a Self::Request,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'a;

    /// Works the job from where its saved state stands to the end, saving on the way;
    /// leaves the answer in the saved state.
    fn work<'a>(
        &'a self,
        task: &'a str,
        request: &'a Self::Request,
        progress: &'a mut Progress<Self>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'a;

    /// What the job changes outside its own row once it is complete (a tuning's task
    /// defaults, a selection's chosen items): run only after the final save, which the
    /// lease guards, so that a job cancelled or taken over meanwhile changes nothing.
    fn completed<'a>(
        &'a self,
        task: &'a str,
        request: &'a Self::Request,
        saved: &'a Self::Saved,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'a;

    /// The job as answered to clients.
    fn view(job: &StoredJob<Self>) -> Self::View;
}

/// What every job saves: its kind's progress and the seconds its work took.
#[derive(Default, Serialize, Deserialize)]
struct SavedState<S> {
    #[serde(flatten)]
    saved: S,
    /// Seconds spent working, over every run of the job.
    #[serde(default)]
    seconds: f64,
}

/// A job as stored: its row's facts, its request and what it saved.
pub struct StoredJob<K: JobKind> {
    /// The job's id.
    pub id: String,
    /// Where it stands.
    pub state: JobState,
    /// Why it failed.
    pub error: Option<String>,
    /// Seconds since the epoch when it was asked for.
    pub created_at: i64,
    /// Seconds since the epoch when it last saved.
    pub updated_at: i64,
    /// What it was asked.
    pub request: K::Request,
    /// What it saved.
    pub saved: K::Saved,
    /// Seconds its work took so far.
    pub seconds: f64,
}

impl<K: JobKind> StoredJob<K> {
    /// Whether some replica runs it, or will resume it within half a lease.
    pub fn running(&self) -> bool {
        self.state == JobState::Running
    }

    /// `done` units of work per second of work, once some was timed.
    pub fn per_second(&self, done: usize) -> Option<f64> {
        (self.seconds > 0.0).then(|| done as f64 / self.seconds)
    }
}

/// A running job's saved state, and its way to save and to learn that it must stop.
pub struct Progress<K: JobKind> {
    /// What the job has done so far; saved after each [`Progress::predict_batch`].
    pub saved: K::Saved,
    seconds: f64,
    task: String,
    row: JobRow,
    store: Store,
    runner: Arc<JobRunner>,
    cancel: CancellationToken,
}

impl<K: JobKind> Progress<K> {
    /// Saves what the job has done, renewing the lease.
    ///
    /// # Errors
    /// [`JobError::LeaseLost`] when another replica holds the job now, or the database
    /// failing.
    async fn save(&self) -> Result<(), JobError> {
        let row = JobRow {
            result: self.state()?,
            ..self.row.clone()
        };
        if self
            .store
            .save_leased_job(
                &self.task,
                &row,
                self.runner.owner(),
                Some(self.runner.lease_seconds()),
            )
            .await?
        {
            Ok(())
        } else {
            Err(JobError::LeaseLost(K::KIND))
        }
    }

    /// Seconds of work over every run of the job so far, as of its last save.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// The saved state as stored.
    fn state(&self) -> Result<String, JobError> {
        serde_json::to_string(&SavedState {
            saved: &self.saved,
            seconds: self.seconds,
        })
        .map_err(corrupt)
    }

    /// Predicts `inputs` of `task` with `options`, handing each prediction to `keep`
    /// with the saved state, until all are done or the job must stop (after the input
    /// it is on); then saves, the time spent included.
    ///
    /// # Errors
    /// The prediction's error; the interruption (shutdown or cancellation) once what was
    /// predicted is saved; [`JobError::LeaseLost`] when another replica holds the job.
    pub async fn predict_batch(
        &mut self,
        predictor: &Arc<Predictor>,
        task: &str,
        inputs: Vec<QueryInput>,
        options: &PredictOptions,
        mut keep: impl FnMut(&mut K::Saved, Prediction) + Send,
    ) -> Result<(), K::Error>
    where
        K::Error: From<PredictError>,
    {
        let started = Instant::now();
        let mut run = predictor.start(task, inputs, options).await?;
        let mut stopped = None;
        loop {
            let next = tokio::select! {
                next = run.next() => next,
                interruption = self.interrupted() => {
                    stopped = Some(interruption);
                    break;
                }
            };
            match next {
                Some(prediction) => keep(&mut self.saved, prediction?),
                None => break,
            }
        }
        self.seconds += started.elapsed().as_secs_f64();
        match self.save().await {
            Ok(()) => {}
            // Stopped and taken over: the stop is the news.
            Err(JobError::LeaseLost(kind)) => {
                return Err(stopped.unwrap_or(JobError::LeaseLost(kind)).into())
            }
            Err(e) => return Err(e.into()),
        }
        match stopped {
            Some(stopped) => Err(stopped.into()),
            None => Ok(()),
        }
    }

    /// Completes when the job must stop: the server shuts down or the job is cancelled.
    async fn interrupted(&self) -> JobError {
        tokio::select! {
            () = self.runner.stopped() => JobError::ShuttingDown(K::KIND),
            () = self.cancel.cancelled() => JobError::Cancelled(K::KIND),
        }
    }
}

fn corrupt(e: serde_json::Error) -> JobError {
    JobError::Store(StoreError::Corrupt(format!("job: {e}")))
}

/// Starts, answers, cancels, runs and resumes the jobs of kind `K`.
pub struct Jobs<K: JobKind> {
    kind: K,
    catalog: Arc<Catalog>,
    runner: Arc<JobRunner>,
    /// The jobs this process runs, by id: cancelling one stops it between inputs.
    local: Mutex<HashMap<String, CancellationToken>>,
}

impl<K: JobKind> Jobs<K> {
    /// Jobs of `kind` over the catalog's tasks, run on `runner`.
    pub fn new(kind: K, catalog: Arc<Catalog>, runner: Arc<JobRunner>) -> Self {
        Self {
            kind,
            catalog,
            runner,
            local: Mutex::new(HashMap::new()),
        }
    }

    /// The kind, for what it does besides jobs.
    pub fn kind(&self) -> &K {
        &self.kind
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        // The map holds tokens only, whole after any panic.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a job for `request`, asked by `requester` (an API key's id or a client
    /// address), starts it, and answers it as it is then.
    ///
    /// # Errors
    /// When the task is unknown, the kind refuses the request, the requester, the task
    /// or this replica runs as many jobs as it may ([`JobError::TooMany`]), or the
    /// database fails.
    pub async fn start(
        self: &Arc<Self>,
        task: &str,
        requester: &str,
        request: K::Request,
    ) -> Result<K::View, K::Error> {
        let id = format!("{}-{:016x}", K::ID_PREFIX, rand::random::<u64>());
        self.start_as(task, requester, &id, request).await
    }

    /// [`Jobs::start`] under the id `id`, once: while a job with that id is stored,
    /// whoever asks again (a retry, a racing replica) is answered that job instead.
    ///
    /// # Errors
    /// As [`Jobs::start`].
    pub async fn start_as(
        self: &Arc<Self>,
        task: &str,
        requester: &str,
        id: &str,
        request: K::Request,
    ) -> Result<K::View, K::Error> {
        self.catalog.definition(task).await?;
        self.kind.check(task, &request).await?;
        let limits = self.runner.limits();
        if self.runner.at_capacity() {
            let holder = "this replica".to_owned();
            return Err(JobError::TooMany {
                holder,
                limit: limits.per_replica,
            }
            .into());
        }
        let row = JobRow {
            id: id.to_owned(),
            kind: K::KIND.to_owned(),
            state: JobState::Running.as_str().to_owned(),
            request: serde_json::to_string(&request).map_err(corrupt)?,
            result: serde_json::to_string(&SavedState::<K::Saved>::default()).map_err(corrupt)?,
            error: None,
            lease: None,
            created_at: 0,
            updated_at: 0,
            requester: Some(requester.to_owned()),
        };
        let store = self.catalog.store();
        let caps = limits.caps();
        let (owner, seconds) = (self.runner.owner(), self.runner.lease_seconds());
        let inserted = store
            .insert_job(task, &row, caps, owner, seconds)
            .await
            .map_err(JobError::from)?;
        if !inserted {
            if let Some(row) = self.find_row(task, id).await? {
                return Ok(K::view(&stored(&row)?));
            }
            let task_full = caps.per_task > 0
                && store
                    .running_jobs_of_task(task)
                    .await
                    .map_err(JobError::from)?
                    >= i64::try_from(caps.per_task).unwrap_or(i64::MAX);
            let (holder, limit) = if task_full {
                (format!("task `{task}`"), caps.per_task)
            } else {
                ("this client".to_owned(), caps.per_requester)
            };
            return Err(JobError::TooMany { holder, limit }.into());
        }
        self.spawn_run(task, &row.id);
        self.get(task, &row.id).await
    }

    /// A job by id.
    ///
    /// # Errors
    /// When the task or the job does not exist.
    pub async fn get(&self, task: &str, id: &str) -> Result<K::View, K::Error> {
        let (_, job) = self.load(task, id).await?;
        Ok(K::view(&job))
    }

    /// A job by id as stored, if there is one.
    ///
    /// # Errors
    /// When the task does not exist, the database fails or the job cannot be read.
    pub async fn stored(&self, task: &str, id: &str) -> Result<Option<StoredJob<K>>, K::Error> {
        match self.find_row(task, id).await? {
            Some(row) => Ok(Some(stored(&row)?)),
            None => Ok(None),
        }
    }

    /// The task's most recent jobs of this kind, newest first.
    ///
    /// # Errors
    /// When the task does not exist or the database fails.
    pub async fn list(&self, task: &str) -> Result<Vec<K::View>, K::Error> {
        self.catalog.definition(task).await?;
        let rows = self
            .catalog
            .store()
            .jobs(task, K::KIND)
            .await
            .map_err(JobError::from)?;
        // A row this version cannot read is left out of the listing, not fatal to it.
        Ok(rows
            .iter()
            .filter_map(|row| match stored(row) {
                Ok(job) => Some(K::view(&job)),
                Err(e) => {
                    tracing::warn!(task, job = row.id, error = %e, "a job cannot be read");
                    None
                }
            })
            .collect())
    }

    /// Cancels a running job: it stops between inputs, wherever it runs, and nobody
    /// resumes it. A job that already ended is answered as it is. `requester` is who
    /// asks: only the one that started the job may, unless `None` (an admin).
    ///
    /// # Errors
    /// When the task or the job does not exist, the job is another requester's, or
    /// the database fails.
    pub async fn cancel(
        &self,
        task: &str,
        id: &str,
        requester: Option<&str>,
    ) -> Result<K::View, K::Error> {
        let (row, _) = self.load(task, id).await?;
        if requester.is_some_and(|requester| row.requester.as_deref() != Some(requester)) {
            return Err(JobError::NotYours(K::KIND).into());
        }
        self.catalog
            .store()
            .end_job(task, id, JobState::Cancelled.as_str())
            .await
            .map_err(JobError::from)?;
        if let Some(token) = self.local().get(id) {
            token.cancel();
        }
        self.get(task, id).await
    }

    /// Resumes every job of this kind whose lease lapsed (its replica died or
    /// stopped); answers how many this replica took on.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn resume_lapsed(self: &Arc<Self>) -> Result<usize, K::Error> {
        let store = self.catalog.store();
        let mut resumed = 0;
        let lapsed = store.lapsed_leases().await.map_err(JobError::from)?;
        for lapsed in lapsed {
            // A replica at its limit leaves lapsed jobs to the others.
            if self.runner.stopping() || self.runner.at_capacity() {
                break;
            }
            let ours = store
                .job(&lapsed.task, &lapsed.id)
                .await
                .map_err(JobError::from)?
                .is_some_and(|row| row.kind == K::KIND);
            if !ours
                || !self
                    .runner
                    .take(&lapsed.task, &lapsed.id)
                    .await
                    .map_err(JobError::from)?
            {
                continue;
            }
            tracing::info!(
                task = lapsed.task,
                job = lapsed.id,
                kind = K::KIND,
                "resuming a job whose lease lapsed"
            );
            self.spawn_run(&lapsed.task, &lapsed.id);
            resumed += 1;
        }
        Ok(resumed)
    }

    async fn load(&self, task: &str, id: &str) -> Result<(JobRow, StoredJob<K>), K::Error> {
        let row = self.row(task, id).await?;
        let job = stored(&row)?;
        Ok((row, job))
    }

    /// A job's stored row, before it is read.
    async fn row(&self, task: &str, id: &str) -> Result<JobRow, K::Error> {
        let row = self
            .find_row(task, id)
            .await?
            .ok_or_else(|| JobError::NotFound {
                kind: K::KIND,
                task: task.to_owned(),
                id: id.to_owned(),
            })?;
        Ok(row)
    }

    /// A job's stored row, if there is one of this kind.
    async fn find_row(&self, task: &str, id: &str) -> Result<Option<JobRow>, K::Error> {
        self.catalog.definition(task).await?;
        Ok(self
            .catalog
            .store()
            .job(task, id)
            .await
            .map_err(JobError::from)?
            .filter(|row| row.kind == K::KIND))
    }

    /// Runs the job `id`, whose lease this process holds, in the background.
    fn spawn_run(self: &Arc<Self>, task: &str, id: &str) {
        let cancel = CancellationToken::new();
        self.local().insert(id.to_owned(), cancel.clone());
        let this = Arc::clone(self);
        let (task, id) = (task.to_owned(), id.to_owned());
        self.runner.spawn(async move {
            tracing::info!(task, job = id, kind = K::KIND, "running a job");
            let work = this.run_through_full_queues(&task, &id, &cancel);
            let result = this.runner.run_leased(&task, &id, work).await;
            this.local().remove(&id);
            match result {
                Ok(()) => {}
                Err(e) if e.is_resumable() || e.is_cancelled() => {
                    tracing::info!(task, job = id, kind = K::KIND, "{e}");
                }
                Err(e) => tracing::warn!(task, job = id, kind = K::KIND, error = %e, "job stopped"),
            }
        });
    }

    /// [`Jobs::run`], run again from its last save after a pause (doubling, up to
    /// [`LONGEST_QUEUE_WAIT`]) while it stops because the model's queue is full: the
    /// job keeps its lease and its replica through a burst of traffic, rather than
    /// letting the lease go for every replica to retake.
    async fn run_through_full_queues(
        &self,
        task: &str,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<(), K::Error> {
        let mut pause = FIRST_QUEUE_WAIT;
        loop {
            match self.run(task, id, cancel.clone()).await {
                Err(e) if e.is_overloaded() && !self.runner.stopping() => {
                    ::metrics::counter!("exemplar_job_queue_waits_total", "kind" => K::KIND)
                        .increment(1);
                    tracing::debug!(
                        task,
                        job = id,
                        kind = K::KIND,
                        ?pause,
                        "the model's queue is full; waiting"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.runner.stopped() => return Err(e),
                        // Run again: it finds the job cancelled and stops.
                        () = cancel.cancelled() => {}
                    }
                    pause = (pause * 2).min(LONGEST_QUEUE_WAIT);
                }
                other => return other,
            }
        }
    }

    /// Works the job from its saved state, then stores its end: complete with the
    /// answer, or failed with an error that another run would meet again.
    async fn run(&self, task: &str, id: &str, cancel: CancellationToken) -> Result<(), K::Error> {
        let row = self.row(task, id).await?;
        let job = match stored::<K>(&row) {
            Ok(job) => job,
            Err(unreadable) => {
                // Every run would meet it again (a row of another version, say): it is
                // failed with why, not resumed and not left running for ever.
                let failed = JobRow {
                    state: JobState::Failed.as_str().to_owned(),
                    error: Some(unreadable.to_string()),
                    ..row
                };
                self.catalog
                    .store()
                    .save_leased_job(task, &failed, self.runner.owner(), None)
                    .await
                    .map_err(JobError::from)?;
                return Err(unreadable.into());
            }
        };
        if job.state != JobState::Running {
            return Err(JobError::Cancelled(K::KIND).into());
        }
        let mut progress = Progress::<K> {
            saved: job.saved,
            seconds: job.seconds,
            task: task.to_owned(),
            row: row.clone(),
            store: self.catalog.store().clone(),
            runner: Arc::clone(&self.runner),
            cancel,
        };
        let result = self.kind.work(task, &job.request, &mut progress).await;
        let complete = result.is_ok();
        let ended = match result {
            Ok(()) => JobRow {
                state: JobState::Complete.as_str().to_owned(),
                result: progress.state()?,
                ..row
            },
            Err(e) if e.is_resumable() || e.is_lease_lost() || e.is_cancelled() => return Err(e),
            Err(e) => JobRow {
                state: JobState::Failed.as_str().to_owned(),
                error: Some(e.to_string()),
                ..row
            },
        };
        // Only while the lease is this process's: a run that lapsed and was taken over,
        // or was cancelled, never overwrites what is stored.
        if !self
            .catalog
            .store()
            .save_leased_job(task, &ended, self.runner.owner(), None)
            .await
            .map_err(JobError::from)?
        {
            return Err(JobError::LeaseLost(K::KIND).into());
        }
        if complete {
            self.kind
                .completed(task, &job.request, &progress.saved)
                .await?;
        }
        Ok(())
    }
}

/// The stored job a row holds.
fn stored<K: JobKind>(row: &JobRow) -> Result<StoredJob<K>, JobError> {
    let state = JobState::parse(&row.state).ok_or_else(|| {
        JobError::Store(StoreError::Corrupt(format!(
            "job `{}` has the unknown state `{}`",
            row.id, row.state
        )))
    })?;
    let saved: SavedState<K::Saved> = serde_json::from_str(&row.result).map_err(corrupt)?;
    Ok(StoredJob {
        id: row.id.clone(),
        state,
        error: row.error.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
        request: serde_json::from_str(&row.request).map_err(corrupt)?,
        saved: saved.saved,
        seconds: saved.seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_that_cannot_be_read_is_not_resumed() {
        assert!(!JobError::Store(StoreError::Corrupt("unknown state".into())).is_resumable());
        assert!(!corrupt(serde_json::from_str::<u8>("x").unwrap_err()).is_resumable());
        assert!(JobError::Store(StoreError::Database(sqlx::Error::PoolTimedOut)).is_resumable());
        assert!(JobError::ShuttingDown("evaluation").is_resumable());
        assert!(!JobError::Cancelled("evaluation").is_resumable());
    }
}
