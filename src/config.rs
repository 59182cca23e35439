//! Service configuration: command-line flags first, then `EXEMPLAR_*` environment
//! variables, then the defaults named here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::jobs::JobLimits;
use crate::simd::CpuFeatures;

/// Address the server listens on when none is given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Database used when none is given: an embedded SQLite file.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://exemplar.db";
/// Folder that `scripts/fetch-models.sh` fills.
pub const DEFAULT_MODELS_DIR: &str = "models";
/// The default LLM, relative to the models folder.
pub const DEFAULT_MODEL_FILE: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The default sentence embedder folder, relative to the models folder.
pub const DEFAULT_EMBEDDER_DIR: &str = "all-minilm-l6-v2";
/// Megabytes of prompt-prefix KV state the LLM keeps across requests.
pub const DEFAULT_KV_CACHE_MB: usize = 256;
/// Requests waiting for a model beyond this many are refused with 429.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
/// The largest `max_tokens` a completion may ask for.
pub const DEFAULT_MAX_TOKENS_CAP: usize = 512;
/// The largest request body accepted, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Seconds a request may take before it is answered 408.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 300;
/// Requests one client may have in flight at once.
pub const DEFAULT_CLIENT_MAX_IN_FLIGHT: usize = 32;
/// Requests one client may send per second (bursts of twice that).
pub const DEFAULT_CLIENT_RATE: u32 = 100;
/// Seconds a stopping server keeps serving, with `/ready` at 503, before it closes.
pub const DEFAULT_DRAIN_SECS: u64 = 0;
/// Seconds the requests in flight get to finish once the drain is over.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Seconds a replica's claim on a background job holds unless renewed.
pub const DEFAULT_JOB_LEASE_SECS: u64 = 30;
/// Background jobs one requester may have running.
pub const DEFAULT_JOBS_PER_REQUESTER: usize = 4;
/// Background jobs one task may have running.
pub const DEFAULT_JOBS_PER_TASK: usize = 8;
/// Background jobs one replica runs at once.
pub const DEFAULT_JOBS_PER_REPLICA: usize = 16;
/// Seconds an ended background job is kept: a week.
pub const DEFAULT_JOB_RETENTION_SECS: u64 = 7 * 24 * 3600;
/// Default milliseconds between replica syncs.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 1000;
/// Default for `--resident-examples`: about 3 GB of examples, embeddings and graph
/// (about 6 KB an example, measured in docs/results.md).
pub const DEFAULT_RESIDENT_EXAMPLES: usize = 500_000;

/// A setting that cannot work, found before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A default model is not in the models folder: it was never filled, or the
    /// service was started from another folder than the checkout.
    #[error(
        "the models folder `{dir}` has no {what} (looked for {looked_for}): run \
         `scripts/fetch-models.sh` in the exemplar checkout, then start from there or give \
         `--models-dir` (EXEMPLAR_MODELS_DIR) the folder it filled; or name the model \
         with `{flag}`"
    )]
    MissingModels {
        /// The models folder as given.
        dir: String,
        /// Which default model is missing.
        what: &'static str,
        /// The absolute path that was looked for.
        looked_for: String,
        /// The flag that names the model instead.
        flag: &'static str,
    },
    /// A `--model` entry names no file, has a name that is not one, or repeats a name.
    #[error(
        "--model `{entry}`: {problem}; give `NAME=PATH` (or a path, named after its file) \
         once per model"
    )]
    BadModelEntry {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The bootstrap key is too short to be a secret.
    #[error(
        "the bootstrap key (--bootstrap-key, EXEMPLAR_BOOTSTRAP_KEY) has {length} \
         characters; it must have at least {min} characters, e.g. the output of \
         `openssl rand -hex 32`"
    )]
    ShortBootstrapKey {
        /// Characters given.
        length: usize,
        /// Characters needed.
        min: usize,
    },
    /// A secret file cannot be read.
    #[error("cannot read the secret file `{path}`")]
    SecretFile {
        /// The file as given.
        path: String,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// `--database-password-file` is given with a database URL that cannot take it.
    #[error(
        "--database-password-file needs a database URL of the form \
         postgres://USER@HOST/DATABASE: {problem}"
    )]
    PasswordUrl {
        /// What is wrong with the URL.
        problem: &'static str,
    },
}

/// Where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// The CPU, with vector kernels picked for it at run time.
    Cpu,
    /// An NVIDIA GPU; needs a build with the `cuda` feature.
    Cuda,
}

/// How the LLM's weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightFormat {
    /// The file's own quantisation (Q4_1 for the default model).
    AsShipped,
    /// Re-quantised to Q8_0 at load: our fastest integer kernels.
    Q8_0,
    /// Dequantised to f32 at load: fastest prompt processing, most memory.
    F32,
}

/// Everything `exemplar serve` needs to start.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "EXEMPLAR_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,

    /// Database URL: `sqlite://FILE` (embedded) or `postgres://...`.
    #[arg(long, env = "EXEMPLAR_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    #[command(flatten)]
    pub models: ModelConfig,

    /// Requests that may wait for each model before new ones get 429.
    #[arg(long, env = "EXEMPLAR_QUEUE_CAPACITY", default_value_t = DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,

    /// The largest `max_tokens` a completion may ask for.
    #[arg(long, env = "EXEMPLAR_MAX_TOKENS_CAP", default_value_t = DEFAULT_MAX_TOKENS_CAP)]
    pub max_tokens_cap: usize,

    /// The largest request body accepted, in bytes.
    #[arg(long, env = "EXEMPLAR_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,

    /// Seconds a request may run before it is cut off.
    #[arg(long, env = "EXEMPLAR_REQUEST_TIMEOUT", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,

    /// Milliseconds between checks for examples and tasks that other replicas wrote to
    /// the shared database (0: never; for a single replica).
    #[arg(long, env = "EXEMPLAR_SYNC_INTERVAL_MS", default_value_t = DEFAULT_SYNC_INTERVAL_MS)]
    pub sync_interval_ms: u64,

    /// Annotated examples held in memory over all tasks: a task is loaded from the
    /// database on its first request, and the least recently used tasks are unloaded
    /// while more are held (a task larger than this is held alone).
    #[arg(long, env = "EXEMPLAR_RESIDENT_EXAMPLES", default_value_t = DEFAULT_RESIDENT_EXAMPLES)]
    pub resident_examples: usize,

    /// Seconds to go on serving after SIGTERM, with `/ready` answering 503, so that a
    /// load balancer stops sending before the listener closes (then background jobs save
    /// their progress and stop, and requests in flight get the grace below).
    #[arg(long, env = "EXEMPLAR_DRAIN_SECONDS", default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_seconds: u64,

    /// Seconds the requests still in flight when the drain ends get to finish; then
    /// their work is cancelled (they answer 503, streams end with an error line) and
    /// the process exits.
    #[arg(long, env = "EXEMPLAR_SHUTDOWN_GRACE_SECONDS", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_seconds: u64,

    /// Seconds a replica's lease on a running background job (vote-k's stage 2, an
    /// evaluation) holds unless renewed (it renews every third of that): how long after a
    /// replica dies another resumes its jobs.
    #[arg(long, env = "EXEMPLAR_JOB_LEASE_SECONDS", default_value_t = DEFAULT_JOB_LEASE_SECS)]
    pub job_lease_seconds: u64,

    /// Background jobs (evaluations, tunings) one client (an API key, else an address)
    /// may have running before 429 (0: no limit).
    #[arg(long, env = "EXEMPLAR_MAX_JOBS_PER_CLIENT", default_value_t = DEFAULT_JOBS_PER_REQUESTER)]
    pub max_jobs_per_client: usize,

    /// Background jobs one task may have running before 429 (0: no limit).
    #[arg(long, env = "EXEMPLAR_MAX_JOBS_PER_TASK", default_value_t = DEFAULT_JOBS_PER_TASK)]
    pub max_jobs_per_task: usize,

    /// Background jobs this replica runs at once (vote-k's stage 2 included); past it
    /// new jobs are 429 and lapsed ones are left to other replicas (0: no limit).
    #[arg(long, env = "EXEMPLAR_MAX_JOBS_PER_REPLICA", default_value_t = DEFAULT_JOBS_PER_REPLICA)]
    pub max_jobs_per_replica: usize,

    /// Seconds an ended background job (complete, failed, cancelled) is kept before
    /// it is deleted (0: kept for ever).
    #[arg(long, env = "EXEMPLAR_JOB_RETENTION_SECONDS", default_value_t = DEFAULT_JOB_RETENTION_SECS)]
    pub job_retention_seconds: u64,

    /// Requests one client may have in flight on /v1 routes before 429 (0: no limit).
    #[arg(long, env = "EXEMPLAR_CLIENT_MAX_IN_FLIGHT", default_value_t = DEFAULT_CLIENT_MAX_IN_FLIGHT)]
    pub client_max_in_flight: usize,

    /// Requests one client may send per second to /v1 routes, in bursts of twice that,
    /// before 429 (0: no limit).
    #[arg(long, env = "EXEMPLAR_CLIENT_RATE", default_value_t = DEFAULT_CLIENT_RATE)]
    pub client_rate: u32,

    /// Tell clients apart by the last `X-Forwarded-For` address (the one the load
    /// balancer appended), not the peer's: set it behind a balancer, and only then.
    #[arg(long, env = "EXEMPLAR_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,

    /// Refuse /v1 requests without a valid API key even while the database holds no key
    /// (auth is on anyway as soon as it holds one).
    #[arg(long, env = "EXEMPLAR_REQUIRE_AUTH")]
    pub require_auth: bool,

    /// An admin API key to add at start-up if the database lacks it (at least 32
    /// characters, e.g. `openssl rand -hex 32`); give it by the environment, where
    /// `ps` cannot show it.
    #[arg(long, env = "EXEMPLAR_BOOTSTRAP_KEY", hide_env_values = true)]
    pub bootstrap_key: Option<BootstrapKey>,

    /// A file holding the bootstrap key (a Docker or Swarm secret), read at start-up
    /// in place of `--bootstrap-key`.
    #[arg(
        long,
        env = "EXEMPLAR_BOOTSTRAP_KEY_FILE",
        conflicts_with = "bootstrap_key"
    )]
    pub bootstrap_key_file: Option<PathBuf>,

    /// A file holding the database password (a Docker or Swarm secret), put into
    /// `--database-url` at start-up so that the URL itself holds no secret.
    #[arg(long, env = "EXEMPLAR_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
}

impl Config {
    /// Reads `--bootstrap-key-file` and `--database-password-file` into the key and
    /// the database URL; a secret file's trailing line break is not part of the secret.
    ///
    /// # Errors
    /// When a file cannot be read, or the database URL is not one a password fits in.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.bootstrap_key_file {
            self.bootstrap_key = Some(BootstrapKey(read_secret(path)?));
        }
        if let Some(path) = &self.database_password_file {
            let password = read_secret(path)?;
            self.database_url = with_password(&self.database_url, &password)?;
        }
        Ok(())
    }

    /// The limits on background jobs.
    pub fn job_limits(&self) -> JobLimits {
        JobLimits {
            per_requester: self.max_jobs_per_client,
            per_task: self.max_jobs_per_task,
            per_replica: self.max_jobs_per_replica,
            retention_seconds: self.job_retention_seconds,
        }
    }

    /// Checks what can be checked without the database or the models' contents, so
    /// that a bad setting stops the process before it listens.
    ///
    /// # Errors
    /// When the bootstrap key is too short or a default model is missing.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.bootstrap_key {
            let length = key.0.chars().count();
            if length < crate::auth::MIN_BOOTSTRAP_KEY_LEN {
                return Err(ConfigError::ShortBootstrapKey {
                    length,
                    min: crate::auth::MIN_BOOTSTRAP_KEY_LEN,
                });
            }
        }
        self.models.check()
    }
}

/// The contents of a secret file, without the line break editors and `echo` end it with.
fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let secret = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        path: path.display().to_string(),
        source,
    })?;
    Ok(secret.trim_end_matches(['\n', '\r']).to_owned())
}

/// `url` with its password replaced by `password` (percent-encoded as URLs need).
fn with_password(url: &str, password: &str) -> Result<String, ConfigError> {
    let bad = |problem| ConfigError::PasswordUrl { problem };
    let mut parsed = url::Url::parse(url).map_err(|_| bad("it is not a URL"))?;
    if !parsed.scheme().starts_with("postgres") {
        return Err(bad("only a postgres:// URL has a password"));
    }
    if parsed.username().is_empty() {
        return Err(bad("it names no user (postgres://USER@HOST/DATABASE)"));
    }
    parsed
        .set_password(Some(password))
        .map_err(|()| bad("it has no host"))?;
    Ok(parsed.into())
}

/// A key given to the server; its `Debug` form hides it, so that no log line shows it.
#[derive(Clone)]
pub struct BootstrapKey(pub String);

impl std::str::FromStr for BootstrapKey {
    type Err = std::convert::Infallible;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        Ok(Self(key.to_owned()))
    }
}

impl std::fmt::Debug for BootstrapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapKey(..)")
    }
}

/// Which models to load, and where they run.
#[derive(Debug, Clone, Args)]
pub struct ModelConfig {
    /// Folder holding the default models (filled by `scripts/fetch-models.sh`).
    #[arg(long, env = "EXEMPLAR_MODELS_DIR", default_value = DEFAULT_MODELS_DIR)]
    pub models_dir: PathBuf,

    /// The LLM: a GGUF file, or `owner/name:file.gguf` on the Hugging Face hub, as
    /// `NAME=PATH` to serve it as NAME (default: the file's name). Repeat it (or give a
    /// comma-separated list) to serve several; the first is the default, and a task
    /// names its own with `model`.
    #[arg(long, env = "EXEMPLAR_MODEL", value_delimiter = ',')]
    pub model: Vec<String>,

    /// The sentence embedder: a folder with config.json, tokenizer.json and
    /// model.safetensors, or `owner/name` on the Hugging Face hub.
    #[arg(long, env = "EXEMPLAR_EMBEDDER")]
    pub embedder: Option<String>,

    /// Where the models run.
    #[arg(long, env = "EXEMPLAR_DEVICE", value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,

    /// How the LLM weights are held: as shipped, Q8_0 or f32.
    #[arg(long, env = "EXEMPLAR_WEIGHTS", value_enum, default_value_t = WeightFormat::Q8_0)]
    pub weights: WeightFormat,

    /// Threads for the models' matrix kernels (default: one per physical core).
    #[arg(long, env = "EXEMPLAR_THREADS")]
    pub threads: Option<usize>,

    /// Megabytes of keys and values the LLM holds: the running jobs' own, and in what
    /// is left, prompt prefixes and cached demonstrations kept for later requests.
    #[arg(long, env = "EXEMPLAR_KV_CACHE_MB", default_value_t = DEFAULT_KV_CACHE_MB)]
    pub kv_cache_mb: usize,

    /// The widest instructions the kernels use: `native` (all this CPU has), or `avx2`
    /// or `portable` to run as on a smaller CPU (the AVX2 tier measured on any machine).
    #[arg(long, env = "EXEMPLAR_CPU_FEATURES", value_enum, default_value_t = CpuFeatures::Native)]
    pub cpu_features: CpuFeatures,
}

/// One LLM to load: the name it is served as and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The name tasks and requests use (`id` in `GET /v1/models`).
    pub name: String,
    /// A GGUF path or hub reference.
    pub reference: String,
}

impl ModelEntry {
    /// Reads `NAME=PATH`, or a bare reference named after its file (without `.gguf`).
    fn parse(entry: &str) -> Result<Self, ConfigError> {
        let bad = |problem| ConfigError::BadModelEntry {
            entry: entry.to_owned(),
            problem,
        };
        let (name, reference) = match entry.split_once('=') {
            Some((name, reference)) => (name.trim().to_owned(), reference.trim().to_owned()),
            None => {
                let file = entry.rsplit(['/', ':']).next().unwrap_or(entry);
                let name = file.strip_suffix(".gguf").unwrap_or(file);
                (name.to_owned(), entry.trim().to_owned())
            }
        };
        if reference.is_empty() {
            return Err(bad("it names no file"));
        }
        if crate::tasks::check_name(&name).is_err() {
            return Err(bad(
                "the name must be 1 to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
        Ok(Self { name, reference })
    }
}

impl ModelConfig {
    /// The LLMs to load, the default first: the flags' entries, or the default file
    /// under the models folder.
    ///
    /// # Errors
    /// When an entry is malformed or two share a name.
    pub fn model_entries(&self) -> Result<Vec<ModelEntry>, ConfigError> {
        if self.model.is_empty() {
            let reference = self
                .models_dir
                .join(DEFAULT_MODEL_FILE)
                .to_string_lossy()
                .into_owned();
            return ModelEntry::parse(&reference).map(|entry| vec![entry]);
        }
        let entries = self
            .model
            .iter()
            .map(|entry| ModelEntry::parse(entry))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, entry) in entries.iter().enumerate() {
            if entries[..i].iter().any(|e| e.name == entry.name) {
                return Err(ConfigError::BadModelEntry {
                    entry: self.model[i].clone(),
                    problem: "another model already has this name",
                });
            }
        }
        Ok(entries)
    }

    /// The default LLM's reference (what the benches and experiments run).
    ///
    /// # Errors
    /// When an entry is malformed or two share a name.
    pub fn model_ref(&self) -> Result<String, ConfigError> {
        // Never empty: without flags it holds the default file.
        Ok(self
            .model_entries()?
            .into_iter()
            .next()
            .map_or_else(String::new, |entry| entry.reference))
    }

    /// The embedder reference: the flag's value or the default folder under the models folder.
    pub fn embedder_ref(&self) -> String {
        self.embedder.clone().unwrap_or_else(|| {
            self.models_dir
                .join(DEFAULT_EMBEDDER_DIR)
                .to_string_lossy()
                .into_owned()
        })
    }

    /// Checks that the default models this configuration falls back on are in the
    /// models folder (a model named by its flag is checked when it is resolved), so
    /// that a missing folder is reported as such rather than looked up on the hub.
    ///
    /// # Errors
    /// When a default model is missing.
    pub fn check(&self) -> Result<(), ConfigError> {
        let missing = |default: &str, what: &'static str, flag: &'static str| {
            let path = self.models_dir.join(default);
            let absolute = std::path::absolute(&path).unwrap_or(path);
            ConfigError::MissingModels {
                dir: self.models_dir.display().to_string(),
                what,
                looked_for: absolute.display().to_string(),
                flag,
            }
        };
        self.model_entries()?;
        if self.model.is_empty() && !self.models_dir.join(DEFAULT_MODEL_FILE).is_file() {
            return Err(missing(DEFAULT_MODEL_FILE, "default LLM", "--model"));
        }
        if self.embedder.is_none() && !self.models_dir.join(DEFAULT_EMBEDDER_DIR).is_dir() {
            return Err(missing(
                DEFAULT_EMBEDDER_DIR,
                "default embedder",
                "--embedder",
            ));
        }
        Ok(())
    }

    /// Sizes candle's two thread pools (rayon and its own) before either starts, and
    /// caps the kernels' instructions at `--cpu-features` before any model loads.
    ///
    /// On small machines the pools compete for the same cores, so both get the same
    /// deliberate count rather than their own guesses.
    pub fn apply_to_process(&self) {
        if let Some(threads) = self.threads.filter(|&t| t > 0) {
            // Safe to set here: called from main before any other thread exists.
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
            std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        }
        crate::simd::limit(self.cpu_features);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(models: &[&str]) -> ModelConfig {
        ModelConfig {
            models_dir: PathBuf::from("models"),
            model: models.iter().map(|m| (*m).to_owned()).collect(),
            embedder: None,
            device: DeviceKind::Cpu,
            weights: WeightFormat::Q8_0,
            threads: None,
            kv_cache_mb: DEFAULT_KV_CACHE_MB,
            cpu_features: CpuFeatures::Native,
        }
    }

    fn names(models: &[&str]) -> Vec<(String, String)> {
        config(models)
            .model_entries()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.reference))
            .collect()
    }

    #[test]
    fn model_entries_are_named_by_their_flag_or_their_file() {
        let pair = |n: &str, r: &str| (n.to_owned(), r.to_owned());
        assert_eq!(
            names(&[
                "gemma=/m/gemma.gguf",
                "/m/SmolLM2.Q4_1.gguf",
                "org/repo:qwen.gguf"
            ]),
            vec![
                pair("gemma", "/m/gemma.gguf"),
                pair("SmolLM2.Q4_1", "/m/SmolLM2.Q4_1.gguf"),
                pair("qwen", "org/repo:qwen.gguf"),
            ]
        );
        assert_eq!(
            names(&[]),
            vec![pair(
                "SmolLM2-135M-Instruct.Q4_1",
                "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )]
        );
    }

    /// The server's flags as `exemplar serve` parses them.
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn secret_files_fill_the_key_and_the_database_password() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let (key, password) = (dir.path().join("key"), dir.path().join("password"));
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(&password, "p@ss/word:1\n").unwrap();
        let mut config = Serve::parse_from([
            "serve".as_ref(),
            "--database-url".as_ref(),
            "postgres://exemplar@db:5432/exemplar".as_ref(),
            "--bootstrap-key-file".as_ref(),
            key.as_os_str(),
            "--database-password-file".as_ref(),
            password.as_os_str(),
        ])
        .config;
        config.read_secret_files().unwrap();
        assert_eq!(
            config.bootstrap_key.map(|k| k.0).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            config.database_url,
            "postgres://exemplar:p%40ss%2Fword%3A1@db:5432/exemplar"
        );
    }

    #[test]
    fn a_password_needs_a_postgres_url_with_a_user_and_a_secret_file_must_exist() {
        for url in [
            "sqlite://exemplar.db",
            "postgres://db/exemplar",
            "not a url",
        ] {
            let error = with_password(url, "secret").unwrap_err().to_string();
            assert!(error.starts_with("--database-password-file"), "{error}");
        }
        let error = read_secret(Path::new("/no/such/secret")).unwrap_err();
        assert!(matches!(error, ConfigError::SecretFile { .. }), "{error}");
    }

    #[test]
    fn repeated_empty_or_unusable_model_names_are_refused() {
        for bad in [&["a=/x.gguf", "a=/y.gguf"][..], &["a="], &["a b=/x.gguf"]] {
            let error = config(bad).model_entries().unwrap_err().to_string();
            assert!(error.starts_with("--model `"), "{error}");
        }
    }
}
