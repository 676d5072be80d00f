//! Qdrant test support: freshet's Qdrant **emulator** (the `freshet-qdrant-emulator` crate:
//! Qdrant's gRPC API on the qdrant-edge engine; no Qdrant server can be installed here)
//! started out of process on a free port, stopped, killed and restarted on the same port
//! and data; and the address of a real Qdrant server when `FRESHET_TEST_QDRANT_URL` is set.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The emulator binary, built on demand (`cargo test` of the workspace builds it anyway).
pub fn emulator_binary() -> PathBuf {
    // tests run from target/<profile>/deps/
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("freshet-qdrant-emulator");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "freshet-qdrant-emulator"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build of the emulator");
        assert!(status.success(), "building freshet-qdrant-emulator failed");
    }
    bin
}

/// A running emulator.
pub struct Emulator {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Emulator {
    /// Start on a free port with a fresh data directory.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut e = Self { child: None, port: 0, data_dir: tmp.path().to_path_buf(), _tmp: Some(tmp) };
        e.spawn(0, &[]);
        e
    }

    /// Start with an API key required (read from `var`, which the caller sets).
    pub fn start_with_api_key(var: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut e = Self { child: None, port: 0, data_dir: tmp.path().to_path_buf(), _tmp: Some(tmp) };
        e.spawn(0, &["--api-key-env", var]);
        e
    }

    fn spawn(&mut self, port: u16, extra: &[&str]) {
        let mut child = Command::new(emulator_binary())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,qdrant_edge=error".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the Qdrant emulator");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("read the emulator's address");
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("emulator said {line:?}"));
        self.port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        self.child = Some(child);
    }

    /// gRPC URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freeze the process (SIGSTOP): connections stay open, requests hang unanswered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Let a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("a running emulator").id();
        let ok = Command::new("kill").arg(sig).arg(pid.to_string()).status().expect("kill").success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Start again on the same port and data (after [`Emulator::kill`]). Retries while the
    /// port is still held by the dead process's sockets.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a stopped emulator");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpListener::bind(("127.0.0.1", self.port)).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let port = self.port;
        self.spawn(port, &[]);
        assert_eq!(self.port, port);
    }
}

/// The real Qdrant server's gRPC URL, when the environment names one.
pub fn real_qdrant_url() -> Option<String> {
    std::env::var("FRESHET_TEST_QDRANT_URL").ok().filter(|u| !u.trim().is_empty())
}

/// A runtime config writing to a Qdrant server at `url` (state files under `dir/data`).
pub fn qdrant_config(dir: &Path, workers: usize, url: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("qdrant.config.{workers}.toml"));
    std::fs::write(
        &path,
        format!(
            "workers = {workers}\ndata_dir = \"{}\"\nmax_records_per_pass = 50\n{extra}\n[qdrant]\nurl = \"{url}\"\n\
             timeout_ms = 5000\nconnect_timeout_ms = 1000\nmax_backoff_ms = 1000\n",
            dir.join("data").display()
        ),
    )
    .expect("write config");
    path
}

/// Turn a test dataflow's sink into a Qdrant server sink.
pub fn with_qdrant_sink(dataflow: &Path) -> PathBuf {
    let text = std::fs::read_to_string(dataflow).expect("dataflow");
    let text = text.replace("[sink]\n", "[sink]\nkind = \"qdrant\"\n");
    std::fs::write(dataflow, text).expect("write dataflow");
    dataflow.to_path_buf()
}

/// Removes, when dropped (also when the test fails), every collection and alias of a
/// Qdrant server whose name starts with `prefix`: a test against a real server leaves
/// nothing behind.
pub struct ServerCleanup {
    pub url: String,
    pub prefix: String,
}

impl ServerCleanup {
    /// Clean up `<prefix>…` on the server at `url` when dropped.
    pub fn new(url: &str, prefix: &str) -> Self {
        Self { url: url.to_string(), prefix: prefix.to_string() }
    }

    /// Collections and aliases of the server whose names start with the prefix.
    pub fn leftovers(&self) -> Vec<String> {
        let prefix = self.prefix.clone();
        self.with_client(move |client| async move {
            let mut names = Vec::new();
            for a in client.list_aliases().await.expect("list aliases").aliases {
                if a.alias_name.starts_with(&prefix) {
                    names.push(format!("alias {}", a.alias_name));
                }
            }
            for c in client.list_collections().await.expect("list collections").collections {
                if c.name.starts_with(&prefix) {
                    names.push(format!("collection {}", c.name));
                }
            }
            names
        })
    }

    /// Delete them now.
    pub fn clean(&self) {
        let prefix = self.prefix.clone();
        self.with_client(move |client| async move {
            if let Ok(r) = client.list_aliases().await {
                for a in r.aliases.into_iter().filter(|a| a.alias_name.starts_with(&prefix)) {
                    let _ = client.delete_alias(a.alias_name).await;
                }
            }
            if let Ok(r) = client.list_collections().await {
                for c in r.collections.into_iter().filter(|c| c.name.starts_with(&prefix)) {
                    let _ = client.delete_collection(c.name).await;
                }
            }
        })
    }

    fn with_client<T, F: std::future::Future<Output = T>>(&self, f: impl FnOnce(qdrant_client::Qdrant) -> F) -> T {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
        let client = qdrant_client::Qdrant::from_url(&self.url).skip_compatibility_check().build().expect("client");
        rt.block_on(f(client))
    }
}

impl Drop for ServerCleanup {
    fn drop(&mut self) {
        self.clean();
    }
}
