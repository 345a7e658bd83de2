//! Latency percentiles from every recorded sample (no histogram buckets: a 10-second run at our
//! rates is a few hundred thousand samples, cheap to sort exactly).

use serde::{Deserialize, Serialize};

/// Latency of one path, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises samples given in microseconds; `None` without samples.
pub fn summarize(mut micros: Vec<u64>) -> Option<Latency> {
    if micros.is_empty() {
        return None;
    }
    micros.sort_unstable();
    let ms = |us: u64| us as f64 / 1_000.0;
    let total: u128 = micros.iter().map(|&us| u128::from(us)).sum();
    Some(Latency {
        samples: micros.len() as u64,
        mean_ms: total as f64 / micros.len() as f64 / 1_000.0,
        p50_ms: ms(percentile(&micros, 0.50)),
        p90_ms: ms(percentile(&micros, 0.90)),
        p99_ms: ms(percentile(&micros, 0.99)),
        max_ms: ms(*micros.last().unwrap_or(&0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let summary = summarize((1..=100).map(|ms| ms * 1_000).collect()).expect("samples");
        assert_eq!(summary.samples, 100);
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p90_ms, 90.0);
        assert_eq!(summary.p99_ms, 99.0);
        assert_eq!(summary.max_ms, 100.0);
        assert_eq!(summary.mean_ms, 50.5);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let summary = summarize(vec![1_500]).expect("samples");
        assert_eq!((summary.p50_ms, summary.p99_ms), (1.5, 1.5));
        assert!(summarize(Vec::new()).is_none());
    }
}
