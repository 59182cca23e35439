//! Import throughput and retrieval latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};

use super::{latency_line, read_rows, BenchArgs};
use crate::embed::{Embedder, EmbedderHandle};
use crate::index::VectorIndex;
use crate::model_source;
use crate::retrieve::Strategy;
use crate::server::open_device;
use crate::store::{ItemKind, Store};
use crate::tasks::{Catalog, ItemInput, RetrieveQuery, TaskSpec};

/// Imports the data set into a task of a temporary SQLite store and times retrieval.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let rows = read_rows(&args.data)?;
    let device = open_device(args.models.device)?;
    let files = model_source::resolve_embedder(&args.models.embedder_ref())?;
    let embedder = EmbedderHandle::spawn(Embedder::load(&files, &device)?, "bench", 4)?;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let catalog = Catalog::new(Store::connect(&url).await?, embedder.clone());
    let labels: Vec<String> = {
        let mut l: Vec<String> = rows.iter().map(|(_, label)| label.clone()).collect();
        l.sort();
        l.dedup();
        l
    };
    let spec: TaskSpec = serde_json::from_value(serde_json::json!({
        "labels": labels,
        "template": {"input": "{text}", "output": "{label}"}
    }))?;
    catalog.put_task("bench", spec).await?;

    let started = Instant::now();
    for batch in rows.chunks(100) {
        let items = batch
            .iter()
            .map(|(text, label)| ItemInput {
                id: None,
                text: text.clone(),
                text_pair: None,
                label: Some(label.clone()),
            })
            .collect();
        catalog.add_items("bench", ItemKind::Example, items).await?;
    }
    let import = started.elapsed();
    println!(
        "import: {} examples in {:.1} s = {:.0} examples/s (embedding, SQLite transaction, index)",
        rows.len(),
        import.as_secs_f64(),
        rows.len() as f64 / import.as_secs_f64()
    );

    println!("| retrieval ({} queries) | p50 ms | p99 ms |", args.queries);
    println!("|---|---|---|");
    let queries: Vec<&str> = rows
        .iter()
        .rev()
        .take(args.queries)
        .map(|(t, _)| t.as_str())
        .collect();
    for (name, strategy) in [
        ("knn", Strategy::Knn),
        ("mmr", Strategy::Mmr { lambda: 0.5 }),
    ] {
        let mut samples = Vec::with_capacity(queries.len());
        for text in &queries {
            let query = RetrieveQuery {
                text: (*text).to_owned(),
                text_pair: None,
                k: 8,
                strategy,
            };
            let started = Instant::now();
            catalog.retrieve("bench", query).await?;
            samples.push(started.elapsed());
        }
        latency_line(
            &format!(
                "{name} k=8 at {} examples, query embedding included",
                rows.len()
            ),
            samples,
        );
    }
    let vectors = embedder
        .embed(queries.iter().map(|q| q.to_string()).collect())
        .await?;
    let collection = catalog.collection("bench").context("bench task")?;
    let samples = vectors
        .iter()
        .map(|v| {
            let started = Instant::now();
            collection.index.search(v, 8);
            started.elapsed()
        })
        .collect();
    latency_line(
        &format!("HNSW search k=8 at {} examples", rows.len()),
        samples,
    );

    // Replicas: a sync that finds nothing new, and one that applies a batch another
    // replica (a second catalog on the same database) wrote.
    let samples = {
        let mut samples = Vec::with_capacity(20);
        for _ in 0..20 {
            let started = Instant::now();
            catalog.sync().await?;
            samples.push(started.elapsed());
        }
        samples
    };
    latency_line(
        &format!("replica sync, nothing new, {} examples", rows.len()),
        samples,
    );
    // A replica's first request for a task it does not hold: the rows read, the
    // index built.
    let cold = Catalog::new(Store::connect(&url).await?, embedder.clone());
    let started = Instant::now();
    cold.resident("bench").await?;
    latency_line(
        &format!("first use of a cold task, {} examples loaded", rows.len()),
        vec![started.elapsed()],
    );
    let other = Catalog::new(Store::connect(&url).await?, embedder.clone());
    let mut samples = Vec::new();
    for batch in rows.chunks(100).take(10) {
        let items = batch
            .iter()
            .map(|(text, label)| ItemInput {
                id: None,
                text: format!("{text} (again)"),
                text_pair: None,
                label: Some(label.clone()),
            })
            .collect();
        other.add_items("bench", ItemKind::Example, items).await?;
        let started = Instant::now();
        let report = catalog.sync().await?;
        samples.push(started.elapsed());
        anyhow::ensure!(report.added == batch.len(), "sync applied {report:?}");
    }
    other.close().await;
    latency_line(
        "replica sync applying 100 examples another replica wrote",
        samples,
    );
    // Synthetic points shaped like real embeddings: a real SST-2 embedding, a third of
    // another one, and a little noise, normalised. Uniform random vectors have no
    // neighbourhood structure at all, which no text collection looks like.
    let real: Vec<Arc<[f32]>> = collection
        .index
        .ids()
        .into_iter()
        .filter_map(|id| collection.index.vector(id))
        .collect();
    catalog.close().await;
    let dimension = embedder.dimension();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let points: Vec<(usize, Vec<f32>)> = (0..args.synthetic_points)
        .map(|i| {
            let a = &real[rng.gen_range(0..real.len())];
            let b = &real[rng.gen_range(0..real.len())];
            let v: Vec<f32> = (0..dimension)
                .map(|d| a[d] + 0.3 * b[d] + 0.02 * rng.gen_range(-1.0f32..1.0))
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            (i, v.into_iter().map(|x| x / norm).collect())
        })
        .collect();
    let started = Instant::now();
    let index = VectorIndex::build(dimension, points)?;
    println!(
        "synthetic index: {} points built in {:.1} s",
        args.synthetic_points,
        started.elapsed().as_secs_f64()
    );
    let probes = vectors.len().min(50);
    let mut found = 0usize;
    let samples: Vec<Duration> = vectors
        .iter()
        .enumerate()
        .map(|(i, probe)| {
            let started = Instant::now();
            let hits = index.search(probe, 8);
            let elapsed = started.elapsed();
            if i < probes {
                let exact: Vec<usize> = index.exact_search(probe, 8).iter().map(|h| h.id).collect();
                found += hits.iter().filter(|h| exact.contains(&h.id)).count();
            }
            elapsed
        })
        .collect();
    latency_line(
        &format!(
            "HNSW search k=8 at {} synthetic points",
            args.synthetic_points
        ),
        samples,
    );
    println!(
        "synthetic recall@8 over {probes} real queries: {:.3}",
        found as f64 / (8 * probes).max(1) as f64
    );
    Ok(())
}
