//! ember-driver: the part of ember that plans and schedules.
//!
//! - [`Session`] / [`SessionBuilder`]: entry point (`Session::builder().master("local[4]")`).
//! - [`DataFrame`]: the lazy, Spark-shaped DataFrame API; SQL through DataFusion.
//! - `engine`: the stage planner (physical plan -> `StageGraph`, cut at exchanges) and
//!   the DAG scheduler (one event loop owning job/stage/task state) with its executor
//!   slots. Every action runs through it.

mod dataframe;
mod engine;
mod map_batches;
mod session;

pub use dataframe::*;
pub use ember_core::{EmberConfig, EmberError, Result};
pub use engine::{JobProgress, StageProgress};
pub use session::{Master, Session, SessionBuilder};
