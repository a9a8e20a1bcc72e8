//! The latency histogram and the correctness counters in the Prometheus text exposition
//! format (version 0.0.4), for a node_exporter textfile collector or any scraper.
//!
//! The histogram is a real Prometheus histogram (`_bucket{le=...}`, `_sum`, `_count`,
//! base unit seconds), so runs and targets aggregate with `histogram_quantile`. Bucket
//! counts come from the HdrHistogram (3 significant digits): a sample lands in the
//! first bucket whose bound is at least the highest value equivalent to it.

use crate::report::Report;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// Bucket upper bounds, seconds: 10 µs to 10 s.
pub const BUCKET_BOUNDS_SECS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One labelled set of series: a run (or the run so far).
#[derive(Debug, Clone)]
pub struct PromSeries {
    /// Label pairs, e.g. `target="cutie"`, `scenario="fan-in"`, `qos="1"`.
    pub labels: Vec<(String, String)>,
    /// Latency samples, microseconds.
    pub latency_us: Histogram<u64>,
    /// `(counter name without prefix, value)`: `messages_sent`, `messages_lost`, ...
    pub counters: Vec<(&'static str, u64)>,
}

impl PromSeries {
    /// The series of a finished message run, labelled with its target, scenario and QoS.
    pub fn of_report(report: &Report) -> Option<PromSeries> {
        let m = report.messages.as_ref()?;
        Some(PromSeries {
            labels: labels(&report.target_name, &report.scenario, m.qos),
            latency_us: m.latency_histogram.clone(),
            counters: vec![
                ("messages_sent", m.sent),
                ("messages_received", m.received),
                ("messages_lost", m.lost),
                ("messages_duplicated", m.duplicated),
                ("messages_reordered", m.reordered),
            ],
        })
    }
}

/// The standard labels of a run.
pub fn labels(target: &str, scenario: &str, qos: u8) -> Vec<(String, String)> {
    vec![
        ("target".to_owned(), target.to_owned()),
        ("scenario".to_owned(), scenario.to_owned()),
        ("qos".to_owned(), qos.to_string()),
    ]
}

fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn label_text(labels: &[(String, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

/// Renders `series` as Prometheus text.
pub fn render(series: &[PromSeries]) -> String {
    let mut out = String::new();
    let name = "cutie_bench_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} End-to-end message latency from scheduled send to receipt, warm-up excluded."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for s in series {
        let mut buckets = vec![0u64; BUCKET_BOUNDS_SECS.len()];
        let mut count = 0u64;
        for value in s.latency_us.iter_recorded() {
            let samples = value.count_at_value();
            count += samples;
            let upper_us = value.value_iterated_to() as f64;
            if let Some(first) = BUCKET_BOUNDS_SECS
                .iter()
                .position(|&bound| upper_us <= bound * 1e6)
            {
                buckets[first] += samples;
            }
        }
        let mut cumulative = 0u64;
        for (bound, bucket) in BUCKET_BOUNDS_SECS.iter().zip(&buckets) {
            cumulative += bucket;
            let le = format!("{bound}");
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                label_text(&s.labels, Some(&le))
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {count}",
            label_text(&s.labels, Some("+Inf"))
        );
        let sum_secs = s.latency_us.mean() * s.latency_us.len() as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum_secs}", label_text(&s.labels, None));
        let _ = writeln!(out, "{name}_count{} {count}", label_text(&s.labels, None));
    }
    let mut counter_names: Vec<&'static str> = Vec::new();
    for s in series {
        for (counter, _) in &s.counters {
            if !counter_names.contains(counter) {
                counter_names.push(counter);
            }
        }
    }
    for counter in counter_names {
        let full = format!("cutie_bench_{counter}_total");
        let _ = writeln!(
            out,
            "# HELP {full} {} over the run.",
            counter.replace('_', " ")
        );
        let _ = writeln!(out, "# TYPE {full} counter");
        for s in series {
            if let Some((_, value)) = s.counters.iter().find(|(c, _)| *c == counter) {
                let _ = writeln!(out, "{full}{} {value}", label_text(&s.labels, None));
            }
        }
    }
    out
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), so a scraper
/// never reads half a file.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::{new_histogram, record_us};

    fn series(samples_us: &[u64]) -> PromSeries {
        let mut latency_us = new_histogram();
        for &sample in samples_us {
            record_us(&mut latency_us, sample);
        }
        PromSeries {
            labels: labels("cutie", "fan-in", 1),
            latency_us,
            counters: vec![("messages_sent", 10), ("messages_lost", 2)],
        }
    }

    fn value_of(text: &str, line_start: &str) -> String {
        text.lines()
            .find(|line| line.starts_with(line_start))
            .unwrap_or_else(|| panic!("no line starting with {line_start:?} in\n{text}"))
            .rsplit(' ')
            .next()
            .expect("a value")
            .to_owned()
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        // 5 µs, 20 µs, 20 µs, 3 ms, 30 s (beyond the last bound).
        let text = render(&[series(&[5, 20, 20, 3_000, 30_000_000])]);
        let bucket = |le: &str| {
            value_of(
                &text,
                &format!(
                    "cutie_bench_latency_seconds_bucket{{target=\"cutie\",scenario=\"fan-in\",qos=\"1\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(bucket("0.00001"), "1");
        assert_eq!(bucket("0.000025"), "3");
        assert_eq!(bucket("0.0025"), "3");
        assert_eq!(bucket("0.005"), "4");
        assert_eq!(bucket("10"), "4");
        assert_eq!(bucket("+Inf"), "5");
        let count = value_of(&text, "cutie_bench_latency_seconds_count{");
        assert_eq!(count, "5");
        let sum: f64 = value_of(&text, "cutie_bench_latency_seconds_sum{")
            .parse()
            .expect("a float");
        let exact = (5 + 20 + 20 + 3_000 + 30_000_000) as f64 / 1e6;
        assert!((sum - exact).abs() / exact < 0.001, "sum {sum} vs {exact}");
    }

    #[test]
    fn text_has_type_lines_and_counters() {
        let text = render(&[series(&[100])]);
        assert!(text.contains("# TYPE cutie_bench_latency_seconds histogram\n"));
        assert!(text.contains("# TYPE cutie_bench_messages_sent_total counter\n"));
        assert!(text.contains(
            "cutie_bench_messages_lost_total{target=\"cutie\",scenario=\"fan-in\",qos=\"1\"} 2\n"
        ));
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            assert!(series.ends_with('}'), "{line}");
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn several_series_share_one_type_line() {
        let mut other = series(&[1]);
        other.labels = labels("mosquitto", "fan-in", 1);
        let text = render(&[series(&[1]), other]);
        assert_eq!(
            text.matches("# TYPE cutie_bench_latency_seconds ").count(),
            1
        );
        assert_eq!(text.matches("_count{").count(), 2);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = series(&[1]);
        s.labels = vec![("target".to_owned(), "a\"b\\c\nd".to_owned())];
        let text = render(&[s]);
        assert!(text.contains("target=\"a\\\"b\\\\c\\nd\""), "{text}");
    }
}
