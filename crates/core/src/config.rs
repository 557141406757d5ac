//! Typed `ember.*` configuration.
//!
//! [`EmberConfig`] is a DataFusion config extension, so `ember.*` keys live in the same
//! `SessionConfig` as `datafusion.*` keys: `SET ember.task.max_failures = 2` works in SQL,
//! `Session::builder().config(k, v)` works in Rust, and a task definition carries both
//! to wherever the task runs. [`EmberConfig::KEYS`] is the one place defaults and
//! descriptions live; the README's configuration table is printed from it
//! (`ember config`).

use std::any::Any;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::prelude::SessionConfig;

mod keys;

/// Shuffle file compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShuffleCompression {
    /// By where the readers are: none when every executor is on the writer's host
    /// (compressing would only cost CPU), LZ4 otherwise. The driver resolves it per
    /// job; a writer that gets it unresolved uses LZ4.
    Auto,
    None,
    Lz4,
    Zstd,
}

/// The client settings of `s3://` locations (`ember.s3.*`): an empty one leaves it to
/// the `AWS_*` environment variable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `true`, `false`, or empty.
    pub allow_http: String,
}

/// Adaptive execution's settings (`ember.adaptive.*`), as Spark's AQE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveSettings {
    /// Whether stages are planned again from real shuffle sizes when they start.
    pub enabled: bool,
    /// The bytes a coalesced or split reduce task aims at.
    pub advisory_partition_bytes: u64,
    /// A partitioned join whose build side's shuffle output is at most this becomes a
    /// broadcast join.
    pub broadcast_bytes: u64,
    /// A join's reduce partition is skewed past this many times the median...
    pub skew_factor: f64,
    /// ...and past this many bytes.
    pub skew_bytes: u64,
}

/// The `ember.*` settings. Build it with [`EmberConfig::default`] and [`set`](ExtensionOptions::set).
#[derive(Debug, Clone)]
pub struct EmberConfig {
    /// Attempts of one task before its job fails (`ember.task.max_failures`).
    pub task_max_failures: usize,
    /// Attempts of one stage before its job fails (`ember.stage.max_attempts`).
    pub stage_max_attempts: usize,
    /// Codec of shuffle files (`ember.shuffle.compression`).
    pub shuffle_compression: ShuffleCompression,
    /// Bytes of shuffle output kept in memory per session before map outputs go to
    /// disk (`ember.shuffle.memory_budget`); 0 sends everything to disk.
    pub shuffle_memory_budget: usize,
    /// Rows per shuffle batch; small batches are coalesced up to this (`ember.shuffle.batch_rows`).
    pub shuffle_batch_rows: usize,
    /// Seconds without a heartbeat after which an executor is lost (`ember.executor.timeout`).
    pub executor_timeout_secs: u64,
    /// Seconds a cluster job waits for a first executor before failing (`ember.cluster.executor_wait`).
    pub cluster_executor_wait_secs: u64,
    /// Deepest nesting of expressions a SQL statement may have (`ember.sql.max_expression_depth`).
    pub sql_max_expression_depth: usize,
    /// Whether uncorrelated scalar subqueries run first and enter their query as
    /// literals (`ember.sql.scalar_subqueries_first`).
    pub sql_scalar_subqueries_first: bool,
    /// Whether joins' build stages filter the scans of their probe sides (`ember.runtime_filter.enabled`).
    pub runtime_filter_enabled: bool,
    /// Fewest rows a probe scan needs for a runtime filter that makes its stage wait
    /// (`ember.runtime_filter.min_probe_rows`).
    pub runtime_filter_min_probe_rows: u64,
    /// Adaptive execution: what a stage's start decides from the map outputs it reads
    /// (`ember.adaptive.*`).
    pub adaptive: AdaptiveSettings,
    /// Partitions of a keyed stateful streaming operator's state
    /// (`ember.streaming.state.partitions`); fixed per checkpoint.
    pub streaming_state_partitions: usize,
    /// Every how many batches a state partition's version is a snapshot rather than
    /// a delta (`ember.streaming.state.snapshot_interval`).
    pub streaming_state_snapshot_interval: u64,
    /// Seconds between HTTP/2 keepalive pings on every gRPC connection
    /// (`ember.rpc.keepalive_interval`).
    pub rpc_keepalive_interval_secs: u64,
    /// Seconds a ping may go unanswered before its peer counts as gone
    /// (`ember.rpc.keepalive_timeout`).
    pub rpc_keepalive_timeout_secs: u64,
    /// Seconds to establish a connection (`ember.rpc.connect_timeout`).
    pub rpc_connect_timeout_secs: u64,
    /// Seconds a short control call (heartbeat, status report, registration, task
    /// launch) may take (`ember.rpc.request_timeout`).
    pub rpc_request_timeout_secs: u64,
    /// Where the driver writes each application's event log, `<dir>/<app-id>.jsonl`
    /// (`ember.eventlog.dir`); empty for none.
    pub eventlog_dir: String,
    /// The client settings of `s3://` locations (`ember.s3.*`); empty ones come from
    /// the `AWS_*` environment variables.
    pub s3: S3Settings,
    /// Memory of local mode's executor (`ember.executor.memory`): its task slots
    /// share a memory pool sized from it; 0 for half this machine's memory.
    pub executor_memory: u64,
    /// Delay injection for tests (`ember.test.delay_tasks`): `STAGE:MILLIS` makes every
    /// task of stage STAGE wait that long before it runs; `STAGE.PARTITION:MILLIS`
    /// only that task.
    pub test_delay_tasks: String,
    /// Failure injection for tests (`ember.test.fail_tasks`): `STAGE:N` makes every task
    /// of stage STAGE fail its first N attempts, `STAGE:always` makes them always fail.
    pub test_fail_tasks: String,
    /// Report-loss injection for tests (`ember.test.fail_reports`): `STAGE:N` makes the
    /// first N attempts to report each task of stage STAGE fail on the executor.
    pub test_fail_reports: String,
    /// Report-loss injection for tests (`ember.test.forget_tasks`): `STAGE:N` makes an
    /// executor drop the report of the first N attempts of each task of stage STAGE
    /// and forget the task, as if its report were lost for good.
    pub test_forget_tasks: String,
}

impl Default for EmberConfig {
    fn default() -> Self {
        let mut c = EmberConfig {
            task_max_failures: 0,
            stage_max_attempts: 0,
            shuffle_compression: ShuffleCompression::Auto,
            shuffle_memory_budget: 0,
            shuffle_batch_rows: 0,
            executor_timeout_secs: 0,
            cluster_executor_wait_secs: 0,
            sql_max_expression_depth: 0,
            sql_scalar_subqueries_first: false,
            adaptive: AdaptiveSettings {
                enabled: true,
                advisory_partition_bytes: 0,
                broadcast_bytes: 0,
                skew_factor: 0.0,
                skew_bytes: 0,
            },
            runtime_filter_enabled: false,
            runtime_filter_min_probe_rows: 0,
            streaming_state_partitions: 0,
            streaming_state_snapshot_interval: 0,
            rpc_keepalive_interval_secs: 0,
            rpc_keepalive_timeout_secs: 0,
            rpc_connect_timeout_secs: 0,
            rpc_request_timeout_secs: 0,
            eventlog_dir: String::new(),
            s3: S3Settings::default(),
            executor_memory: 0,
            test_delay_tasks: String::new(),
            test_fail_tasks: String::new(),
            test_fail_reports: String::new(),
            test_forget_tasks: String::new(),
        };
        for (key, default, _) in Self::KEYS {
            c.set_key(key, default).expect("built-in defaults parse");
        }
        c
    }
}

impl EmberConfig {
    /// Every key: (full key, default, description), from `keys.rs`, the one place
    /// defaults live.
    pub const KEYS: &'static [(&'static str, &'static str, &'static str)] = keys::KEYS;

    /// Reads the ember settings of a DataFusion session config (defaults if absent).
    pub fn from_session(config: &SessionConfig) -> EmberConfig {
        config
            .options()
            .extensions
            .get::<EmberConfig>()
            .cloned()
            .unwrap_or_default()
    }

    /// Sets one key, with or without its `ember.` prefix.
    pub fn set_key(&mut self, key: &str, value: &str) -> DFResult<()> {
        let key = key.strip_prefix("ember.").unwrap_or(key);
        let bad = |what: &str| {
            DataFusionError::Configuration(format!(
                "invalid value '{value}' for ember.{key}: expected {what}"
            ))
        };
        match key {
            "task.max_failures" => {
                self.task_max_failures = value.parse().map_err(|_| bad("a positive integer"))?;
                if self.task_max_failures == 0 {
                    return Err(bad("a positive integer"));
                }
            }
            "stage.max_attempts" => {
                self.stage_max_attempts = value.parse().map_err(|_| bad("a positive integer"))?;
                if self.stage_max_attempts == 0 {
                    return Err(bad("a positive integer"));
                }
            }
            "shuffle.compression" => {
                self.shuffle_compression = match value.to_ascii_lowercase().as_str() {
                    "auto" => ShuffleCompression::Auto,
                    "lz4" => ShuffleCompression::Lz4,
                    "zstd" => ShuffleCompression::Zstd,
                    "none" => ShuffleCompression::None,
                    _ => return Err(bad("auto, lz4, zstd or none")),
                }
            }
            "shuffle.memory_budget" => {
                self.shuffle_memory_budget = value.parse().map_err(|_| bad("a byte count"))?
            }
            "shuffle.batch_rows" => {
                self.shuffle_batch_rows = value.parse().map_err(|_| bad("a row count"))?;
                self.shuffle_batch_rows = self.shuffle_batch_rows.max(1);
            }
            "executor.timeout" => {
                self.executor_timeout_secs = value.parse().map_err(|_| bad("seconds"))?
            }
            "cluster.executor_wait" => {
                self.cluster_executor_wait_secs = value.parse().map_err(|_| bad("seconds"))?
            }
            "sql.max_expression_depth" => {
                self.sql_max_expression_depth =
                    value.parse().map_err(|_| bad("a positive integer"))?;
                if self.sql_max_expression_depth == 0 {
                    return Err(bad("a positive integer"));
                }
            }
            "sql.scalar_subqueries_first" => {
                self.sql_scalar_subqueries_first =
                    value.parse().map_err(|_| bad("true or false"))?
            }
            "runtime_filter.enabled" => {
                self.runtime_filter_enabled = value.parse().map_err(|_| bad("true or false"))?
            }
            "runtime_filter.min_probe_rows" => {
                self.runtime_filter_min_probe_rows =
                    value.parse().map_err(|_| bad("a row count"))?
            }
            "adaptive.enabled" => {
                self.adaptive.enabled = value.parse().map_err(|_| bad("true or false"))?
            }
            "adaptive.advisory_partition_bytes" => {
                self.adaptive.advisory_partition_bytes = parse_size(value)
                    .filter(|b| *b > 0)
                    .ok_or_else(|| bad("a byte count"))?
            }
            "adaptive.broadcast_bytes" => {
                self.adaptive.broadcast_bytes =
                    parse_size(value).ok_or_else(|| bad("a byte count"))?
            }
            "adaptive.skew_factor" => {
                self.adaptive.skew_factor = value
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 1.0)
                    .ok_or_else(|| bad("a number of at least 1"))?
            }
            "adaptive.skew_bytes" => {
                self.adaptive.skew_bytes = parse_size(value).ok_or_else(|| bad("a byte count"))?
            }
            "streaming.state.partitions" => {
                self.streaming_state_partitions =
                    value.parse().map_err(|_| bad("a positive integer"))?;
                if self.streaming_state_partitions == 0 {
                    return Err(bad("a positive integer"));
                }
            }
            "streaming.state.snapshot_interval" => {
                self.streaming_state_snapshot_interval =
                    value.parse().map_err(|_| bad("a positive integer"))?;
                if self.streaming_state_snapshot_interval == 0 {
                    return Err(bad("a positive integer"));
                }
            }
            "rpc.keepalive_interval" => {
                self.rpc_keepalive_interval_secs =
                    positive_secs(value).ok_or_else(|| bad("a positive number of seconds"))?
            }
            "rpc.keepalive_timeout" => {
                self.rpc_keepalive_timeout_secs =
                    positive_secs(value).ok_or_else(|| bad("a positive number of seconds"))?
            }
            "rpc.connect_timeout" => {
                self.rpc_connect_timeout_secs =
                    positive_secs(value).ok_or_else(|| bad("a positive number of seconds"))?
            }
            "rpc.request_timeout" => {
                self.rpc_request_timeout_secs =
                    positive_secs(value).ok_or_else(|| bad("a positive number of seconds"))?
            }
            "eventlog.dir" => self.eventlog_dir = value.to_string(),
            "s3.endpoint" => self.s3.endpoint = value.to_string(),
            "s3.region" => self.s3.region = value.to_string(),
            "s3.access_key_id" => self.s3.access_key_id = value.to_string(),
            "s3.secret_access_key" => self.s3.secret_access_key = value.to_string(),
            "s3.allow_http" => match value {
                "" | "true" | "false" => self.s3.allow_http = value.to_string(),
                _ => return Err(bad("true, false or empty")),
            },
            "executor.memory" => {
                self.executor_memory = match value.trim() {
                    "" | "0" => 0,
                    v => parse_size(v).ok_or_else(|| bad("a size such as 4g or 512m"))?,
                }
            }
            "test.delay_tasks" => {
                if !value.is_empty() {
                    parse_delay_spec(value).ok_or_else(|| bad("STAGE[.PARTITION]:MILLIS"))?;
                }
                self.test_delay_tasks = value.to_string()
            }
            "test.fail_tasks" => {
                if !value.is_empty() {
                    parse_fail_tasks(value).ok_or_else(|| bad("STAGE:N or STAGE:always"))?;
                }
                self.test_fail_tasks = value.to_string()
            }
            "test.fail_reports" => {
                if !value.is_empty() {
                    parse_stage_spec(value).ok_or_else(|| bad("STAGE:N"))?;
                }
                self.test_fail_reports = value.to_string()
            }
            "test.forget_tasks" => {
                if !value.is_empty() {
                    parse_stage_spec(value).ok_or_else(|| bad("STAGE:N"))?;
                }
                self.test_forget_tasks = value.to_string()
            }
            _ => {
                return Err(DataFusionError::Configuration(format!(
                    "unknown configuration key ember.{key}; known keys: {}",
                    Self::KEYS
                        .iter()
                        .map(|(k, _, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(())
    }

    fn value_of(&self, key: &str) -> String {
        match key {
            "ember.task.max_failures" => self.task_max_failures.to_string(),
            "ember.stage.max_attempts" => self.stage_max_attempts.to_string(),
            "ember.shuffle.compression" => match self.shuffle_compression {
                ShuffleCompression::Auto => "auto".into(),
                ShuffleCompression::Lz4 => "lz4".into(),
                ShuffleCompression::Zstd => "zstd".into(),
                ShuffleCompression::None => "none".into(),
            },
            "ember.shuffle.memory_budget" => self.shuffle_memory_budget.to_string(),
            "ember.shuffle.batch_rows" => self.shuffle_batch_rows.to_string(),
            "ember.executor.timeout" => self.executor_timeout_secs.to_string(),
            "ember.cluster.executor_wait" => self.cluster_executor_wait_secs.to_string(),
            "ember.sql.max_expression_depth" => self.sql_max_expression_depth.to_string(),
            "ember.sql.scalar_subqueries_first" => self.sql_scalar_subqueries_first.to_string(),
            "ember.runtime_filter.enabled" => self.runtime_filter_enabled.to_string(),
            "ember.runtime_filter.min_probe_rows" => self.runtime_filter_min_probe_rows.to_string(),
            "ember.adaptive.enabled" => self.adaptive.enabled.to_string(),
            "ember.adaptive.advisory_partition_bytes" => {
                self.adaptive.advisory_partition_bytes.to_string()
            }
            "ember.adaptive.broadcast_bytes" => self.adaptive.broadcast_bytes.to_string(),
            "ember.adaptive.skew_factor" => self.adaptive.skew_factor.to_string(),
            "ember.adaptive.skew_bytes" => self.adaptive.skew_bytes.to_string(),
            "ember.streaming.state.partitions" => self.streaming_state_partitions.to_string(),
            "ember.streaming.state.snapshot_interval" => {
                self.streaming_state_snapshot_interval.to_string()
            }
            "ember.rpc.keepalive_interval" => self.rpc_keepalive_interval_secs.to_string(),
            "ember.rpc.keepalive_timeout" => self.rpc_keepalive_timeout_secs.to_string(),
            "ember.rpc.connect_timeout" => self.rpc_connect_timeout_secs.to_string(),
            "ember.rpc.request_timeout" => self.rpc_request_timeout_secs.to_string(),
            "ember.eventlog.dir" => self.eventlog_dir.clone(),
            "ember.s3.endpoint" => self.s3.endpoint.clone(),
            "ember.s3.region" => self.s3.region.clone(),
            "ember.s3.access_key_id" => self.s3.access_key_id.clone(),
            "ember.s3.secret_access_key" => self.s3.secret_access_key.clone(),
            "ember.s3.allow_http" => self.s3.allow_http.clone(),
            "ember.executor.memory" => self.executor_memory.to_string(),
            "ember.test.delay_tasks" => self.test_delay_tasks.clone(),
            "ember.test.fail_tasks" => self.test_fail_tasks.clone(),
            "ember.test.fail_reports" => self.test_fail_reports.clone(),
            "ember.test.forget_tasks" => self.test_forget_tasks.clone(),
            _ => String::new(),
        }
    }

    /// Whether the injected-failure hook wants this attempt of this task to fail.
    pub fn injected_failure(&self, stage: usize, attempt: usize) -> bool {
        match parse_fail_tasks(&self.test_fail_tasks) {
            Some((s, n)) => s == stage && attempt < n,
            None => false,
        }
    }

    /// Whether the report hook wants this try (0, 1, ...) to report a task of this
    /// stage to fail.
    pub fn injected_report_failure(&self, stage: usize, tried: usize) -> bool {
        matches!(parse_stage_spec(&self.test_fail_reports), Some((s, n)) if s == stage && tried < n)
    }

    /// Whether the report hook wants this attempt of a task of this stage forgotten.
    pub fn injected_forgotten(&self, stage: usize, attempt: usize) -> bool {
        matches!(parse_stage_spec(&self.test_forget_tasks), Some((s, n)) if s == stage && attempt < n)
    }

    /// How long the delay hook holds a task of this stage before it runs.
    pub fn injected_delay(&self, stage: usize, partition: usize) -> Option<std::time::Duration> {
        let (s, p, ms) = parse_delay_spec(&self.test_delay_tasks)?;
        (s == stage && p.is_none_or(|p| p == partition))
            .then(|| std::time::Duration::from_millis(ms))
    }

    /// The README's configuration table, in Markdown.
    pub fn markdown_table() -> String {
        let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
        for (k, d, m) in Self::KEYS {
            out.push_str(&format!("| `{k}` | `{d}` | {m} |\n"));
        }
        out
    }
}

/// Parses sizes such as `4g`, `512m`, `1024k` or a plain byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s.as_str(), ""),
    };
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// A whole number of seconds, at least 1.
fn positive_secs(value: &str) -> Option<u64> {
    value.trim().parse().ok().filter(|s| *s > 0)
}

/// `STAGE[.PARTITION]:MILLIS` -> (stage, partition, millis).
fn parse_delay_spec(spec: &str) -> Option<(usize, Option<usize>, u64)> {
    let (task, ms) = spec.split_once(':')?;
    let (stage, partition) = match task.split_once('.') {
        Some((s, p)) => (s, Some(p.trim().parse().ok()?)),
        None => (task, None),
    };
    Some((
        stage.trim().parse().ok()?,
        partition,
        ms.trim().parse().ok()?,
    ))
}

/// `STAGE:N` -> (stage, N).
fn parse_stage_spec(spec: &str) -> Option<(usize, usize)> {
    let (stage, n) = spec.split_once(':')?;
    Some((stage.trim().parse().ok()?, n.trim().parse().ok()?))
}

/// `STAGE:N` / `STAGE:always` -> (stage, failing attempts).
fn parse_fail_tasks(spec: &str) -> Option<(usize, usize)> {
    let (stage, n) = spec.split_once(':')?;
    let stage = stage.trim().parse().ok()?;
    let n = match n.trim() {
        "always" => usize::MAX,
        n => n.parse().ok()?,
    };
    Some((stage, n))
}

impl ExtensionOptions for EmberConfig {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> DFResult<()> {
        self.set_key(key, value)
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        Self::KEYS
            .iter()
            .map(|(k, _, d)| ConfigEntry {
                key: k.to_string(),
                value: Some(self.value_of(k)),
                description: d,
            })
            .collect()
    }
}

impl ConfigExtension for EmberConfig {
    const PREFIX: &'static str = "ember";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_key_table() {
        let c = EmberConfig::default();
        assert_eq!(c.task_max_failures, 4);
        assert_eq!(c.shuffle_compression, ShuffleCompression::Auto);
        assert_eq!(c.entries().len(), EmberConfig::KEYS.len());
    }

    #[test]
    fn bad_values_and_keys_are_errors_that_name_the_key() {
        let mut c = EmberConfig::default();
        let e = c.set_key("ember.task.max_failures", "x").unwrap_err();
        assert!(e.to_string().contains("ember.task.max_failures"), "{e}");
        let e = c.set_key("ember.nope", "1").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown configuration key ember.nope"),
            "{e}"
        );
        assert!(c.set_key("test.fail_tasks", "1:x").is_err());
    }

    #[test]
    fn fail_tasks_spec_selects_stage_and_attempts() {
        let mut c = EmberConfig::default();
        c.set_key("ember.test.fail_tasks", "2:2").unwrap();
        assert!(c.injected_failure(2, 0) && c.injected_failure(2, 1));
        assert!(!c.injected_failure(2, 2) && !c.injected_failure(1, 0));
        c.set_key("ember.test.fail_tasks", "1:always").unwrap();
        assert!(c.injected_failure(1, 100));
    }
}
