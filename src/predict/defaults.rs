//! A task's own prediction defaults: what a request leaves out is taken from here
//! before the service's built-in defaults. The tune job (`crate::tuning`) writes them;
//! a client may also write them in the task's definition.

use serde::{Deserialize, Serialize};

use super::Order;
use crate::retrieve::{Strategy, DEFAULT_MMR_LAMBDA};
use crate::tasks::MAX_K;

/// How the demonstrations are found, among what a default may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyChoice {
    /// The most similar examples.
    Knn,
    /// Similar but diverse examples (maximal marginal relevance, lambda 0.5).
    Mmr,
}

impl StrategyChoice {
    /// The retrieval strategy it stands for.
    pub fn strategy(self) -> Strategy {
        match self {
            Self::Knn => Strategy::Knn,
            Self::Mmr => Strategy::Mmr {
                lambda: DEFAULT_MMR_LAMBDA,
            },
        }
    }
}

/// How the LLM's label probabilities are corrected for the prompt's bias.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Calibration {
    /// As the model gives them.
    #[default]
    None,
    /// Divided by the probabilities of content-free inputs (Zhao et al., 2021).
    Contextual,
    /// Divided by the mean label distribution over the annotated examples
    /// (Zhou et al., 2023), measured by the tune job: the task's `label_prior`.
    Batch,
}

/// Prediction options a task sets for requests that leave them out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictDefaults {
    /// Demonstrations per query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// How they are found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyChoice>,
    /// How they are ordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    /// How the LLM's probabilities are calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// The demonstrations' vote's weight in the answer (0: the LLM alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote_weight: Option<f64>,
    /// Whether demonstrations come from the demonstration cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_demonstrations: Option<bool>,
    /// The mean LLM label distribution over annotated examples, in the task's label
    /// order: batch calibration's estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_prior: Option<Vec<f64>>,
}

impl PredictDefaults {
    /// Checks the defaults against the task's labels; answers the field and what is
    /// wrong.
    ///
    /// # Errors
    /// When a value is out of range, or batch calibration lacks its prior.
    pub fn check(&self, labels: &[String]) -> Result<(), (&'static str, String)> {
        if let Some(k) = self.k {
            if k > MAX_K {
                return Err((
                    "defaults.k",
                    format!("{k} is out of range: give 0 to {MAX_K}"),
                ));
            }
        }
        if let Some(weight) = self.vote_weight {
            if !(0.0..=1.0).contains(&weight) {
                return Err((
                    "defaults.vote_weight",
                    format!("{weight} is out of range: give 0 to 1"),
                ));
            }
        }
        let labelled = |field: &'static str| -> Result<(), (&'static str, String)> {
            if labels.is_empty() {
                Err((field, "applies to tasks with labels only".to_owned()))
            } else {
                Ok(())
            }
        };
        if self.vote_weight.is_some() {
            labelled("defaults.vote_weight")?;
        }
        if self.calibration.is_some_and(|c| c != Calibration::None) {
            labelled("defaults.calibration")?;
        }
        if let Some(prior) = &self.label_prior {
            if prior.len() != labels.len() || prior.iter().any(|p| !p.is_finite() || *p <= 0.0) {
                return Err((
                    "defaults.label_prior",
                    format!("give one positive probability per label ({})", labels.len()),
                ));
            }
        }
        if self.calibration == Some(Calibration::Batch) && self.label_prior.is_none() {
            return Err((
                "defaults.label_prior",
                "batch calibration needs the task's label_prior".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["negative".into(), "positive".into()]
    }

    #[test]
    fn defaults_are_checked_against_the_labels() {
        let good = PredictDefaults {
            k: Some(8),
            calibration: Some(Calibration::Batch),
            label_prior: Some(vec![0.4, 0.6]),
            vote_weight: Some(0.3),
            ..PredictDefaults::default()
        };
        assert_eq!(good.check(&labels()), Ok(()));
        let field = |d: PredictDefaults, labels: &[String]| d.check(labels).err().map(|e| e.0);
        let without_prior = PredictDefaults {
            label_prior: None,
            ..good.clone()
        };
        assert_eq!(
            field(without_prior, &labels()),
            Some("defaults.label_prior")
        );
        let short_prior = PredictDefaults {
            label_prior: Some(vec![1.0]),
            ..good.clone()
        };
        assert_eq!(field(short_prior, &labels()), Some("defaults.label_prior"));
        let heavy = PredictDefaults {
            vote_weight: Some(1.5),
            ..good.clone()
        };
        assert_eq!(field(heavy, &labels()), Some("defaults.vote_weight"));
        assert_eq!(field(good, &[]), Some("defaults.vote_weight"));
        let wide = PredictDefaults {
            k: Some(65),
            ..PredictDefaults::default()
        };
        assert_eq!(field(wide, &labels()), Some("defaults.k"));
    }
}
