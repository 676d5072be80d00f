//! Fault injection on librdkafka's mock cluster (`rdkafka::mocking::MockCluster`, real
//! TCP brokers inside the test process): the broker goes down and comes back, fetches,
//! offset commits and produces fail for a while. freshet (a separate process) must lose
//! nothing, write no duplicate point, commit everything in the end, and report a lag of 0
//! again once caught up. Also: secrets from the environment never reach the logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::kafka::*;
use support::*;

#[test]
fn broker_outage_and_request_errors_lose_nothing_and_lag_returns_to_zero() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let topic = "articles";
    mock.create_topic(topic, 4, 1).expect("topic");
    let dir = tempfile::tempdir().unwrap();
    let history = random_history(77, 80, 4000, false);
    let (first, second) = history.split_at(2000);
    produce_batched(&bootstrap, topic, 4, first, 500);

    let dataflow = kafka_dataflow(dir.path(), topic, None);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = kafka_config(
        dir.path(),
        "faults",
        2,
        &bootstrap,
        "freshet-faults",
        &format!("metrics_addr = \"127.0.0.1:{port}\""),
    );
    let child = spawn_run(&dataflow, &config, true);

    std::thread::sleep(Duration::from_millis(800));
    // The broker goes away for 4 s in the middle of the run.
    mock.broker_down(1).expect("down");
    std::thread::sleep(Duration::from_secs(4));
    mock.broker_up(1).expect("up");
    // Then fetches, commits and produces fail for a while.
    mock.request_errors(RDKafkaApiKey::Fetch, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 4]);
    // Not retried inside librdkafka: the commit callback reports them, freshet commits again.
    mock.request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 6]);
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3]);
    produce_batched(&bootstrap, topic, 4, second, 500);

    // Caught up: every offset committed and the lag back at 0.
    let start = Instant::now();
    let hw = high_watermarks(&bootstrap, topic, 4);
    let mut failed_commits = 0.0;
    loop {
        let committed = committed(&bootstrap, "freshet-faults", topic, 4);
        let m = get_metrics(port).unwrap_or_default();
        let lag = metric(&m, "freshet_frontier_lag_seconds");
        failed_commits = metric(&m, "freshet_offset_commits_total{result=\"failed\"}").unwrap_or(failed_commits);
        if committed == hw && lag.is_some_and(|l| l < 1.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "not caught up: committed {committed:?} of {hw:?}, lag {lag:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(failed_commits >= 1.0, "the injected commit errors are counted, not fatal");
    let status = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "freshet did not stop cleanly");
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().expect("summary")).unwrap();
    assert_eq!(summary["received"].as_u64().unwrap() as usize, history.len(), "{summary}");

    // The oracle reads the topic: a produce retried after an injected error may land after
    // records sent later (each document's events still come in the order the topic holds).
    let in_topic = read_back(&bootstrap, topic, &history);
    assert_eq!(in_topic.len(), history.len(), "every event is in the topic once");
    let per_doc = |evs: &[Ev]| {
        let mut m: std::collections::BTreeMap<Option<u64>, Vec<String>> = Default::default();
        for e in evs {
            m.entry(doc_of(e)).or_default().push(format!("{e:?}"));
        }
        m
    };
    if per_doc(&in_topic) != per_doc(&history) {
        eprintln!("note: the topic holds some document's events in another order than they were sent");
    }
    let spec = freshet::config::DataflowSpec::load(&dataflow).unwrap();
    let expected = oracle(&spec, &in_topic, "freshet/hash-16", 16);
    assert_export_matches(&export(&dataflow, &config, true), &expected.export);
}

#[test]
fn secrets_come_from_the_environment_and_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let dataflow = kafka_dataflow(dir.path(), "articles", None);
    let secret = "hunter2-very-secret-value";
    // An unreachable broker with SASL/PLAIN: the client logs connection failures and the
    // planning request fails; neither may show the password.
    let config = dir.path().join("secret.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\ngroup_id = \"g\"\nrequest_timeout_ms = 1500\n\
             [kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"PLAIN\"\n\"sasl.username\" = \"freshet\"\n\
             \"debug\" = \"security,broker\"\n[kafka.secret_properties]\n\"sasl.password\" = \"TEST_KAFKA_PASSWORD\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let run = |with_env: bool| {
        let mut cmd = freshet();
        cmd.args(["run", "--until-end", "--dataflow"]).arg(&dataflow).arg("--config").arg(&config);
        cmd.env("RUST_LOG", "debug");
        if with_env {
            cmd.env("TEST_KAFKA_PASSWORD", secret);
        } else {
            cmd.env_remove("TEST_KAFKA_PASSWORD");
        }
        cmd.output().unwrap()
    };
    let missing = run(false);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("TEST_KAFKA_PASSWORD"), "the missing variable is named: {err}");

    let out = run(true);
    assert!(!out.status.success(), "no broker: the run fails");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("metadata"), "the failure is reported: {all}");
    assert!(!all.contains(secret), "the secret leaked into the output");
}
