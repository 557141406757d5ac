//! ember-executor: the executor process of a cluster.
//!
//! An executor registers with the driver (`RegisterExecutor`, with the protocol
//! version), heartbeats, runs the tasks the driver launches (`LaunchTasks`) and reports
//! each result (`ReportTaskStatus`), and serves its map outputs to other executors
//! (`FetchPartition`). What runs a task lives in `ember-exec` (`run_task` and its
//! `TaskEnv`, whose caches live and die with this executor; the shuffle operators;
//! the plan codec), so a local session's in-process slots and an executor process
//! run tasks through the same code.
//!
//! ```text
//!   driver ──LaunchTasks──▶ ExecutorService ──spawn──▶ run_task ──▶ ReportTaskStatus ──▶ driver
//!   other executors ──FetchPartition──▶ ExecutorService ──▶ work_dir/job-*/stage-*/*.data
//! ```

mod config;
mod metrics;
mod process;
mod registry;
mod service;

pub use config::{ExecutorConfig, parse_size};
pub use process::{RunningExecutor, StopHandle, run, start};
pub use registry::Registry;
