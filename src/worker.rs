//! A model owned by one OS thread behind a bounded queue.
//!
//! Inference is CPU-bound and must never run on the async runtime's workers. Each model
//! gets a dedicated thread that takes jobs from a bounded channel; a full channel is
//! refused at once so that overload becomes a quick 429, not an unbounded wait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue holds as many jobs as it may.
    #[error("the model queue is full")]
    Full,
    /// The worker thread has ended.
    #[error("the model worker has stopped")]
    Stopped,
}

/// A cloneable handle that submits jobs to one worker thread.
pub struct Worker<J> {
    sender: SyncSender<J>,
    waiting: Arc<AtomicUsize>,
}

impl<J> Clone for Worker<J> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            waiting: Arc::clone(&self.waiting),
        }
    }
}

impl<J: Send + 'static> Worker<J> {
    /// Starts a thread named `name` that owns `state` and runs `handle` on every job.
    ///
    /// The thread ends when the last handle is dropped.
    ///
    /// # Errors
    /// When the operating system refuses a new thread.
    pub fn spawn<S, F>(
        name: &str,
        capacity: usize,
        mut state: S,
        mut handle: F,
    ) -> std::io::Result<Self>
    where
        S: Send + 'static,
        F: FnMut(&mut S, J) + Send + 'static,
    {
        let worker = name.to_owned();
        Self::spawn_with(name, capacity, move |queue| {
            while let Some(job) = queue.recv() {
                // A panic fails its own job (the caller's reply channel is dropped,
                // so its request gets an error) and the worker takes the next one,
                // rather than ending for good while `/ready` still answers 200.
                let run = std::panic::AssertUnwindSafe(|| handle(&mut state, job));
                if std::panic::catch_unwind(run).is_err() {
                    record_panic(&worker);
                }
            }
        })
    }

    /// Starts a thread named `name` that runs `body` on the job queue: for a worker
    /// that takes jobs its own way (a scheduler that runs several at once).
    ///
    /// # Errors
    /// When the operating system refuses a new thread.
    pub fn spawn_with<F>(name: &str, capacity: usize, body: F) -> std::io::Result<Self>
    where
        F: FnOnce(Queue<J>) + Send + 'static,
    {
        let (sender, receiver) = sync_channel::<J>(capacity.max(1));
        let waiting = Arc::new(AtomicUsize::new(0));
        let queue = Queue {
            receiver,
            waiting: Arc::clone(&waiting),
        };
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(queue))?;
        Ok(Self { sender, waiting })
    }

    /// Queues `job`, or refuses it at once when the queue is full.
    ///
    /// # Errors
    /// [`QueueError::Full`] under overload, [`QueueError::Stopped`] once the worker has
    /// ended.
    pub fn submit(&self, job: J) -> Result<(), QueueError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.sender.try_send(job).map_err(|e| {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => QueueError::Full,
                TrySendError::Disconnected(_) => QueueError::Stopped,
            }
        })
    }

    /// Jobs queued and not yet started.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// The worker thread's end of the queue.
pub struct Queue<J> {
    receiver: Receiver<J>,
    waiting: Arc<AtomicUsize>,
}

impl<J> Queue<J> {
    /// The next job, waiting for one; `None` once every handle is gone.
    pub fn recv(&self) -> Option<J> {
        let job = self.receiver.recv().ok()?;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        Some(job)
    }

    /// The next job if one is waiting.
    pub fn try_recv(&self) -> Option<J> {
        let job = self.receiver.try_recv().ok()?;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        Some(job)
    }
}

/// Logs and counts a panic that a worker survived.
pub fn record_panic(worker: &str) {
    tracing::error!(worker = %worker, "a model job panicked; the worker goes on");
    ::metrics::counter!("exemplar_worker_panics_total", "worker" => worker.to_owned()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_full_queue_refuses_at_once_and_jobs_run_in_order() {
        let (gate_tx, gate_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<u32>();
        let worker = Worker::spawn("test", 1, (), move |_, job: u32| {
            if job == 0 {
                gate_rx.recv().ok();
            }
            done_tx.send(job).ok();
        })
        .expect("thread");
        worker.submit(0).expect("first job starts");
        // Wait until the worker has taken job 0, so the queue is empty again.
        while worker.waiting() > 0 {
            std::thread::yield_now();
        }
        worker.submit(1).expect("one job fits the queue");
        assert_eq!(worker.submit(2), Err(QueueError::Full));
        gate_tx.send(()).expect("worker alive");
        assert_eq!(done_rx.recv().ok(), Some(0));
        assert_eq!(done_rx.recv().ok(), Some(1));
    }

    #[test]
    fn a_panicking_job_fails_alone_and_the_worker_goes_on() {
        let (done_tx, done_rx) = channel::<u32>();
        let worker = Worker::spawn("test", 4, 0u32, move |jobs_run, job: u32| {
            *jobs_run += 1;
            assert_ne!(job, 1, "job 1 panics");
            done_tx.send(*jobs_run).ok();
        })
        .expect("thread");
        for job in 0..3 {
            worker.submit(job).expect("the worker takes every job");
        }
        assert_eq!(done_rx.recv().ok(), Some(1));
        // Job 1 panicked; job 2 still runs on the same state.
        assert_eq!(done_rx.recv().ok(), Some(3));
        worker.submit(3).expect("the worker is alive");
        assert_eq!(done_rx.recv().ok(), Some(4));
    }
}
