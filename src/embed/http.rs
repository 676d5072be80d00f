//! Embedders behind HTTP: the OpenAI-compatible `POST /v1/embeddings` (OpenAI, vLLM,
//! Ollama, text-embeddings-inference and `freshet embed-server` all serve it; results are
//! put back in input order by their `index`), text-embeddings-inference's native
//! `POST /embed`, and Ollama's `POST /api/embed`.
//!
//! The [`Embedder`] trait is blocking (the runtime calls it on tokio's blocking pool, the
//! CLI from plain threads), so requests run on a small runtime of the embedder's own, on a
//! thread of its own (so that dropping the embedder anywhere, even inside another
//! runtime's task, is safe), and `embed` waits for the answer.
//!
//! Every response is checked: one vector per input, each of the configured dimension.
//! HTTP statuses map to [`EmbedError`]: connection errors, timeouts, 408, 429 and 5xx are
//! transient (retried by the embedding service); the others are permanent (the service
//! splits the batch to isolate the text that causes them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::hash::estimate_tokens;
use super::{EmbedError, Embedder};

/// Which API the endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpApi {
    /// `POST {url}/v1/embeddings` (OpenAI-compatible).
    OpenAi,
    /// `POST {url}/embed` (text-embeddings-inference).
    Tei,
    /// `POST {url}/api/embed` (Ollama).
    Ollama,
}

impl HttpApi {
    /// The route appended to the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Self::OpenAi => "/v1/embeddings",
            Self::Tei => "/embed",
            Self::Ollama => "/api/embed",
        }
    }
}

/// How to reach an endpoint.
#[derive(Clone)]
pub struct HttpOptions {
    /// The API.
    pub api: HttpApi,
    /// Base URL, e.g. `https://api.openai.com` or `http://127.0.0.1:8080`.
    pub url: String,
    /// Model name sent in the request (OpenAI, Ollama) and written as `model_id`.
    pub model: String,
    /// Expected vector dimension (checked on every response).
    pub dimension: usize,
    /// The API key (sent as `Authorization: Bearer`), read from the environment by the caller.
    pub api_key: Option<String>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// The model's `tokenizer.json`, for exact token counts (else an estimate).
    pub tokenizer: Option<tokenizers::Tokenizer>,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("api", &self.api)
            .field("url", &self.url)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An embedder behind HTTP (see module docs).
pub struct HttpEmbedder {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    /// Dropping it stops the runtime's thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// What a request needs (shared with the runtime's tasks).
struct Inner {
    opts: HttpOptions,
    endpoint: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEmbedder")
            .field("endpoint", &self.inner.endpoint)
            .field("model", &self.inner.opts.model)
            .field("dimension", &self.inner.opts.dimension)
            .finish_non_exhaustive()
    }
}

/// At most this much of an error body goes into an error message.
const BODY_EXCERPT: usize = 300;

fn excerpt(body: &str) -> String {
    let t: String = body.chars().take(BODY_EXCERPT).collect();
    if body.chars().count() > BODY_EXCERPT {
        format!("{t}…")
    } else {
        t
    }
}

impl HttpEmbedder {
    /// An embedder for `opts` (no request is made yet).
    pub fn new(opts: HttpOptions) -> Result<Self, EmbedError> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &opts.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| EmbedError::Permanent(format!("embedder header name `{k}`: {e}")))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| EmbedError::Permanent(format!("embedder header `{k}` value: {e}")))?;
            headers.insert(name, value);
        }
        if let Some(key) = &opts.api_key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| EmbedError::Permanent("the embedder API key is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(opts.timeout)
            .connect_timeout(opts.connect_timeout)
            .build()
            .map_err(|e| EmbedError::Permanent(format!("HTTP client: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("freshet-embed-http")
            .enable_all()
            .build()
            .map_err(|e| EmbedError::Transient(format!("starting the HTTP embedder's runtime: {e}")))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("freshet-embed-http-rt".into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
            })
            .map_err(|e| EmbedError::Transient(format!("starting the HTTP embedder's thread: {e}")))?;
        let endpoint = format!("{}{}", opts.url.trim_end_matches('/'), opts.api.path());
        Ok(Self { inner: Arc::new(Inner { opts, endpoint, client }), handle, _stop: stop })
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }
}

impl Inner {
    /// The request body for `texts`.
    fn body(&self, texts: &[&str]) -> Value {
        match self.opts.api {
            HttpApi::OpenAi => json!({"model": self.opts.model, "input": texts, "encoding_format": "float"}),
            HttpApi::Tei => json!({"inputs": texts, "truncate": true, "normalize": true}),
            HttpApi::Ollama => json!({"model": self.opts.model, "input": texts, "truncate": true}),
        }
    }

    /// The vectors of a successful response, in input order.
    fn parse(&self, n: usize, body: &Value) -> Result<Vec<Vec<f32>>, EmbedError> {
        let bad = |what: &str| EmbedError::Transient(format!("{}: {what}", self.endpoint));
        let vector = |v: &Value| -> Result<Vec<f32>, EmbedError> {
            v.as_array()
                .ok_or_else(|| bad("a vector is not an array"))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| bad("a vector holds a non-number")))
                .collect()
        };
        let vectors: Vec<Vec<f32>> = match self.opts.api {
            HttpApi::OpenAi => {
                let data = body["data"].as_array().ok_or_else(|| bad("no `data` array in the response"))?;
                let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
                for (pos, item) in data.iter().enumerate() {
                    let i = item["index"].as_u64().map_or(pos, |i| i as usize);
                    let slot = out.get_mut(i).ok_or_else(|| bad("an `index` past the inputs"))?;
                    if slot.is_some() {
                        return Err(bad("an `index` appears twice"));
                    }
                    *slot = Some(vector(&item["embedding"])?);
                }
                out.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| bad("an input has no vector"))?
            }
            HttpApi::Tei => body
                .as_array()
                .ok_or_else(|| bad("the response is not an array"))?
                .iter()
                .map(vector)
                .collect::<Result<_, _>>()?,
            HttpApi::Ollama => body["embeddings"]
                .as_array()
                .ok_or_else(|| bad("no `embeddings` array in the response"))?
                .iter()
                .map(vector)
                .collect::<Result<_, _>>()?,
        };
        if vectors.len() != n {
            return Err(bad(&format!("{} vectors for {n} texts", vectors.len())));
        }
        if let Some(v) = vectors.iter().find(|v| v.len() != self.opts.dimension) {
            return Err(EmbedError::Permanent(format!(
                "{}: a vector of dimension {} (the dataflow says {}; fix `embedder.dimension` or the model)",
                self.endpoint,
                v.len(),
                self.opts.dimension
            )));
        }
        Ok(vectors)
    }

    async fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let resp = self.client.post(&self.endpoint).json(&self.body(texts)).send().await.map_err(|e| {
            let kind = if e.is_timeout() { "timed out" } else { "failed" };
            EmbedError::Transient(format!("{}: request {kind}: {e}", self.endpoint))
        })?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let text = resp
            .text()
            .await
            .map_err(|e| EmbedError::Transient(format!("{}: reading the response: {e}", self.endpoint)))?;
        if status.is_success() {
            let body: Value = serde_json::from_str(&text)
                .map_err(|e| EmbedError::Transient(format!("{}: the response is not JSON: {e}", self.endpoint)))?;
            return self.parse(texts.len(), &body);
        }
        let message = format!("{}: HTTP {status}: {}", self.endpoint, excerpt(&text));
        Err(match status.as_u16() {
            429 => EmbedError::Throttled { message, retry_after },
            408 | 425 | 500..=599 if retry_after.is_some() => EmbedError::Throttled { message, retry_after },
            408 | 425 | 500..=599 => EmbedError::Transient(message),
            _ => EmbedError::Permanent(message),
        })
    }
}

/// The wait a response asks for: `retry-after-ms` (OpenAI, milliseconds), else
/// `Retry-After` (seconds, or an HTTP date). Capped at 10 minutes.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let wait = if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    } else {
        let v = get("retry-after")?;
        match v.parse::<f64>() {
            Ok(s) => Duration::from_secs_f64(s.max(0.0)),
            Err(_) => httpdate_wait(v)?,
        }
    };
    Some(wait.min(Duration::from_secs(600)))
}

/// The time until an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT` and the older forms), zero
/// if past.
fn httpdate_wait(v: &str) -> Option<Duration> {
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

impl Embedder for HttpEmbedder {
    fn model_id(&self) -> &str {
        &self.inner.opts.model
    }

    fn dimension(&self) -> usize {
        self.inner.opts.dimension
    }

    fn count_tokens(&self, text: &str) -> usize {
        match &self.inner.opts.tokenizer {
            Some(t) => t.encode(text, true).map_or_else(|_| estimate_tokens(text), |e| e.len()),
            None => estimate_tokens(text),
        }
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // Run the request on the embedder's runtime; wait here (a plain or blocking-pool
        // thread) for its answer.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let this = Arc::clone(&self.inner);
        let owned: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        self.handle.spawn(async move {
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            let _ = tx.send(this.request(&refs).await);
        });
        rx.recv().unwrap_or_else(|_| Err(EmbedError::Transient("the HTTP embedder's runtime stopped".into())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn inner(api: HttpApi, dimension: usize) -> Inner {
        Inner {
            opts: HttpOptions {
                api,
                url: "http://x".into(),
                model: "m".into(),
                dimension,
                api_key: Some("secret".into()),
                headers: BTreeMap::new(),
                timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                tokenizer: None,
            },
            endpoint: "http://x/v1/embeddings".into(),
            client: reqwest::Client::new(),
        }
    }

    #[test]
    fn openai_results_are_put_back_in_input_order() {
        let e = inner(HttpApi::OpenAi, 2);
        let body = json!({"data": [{"index": 2, "embedding": [2.0, 2.0]}, {"index": 0, "embedding": [0.0, 0.0]},
                                   {"index": 1, "embedding": [1.0, 1.0]}]});
        assert_eq!(e.parse(3, &body).unwrap(), vec![vec![0.0, 0.0], vec![1.0, 1.0], vec![2.0, 2.0]]);
        let twice = json!({"data": [{"index": 0, "embedding": [0.0, 0.0]}, {"index": 0, "embedding": [0.0, 0.0]}]});
        assert!(e.parse(2, &twice).is_err());
        let missing = json!({"data": [{"index": 1, "embedding": [0.0, 0.0]}]});
        assert!(e.parse(2, &missing).unwrap_err().is_transient());
        let past = json!({"data": [{"index": 5, "embedding": [0.0, 0.0]}]});
        assert!(e.parse(1, &past).is_err());
    }

    #[test]
    fn counts_and_dimensions_are_checked() {
        let tei = inner(HttpApi::Tei, 2);
        assert!(tei.parse(2, &json!([[1.0, 0.0]])).unwrap_err().is_transient(), "too few vectors");
        let e = tei.parse(1, &json!([[1.0, 0.0, 0.0]])).unwrap_err();
        assert!(!e.is_transient() && e.to_string().contains("dimension 3"), "{e}");
        assert!(tei.parse(1, &json!([["a", 0.0]])).is_err());
        let ollama = inner(HttpApi::Ollama, 2);
        assert_eq!(ollama.parse(1, &json!({"embeddings": [[0.5, 0.5]]})).unwrap(), vec![vec![0.5, 0.5]]);
        assert!(ollama.parse(1, &json!({"embedding": [0.5, 0.5]})).is_err());
    }

    #[test]
    fn retry_after_headers_are_read() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)), "the finer header wins");
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past: no wait");
        h.insert("retry-after", "99999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(600)), "capped");
    }

    #[test]
    fn the_api_key_stays_out_of_debug_output() {
        let e = inner(HttpApi::OpenAi, 2);
        assert!(!format!("{:?}", e.opts).contains("secret"));
    }
}
