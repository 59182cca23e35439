//! Vote-k's stage 2 over a 3000-item pool, through the API as a user runs it: the pool
//! posted, a vote-k selection of 100 made, its stage-1 items annotated with their gold
//! labels, stage 2 continued and polled until complete. Beside it, in the same run, the
//! yardstick: the first pool items predicted as stage 2 predicts them, with whole
//! prompts (stage 2 before cached demonstrations) and with cached demonstrations,
//! their rates, and how closely the two confidences agree.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::server::{add_examples, create_task, post, BenchServer};
use super::BenchArgs;
use crate::experiments::{read_split, sample, Row, DATASETS};

/// Pool items, as in `exemplar experiment selection`.
const POOL: usize = 3000;
/// The selection's budget; vote-k's stage 1 takes a tenth of it.
const BUDGET: usize = 100;
/// Pool items predicted both ways for the yardstick.
const YARDSTICK: usize = 32;
/// Inputs per request, as stage 2 sends its batches.
const BATCH: usize = 16;

/// Runs vote-k's stage 2 on SST-2 and TREC pools and prints a table.
///
/// # Errors
/// When the server, the data or a request fails.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let server = BenchServer::start(args, 64).await?;
    let data = super::data_root(args);
    println!(
        "| data set | stage 2: pool items predicted | s | items/s | whole prompts, items/s (first {YARDSTICK}) | cached / whole | confidence rank correlation | same label |\n|---|---|---|---|---|---|---|---|"
    );
    for dataset in [&DATASETS[0], &DATASETS[1]] {
        let task = format!("{}/v1/tasks/votek-{}", server.base, dataset.name);
        create_task(&server.client, &task, dataset).await?;
        let pool = sample(&read_split(&data, dataset, "train")?, POOL, 0);
        post_pool(&server.client, &task, &pool).await?;
        let (status, view) = post(
            &server.client,
            &format!("{task}/selections"),
            &json!({"method": "vote-k", "budget": BUDGET, "seed": 0}),
        )
        .await?;
        if status != 200 {
            bail!("the selection failed: {view}");
        }
        let id = view["id"].as_str().context("the selection has no id")?;
        let stage_one = annotate(&server.client, &task, &pool, &view).await?;

        let started = Instant::now();
        let url = format!("{task}/selections/{id}");
        let (status, mut view) =
            post(&server.client, &format!("{url}/continue"), &json!({})).await?;
        if status != 202 && status != 200 {
            bail!("stage 2 did not start: {view}");
        }
        let mut reported = Instant::now();
        while view["complete"] != json!(true) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            view = server.client.get(&url).send().await?.json().await?;
            if view["state"] == json!("failed") {
                bail!("stage 2 failed: {view}");
            }
            if reported.elapsed() > Duration::from_secs(60) {
                eprintln!("{}: stage 2 {}", dataset.title, view["progress"]);
                reported = Instant::now();
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let predicted = POOL - stage_one.len();

        let rest: Vec<&Row> = (0..POOL)
            .filter(|i| !stage_one.contains(&format!("p{i}")))
            .take(YARDSTICK)
            .map(|i| &pool[i])
            .collect();
        let predict = format!("{task}/predict");
        let (whole_rate, whole) = confidences(&server.client, &predict, &rest, false).await?;
        let (cached_rate, cached) = confidences(&server.client, &predict, &rest, true).await?;
        let same = whole
            .iter()
            .zip(&cached)
            .filter(|((a, _), (b, _))| a == b)
            .count();
        let correlation = rank_correlation(
            &whole.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            &cached.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
        );
        println!(
            "| {} | {predicted} | {elapsed:.0} | {:.2} | {whole_rate:.2} | {:.2}x | {correlation:.2} | {same} of {} |",
            dataset.title,
            predicted as f64 / elapsed,
            cached_rate / whole_rate,
            rest.len()
        );
    }
    server.stop().await
}

/// Posts `pool` as the task's pool items `p0`, `p1`, ...
async fn post_pool(client: &reqwest::Client, task: &str, pool: &[Row]) -> anyhow::Result<()> {
    for (n, chunk) in pool.chunks(100).enumerate() {
        let items: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, row)| json!({"id": format!("p{}", n * 100 + i), "text": row.text}))
            .collect();
        let (status, body) =
            post(client, &format!("{task}/pool"), &json!({"items": items})).await?;
        if status != 201 {
            bail!("the pool import failed: {body}");
        }
    }
    Ok(())
}

/// Annotates the selection's stage-1 items with their gold labels; answers their ids.
async fn annotate(
    client: &reqwest::Client,
    task: &str,
    pool: &[Row],
    view: &Value,
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = view["items"]
        .as_array()
        .context("the selection has no items")?
        .iter()
        .filter_map(|item| item["id"].as_str().map(str::to_owned))
        .collect();
    let examples = ids
        .iter()
        .map(|id| {
            let row = id
                .strip_prefix('p')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| pool.get(n))
                .with_context(|| format!("{id} is not a pool item of the bench"))?;
            Ok(json!({"id": id, "text": row.text, "label": row.label}))
        })
        .collect::<anyhow::Result<Vec<Value>>>()?;
    add_examples(client, task, examples).await?;
    Ok(ids)
}

/// Predicts `rows` as stage 2 does (kNN, k = 8, no calibration), `BATCH` per request;
/// answers items/s and each row's label and confidence (its top probability).
async fn confidences(
    client: &reqwest::Client,
    predict: &str,
    rows: &[&Row],
    cached_demonstrations: bool,
) -> anyhow::Result<(f64, Vec<(String, f64)>)> {
    let started = Instant::now();
    let mut answers = Vec::with_capacity(rows.len());
    for batch in rows.chunks(BATCH) {
        let inputs: Vec<Value> = batch.iter().map(|r| json!({"text": r.text})).collect();
        let body = json!({
            "inputs": inputs,
            "k": 8,
            "calibrate": false,
            "cached_demonstrations": cached_demonstrations
        });
        let (status, answer) = post(client, predict, &body).await?;
        if status != 200 {
            bail!("predict failed: {answer}");
        }
        for prediction in answer["predictions"].as_array().context("no predictions")? {
            let label = prediction["label"].as_str().unwrap_or_default().to_owned();
            let top = prediction["probabilities"]
                .as_object()
                .map(|p| p.values().filter_map(Value::as_f64).fold(0.0, f64::max))
                .unwrap_or(0.0);
            answers.push((label, top));
        }
    }
    Ok((rows.len() as f64 / started.elapsed().as_secs_f64(), answers))
}

/// Spearman's rank correlation of two equally long samples (ties take their mean rank).
fn rank_correlation(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean) * (x - mean);
        vb += (y - mean) * (y - mean);
    }
    cov / (va * vb).sqrt()
}

/// Each value's rank from 0, tied values sharing the mean of their ranks.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let shared = (start + end - 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = shared;
        }
        start = end;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_correlation_follows_the_order_not_the_values() {
        let a = [0.1, 0.5, 0.9, 0.7];
        // Same order, other values: 1; reversed: -1.
        assert!((rank_correlation(&a, &[1.0, 2.0, 30.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!((rank_correlation(&a, &[4.0, 3.0, 1.0, 2.0]) + 1.0).abs() < 1e-12);
        // Ties share their mean rank: ranks of [1, 1, 2, 3] are [0.5, 0.5, 2, 3].
        assert_eq!(ranks(&[1.0, 1.0, 2.0, 3.0]), vec![0.5, 0.5, 2.0, 3.0]);
        // Ranks [0, 1, 3, 2] against [1, 0, 3, 2]: 1 - 6 * 2 / (4 * 15) = 0.8.
        assert!((rank_correlation(&a, &[0.5, 0.1, 0.9, 0.7]) - 0.8).abs() < 1e-12);
    }
}
