//! ember-driver: the part of ember that plans and schedules.
//!
//! - [`Session`] / [`SessionBuilder`]: entry point (`Session::builder().master("local[4]")`).
//! - [`DataFrame`]: the lazy, Spark-shaped DataFrame API; SQL through DataFusion.
//! - `engine`: the stage planner (physical plan -> `StageGraph`, cut at exchanges) and
//!   the DAG scheduler (one event loop owning job/stage/task state) with its executor
//!   slots. Every action runs through it.
//! - [`tpch`]: TPC-H data generation (Parquet), table registration and the 22 queries,
//!   for examples, tests and `ember bench`.

mod dataframe;
mod engine;
mod map_batches;
mod planning;
mod remote;
mod session;
pub mod stream;
pub mod tpch;
mod ui;

pub use dataframe::{
    DataFrame, DataFrameReader, DataFrameWriter, ExplainMode, GroupedData, JoinType, SaveMode, col,
    functions, lit,
};
pub use ember_core::{EmberConfig, EmberError, Result};
pub use engine::{JobProgress, StageProgress};
pub use session::{Master, Session, SessionBuilder};
