//! The embedder against sentence-transformers on the same model files.

use crate::common;

use exemplar::embed::Embedder;
use exemplar::model_source::resolve_embedder;

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn embeddings_match_sentence_transformers() {
    let dir = common::models_dir().join("all-minilm-l6-v2");
    let files = resolve_embedder(dir.to_str().expect("utf-8 path")).expect("files");
    let embedder = Embedder::load(&files, &common::device()).expect("embedder loads");
    let rows = common::read_jsonl(common::shared_dir().join("fixtures/minilm-embeddings.jsonl"));
    assert!(rows.len() >= 10, "fixture has rows");
    let texts: Vec<String> = rows
        .iter()
        .map(|r| r["text"].as_str().expect("text").to_owned())
        .collect();
    // One batch, so that padding to the longest text is exercised too.
    let ours = embedder.embed(&texts).expect("embeds");
    let mut worst = 1f32;
    for (row, embedding) in rows.iter().zip(&ours) {
        let reference = common::floats(&row["embedding"]);
        assert_eq!(embedding.len(), reference.len());
        let similarity = cosine(embedding, &reference);
        worst = worst.min(similarity);
        assert!(
            similarity >= 0.999,
            "cosine {similarity} for {:?}",
            row["text"]
        );
        let norm: f32 = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
    }
    eprintln!("lowest cosine to sentence-transformers: {worst:.6}");
}
