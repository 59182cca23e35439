//! The one memory budget of the model's keys and values (`--kv-cache-mb`).
//!
//! Two kinds of holder share it: the jobs running (their sessions, and the keys and
//! values the next step is about to add) and the caches (prompt prefixes and
//! demonstration blocks kept for later requests). The running jobs' share is set by
//! the scheduler before and after every step; the caches keep what is left and evict
//! to stay within it.

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
}
