//! Test harness for the emulator's integration tests: starts the built
//! `freshet-qdrant-emulator` binary on port 0 with a data directory, reads the port from its
//! `listening on` line, hands out qdrant-client clients, and stops it (SIGKILL, SIGTERM).

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qdrant_client::qdrant::{PointId, RetrievedPoint, Value};
use qdrant_client::{Qdrant, QdrantError};

/// A running emulator process (killed when dropped).
pub struct Emulator {
    child: Child,
    /// The port it serves on.
    pub port: u16,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl Emulator {
    /// Start an emulator on `data_dir`.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[], &[])
    }

    /// Start an emulator on `data_dir` with extra arguments and environment variables. Its
    /// log goes to stderr at level `warn` (`FRESHET_EMULATOR_TEST_LOG` sets another filter).
    pub fn start_with(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_freshet-qdrant-emulator"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", std::env::var("FRESHET_EMULATOR_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("the emulator did not start in time");
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected first line from the emulator: {line:?}"))
            .parse()
            .unwrap();
        Self { child, port, data_dir: data_dir.to_path_buf() }
    }

    /// The gRPC URL of the emulator.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client (no API key).
    pub fn client(&self) -> Qdrant {
        Qdrant::from_url(&self.url()).skip_compatibility_check().build().unwrap()
    }

    /// A client sending `key` as its API key.
    pub fn client_with_key(&self, key: &str) -> Qdrant {
        Qdrant::from_url(&self.url()).skip_compatibility_check().api_key(key.to_string()).build().unwrap()
    }

    /// Kill the process with SIGKILL (no chance to flush or clean up).
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Send SIGTERM and wait for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the emulator did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gRPC status of a failed client call.
pub fn status(e: QdrantError) -> tonic::Status {
    match e {
        QdrantError::ResponseError { status } => status,
        other => panic!("expected a gRPC error status, got {other}"),
    }
}

/// A JSON object as a gRPC payload.
pub fn payload(json: serde_json::Value) -> HashMap<String, Value> {
    match json {
        serde_json::Value::Object(m) => m.into_iter().map(|(k, v)| (k, Value::from(v))).collect(),
        other => panic!("a payload must be a JSON object, not {other}"),
    }
}

/// A gRPC payload as a JSON object.
pub fn json(payload: HashMap<String, Value>) -> serde_json::Value {
    serde_json::Value::Object(payload.into_iter().map(|(k, v)| (k, v.into_json())).collect())
}

/// A point id as a comparable string (`7` or the UUID).
pub fn id_str(id: &PointId) -> String {
    use qdrant_client::qdrant::point_id::PointIdOptions;
    match id.point_id_options.as_ref().unwrap() {
        PointIdOptions::Num(n) => n.to_string(),
        PointIdOptions::Uuid(u) => u.clone(),
    }
}

/// The dense vector of a retrieved point.
pub fn dense(point: &RetrievedPoint) -> Vec<f32> {
    use qdrant_client::qdrant::vector_output::Vector;
    use qdrant_client::qdrant::vectors_output::VectorsOptions;
    match point.vectors.clone().unwrap().vectors_options.unwrap() {
        VectorsOptions::Vector(v) => match v.into_vector() {
            Vector::Dense(d) => d.data,
            other => panic!("not a dense vector: {other:?}"),
        },
        VectorsOptions::Vectors(_) => panic!("named vectors"),
    }
}

/// Every point of a collection (scrolling in pages of `page`), with payload and vectors.
pub async fn scroll_all(client: &Qdrant, collection: &str, page: u32) -> Vec<RetrievedPoint> {
    use qdrant_client::qdrant::ScrollPointsBuilder;
    let mut out = Vec::new();
    let mut offset: Option<PointId> = None;
    loop {
        let mut request = ScrollPointsBuilder::new(collection).limit(page).with_payload(true).with_vectors(true);
        if let Some(o) = offset.take() {
            request = request.offset(o);
        }
        let response = client.scroll(request).await.unwrap();
        out.extend(response.result);
        match response.next_page_offset {
            Some(next) => offset = Some(next),
            None => return out,
        }
    }
}
