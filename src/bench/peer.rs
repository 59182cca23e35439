//! The peer pipeline the predict suite measures us against: llama.cpp's own HTTP server
//! on the same GGUF and threads, scoring the first token of each label after the same
//! prompt (the way a practitioner scores labels with it), with the demonstrations
//! retrieved by our `/retrieve` (embedding and index search, no LLM).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::config::WeightFormat;

/// Top tokens asked of llama.cpp after the prompt; labels outside them score 0.
const TOP_TOKENS: usize = 20;

/// A running `llama-server`, stopped when dropped.
pub struct LlamaServer {
    child: Child,
    base: String,
    /// Our conversion of the weights, when the bench runs a converted format.
    _converted: Option<tempfile::NamedTempFile>,
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
        let (file, converted): (PathBuf, _) = match weights {
            WeightFormat::AsShipped => (model.to_path_buf(), None),
            format => {
                let converted = tempfile::Builder::new().suffix(".gguf").tempfile()?;
                crate::llm::write_converted(model, format, converted.path())?;
                (converted.path().to_path_buf(), Some(converted))
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .arg("-m")
            .arg(&file)
            .args(["-t", &threads.to_string(), "-c", "4096", "-np", "1"])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _converted: converted,
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

    /// The label whose text starts with the likeliest of llama.cpp's top first tokens
    /// after `prompt`.
    ///
    /// # Errors
    /// When the server fails or answers no token probabilities.
    pub async fn first_token_label(
        &self,
        client: &reqwest::Client,
        prompt: &str,
        labels: &[&str],
    ) -> anyhow::Result<String> {
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
        let first = &answer["completion_probabilities"][0];
        // Newer servers answer log-probabilities, older ones probabilities.
        let candidates: Vec<(String, f64)> = if let Some(top) = first["top_logprobs"].as_array() {
            top.iter()
                .map(|t| {
                    (
                        t["token"].as_str().unwrap_or_default().to_owned(),
                        t["logprob"].as_f64().unwrap_or(f64::NEG_INFINITY).exp(),
                    )
                })
                .collect()
        } else if let Some(top) = first["probs"].as_array().or(first["top_probs"].as_array()) {
            top.iter()
                .map(|t| {
                    let token = t["tok_str"]
                        .as_str()
                        .or(t["token"].as_str())
                        .unwrap_or_default();
                    (token.to_owned(), t["prob"].as_f64().unwrap_or(0.0))
                })
                .collect()
        } else {
            bail!("llama-server answered no token probabilities: {answer}");
        };
        first_token_label(&candidates, labels).context("no labels")
    }
}

/// The label whose text starts with the likeliest of the `candidates` (first tokens and
/// their probabilities); labels no candidate starts score 0, and the first label wins
/// a tie.
fn first_token_label(candidates: &[(String, f64)], labels: &[&str]) -> Option<String> {
    let score = |label: &str| {
        candidates
            .iter()
            .filter(|(token, _)| {
                let token = token.trim();
                !token.is_empty() && label.starts_with(token)
            })
            .map(|(_, p)| *p)
            .fold(0.0, f64::max)
    };
    let mut best: Option<(&str, f64)> = None;
    for &label in labels {
        let p = score(label);
        if best.is_none_or(|(_, top)| p > top) {
            best = Some((label, p));
        }
    }
    best.map(|(label, _)| label.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect()
    }

    #[test]
    fn the_likeliest_first_token_picks_its_label() {
        let labels = ["negative", "positive"];
        let top = candidates(&[(" The", 0.5), (" positive", 0.3), (" neg", 0.2)]);
        assert_eq!(
            first_token_label(&top, &labels).as_deref(),
            Some("positive")
        );
        // A label split into several tokens is scored by its first one.
        let top = candidates(&[(" neg", 0.4), (" positive", 0.3)]);
        assert_eq!(
            first_token_label(&top, &labels).as_deref(),
            Some("negative")
        );
    }

    #[test]
    fn blank_tokens_score_nothing_and_the_first_label_wins_a_tie() {
        let labels = ["human", "location"];
        let top = candidates(&[(" ", 0.9), ("\n", 0.05)]);
        assert_eq!(first_token_label(&top, &labels).as_deref(), Some("human"));
        assert_eq!(first_token_label(&top, &[]), None);
    }
}
