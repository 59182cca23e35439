//! A test-only hook: in debug builds (the ones `cargo test` runs), setting
//! `EXEMPLAR_TEST_PANIC` to `llm` or `embedder` makes that model's work panic inside
//! the kernel pool, so that the tests can show how the server fails (the model is
//! marked broken, `/ready` answers 503, the process exits non-zero). Release builds
//! compile it out.

/// Panics when the tests asked `model`'s pool work to.
#[cfg(debug_assertions)]
pub fn panic_if_asked(model: &str) {
    static ASKED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let asked = ASKED.get_or_init(|| std::env::var("EXEMPLAR_TEST_PANIC").ok());
    if asked.as_deref() == Some(model) {
        panic!("a panic injected into the {model}'s kernel pool (EXEMPLAR_TEST_PANIC)");
    }
}

/// Does nothing: the hook exists in debug builds only.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn panic_if_asked(_: &str) {}
