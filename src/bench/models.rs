//! LLM prompt and generation speed per weight format, and embedding throughput.

use std::time::Instant;

use anyhow::Context;
use clap::ValueEnum;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::{read_rows, timed, BenchArgs, WeightsFile};
use crate::config::WeightFormat;
use crate::embed::Embedder;
use crate::llm::{Llm, Session};
use crate::model_source;
use crate::quant::{Isa, Q8Matrix, Q8Tiles};
use crate::server::open_device;

/// Generations decoded side by side, as the scheduler runs concurrent requests.
const SIDE_BY_SIDE: usize = 8;

/// Decoding [`SIDE_BY_SIDE`] sequences one pass per step for all of them, against one
/// sequence after another: what continuous batching gains for concurrent generations.
fn batched_decoding(args: &BenchArgs, llm: &Llm, prompt: &[u32]) -> anyhow::Result<()> {
    let mut start = llm.session();
    let first = argmax(&start.feed(prompt)?);
    let steps = args.generate_tokens;
    let alone = timed(args.repeats, || {
        for _ in 0..SIDE_BY_SIDE {
            let mut session = start.clone();
            let mut token = first;
            for _ in 0..steps {
                token = argmax(&session.feed(&[token])?);
            }
        }
        Ok(())
    })?;
    let together = timed(args.repeats, || {
        let mut sessions: Vec<Session> = (0..SIDE_BY_SIDE).map(|_| start.clone()).collect();
        let mut tokens = vec![first; SIDE_BY_SIDE];
        for _ in 0..steps {
            let mut batch: Vec<(&mut Session, &[u32])> = sessions
                .iter_mut()
                .zip(&tokens)
                .map(|(session, token)| (session, std::slice::from_ref(token)))
                .collect();
            tokens = llm
                .feed_batch(&mut batch)?
                .iter()
                .map(|l| argmax(l))
                .collect();
        }
        Ok(())
    })?;
    let tokens = (SIDE_BY_SIDE * steps) as f64;
    let (alone, together) = (
        tokens / alone.as_secs_f64(),
        tokens / together.as_secs_f64(),
    );
    println!(
        "{SIDE_BY_SIDE} generations after a {}-token prompt: one after another \
         {alone:.1} tok/s, one pass per step for all {together:.1} tok/s ({:.2}x)",
        prompt.len(),
        together / alone
    );
    Ok(())
}

/// Runs the models suite.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let rows = read_rows(&args.data)?;
    let device = open_device(args.models.device)?;
    let formats: Vec<WeightFormat> = if args.all_weights {
        WeightFormat::value_variants().to_vec()
    } else {
        vec![args.models.weights]
    };
    let threads = candle_core::utils::get_num_threads();
    println!(
        "threads: {threads}, device: {:?}, kernels: {}",
        args.models.device,
        Isa::detect().name()
    );
    kernels(args, threads)?;
    println!(
        "| weights | load s | prompt tok/s ({} tokens) | generation tok/s |",
        args.prompt_tokens
    );
    println!("|---|---|---|---|");
    let model_path = model_source::resolve_gguf(&args.models.model_ref()?)?;
    let mut ours = Vec::new();
    for format in formats {
        let started = Instant::now();
        let llm = Llm::load(&model_path, &device, format)?;
        let load = started.elapsed();

        let mut few_shot = String::new();
        for (text, label) in &rows {
            few_shot.push_str(&format!("Review: {text}\nSentiment: {label}\n\n"));
            if llm.tokenizer().encode(&few_shot)?.len() > args.prompt_tokens {
                break;
            }
        }
        let mut prompt = llm.tokenizer().encode(&few_shot)?;
        prompt.truncate(args.prompt_tokens);

        let prompt_time = timed(args.repeats, || Ok(llm.session().feed(&prompt)?))?;

        let mut prefix = llm.session();
        let first_logits = prefix.feed(&prompt)?;
        let generation_time = timed(args.repeats, || {
            let mut session = prefix.clone();
            let mut logits = first_logits.clone();
            for _ in 0..args.generate_tokens {
                let next = argmax(&logits);
                logits = session.feed(&[next])?;
            }
            Ok(())
        })?;
        let prompt_speed = prompt.len() as f64 / prompt_time.as_secs_f64();
        let generation_speed = args.generate_tokens as f64 / generation_time.as_secs_f64();
        println!(
            "| {:?} | {:.2} | {prompt_speed:.0} | {generation_speed:.1} |",
            format,
            load.as_secs_f64(),
        );
        ours.push((format, prompt_speed, generation_speed));
        if format == args.models.weights {
            batched_decoding(args, &llm, &prompt)?;
        }
    }
    if let Some(llama_bench) = &args.llama_bench {
        let theirs = against_llama_cpp(args, llama_bench, &model_path, &ours)?;
        if let Some(folder) = &args.plots {
            let picture = folder.join("speed-llama-cpp.svg");
            plot_against_llama_cpp(&picture, args, &ours, &theirs)?;
            println!("wrote {}", picture.display());
        }
    }

    let files = model_source::resolve_embedder(&args.models.embedder_ref())?;
    let embedder = Embedder::load(&files, &device)?;
    let sentences: Vec<&str> = rows.iter().take(32 * 8).map(|(t, _)| t.as_str()).collect();
    let embed_time = timed(args.repeats, || {
        for batch in sentences.chunks(32) {
            embedder.embed(batch)?;
        }
        Ok(())
    })?;
    let ours = sentences.len() as f64 / embed_time.as_secs_f64();
    println!("embeddings/s (batches of 32 SST-2 sentences): {ours:.0}");
    if let Some(python) = &args.sentence_transformers {
        let theirs = sentence_transformers_speed(args, python, &files.weights)?;
        println!(
            "sentence-transformers embeddings/s, same sentences and threads: {theirs:.0} (ours / theirs: {:.2})",
            ours / theirs
        );
    }
    Ok(())
}

/// Runs `scripts/bench-sentence-transformers.py` with `python` on the embedder's folder
/// and the bench's sentences, and answers its sentences per second.
fn sentence_transformers_speed(
    args: &BenchArgs,
    python: &std::path::Path,
    weights: &std::path::Path,
) -> anyhow::Result<f64> {
    let model_dir = weights
        .parent()
        .context("the embedder's weights file has no folder")?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/bench-sentence-transformers.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(model_dir)
        .arg(&args.data)
        .arg(candle_core::utils::get_num_threads().to_string())
        .arg(args.repeats.to_string())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "bench-sentence-transformers.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    answer["sentences_per_s"]
        .as_f64()
        .context("bench-sentence-transformers.py printed no sentences_per_s")
}

/// Runs llama.cpp's `llama-bench` on the same weights (the shipped file, and our Q8_0
/// conversion of it written out), prints its speeds beside ours and answers them
/// (format, prompt tok/s, generation tok/s).
fn against_llama_cpp(
    args: &BenchArgs,
    llama_bench: &std::path::Path,
    model_path: &std::path::Path,
    ours: &[(WeightFormat, f64, f64)],
) -> anyhow::Result<Vec<(WeightFormat, f64, f64)>> {
    let mut theirs = Vec::new();
    let threads = candle_core::utils::get_num_threads();
    println!(
        "\nllama.cpp ({}), {threads} threads, same GGUF weights:",
        llama_bench.display()
    );
    println!("| weights | llama.cpp prompt tok/s | ours / llama.cpp | llama.cpp generation tok/s | ours / llama.cpp |");
    println!("|---|---|---|---|---|");
    for &(format, prompt_speed, generation_speed) in ours {
        if format == WeightFormat::F32 {
            continue;
        }
        let file = WeightsFile::write(model_path, format)?;
        let output = std::process::Command::new(llama_bench)
            .arg("-m")
            .arg(file.path())
            .args(["-p", &args.prompt_tokens.to_string()])
            .args(["-n", &args.generate_tokens.to_string()])
            // Our generation runs after the prompt, so theirs is taken at that depth too
            // (`-d`): from an empty context each step would attend to fewer tokens.
            .args(["-d", &format!("0,{}", args.prompt_tokens)])
            .args(["-t", &threads.to_string()])
            .args(["-r", &args.repeats.max(1).to_string()])
            .args(["-o", "json"])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "llama-bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let runs: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
        let speed = |prompt: bool, depth: usize| {
            runs.iter()
                .find(|r| {
                    (r["n_prompt"].as_u64().unwrap_or(0) > 0) == prompt
                        && r["n_depth"].as_u64().unwrap_or(0) == depth as u64
                })
                .and_then(|r| r["avg_ts"].as_f64())
                .unwrap_or(f64::NAN)
        };
        let (their_prompt, their_generation) = (speed(true, 0), speed(false, args.prompt_tokens));
        println!(
            "| {format:?} | {their_prompt:.0} | {:.2} | {their_generation:.1} | {:.2} |",
            prompt_speed / their_prompt,
            generation_speed / their_generation
        );
        theirs.push((format, their_prompt, their_generation));
    }
    Ok(theirs)
}

/// Our prompt and generation speeds beside llama.cpp's, per weight format, as bars.
fn plot_against_llama_cpp(
    path: &std::path::Path,
    args: &BenchArgs,
    ours: &[(WeightFormat, f64, f64)],
    theirs: &[(WeightFormat, f64, f64)],
) -> anyhow::Result<()> {
    let name = |format: WeightFormat| match format {
        WeightFormat::AsShipped => "Q4_1 (shipped)",
        WeightFormat::Q8_0 => "Q8_0",
        WeightFormat::F32 => "f32",
    };
    let mut groups = Vec::new();
    let (mut exemplar, mut llama_cpp) = (Vec::new(), Vec::new());
    for prompt in [true, false] {
        let what = if prompt { "prompt" } else { "generation" };
        for &(format, their_prompt, their_generation) in theirs {
            let Some(&(_, our_prompt, our_generation)) = ours.iter().find(|o| o.0 == format) else {
                continue;
            };
            groups.push(format!("{what}, {}", name(format)));
            let (mine, other) = if prompt {
                (our_prompt, their_prompt)
            } else {
                (our_generation, their_generation)
            };
            exemplar.push(mine);
            llama_cpp.push(other);
        }
    }
    crate::plot::bars(
        path,
        &format!(
            "Tokens/s, {} threads, same GGUF ({}-token prompt, {} generated)",
            candle_core::utils::get_num_threads(),
            args.prompt_tokens,
            args.generate_tokens
        ),
        &groups,
        &[
            crate::plot::Series {
                name: "Exemplar".to_owned(),
                values: exemplar,
            },
            crate::plot::Series {
                name: "llama.cpp".to_owned(),
                values: llama_cpp,
            },
        ],
        "tokens/s",
    )
}

/// The clock `/proc/cpuinfo` reports, in GHz (a VM's is often the base clock).
fn reported_ghz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some(mhz / 1000.0)
}

/// The most int8 operations a second an instruction set's kernel can do on `threads`
/// cores at `ghz`: two an int8 multiply-add, and per core and cycle 128 multiply-adds
/// with VNNI (two 512-bit `vpdpbusd`), 64 with AVX2 (two 256-bit `vpmaddubsw`).
fn peak_gops(isa: Isa, ghz: f64, threads: usize) -> Option<f64> {
    let per_cycle = match isa {
        Isa::Avx512Vnni => 128.0,
        Isa::Avx2 => 64.0,
        Isa::Portable => return None,
    };
    Some(2.0 * per_cycle * ghz * threads as f64)
}

/// Q8_0 matrix products of the model's shapes: candle's kernel against ours on each
/// instruction set this CPU has, same threads, same run, with each one's share of its
/// instruction set's peak.
fn kernels(args: &BenchArgs, threads: usize) -> anyhow::Result<()> {
    let paths = Isa::available();
    let ghz = reported_ghz();
    println!("\nQ8_0 matmul GOPS (2 x rows x cols x tokens / s), SmolLM2-135M shapes:");
    if let Some(ghz) = ghz {
        let peaks: Vec<String> = paths
            .iter()
            .filter_map(|&isa| {
                peak_gops(isa, ghz, threads).map(|p| format!("{} {p:.0}", isa.name()))
            })
            .collect();
        println!(
            "peak int8 GOPS at the reported {ghz:.2} GHz x {threads} threads: {}; each \
             cell: GOPS (x candle, share of its peak)",
            peaks.join(", ")
        );
    }
    let mut names: Vec<String> = paths.iter().map(|isa| isa.name().to_owned()).collect();
    let tiled = Q8Tiles::isa();
    let mut isas = paths.clone();
    if let Some(isa) = tiled {
        names.insert(0, format!("{}, tiles of 16 rows", isa.name()));
        isas.insert(0, isa);
    }
    println!("| rows x cols | tokens | candle | {} |", names.join(" | "));
    println!("|---|---|---|{}", "---|".repeat(names.len()));
    for (rows, cols) in [(576, 576), (1536, 576), (576, 1536), (49152, 576)] {
        let weights: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let ours = Q8Matrix::quantize(&weights, rows, cols)?;
        let ours_tiled = tiled.map(|_| Q8Tiles::from_rows(&ours));
        let theirs = QMatMul::from_qtensor(QTensor::quantize(
            &Tensor::from_vec(weights, (rows, cols), &Device::Cpu)?,
            GgmlDType::Q8_0,
        )?)?;
        let token_counts: &[usize] = if rows > 10_000 {
            &[1]
        } else {
            &[1, args.prompt_tokens]
        };
        for &tokens in token_counts {
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i * 104_729) % 2003) as f32 / 1000.0 - 1.0)
                .collect();
            let xt = Tensor::from_vec(x.clone(), (1, tokens, cols), &Device::Cpu)?;
            let gops = |time: std::time::Duration| {
                2.0 * (rows * cols * tokens) as f64 / time.as_secs_f64() / 1e9
            };
            let candle = gops(timed(args.repeats, || Ok(theirs.forward(&xt)?))?);
            let mut line = format!("| {rows} x {cols} | {tokens} | {candle:.1} |");
            let mut times = Vec::new();
            if let Some(tiles) = &ours_tiled {
                times.push(timed(args.repeats, || Ok(tiles.matmul(&x, tokens)))?);
            }
            for &isa in &paths {
                times.push(timed(args.repeats, || {
                    Ok(ours.matmul_with(isa, &x, tokens))
                })?);
            }
            for (time, &isa) in times.into_iter().zip(&isas) {
                let share = ghz
                    .and_then(|ghz| peak_gops(isa, ghz, threads))
                    .map_or(String::new(), |peak| {
                        format!(", {:.0}%", 100.0 * gops(time) / peak)
                    });
                line.push_str(&format!(
                    " {:.1} ({:.2}x{share}) |",
                    gops(time),
                    gops(time) / candle
                ));
            }
            println!("{line}");
        }
    }
    println!();
    Ok(())
}

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}
