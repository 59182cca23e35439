//! The peer pipeline the predict suite measures us against: llama.cpp's own HTTP server
//! on the same GGUF and threads, scoring the first token of each label after the same
//! prompt (the way a practitioner scores labels with it), with the demonstrations
//! retrieved by our `/retrieve` (embedding and index search, no LLM).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::WeightsFile;
use crate::config::WeightFormat;

/// Top tokens asked of llama.cpp after the prompt; labels outside them score 0.
const TOP_TOKENS: usize = 20;

/// A running `llama-server`, stopped when dropped.
pub struct LlamaServer {
    child: Child,
    base: String,
    /// The weights it serves, kept on disk while it runs.
    _weights: WeightsFile,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LlamaServer {
    /// Starts `binary` on the weights we serve (the shipped file, or our conversion of it
    /// written out) with `threads`, and waits until it answers.
    ///
    /// # Errors
    /// When the weights cannot be written or the server does not become ready.
    pub async fn start(
        binary: &Path,
        model: &Path,
        weights: WeightFormat,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let file = WeightsFile::write(model, weights)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .arg("-m")
            .arg(file.path())
            .args(["-t", &threads.to_string(), "-c", "4096", "-np", "1"])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _weights: file,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let health = client.get(format!("{}/health", server.base)).send().await;
            if health.is_ok_and(|r| r.status() == 200) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("llama-server did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The first token of each label as it follows an answer cue (`" {label}"`), by
    /// llama.cpp's own tokenizer.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn first_tokens(
        &self,
        client: &reqwest::Client,
        labels: &[&str],
    ) -> anyhow::Result<Vec<u64>> {
        let mut firsts = Vec::with_capacity(labels.len());
        for label in labels {
            let answer: Value = client
                .post(format!("{}/tokenize", self.base))
                .json(&json!({"content": format!(" {label}")}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            firsts.push(
                answer["tokens"][0].as_u64().with_context(|| {
                    format!("llama-server did not tokenize {label:?}: {answer}")
                })?,
            );
        }
        Ok(firsts)
    }

    /// Which label llama.cpp's first-token probabilities after `prompt` pick, given each
    /// label's first token (`firsts`, from [`LlamaServer::first_tokens`]).
    ///
    /// # Errors
    /// When the server fails or answers no token probabilities.
    pub async fn first_token_label(
        &self,
        client: &reqwest::Client,
        prompt: &str,
        firsts: &[u64],
    ) -> anyhow::Result<usize> {
        let body = json!({
            "prompt": prompt,
            "n_predict": 1,
            "n_probs": TOP_TOKENS,
            "temperature": 0.0,
        });
        let answer: Value = client
            .post(format!("{}/completion", self.base))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let Some(top) = answer["completion_probabilities"][0]["top_logprobs"].as_array() else {
            bail!("llama-server answered no token log-probabilities: {answer}");
        };
        let candidates: Vec<(u64, f64)> = top
            .iter()
            .filter_map(|t| Some((t["id"].as_u64()?, t["logprob"].as_f64()?)))
            .collect();
        likeliest(&candidates, firsts).context("no labels")
    }
}

/// The index of the label whose first token is likeliest among the `candidates` (token
/// ids and log-probabilities); a label whose token is not among them scores nothing,
/// and the first label wins a tie.
fn likeliest(candidates: &[(u64, f64)], firsts: &[u64]) -> Option<usize> {
    let score = |first: u64| {
        candidates
            .iter()
            .find(|(id, _)| *id == first)
            .map_or(f64::NEG_INFINITY, |(_, logprob)| *logprob)
    };
    let mut best: Option<(usize, f64)> = None;
    for (index, &first) in firsts.iter().enumerate() {
        let logprob = score(first);
        if best.is_none_or(|(_, top)| logprob > top) {
            best = Some((index, logprob));
        }
    }
    best.map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_likeliest_first_token_picks_its_label() {
        // negative = 101, positive = 202; 7 is some other token.
        let top = [(7, -0.5), (202, -1.2), (101, -1.6)];
        assert_eq!(likeliest(&top, &[101, 202]), Some(1));
        let top = [(101, -0.9), (202, -1.2)];
        assert_eq!(likeliest(&top, &[101, 202]), Some(0));
    }

    #[test]
    fn labels_outside_the_top_tokens_lose_and_the_first_label_wins_a_tie() {
        let top = [(7, -0.1), (202, -3.0)];
        assert_eq!(likeliest(&top, &[101, 202]), Some(1));
        assert_eq!(likeliest(&top, &[101, 303]), Some(0));
        assert_eq!(likeliest(&top, &[]), None);
    }
}
