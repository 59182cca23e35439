//! A model owned by one OS thread behind a bounded queue.
//!
//! Inference is CPU-bound and must never run on the async runtime's workers. Each model
//! gets a dedicated thread that takes jobs from a bounded channel; a full channel is
//! refused at once so that overload becomes a quick 429, not an unbounded wait.
//!
//! A panic in a model's work leaves it broken: its state (the kernel pool's locks,
//! caches half written) cannot be trusted. The worker records why, takes no more jobs
//! (they are refused with [`QueueError::Broken`]), `/ready` answers 503, and the server
//! exits non-zero so that its supervisor starts a fresh process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue holds as many jobs as it may.
    #[error("the model queue is full")]
    Full,
    /// The worker thread has ended.
    #[error("the model worker has stopped")]
    Stopped,
    /// A job panicked: the model takes no more work and the process restarts.
    #[error("the model is broken ({0}); the server is restarting")]
    Broken(&'static str),
}

/// A cloneable handle that submits jobs to one worker thread.
pub struct Worker<J> {
    sender: SyncSender<J>,
    waiting: Arc<AtomicUsize>,
    /// Set, with the worker's name, once a job panicked.
    broken: Arc<OnceLock<&'static str>>,
}

impl<J> Clone for Worker<J> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            waiting: Arc::clone(&self.waiting),
            broken: Arc::clone(&self.broken),
        }
    }
}

impl<J: Send + 'static> Worker<J> {
    /// Starts a thread named `name` that owns `state` and runs `handle` on every job.
    ///
    /// `handle` gets the job by reference and takes its reply out only to answer, so
    /// that a job whose work panics is dropped (its caller told) after the worker is
    /// marked broken: the caller learns why, not just that its reply is gone. The
    /// thread ends when the last handle is dropped.
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
        F: FnMut(&mut S, &mut J) + Send + 'static,
    {
        Self::spawn_with(name, capacity, move |queue| {
            while let Some(mut job) = queue.recv() {
                // A panic breaks the worker: the jobs still queued are refused and no
                // new one is taken. Then its own job is dropped: the caller's reply
                // channel closes, and the caller finds the worker broken.
                let run = std::panic::AssertUnwindSafe(|| handle(&mut state, &mut job));
                if std::panic::catch_unwind(run).is_err() {
                    queue.break_down();
                    drop(job);
                    return;
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
        let broken = Arc::new(OnceLock::new());
        // Named once per worker thread, for the process's life.
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let queue = Queue {
            receiver,
            waiting: Arc::clone(&waiting),
            broken: Arc::clone(&broken),
            name,
        };
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(queue))?;
        Ok(Self {
            sender,
            waiting,
            broken,
        })
    }

    /// The worker's name if a job of it panicked: it takes no more work.
    pub fn broken(&self) -> Option<&'static str> {
        self.broken.get().copied()
    }

    /// Why a job's reply channel closed unanswered: the worker broke (a panic), or it
    /// stopped.
    pub fn lost(&self) -> QueueError {
        self.broken()
            .map_or(QueueError::Stopped, QueueError::Broken)
    }

    /// Queues `job`, or refuses it at once when the queue is full.
    ///
    /// # Errors
    /// [`QueueError::Full`] under overload, [`QueueError::Stopped`] once the worker has
    /// ended, [`QueueError::Broken`] once a job of it panicked.
    pub fn submit(&self, job: J) -> Result<(), QueueError> {
        if let Some(name) = self.broken() {
            return Err(QueueError::Broken(name));
        }
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
    broken: Arc<OnceLock<&'static str>>,
    name: &'static str,
}

impl<J> Queue<J> {
    /// Records that a job panicked: the worker is broken from now on, its handles
    /// refuse new jobs, and the jobs still queued are dropped (their callers get an
    /// error). The thread should return after this.
    pub fn break_down(&self) {
        tracing::error!(worker = %self.name, "a model job panicked; the model takes no more work and the server restarts");
        ::metrics::counter!("exemplar_worker_panics_total", "worker" => self.name).increment(1);
        let _ = self.broken.set(self.name);
        while self.try_recv().is_some() {}
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_full_queue_refuses_at_once_and_jobs_run_in_order() {
        let (gate_tx, gate_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<u32>();
        let worker = Worker::spawn("test", 1, (), move |_, job: &mut u32| {
            let job = *job;
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

    /// A job whose reply is a channel: closed unanswered when the job is dropped.
    struct Replied {
        number: u32,
        reply: Option<std::sync::mpsc::Sender<u32>>,
    }

    #[test]
    fn a_panicking_job_breaks_the_worker_for_good_before_its_caller_hears() {
        let worker = Worker::spawn("test", 4, (), move |_, job: &mut Replied| {
            assert_ne!(job.number, 1, "job 1 panics");
            if let Some(reply) = job.reply.take() {
                reply.send(job.number).ok();
            }
        })
        .expect("thread");
        assert_eq!(worker.broken(), None);
        let answers: Vec<_> = (0..3)
            .map(|number| {
                let (reply, answer) = channel();
                let job = Replied {
                    number,
                    reply: Some(reply),
                };
                worker.submit(job).expect("queued before the panic");
                answer
            })
            .collect();
        assert_eq!(answers[0].recv().ok(), Some(0));
        // Job 1 panicked: its caller's channel closes, and by then the worker is marked
        // broken, so the caller can say why.
        assert!(answers[1].recv().is_err());
        assert_eq!(worker.lost(), QueueError::Broken("test"));
        // Job 2, queued behind it, never runs, and nothing new is taken.
        assert!(answers[2].recv().is_err());
        let (reply, _) = channel();
        let refused = worker.submit(Replied {
            number: 3,
            reply: Some(reply),
        });
        assert_eq!(refused.err(), Some(QueueError::Broken("test")));
    }
}
