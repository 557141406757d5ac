//! ember-core: the vocabulary the driver, the executors and the execution layer
//! (`ember-exec`) share. Nothing here runs a plan.
//!
//! - [`config`]: the typed `ember.*` configuration (a DataFusion config extension).
//! - [`error`]: the crate's error type; errors that cross the scheduler say whether
//!   they are retryable.
//! - [`task`]: task identities, definitions and typed results, and the DataFusion
//!   settings every stage runs with.
//! - [`shuffle`]: where map output lives, as map tasks report it and readers get it.
//! - [`codec`]: plan bytes: a physical plan into `datafusion-proto` bytes and back,
//!   never panicking on bad ones (the extension codec of ember's operators is
//!   `ember_exec::codec`).
//! - [`ipc`]: the one hardened decoder of Arrow IPC streams from outside the process.
//! - [`proto`]: the generated gRPC code of `proto/ember.proto`; [`convert`] turns task
//!   definitions and results into its messages and back; [`rpc`]: authentication,
//!   TLS and liveness of every gRPC connection.
//! - [`event_time`] and [`json`]: ember's own SQL functions (windows, watermarks,
//!   parsing JSON and CSV values), present in every session and on every executor.
//! - [`metrics`]: the Prometheus exposition format.

pub mod codec;
pub mod config;
pub mod convert;
pub mod error;
pub mod event_time;
pub mod ipc;
pub mod json;
pub mod keys;
pub mod metrics;
pub mod proto;
pub mod rpc;
pub mod shuffle;
pub mod task;

pub use config::EmberConfig;
pub use error::{EmberError, Result};

/// The version of the driver/executor protocol, sent when an executor registers.
pub const PROTOCOL_VERSION: u32 = 1;

/// ember's own SQL functions, present in every session and on every executor.
pub fn ember_functions() -> Vec<datafusion::logical_expr::ScalarUDF> {
    let mut functions = vec![
        json::parse_udf(json::Format::Json),
        json::parse_udf(json::Format::Csv),
    ];
    functions.extend(event_time::event_time_udfs());
    functions
}
