//! Where a selection stands.

use serde::Serialize;

/// Where a selection stands, as stored (`awaiting_annotation` or `complete`) and as
/// answered (also `predicting`, while its stage-2 job runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionState {
    /// Vote-k after stage 1: the stage-1 items wait for their labels, or stage 2 waits
    /// to be continued.
    AwaitingAnnotation,
    /// Vote-k's stage 2 is predicting the pool on some replica.
    Predicting,
    /// The whole budget is chosen.
    Complete,
}

impl SelectionState {
    /// The name stored in the database and written in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingAnnotation => "awaiting_annotation",
            Self::Predicting => "predicting",
            Self::Complete => "complete",
        }
    }

    /// The state a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "awaiting_annotation" => Some(Self::AwaitingAnnotation),
            "predicting" => Some(Self::Predicting),
            "complete" => Some(Self::Complete),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_match_the_answers() {
        for state in [
            SelectionState::AwaitingAnnotation,
            SelectionState::Predicting,
            SelectionState::Complete,
        ] {
            assert_eq!(SelectionState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert_eq!(SelectionState::parse("done"), None);
    }
}
