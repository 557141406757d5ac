//! ember as one library for programs: the driver API at the top (`ember::Session`,
//! `ember::DataFrame`, ...), and [`executor`] for a program that runs as an executor
//! so that its own functions are there for the cluster's tasks:
//!
//! ```no_run
//! # async fn demo(udf: datafusion::logical_expr::ScalarUDF) -> ember::Result<()> {
//! let registry = ember::executor::Registry::new().with_udf(udf);
//! let config = ember::executor::ExecutorConfig::new("http://127.0.0.1:7077", "/tmp/ember-work");
//! ember::executor::run(config, registry).await
//! # }
//! ```

pub use ember_driver::*;

/// Security settings shared by the driver, executors and clients.
pub use ember_core::rpc::Security;

/// Running an executor process from a program: [`executor::run`] with the program's
/// [`executor::Registry`] of functions.
pub mod executor {
    pub use ember_executor::{ExecutorConfig, Registry, RunningExecutor, run, start};
}
