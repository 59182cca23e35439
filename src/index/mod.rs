//! An HNSW index (hnsw_rs, cosine distance) over one task's example embeddings.
//!
//! hnsw_rs cannot delete: a deleted point is hidden by a filter at once, and the
//! graph is rebuilt without such points once they pass a share of the index.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use hnsw_rs::prelude::{DistCosine, Hnsw};

/// Neighbours kept per node and layer (hnsw_rs exits the process above 256).
const MAX_CONNECTIONS: usize = 16;
/// Candidate list size while building.
const EF_CONSTRUCTION: usize = 200;
/// Candidate list size while searching, at least; grows with `k`.
const EF_SEARCH: usize = 128;
/// Layers of the graph.
const MAX_LAYERS: usize = 16;
/// Deleted points are compacted away once they reach this share of the index...
const COMPACT_SHARE: f64 = 0.2;
/// ...and at least this many, so that small indexes are not rebuilt over and over.
const COMPACT_MIN: usize = 64;

/// Why a vector was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    /// The vector's length differs from the index's.
    #[error("vector has {got} dimensions, the index has {expected}")]
    Dimension {
        /// The index's dimension.
        expected: usize,
        /// The vector's.
        got: usize,
    },
    /// The vector is zero or holds NaN or infinity: cosine is undefined.
    #[error("vector is zero or not finite")]
    Degenerate,
}

/// A neighbour found by a search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The point's id.
    pub id: usize,
    /// Cosine similarity to the query.
    pub similarity: f32,
}

struct Graph {
    hnsw: Hnsw<'static, f32, DistCosine>,
    /// Points in the graph, deleted or not.
    size: usize,
}

impl Graph {
    fn new(capacity: usize) -> Self {
        Self {
            hnsw: Hnsw::new(
                MAX_CONNECTIONS,
                capacity.max(1024),
                MAX_LAYERS,
                EF_CONSTRUCTION,
                DistCosine {},
            ),
            size: 0,
        }
    }
}

/// A vector index that supports insert, delete and k-nearest search.
///
/// Locks are always taken in the order graph, vectors, deleted (a later one may be
/// taken while holding an earlier one, never the reverse), so no two calls deadlock.
pub struct VectorIndex {
    dimension: usize,
    graph: RwLock<Graph>,
    /// Live vectors by id, for exact similarities (MMR) and rebuilds.
    vectors: RwLock<HashMap<usize, Arc<[f32]>>>,
    /// Ids in the graph that were deleted since the last rebuild.
    deleted: RwLock<HashSet<usize>>,
    compacting: AtomicBool,
}

fn check(vector: &[f32], dimension: usize) -> Result<(), IndexError> {
    if vector.len() != dimension {
        return Err(IndexError::Dimension {
            expected: dimension,
            got: vector.len(),
        });
    }
    let finite = vector.iter().all(|x| x.is_finite());
    if !finite || vector.iter().all(|&x| x == 0.0) {
        return Err(IndexError::Degenerate);
    }
    Ok(())
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let norm = (na * nb).sqrt();
    if norm > 0.0 {
        dot / norm
    } else {
        0.0
    }
}

impl VectorIndex {
    /// An empty index of `dimension`-long vectors.
    pub fn new(dimension: usize) -> Self {
        Self {
            dimension,
            graph: RwLock::new(Graph::new(0)),
            vectors: RwLock::new(HashMap::new()),
            deleted: RwLock::new(HashSet::new()),
            compacting: AtomicBool::new(false),
        }
    }

    /// Builds an index from many points at once (in parallel).
    ///
    /// # Errors
    /// When a vector has the wrong length or is degenerate.
    pub fn build(dimension: usize, points: Vec<(usize, Vec<f32>)>) -> Result<Self, IndexError> {
        for (_, vector) in &points {
            check(vector, dimension)?;
        }
        let mut graph = Graph::new(points.len());
        let refs: Vec<(&Vec<f32>, usize)> = points.iter().map(|(id, v)| (v, *id)).collect();
        graph.hnsw.parallel_insert(&refs);
        graph.size = points.len();
        let vectors = points
            .into_iter()
            .map(|(id, v)| (id, Arc::from(v)))
            .collect();
        Ok(Self {
            dimension,
            graph: RwLock::new(graph),
            vectors: RwLock::new(vectors),
            deleted: RwLock::new(HashSet::new()),
            compacting: AtomicBool::new(false),
        })
    }

    /// Live points.
    pub fn len(&self) -> usize {
        read(&self.vectors).len()
    }

    /// Whether no live point remains.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a point.
    ///
    /// # Errors
    /// When the vector has the wrong length or is degenerate.
    pub fn insert(&self, id: usize, vector: &[f32]) -> Result<(), IndexError> {
        check(vector, self.dimension)?;
        // Graph and vectors change under the graph's lock, so that a compaction, which
        // swaps graphs under it, sees the point in both or in neither.
        let mut graph = write(&self.graph);
        write(&self.vectors).insert(id, Arc::from(vector));
        graph.hnsw.insert_slice((vector, id));
        graph.size += 1;
        write(&self.deleted).remove(&id);
        Ok(())
    }

    /// Hides a point from every later search; answers whether it was live.
    pub fn remove(&self, id: usize) -> bool {
        let removed = write(&self.vectors).remove(&id).is_some();
        if removed {
            write(&self.deleted).insert(id);
        }
        removed
    }

    /// The stored vector of a live point.
    pub fn vector(&self, id: usize) -> Option<Arc<[f32]>> {
        read(&self.vectors).get(&id).cloned()
    }

    /// Ids of all live points.
    pub fn ids(&self) -> Vec<usize> {
        read(&self.vectors).keys().copied().collect()
    }

    /// The `k` live points most similar to `query`, most similar first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        if k == 0 || check(query, self.dimension).is_err() {
            return Vec::new();
        }
        let graph = read(&self.graph);
        let vectors = read(&self.vectors);
        let is_live = |id: &usize| vectors.contains_key(id);
        let ef = EF_SEARCH.max(2 * k);
        let mut hits: Vec<Hit> = graph
            .hnsw
            .search_filter(query, k, ef, Some(&is_live))
            .into_iter()
            .filter(|n| is_live(&n.d_id))
            .map(|n| Hit {
                id: n.d_id,
                similarity: 1.0 - n.distance,
            })
            .collect();
        hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        hits
    }

    /// Exact search over every live point; the reference that HNSW recall is measured
    /// against, and the fallback for tiny indexes.
    pub fn exact_search(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let mut hits: Vec<Hit> = read(&self.vectors)
            .iter()
            .map(|(&id, v)| Hit {
                id,
                similarity: cosine(query, v),
            })
            .collect();
        hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        hits.truncate(k);
        hits
    }

    /// Whether deleted points have passed the share that calls for [`Self::compact`].
    pub fn needs_compaction(&self) -> bool {
        let deleted = read(&self.deleted).len();
        let size = read(&self.graph).size;
        deleted >= COMPACT_MIN && deleted as f64 >= COMPACT_SHARE * size as f64
    }

    /// Rebuilds the graph from the live points, dropping deleted ones.
    ///
    /// Searches and inserts go on while the new graph is built; a second call while
    /// one runs returns at once.
    pub fn compact(&self) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let points: Vec<(usize, Arc<[f32]>)> = read(&self.vectors)
            .iter()
            .map(|(&id, v)| (id, Arc::clone(v)))
            .collect();
        let mut graph = Graph::new(points.len());
        let refs: Vec<(&[f32], usize)> = points.iter().map(|(id, v)| (&v[..], *id)).collect();
        graph.hnsw.parallel_insert_slice(&refs);
        graph.size = points.len();
        // Points inserted while the new graph was built are added before the swap.
        let mut current = write(&self.graph);
        let vectors = read(&self.vectors);
        let built: HashSet<usize> = points.iter().map(|(id, _)| *id).collect();
        for (&id, vector) in vectors.iter().filter(|(id, _)| !built.contains(id)) {
            graph.hnsw.insert_slice((vector, id));
            graph.size += 1;
        }
        *current = graph;
        write(&self.deleted).retain(|id| built.contains(id) && !vectors.contains_key(id));
        self.compacting.store(false, Ordering::Release);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a way
    // that matters: every update is a single insert or remove.
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(angle: f32) -> Vec<f32> {
        vec![angle.cos(), angle.sin()]
    }

    #[test]
    fn search_orders_by_similarity_and_hides_deleted_points_at_once() {
        let index = VectorIndex::new(2);
        for (id, angle) in [(1, 0.0f32), (2, 0.5), (3, 1.0), (4, 3.0)] {
            index.insert(id, &unit(angle)).expect("valid vector");
        }
        let hits: Vec<usize> = index.search(&unit(0.1), 3).iter().map(|h| h.id).collect();
        assert_eq!(hits, vec![1, 2, 3]);
        assert!(index.remove(1));
        assert!(!index.remove(1));
        let hits: Vec<usize> = index.search(&unit(0.1), 3).iter().map(|h| h.id).collect();
        assert_eq!(hits, vec![2, 3, 4]);
        let top = index.search(&unit(0.5), 1)[0];
        assert!((top.similarity - 1.0).abs() < 1e-5);
    }

    #[test]
    fn degenerate_and_misshapen_vectors_are_refused() {
        let index = VectorIndex::new(2);
        assert_eq!(index.insert(1, &[0.0, 0.0]), Err(IndexError::Degenerate));
        assert_eq!(
            index.insert(1, &[f32::NAN, 1.0]),
            Err(IndexError::Degenerate)
        );
        assert_eq!(
            index.insert(1, &[1.0]),
            Err(IndexError::Dimension {
                expected: 2,
                got: 1
            })
        );
    }

    /// A seeded pseudo-random unit vector of 16 dimensions.
    fn random_vector(seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..16)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn searches_inserts_removes_and_compactions_in_threads_neither_deadlock_nor_lose_points() {
        let index = Arc::new(VectorIndex::new(16));
        let (done, finished) = std::sync::mpsc::channel();
        let workers = {
            let index = Arc::clone(&index);
            std::thread::spawn(move || {
                std::thread::scope(|scope| {
                    for writer in 0..2u64 {
                        let index = &index;
                        scope.spawn(move || {
                            for i in 0..1500u64 {
                                let id = (writer * 100_000 + i) as usize;
                                index.insert(id, &random_vector(id as u64)).expect("valid");
                                if i % 3 == 0 {
                                    index.remove(id);
                                }
                            }
                        });
                    }
                    for _ in 0..2 {
                        let index = &index;
                        scope.spawn(move || {
                            for i in 0..3000u64 {
                                index.search(&random_vector(i + 7), 5);
                            }
                        });
                    }
                    let index = &index;
                    scope.spawn(move || {
                        for _ in 0..15 {
                            index.compact();
                        }
                    });
                });
                let _ = done.send(());
            })
        };
        finished
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("the threads finish: no deadlock");
        workers.join().expect("no thread panicked");
        index.compact();
        let live = index.ids();
        assert_eq!(live.len(), 2 * 1000);
        let lost: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&id| {
                let hits = index.search(&random_vector(id as u64), 1);
                hits.first().map(|h| h.id) != Some(id)
            })
            .collect();
        assert!(lost.is_empty(), "live points the graph lost: {lost:?}");
    }

    #[test]
    fn compaction_keeps_live_points_and_drops_deleted_ones() {
        let points: Vec<(usize, Vec<f32>)> = (0..200).map(|i| (i, unit(i as f32 * 0.03))).collect();
        let index = VectorIndex::build(2, points).expect("valid");
        for id in 0..100 {
            index.remove(id);
        }
        // 100 of 200 deleted passes the threshold.
        assert!(index.needs_compaction());
        index.compact();
        assert_eq!(read(&index.graph).size, 100);
        assert!(read(&index.deleted).is_empty());
        // Point 100 sits at angle 3.0, the nearest live point to the query.
        let hits = index.search(&unit(2.9), 5);
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|h| h.id >= 100));
        assert_eq!(hits[0].id, 100);
    }
}
