//! The command line: flags, environment fallbacks, device checks, and model references
//! resolved through a Hugging Face hub cache that the test lays out itself.

use crate::common;

use std::path::Path;
use std::time::Duration;

use crate::common::TestServer;

/// Runs `exemplar serve` on a free port with its own database, so that tests running
/// at once never migrate the same file.
fn run_serve(args: &[&str]) -> std::process::Output {
    let database = common::TestDatabase::sqlite();
    common::exemplar()
        .arg("serve")
        .args(["--addr", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--database-url", &database.url])
        .args(args)
        .output()
        .expect("exemplar runs")
}

#[test]
fn an_unknown_device_is_refused_with_the_choices() {
    let output = run_serve(&["--device", "tpu"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tpu") && stderr.contains("cpu") && stderr.contains("cuda"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_device_from_the_environment_is_refused_too() {
    let database = common::TestDatabase::sqlite();
    let output = common::exemplar()
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{}", common::free_port()),
            "--database-url",
            &database.url,
        ])
        .env("EXEMPLAR_DEVICE", "gpu9")
        .output()
        .expect("exemplar runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("gpu9"));
}

#[test]
fn the_allocator_returns_freed_pages_after_a_second() {
    // jemalloc prints its options at exit when asked; the binary's own setting must
    // be among them (the default keeps freed pages ten seconds, which held the
    // predict bench's peak about 40 MB higher).
    let output = common::exemplar()
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("exemplar runs");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("opt.dirty_decay_ms: 1000"), "{stderr}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_says_how_to_get_it() {
    let models = common::models_dir();
    let output = run_serve(&[
        "--device",
        "cuda",
        "--models-dir",
        models.to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features cuda"), "{stderr}");
}

#[test]
fn a_missing_model_ends_the_process_with_a_reason() {
    let output = run_serve(&["--model", "/nonexistent/model.gguf"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/model.gguf"), "{stderr}");
}

/// Asserts that `output` is a start-up refusal: a failure whose standard error is a
/// one-line reason holding every one of `needles`, printed before the server listened.
fn assert_refused_before_listening(output: &std::process::Output, needles: &[&str]) {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` missing from: {stderr}");
    }
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("Caused by"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn the_import_help_names_both_file_formats() {
    let output = common::exemplar()
        .args(["help", "import"])
        .output()
        .expect("exemplar runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("JSON-lines or CSV"), "{help}");
    let output = common::exemplar()
        .arg("--help")
        .output()
        .expect("exemplar runs");
    let overview = String::from_utf8_lossy(&output.stdout);
    let import = overview
        .lines()
        .find(|line| line.trim_start().starts_with("import"))
        .expect("import is listed");
    assert!(import.contains("CSV"), "{import}");
}

#[test]
fn a_short_bootstrap_key_stops_the_process_before_it_listens() {
    let models = common::models_dir();
    let database = common::TestDatabase::sqlite();
    let output = common::exemplar()
        .arg("serve")
        .args(["--addr", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--database-url", &database.url])
        .args(["--models-dir", models.to_str().expect("utf-8")])
        .env("EXEMPLAR_BOOTSTRAP_KEY", "too-short-secret")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("exemplar runs");
    assert_refused_before_listening(&output, &["at least 32", "openssl rand -hex 32"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("too-short-secret"),
        "the key is echoed: {stderr}"
    );
}

#[test]
fn started_outside_the_checkout_it_says_the_models_folder_is_missing() {
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let gguf = common::gguf_path();
    let output = common::exemplar()
        .current_dir(elsewhere.path())
        .arg("serve")
        .args(["--addr", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--database-url", "sqlite://exemplar.db"])
        .args(["--model", gguf.to_str().expect("utf-8")])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("exemplar runs");
    assert_refused_before_listening(
        &output,
        &[
            "default embedder",
            "scripts/fetch-models.sh",
            "--models-dir",
            "--embedder",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("hub"), "looked up on the hub: {stderr}");
    assert!(
        !elsewhere.path().join("exemplar.db").exists(),
        "the database was opened before the check"
    );
}

/// Lays out `models--{owner}--{name}/snapshots/{rev}/` with links to `files`, as
/// hf-hub's cache does, and points `refs/main` at the revision.
fn lay_out_hub_repo(hub: &Path, repo: &str, files: &[(&str, &Path)]) {
    let folder = hub.join(format!("models--{}", repo.replace('/', "--")));
    let revision = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = folder.join("snapshots").join(revision);
    std::fs::create_dir_all(&snapshot).expect("snapshot dir");
    std::fs::create_dir_all(folder.join("refs")).expect("refs dir");
    std::fs::write(folder.join("refs/main"), revision).expect("ref");
    for (name, target) in files {
        std::os::unix::fs::symlink(target, snapshot.join(name)).expect("link");
    }
}

#[tokio::test]
async fn hub_repo_ids_resolve_from_the_cache_offline() {
    let home = tempfile::tempdir().expect("temp dir");
    let hub = home.path().join("hub");
    let models = common::models_dir();
    let gguf = models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    lay_out_hub_repo(&hub, "test-org/smollm2-gguf", &[("smollm2.gguf", &gguf)]);
    let minilm = models.join("all-minilm-l6-v2");
    lay_out_hub_repo(
        &hub,
        "test-org/minilm",
        &[
            ("config.json", &minilm.join("config.json")),
            ("tokenizer.json", &minilm.join("tokenizer.json")),
            ("model.safetensors", &minilm.join("model.safetensors")),
        ],
    );
    let empty_models = home.path().join("no-models-here");
    let env = [
        ("HF_HOME", home.path().to_str().expect("utf-8")),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let server = TestServer::start_with_env(
        &[
            "--model",
            "test-org/smollm2-gguf:smollm2.gguf",
            "--embedder",
            "test-org/minilm",
            "--models-dir",
            empty_models.to_str().expect("utf-8"),
        ],
        &env,
    )
    .await;
    let (status, info) = server.get("/v1/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["embedder"]["name"], "minilm");
    let (status, body) = server
        .post("/v1/tokenize", serde_json::json!({"text": "Hello world"}))
        .await;
    assert_eq!(
        (status, body["ids"].clone()),
        (200, serde_json::json!([19556, 905]))
    );
    drop(server);

    // A repo the cache lacks: offline, the process ends and says which file is missing.
    let mut server = TestServer::spawn(&["--model", "test-org/absent:model.gguf"], &env);
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("the process ends by itself");
    assert!(!status.success());
}
