//! Latencies over a sliding window of seconds, for the p50/p95/p99 that `/status` and the
//! dashboard show: one sparse log-bucketed count per second (buckets grow by 5%, so a
//! percentile is exact to within 5%), kept for 15 minutes. Memory is bounded by the number
//! of distinct buckets per second, not by the number of observations.

use std::collections::{BTreeMap, VecDeque};

/// Smallest latency told apart (below it everything counts as this).
const FLOOR_S: f64 = 0.001;
/// Ratio between neighbouring bucket bounds.
const GROWTH: f64 = 1.05;
/// Seconds kept.
pub const KEEP_S: u64 = 900;

/// The bucket whose upper bound is the first at or above `v`.
fn bucket(v: f64) -> u16 {
    if v.is_nan() || v <= FLOOR_S {
        return 0;
    }
    ((v / FLOOR_S).ln() / GROWTH.ln()).ceil().min(f64::from(u16::MAX)) as u16
}

/// Upper bound of bucket `b`.
fn bound(b: u16) -> f64 {
    FLOOR_S * GROWTH.powi(i32::from(b))
}

/// See module docs.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    seconds: VecDeque<(u64, BTreeMap<u16, u64>)>,
}

/// Percentiles of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Seconds covered.
    pub window_s: u64,
    /// Observations in the window.
    pub count: u64,
    /// Median (seconds); None without observations.
    pub p50_s: Option<f64>,
    /// 95th percentile.
    pub p95_s: Option<f64>,
    /// 99th percentile.
    pub p99_s: Option<f64>,
}

impl LatencyWindow {
    /// Count a latency of `v` seconds observed at `now_s` (unix seconds).
    pub fn observe(&mut self, now_s: u64, v: f64) {
        let b = bucket(v);
        match self.seconds.back_mut() {
            Some((s, counts)) if *s == now_s => *counts.entry(b).or_default() += 1,
            // A clock stepping back counts into the newest second rather than reorder.
            Some((s, counts)) if *s > now_s => *counts.entry(b).or_default() += 1,
            _ => {
                self.seconds.push_back((now_s, BTreeMap::from([(b, 1)])));
            }
        }
        while self.seconds.front().is_some_and(|(s, _)| s + KEEP_S < now_s) {
            self.seconds.pop_front();
        }
    }

    /// p50/p95/p99 of the observations in the last `window_s` seconds up to `now_s`.
    pub fn percentiles(&self, now_s: u64, window_s: u64) -> Percentiles {
        let mut merged: BTreeMap<u16, u64> = BTreeMap::new();
        for (s, counts) in self.seconds.iter().rev() {
            if s + window_s <= now_s {
                break;
            }
            for (b, n) in counts {
                *merged.entry(*b).or_default() += n;
            }
        }
        let count: u64 = merged.values().sum();
        let at = |q: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (b, n) in &merged {
                seen += n;
                if seen >= rank {
                    return Some(bound(*b));
                }
            }
            None
        };
        Percentiles { window_s, count, p50_s: at(0.5), p95_s: at(0.95), p99_s: at(0.99) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_the_bucket_growth() {
        let mut w = LatencyWindow::default();
        // 1..=1000 ms, one per ms, all in one second.
        for i in 1..=1000 {
            w.observe(100, f64::from(i) / 1000.0);
        }
        let p = w.percentiles(100, 60);
        assert_eq!(p.count, 1000);
        for (got, want) in [(p.p50_s, 0.5), (p.p95_s, 0.95), (p.p99_s, 0.99)] {
            let got = got.unwrap();
            assert!(got >= want && got <= want * GROWTH, "{got} vs {want}");
        }
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let mut w = LatencyWindow::default();
        w.observe(10, 100.0);
        w.observe(80, 1.0);
        let p = w.percentiles(80, 60);
        assert_eq!(p.count, 1);
        assert!(p.p99_s.unwrap() < 1.1);
        assert_eq!(w.percentiles(80, 300).count, 2);
        assert_eq!(w.percentiles(2000, 60), Percentiles { window_s: 60, ..Default::default() });
        w.observe(2000, 2.0);
        assert_eq!(w.seconds.len(), 1, "seconds older than {KEEP_S} are dropped");
    }

    #[test]
    fn tiny_and_huge_values_are_bucketed() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(-1.0), 0);
        assert_eq!(bucket(f64::NAN), 0);
        assert!(bound(bucket(3.0e7)) >= 3.0e7);
    }
}
