//! Latency histograms: one shape for every histogram of the harness, so any two can be
//! merged, and the summary a report prints.

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency recorded exactly: one hour, in microseconds. Larger values are
/// recorded as this (saturating).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Significant decimal digits kept (0.1 % resolution).
const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram in microseconds, 1 µs to [`LATENCY_US_MAX`].
pub fn new_histogram() -> Histogram<u64> {
    // invariant: the bounds are constants that satisfy 1 <= low, 2 * low <= high and
    // sigfig <= 5, the only conditions under which creation fails.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Adds `from` into `into`. Both come from [`new_histogram`], so the addition cannot
/// fail on bounds; were it to, the samples are dropped rather than the run.
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    let _ = into.add(from);
}

/// Records one latency, clamped to 1 µs .. [`LATENCY_US_MAX`].
pub fn record_us(histogram: &mut Histogram<u64>, latency_us: u64) {
    histogram.saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest sample.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl LatencySummary {
    /// The summary of `histogram` (all zero when it is empty).
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary {
                count: 0,
                min: 0,
                mean: 0.0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        LatencySummary {
            count: histogram.len(),
            min: histogram.min(),
            mean: histogram.mean(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_uniform_samples_has_matching_percentiles() {
        let mut histogram = new_histogram();
        for latency_us in 1..=1000 {
            record_us(&mut histogram, latency_us);
        }
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 1000);
        assert_eq!(summary.min, 1);
        assert_eq!(summary.p50, 500);
        assert_eq!(summary.p90, 900);
        assert_eq!(summary.p99, 990);
        assert_eq!(summary.p999, 999);
        assert_eq!(summary.max, 1000);
    }

    #[test]
    fn zero_and_huge_latencies_are_clamped_not_dropped() {
        let mut histogram = new_histogram();
        record_us(&mut histogram, 0);
        record_us(&mut histogram, u64::MAX);
        assert_eq!(histogram.len(), 2);
        assert_eq!(histogram.min(), 1);
        assert!(histogram.max() >= LATENCY_US_MAX);
    }
}
