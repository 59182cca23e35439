//! The async face of the embedder: batches go to its worker thread.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{EmbedError, Embedder};
use crate::worker::Worker;

struct EmbedJob {
    texts: Vec<String>,
    /// Taken out to answer; left in place while the work runs (see [`Worker::spawn`]).
    reply: Option<oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>>,
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
            |embedder, job: &mut EmbedJob| {
                if job.reply.as_ref().is_some_and(|reply| !reply.is_closed()) {
                    let embeddings = embedder.embed(&job.texts);
                    if let Some(reply) = job.reply.take() {
                        let _ = reply.send(embeddings);
                    }
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
        let reply = Some(reply);
        self.worker.submit(EmbedJob { texts, reply })?;
        answer
            .await
            .map_err(|_| EmbedError::Queue(self.worker.lost()))?
    }
}
