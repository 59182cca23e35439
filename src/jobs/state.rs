//! Where a background job stands.

use serde::Serialize;

/// Where a job stands, as stored and as answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Some replica runs it, or will resume it within half a lease.
    Running,
    /// Done: the answer is stored.
    Complete,
    /// Stopped by an error that another run would meet again; the error is stored.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl JobState {
    /// The name stored in the database and written in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Running, Self::Complete, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_match_the_answers() {
        for state in [
            JobState::Running,
            JobState::Complete,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(serde_json::Value::from(state.as_str()))
            );
        }
        assert_eq!(JobState::parse("predicting"), None);
    }
}
