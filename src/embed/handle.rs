//! The async face of the embedder: batches go to its worker thread.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{EmbedError, Embedder};
use crate::worker::{QueueError, Worker};

struct EmbedJob {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
}

/// A cloneable handle on the embedder worker thread.
#[derive(Clone)]
pub struct EmbedderHandle {
    worker: Worker<EmbedJob>,
    dimension: usize,
    name: Arc<str>,
}

impl EmbedderHandle {
    /// Moves `embedder` onto its own thread with a queue of `capacity` jobs.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(embedder: Embedder, name: &str, capacity: usize) -> std::io::Result<Self> {
        let dimension = embedder.dimension();
        let worker = Worker::spawn(
            "exemplar-embed",
            capacity,
            embedder,
            |embedder, job: EmbedJob| {
                if !job.reply.is_closed() {
                    let _ = job.reply.send(embedder.embed(&job.texts));
                }
            },
        )?;
        Ok(Self {
            worker,
            dimension,
            name: name.into(),
        })
    }

    /// The length of every embedding.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The embedder's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's name if a panic broke it.
    pub fn broken(&self) -> Option<&'static str> {
        self.worker.broken()
    }

    /// Jobs waiting for the model.
    pub fn waiting(&self) -> usize {
        self.worker.waiting()
    }

    /// Unit-length embeddings of `texts`, in order.
    ///
    /// # Errors
    /// [`EmbedError::Queue`] when the queue is full, or the model's own error.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (reply, answer) = oneshot::channel();
        self.worker.submit(EmbedJob { texts, reply })?;
        answer
            .await
            .map_err(|_| EmbedError::Queue(QueueError::Stopped))?
    }
}
