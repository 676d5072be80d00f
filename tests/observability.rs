//! What freshet tells operators about freshness, checked on running pipelines:
//! - the frontier lag reads 0 within 2 s of going idle, grows by the wall-clock time the
//!   sink is blocked (the Qdrant emulator frozen with SIGSTOP), and returns to 0 after;
//! - the commit→searchable histogram counts every applied change once, with values that
//!   agree with the commit times in the input;
//! - the endpoints want the bearer token when one is set, and `freshet status` renders;
//! - the dashboard loads in headless Chromium with data in every chart (screenshot saved);
//! - the Prometheus rules and config pass `promtool`, and every metric they (and the
//!   Grafana dashboard) use exists.
//!
//! Chromium and promtool come from `scripts/setup-test-tools` (called by `scripts/test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::qdrant::{qdrant_config, with_qdrant_sink, Emulator};
use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Append `events` to `path` with their source commit time set `age_ms` before now.
fn append_committed(path: &Path, events: &[Ev], age_ms: u64) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    for e in events {
        let mut v: Value = serde_json::from_str(&e.to_json()).unwrap();
        let commit = now_ms() - age_ms;
        if v.is_object() {
            v["source"]["ts_ms"] = commit.into();
            v["ts_ms"] = (commit + 1).into();
        }
        writeln!(f, "{v}").unwrap();
    }
}

fn applied(m: &str) -> f64 {
    ["content", "metadata", "delete"]
        .iter()
        .map(|o| metric(m, &format!("freshet_events_total{{outcome=\"{o}\"}}")).unwrap_or(0.0))
        .sum()
}

/// Poll `/metrics` until every received record is acknowledged (`received` of them).
/// Returns the metrics text and when that was first seen.
fn wait_acknowledged(port: u16, received: usize, within: Duration) -> (String, Instant) {
    let start = Instant::now();
    loop {
        let m = get_metrics(port).unwrap_or_default();
        let got = metric(&m, "freshet_events_received_total").unwrap_or(0.0) as usize;
        let acked = metric_sum(&m, "freshet_events_total{") as usize;
        if got == received && acked == received {
            return (m, Instant::now());
        }
        assert!(start.elapsed() < within, "not acknowledged: received {got} of {received}, acknowledged {acked}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lag(port: u16) -> f64 {
    metric(&get_metrics(port).unwrap_or_default(), "freshet_frontier_lag_seconds").expect("lag gauge")
}

/// Wait until the lag reads 0; returns how long that took.
fn wait_lag_zero(port: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let l = lag(port);
        if l == 0.0 {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "lag still {l} after {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `freshet run` that is killed if the test fails before stopping it.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stop(mut running: Running) {
    let child = running.0.take().unwrap();
    let ok = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "freshet did not stop cleanly: {:?}", out.status);
}

#[test]
fn lag_is_zero_when_idle_and_grows_by_the_time_the_sink_is_blocked() {
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(606, 60, 1200, false);
    let (first, second) = history.split_at(600);
    write_events(&input, first);
    let dataflow = with_qdrant_sink(&test_dataflow(dir.path(), &input));
    let port = free_port();
    let config = qdrant_config(dir.path(), 2, &emulator.url(), &format!("metrics_addr = \"127.0.0.1:{port}\""));
    let child = Running(Some(spawn_run(&dataflow, &config, true)));

    // Idle: lag reads 0 within 2 s of the last change being acknowledged.
    let _ = wait_acknowledged(port, first.len(), Duration::from_secs(60));
    let to_zero = wait_lag_zero(port, Duration::from_secs(10));
    eprintln!("lag read 0 {to_zero:?} after the last change was acknowledged");
    assert!(to_zero <= Duration::from_secs(2), "lag took {to_zero:?} to read 0 once idle");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lag(port), 0.0, "idle lag stays 0");

    // Blocked: the sink is frozen while changes arrive; the lag grows with the wall clock.
    emulator.pause();
    let blocked_at = Instant::now();
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    for ev in second {
        writeln!(f, "{}", ev.to_json()).unwrap();
    }
    drop(f);
    std::thread::sleep(Duration::from_secs(2));
    let mut samples = Vec::new();
    for _ in 0..7 {
        samples.push((blocked_at.elapsed().as_secs_f64(), lag(port)));
        std::thread::sleep(Duration::from_secs(1));
    }
    emulator.resume();
    for w in samples.windows(2) {
        let ((t0, l0), (t1, l1)) = (w[0], w[1]);
        let (dl, dt) = (l1 - l0, t1 - t0);
        assert!((dl - dt).abs() < 0.5, "lag grows by the wall-clock time blocked: {samples:?}");
    }
    let (t_last, l_last) = *samples.last().unwrap();
    assert!(l_last >= t_last - 2.5 && l_last <= t_last + 1.0, "lag {l_last} after {t_last} s blocked: {samples:?}");

    // Unblocked: everything lands and the lag returns to 0.
    let _ = wait_acknowledged(port, history.len(), Duration::from_secs(90));
    let to_zero = wait_lag_zero(port, Duration::from_secs(10));
    assert!(to_zero <= Duration::from_secs(2), "lag took {to_zero:?} to read 0 after unblocking");
    stop(child);
    let spec = freshet::config::DataflowSpec::load(&dataflow).unwrap();
    assert_export_matches(&export(&dataflow, &config, true), &oracle(&spec, &history, "freshet/hash-16", 16).export);
}

#[test]
fn commit_to_searchable_counts_every_applied_change_with_the_input_commit_times() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(31, 30, 400, true);
    let (first, second) = history.split_at(200);
    // The first half was committed two minutes ago, the second five seconds ago.
    append_committed(&input, first, 120_000);
    let dataflow = test_dataflow(dir.path(), &input);
    let port = free_port();
    let config = dir.path().join("observe.toml");
    std::fs::write(
        &config,
        format!(
            "workers = 2\ndata_dir = \"{}\"\nmetrics_addr = \"127.0.0.1:{port}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Running(Some(spawn_run(&dataflow, &config, true)));
    let (m1, _) = wait_acknowledged(port, first.len(), Duration::from_secs(60));
    let applied_first = applied(&m1);
    assert!(applied_first > 50.0, "the first half applies changes ({applied_first})");
    append_committed(&input, second, 5_000);
    let (m, _) = wait_acknowledged(port, history.len(), Duration::from_secs(60));
    let elapsed = started.elapsed().as_secs_f64() + 1.0;

    let total = applied(&m);
    let applied_second = total - applied_first;
    let count = metric(&m, "freshet_commit_to_searchable_seconds_count").unwrap();
    assert_eq!(count, total, "one observation per applied change");
    assert_eq!(metric(&m, "freshet_ingest_to_searchable_seconds_count").unwrap(), total);
    assert_eq!(metric(&m, "freshet_changes_without_commit_time_total").unwrap_or(0.0), 0.0);
    let bucket = |le: &str| metric(&m, &format!("freshet_commit_to_searchable_seconds_bucket{{le=\"{le}\"}}")).unwrap();
    assert_eq!(bucket("5.0"), 0.0, "nothing was committed less than 5 s before it became searchable");
    assert_eq!(bucket("60.0"), applied_second, "the second half (5 s old) lands under a minute");
    assert_eq!(bucket("120.0"), applied_second, "the first half (2 min old) lands above two minutes");
    let sum = metric(&m, "freshet_commit_to_searchable_seconds_sum").unwrap();
    let low = applied_first * 120.0 + applied_second * 5.0;
    let high = applied_first * (120.0 + elapsed) + applied_second * (5.0 + elapsed);
    assert!(sum >= low && sum <= high, "sum {sum} outside [{low}, {high}]");

    // /status agrees: the percentiles over the last 5 minutes cover the same changes.
    let (code, body) = http_get(port, "/status", None).unwrap();
    assert_eq!(code, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["ready"], true, "the start is over: {s}");
    assert_eq!(s["commit_to_searchable"]["count"].as_f64().unwrap(), total);
    let p99 = s["commit_to_searchable"]["p99_s"].as_f64().unwrap();
    let p50 = s["commit_to_searchable"]["p50_s"].as_f64().unwrap();
    assert!(p99 >= 120.0 && p99 <= (120.0 + elapsed) * 1.05, "p99 {p99}");
    // Sorted ascending, the second half's (younger) changes come first.
    let median_rank = (total / 2.0).ceil();
    if applied_second < median_rank {
        assert!(p50 >= 120.0, "p50 {p50}");
    } else {
        assert!(p50 >= 5.0 && p50 <= (5.0 + elapsed) * 1.05, "p50 {p50}");
    }
    stop(child);
}

/// A pipeline serving HTTP with a token and fed a change every 100 ms for `feed` from a
/// background thread.
struct Served {
    child: Option<std::process::Child>,
    port: u16,
    _dir: tempfile::TempDir,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(token: &str, events: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("events.jsonl");
        let history = random_history(77, 40, events, false);
        append_committed(&input, &history[..events / 4], 2_000);
        let dataflow = test_dataflow(dir.path(), &input);
        let port = free_port();
        let config = dir.path().join("served.toml");
        std::fs::write(
            &config,
            format!(
                "workers = 2\ndata_dir = \"{}\"\nmetrics_addr = \"127.0.0.1:{port}\"\nhttp_token = \"{token}\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = spawn_run(&dataflow, &config, true);
        let rest = history[events / 4..].to_vec();
        let feeder = std::thread::spawn(move || {
            for chunk in rest.chunks(5) {
                append_committed(&input, chunk, 1_000);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { child: Some(child), port, _dir: dir, feeder: Some(feeder) }
    }

    fn stop(mut self) {
        if let Some(f) = self.feeder.take() {
            f.join().unwrap();
        }
        stop(Running(self.child.take()));
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn endpoints_want_the_token_and_freshet_status_renders() {
    let served = Served::start("s3cret-token", 200);
    let port = served.port;
    let start = Instant::now();
    while http_get(port, "/status", Some("s3cret-token")).is_none_or(|(c, _)| c != 200) {
        assert!(start.elapsed() < Duration::from_secs(30), "endpoint never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // `/ready` answers 503 while the start opens the collection and rebuilds the state, then 200.
    while http_get(port, "/ready", Some("s3cret-token")).is_none_or(|(c, _)| c != 200) {
        let (code, body) = http_get(port, "/ready", Some("s3cret-token")).unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(start.elapsed() < Duration::from_secs(30), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    for path in ["/", "/metrics", "/status", "/ready", "/api/series"] {
        assert_eq!(http_get(port, path, None).unwrap().0, 401, "{path} without a token");
        assert_eq!(http_get(port, path, Some("wrong-token!")).unwrap().0, 401, "{path} with a wrong token");
        assert_eq!(http_get(port, path, Some("s3cret-token")).unwrap().0, 200, "{path} with the token");
    }
    assert_eq!(http_get(port, "/status?token=s3cret-token", None).unwrap().0, 200, "?token= for the page");
    let (_, page) = http_get(port, "/", Some("s3cret-token")).unwrap();
    assert!(
        page.contains("chart-lag") && !page.contains("http://") && !page.contains("https://"),
        "self-contained page"
    );

    let url = format!("http://127.0.0.1:{port}");
    let out = freshet().args(["status", "--url", &url, "--token", "s3cret-token"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "freshet status failed: {}", String::from_utf8_lossy(&out.stderr));
    for want in ["lag ", "commit→searchable", "rates ", "backlog ", "last errors"] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // The history has title edits under an unchanged-TOAST body, dead-lettered by design:
    // how many are in the file by now depends on how far the pipeline got.
    assert!(
        text.lines().any(|l| l.starts_with("dead letters ") && l.trim_end().ends_with(" in the file")),
        "no dead-letter line in\n{text}"
    );
    let out = freshet().args(["status", "--url", &url]).env_remove("FRESHET_HTTP_TOKEN").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        freshet().args(["status", "--json", "--url", &url]).env("FRESHET_HTTP_TOKEN", "s3cret-token").output().unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["lag_s"].is_number() && s["totals"]["received"].as_u64().unwrap() > 0, "{s}");
    served.stop();
}

fn chromium() -> PathBuf {
    let bin = std::env::var_os("FRESHET_CHROMIUM").map_or_else(|| PathBuf::from("chromium"), PathBuf::from);
    let ok = std::process::Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "{} not found: run scripts/setup-test-tools (or set FRESHET_CHROMIUM)", bin.display());
    bin
}

fn chromium_run(url: &str, extra: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    std::process::Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--window-size=1440,1000", "--virtual-time-budget=4000", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap()
}

#[test]
fn the_dashboard_shows_live_charts_in_headless_chromium() {
    let served = Served::start("dash-token", 400);
    let port = served.port;
    // Let a few seconds of samples with changes in them accumulate.
    let start = Instant::now();
    loop {
        let (code, body) = http_get(port, "/api/series", Some("dash-token")).unwrap_or((0, String::new()));
        let series: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let samples = series["samples"].as_array().cloned().unwrap_or_default();
        let with_latency = samples.iter().filter(|s| s["p95_s"].is_number()).count();
        if code == 200 && samples.len() >= 5 && with_latency >= 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "series never filled: {body}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let url = format!("http://127.0.0.1:{port}/?token=dash-token");
    let out = chromium_run(&url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("chart-lag"),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for chart in ["chart-lag", "chart-latency", "chart-rates", "chart-backlog", "chart-stages"] {
        let tag = dom.split(&format!("id=\"{chart}\"")).nth(1).and_then(|r| r.split('>').next()).unwrap_or_default();
        let points: u64 = tag
            .split("data-points=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(points > 0, "{chart} has no data: <canvas id=\"{chart}\"{tag}>");
    }
    let samples: u64 =
        dom.split("data-samples=\"").nth(1).and_then(|r| r.split('"').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(samples >= 5, "the page holds {samples} samples");
    let updated: u64 =
        dom.split("data-updated=\"").nth(1).and_then(|r| r.split('"').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(updated > 0, "the page's requests succeeded with the token from its URL");

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium_run(&url, &[&format!("--screenshot={}", shot.display())]);
    assert!(out.status.success(), "screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "screenshot of {} bytes", png.len());
    eprintln!("dashboard screenshot: {}", shot.display());
    served.stop();
}

fn promtool() -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/promtool");
    let bin = if local.exists() { local } else { PathBuf::from("promtool") };
    let ok = std::process::Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "promtool not found: run scripts/setup-test-tools");
    bin
}

#[test]
fn prometheus_rules_and_grafana_dashboard_check_and_use_real_metrics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/observability");
    for args in [["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]] {
        let out = std::process::Command::new(promtool()).args(args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    for alert in [
        "FreshetCommitToSearchableSLO",
        "FreshetDeadLettersGrowing",
        "FreshetEmbedderErrors",
        "FreshetLagNotReturningToZero",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "alerts.yml lacks {alert}");
    }
    // Every metric the rules and the Grafana dashboard query is one freshet exports.
    // (The per-partition backlog exists once a Kafka source has partitions.)
    let metrics = freshet::telemetry::metrics::Metrics::new();
    let partition = freshet::telemetry::metrics::PartitionLabel { topic: "t".into(), partition: 0 };
    metrics.backlog_records.get_or_create(&partition).set(0);
    metrics.backlog_seconds.get_or_create(&partition).set(0.0);
    // (Stage frontiers exist once the dataflow runs.)
    metrics.stage_frontier.get_or_create(&freshet::telemetry::metrics::StageLabel { stage: "sink" }).set(1.0);
    let exported = metrics.encode();
    let grafana_text = std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap();
    let grafana: Value = serde_json::from_str(&grafana_text).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for text in [&rules, &grafana_text] {
        for part in text.split("freshet_").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            used.insert(name);
        }
    }
    for name in &used {
        let base =
            ["_bucket", "_count", "_sum", "_total"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(exported.contains(&format!("# TYPE freshet_{base} ")), "freshet_{name} is queried but not exported");
    }
    assert!(used.len() >= 8, "{used:?}");
    // The Grafana dashboard has the live page's charts.
    let titles: Vec<&str> = grafana["panels"].as_array().unwrap().iter().filter_map(|p| p["title"].as_str()).collect();
    let page = include_str!("../src/telemetry/dashboard.html");
    for title in [
        "Frontier lag",
        "Commit → searchable (p50/p95/p99)",
        "Event and embedding rates",
        "Broker backlog per partition",
        "Stage frontiers (seconds behind now)",
    ] {
        assert!(titles.contains(&title), "grafana lacks the panel {title:?}: {titles:?}");
        let on_page = title.replace("p50/p95/p99", "p50 / p95 / p99");
        assert!(page.contains(&format!("<h2>{on_page}")), "the page lacks the chart {on_page:?}");
    }
}

#[test]
fn json_logs_carry_one_span_per_embedding_batch_and_sink_write() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let history = random_history(12, 20, 150, false);
    write_events(&input, &history);
    let dataflow = test_dataflow(dir.path(), &input);
    let config = test_config(dir.path(), 2);
    let out = freshet()
        .args(["--log-json", "run", "--until-end", "--dataflow"])
        .arg(&dataflow)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info,freshet=debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let spans: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "close")
        .map(|v| v["span"].clone())
        .collect();
    let named = |n: &str| spans.iter().filter(|s| s["name"] == n).cloned().collect::<Vec<_>>();
    let (embeds, writes) = (named("embed_batch"), named("sink_batch"));
    let texts: u64 = embeds.iter().map(|s| s["texts"].as_u64().unwrap()).sum();
    assert_eq!(texts, summary["chunks_embedded"].as_u64().unwrap(), "every embedded chunk is in one batch span");
    let points: u64 = writes.iter().map(|s| s["points"].as_u64().unwrap()).sum();
    let written = ["points_upserted", "points_payload_updated", "points_deleted"]
        .iter()
        .map(|k| summary[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(points, written, "every written point is in one sink span");
    for s in embeds.iter().chain(&writes) {
        let (from, to) = (s["time_from"].as_u64().unwrap(), s["time_to"].as_u64().unwrap());
        assert!(from > 1_600_000_000_000 && from <= to, "time range of {s}");
    }
}

/// Kafka: the per-partition backlog is the records behind each high watermark. With the
/// sink frozen the source stops reading (backpressure), so the backlog is exactly what was
/// produced and not read, its time estimate is infinite (nothing is being read), and after
/// the sink comes back it drains to 0.
#[test]
fn kafka_backlog_per_partition_is_what_is_behind_the_high_watermark() {
    use support::kafka::{create_topic, kafka_config, kafka_dataflow, produce, Broker};
    let broker = Broker::start();
    let emulator = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = &broker.topic("articles");
    create_topic(&broker.bootstrap, topic, 2);
    let history = random_history(404, 40, 600, false);
    let (first, second) = history.split_at(100);
    let dataflow = with_qdrant_sink(&kafka_dataflow(dir.path(), topic, None));
    let port = free_port();
    let extra = format!(
        "metrics_addr = \"127.0.0.1:{port}\"\nmax_records_per_pass = 20\nmax_passes_in_flight = 1\n\
         [qdrant]\nurl = \"{}\"\ntimeout_ms = 5000\nconnect_timeout_ms = 1000\nmax_backoff_ms = 1000\n",
        emulator.url()
    );
    let config = kafka_config(dir.path(), "backlog", 2, &broker.bootstrap, &broker.group("freshet-backlog"), &extra);
    let child = Running(Some(spawn_run(&dataflow, &config, true)));
    produce(&broker.bootstrap, topic, 2, first);
    let _ = wait_acknowledged(port, first.len(), Duration::from_secs(60));
    wait_lag_zero(port, Duration::from_secs(10));

    emulator.pause();
    produce(&broker.bootstrap, topic, 2, second);
    let start = Instant::now();
    let (m, backlog) = loop {
        let m = get_metrics(port).unwrap_or_default();
        let received = metric(&m, "freshet_events_received_total").unwrap_or(0.0);
        let backlog = metric_sum(&m, "freshet_kafka_backlog_records{");
        if backlog > 0.0 && backlog == history.len() as f64 - received {
            break (m, backlog);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "backlog {backlog}, received {received} of {}",
            history.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(backlog >= (second.len() / 2) as f64, "most of the second batch waits: {backlog}");
    for p in 0..2 {
        let line = format!("freshet_kafka_backlog_records{{topic=\"{topic}\",partition=\"{p}\"}}");
        assert!(m.contains(&line), "a gauge per partition: {line}");
    }
    // Nothing is being read: there is no estimate of the time to read the backlog.
    std::thread::sleep(Duration::from_secs(11));
    let m = get_metrics(port).unwrap_or_default();
    for l in m.lines().filter(|l| l.starts_with("freshet_kafka_backlog_records{") && !l.ends_with(" 0")) {
        let labels = l.split_whitespace().next().unwrap().trim_start_matches("freshet_kafka_backlog_records");
        assert!(!m.contains(&format!("freshet_kafka_backlog_seconds{labels}")), "an estimate while stalled:\n{m}");
    }
    let (_, body) = http_get(port, "/status", None).unwrap();
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["backlog"]["records"].as_f64().unwrap(), backlog, "{s}");
    let parts = s["backlog"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{s}");
    assert!(parts.iter().all(|p| p["records"] == 0 || p["seconds"].is_null()), "{s}");

    emulator.resume();
    let _ = wait_acknowledged(port, history.len(), Duration::from_secs(90));
    let start = Instant::now();
    while metric_sum(&get_metrics(port).unwrap_or_default(), "freshet_kafka_backlog_records{") != 0.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the backlog drains to 0");
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = get_metrics(port).unwrap_or_default();
    assert!(metric_sum(&m, "freshet_kafka_backlog_seconds{") == 0.0, "caught up: nothing to read\n{m}");
    stop(child);
    let spec = freshet::config::DataflowSpec::load(&dataflow).unwrap();
    assert_export_matches(&export(&dataflow, &config, true), &oracle(&spec, &history, "freshet/hash-16", 16).export);
}
