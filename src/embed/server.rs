//! `freshet embed-server`: one model process shared over HTTP, speaking the APIs the HTTP
//! embedders speak — OpenAI-compatible `POST /v1/embeddings` (float or base64 encoding),
//! text-embeddings-inference's `POST /embed` (+ `GET /info`), Ollama's `POST /api/embed` —
//! plus `GET /health` and `GET /v1/models`.
//!
//! Errors answer as those servers do: more inputs than `max_batch` is 413, an unknown model
//! 404, malformed input 422 (400 for OpenAI), a missing or wrong API key 401. The model
//! runs on tokio's blocking pool, at most `concurrency` requests at a time.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::Embedder;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Most inputs per request (more is 413).
    pub max_batch: usize,
    /// Requests the model works on at once.
    pub concurrency: usize,
    /// Bearer token clients must send, if any.
    pub api_key: Option<String>,
    /// Largest request body (bytes).
    pub max_body_bytes: usize,
}

struct Served {
    embedder: Arc<dyn Embedder>,
    opts: ServerOptions,
    permits: Semaphore,
}

/// An error in the shape the API's clients expect.
fn error(api: &str, status: StatusCode, message: &str) -> Response {
    let body = match api {
        "openai" => json!({"error": {"message": message, "type": "invalid_request_error", "code": status.as_u16()}}),
        "tei" => json!({"error": message, "error_type": "Validation"}),
        _ => json!({"error": message}),
    };
    (status, Json(body)).into_response()
}

/// The texts of an `input`/`inputs` field: a string or an array of strings.
fn texts_of(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "inputs must be strings (token arrays are not supported)".to_string())
            })
            .collect(),
        Value::Array(_) => Err("no inputs".into()),
        _ => Err("`input` must be a string or an array of strings".into()),
    }
}

impl Served {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.opts.api_key else { return true };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| crate::telemetry::http::same(given, key))
    }

    fn model_matches(&self, requested: &Value) -> bool {
        match requested.as_str() {
            None | Some("") => true,
            Some(m) => {
                let id = self.embedder.model_id();
                m == id || id.rsplit('/').next() == Some(m)
            }
        }
    }

    /// Check, then embed on the blocking pool. Err is (status, message).
    async fn embed(
        self: &Arc<Self>,
        headers: &HeaderMap,
        texts: Vec<String>,
    ) -> Result<(Vec<Vec<f32>>, usize), (StatusCode, String)> {
        if !self.authorized(headers) {
            return Err((StatusCode::UNAUTHORIZED, "a valid API key is required (Authorization: Bearer …)".into()));
        }
        if texts.len() > self.opts.max_batch {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("batch size {} > maximum allowed batch size {}", texts.len(), self.opts.max_batch),
            ));
        }
        let _permit =
            self.permits.acquire().await.map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string()))?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokens: usize = refs.iter().map(|t| this.embedder.count_tokens(t)).sum();
            this.embedder.embed(&refs).map(|v| (v, tokens))
        })
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("the model task failed: {e}")))?
        .map_err(|e| {
            let status =
                if e.is_transient() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::UNPROCESSABLE_ENTITY };
            (status, e.to_string())
        })
    }
}

async fn openai(
    State(s): State<Arc<Served>>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else { return error("openai", StatusCode::BAD_REQUEST, "the body is not JSON") };
    if !s.model_matches(&body["model"]) {
        return error(
            "openai",
            StatusCode::NOT_FOUND,
            &format!(
                "the model `{}` does not exist (this server has `{}`)",
                body["model"].as_str().unwrap_or(""),
                s.embedder.model_id()
            ),
        );
    }
    if let Some(d) = body["dimensions"].as_u64() {
        if d as usize != s.embedder.dimension() {
            return error(
                "openai",
                StatusCode::BAD_REQUEST,
                &format!("this model has {} dimensions", s.embedder.dimension()),
            );
        }
    }
    let base64 = match body["encoding_format"].as_str() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return error("openai", StatusCode::BAD_REQUEST, &format!("unknown encoding_format `{other}`")),
    };
    let texts = match texts_of(&body["input"]) {
        Ok(t) => t,
        Err(m) => return error("openai", StatusCode::BAD_REQUEST, &m),
    };
    match s.embed(&headers, texts).await {
        Ok((vectors, tokens)) => {
            let data: Vec<Value> = vectors
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let embedding = if base64 {
                        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                        Value::String(base64_encode(&bytes))
                    } else {
                        json!(v)
                    };
                    json!({"object": "embedding", "index": i, "embedding": embedding})
                })
                .collect();
            Json(json!({"object": "list", "data": data, "model": s.embedder.model_id(),
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
            .into_response()
        }
        Err((status, m)) => error("openai", status, &m),
    }
}

async fn tei(
    State(s): State<Arc<Served>>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else { return error("tei", StatusCode::UNPROCESSABLE_ENTITY, "the body is not JSON") };
    if body["normalize"] == Value::Bool(false) {
        return error("tei", StatusCode::UNPROCESSABLE_ENTITY, "this server returns normalised vectors only");
    }
    let texts = match texts_of(&body["inputs"]) {
        Ok(t) => t,
        Err(m) => return error("tei", StatusCode::UNPROCESSABLE_ENTITY, &m),
    };
    match s.embed(&headers, texts).await {
        Ok((vectors, _)) => Json(json!(vectors)).into_response(),
        Err((status, m)) => error("tei", status, &m),
    }
}

async fn ollama(
    State(s): State<Arc<Served>>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else { return error("ollama", StatusCode::BAD_REQUEST, "the body is not JSON") };
    if !s.model_matches(&body["model"]) {
        return error(
            "ollama",
            StatusCode::NOT_FOUND,
            &format!("model \"{}\" not found", body["model"].as_str().unwrap_or("")),
        );
    }
    let texts = match texts_of(&body["input"]) {
        Ok(t) => t,
        Err(m) => return error("ollama", StatusCode::BAD_REQUEST, &m),
    };
    let started = std::time::Instant::now();
    match s.embed(&headers, texts).await {
        Ok((vectors, tokens)) => Json(json!({"model": s.embedder.model_id(), "embeddings": vectors,
                                              "total_duration": started.elapsed().as_nanos() as u64,
                                              "prompt_eval_count": tokens}))
        .into_response(),
        Err((status, m)) => error("ollama", status, &m),
    }
}

/// Standard base64 (RFC 4648, padded), for OpenAI's `encoding_format = "base64"`.
pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The routes, for `embedder`.
pub fn router(embedder: Arc<dyn Embedder>, opts: ServerOptions) -> Router {
    let max_body = opts.max_body_bytes;
    let permits = Semaphore::new(opts.concurrency.max(1));
    let served = Arc::new(Served { embedder, opts, permits });
    let info = {
        let s = Arc::clone(&served);
        move || async move {
            Json(json!({"model_id": s.embedder.model_id(), "model_type": {"embedding": {"pooling": "mean"}},
                        "max_client_batch_size": s.opts.max_batch, "max_concurrent_requests": s.opts.concurrency,
                        "version": env!("CARGO_PKG_VERSION"), "dimension": s.embedder.dimension()}))
        }
    };
    let models = {
        let s = Arc::clone(&served);
        move || async move {
            Json(
                json!({"object": "list", "data": [{"id": s.embedder.model_id(), "object": "model", "owned_by": "freshet"}]}),
            )
        }
    };
    Router::new()
        .route("/v1/embeddings", post(openai))
        .route("/embeddings", post(openai))
        .route("/embed", post(tei))
        .route("/api/embed", post(ollama))
        .route("/health", get(|| async { "ok" }))
        .route("/info", get(info))
        .route("/v1/models", get(models))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(served)
}

/// Bind `addr` and serve until the process stops; `bound` is told the address first.
pub async fn serve(
    embedder: Arc<dyn Embedder>,
    opts: ServerOptions,
    addr: SocketAddr,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    bound(listener.local_addr()?);
    axum::serve(listener, router(embedder, opts))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn inputs_are_a_string_or_strings() {
        assert_eq!(texts_of(&json!("a")).unwrap_or_default(), vec!["a"]);
        assert_eq!(texts_of(&json!(["a", "b"])).unwrap_or_default(), vec!["a", "b"]);
        assert!(texts_of(&json!([])).is_err());
        assert!(texts_of(&json!([[1, 2]])).is_err());
        assert!(texts_of(&json!(3)).is_err());
    }
}
