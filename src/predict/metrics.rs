//! Classification metrics: accuracy, per-label precision and recall, macro-F1, and the
//! confusion matrix.

use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelScores {
    /// The label.
    pub label: String,
    /// Of the items predicted as this label, the share that has it.
    pub precision: f64,
    /// Of the items that have this label, the share predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Items that have this label.
    pub support: usize,
}

/// The metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Items evaluated.
    pub n: usize,
    /// Share predicted correctly.
    pub accuracy: f64,
    /// Mean F1 over the labels that occur in the gold labels or the predictions.
    pub macro_f1: f64,
    /// Scores per label, in the task's order.
    pub per_label: Vec<LabelScores>,
    /// The labels that index the confusion matrix.
    pub labels: Vec<String>,
    /// `confusion[gold][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// Compares predictions with gold labels over `labels`.
pub fn evaluate(labels: &[String], gold: &[String], predicted: &[String]) -> Evaluation {
    let index = |label: &String| labels.iter().position(|l| l == label);
    let mut confusion = vec![vec![0usize; labels.len()]; labels.len()];
    let mut correct = 0;
    for (g, p) in gold.iter().zip(predicted) {
        if g == p {
            correct += 1;
        }
        if let (Some(gi), Some(pi)) = (index(g), index(p)) {
            confusion[gi][pi] += 1;
        }
    }
    let per_label: Vec<LabelScores> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let true_positive = confusion[i][i];
            let predicted_as: usize = confusion.iter().map(|row| row[i]).sum();
            let support: usize = confusion[i].iter().sum();
            let precision = ratio(true_positive, predicted_as);
            let recall = ratio(true_positive, support);
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            LabelScores {
                label: label.clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let present: Vec<&LabelScores> = per_label
        .iter()
        .enumerate()
        .filter(|(i, s)| s.support > 0 || confusion.iter().any(|row| row[*i] > 0))
        .map(|(_, s)| s)
        .collect();
    let macro_f1 = if present.is_empty() {
        0.0
    } else {
        present.iter().map(|s| s.f1).sum::<f64>() / present.len() as f64
    };
    Evaluation {
        n: gold.len(),
        accuracy: ratio(correct, gold.len()),
        macro_f1,
        per_label,
        labels: labels.to_vec(),
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn metrics_by_hand() {
        let labels = strings(&["a", "b", "c"]);
        let gold = strings(&["a", "a", "a", "b", "b", "c"]);
        let predicted = strings(&["a", "a", "b", "b", "a", "a"]);
        let e = evaluate(&labels, &gold, &predicted);
        assert_eq!(e.n, 6);
        assert!((e.accuracy - 3.0 / 6.0).abs() < 1e-12);
        assert_eq!(
            e.confusion,
            vec![vec![2, 1, 0], vec![1, 1, 0], vec![1, 0, 0]]
        );
        // a: precision 2/4, recall 2/3, F1 = 2 * (1/2 * 2/3) / (1/2 + 2/3) = 4/7.
        assert!((e.per_label[0].f1 - 4.0 / 7.0).abs() < 1e-12);
        // b: precision 1/2, recall 1/2, F1 1/2; c: F1 0.
        assert!((e.per_label[1].f1 - 0.5).abs() < 1e-12);
        assert_eq!(e.per_label[2].f1, 0.0);
        assert!((e.macro_f1 - (4.0 / 7.0 + 0.5) / 3.0).abs() < 1e-12);
    }
}
