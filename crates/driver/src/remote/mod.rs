//! Client sessions of a separate driver process (`ember://HOST:PORT`).
//!
//! ```text
//!  client Session ──ExecutePlan(logical plan)──▶ driver: its session for this client
//!        ▲          ──ExecuteSql(DDL, SET)───▶     plans, schedules on executors
//!        └──────────── job id, then Arrow IPC rows ◀──┘
//! ```
//!
//! A client plans locally (its DataFrames need schemas) and ships each query's
//! logical plan; DDL is also run in the client's session on the driver, so a
//! client's tables are there for its later SQL. Files must be readable at the same
//! path by the client, the driver and the executors.

mod cached;
mod client;
mod codec;
mod server;

pub(crate) use cached::CachedOnDriver;
pub(crate) use client::RemoteDriver;
pub(crate) use server::DriverClients;
