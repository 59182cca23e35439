//! The demonstrations' vote as evidence beside the LLM: the similarity-weighted label
//! distribution of the retrieved examples, and its mix with the LLM's distribution.
//!
//! On some tasks a small model loses to the plain majority vote of the examples it is
//! shown (docs/results.md); the answer already holds those examples and their
//! similarities, so the vote costs nothing and a mix is never worse than its better half
//! once its weight is tuned.

/// The labels of `demonstrations` (label, similarity) as a distribution over `labels`:
/// each votes with its similarity (negative ones count 0). When no similarity is
/// positive (fixed demonstrations carry none) each votes once; with no demonstrations of
/// a known label the vote is uniform.
pub fn distribution<'a>(
    labels: &[String],
    demonstrations: impl Iterator<Item = (&'a str, f32)> + Clone,
) -> Vec<f64> {
    let tally = |weight: &dyn Fn(f32) -> f64| -> Vec<f64> {
        let mut votes = vec![0.0; labels.len()];
        for (label, similarity) in demonstrations.clone() {
            if let Some(i) = labels.iter().position(|l| l == label) {
                votes[i] += weight(similarity);
            }
        }
        votes
    };
    let mut votes = tally(&|s| f64::from(s.max(0.0)));
    if votes.iter().sum::<f64>() <= 0.0 {
        votes = tally(&|_| 1.0);
    }
    let total: f64 = votes.iter().sum();
    if total <= 0.0 {
        return vec![1.0 / labels.len().max(1) as f64; labels.len()];
    }
    votes.into_iter().map(|v| v / total).collect()
}

/// `(1 - weight) * llm + weight * vote`: 0 is the LLM alone, 1 the vote alone.
pub fn mix(llm: &[f64], vote: &[f64], weight: f64) -> Vec<f64> {
    llm.iter()
        .zip(vote)
        .map(|(l, v)| (1.0 - weight) * l + weight * v)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["negative".into(), "positive".into(), "neutral".into()]
    }

    fn assert_close(got: Vec<f64>, want: &[f64]) {
        assert!(
            got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6),
            "{got:?} is not {want:?}"
        );
    }

    #[test]
    fn votes_are_weighted_by_similarity_and_fall_back_to_counts_then_uniform() {
        let shown = [("positive", 0.6), ("negative", 0.2), ("positive", 0.2)];
        assert_close(
            distribution(&labels(), shown.iter().copied()),
            &[0.2, 0.8, 0.0],
        );
        // Negative similarity counts nothing; an unknown label is ignored.
        let shown = [("negative", -0.5), ("neutral", 0.5), ("other", 0.9)];
        assert_eq!(
            distribution(&labels(), shown.iter().copied()),
            vec![0.0, 0.0, 1.0]
        );
        // Fixed demonstrations (similarity 0): one vote each.
        let shown = [
            ("negative", 0.0),
            ("positive", 0.0),
            ("positive", 0.0),
            ("neutral", 0.0),
        ];
        assert_eq!(
            distribution(&labels(), shown.iter().copied()),
            vec![0.25, 0.5, 0.25]
        );
        let third = 1.0 / 3.0;
        assert_eq!(
            distribution(&labels(), std::iter::empty()),
            vec![third, third, third]
        );
    }

    #[test]
    fn the_mix_moves_from_the_llm_to_the_vote() {
        let (llm, vote) = ([0.7, 0.2, 0.1], [0.0, 1.0, 0.0]);
        assert_eq!(mix(&llm, &vote, 0.0), llm.to_vec());
        assert_eq!(mix(&llm, &vote, 1.0), vote.to_vec());
        let half = mix(&llm, &vote, 0.5);
        assert!((half[0] - 0.35).abs() < 1e-12 && (half[1] - 0.6).abs() < 1e-12);
        assert!((half.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
