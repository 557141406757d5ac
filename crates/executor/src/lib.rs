//! ember-executor: the executor process of a cluster (driver + executors over gRPC).
//!
//! What runs a task lives in `ember-core` (`ember_core::task::run_task`, the shuffle
//! operators and the plan codec), so that a local session's in-process slots and an
//! executor process run tasks through the same code; this crate will add the
//! `ExecutorService` of `proto/ember.proto` (launching tasks, serving shuffle
//! partitions) around it.
