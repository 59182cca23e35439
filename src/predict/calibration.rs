//! Label probabilities from label scores, and contextual calibration (Zhao et al.,
//! 2021): divide by the probabilities that content-free inputs get in the same prompt.

/// Probabilities from summed log-probabilities (a softmax over labels).
pub fn probabilities(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = scores.iter().map(|&s| (s as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// The element-wise mean of several probability vectors.
pub fn mean(rows: &[Vec<f64>]) -> Vec<f64> {
    let width = rows.first().map_or(0, Vec::len);
    (0..width)
        .map(|i| rows.iter().map(|r| r[i]).sum::<f64>() / rows.len() as f64)
        .collect()
}

/// Divides each probability by the content-free one and renormalises.
pub fn calibrate(probabilities: &[f64], content_free: &[f64]) -> Vec<f64> {
    let scaled: Vec<f64> = probabilities
        .iter()
        .zip(content_free)
        .map(|(p, cf)| p / cf.max(f64::MIN_POSITIVE))
        .collect();
    let total: f64 = scaled.iter().sum();
    scaled.into_iter().map(|s| s / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn contextual_calibration_by_hand() {
        // The query alone prefers "negative" 0.6 to 0.4.
        let query = [0.6, 0.4];
        // Content-free inputs: "N/A" -> (0.9, 0.1), "" -> (0.8, 0.2), "[MASK]" -> (0.7, 0.3);
        // their mean is (0.8, 0.2): the prompt is biased towards "negative".
        let content_free = mean(&[vec![0.9, 0.1], vec![0.8, 0.2], vec![0.7, 0.3]]);
        assert!(close(&content_free, &[0.8, 0.2]));
        // 0.6 / 0.8 = 0.75 and 0.4 / 0.2 = 2.0; normalised by 2.75: 3/11 and 8/11.
        let calibrated = calibrate(&query, &content_free);
        assert!(
            close(&calibrated, &[3.0 / 11.0, 8.0 / 11.0]),
            "{calibrated:?}"
        );
    }

    #[test]
    fn probabilities_are_a_softmax_of_scores() {
        // ln 1 and ln 3: one to three.
        let p = probabilities(&[0.0, 3f32.ln()]);
        assert!(close(&p, &[0.25, 0.75]) || (p[0] - 0.25).abs() < 1e-6);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
