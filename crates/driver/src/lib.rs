//! ember-driver: the part of ember that plans and schedules.
//!
//! - [`Session`] / [`SessionBuilder`]: entry point (`Session::builder().master("local[4]")`).
//! - [`DataFrame`]: the lazy, Spark-shaped DataFrame API; SQL through DataFusion.
//! - `engine`: the stage planner (physical plan -> `StageGraph`, cut at exchanges) and
//!   the DAG scheduler (one event loop owning job/stage/task state), with the
//!   launchers that own the executor slots. Every action runs through it. It knows
//!   nothing of the UI: it posts typed events.
//! - [`events`]: the application's typed events ([`AppEvent`]) and the
//!   [`ListenerBus`] that hands them, in order, to the listeners: the UI store, job
//!   records, the event log (`ember.eventlog.dir`, JSON lines per application).
//! - `ui`: the web UI, REST API and `/metrics`, served from the UI store (a
//!   listener); [`serve_history`] serves the same for finished applications by
//!   replaying their event logs (`ember history`).
//! - `stream`: micro-batch streaming queries; each committed batch's progress is an
//!   event too.
//! - [`tpch`]: TPC-H data generation (Parquet), table registration and the 22 queries,
//!   for examples, tests and `ember bench`; [`tpcds`] the same for TPC-DS's generated
//!   data and 99 queries; [`answers`] compares two engines' answers.

pub mod answers;
mod dataframe;
mod engine;
pub mod events;
mod execute;
mod flight_sql;
mod map_batches;
mod planning;
mod remote;
mod session;
pub mod stream;
pub mod tpcds;
pub mod tpch;
mod ui;

pub use dataframe::{
    DataFrame, DataFrameReader, DataFrameWriter, ExplainMode, GroupedData, JoinType, SaveMode, col,
    functions, lit,
};
pub use ember_core::{EmberConfig, EmberError, Result};
pub use engine::{CachedFrameView, StorageLevel};
pub use events::progress::{JobProgress, StageProgress};
pub use events::{AppEvent, Listener, ListenerBus};
pub use session::{Master, Session, SessionBuilder};
pub use ui::UiServer;
pub use ui::history::serve_history;
