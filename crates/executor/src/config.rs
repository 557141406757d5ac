//! What an executor process is told on its command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ember_core::rpc::Security;

/// Settings of one executor process.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The driver's URL, e.g. `http://127.0.0.1:7077`.
    pub driver_url: String,
    /// Where this executor's gRPC service listens (port 0: any free port).
    pub bind: SocketAddr,
    /// The host others reach this executor at, when `bind` is not it (`0.0.0.0` in a
    /// container: the pod's IP).
    pub advertise_host: Option<String>,
    /// Task slots.
    pub cores: usize,
    /// Memory the executor offers, in bytes (reported to the driver).
    pub memory_bytes: u64,
    /// Root of the shuffle files.
    pub work_dir: PathBuf,
    /// Defaults to `exec-<host>-<port>` once bound.
    pub executor_id: Option<String>,
    pub heartbeat_interval: Duration,
    /// The cluster's secret, required on every call when set.
    pub security: Security,
    /// On SIGTERM, how long running tasks may take to finish before the executor
    /// leaves anyway (the driver then runs them elsewhere).
    pub drain_timeout: Duration,
    /// Where to serve Prometheus `/metrics` (none: not served).
    pub metrics_bind: Option<SocketAddr>,
}

impl ExecutorConfig {
    pub fn new(driver_url: impl Into<String>, work_dir: impl Into<PathBuf>) -> Self {
        ExecutorConfig {
            driver_url: driver_url.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_host: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: 4 << 30,
            work_dir: work_dir.into(),
            executor_id: None,
            heartbeat_interval: Duration::from_secs(1),
            security: Security::none(),
            drain_timeout: Duration::from_secs(25),
            metrics_bind: None,
        }
    }
}

pub use ember_core::config::parse_size;

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_like_spark_memory_flags() {
        assert_eq!(parse_size("4g"), Some(4 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("2gb"), Some(2 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("4x"), None);
    }
}
