//! Predictions over HTTP against a server started in this process: predictions/s and
//! latency for SST-2 and TREC (k = 8) with 1 and 8 clients, with cached demonstrations
//! (cold and warm) and with fixed demonstrations, one request of 64 inputs against
//! single requests, an import and predictions at once (the embedder beside the LLM),
//! the answer to overload, and shared-prefix label scoring against one forward pass
//! per label on TREC.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::peer::LlamaServer;
use super::server::{create_task, delete_task, import, post, BenchServer};
use super::{latency_line, percentile, BenchArgs};
use crate::config::WeightFormat;
use crate::experiments::{read_split, sample, DATASETS};
use crate::llm::{Llm, ScoreRequest};
use crate::model_source;
use crate::plot;
use crate::server::open_device;

/// The queue the bench server gets, small enough to overflow on purpose.
const QUEUE: usize = 16;

/// Sends `bodies` one after another; answers predictions/s, latencies and answers.
async fn one_client(
    client: &reqwest::Client,
    url: &str,
    bodies: &[Value],
) -> anyhow::Result<(f64, Vec<Duration>, Vec<Value>)> {
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(bodies.len());
    let mut answers = Vec::with_capacity(bodies.len());
    for body in bodies {
        let sent = Instant::now();
        let (status, answer) = post(client, url, body).await?;
        if status != 200 {
            bail!("predict failed: {answer}");
        }
        latencies.push(sent.elapsed());
        answers.push(answer);
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, latencies, answers))
}

/// One line of the throughput table.
fn print_row(title: &str, clients: usize, rate: f64, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "| {title} | {clients} | {rate:.2} | {:.0} | {:.0} |",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
}

/// The peer pipeline over `rows`, one request at a time: our `/retrieve` for the
/// demonstrations, then llama.cpp's first-token scoring of the prompt we built from them
/// (`answers`: our predictions of the same rows, with their prompts). Answers
/// predictions/s, latencies and the labels.
async fn peer_client(
    client: &reqwest::Client,
    peer: &LlamaServer,
    task: &str,
    labels: &[&str],
    rows: &[crate::experiments::Row],
    answers: &[Value],
) -> anyhow::Result<(f64, Vec<Duration>, Vec<String>)> {
    let firsts = peer.first_tokens(client, labels).await?;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(rows.len());
    let mut predicted = Vec::with_capacity(rows.len());
    for (row, answer) in rows.iter().zip(answers) {
        let sent = Instant::now();
        let (status, retrieved) = post(
            client,
            &format!("{task}/retrieve"),
            &json!({"text": row.text, "k": 8}),
        )
        .await?;
        if status != 200 {
            bail!("retrieve failed: {retrieved}");
        }
        let prompt = answer["predictions"][0]["prompt"]
            .as_str()
            .context("the prediction has no prompt")?;
        let label = peer.first_token_label(client, prompt, &firsts).await?;
        predicted.push(labels[label].to_owned());
        latencies.push(sent.elapsed());
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, latencies, predicted))
}

/// Examples imported in the embedder-and-LLM measurement.
const MIXED_IMPORT: usize = 3000;

/// The embedder and the LLM at once: an import of SST-2 examples (embedding-bound)
/// beside one client's kNN predictions (LLM-bound), each against its rate alone. The
/// shares of their rates alone that the two keep add up to 1.0 when they take the
/// cores in turns without loss; threads fighting over the cores show as less.
async fn embedder_and_llm_at_once(
    client: &reqwest::Client,
    base: &str,
    data: &std::path::Path,
) -> anyhow::Result<()> {
    let dataset = &DATASETS[0];
    let train = read_split(data, dataset, "train")?;
    let queries: Vec<Value> = sample(&read_split(data, dataset, "test")?, 64, 2)
        .iter()
        .map(|row| json!({"inputs": [{"text": row.text}], "k": 8}))
        .collect();
    let predict = format!("{base}/v1/tasks/{}/predict", dataset.name);

    let task = format!("{base}/v1/tasks/import-alone");
    create_task(client, &task, dataset).await?;
    let started = Instant::now();
    import(client, &task, &sample(&train, MIXED_IMPORT, 3)).await?;
    let import_alone = MIXED_IMPORT as f64 / started.elapsed().as_secs_f64();
    // The two imports' tasks go once measured, so that the rest of the suite (and its
    // peak memory) has the server the benchmark describes: two tasks of 1000.
    delete_task(client, &task).await?;
    let (predict_alone, _, _) = one_client(client, &predict, &queries[..16]).await?;

    let task = format!("{base}/v1/tasks/import-beside");
    create_task(client, &task, dataset).await?;
    let importing = Arc::new(AtomicBool::new(true));
    let predicting = {
        let (client, importing) = (client.clone(), Arc::clone(&importing));
        tokio::spawn(async move {
            let mut done = 0usize;
            for body in queries.iter().cycle() {
                let (status, answer) = post(&client, &predict, body).await?;
                if status != 200 {
                    bail!("predict failed: {answer}");
                }
                if !importing.load(Ordering::Relaxed) {
                    break;
                }
                done += 1;
            }
            Ok(done)
        })
    };
    let started = Instant::now();
    import(client, &task, &sample(&train, MIXED_IMPORT, 4)).await?;
    let window = started.elapsed().as_secs_f64();
    importing.store(false, Ordering::Relaxed);
    let predicted = predicting.await.context("predicting task")??;
    delete_task(client, &task).await?;
    let import_beside = MIXED_IMPORT as f64 / window;
    let predict_beside = predicted as f64 / window;
    println!(
        "embedder and LLM at once ({}): import {import_alone:.1} examples/s alone, \
         {import_beside:.1} beside one client's predictions; predictions {predict_alone:.2}/s \
         alone, {predict_beside:.2}/s beside the import; shares kept add up to {:.2}",
        dataset.title,
        import_beside / import_alone + predict_beside / predict_alone
    );
    Ok(())
}

/// The llama.cpp server on the published file.
const SHIPPED_PEER: &str = "the shipped GGUF";
/// The llama.cpp server on our conversion of it, the weights we run.
const SAME_FILE_PEER: &str = "our weights";

/// llama.cpp's server on the shipped GGUF, as a practitioner runs it, and, where we
/// serve other weights, on our conversion of it, so that both do the same arithmetic.
async fn start_peers(
    binary: &std::path::Path,
    args: &BenchArgs,
) -> anyhow::Result<Vec<(&'static str, LlamaServer)>> {
    let model = model_source::resolve_gguf(&args.models.model_ref()?)?;
    let threads = candle_core::utils::get_num_threads();
    let mut peers = vec![(
        SHIPPED_PEER,
        LlamaServer::start(binary, &model, WeightFormat::AsShipped, threads).await?,
    )];
    if args.models.weights != WeightFormat::AsShipped {
        peers.push((
            SAME_FILE_PEER,
            LlamaServer::start(binary, &model, args.models.weights, threads).await?,
        ));
    }
    Ok(peers)
}

/// The ratios to llama.cpp's server, one client, exact prompts: the headline against
/// the weights we run (the same arithmetic), the shipped file's beside it.
fn print_against_peers(ratios: &[(&str, &str, f64)]) {
    if ratios.is_empty() {
        return;
    }
    let on = |weights: &str| {
        ratios
            .iter()
            .filter(|(_, w, _)| *w == weights)
            .map(|(title, _, ratio)| format!("{title} {ratio:.2}x"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (same, shipped) = (on(SAME_FILE_PEER), on(SHIPPED_PEER));
    if same.is_empty() {
        println!("ours / llama.cpp's server on the same file (we serve it as shipped): {shipped}");
    } else {
        println!(
            "ours / llama.cpp's server on the same file (our weights): {same}; \
             on the shipped GGUF: {shipped}"
        );
    }
}

/// Predictions/s per data set: ours with 1 and 8 clients, and the peer pipelines'.
fn plot_rates(path: &std::path::Path, rates: &[(&str, Vec<f64>)]) -> anyhow::Result<()> {
    let names = [
        "Exemplar, 1 client",
        "Exemplar, 8 clients",
        "llama.cpp server on the shipped GGUF + our retrieval, 1 client",
        "llama.cpp server on our weights + our retrieval, 1 client",
    ];
    let columns = rates.iter().map(|(_, r)| r.len()).min().unwrap_or(0);
    let series: Vec<plot::Series<f64>> = names[..columns]
        .iter()
        .enumerate()
        .map(|(i, name)| plot::Series {
            name: (*name).to_owned(),
            values: rates.iter().map(|(_, r)| r[i]).collect(),
        })
        .collect();
    plot::bars(
        path,
        &format!(
            "Predictions/s, k = 8 from 1000 examples, {} threads",
            candle_core::utils::get_num_threads()
        ),
        &rates
            .iter()
            .map(|(t, _)| (*t).to_owned())
            .collect::<Vec<_>>(),
        &series,
        "predictions/s",
    )
}

/// Runs the predict suite.
///
/// # Errors
/// When the server, the data or the models fail.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let server = BenchServer::start(args, QUEUE).await?;
    let (base, client) = (server.base.clone(), server.client.clone());
    let peers = match &args.llama_server {
        Some(binary) => start_peers(binary, args).await?,
        None => Vec::new(),
    };
    let data = super::data_root(args);
    let mut trec_prompt = String::new();
    let mut rates = Vec::new();
    let mut against_peers = Vec::new();
    println!("| task, k = 8 | clients | predictions/s | p50 ms | p99 ms |\n|---|---|---|---|---|");
    for dataset in [&DATASETS[0], &DATASETS[1]] {
        let task = format!("{base}/v1/tasks/{}", dataset.name);
        create_task(&client, &task, dataset).await?;
        let train = sample(&read_split(&data, dataset, "train")?, 1000, 0);
        let ids = import(&client, &task, &train).await?;
        let test = sample(&read_split(&data, dataset, "test")?, 64, 1);
        let predict = format!("{task}/predict");
        // One client, one request at a time: kNN demonstrations, then the same eight
        // every time, whose KV cache the LLM worker keeps so that only the query runs.
        let knn: Vec<Value> = test[..32]
            .iter()
            .map(|row| json!({"inputs": [{"text": row.text}], "k": 8, "return_prompt": true}))
            .collect();
        let (rate, latencies, answers) = one_client(&client, &predict, &knn).await?;
        print_row(dataset.title, 1, rate, latencies);
        let mut row_rates = vec![rate];
        let correct = |predicted: &[&str]| {
            predicted
                .iter()
                .zip(&test[..32])
                .filter(|(p, row)| **p == row.label)
                .count()
        };
        let ours = correct(
            &answers
                .iter()
                .map(|a| a["predictions"][0]["label"].as_str().unwrap_or_default())
                .collect::<Vec<_>>(),
        );
        for (weights, peer) in &peers {
            let (peer_rate, latencies, labels) =
                peer_client(&client, peer, &task, dataset.labels, &test[..32], &answers).await?;
            print_row(
                &format!(
                    "{} (llama.cpp server on {weights}, first token; our retrieval)",
                    dataset.title
                ),
                1,
                peer_rate,
                latencies,
            );
            let theirs = correct(&labels.iter().map(String::as_str).collect::<Vec<_>>());
            println!(
                "| {} — correct of 32: ours {ours}, llama.cpp on {weights} {theirs}; ours / llama.cpp {:.2}x | | | | |",
                dataset.title,
                rate / peer_rate
            );
            row_rates.push(peer_rate);
            against_peers.push((dataset.title, *weights, rate / peer_rate));
        }
        if dataset.name == "trec" {
            trec_prompt = answers
                .first()
                .and_then(|a| a["predictions"][0]["prompt"].as_str())
                .unwrap_or_default()
                .to_owned();
        }
        let first_eight: Vec<&Value> = ids.iter().take(8).collect();
        let fixed: Vec<Value> = test[..32]
            .iter()
            .map(|row| {
                json!({"inputs": [{"text": row.text}], "k": 8, "strategy": "fixed", "ids": first_eight})
            })
            .collect();
        let (rate, latencies, _) = one_client(&client, &predict, &fixed).await?;
        print_row(
            &format!("{} (fixed demonstrations)", dataset.title),
            1,
            rate,
            latencies,
        );
        // The same kNN queries with cached demonstrations: first with the demonstration
        // cache cold (every demonstration computed once), then warm.
        let cached: Vec<Value> = test[..32]
            .iter()
            .map(|row| json!({"inputs": [{"text": row.text}], "k": 8, "cached_demonstrations": true}))
            .collect();
        for warmth in ["cold", "warm"] {
            let (rate, latencies, cached_answers) = one_client(&client, &predict, &cached).await?;
            print_row(
                &format!("{} (cached demonstrations, {warmth})", dataset.title),
                1,
                rate,
                latencies,
            );
            let label = |answer: &Value| answer["predictions"][0]["label"].clone();
            let agree = answers
                .iter()
                .zip(&cached_answers)
                .filter(|(exact, cached)| label(exact) == label(cached))
                .count();
            println!(
                "| {} — cached demonstrations, {warmth}: the exact prompt's label on {agree} of 32 | | | | |",
                dataset.title
            );
        }
        // Eight clients, eight requests each.
        let started = Instant::now();
        let clients = (0..8).map(|c| {
            let client = client.clone();
            let predict = predict.clone();
            let texts: Vec<String> = test[c * 8..c * 8 + 8]
                .iter()
                .map(|r| r.text.clone())
                .collect();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for text in texts {
                    let sent = Instant::now();
                    let body = json!({"inputs": [{"text": text}], "k": 8});
                    let response = client.post(&predict).json(&body).send().await?;
                    if response.status() != 200 {
                        bail!("predict failed: {}", response.status());
                    }
                    latencies.push(sent.elapsed());
                }
                Ok(latencies)
            })
        });
        let mut latencies: Vec<Duration> = Vec::new();
        for handle in futures::future::join_all(clients).await {
            latencies.extend(handle.context("client task")??);
        }
        let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        print_row(dataset.title, 8, rate, latencies);
        let single_rate = row_rates[0];
        row_rates.insert(1, rate);
        // The 64 queries as one request, against single requests one after another.
        let inputs: Vec<Value> = test.iter().map(|row| json!({"text": row.text})).collect();
        let sent = Instant::now();
        let (status, body) = post(&client, &predict, &json!({"inputs": inputs, "k": 8})).await?;
        if status != 200 {
            bail!("the 64-input request failed: {body}");
        }
        let elapsed = sent.elapsed();
        let many_rate = inputs.len() as f64 / elapsed.as_secs_f64();
        print_row(
            &format!("{} (one request of 64 inputs)", dataset.title),
            1,
            many_rate,
            vec![elapsed],
        );
        println!(
            "| {} — one request of 64 inputs against single requests: {:.2}x | | | | |",
            dataset.title,
            many_rate / single_rate
        );
        rates.push((dataset.title, row_rates));
    }
    drop(peers);
    print_against_peers(&against_peers);
    embedder_and_llm_at_once(&client, &base, &data).await?;
    if let Some(folder) = &args.plots {
        let picture = folder.join("predictions-per-second.svg");
        plot_rates(&picture, &rates)?;
        println!("wrote {}", picture.display());
    }

    // Overload: many more simultaneous requests than the queue holds.
    let predict = format!("{base}/v1/tasks/sst2/predict");
    let burst = (0..4 * QUEUE).map(|i| {
        let client = client.clone();
        let predict = predict.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let body =
                json!({"inputs": [{"text": format!("an example review number {i}")}], "k": 8});
            let status = client
                .post(&predict)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16());
            (status.unwrap_or(0), sent.elapsed())
        })
    });
    let mut refused = Vec::new();
    let mut served = Vec::new();
    for handle in futures::future::join_all(burst).await {
        let (status, elapsed) = handle.context("burst task")?;
        match status {
            429 => refused.push(elapsed),
            _ => served.push(elapsed),
        }
    }
    println!(
        "overload: {} simultaneous requests, queue {QUEUE}: {} answered 429, {} served",
        4 * QUEUE,
        refused.len(),
        served.len()
    );
    if !refused.is_empty() {
        latency_line("429 answer time", refused);
    }
    if !served.is_empty() {
        latency_line("served answer time", served);
    }
    server.stop().await?;
    if let Some(peak) = super::peak_resident_mb() {
        println!(
            "peak resident memory of this process (with --suite predict alone: the server \
             with its models and a {} MB KV budget, and the bench's clients): {peak:.0} MB",
            args.models.kv_cache_mb
        );
    }

    // Shared-prefix scoring of TREC's six labels against one pass per label.
    let device = open_device(args.models.device)?;
    let llm = Llm::load(
        &model_source::resolve_gguf(&args.models.model_ref()?)?,
        &device,
        args.models.weights,
    )?;
    let prompt = llm.tokenizer().encode(&trec_prompt)?;
    let continuations: Vec<Vec<u32>> = DATASETS[1]
        .labels
        .iter()
        .map(|l| llm.tokenizer().encode(&format!(" {l}")))
        .collect::<Result<_, _>>()?;
    let request = ScoreRequest {
        prefix: Vec::new(),
        queries: vec![prompt.clone()],
        continuations: continuations.clone(),
        blocks: Vec::new(),
    };
    let shared = super::timed(args.repeats, || Ok(llm.score(&request)?))?;
    let per_label = super::timed(args.repeats, || {
        for continuation in &continuations {
            llm.session()
                .feed(&[prompt.clone(), continuation.clone()].concat())?;
        }
        Ok(())
    })?;
    println!(
        "TREC label scoring ({} prompt tokens, 6 labels): shared prefix {:.0} ms, one pass per label {:.0} ms, ratio {:.1}x",
        prompt.len(),
        shared.as_secs_f64() * 1e3,
        per_label.as_secs_f64() * 1e3,
        per_label.as_secs_f64() / shared.as_secs_f64()
    );

    // A calibrated prediction's four queries after one prefix: a step each, or packed.
    let queries = ["What is it?", "N/A", "", "[MASK]"]
        .iter()
        .map(|q| llm.tokenizer().encode(&format!("\n\nQuestion: {q}\nType:")))
        .collect::<Result<Vec<_>, _>>()?;
    let request = ScoreRequest {
        prefix: prompt,
        queries,
        continuations,
        blocks: Vec::new(),
    };
    let mut cache = crate::llm::PrefixCache::default();
    let one_each = super::timed(args.repeats, || Ok(llm.score_cached(&request, &mut cache)?))?;
    let packed = super::timed(args.repeats, || Ok(llm.score_packed(&request)?))?;
    println!(
        "4 queries after a cached {}-token prefix: a step each {:.0} ms; packed in one step (prefix run too) {:.0} ms",
        request.prefix.len(),
        one_each.as_secs_f64() * 1e3,
        packed.as_secs_f64() * 1e3,
    );
    Ok(())
}
