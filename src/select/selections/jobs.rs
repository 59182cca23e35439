//! The stage-2 runs of this process: their progress, batch by batch, and why the last
//! one of a selection failed. The database's lease says which replica runs a selection;
//! this says how far the run here has got between its saved batches.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

/// How far vote-k's stage 2 has predicted the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StageTwoProgress {
    /// Pool items predicted.
    pub done: usize,
    /// Pool items to predict in all.
    pub of: usize,
}

/// A stage 2 of this process: running, or stopped by the error it keeps.
#[derive(Debug, Clone, Default)]
pub struct Job {
    /// Pool items predicted so far.
    pub progress: StageTwoProgress,
    /// Why it stopped, once it failed.
    pub error: Option<String>,
}

impl Job {
    /// Whether it is still running.
    pub fn running(&self) -> bool {
        self.error.is_none()
    }
}

/// The stage-2 runs of this process, by selection id.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Job>>,
}

impl Jobs {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        // The map holds plain progress records, whole after any panic.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a run of `id` starting from `progress`, unless one is running; answers
    /// whether it was recorded.
    pub fn start(&self, id: &str, progress: StageTwoProgress) -> bool {
        let mut jobs = self.map();
        if jobs.get(id).is_some_and(Job::running) {
            return false;
        }
        jobs.insert(
            id.to_owned(),
            Job {
                progress,
                error: None,
            },
        );
        true
    }

    /// Moves the run of `id` on to `progress`.
    pub fn advance(&self, id: &str, progress: StageTwoProgress) {
        if let Some(job) = self.map().get_mut(id) {
            job.progress = progress;
        }
    }

    /// Keeps why the run of `id` failed, for the selection's answers.
    pub fn fail(&self, id: &str, error: String) {
        if let Some(job) = self.map().get_mut(id) {
            job.error = Some(error);
        }
    }

    /// Forgets the run of `id`: it finished, or stopped for another runner.
    pub fn forget(&self, id: &str) {
        self.map().remove(id);
    }

    /// The run of `id`, if this process has one.
    pub fn get(&self, id: &str) -> Option<Job> {
        self.map().get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_per_selection_until_it_fails_or_is_forgotten() {
        let jobs = Jobs::default();
        let start = StageTwoProgress { done: 16, of: 40 };
        assert!(jobs.start("s", start));
        assert!(!jobs.start("s", StageTwoProgress::default()));
        jobs.advance("s", StageTwoProgress { done: 32, of: 40 });
        assert_eq!(jobs.get("s").unwrap().progress.done, 32);
        jobs.fail("s", "model failed".into());
        assert!(!jobs.get("s").unwrap().running());
        assert!(jobs.start("s", start), "a failed run can be started again");
        jobs.forget("s");
        assert!(jobs.get("s").is_none());
    }
}
