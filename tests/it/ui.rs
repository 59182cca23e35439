//! The annotation page in a real browser: headless Chromium, driven through chromedriver,
//! runs the whole loop on a live server that requires an API key (create a task, upload
//! a 300-item SST-2 pool, fast vote-k with budget 10, annotate by key presses with a
//! skip and an undo, evaluate, try a prediction) and checks what the page shows at each
//! step against what the API answers.
//!
//! Screenshots of each page go to `target/ui-screenshots/`, or to the folder
//! `EXEMPLAR_UI_SCREENSHOTS` names (`docs/ui` refreshes the README's pictures).

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, read_jsonl, repo_dir, shared_dir, TestServer};
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{json, Value};

/// How long the page may take to show what a step waits for (a debug build's LLM
/// evaluates ten rows inside it with room to spare).
const PATIENCE: Duration = Duration::from_secs(240);

/// A chromedriver process in a process group of its own, killed with the browsers it
/// started when dropped (a failed test never closes its session, and killing only
/// chromedriver would leave Chromium running).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// Starts chromedriver and a headless Chromium session in a 1280 x 1000 window.
async fn browser() -> (Driver, Client) {
    let port = free_port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/test.sh installs Debian's chromium-driver)"),
    );
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1000", "--hide-scrollbars",
        ]}),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let session = ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await;
        match session {
            Ok(client) => return (driver, client),
            // chromedriver takes a moment to listen.
            Err(e) => assert!(Instant::now() < deadline, "no browser session: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A text as the browser shows it: runs of white space made one space.
fn shown(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The page as the test sees it: the browser and where its screenshots go.
struct Page {
    client: Client,
    shots: PathBuf,
}

impl Page {
    async fn find(&self, css: &str) -> Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }

    async fn displayed(&self, css: &str) -> bool {
        self.find(css)
            .await
            .is_displayed()
            .await
            .expect("displayed")
    }

    /// The texts of every element `css` finds, in document order.
    async fn texts(&self, css: &str) -> Vec<String> {
        let mut texts = Vec::new();
        for element in self.client.find_all(Locator::Css(css)).await.expect(css) {
            texts.push(element.text().await.expect("text"));
        }
        texts
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// Chooses `file` in the file input `css`, as the file dialog would.
    async fn choose_file(&self, css: &str, file: &std::path::Path) {
        self.find(css)
            .await
            .send_keys(&file.display().to_string())
            .await
            .expect("file chosen");
    }

    /// Presses one key on the page, as a person at the keyboard does.
    async fn press(&self, key: char) {
        let keys = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        self.client.perform_actions(keys).await.expect("key press");
    }

    /// Waits until `css`'s text satisfies `check`; fails with what it last showed and the
    /// page's error banner.
    async fn until(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text(css).await;
            if check(&text) {
                return text;
            }
            let error = self.text("#error").await;
            assert!(
                Instant::now() < deadline && error.is_empty(),
                "{css} never showed {what}: it shows {text:?}; error banner: {error:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens a page by its tab and waits until it shows.
    async fn open(&self, tab: &str) {
        self.click(&format!("#tabs a[data-view={tab}]")).await;
        let deadline = Instant::now() + PATIENCE;
        while !self.displayed(&format!("#view-{tab}")).await {
            assert!(Instant::now() < deadline, "the {tab} page never showed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("screenshot written");
    }
}

/// `GET` or `POST` with the key, answering the body of a 2xx.
async fn api(
    server: &TestServer,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (status, body) = server.call_as(Some(key), method, path, body).await;
    assert!((200..300).contains(&status), "{path}: {status} {body}");
    body
}

#[tokio::test]
#[ignore = "loads the models and runs Chromium; run with --include-ignored"]
async fn the_whole_annotation_loop_runs_in_a_browser() {
    let key = "k".repeat(40);
    let server =
        TestServer::start_with_env(&["--require-auth"], &[("EXEMPLAR_BOOTSTRAP_KEY", &key)]).await;
    let shots = std::env::var_os("EXEMPLAR_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target/ui-screenshots"));
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let (_driver, client) = browser().await;
    let page = Page { client, shots };

    // Without a key the page shows the API's own refusal.
    page.client
        .goto(&server.url("/ui/"))
        .await
        .expect("page loads");
    page.until("#error", "the 401", |t| t.starts_with("unauthorized:"))
        .await;
    page.type_into("#api-key", &key).await;
    page.click("#key-form button").await;
    page.until("#key-state", "the key in use", |t| t == "key in use")
        .await;

    // Tasks: a live preview, then the task in the list.
    page.type_into("#task-name", "reviews").await;
    page.type_into("#task-labels", "negative, positive").await;
    page.type_into(
        "#task-instruction",
        "Classify the sentiment of each movie review as negative or positive.",
    )
    .await;
    let preview = page.text("#task-preview").await;
    assert_eq!(
        preview,
        "Classify the sentiment of each movie review as negative or positive.\n\nReview: an example text\nSentiment: negative"
    );
    page.click("#task-form button[type=submit]").await;
    page.until("#task-status", "the creation", |t| t == "Created reviews.")
        .await;
    assert_eq!(
        page.texts("#task-table tbody td").await,
        ["reviews", "negative, positive", "0", "0", "Open"]
    );
    let task = api(&server, &key, Method::GET, "/v1/tasks/reviews", None).await;
    assert_eq!(task["labels"], json!(["negative", "positive"]));
    page.screenshot("tasks").await;

    // Pool: 300 SST-2 training sentences from a file, with their gold labels kept aside.
    let rows: Vec<Value> = read_jsonl(shared_dir().join("data/sst2/train.jsonl"))
        .into_iter()
        .take(300)
        .collect();
    let gold: HashMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                shown(r["text"].as_str().unwrap()),
                r["label"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pool_file = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    let lines: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"id": format!("p{i}"), "text": r["text"]}).to_string())
        .collect();
    std::fs::write(pool_file.path(), lines.join("\n")).unwrap();
    page.open("pool").await;
    page.choose_file("#pool-file", pool_file.path()).await;
    page.click("#pool-form button").await;
    page.until("#pool-status", "the upload's end", |t| {
        t == "300 of 300 uploaded"
    })
    .await;
    page.until("#pool-count", "the pool's count", |t| {
        t == "reviews: 300 items, 0 annotated examples"
    })
    .await;
    let listed = page
        .client
        .find_all(Locator::Css("#pool-table tbody tr"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 50, "the first page lists 50 items");
    page.screenshot("pool").await;
    // The first item goes; the page and the API both count 299.
    page.click("#pool-table tbody tr:first-child button.delete")
        .await;
    page.until("#pool-count", "the count after a delete", |t| {
        t == "reviews: 299 items, 0 annotated examples"
    })
    .await;
    let (status, _) = server
        .call_as(Some(&key), Method::GET, "/v1/tasks/reviews/pool/p0", None)
        .await;
    assert_eq!(status, 404, "the deleted item is still in the pool");

    // Select: fast vote-k, budget 10.
    page.open("select").await;
    page.type_into("#select-budget", "10").await;
    page.click("#select-form button").await;
    let state = page
        .until("#selection-state", "a complete selection", |t| {
            t.contains("complete")
        })
        .await;
    assert_eq!(
        state,
        "fast-vote-k, budget 10: complete; 10 items, 0 annotated"
    );
    let chosen = page.texts("#selection-items li").await;
    assert_eq!(chosen.len(), 10);
    page.screenshot("select").await;

    // Annotate: keys 1 and 2 for the gold labels; one skip and one undo on the way.
    page.click("#selection-annotate").await;
    page.until("#annotate-count", "the count", |t| {
        t == "0 done, 10 left of 10"
    })
    .await;
    let first = page.text("#annotate-text").await;
    page.press('s').await;
    let after_skip = page
        .until("#annotate-text", "the next item", |t| t != first)
        .await;
    assert!(chosen.contains(&after_skip));
    let key_of = |text: &str| match gold[text].as_str() {
        "negative" => '1',
        _ => '2',
    };
    // A wrong label, taken back at once.
    page.press(if key_of(&after_skip) == '1' { '2' } else { '1' })
        .await;
    page.until("#annotate-count", "one done", |t| {
        t == "1 done, 9 left of 10"
    })
    .await;
    page.press('u').await;
    page.until("#annotate-count", "the undo", |t| {
        t == "0 done, 10 left of 10"
    })
    .await;
    assert_eq!(page.text("#annotate-text").await, after_skip);
    for done in 1..=10 {
        let text = page.text("#annotate-text").await;
        if done == 4 {
            page.screenshot("annotate").await;
        }
        page.press(key_of(&text)).await;
        let expected = format!("{done} done, {} left of 10", 10 - done);
        page.until("#annotate-count", &expected, |t| t == expected)
            .await;
    }
    assert!(page.displayed("#annotate-done").await);
    assert_eq!(
        page.text("#annotate-done-text").await,
        "Every selected item is annotated."
    );
    // Each label went to the API as it was given: the examples are the chosen items with
    // their gold labels, the wrong one undone.
    let examples = api(
        &server,
        &key,
        Method::GET,
        "/v1/tasks/reviews/examples",
        None,
    )
    .await;
    let mut stored: Vec<(String, String)> = examples["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                shown(e["text"].as_str().unwrap()),
                e["label"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    stored.sort();
    let mut expected: Vec<(String, String)> = chosen
        .iter()
        .map(|t| (t.clone(), gold[t].clone()))
        .collect();
    expected.sort();
    assert_eq!(stored, expected);

    // Evaluate: leave-one-out, the same table the API gives.
    page.open("evaluate").await;
    page.click("#eval-form button").await;
    page.until("#eval-status", "the end of the job", |t| {
        t == "10 rows evaluated"
    })
    .await;
    let table = api(
        &server,
        &key,
        Method::POST,
        "/v1/tasks/reviews/evaluate",
        Some(json!({"leave_one_out": true, "k": 8})),
    )
    .await;
    let accuracy = table["accuracy"].as_f64().unwrap();
    assert_eq!(
        page.text("#eval-accuracy").await,
        format!("Accuracy {:.1} %", 100.0 * accuracy)
    );
    let cells: Vec<u64> = page
        .texts("#eval-confusion td")
        .await
        .iter()
        .map(|c| c.parse().expect("a count"))
        .collect();
    let confusion: Vec<u64> = table["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()))
        .collect();
    assert_eq!(
        cells, confusion,
        "the heat map shows the API's confusion matrix"
    );
    page.screenshot("evaluate").await;

    // Try it: probabilities as bars, demonstrations in prompt order, the prompt.
    page.open("try").await;
    let review = "a gorgeous , witty , seductive movie .";
    page.type_into("#try-text", review).await;
    page.click("#try-form button[type=submit]").await;
    page.until("#try-label", "a label", |t| !t.is_empty()).await;
    let prediction = api(
        &server,
        &key,
        Method::POST,
        "/v1/tasks/reviews/predict",
        Some(json!({"inputs": [{"text": review}], "k": 8})),
    )
    .await;
    let prediction = &prediction["predictions"][0];
    assert_eq!(
        page.text("#try-label").await,
        prediction["label"].as_str().unwrap()
    );
    let bars = page
        .client
        .find_all(Locator::Css("#try-bars .bar"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 2);
    let similarities: Vec<String> = page.texts("#try-demos tbody td:nth-child(2)").await;
    let expected: Vec<String> = prediction["demonstrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{:.3}", d["similarity"].as_f64().unwrap()))
        .collect();
    assert_eq!(similarities.len(), 8);
    assert_eq!(similarities, expected, "demonstrations in prompt order");
    let prompt = page.text("#try-prompt").await;
    assert!(
        prompt.ends_with(&format!("Review: {review}\nSentiment:")),
        "{prompt}"
    );
    page.screenshot("try").await;

    // An API refusal is shown as the API words it: a CSV test file (a quoted field with
    // a comma and quotes in it) whose label the task does not have.
    let bad_file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    std::fs::write(
        bad_file.path(),
        "text,label\n\"a fine, \"\"quoted\"\" film\",neutral\n",
    )
    .unwrap();
    let (status, refusal) = server
        .call_as(
            Some(&key),
            Method::POST,
            "/v1/tasks/reviews/evaluate",
            Some(json!({"examples": [{"text": "a fine, \"quoted\" film", "label": "neutral"}], "k": 8, "background": true})),
        )
        .await;
    assert_eq!(status, 422, "{refusal}");
    let words = format!(
        "{}: {}",
        refusal["error"]["code"].as_str().unwrap(),
        refusal["error"]["message"].as_str().unwrap()
    );
    page.open("evaluate").await;
    page.click("input[name=eval-source][value=file]").await;
    page.choose_file("#eval-file", bad_file.path()).await;
    page.click("#eval-form button").await;
    let deadline = Instant::now() + PATIENCE;
    while page.text("#error").await.is_empty() {
        assert!(Instant::now() < deadline, "the refusal never showed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(page.text("#error").await, words);

    page.client.close().await.expect("session closed");
}
