//! An HdrHistogram interval log: one compressed histogram per second of the run, readable
//! by HdrHistogram's `HistogramLogProcessor` and HistogramLogAnalyzer. Values are
//! microseconds. In compare mode each target's intervals carry its name as the tag.

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Writes intervals to one log file.
pub struct HdrLog {
    out: BufWriter<File>,
    serializer: V2DeflateSerializer,
    /// Interval timestamps are offsets from the log's base time; each run's intervals
    /// are shifted by the time its run started after that base.
    base_time: SystemTime,
}

impl std::fmt::Debug for HdrLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HdrLog")
            .field("base_time", &self.base_time)
            .finish_non_exhaustive()
    }
}

impl HdrLog {
    /// Creates (truncates) `path` and writes the header.
    pub fn create(path: &Path) -> io::Result<HdrLog> {
        let mut out = BufWriter::new(File::create(path)?);
        let mut serializer = V2DeflateSerializer::new();
        let base_time = SystemTime::now();
        IntervalLogWriterBuilder::new()
            .add_comment("cutie-bench latency interval log; values in microseconds")
            .with_start_time(base_time)
            .with_base_time(base_time)
            .begin_log_with(&mut out, &mut serializer)?;
        writeln!(
            out,
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        )?;
        out.flush()?;
        Ok(HdrLog {
            out,
            serializer,
            base_time,
        })
    }

    /// Appends one interval: `run_started` is when the run's clock started, `start` the
    /// interval's offset in that run. `tag` is left out if it has characters a tag
    /// cannot hold (comma, space, newline).
    pub fn write(
        &mut self,
        tag: &str,
        run_started: SystemTime,
        start: Duration,
        length: Duration,
        histogram: &Histogram<u64>,
    ) -> io::Result<()> {
        let offset = run_started
            .duration_since(self.base_time)
            .unwrap_or(Duration::ZERO)
            + start;
        // An empty builder writes no header lines: it only lends its writer.
        let mut writer =
            IntervalLogWriterBuilder::new().begin_log_with(&mut self.out, &mut self.serializer)?;
        writer
            .write_histogram(histogram, offset, length, Tag::new(tag))
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::{new_histogram, record_us};
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn written_intervals_read_back_with_their_samples() {
        let dir = std::env::temp_dir().join(format!("cutie-bench-hdr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("latency.hlog");
        let mut log = HdrLog::create(&path).expect("create");
        let mut histogram = new_histogram();
        for us in [10, 20, 30_000] {
            record_us(&mut histogram, us);
        }
        let now = SystemTime::now();
        log.write(
            "cutie",
            now,
            Duration::from_secs(1),
            Duration::from_secs(1),
            &histogram,
        )
        .expect("write");
        log.write(
            "cutie",
            now,
            Duration::from_secs(2),
            Duration::from_secs(1),
            &histogram,
        )
        .expect("write");
        drop(log);
        let bytes = std::fs::read(&path).expect("read back");
        let intervals: Vec<_> = IntervalLogIterator::new(&bytes)
            .filter_map(|entry| match entry {
                Ok(LogEntry::Interval(interval)) => Some(interval),
                _ => None,
            })
            .collect();
        assert_eq!(intervals.len(), 2);
        assert_eq!(intervals[0].tag().map(|t| t.as_str()), Some("cutie"));
        assert_eq!(intervals[0].duration(), Duration::from_secs(1));
        let encoded = intervals[1].encoded_histogram();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &raw[..])
            .expect("deserialize");
        assert_eq!(decoded.len(), 3);
        assert!(decoded.max() >= 30_000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
