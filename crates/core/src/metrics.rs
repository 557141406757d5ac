//! Prometheus's text exposition format (version 0.0.4), written by hand: a few
//! counters, gauges and one histogram need no metrics library.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds of task durations, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of seconds with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// The sum, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Builds an exposition: each family once, with its help and type.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// Label values escaped as the format asks.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Exposition {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A counter family: one sample per label set.
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.family(name, help, "counter", samples);
    }

    /// A gauge family.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.family(name, help, "gauge", samples);
    }

    fn family(&mut self, name: &str, help: &str, kind: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.header(name, help, kind);
        for (l, v) in samples {
            let _ = writeln!(self.out, "{name}{} {}", labels(l), number(*v));
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        for (bound, count) in BUCKETS.iter().zip(&h.counts) {
            let _ = writeln!(
                self.out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            self.out,
            "{name}_sum {}",
            number(h.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
        );
        let _ = writeln!(self.out, "{name}_count {count}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// The process's resident memory in bytes (Linux), for the memory gauge.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// This process's peak resident memory (`VmHWM` of `/proc/self/status`), in bytes; 0
/// where there is no such file.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
            kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_help_type_samples_and_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        let mut e = Exposition::default();
        e.counter("ember_jobs_total", "Jobs.", &[(&[("status", "ok\"")], 2.0)]);
        e.histogram("ember_task_duration_seconds", "Task durations.", &h);
        let text = e.finish();
        assert!(text.contains("# TYPE ember_jobs_total counter\n"));
        assert!(text.contains("ember_jobs_total{status=\"ok\\\"\"} 2\n"));
        assert!(text.contains("ember_task_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("ember_task_duration_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("ember_task_duration_seconds_count 2\n"));
    }
}
