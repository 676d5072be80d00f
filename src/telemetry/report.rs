//! `freshet status`: fetch a running process's `/status` and render it as one screen.
//! Renders from JSON (not the server's types) so a newer or older server still shows.

use std::fmt::Write as _;

use serde_json::Value;

/// Fetch `<url>/status` (with the bearer token, if any).
pub async fn fetch(url: &str, token: Option<&str>) -> Result<Value, String> {
    let endpoint = format!("{}/status", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut req = client.get(&endpoint);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("cannot reach {endpoint}: {e}"))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(format!("{endpoint}: 401 unauthorized (pass --token or set FRESHET_HTTP_TOKEN)"));
    }
    if !status.is_success() {
        return Err(format!("{endpoint}: HTTP {status}"));
    }
    resp.json().await.map_err(|e| format!("{endpoint}: not a status document: {e}"))
}

/// Seconds as a person reads them: `3 ms`, `1.24 s`, `1m 15s`, `2h 5m`.
pub fn seconds(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if !s.is_finite() => "∞".into(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) if s < 60.0 => format!("{s:.2} s"),
        Some(s) if s < 3600.0 => format!("{}m {:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
        Some(s) => format!("{}h {:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64),
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The status as one screen of text.
pub fn render(s: &Value) -> String {
    let mut o = String::new();
    let g = |path: &str| -> &Value { s.pointer(path).unwrap_or(&Value::Null) };
    let _ = writeln!(
        o,
        "freshet {}  model {}  up {}",
        g("/version").as_str().unwrap_or("?"),
        g("/model_id").as_str().unwrap_or("?"),
        seconds(num(g("/uptime_s")))
    );
    let pending = g("/pending").as_bool().unwrap_or(false);
    let _ = writeln!(
        o,
        "lag          {}{}",
        seconds(num(g("/lag_s"))),
        if pending { "  (work pending)" } else { "  (caught up)" }
    );
    for (name, path) in [("commit→searchable", "/commit_to_searchable"), ("ingest→searchable", "/ingest_to_searchable")]
    {
        let _ = writeln!(
            o,
            "{name:<18} p50 {}  p95 {}  p99 {}  ({} changes, last {} s)",
            seconds(num(g(&format!("{path}/p50_s")))),
            seconds(num(g(&format!("{path}/p95_s")))),
            seconds(num(g(&format!("{path}/p99_s")))),
            g(&format!("{path}/count")).as_u64().unwrap_or(0),
            g(&format!("{path}/window_s")).as_u64().unwrap_or(0),
        );
    }
    let _ = writeln!(
        o,
        "rates        {:.1} events/s  {:.1} applied/s  {:.1} chunks embedded/s  (last {} s)",
        num(g("/rates/events_per_s")).unwrap_or(0.0),
        num(g("/rates/applied_per_s")).unwrap_or(0.0),
        num(g("/rates/embedded_per_s")).unwrap_or(0.0),
        g("/rates/window_s").as_u64().unwrap_or(0)
    );
    let _ = writeln!(o, "backlog      {} records", g("/backlog/records").as_i64().unwrap_or(0));
    if let Some(parts) = g("/backlog/partitions").as_array() {
        for p in parts {
            let _ = writeln!(
                o,
                "  {}/{:<4} {:>10} records  {}",
                p["topic"].as_str().unwrap_or("?"),
                p["partition"].as_i64().unwrap_or(-1),
                p["records"].as_i64().unwrap_or(0),
                match num(&p["seconds"]) {
                    Some(sec) => format!("~{} to read", seconds(Some(sec))),
                    None if p["records"].as_i64().unwrap_or(0) > 0 => "stalled".into(),
                    None => String::new(),
                }
            );
        }
    }
    let now = g("/now_ms").as_u64().unwrap_or(0);
    if let Some(f) = g("/frontiers_ms").as_object() {
        let stages: Vec<String> = ["source", "decode", "state", "embed", "sink"]
            .iter()
            .map(|st| {
                let behind = f.get(*st).and_then(Value::as_u64).map(|ms| now.saturating_sub(ms) as f64 / 1000.0);
                format!("{st} {}", seconds(behind))
            })
            .collect();
        let _ = writeln!(o, "frontiers    behind now: {}", stages.join("  "));
    }
    let ratio = num(g("/embed/cache_hit_ratio"));
    let _ = writeln!(
        o,
        "embedding    queue {}  batches {}  chunks {}  cache hit ratio {}",
        g("/embed/queue_depth").as_i64().unwrap_or(0),
        g("/embed/batches").as_u64().unwrap_or(0),
        g("/embed/chunks_embedded").as_u64().unwrap_or(0),
        ratio.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
    );
    let t = g("/totals");
    let _ = writeln!(
        o,
        "totals       received {}  applied {}  superseded {}  no-op {}  dead-lettered {}",
        t["received"].as_u64().unwrap_or(0),
        t["applied"].as_u64().unwrap_or(0),
        t["superseded"].as_u64().unwrap_or(0),
        t["noop"].as_u64().unwrap_or(0),
        t["dead_lettered"].as_u64().unwrap_or(0),
    );
    let _ = writeln!(o, "dead letters {} in the file", g("/dead_letters").as_u64().unwrap_or(0));
    match g("/last_errors").as_array() {
        Some(errs) if !errs.is_empty() => {
            let _ = writeln!(o, "last errors");
            for e in errs.iter().take(5) {
                let ago = now.saturating_sub(e["at_ms"].as_u64().unwrap_or(now)) as f64 / 1000.0;
                let msg: String = e["message"].as_str().unwrap_or("").chars().take(160).collect();
                let _ = writeln!(o, "  {} ago  {:<11} {msg}", seconds(Some(ago)), e["kind"].as_str().unwrap_or("?"));
            }
        }
        _ => {
            let _ = writeln!(o, "last errors  none");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section() {
        let s = serde_json::json!({
            "version": "0.1.0", "model_id": "m", "uptime_s": 75.0, "now_ms": 10_000u64,
            "lag_s": 0.0, "pending": false,
            "frontiers_ms": {"source": 9_900u64, "decode": 9_900u64, "state": 9_800u64, "embed": 9_000u64, "sink": 9_000u64},
            "backlog": {"records": 12, "partitions": [{"topic": "t", "partition": 0, "records": 12, "seconds": 0.5}]},
            "rates": {"window_s": 60, "events_per_s": 10.0, "applied_per_s": 9.0, "embedded_per_s": 30.0},
            "commit_to_searchable": {"window_s": 300, "count": 5, "p50_s": 0.4, "p95_s": 1.2, "p99_s": 61.0},
            "ingest_to_searchable": {"window_s": 300, "count": 5, "p50_s": null, "p95_s": null, "p99_s": null},
            "embed": {"queue_depth": 3, "cache_hit_ratio": 0.5, "batches": 2, "chunks_embedded": 30},
            "dead_letters": 4,
            "totals": {"received": 10, "applied": 9, "superseded": 0, "noop": 1, "dead_lettered": 0},
            "last_errors": [{"at_ms": 8_000u64, "kind": "sink", "message": "write failed"}]
        });
        let r = render(&s);
        for want in [
            "lag          0 ms  (caught up)",
            "p50 400 ms  p95 1.20 s  p99 1m 01s  (5 changes, last 300 s)",
            "t/0            12 records  ~500 ms to read",
            "sink 1.00 s",
            "cache hit ratio 50.0%",
            "dead letters 4 in the file",
            "2.00 s ago  sink        write failed",
        ] {
            assert!(r.contains(want), "missing {want:?} in\n{r}");
        }
    }
}
