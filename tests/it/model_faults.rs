//! A panic in a model's work fails safely: the model is marked broken, `/ready`
//! answers 503 `model_broken`, model work is refused, and the process exits non-zero
//! so that its supervisor starts a fresh one. The panic is injected inside the kernel
//! pool by the test-only hook (`EXEMPLAR_TEST_PANIC`, debug builds only).

#![cfg(debug_assertions)]

use std::time::Duration;

use serde_json::json;

use crate::common::TestServer;

#[tokio::test]
#[ignore = "loads the models; run with --include-ignored"]
async fn a_panic_in_either_models_kernel_pool_breaks_it_and_the_process_restarts() {
    let cases = [
        (
            "llm",
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 2}),
        ),
        ("embedder", "/v1/embeddings", json!({"input": "Hello"})),
    ];
    for (model, path, body) in cases {
        // The broken replica serves on for the drain before its listener closes, so
        // that the checks below meet it however slowly this machine answers them.
        let mut server = TestServer::start_with_env(
            &["--drain-seconds", "5", "--shutdown-grace-seconds", "1"],
            &[("EXEMPLAR_TEST_PANIC", model)],
        )
        .await;
        let (status, _) = server.get("/ready").await;
        assert_eq!(status, 200, "{model}: ready before the panic");

        // The worker records the break before the panicking job's reply is dropped,
        // so that request already says why, and so does /ready from then on.
        let (status, answer) = server.post(path, body.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (503, Some("model_broken")),
            "{model}: the panicking request answered {answer}"
        );
        let (status, ready) = server.get("/ready").await;
        assert_eq!(
            (status, ready["error"]["code"].as_str()),
            (503, Some("model_broken")),
            "{model}: {ready}"
        );
        let (status, again) = server.post(path, body).await;
        assert_eq!(
            (status, again["error"]["code"].as_str()),
            (503, Some("model_broken")),
            "{model}: {again}"
        );

        let exit = server
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{model}: the broken server did not exit"));
        assert!(!exit.success(), "{model}: exit status {exit}");
        let log = server.log();
        assert!(log.contains("panicked"), "{model}: {log}");
    }
}
