//! Conversions between ember's task types and their protobuf messages: the only
//! place that knows both. Decoding never panics: a malformed message is an
//! [`EmberError::Decode`](crate::EmberError::Decode) that says which field was wrong.

mod from_proto;
mod ipc;
mod to_proto;

pub use from_proto::{task_definition_from_proto, task_id_from_proto, task_status_from_proto};
pub use ipc::{batches_from_ipc, batches_to_ipc, ipc_stream, read_ipc_stream};
pub use to_proto::{task_definition_to_proto, task_id_to_proto, task_status_to_proto};

#[cfg(test)]
mod tests;
