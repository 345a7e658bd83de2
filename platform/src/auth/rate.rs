//! Per-principal rate limits: one token bucket per token subject, so one caller flooding a
//! service is refused (`RESOURCE_EXHAUSTED`) while every other caller keeps its own budget.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

/// Buckets kept at most; past it, buckets that have refilled completely (idle callers) are
/// dropped, which forgets nothing a full bucket would not grant anyway.
const MAX_BUCKETS: usize = 65_536;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by subject. The rate is requests per second; a caller may burst to one
/// second's worth of requests (at least 1).
pub(crate) struct RateLimits {
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl RateLimits {
    pub(crate) fn new() -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `subject`'s bucket refilling at `per_second`; false when empty.
    /// A rate of 0 means no limit.
    pub(crate) fn admit(&self, subject: &Arc<str>, per_second: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        // Request counts, not money: a float is exact enough for a refill rate.
        let rate = f64::from(per_second);
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(subject) {
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * rate < rate
            });
        }
        let bucket = buckets.entry(subject.clone()).or_insert(Bucket {
            tokens: rate,
            updated: now,
        });
        let refilled = now.duration_since(bucket.updated).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refilled).min(rate.max(1.0));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_over_its_rate_is_refused_while_another_is_not() {
        let limits = RateLimits::new();
        let flood: Arc<str> = "flood".into();
        let quiet: Arc<str> = "quiet".into();
        let admitted = (0..100).filter(|_| limits.admit(&flood, 10)).count();
        // One second's burst, plus at most what refilled while the loop ran.
        assert!((10..=12).contains(&admitted), "{admitted} admitted");
        assert!(limits.admit(&quiet, 10));
        assert!(
            (0..1000).all(|_| limits.admit(&flood, 0)),
            "0 means no limit"
        );
    }
}
