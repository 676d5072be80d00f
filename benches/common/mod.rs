//! Helpers shared by the benchmarks (each bench includes this module and uses part of it).
#![allow(dead_code)]

pub mod kafka;

use std::path::{Path, PathBuf};

/// The value of `--name N` on the command line, or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The repository.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The freshet binary of this build (the bench binary lives in target/<profile>/deps).
pub fn freshet_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target dir").join("freshet")
}

/// `dataflows/articles.toml` reading Kafka `topic` instead of its file.
pub fn articles_on_kafka(topic: &str) -> String {
    let text = std::fs::read_to_string(repo().join("dataflows/articles.toml")).expect("dataflows/articles.toml");
    let text = text
        .replace("kind = \"file\"                        # Kafka topics come with the Kafka source", "kind = \"kafka\"")
        .replace(
            "path = \"data/articles.events.jsonl\"  # overridden by `freshet run --input`",
            &format!("topics = [\"{topic}\"]"),
        );
    assert!(text.contains("kind = \"kafka\""), "dataflows/articles.toml changed: update benches/common");
    text
}
