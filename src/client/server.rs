//! The HTTP connection of the command-line clients: JSON in and out, 429 and 503
//! answers waited out with a growing pause, other errors returned with the server's
//! message (and the failing row, when the server names one).

use std::time::Duration;

use clap::Args;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::Value;

/// Attempts per request while the server answers 429 or 503.
const MAX_ATTEMPTS: u32 = 30;

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: the server is down or the address is wrong.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The server refused the request.
    #[error("the server answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error envelope's message.
        message: String,
        /// The row of the request body the server blamed, if any.
        row: Option<usize>,
    },
    /// 429 or 503 on every attempt.
    #[error("the server stayed busy after {MAX_ATTEMPTS} attempts")]
    Busy,
    /// A success whose body is not JSON.
    #[error("the server's answer is not JSON: {0}")]
    Malformed(reqwest::Error),
    /// The API key holds characters that no header may carry.
    #[error("the API key is not a valid header value")]
    BadKey,
    /// The HTTP client could not be built.
    #[error("setting up the HTTP client: {0}")]
    Setup(reqwest::Error),
    /// The client's own runtime could not start.
    #[error("starting the client: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Where the server is and the key to show it.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "EXEMPLAR_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The API key to send (see `exemplar keys create`); best given by the environment.
    #[arg(long, env = "EXEMPLAR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// A running server at a base URL.
pub struct Server {
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    /// A connection to the server that `args` names, sending its key on every request.
    ///
    /// # Errors
    /// When the key cannot be sent in a header or the client cannot start.
    pub fn new(args: &ServerArgs) -> Result<Self, ClientError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &args.api_key {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| ClientError::BadKey)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        Ok(Self {
            base: args.server.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .map_err(ClientError::Setup)?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// `GET path`, answered as JSON.
    ///
    /// # Errors
    /// When the server cannot be reached, refuses, or stays busy.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        self.runtime
            .block_on(self.call(|| self.client.get(&url), &url))
    }

    /// `POST path` with a JSON body, answered as JSON.
    ///
    /// # Errors
    /// When the server cannot be reached, refuses, or stays busy.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        self.runtime
            .block_on(self.call(|| self.client.post(&url).json(body), &url))
    }

    async fn call(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Value, ClientError> {
        for attempt in 1..=MAX_ATTEMPTS {
            let response = request()
                .send()
                .await
                .map_err(|source| ClientError::Unreachable {
                    url: url.to_owned(),
                    source,
                })?;
            let status = response.status();
            if status.is_success() {
                if status == reqwest::StatusCode::NO_CONTENT {
                    return Ok(Value::Null);
                }
                return response.json().await.map_err(ClientError::Malformed);
            }
            if (status == 429 || status == 503) && attempt < MAX_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                continue;
            }
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message: answer["error"]["message"]
                    .as_str()
                    .unwrap_or("no message")
                    .to_owned(),
                row: answer["error"]["row"].as_u64().map(|r| r as usize),
            });
        }
        Err(ClientError::Busy)
    }
}
