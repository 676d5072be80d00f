//! A fault-injecting HTTP proxy for the embedding tests: it sits between freshet's HTTP
//! embedder and `freshet embed-server` and, per request, either forwards it or answers as
//! a misbehaving provider does — scripted faults in order (503, 429 with or without
//! `Retry-After`, a response slower than the client's timeout, a dropped connection), a
//! rate limit (429 + `Retry-After` beyond N requests per second), 413 above a number of
//! inputs, and 400 for any batch holding a "poison" text. It records the number of inputs
//! of every request and what it answered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One scripted fault, used by the next request that is not otherwise refused.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 503 Service Unavailable.
    Unavailable,
    /// 429 with these extra headers (e.g. `retry-after: 1`).
    Throttle(Vec<(&'static str, String)>),
    /// Answer only after this long (longer than the client's timeout).
    Slow(Duration),
    /// Close the connection without an answer.
    Drop,
}

/// What the proxy does.
#[derive(Debug, Default)]
pub struct Plan {
    /// Faults for the next requests, in order.
    pub script: Vec<Fault>,
    /// 413 for requests with more inputs than this.
    pub max_inputs: Option<usize>,
    /// 400 for requests with an input containing this.
    pub poison: Option<String>,
    /// At most this many forwarded requests per second; beyond: 429 + `Retry-After`.
    pub rate_per_s: Option<usize>,
    /// `retry-after-ms` sent with rate-limit 429s.
    pub rate_retry_after_ms: u64,
}

/// One request seen.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Since the proxy started.
    pub at: Duration,
    /// Inputs in the request.
    pub inputs: usize,
    /// Status answered (0: dropped or timed out on the client side).
    pub status: u16,
}

/// A running proxy (its own thread and runtime; stops with the test process).
pub struct FaultProxy {
    /// Base URL to give the embedder.
    pub url: String,
    /// The plan, changeable while running.
    pub plan: Arc<Mutex<Plan>>,
    /// Every request, in arrival order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FaultProxy {
    /// Start in front of `upstream` (a base URL like `http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, plan: Plan) -> Self {
        let plan = Arc::new(Mutex::new(plan));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (p, s, up) = (Arc::clone(&plan), Arc::clone(&seen), upstream.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let state = Arc::new(State {
                    plan: p,
                    seen: s,
                    upstream: up,
                    started: Instant::now(),
                    window: Mutex::new(Vec::new()),
                });
                loop {
                    let Ok((sock, _)) = listener.accept().await else { continue };
                    let st = Arc::clone(&state);
                    tokio::spawn(async move {
                        let _ = st.handle(sock).await;
                    });
                }
            });
        });
        let addr: SocketAddr = rx.recv().unwrap();
        Self { url: format!("http://{addr}"), plan, seen }
    }

    /// A copy of what was seen.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

struct State {
    plan: Arc<Mutex<Plan>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    upstream: String,
    started: Instant,
    /// Forward times in the last second (the rate limit).
    window: Mutex<Vec<Instant>>,
}

enum Action {
    Answer(u16, Vec<(&'static str, String)>, String),
    Slow(Duration),
    Drop,
    Forward,
}

impl State {
    async fn handle(&self, mut sock: TcpStream) -> std::io::Result<()> {
        let Some((head, body)) = read_request(&mut sock).await? else { return Ok(()) };
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let auth = head.lines().find(|l| l.to_ascii_lowercase().starts_with("authorization:")).map(str::to_string);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let inputs: Vec<String> = match json.get("input").or_else(|| json.get("inputs")) {
            Some(serde_json::Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let action = {
            let mut plan = self.plan.lock().unwrap();
            if plan.poison.as_ref().is_some_and(|p| inputs.iter().any(|i| i.contains(p.as_str()))) {
                Action::Answer(400, vec![], r#"{"error":{"message":"input rejected by the content filter"}}"#.into())
            } else if plan.max_inputs.is_some_and(|m| inputs.len() > m) {
                Action::Answer(413, vec![], r#"{"error":"batch too large"}"#.into())
            } else if !plan.script.is_empty() {
                match plan.script.remove(0) {
                    Fault::Unavailable => Action::Answer(503, vec![], "upstream overloaded".into()),
                    Fault::Throttle(h) => {
                        Action::Answer(429, h, r#"{"error":{"message":"rate limit reached"}}"#.into())
                    }
                    Fault::Slow(d) => Action::Slow(d),
                    Fault::Drop => Action::Drop,
                }
            } else if let Some(rate) = plan.rate_per_s {
                let mut w = self.window.lock().unwrap();
                let now = Instant::now();
                w.retain(|t| now.duration_since(*t) < Duration::from_secs(1));
                if w.len() >= rate {
                    let ms = plan.rate_retry_after_ms;
                    Action::Answer(
                        429,
                        vec![("retry-after-ms", ms.to_string())],
                        r#"{"error":{"message":"rate limit"}}"#.into(),
                    )
                } else {
                    w.push(now);
                    Action::Forward
                }
            } else {
                Action::Forward
            }
        };
        let record = |status: u16| {
            self.seen.lock().unwrap().push(Seen { at: self.started.elapsed(), inputs: inputs.len(), status });
        };
        match action {
            Action::Answer(status, headers, text) => {
                record(status);
                respond(&mut sock, status, &headers, text.as_bytes()).await
            }
            Action::Drop => {
                record(0);
                Ok(())
            }
            Action::Slow(d) => {
                record(0);
                tokio::time::sleep(d).await;
                respond(&mut sock, 503, &[], b"too late").await
            }
            Action::Forward => {
                let client = reqwest::Client::new();
                let mut req = client
                    .post(format!("{}{path}", self.upstream))
                    .header("content-type", "application/json")
                    .body(body);
                if let Some(a) = auth {
                    if let Some((_, v)) = a.split_once(':') {
                        req = req.header("authorization", v.trim());
                    }
                }
                match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let bytes = resp.bytes().await.unwrap_or_default();
                        record(status);
                        respond(&mut sock, status, &[], &bytes).await
                    }
                    Err(_) => {
                        record(502);
                        respond(&mut sock, 502, &[], b"bad gateway").await
                    }
                }
            }
        }
    }
}

async fn read_request(sock: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, buf[head_end..].to_vec())))
}

async fn respond(
    sock: &mut TcpStream,
    status: u16,
    headers: &[(&'static str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    sock.write_all(out.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.shutdown().await
}
