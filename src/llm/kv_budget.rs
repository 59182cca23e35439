//! The one memory budget of the model's keys and values (`--kv-cache-mb`).
//!
//! Two kinds of holder share it: the jobs running and the caches (prompt prefixes and
//! demonstration blocks kept for later requests). A job is admitted only when what it
//! may hold at most (its prompt and `max_tokens`, or its prefix and a step of label
//! trees) fits beside the running jobs' reservations; a job that needs more than the
//! whole budget runs alone. The running jobs' share (their reservations, or what they
//! hold if more) is set by the scheduler before and after every step; the caches keep
//! what is left and evict to stay within it.

/// Bytes of keys and values the model may hold, and how they are shared.
#[derive(Debug, Clone, Copy)]
pub struct KvBudget {
    limit: usize,
    running: usize,
}

impl KvBudget {
    /// A budget of `limit` bytes with nothing running.
    pub fn new(limit: usize) -> Self {
        Self { limit, running: 0 }
    }

    /// Records what the running jobs hold, the coming step's new keys and values
    /// included (counted whole, though some of their blocks may be the caches' own).
    pub fn set_running(&mut self, bytes: usize) {
        self.running = bytes;
    }

    /// Whether a job reserving `job` bytes may start beside running jobs that reserve
    /// `reserved` (whatever the caches hold: they give way).
    pub fn admits(&self, reserved: usize, job: usize) -> bool {
        reserved.saturating_add(job) <= self.limit
    }

    /// Whether caches holding `cached` bytes, beside the running jobs, pass the limit.
    pub fn exceeded_by(&self, cached: usize) -> bool {
        cached.saturating_add(self.running) > self.limit
    }

    /// The running jobs' bytes: their sessions' keys and values, and `step_tokens`
    /// new tokens at `bytes_per_token` each.
    pub fn running_bytes(
        sessions: impl IntoIterator<Item = usize>,
        step_tokens: usize,
        bytes_per_token: usize,
    ) -> usize {
        sessions
            .into_iter()
            .sum::<usize>()
            .saturating_add(step_tokens.saturating_mul(bytes_per_token))
    }
}

#[cfg(test)]
mod tests {
    use super::KvBudget;

    #[test]
    fn the_caches_keep_what_the_running_jobs_leave() {
        let mut budget = KvBudget::new(100);
        assert!(!budget.exceeded_by(100));
        assert!(budget.exceeded_by(101));
        budget.set_running(KvBudget::running_bytes([30, 10], 2, 5));
        assert!(!budget.exceeded_by(50));
        assert!(budget.exceeded_by(51));
        budget.set_running(usize::MAX);
        assert!(
            budget.exceeded_by(0),
            "a running share past the limit leaves nothing"
        );
        assert!(!KvBudget::new(0).exceeded_by(0));
    }

    #[test]
    fn a_job_is_admitted_while_the_reservations_fit() {
        let budget = KvBudget::new(100);
        assert!(budget.admits(0, 100));
        assert!(budget.admits(60, 40));
        assert!(!budget.admits(60, 41));
        assert!(!budget.admits(usize::MAX, 1));
    }
}
