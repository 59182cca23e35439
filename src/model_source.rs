//! Turns a model reference from the configuration into local files.
//!
//! A reference is a local path when one exists; otherwise `owner/name` (with `:file`
//! for a single file such as a GGUF) names a Hugging Face hub repository, read from
//! the hub cache (`HF_HOME`) and downloaded only when `HF_HUB_OFFLINE` is not set.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo};

/// Why a model reference could not be turned into files.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Neither a local path nor a well-formed hub repository id.
    #[error("model `{0}` is neither an existing path nor a hub repo id like `owner/name`")]
    NotFound(String),
    /// The hub repository lacks a file, and the cache cannot supply it.
    #[error("hub repo `{repo}` has no `{file}` in the local cache and HF_HUB_OFFLINE is set")]
    NotCached {
        /// The repository id.
        repo: String,
        /// The file that was asked for.
        file: String,
    },
    /// A download from the hub failed.
    #[error("downloading `{file}` from hub repo `{repo}` failed: {reason}")]
    Download {
        /// The repository id.
        repo: String,
        /// The file that was asked for.
        file: String,
        /// What the hub client said.
        reason: String,
    },
}

/// A reference split into its hub repository and an optional file inside it.
#[derive(Debug, PartialEq, Eq)]
struct HubRef<'a> {
    repo: &'a str,
    file: Option<&'a str>,
}

fn parse_hub_ref(reference: &str) -> Option<HubRef<'_>> {
    let (repo, file) = match reference.split_once(':') {
        Some((repo, file)) if !file.is_empty() => (repo, Some(file)),
        Some(_) => return None,
        None => (reference, None),
    };
    let (owner, name) = repo.split_once('/')?;
    let well_formed = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (well_formed(owner) && well_formed(name)).then_some(HubRef { repo, file })
}

fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Fetches one file of a hub repository: from the cache, else (when online) the hub.
fn hub_file(repo: &str, file: &str) -> Result<PathBuf, SourceError> {
    let cache = Cache::from_env();
    if let Some(path) = cache.repo(Repo::model(repo.to_owned())).get(file) {
        return Ok(path);
    }
    if hub_offline() {
        return Err(SourceError::NotCached {
            repo: repo.to_owned(),
            file: file.to_owned(),
        });
    }
    let download_error = |reason: String| SourceError::Download {
        repo: repo.to_owned(),
        file: file.to_owned(),
        reason,
    };
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(false)
        .build()
        .map_err(|e| download_error(e.to_string()))?;
    api.model(repo.to_owned())
        .get(file)
        .map_err(|e| download_error(e.to_string()))
}

/// Resolves the LLM reference to a GGUF file.
///
/// # Errors
/// When the path does not exist and the reference is not `owner/name:file.gguf` that
/// the hub cache or the hub can supply.
pub fn resolve_gguf(reference: &str) -> Result<PathBuf, SourceError> {
    let local = Path::new(reference);
    if local.is_file() {
        return Ok(local.to_path_buf());
    }
    match parse_hub_ref(reference) {
        Some(HubRef {
            repo,
            file: Some(file),
        }) => hub_file(repo, file),
        _ => Err(SourceError::NotFound(reference.to_owned())),
    }
}

/// The three files a sentence embedder is made of.
#[derive(Debug, Clone)]
pub struct EmbedderFiles {
    /// The BERT `config.json`.
    pub config: PathBuf,
    /// The `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The `model.safetensors` weights.
    pub weights: PathBuf,
}

/// Resolves the embedder reference to its folder's files.
///
/// # Errors
/// When the reference is neither a folder nor a hub repo that can supply the files.
pub fn resolve_embedder(reference: &str) -> Result<EmbedderFiles, SourceError> {
    let local = Path::new(reference);
    let fetch = |file: &str| -> Result<PathBuf, SourceError> {
        if local.is_dir() {
            let path = local.join(file);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(SourceError::NotFound(path.to_string_lossy().into_owned()))
            };
        }
        match parse_hub_ref(reference) {
            Some(HubRef { repo, file: None }) => hub_file(repo, file),
            _ => Err(SourceError::NotFound(reference.to_owned())),
        }
    };
    Ok(EmbedderFiles {
        config: fetch("config.json")?,
        tokenizer: fetch("tokenizer.json")?,
        weights: fetch("model.safetensors")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_references_parse_into_repo_and_file() {
        assert_eq!(
            parse_hub_ref("owner/name:model.gguf"),
            Some(HubRef {
                repo: "owner/name",
                file: Some("model.gguf")
            })
        );
        assert_eq!(
            parse_hub_ref("sentence-transformers/all-MiniLM-L6-v2"),
            Some(HubRef {
                repo: "sentence-transformers/all-MiniLM-L6-v2",
                file: None
            })
        );
        assert_eq!(parse_hub_ref("no-slash"), None);
        assert_eq!(parse_hub_ref("a/b/c"), None);
        assert_eq!(parse_hub_ref("owner/name:"), None);
        assert_eq!(parse_hub_ref("/abs/path"), None);
    }
}
