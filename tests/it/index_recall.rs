//! HNSW recall against exact search on real sentence embeddings (SST-2 train).

use crate::common;

use std::collections::HashSet;

use candle_core::Device;
use exemplar::embed::Embedder;
use exemplar::index::VectorIndex;
use exemplar::model_source::resolve_embedder;

fn texts(path: &str) -> Vec<String> {
    common::read_jsonl(common::shared_dir().join(path))
        .into_iter()
        .map(|row| row["text"].as_str().expect("text").to_owned())
        .collect()
}

#[test]
fn hnsw_recall_at_10_on_sst2_is_at_least_0_99() {
    let dir = common::models_dir().join("all-minilm-l6-v2");
    let files = resolve_embedder(dir.to_str().expect("utf-8")).expect("files");
    let embedder = Embedder::load(&files, &Device::Cpu).expect("embedder");
    let train = texts("data/sst2/train.jsonl");
    let vectors = embedder.embed(&train).expect("embeds");
    let index = VectorIndex::build(
        embedder.dimension(),
        vectors.into_iter().enumerate().collect(),
    )
    .expect("valid vectors");
    assert_eq!(index.len(), train.len());

    let queries = embedder
        .embed(&texts("data/sst2/dev.jsonl")[..200])
        .expect("embeds");
    let mut found = 0usize;
    for query in &queries {
        let exact: HashSet<usize> = index.exact_search(query, 10).iter().map(|h| h.id).collect();
        found += index
            .search(query, 10)
            .iter()
            .filter(|h| exact.contains(&h.id))
            .count();
    }
    let recall = found as f64 / (10 * queries.len()) as f64;
    eprintln!(
        "HNSW recall@10 over {} SST-2 dev queries: {recall:.4}",
        queries.len()
    );
    assert!(recall >= 0.99, "recall@10 {recall}");
}
