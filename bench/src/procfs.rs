//! The broker's CPU time and memory, read from `/proc/PID/stat` and `/proc/PID/status`.
//!
//! Only meaningful when the broker runs on the same machine. CPU is `utime + stime`
//! (user plus system time of all its threads), so "CPU seconds per million messages
//! delivered" compares brokers independently of how many cores they spread over.

use serde::Serialize;
use std::io;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcSample {
    /// User plus system CPU time so far, in seconds.
    pub cpu_secs: f64,
    /// Resident set size now, in bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident set size so far, in bytes (`VmHWM`).
    pub rss_peak_bytes: u64,
}

/// Reads `pid`'s counters.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let ticks = cpu_ticks_from_stat(&stat).ok_or_else(|| invalid("unreadable /proc/PID/stat"))?;
    Ok(ProcSample {
        cpu_secs: ticks as f64 / clock_ticks_per_sec(),
        rss_bytes: status_kib(&status, "VmRSS:").unwrap_or(0) * 1024,
        rss_peak_bytes: status_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
    })
}

/// `utime + stime` (fields 14 and 15) from the text of `/proc/PID/stat`. The command
/// name (field 2) is in parentheses and may contain spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn cpu_ticks_from_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name come field 3 (state) onwards: utime is field 14, the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` line of `/proc/PID/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_name_with_spaces_and_parens() {
        let stat = "1234 (we ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 8 0 12345 1000000 500 18446744073709551615";
        assert_eq!(cpu_ticks_from_stat(stat), Some(325));
    }

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\tcutie\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let sample = sample(std::process::id()).expect("own /proc entry");
        assert!(sample.rss_bytes > 0);
        assert!(sample.cpu_secs >= 0.0);
    }
}
