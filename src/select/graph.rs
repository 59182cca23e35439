//! The kNN graph over a pool's embeddings that vote-k and IDEAL select from.
//!
//! Embeddings are centred (the pool's mean subtracted) and re-normalised before cosine
//! similarity, as the vote-k reference code does. Up to [`EXACT_LIMIT`] items the graph
//! is exact (blocked matrix products); past that it comes from an HNSW index.

use candle_core::{Device, Tensor};

use crate::index::VectorIndex;

/// Pools up to this size get an exact graph.
pub const EXACT_LIMIT: usize = 20_000;
/// Rows multiplied per block of the exact graph.
const BLOCK: usize = 512;

/// Each item's nearest other items, most similar first, with their cosine similarity.
pub type Neighbours = Vec<Vec<(usize, f32)>>;

/// Subtracts the mean and scales every row to unit length.
pub fn centre(embeddings: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let dimension = embeddings.first().map_or(0, Vec::len);
    let mut mean = vec![0f32; dimension];
    for e in embeddings {
        for (m, x) in mean.iter_mut().zip(e) {
            *m += x / embeddings.len() as f32;
        }
    }
    embeddings
        .iter()
        .map(|e| {
            let centred: Vec<f32> = e.iter().zip(&mean).map(|(x, m)| x - m).collect();
            let norm = centred.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                centred.into_iter().map(|x| x / norm).collect()
            } else {
                centred
            }
        })
        .collect()
}

/// The `k` nearest other items of every item (fewer when the pool is smaller).
///
/// # Errors
/// When a matrix product fails.
pub fn knn_graph(embeddings: &[Vec<f32>], k: usize) -> candle_core::Result<Neighbours> {
    let unit = centre(embeddings);
    if unit.len() <= EXACT_LIMIT {
        exact(&unit, k)
    } else {
        Ok(approximate(&unit, k))
    }
}

fn exact(unit: &[Vec<f32>], k: usize) -> candle_core::Result<Neighbours> {
    let n = unit.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let dimension = unit[0].len();
    let flat: Vec<f32> = unit.iter().flatten().copied().collect();
    let all = Tensor::from_vec(flat, (n, dimension), &Device::Cpu)?;
    let all_t = all.t()?.contiguous()?;
    let mut graph = Vec::with_capacity(n);
    for start in (0..n).step_by(BLOCK) {
        let rows = all.narrow(0, start, BLOCK.min(n - start))?;
        let similarities: Vec<Vec<f32>> = rows.matmul(&all_t)?.to_vec2()?;
        for (offset, row) in similarities.into_iter().enumerate() {
            graph.push(top_k(start + offset, &row, k));
        }
    }
    Ok(graph)
}

/// The `k` largest entries of `row` other than `me`, largest first (ties: lower index).
fn top_k(me: usize, row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut candidates: Vec<(usize, f32)> = row
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != me)
        .map(|(j, &s)| (j, s))
        .collect();
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let keep = k.min(candidates.len());
    if keep > 0 && keep < candidates.len() {
        candidates.select_nth_unstable_by(keep - 1, order);
    }
    candidates.truncate(keep);
    candidates.sort_by(order);
    candidates
}

fn approximate(unit: &[Vec<f32>], k: usize) -> Neighbours {
    let dimension = unit.first().map_or(0, Vec::len);
    let points = unit.iter().cloned().enumerate().collect();
    // Centred vectors are never zero for distinct texts; a degenerate one gets no edges.
    let Ok(index) = VectorIndex::build(dimension, points) else {
        return vec![Vec::new(); unit.len()];
    };
    unit.iter()
        .enumerate()
        .map(|(me, v)| {
            index
                .search(v, k + 1)
                .into_iter()
                .filter(|h| h.id != me)
                .take(k)
                .map(|h| (h.id, h.similarity))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_graph_lists_the_nearest_others_first() {
        // Four points on a line after centring: 0 and 1 close, 2 and 3 close.
        let embeddings = vec![
            vec![1.0, 0.1],
            vec![1.0, 0.2],
            vec![-1.0, 0.1],
            vec![-1.0, 0.2],
        ];
        let graph = knn_graph(&embeddings, 1).expect("graph");
        let nearest: Vec<usize> = graph.iter().map(|n| n[0].0).collect();
        assert_eq!(nearest, vec![1, 0, 3, 2]);
        let graph = knn_graph(&embeddings, 10).expect("graph");
        assert!(
            graph.iter().all(|n| n.len() == 3),
            "k is capped by the pool"
        );
    }

    #[test]
    fn centring_removes_the_shared_direction() {
        let centred = centre(&[vec![1.0, 1.0], vec![1.0, -1.0]]);
        assert_eq!(centred, vec![vec![0.0, 1.0], vec![0.0, -1.0]]);
    }
}
